"""A devnet for the money tests (settled only when a test says so) and a fresh router + wallet per test.

A new wallet per test keeps each test's balances, bills and settlements apart on the shared chain.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from router.chain.client import ChainClient
from router.chain.devtools import set_balance
from router.chain.wallet import Wallet
from router.client import Router
from router.config import DiscoveryOptions, DispatchOptions, MoneyOptions, RouterConfig
from router.devnet import Devnet, DevnetConfig
from router.devnet.node_tools import NodeModules
from router.devnet.simulator.faults import Faults
from router.pool.health import HealthPolicy
from router.transport.http import TransportOptions
from tests.money.support import (
    LEDGER_DEPOSIT,
    MONEY_PROVIDERS,
    SUB_ACCOUNT_FUNDING,
    MoneyRouter,
    OpenRouter,
    TcpProxy,
)
from tests.support import NEURON, EventLog

# The watcher polls every 0.2 s and balances are re-read every second, so tests wait little.
FAST_MONEY = MoneyOptions(watch_interval=0.2, balance_interval=1.0)


@pytest.fixture(scope="package")
async def money_devnet(node_modules: NodeModules) -> AsyncIterator[Devnet]:
    # No settlement cadence: tests drive every cycle with settle_now(), so they know what was settled.
    config = DevnetConfig(providers=MONEY_PROVIDERS, settle_interval=None)
    async with Devnet(config, node_modules) as devnet:
        yield devnet


async def money_wallet(devnet: Devnet) -> tuple[Wallet, str, ChainClient]:
    """A new wallet (its key, and a client of its own straight to anvil) with a ledger and
    ``SUB_ACCOUNT_FUNDING`` at every provider."""
    key = "0x" + os.urandom(32).hex()
    wallet = Wallet(key)
    await set_balance(devnet.owner, wallet.address, 100 * NEURON)
    chain = await devnet.open_client(wallet)
    await chain.add_ledger(LEDGER_DEPOSIT)
    for provider in devnet.providers:
        await chain.transfer_fund(provider.address, SUB_ACCOUNT_FUNDING)
    return wallet, key, chain


def money_config(devnet: Devnet, private_key: str, rpc_url: str | None, money: MoneyOptions) -> RouterConfig:
    network = devnet.network if rpc_url is None else devnet.network.with_rpc_urls(rpc_url)
    return RouterConfig(
        network=network,
        private_key=private_key,
        transport=TransportOptions(allow_private_targets=True, stream_idle_timeout=10.0),
        discovery=DiscoveryOptions(event_poll_interval=0.2, probe_interval=0.1),
        health=HealthPolicy(cooldown=0.3, max_cooldown=1.0),
        dispatch=DispatchOptions(request_timeout=60.0),
        money=money,
    )


@pytest.fixture
async def open_money_router(money_devnet: Devnet) -> AsyncIterator[OpenRouter]:
    """``await open_money_router(rpc_url=None, money=FAST_MONEY)``: a router for a new funded wallet.

    ``rpc_url`` points the router's chain client elsewhere (a proxy) while everything else keeps using
    anvil directly. Routers are closed, and every provider's faults reset, after the test.
    """
    async with AsyncExitStack() as stack:

        async def open_router(*, rpc_url: str | None = None, money: MoneyOptions = FAST_MONEY) -> MoneyRouter:
            wallet, key, chain = await money_wallet(money_devnet)
            log = EventLog()
            config = money_config(money_devnet, key, rpc_url, money)
            router = await stack.enter_async_context(Router(config, observers=[log]))
            # Read before anything yields to the loop: the watcher has not taken a step yet.
            (services,) = router.wallets
            return MoneyRouter(money_devnet, router, log, wallet, chain, services.watcher.cursor)

        try:
            yield open_router
        finally:
            for provider in money_devnet.providers:
                await provider.simulator.set_faults(Faults())


@pytest.fixture
async def money_router(open_money_router: OpenRouter) -> MoneyRouter:
    """A router (watcher every 0.2 s, balances every 1 s) for a new funded wallet, straight to anvil."""
    return await open_money_router()


@pytest.fixture
async def rpc_proxy(money_devnet: Devnet) -> AsyncIterator[TcpProxy]:
    """A cuttable TCP proxy to the devnet's anvil. Ask for it before ``open_money_router`` so that
    routers close before it does."""
    async with TcpProxy(money_devnet.rpc_url) as proxy:
        yield proxy
