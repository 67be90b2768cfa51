"""Fixtures the simulator tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from router.devnet import Devnet
from router.devnet.simulator.faults import Faults
from tests.support import Client, funded_client


@pytest.fixture
async def client(fresh_devnet: Devnet, http: aiohttp.ClientSession) -> AsyncIterator[Client]:
    """A funded wallet on provider 2 (the roomy RPM bucket); its simulator's knobs are reset after the
    test."""
    funded = await funded_client(fresh_devnet, http, provider_index=2)
    try:
        yield funded
    finally:
        await funded.provider.simulator.set_faults(Faults())
