"""The settlement watcher against a scripted chain: each money log applied once, in position order,
only once buried, with reorgs rewound, outages survived and settlements paired with their provider."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest

from router.chain.client import ChainClient
from router.chain.logs import (
    AccountClosed,
    BalanceChanged,
    FeesSpent,
    MoneyLog,
    RefundQueued,
    SettlementResult,
)
from router.errors import ChainUnavailable
from router.money.balances import END_OF_BLOCK
from router.money.watcher import MAX_BACKOFF, MAX_RANGE, REWIND, SettlementWatcher
from router.observability.events import BackgroundError, Settled, SettlementRejected, WatcherProgress
from router.pool.accounting import Accounts
from tests.support import NEURON, EventLog

USER = "0x00000000000000000000000000000000000000c5"
P = "0xAAaa000000000000000000000000000000000001"
Q = "0xBBbb000000000000000000000000000000000002"
START = 100


class FakeChain:
    """A chain the test scripts: its head, its logs, block hashes (changeable to fake a reorg) and
    outages (``down`` names the calls that raise ChainUnavailable)."""

    def __init__(self, head: int = START) -> None:
        self.head = head
        self.logs: list[MoneyLog] = []
        self.hashes: dict[int, str] = {}
        self.down: set[str] = set()
        self.hash_down: set[int] = set()
        self.ranges: list[tuple[int, int]] = []
        self.users: set[str] = set()

    async def block_number(self) -> int:
        if "block_number" in self.down:
            raise ChainUnavailable("eth_blockNumber: no RPC answered")
        return self.head

    async def block_hash(self, number: int) -> str | None:
        if "block_hash" in self.down or number in self.hash_down:
            raise ChainUnavailable("eth_getBlockByNumber: no RPC answered")
        if number > self.head:
            return None
        return self.hashes.get(number, f"0xhash{number}")

    async def money_logs(self, user: str, from_block: int, to_block: int) -> list[MoneyLog]:
        if "money_logs" in self.down:
            raise ChainUnavailable("eth_getLogs: no RPC answered")
        self.users.add(user)
        self.ranges.append((from_block, to_block))
        return [log for log in self.logs if from_block <= log.block <= to_block]


def settlement(
    block: int, tx: str, provider: str, fee: int, balance: int, *, pending: int = 0, status: int = 0
) -> list[MoneyLog]:
    """The three logs of a settlement, in the contract's order: FundSpent, BalanceUpdated, result."""
    return [
        MoneyLog(block, tx, 0, FeesSpent(fee)),
        MoneyLog(block, tx, 1, BalanceChanged(provider, balance, pending)),
        MoneyLog(block, tx, 2, SettlementResult(status, 0 if status == 0 else fee)),
    ]


class Harness:
    """A watcher over a FakeChain and real Accounts, with its events and callbacks recorded."""

    def __init__(self, chain: FakeChain, *, confirmations: int = 0, start: int = START) -> None:
        self.chain = chain
        self.accounts = Accounts()
        self.events = EventLog()
        self.settled: list[str] = []
        self.resyncs = 0
        self.watcher = SettlementWatcher(
            cast(ChainClient, chain),
            self.accounts,
            user=USER,
            start_block=start,
            confirmations=confirmations,
            interval=1.0,
            emit=self.events,
            on_settled=self.settled.append,
            on_resync=self._resync,
        )

    def _resync(self) -> None:
        self.resyncs += 1

    def owed(self, provider: str, amount: int, *, balance: int = 5 * NEURON) -> None:
        """``provider``'s account read at block START-1 with ``amount`` of our fees not yet settled."""
        self.accounts.observe(
            provider, position=(START - 1, END_OF_BLOCK), exists=True, balance=balance, acknowledged=True
        )
        self.accounts.hold(provider, 0).close(amount)


@pytest.fixture
def chain() -> FakeChain:
    return FakeChain()


@pytest.fixture
def h(chain: FakeChain) -> Harness:
    return Harness(chain)


