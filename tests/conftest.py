"""Shared fixtures: one devnet per test session, chain state reverted around each test that asks."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import aiohttp
import pytest

from router.chain.client import ChainClient
from router.chain.devtools import set_balance
from router.chain.wallet import Wallet
from router.devnet import Devnet, DevnetConfig
from router.devnet.node_tools import NodeModules, find_node_modules
from tests.support import DEVNET_PROVIDERS, NEURON


@pytest.fixture(scope="session")
def node_modules() -> NodeModules:
    return find_node_modules()


@pytest.fixture(scope="session")
async def devnet(node_modules: NodeModules) -> AsyncIterator[Devnet]:
    # No settlement cadence: a test that wants a settlement asks for one, so no background transaction
    # races a test's own writes or the snapshot reverts between tests.
    config = DevnetConfig(providers=DEVNET_PROVIDERS, settle_interval=None)
    async with Devnet(config, node_modules) as net:
        yield net


@pytest.fixture
async def fresh_devnet(devnet: Devnet) -> AsyncIterator[Devnet]:
    """The session devnet, returned to its starting state after the test."""
    snapshot = await devnet.snapshot()
    yield devnet
    await devnet.revert(snapshot)


@pytest.fixture
async def new_wallet_client(fresh_devnet: Devnet) -> ChainClient:
    """A client for a new wallet holding 1000 0G and no ledger."""
    wallet = Wallet("0x" + os.urandom(32).hex())
    await set_balance(fresh_devnet.owner, wallet.address, 1000 * NEURON)
    return await fresh_devnet.open_client(wallet)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client session for the test."""
    async with aiohttp.ClientSession() as session:
        yield session
