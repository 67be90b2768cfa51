"""Balance sync: the chain's and the providers' view of our money, read in the background.

One round reads, at one block, the ledger, every sub-account of the wallet (``getAccountsByUser``, one call
per 50) and the set of providers it funds; then asks each chain provider for our unsettled fee. Rounds run
every ``balance_interval`` and at once when something asks (a provider said "insufficient balance", the
watcher saw a refund or a settlement). Deposits, refunds and acknowledgements emit no event
(protocol.md §2.5), so this polling is what notices them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from router.chain.client import ChainClient
from router.errors import ProviderUnreachable, RouterError
from router.observability.events import BackgroundError, Observer
from router.pool.accounting import Accounts
from router.pool.providers import Pool, ProviderKind, ProviderState
from router.transport.base import ProviderTransport

# A read of the chain is newer than any log of its block: logs sit inside the block, reads see its end.
END_OF_BLOCK = 2**62

Authorizer = Callable[[str], Awaitable[str]]
# Asked before a fee read of a provider; what it returns (if anything) is told the fee when nothing of
# ours was in flight there meanwhile (``router.shared.book``: the shared count takes the truth too).
FeeWitness = Callable[[str], Callable[[int], None] | None]


class BalanceSync:
    """Keeps ``accounts`` in step with the chain and the providers. ``sync()`` once, then ``run()``."""

    def __init__(
        self,
        chain: ChainClient,
        transport: ProviderTransport,
        pool: Pool,
        accounts: Accounts,
        *,
        user: str,
        interval: float,
        authorize: Authorizer,
        timeout: float,
        emit: Observer,
        on_synced: Callable[[], None],
    ) -> None:
        self._chain = chain
        self._transport = transport
        self._pool = pool
        self._accounts = accounts
        self._user = user
        self._interval = interval
        self._authorize = authorize
        self._timeout = timeout
        self._emit = emit
        self._on_synced = on_synced
        self._asked = asyncio.Event()
        self.block = -1
        self.witness: FeeWitness | None = None

    def ask(self) -> None:
        """Run a round soon, without waiting for the interval."""
        self._asked.set()

    async def sync(self) -> None:
        """One round: chain reads at one block, then the providers' unsettled fees."""
        await self.sync_chain()
        await self.sync_unsettled()
        self._on_synced()

    async def sync_chain(self) -> int:
        """Read the ledger and every sub-account at the latest block; returns that block."""
        chain, user = self._chain, self._user
        block = await chain.block_number()
        ledger = await chain.get_ledger(user, block=block)
        sub_accounts = await chain.accounts_of(user, block=block) if ledger is not None else []
        providers = await chain.get_ledger_providers(user) if ledger is not None else []
        accounts = self._accounts
        accounts.observe_ledger(
            block=block,
            available=ledger.available_balance if ledger else 0,
            total=ledger.total_balance if ledger else 0,
            providers=frozenset(providers),
        )
        seen = set()
        for account in sub_accounts:
            seen.add(account.provider.lower())
            accounts.observe(
                account.provider,
                position=(block, END_OF_BLOCK),
                exists=True,
                balance=account.balance,
                pending_refund=account.pending_refund,
                acknowledged=account.acknowledged,
            )
        for known in list(accounts):
            if known.provider.lower() not in seen:
                accounts.observe(known.provider, position=(block, END_OF_BLOCK), exists=False)
        for state in self._chain_providers():
            accounts.of(state.id)
        self.block = block
        return block

    async def sync_unsettled(self, provider: str | None = None) -> None:
        """Ask each chain provider (or just ``provider``) what we owe it that is not settled yet."""
        states = [s for s in self._chain_providers() if provider is None or s.id.lower() == provider.lower()]
        await asyncio.gather(*(self._unsettled_of(state) for state in states))

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._asked.wait()
            self._asked.clear()
            try:
                await self.sync()
            except RouterError as exc:
                self._emit(BackgroundError("balance-sync", str(exc), wallet=self._user))

    def _chain_providers(self) -> list[ProviderState]:
        return [s for s in self._pool if s.info.kind is ProviderKind.CHAIN]

    async def _unsettled_of(self, state: ProviderState) -> None:
        base = state.info.base_url.removesuffix("/v1/proxy")
        account = self._accounts.of(state.id)
        quiet_before = account.reserved == 0 and account.reserved_elsewhere == 0
        spent_before = account.spent
        witnessed = self.witness(state.id) if self.witness is not None and quiet_before else None
        try:
            authorization = await self._authorize(state.id)
            doc = await self._transport.get_json(
                ProviderKind.CHAIN,
                state.id,
                f"{base}/v1/user/{self._user}/unsettledfee",
                headers={"Authorization": authorization},
                time_left=self._timeout,
            )
        except (ProviderUnreachable, RouterError) as exc:
            # Keep the last figure: our own running total still counts what we spent there.
            self._emit(BackgroundError("unsettled-fee", f"{state.id}: {exc}", wallet=self._user))
            return
        fee = doc.get("unsettledFee") if isinstance(doc, dict) else None
        try:
            amount = int(str(fee))
        except ValueError:
            self._emit(
                BackgroundError(
                    "unsettled-fee", f"{state.id}: no unsettledFee in the answer", wallet=self._user
                )
            )
            return
        if amount < 0:
            return
        account.provider_unsettled = amount
        quiet = account.reserved == 0 and account.reserved_elsewhere == 0 and account.spent == spent_before
        if quiet_before and quiet:
            # Nothing of ours was in flight there while it answered: its figure is the truth, and
            # replaces our estimate (which books a cut-short request's whole reserve).
            account.our_unsettled = amount
            if witnessed is not None:
                witnessed(amount)