class TestApplying:
    async def test_settlement_updates_balance_and_clears_what_it_paid(self, h: Harness) -> None:
        """FundSpent + BalanceUpdated of one tx: new balance at the log's position, fee off our unsettled,
        a Settled event and on_settled(provider)."""
        h.owed(P, 5 * 10**17)
        h.chain.head = START + 5
        h.chain.logs = settlement(START + 3, "0xt1", P, 3 * 10**17, 4 * NEURON + 7 * 10**17, pending=10**17)
        assert await h.watcher.step()
        account = h.accounts.of(P)
        assert (account.balance, account.pending_refund, account.as_of) == (
            4 * NEURON + 7 * 10**17,
            10**17,
            (START + 3, 1),
        )
        assert (account.our_unsettled, account.settled) == (2 * 10**17, 3 * 10**17)
        assert account.acknowledged  # a log says nothing about acknowledgement: the read's flag stays
        assert h.events.of(Settled) == [Settled(USER, P, 3 * 10**17, START + 3)]
        assert h.settled == [P]
        assert h.events.of(SettlementRejected) == []
        assert h.watcher.cursor == START + 6
        assert h.events.of(WatcherProgress) == [WatcherProgress(USER, START + 5, START + 5)]
        assert h.chain.users == {USER}

    async def test_each_fee_is_paired_with_its_own_transactions_provider(self, h: Harness) -> None:
        """Two settlements in one block by different providers: each FundSpent books to its own tx's
        provider (the log names none)."""
        h.owed(P, 1_000)
        h.owed(Q, 1_000)
        h.chain.head = START + 1
        h.chain.logs = [
            *settlement(START + 1, "0xtp", P, 100, 4 * NEURON),
            *[
                MoneyLog(log.block, log.tx_hash, log.log_index + 3, log.event)
                for log in settlement(START + 1, "0xtq", Q, 700, 3 * NEURON)
            ],
        ]
        await h.watcher.step()
        assert (h.accounts.of(P).our_unsettled, h.accounts.of(P).balance) == (900, 4 * NEURON)
        assert (h.accounts.of(Q).our_unsettled, h.accounts.of(Q).balance) == (300, 3 * NEURON)
        assert sorted(h.settled) == sorted([P, Q])

    async def test_transfer_creates_the_account(self, h: Harness) -> None:
        """A BalanceUpdated alone (a transferFund) makes a missing account exist with its balance."""
        h.chain.logs = [MoneyLog(START, "0xtf", 0, BalanceChanged(P, 2 * NEURON, 0))]
        await h.watcher.step()
        account = h.accounts.of(P)
        assert (account.exists, account.available) == (True, NEURON)
        assert h.settled == []
        assert h.events.of(Settled) == []

    async def test_a_fee_without_its_providers_log_books_nothing(self, h: Harness) -> None:
        """A FundSpent whose tx has no BalanceUpdated cannot be attributed: no provider is credited."""
        h.owed(P, 1_000)
        h.chain.logs = [MoneyLog(START, "0xlonely", 0, FeesSpent(400))]
        await h.watcher.step()
        assert h.accounts.of(P).our_unsettled == 1_000
        assert h.events.of(Settled) == []
        assert h.settled == []

    async def test_partial_settlement_still_books_what_was_taken(self, h: Harness) -> None:
        """Status 1 (PARTIAL): the FundSpent amount is booked and no rejection is reported."""
        h.owed(P, 2 * NEURON)
        h.chain.logs = settlement(START, "0xpart", P, NEURON, 0, status=1)
        await h.watcher.step()
        account = h.accounts.of(P)
        assert (account.settled, account.our_unsettled, account.balance) == (NEURON, NEURON, 0)
        assert h.events.of(Settled) == [Settled(USER, P, NEURON, START)]
        assert h.events.of(SettlementRejected) == []

    @pytest.mark.parametrize("status", [2, 3, 4, 5])
    async def test_failed_settlement_is_reported_and_charges_nothing(self, h: Harness, status: int) -> None:
        """A failed entry emits only TEESettlementResult: SettlementRejected(wallet, status, fee, block),
        and our unsettled estimate is left as it was."""
        h.owed(P, 900)
        h.chain.logs = [MoneyLog(START, "0xfail", 0, SettlementResult(status, 900))]
        await h.watcher.step()
        assert h.events.of(SettlementRejected) == [SettlementRejected(USER, status, 900, START)]
        assert h.events.of(Settled) == []
        assert h.settled == []
        assert (h.accounts.of(P).our_unsettled, h.accounts.of(P).settled) == (900, 0)

    @pytest.mark.parametrize("event", [RefundQueued(P), AccountClosed(P)])
    async def test_refund_or_closed_account_asks_for_a_resync(
        self, h: Harness, event: RefundQueued | AccountClosed
    ) -> None:
        """RefundRequested and AccountDeleted carry no balance: the watcher asks for a re-read."""
        h.chain.logs = [MoneyLog(START, "0xr", 0, event)]
        await h.watcher.step()
        assert h.resyncs == 1

    async def test_logs_older_than_a_read_do_not_overwrite_it(self, h: Harness) -> None:
        """A read at block N is newer than a log of block N or earlier: its balance stays. The older
        settlement still comes off our unsettled estimate, which no read carries."""
        h.chain.head = START + 20
        h.accounts.observe(
            P, position=(START + 10, END_OF_BLOCK), exists=True, balance=NEURON, pending_refund=0
        )
        h.accounts.hold(P, 0).close(500)
        h.chain.logs = [
            *settlement(START + 5, "0xold", P, 200, 9 * NEURON),
            MoneyLog(START + 10, "0xsame", 4, BalanceChanged(P, 8 * NEURON, 0)),
        ]
        await h.watcher.step()
        account = h.accounts.of(P)
        assert (account.balance, account.as_of) == (NEURON, (START + 10, END_OF_BLOCK))
        assert account.our_unsettled == 300
        h.chain.head = START + 21
        h.chain.logs.append(MoneyLog(START + 21, "0xnew", 0, BalanceChanged(P, 6 * NEURON, 0)))
        await h.watcher.step()
        assert (account.balance, account.as_of) == (6 * NEURON, (START + 21, 0))

    async def test_duplicate_logs_in_one_answer_apply_once(self, h: Harness) -> None:
        """A node that returns a log twice in one response does not double the settlement."""
        h.owed(P, 1_000)
        logs = settlement(START, "0xdup", P, 400, 4 * NEURON)
        h.chain.logs = logs + logs
        await h.watcher.step()
        assert h.accounts.of(P).our_unsettled == 600
        assert len(h.events.of(Settled)) == 1
        assert h.watcher.applied_logs == 3


