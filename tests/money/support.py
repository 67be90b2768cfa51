"""Helpers for the money tests: the devnet's shape, a router handle, settlement and a cuttable RPC proxy."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from router.chain.client import ChainClient
from router.chain.wallet import Wallet
from router.client import Router
from router.devnet import Devnet, DevnetProvider, ProviderSpec
from router.devnet.simulator.limits import RateLimits
from router.money.watcher import SettlementWatcher
from router.observability.events import Funded, RequestFinished, Settled, WatcherProgress
from tests.support import NEURON, EventLog

MONEY_MODEL = "money-m"
# Roomy enough that 500 requests at 20 in flight finish in seconds: neither our buckets nor the
# providers' ever refuse, so every request is served (and billed) exactly once.
ROOMY = RateLimits(requests_per_minute=12_000, burst=100, max_concurrent=10)
# Prices high enough that every request's fee is large and distinct per provider (neuron per token).
MONEY_PROVIDERS = (
    ProviderSpec(model=MONEY_MODEL, input_price=10**12, output_price=10**13, limits=ROOMY),
    ProviderSpec(model=MONEY_MODEL, input_price=2 * 10**12, output_price=3 * 10**13, limits=ROOMY),
    ProviderSpec(model=MONEY_MODEL, input_price=3 * 10**12, output_price=2 * 10**13, limits=ROOMY),
)
LEDGER_DEPOSIT = 30 * NEURON
# Far above the funder's 1 0G threshold, so no top-up moves money while a test counts it.
SUB_ACCOUNT_FUNDING = 5 * NEURON
# Generous bounds: the machine has two cores and other test runs may share them.
WAIT = 60.0


@dataclass
class MoneyRouter:
    """An open router for a new funded wallet, its event log, and the wallet's own chain client.

    ``chain`` talks to anvil directly (never through a test proxy), so it reads the truth.
    ``start_block`` is the first block the router's settlement watcher reads.
    """

    devnet: Devnet
    router: Router
    log: EventLog
    wallet: Wallet
    chain: ChainClient
    start_block: int

    @property
    def user(self) -> str:
        return self.wallet.address

    @property
    def watcher(self) -> SettlementWatcher:
        (wallet,) = self.router.wallets
        return wallet.watcher

    async def resync(self) -> None:
        """One balance-sync round now: the ledger and sub-accounts from the chain, the unsettled fees
        from the providers."""
        (wallet,) = self.router.wallets
        async with asyncio.timeout(WAIT):
            await wallet.balances.sync()

    def view(self) -> dict[str, Any]:
        """``router.balances()``'s report of the one wallet."""
        (report,) = self.router.balances()["wallets"]
        assert report["wallet"] == self.user
        return dict(report)

    def account_views(self) -> dict[str, dict[str, Any]]:
        """``router.balances()``'s sub-accounts by lower-case provider address."""
        return {view["provider"].lower(): view for view in self.view()["accounts"]}

    def request_costs(self, provider: DevnetProvider, *, stream: bool | None = None) -> list[int]:
        """The cost of every request ``provider`` served (optionally only streamed or only plain ones)."""
        costs = []
        for event in self.log.of(RequestFinished):
            if event.provider != provider.address or (stream is not None and event.stream is not stream):
                continue
            assert event.status == 200, event
            assert event.cost is not None, event
            costs.append(event.cost)
        return costs

    async def wait_watcher_at(self, block: int, within: float = WAIT) -> None:
        """Return once the watcher has applied every money log up to ``block``."""
        await self.log.wait_for(lambda e: isinstance(e, WatcherProgress) and e.block >= block, within=within)


# ``await open_money_router(rpc_url=None, money=FAST_MONEY)``, the conftest's factory fixture.
OpenRouter = Callable[..., Awaitable[MoneyRouter]]


def billed_unsettled(provider: DevnetProvider, user: str) -> int:
    """What ``provider``'s broker holds as not yet settled for ``user``."""
    return provider.simulator.billing.unsettled(user)


