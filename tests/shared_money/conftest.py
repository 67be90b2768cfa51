"""Replicas of one deployment in one process: routers on one devnet wallet sharing one real Redis.

Each test gets a new funded wallet (its balances and bills apart from every other test's on the shared
chain) and a fresh ``redis-server``; ``await replicas.open()`` opens one more router on both.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import pytest

from router.chain.client import ChainClient
from router.chain.devtools import set_balance
from router.chain.wallet import Wallet
from router.client import Router
from router.config import DiscoveryOptions, DispatchOptions, MoneyOptions, RouterConfig
from router.devnet import Devnet, DevnetConfig
from router.devnet.node_tools import NodeModules
from router.observability.events import Observer
from router.shared.options import SharedOptions
from router.transport.http import TransportOptions
from tests.shared_money.support import (
    LEDGER_DEPOSIT,
    SHARED_PROVIDERS,
    SUB_ACCOUNT_FUNDING,
    Replica,
    shared_options,
)
from tests.shared_support import RedisServer, redis_server
from tests.support import NEURON, EventLog

__all__ = ["redis_server"]

# Balances re-read every second, the watcher every 0.2 s: tests wait little.
FAST_MONEY = MoneyOptions(watch_interval=0.2, balance_interval=1.0)


@pytest.fixture(scope="package")
async def shared_devnet(node_modules: NodeModules) -> AsyncIterator[Devnet]:
    # Settled only when a test says so, so that it knows what was settled.
    config = DevnetConfig(providers=SHARED_PROVIDERS, settle_interval=None)
    async with Devnet(config, node_modules) as devnet:
        yield devnet


@dataclass
class Replicas:
    """Routers on one wallet (``key``) and one Redis (``url``); ``chain`` is the wallet's own client
    straight to anvil, which reads the truth."""

    devnet: Devnet
    url: str
    key: str
    wallet: Wallet
    chain: ChainClient
    stack: AsyncExitStack
    opened: list[Replica] = field(default_factory=list)

    async def open(
        self,
        *,
        money: MoneyOptions = FAST_MONEY,
        shared: SharedOptions | None = None,
        observers: Sequence[Observer] = (),
    ) -> Replica:
        """One more replica: a router on the wallet and Redis, closed after the test (or by
        ``replica.close()``)."""
        log = EventLog()
        config = RouterConfig(
            network=self.devnet.network,
            private_key=self.key,
            transport=TransportOptions(allow_private_targets=True, stream_idle_timeout=10.0),
            discovery=DiscoveryOptions(event_poll_interval=0.2, probe_interval=0.1),
            dispatch=DispatchOptions(request_timeout=60.0),
            money=money,
            shared=shared or shared_options(self.url),
        )
        own = AsyncExitStack()
        router = await own.enter_async_context(Router(config, observers=[log, *observers]))
        self.stack.push_async_callback(own.aclose)
        replica = Replica(router, log, own)
        self.opened.append(replica)
        return replica


@pytest.fixture
async def replicas(shared_devnet: Devnet, redis_server: RedisServer) -> AsyncIterator[Replicas]:
    """A new wallet with a ledger and ``SUB_ACCOUNT_FUNDING`` at every provider, a fresh Redis, and
    ``open()`` for routers on both."""
    key = "0x" + os.urandom(32).hex()
    wallet = Wallet(key)
    await set_balance(shared_devnet.owner, wallet.address, 100 * NEURON)
    chain = await shared_devnet.open_client(wallet)
    await chain.add_ledger(LEDGER_DEPOSIT)
    for provider in shared_devnet.providers:
        await chain.transfer_fund(provider.address, SUB_ACCOUNT_FUNDING)
    async with AsyncExitStack() as stack:
        yield Replicas(shared_devnet, redis_server.url, key, wallet, chain, stack)