class TestConfirmations:
    async def test_logs_wait_until_buried(self, chain: FakeChain) -> None:
        """With 3 confirmations a log at block B is applied only once the head reaches B + 3."""
        h = Harness(chain, confirmations=3)
        h.owed(P, 1_000)
        chain.logs = settlement(START + 5, "0xt", P, 1_000, 2 * NEURON)
        chain.head = START + 7
        assert await h.watcher.step()
        assert chain.ranges == [(START, START + 4)]
        assert h.accounts.of(P).our_unsettled == 1_000
        assert h.watcher.cursor == START + 5
        chain.head = START + 8
        assert await h.watcher.step()
        assert chain.ranges[-1] == (START + 5, START + 5)
        assert h.accounts.of(P).our_unsettled == 0
        assert h.events.of(WatcherProgress)[-1] == WatcherProgress(USER, START + 5, START + 8)

    async def test_nothing_is_read_before_the_first_block_is_buried(self, chain: FakeChain) -> None:
        """Head within the confirmation depth of the start: no logs read, cursor kept, caught up; the
        pass still reports progress (nothing applied past the block before the start, and the head)."""
        h = Harness(chain, confirmations=5)
        chain.head = START + 4
        assert await h.watcher.step()
        assert chain.ranges == []
        assert h.watcher.cursor == START
        assert h.events.of(WatcherProgress) == [WatcherProgress(USER, START - 1, START + 4)]

    async def test_long_ranges_are_read_in_chunks(self, chain: FakeChain) -> None:
        """Far behind the head, each pass reads at most MAX_RANGE blocks and says it is not caught up."""
        h = Harness(chain, start=0)
        chain.head = 2 * MAX_RANGE + 10
        assert not await h.watcher.step()
        assert not await h.watcher.step()
        assert await h.watcher.step()
        assert chain.ranges == [
            (0, MAX_RANGE - 1),
            (MAX_RANGE, 2 * MAX_RANGE - 1),
            (2 * MAX_RANGE, 2 * MAX_RANGE + 10),
        ]
        assert h.watcher.cursor == 2 * MAX_RANGE + 11