def billed_settled(provider: DevnetProvider, user: str) -> int:
    """What ``provider``'s broker has settled on chain for ``user`` so far."""
    bill = provider.simulator.billing.bills.get(user.lower())
    return bill.settled if bill is not None else 0


def funded(money: MoneyRouter, provider: DevnetProvider) -> int:
    """Everything moved into ``provider``'s sub-account: the first transfer plus any top-up."""
    address = provider.address.lower()
    top_ups: list[int] = [e.amount for e in money.log.of(Funded) if e.provider.lower() == address]
    return SUB_ACCOUNT_FUNDING + sum(top_ups)


async def assert_matches_chain(money: MoneyRouter) -> None:
    """Every sub-account as the router reports it equals ``getAccount`` now, and everything we spent there
    is settled: our per-request costs, the watcher's settlements and the provider's books agree to the
    wei (so no settlement was missed or applied twice)."""
    views = money.account_views()
    for provider in money.devnet.providers:
        account = await money.chain.get_account(money.user, provider.address)
        assert account is not None
        view = views[provider.address.lower()]
        assert int(view["balance"]) == account.balance, provider.address
        assert int(view["pending_refund"]) == account.pending_refund == 0
        settled = billed_settled(provider, money.user)
        assert billed_unsettled(provider, money.user) == 0
        assert int(view["spent"]) == int(view["settled"]) == settled
        assert sum(money.request_costs(provider)) == settled
        assert funded(money, provider) - account.balance == settled
        settlements = [
            e.amount for e in money.log.of(Settled) if e.provider.lower() == provider.address.lower()
        ]
        assert sum(settlements) == settled


async def settle_all(devnet: Devnet) -> None:
    """One settlement cycle on every provider at once (the simulators talk to anvil directly)."""
    await asyncio.gather(*(provider.simulator.settle_now() for provider in devnet.providers))


def messages(index: int) -> list[dict[str, Any]]:
    """A prompt whose length (and so whose fee) varies with ``index``."""
    return [{"role": "user", "content": f"request {index} " + "please " * (index % 7)}]


class TcpProxy:
    """A byte-for-byte TCP forwarder on 127.0.0.1 to ``target_url``'s host and port, which a test can cut.

    ``pause()`` closes the listener and aborts every open connection (both legs), so clients see resets
    and then refused connections, as with a dead RPC node; ``resume()`` listens again on the same port.
    Use as ``async with TcpProxy(url) as proxy:``; leaving pauses it and waits for every connection.
    """

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        assert parts.hostname is not None
        assert parts.port is not None
        self._target = (parts.hostname, parts.port)
        self._server: asyncio.Server | None = None
        self._port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self.accepted = 0

    def __repr__(self) -> str:
        state = "paused" if self.paused else "open"
        return f"<TcpProxy :{self._port} -> {self._target[1]} {state} connections={len(self._writers)}>"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def paused(self) -> bool:
        return self._server is None

    async def __aenter__(self) -> Self:
        await self.resume()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.pause()

    async def resume(self) -> None:
        """Listen (again, on the same port once one was chosen)."""
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self._port)
            self._port = self._server.sockets[0].getsockname()[1]

    async def pause(self) -> None:
        """Stop listening and drop every connection, then wait until each one's handler has ended."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._handlers:
            async with asyncio.timeout(WAIT):
                await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            if self.paused:
                return
            self.accepted += 1
            up_reader, upstream = await asyncio.open_connection(*self._target)
            self._writers.add(upstream)
            if self.paused:
                return
            async with asyncio.TaskGroup() as pumps:
                pumps.create_task(_pump(reader, upstream))
                pumps.create_task(_pump(up_reader, writer))
        except OSError:
            return
        finally:
            for leg in (writer, upstream):
                if leg is not None:
                    self._writers.discard(leg)
                    if self.paused:
                        leg.transport.abort()
                    else:
                        leg.close()
            self._handlers.discard(task)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer`` until end of stream (then half-close) or until either side drops."""
    with contextlib.suppress(OSError):
        while data := await reader.read(65_536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
