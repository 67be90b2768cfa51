"""The settlement watcher: follows the chain's money logs for our wallet and applies them to the accounts.

Each pass reads the logs of ``[cursor, head - confirmations]`` (at most ``MAX_RANGE`` blocks), applies them
all synchronously, and only then moves the cursor: a pass that fails part-way applies nothing and is
simply retried, from the same block, with a growing back-off while the RPC is down. Logs are keyed by
(transaction, place in it) and a key is applied once; balances carry their chain position, so a replayed or
late log never overwrites a newer view. Before each pass the hash of the last applied block is checked;
if the chain reorganised under it, the cursor steps back and the balances are re-read.

Every pass that reads the chain reports ``WatcherProgress`` (its last applied block and the head), new logs
or not; a failing streak reports one ``BackgroundError``. The metrics' watcher gauges are built on those.

A settlement's ``FundSpent`` names no provider, so it is paired with the ``BalanceUpdated`` of the same
transaction (protocol.md §6.6).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable

from router.chain.client import ChainClient
from router.chain.logs import (
    SETTLEMENT_PARTIAL,
    AccountClosed,
    BalanceChanged,
    FeesSpent,
    MoneyLog,
    RefundQueued,
    SettlementResult,
)
from router.errors import RouterError
from router.observability.events import (
    BackgroundError,
    Observer,
    Settled,
    SettlementRejected,
    WatcherProgress,
)
from router.pool.accounting import Accounts

MAX_RANGE = 2_000
# How far back to step on a reorg, and how long applied keys are remembered (in blocks).
REWIND = 64
MAX_BACKOFF = 10.0


class SettlementWatcher:
    """Applies our money logs to ``accounts`` from ``start_block`` on. ``run()`` in the background."""

    def __init__(
        self,
        chain: ChainClient,
        accounts: Accounts,
        *,
        user: str,
        start_block: int,
        confirmations: int,
        interval: float,
        emit: Observer,
        on_settled: Callable[[str], None],
        on_resync: Callable[[], None],
    ) -> None:
        self._chain = chain
        self._accounts = accounts
        self._user = user
        self._confirmations = confirmations
        self._interval = interval
        self._emit = emit
        self._on_settled = on_settled
        self._on_resync = on_resync
        self.cursor = start_block
        self._last: tuple[int, str] | None = None
        self._applied: dict[tuple[str, int], int] = {}
        self.applied_logs = 0
        self.head = start_block - 1

    def restart(self, start_block: int) -> None:
        """Read from ``start_block`` on, as if new: a replica that just became the leader of several
        (``router.shared``) picks up where the shared settlement count stops."""
        self.cursor = start_block
        self.head = max(self.head, start_block - 1)
        self._last = None
        self._applied.clear()

    async def run(self) -> None:
        delay = self._interval
        failing = False
        while True:
            await asyncio.sleep(delay)
            try:
                caught_up = await self.step()
            except RouterError as exc:
                if not failing:
                    self._emit(BackgroundError("settlement-watcher", str(exc), wallet=self._user))
                failing = True
                delay = min(MAX_BACKOFF, max(delay, self._interval) * 2)
                continue
            failing = False
            delay = self._interval if caught_up else 0

    async def step(self) -> bool:
        """One pass; True when it reached the confirmed head. The range's end hash is read before and
        after its logs, so logs from a fork that vanished meanwhile are never applied."""
        chain = self._chain
        head = await chain.block_number()
        self.head = head
        if self._last is not None:
            block, known_hash = self._last
            if await chain.block_hash(block) != known_hash:
                self._rewind(block)
                return False
        safe = head - self._confirmations
        if safe < self.cursor:
            # Reported even with nothing new: every pass that read the chain says the watcher is alive,
            # which is what tells a dashboard an RPC outage is over.
            self._emit(WatcherProgress(self._user, self.cursor - 1, head))
            return True
        to_block = min(safe, self.cursor + MAX_RANGE - 1)
        to_hash = await chain.block_hash(to_block)
        logs = await chain.money_logs(self._user, self.cursor, to_block)
        if await chain.block_hash(to_block) != to_hash:
            # The chain moved under the read (a reorg, or a failover to a node on another fork): again.
            return False
        self._apply(logs)
        self.cursor = to_block + 1
        self._last = (to_block, to_hash) if to_hash is not None else None
        self._forget_before(self.cursor - REWIND)
        self._emit(WatcherProgress(self._user, to_block, head))
        return to_block >= safe

    def _rewind(self, block: int) -> None:
        """The block we stopped at is no longer canonical: read again from ``REWIND`` blocks before it."""
        self._emit(
            BackgroundError(
                "settlement-watcher", f"chain reorganised at block {block}; re-reading", wallet=self._user
            )
        )
        self.cursor = max(0, block - REWIND + 1)
        self._last = None
        self._on_resync()

    def _apply(self, logs: list[MoneyLog]) -> None:
        by_tx: dict[str, dict[int, MoneyLog]] = defaultdict(dict)
        for log in logs:
            # A node may repeat a log in one answer; its block index tells the copies apart.
            by_tx[log.tx_hash].setdefault(log.log_index, log)
        for tx_hash, indexed in by_tx.items():
            tx_logs = [indexed[index] for index in sorted(indexed)]
            # A log is its transaction and its place in it: that survives a transaction being re-mined
            # elsewhere after a reorg (its block index would not).
            fresh = [log for n, log in enumerate(tx_logs) if (tx_hash, n) not in self._applied]
            for n in range(len(tx_logs)):
                self._applied.setdefault((tx_hash, n), tx_logs[0].block)
            self.applied_logs += len(fresh)
            if fresh:
                self._apply_tx(fresh)

    def _apply_tx(self, logs: list[MoneyLog]) -> None:
        accounts = self._accounts
        provider = next((log.event.provider for log in logs if isinstance(log.event, BalanceChanged)), None)
        for log in logs:
            event = log.event
            if isinstance(event, BalanceChanged):
                accounts.observe(
                    event.provider,
                    position=(log.block, log.log_index),
                    exists=True,
                    balance=event.balance,
                    pending_refund=event.pending_refund,
                )
            elif isinstance(event, FeesSpent) and provider is not None:
                accounts.settled(provider, event.amount)
                self._emit(Settled(self._user, provider, event.amount, log.block))
                self._on_settled(provider)
            elif isinstance(event, SettlementResult) and event.status > SETTLEMENT_PARTIAL:
                self._emit(SettlementRejected(self._user, event.status, event.unsettled, log.block))
            elif isinstance(event, RefundQueued | AccountClosed):
                # Pending refunds changed without a BalanceUpdated (or the account is gone): re-read.
                self._on_resync()

    def _forget_before(self, block: int) -> None:
        if len(self._applied) > 4 * REWIND:
            self._applied = {key: b for key, b in self._applied.items() if b >= block}