class TestReorg:
    async def test_changed_hash_rewinds_and_asks_for_a_resync(self, chain: FakeChain) -> None:
        """If the last applied block's hash changed, the cursor steps back REWIND blocks, a re-read is
        requested and the reorg is reported; nothing is read in that pass."""
        h = Harness(chain)
        chain.head = START + 100
        await h.watcher.step()
        assert h.watcher.cursor == START + 101
        chain.hashes[START + 100] = "0xother"
        reads = len(chain.ranges)
        assert not await h.watcher.step()
        assert h.watcher.cursor == START + 100 - REWIND + 1
        assert h.resyncs == 1
        assert len(chain.ranges) == reads
        [error] = h.events.of(BackgroundError)
        assert error.task == "settlement-watcher"
        assert f"reorganised at block {START + 100}" in error.detail

    async def test_rescan_after_a_rewind_applies_each_log_once(self, chain: FakeChain) -> None:
        """Logs re-read after a rewind (same tx, same index) are not applied again; a log that only the
        new chain has is."""
        h = Harness(chain)
        h.owed(P, 1_000)
        chain.head = START + 10
        chain.logs = settlement(START + 8, "0xkept", P, 400, 4 * NEURON)
        await h.watcher.step()
        assert h.accounts.of(P).our_unsettled == 600
        chain.hashes[START + 10] = "0xreorged"
        assert not await h.watcher.step()
        chain.logs.append(MoneyLog(START + 9, "0xfresh", 0, BalanceChanged(Q, 2 * NEURON, 0)))
        assert await h.watcher.step()
        assert chain.ranges[-1][0] <= START + 8  # the settlement's block really was read again
        account = h.accounts.of(P)
        assert (account.our_unsettled, account.settled) == (600, 400)
        assert h.events.of(Settled) == [Settled(USER, P, 400, START + 8)]
        assert h.settled == [P]
        assert h.accounts.of(Q).balance == 2 * NEURON

    async def test_rewind_never_goes_below_block_zero(self, chain: FakeChain) -> None:
        """A reorg near genesis rewinds to block 0, not a negative block."""
        h = Harness(chain, start=0)
        chain.head = 3
        await h.watcher.step()
        chain.hashes[3] = "0xother"
        await h.watcher.step()
        assert h.watcher.cursor == 0

    async def test_an_unchanged_hash_reads_on(self, chain: FakeChain) -> None:
        """No reorg: the next pass carries on from the cursor without asking for a resync."""
        h = Harness(chain)
        chain.head = START + 2
        await h.watcher.step()
        chain.head = START + 4
        await h.watcher.step()
        assert chain.ranges == [(START, START + 2), (START + 3, START + 4)]
        assert h.resyncs == 0


class TestOutage:
    @pytest.mark.parametrize("call", ["block_number", "money_logs"])
    async def test_a_failed_pass_changes_nothing(self, h: Harness, call: str) -> None:
        """ChainUnavailable mid-pass propagates, and cursor, accounts and events stay as they were."""
        h.owed(P, 1_000)
        h.chain.head = START + 5
        h.chain.logs = settlement(START + 2, "0xt", P, 400, 4 * NEURON)
        h.chain.down.add(call)
        with pytest.raises(ChainUnavailable):
            await h.watcher.step()
        assert h.watcher.cursor == START
        account = h.accounts.of(P)
        assert (account.our_unsettled, account.balance, account.as_of) == (
            1_000,
            5 * NEURON,
            (START - 1, END_OF_BLOCK),
        )
        assert h.events.events == []
        assert h.settled == []

    async def test_logs_fetched_but_not_committed_are_not_applied(self, h: Harness) -> None:
        """If the pass fails after reading the logs (the range's end hash), none of them is applied, and
        the retry applies them exactly once."""
        h.owed(P, 1_000)
        h.chain.head = START + 5
        h.chain.logs = settlement(START + 2, "0xt", P, 400, 4 * NEURON)
        h.chain.hash_down.add(START + 5)
        with pytest.raises(ChainUnavailable):
            await h.watcher.step()
        assert h.watcher.cursor == START
        assert h.accounts.of(P).our_unsettled == 1_000
        assert h.events.of(Settled) == []
        h.chain.hash_down.clear()
        assert await h.watcher.step()
        assert h.accounts.of(P).our_unsettled == 600
        assert h.events.of(Settled) == [Settled(USER, P, 400, START + 2)]

    async def test_the_next_pass_catches_up_without_double_applying(self, h: Harness) -> None:
        """Applied, then an outage while more logs land, then recovery: old logs once, new ones once."""
        h.owed(P, 1_000)
        h.chain.head = START + 2
        h.chain.logs = settlement(START + 1, "0xa", P, 100, 4 * NEURON)
        await h.watcher.step()
        h.chain.head = START + 9
        h.chain.logs += settlement(START + 7, "0xb", P, 200, 3 * NEURON)
        h.chain.down.add("money_logs")
        with pytest.raises(ChainUnavailable):
            await h.watcher.step()
        assert h.watcher.cursor == START + 3
        h.chain.down.clear()
        assert await h.watcher.step()
        assert h.chain.ranges[-1] == (START + 3, START + 9)
        account = h.accounts.of(P)
        assert (account.our_unsettled, account.settled, account.balance) == (700, 300, 3 * NEURON)
        assert [e.amount for e in h.events.of(Settled)] == [100, 200]


