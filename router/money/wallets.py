"""``WalletServices``: one wallet's money machinery, built once per configured wallet by ``Router``.

Each wallet has its own ledger and sub-accounts on chain, so each gets its own chain client (one
transaction signer, one nonce sequence), session tokens, sub-account book, balance sync, settlement watcher
and funder; all of them run on the router's one event loop. Lanes name their wallet by ``address``.

With replicas sharing Redis (``book`` set), only the leader runs the balance sync, watcher and funder
(``take_lead`` then ``lead``); the others follow the leader's book.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from router.chain.client import ChainClient
from router.chain.session import SessionTokens
from router.config import RouterConfig
from router.money.balances import BalanceSync
from router.money.funder import Funder
from router.money.watcher import SettlementWatcher
from router.observability.events import Observer
from router.pool.accounting import Accounts
from router.pool.providers import Pool
from router.shared.book import SharedBook
from router.shared.leader import Leadership
from router.transport.base import ProviderTransport

if TYPE_CHECKING:
    from router.chain.networks import Network
    from router.shared.store import SharedStore

# How long a new leader waits for its predecessor's last transaction to be mined before reading the
# chain (a transaction in flight would otherwise be funded a second time).
PREDECESSOR_WAIT = 30.0
_PENDING_POLL = 0.25


@dataclass(frozen=True, slots=True)
class WalletServices:
    """One wallet's chain client, tokens, book and background services. ``address`` is checksummed."""

    address: str
    chain: ChainClient
    tokens: SessionTokens
    accounts: Accounts
    balances: BalanceSync
    watcher: SettlementWatcher
    funder: Funder
    book: SharedBook | None = None

    @property
    def watcher_block(self) -> int:
        """The last block whose money logs are applied: the watcher's, or on a follower the leader's."""
        if self.book is not None and self.book.watcher_block is not None and not self.book.leading:
            return self.book.watcher_block
        return self.watcher.cursor - 1

    def wake_funder(self) -> None:
        """A balance may have dropped: the funder looks, or on a follower the leader's does."""
        self.funder.wake()
        if self.book is not None:
            self.book.wake_leader()

    async def take_lead(self) -> None:
        """This replica just became the leader: the chain as it is (after any transaction the previous
        leader still had in flight), a nonce read afresh, a funding round, and the watcher from where the
        shared settlement count stops (else from the synced block)."""
        await self._predecessor_mined()
        self.chain.sender.forget_nonce()
        await self.balances.sync()
        await self.funder.cycle()
        counted = await self.book.elected() if self.book is not None else None
        self.watcher.restart((counted if counted is not None else self.balances.block) + 1)

    async def lead(self) -> None:
        """The leader's duties, until cancelled: balance rounds, the settlement watcher, the funder."""
        async with asyncio.TaskGroup() as tasks:
            for run in (self.balances.run, self.watcher.run, self.funder.run):
                tasks.create_task(run())

    async def _predecessor_mined(self) -> None:
        address = self.address
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PREDECESSOR_WAIT
        while loop.time() < deadline:
            pending = await self.chain.rpc("eth_getTransactionCount", [address, "pending"])
            mined = await self.chain.rpc("eth_getTransactionCount", [address, "latest"])
            if pending == mined:
                return
            await asyncio.sleep(_PENDING_POLL)


async def open_wallet(
    config: RouterConfig,
    network: Network,
    chain: ChainClient,
    tokens: SessionTokens,
    pool: Pool,
    transport: ProviderTransport,
    *,
    clock: Callable[[], float],
    emit: Observer,
    on_funded: Callable[[str, str], None],
    shared: tuple[SharedStore, Leadership] | None,
) -> WalletServices:
    """One wallet's book, balance sync, funder and watcher. Alone, synced and funded before the router
    opens (new providers get their first funds before the first request); with replicas sharing Redis
    (``shared``) that is the leader's to do, and the funder sends only under the leader's fence."""
    money = config.money
    assert chain.wallet is not None
    user = chain.wallet.address
    accounts = Accounts(low_water=money.fund_below_neuron)
    funder = Funder(
        chain,
        accounts,
        pool,
        money,
        user=user,
        clock=clock,
        emit=emit,
        on_funded=functools.partial(on_funded, user),
        fence=shared[1].fence if shared is not None else None,
    )
    balances = BalanceSync(
        chain,
        transport,
        pool,
        accounts,
        user=user,
        interval=money.balance_interval,
        authorize=tokens.authorization,
        timeout=config.discovery.models_timeout,
        emit=emit,
        on_synced=funder.wake,
    )
    if shared is None:
        await balances.sync()
        await funder.cycle()
    # With replicas sharing Redis, the leader starts it again where the shared count stops.
    watcher = SettlementWatcher(
        chain,
        accounts,
        user=user,
        start_block=balances.block + 1,
        confirmations=network.confirmations,
        interval=money.watch_interval,
        emit=emit,
        on_settled=lambda _provider: balances.ask(),
        on_resync=balances.ask,
    )
    book = None
    if shared is not None:
        store, leadership = shared
        book = SharedBook(store, config.shared, accounts, wallet=user, leadership=leadership, watcher=watcher)
        balances.witness = book.witness
    services = WalletServices(user, chain, tokens, accounts, balances, watcher, funder, book)
    accounts.on_low = services.wake_funder
    return services


async def follow(services: WalletServices) -> None:
    """A follower's book at open: the leader's, else (no leader has published one yet) one read-only
    balance round of its own, so that it can serve."""
    assert services.book is not None
    if not await services.book.load():
        await services.balances.sync()
        services.watcher.restart(services.balances.block + 1)
