"""Routers for the in-process faces: the gateway tests' devnet (chat, embedding, image and speech
providers) and a router per test with its own funded wallet, opened on the test's loop or on a loop
thread. No gateway is started and no port is opened for the router."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from router.client import Router
from router.config import RouterConfig
from router.devnet import Devnet
from router.devnet.simulator.faults import Faults
from tests.gateway.conftest import gateway_devnet, router_config
from tests.support import funded_wallet

__all__ = ["gateway_devnet"]


@pytest.fixture
async def embed_config(gateway_devnet: Devnet) -> AsyncIterator[RouterConfig]:
    """A router config for a new funded wallet; every provider's faults are reset afterwards."""
    _, key = await funded_wallet(gateway_devnet)
    try:
        yield router_config(gateway_devnet, key)
    finally:
        for provider in gateway_devnet.providers:
            await provider.simulator.set_faults(Faults())


@pytest.fixture
async def embedded(embed_config: RouterConfig) -> AsyncIterator[Router]:
    """An open router on the test's loop."""
    async with Router(embed_config) as router:
        yield router


@pytest.fixture
async def threaded(embed_config: RouterConfig) -> AsyncIterator[Router]:
    """A router open on a loop thread of its own, as sync code starts it (the test's loop keeps running
    the devnet meanwhile: the blocking calls run in a worker thread)."""
    running = Router(embed_config).start_in_thread()
    router = await asyncio.to_thread(running.__enter__)
    try:
        yield router
    finally:
        await asyncio.to_thread(running.__exit__, None, None, None)