class _Stop(Exception):
    """Ends a run() loop from the fake sleep."""


def scripted_sleep(
    delays: list[float], stop_after: int, between: Callable[[int], None]
) -> Callable[[float], Coroutine[Any, Any, None]]:
    """A stand-in for asyncio.sleep that records each delay, lets the test change the world before the
    n-th pass (``between(n)``), and stops the loop after ``stop_after`` sleeps."""
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) > stop_after:
            raise _Stop
        between(len(delays))
        await real_sleep(0)

    return sleep


class TestRun:
    async def test_backs_off_while_down_reports_once_and_resumes_from_the_cursor(
        self, h: Harness, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """run(): an outage doubles the wait up to MAX_BACKOFF and is reported once; on recovery the
        interval is back and the read resumes at the cursor."""
        delays: list[float] = []
        h.chain.head = START + 1
        h.owed(P, 1_000)

        def between(n: int) -> None:
            if n == 2:
                h.chain.head = START + 4
                h.chain.logs = settlement(START + 3, "0xt", P, 250, 4 * NEURON)
                h.chain.down.add("block_number")
            if n == 9:
                h.chain.down.clear()

        monkeypatch.setattr(asyncio, "sleep", scripted_sleep(delays, 9, between))
        with pytest.raises(_Stop):
            await h.watcher.run()
        assert delays == [1.0, 1.0, 2.0, 4.0, 8.0, MAX_BACKOFF, MAX_BACKOFF, MAX_BACKOFF, MAX_BACKOFF, 1.0]
        assert len(h.events.of(BackgroundError)) == 1
        assert h.chain.ranges == [(START, START + 1), (START + 2, START + 4)]
        assert h.accounts.of(P).our_unsettled == 750

    async def test_catching_up_runs_passes_back_to_back(
        self, chain: FakeChain, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """While far behind, run() starts the next pass at once; once caught up it waits the interval."""
        h = Harness(chain, start=0)
        chain.head = MAX_RANGE + 5
        delays: list[float] = []
        monkeypatch.setattr(asyncio, "sleep", scripted_sleep(delays, 3, lambda _n: None))
        with pytest.raises(_Stop):
            await h.watcher.run()
        assert delays == [1.0, 0, 1.0, 1.0]

    async def test_an_outage_during_catch_up_still_backs_off(
        self, chain: FakeChain, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An outage right after a catch-up pass (whose next wait is 0) must still wait between retries,
        not hammer the RPC in a tight loop."""
        h = Harness(chain, start=0)
        chain.head = 3 * MAX_RANGE
        delays: list[float] = []

        def between(n: int) -> None:
            if n == 2:
                chain.down.add("money_logs")

        monkeypatch.setattr(asyncio, "sleep", scripted_sleep(delays, 6, between))
        with pytest.raises(_Stop):
            await h.watcher.run()
        assert delays[:2] == [1.0, 0]
        retries = delays[2:]
        assert all(delay > 0 for delay in retries), delays
        assert retries == sorted(retries)
        assert len(h.events.of(BackgroundError)) == 1
