"""The funder against a small simulated chain: how much it sends, when it holds back (ledger low, provider
cap, failures, drains), acknowledgement, and one transaction at a time per provider."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import Counter
from typing import cast

import pytest

from router.chain.client import ChainClient
from router.config import MoneyOptions
from router.errors import ChainError, ChainUnavailable, ContractRevert, FundingError, TransactionFailed
from router.money.balances import END_OF_BLOCK
from router.money.funder import MAX_PROVIDERS_PER_RETRIEVE, MAX_PROVIDERS_PER_SERVICE, Funder
from router.observability.events import Funded, FundingFailed
from router.pool.accounting import Accounts, FundingState
from router.pool.capacity import MemoryCapacity
from router.pool.providers import Pool, ProviderInfo, ProviderKind
from router.types import Account, Ledger, TxResult
from tests.support import NEURON, EventLog, FakeClock

USER = "0x00000000000000000000000000000000000000c5"
P = "0xAAaa000000000000000000000000000000000001"
Q = "0xBBbb000000000000000000000000000000000002"
STATIC = "hosted"
TENTH = NEURON // 10


def info(provider: str, kind: ProviderKind = ProviderKind.CHAIN) -> ProviderInfo:
    base = f"http://{provider.lower()}.test"
    return ProviderInfo(
        id=provider,
        kind=kind,
        base_url=base + "/v1/proxy",
        probe_url=base + "/v1/models",
        service_type="chatbot",
        models=("model-a",),
    )


class FakeChain:
    """The ledger and sub-accounts of one wallet, changed by the funder's transactions as the contracts
    would: a transfer cancels queued refunds first and takes the rest from the ledger, reverting with
    InsufficientAvailableBalance when the ledger cannot pay; a new account needs at least 1 0G.

    ``transfers`` lists every attempt, reverted ones too; ``errors`` are raised by the next transactions;
    ``gate`` holds transfers until set; ``overlap`` is the most in flight at once per provider."""

    def __init__(self, ledger: int = 100 * NEURON) -> None:
        self.block = 50
        self.ledger_available = ledger
        self.subs: dict[str, Account] = {}
        self.also_funded: set[str] = set()
        self.transfers: list[tuple[str, int]] = []
        self.acks: list[tuple[str, bool]] = []
        self.retrieves: list[list[str]] = []
        self.errors: list[ChainError] = []
        self.gate: asyncio.Event | None = None
        self.in_flight: Counter[str] = Counter()
        self.overlap: Counter[str] = Counter()
        self.peak = 0

    def open(self, provider: str, balance: int, *, pending: int = 0, acknowledged: bool = True) -> None:
        self.subs[provider.lower()] = Account(USER, provider, 0, balance, pending, (), "", acknowledged, 0, 0)

    @property
    def funded(self) -> frozenset[str]:
        return frozenset(self.subs) | frozenset(p.lower() for p in self.also_funded)

    def _mined(self) -> TxResult:
        self.block += 1
        return TxResult(f"0x{self.block:064x}", self.block, 21_000)

    async def transfer_fund(self, provider: str, amount: int) -> TxResult:
        key = provider.lower()
        self.in_flight[key] += 1
        self.overlap[key] = max(self.overlap[key], self.in_flight[key])
        self.peak = max(self.peak, sum(self.in_flight.values()))
        try:
            if self.gate is not None:
                await self.gate.wait()
            self.transfers.append((provider, amount))
            if self.errors:
                raise self.errors.pop(0)
            sub = self.subs.get(key)
            cancelled = min(sub.pending_refund, amount) if sub else 0
            if amount - cancelled > self.ledger_available:
                raise ContractRevert(
                    "transferFund", "InsufficientAvailableBalance", [self.ledger_available, amount]
                )
            if sub is None and amount < NEURON:
                raise ContractRevert("transferFund", "Error", ["transfer below the 1 0G minimum"])
            self.ledger_available -= amount - cancelled
            if sub is None:
                self.open(provider, amount)
            else:
                balance = sub.balance + amount - cancelled
                self.subs[key] = dataclasses.replace(
                    sub, balance=balance, pending_refund=sub.pending_refund - cancelled
                )
            return self._mined()
        finally:
            self.in_flight[key] -= 1

    async def acknowledge_tee_signer(self, provider: str, acknowledged: bool = True) -> TxResult:
        if self.errors:
            raise self.errors.pop(0)
        self.acks.append((provider, acknowledged))
        key = provider.lower()
        self.subs[key] = dataclasses.replace(self.subs[key], acknowledged=acknowledged)
        return self._mined()

    async def retrieve_fund(self, providers: list[str]) -> TxResult:
        self.retrieves.append(list(providers))
        for provider in providers:
            sub = self.subs.get(provider.lower())
            if sub is not None:
                self.subs[provider.lower()] = dataclasses.replace(sub, pending_refund=sub.balance)
        return self._mined()

    async def get_account(self, user: str, provider: str, *, block: int | None = None) -> Account | None:
        assert user == USER
        assert block == self.block  # the funder reads the state right after its own transaction
        return self.subs.get(provider.lower())

    async def get_ledger(self, user: str, *, block: int | None = None) -> Ledger | None:
        assert user == USER
        total = self.ledger_available + sum(sub.balance for sub in self.subs.values())
        return Ledger(user, self.ledger_available, total, "")


class Harness:
    """A Funder over a FakeChain, a real Pool and Accounts, a FakeClock, and recorded events."""

    def __init__(
        self,
        chain: FakeChain,
        options: MoneyOptions | None = None,
        providers: tuple[str, ...] = (P,),
    ) -> None:
        self.chain = chain
        self.options = options or MoneyOptions()
        self.clock = FakeClock()
        self.pool = Pool(clock=self.clock, capacity=MemoryCapacity(clock=self.clock))
        self.pool.replace(ProviderKind.CHAIN, [info(p) for p in providers])
        self.pool.replace(ProviderKind.STATIC, [info(STATIC, ProviderKind.STATIC)])
        self.accounts = Accounts(low_water=self.options.fund_below_neuron)
        self.events = EventLog()
        self.funded: list[str] = []
        self.funder = Funder(
            cast(ChainClient, chain),
            self.accounts,
            self.pool,
            self.options,
            user=USER,
            clock=self.clock,
            emit=self.events,
            on_funded=self.funded.append,
        )

    def sync(self) -> None:
        """What a balance-sync round does: read every chain provider's account and the ledger."""
        chain = self.chain
        chain.block += 1
        for state in self.pool:
            if state.info.kind is ProviderKind.CHAIN:
                sub = chain.subs.get(state.id.lower())
                self.accounts.observe(
                    state.id,
                    position=(chain.block, END_OF_BLOCK),
                    exists=sub is not None,
                    balance=sub.balance if sub else 0,
                    pending_refund=sub.pending_refund if sub else 0,
                    acknowledged=sub.acknowledged if sub else False,
                )
        self.accounts.observe_ledger(
            block=chain.block, available=chain.ledger_available, total=0, providers=chain.funded
        )

    def spend(self, provider: str, cost: int) -> None:
        """A request at ``provider`` billed ``cost`` (not yet settled)."""
        self.accounts.hold(provider, 0).close(cost)


class TestTopUp:
    async def test_top_up_brings_available_to_fund_to(self) -> None:
        """Available 0.6 0G (after unsettled fees and a request in flight) < fund_below 1: 1.4 0G is sent,
        landing exactly on fund_to; Funded and on_funded report it; the ledger view follows."""
        chain = FakeChain()
        chain.open(P, 25 * TENTH)
        h = Harness(chain)
        h.sync()
        h.spend(P, 8 * TENTH)
        hold = h.accounts.hold(P, TENTH)
        assert h.accounts.of(P).available == 6 * TENTH
        await h.funder.cycle()
        assert chain.transfers == [(P, 14 * TENTH)]
        account = h.accounts.of(P)
        assert (account.available, account.funding) == (h.options.fund_to_neuron, FundingState.OK)
        [funded] = h.events.of(Funded)
        assert (funded.wallet, funded.provider, funded.amount, funded.manual) == (USER, P, 14 * TENTH, False)
        assert funded.tx_hash == f"0x{chain.block:064x}"
        assert h.funded == [P]
        assert h.accounts.ledger_available == 100 * NEURON - 14 * TENTH
        assert h.events.of(FundingFailed) == []
        assert h.accounts.get(STATIC) is None  # static upstreams have no sub-account to fund
        hold.close(None)

    @pytest.mark.parametrize(("balance", "due"), [(2 * NEURON, False), (2 * NEURON - 1, True)])
    async def test_fund_below_is_a_strict_threshold(self, balance: int, due: bool) -> None:
        """Available exactly at fund_below is left alone; one neuron under it is topped up."""
        chain = FakeChain()
        chain.open(P, balance)
        h = Harness(chain)
        h.sync()
        assert h.funder.due() == ([(P, 2 * NEURON - (balance - NEURON))] if due else [])

    async def test_new_provider_gets_fund_to_plus_the_minimum(self) -> None:
        """No sub-account: fund_to + 1 0G opens it (plus any reservations already waiting on it)."""
        chain = FakeChain()
        h = Harness(chain, providers=(P, Q))
        h.sync()
        waiting = h.accounts.hold(Q, TENTH)
        await h.funder.cycle()
        assert sorted(chain.transfers) == sorted([(P, 3 * NEURON), (Q, 3 * NEURON + TENTH)])
        for provider in (P, Q):
            account = h.accounts.of(provider)
            assert (account.exists, account.acknowledged, account.available) == (True, True, 2 * NEURON)
        assert h.accounts.funded_providers == {P.lower(), Q.lower()}
        waiting.close(None)

    async def test_new_providers_wait_when_fund_new_providers_is_off(self) -> None:
        """fund_new_providers = false: no account is opened, but an existing low one is topped up."""
        chain = FakeChain()
        chain.open(Q, NEURON)
        h = Harness(chain, MoneyOptions(fund_new_providers=False), providers=(P, Q))
        h.sync()
        await h.funder.cycle()
        assert chain.transfers == [(Q, 2 * NEURON)]
        assert not h.accounts.of(P).exists

    async def test_auto_fund_off_sends_nothing(self) -> None:
        """auto_fund = false: no transaction for new or low providers; each chain provider shows OFF and
        static upstreams get no record at all."""
        chain = FakeChain()
        chain.open(Q, NEURON, acknowledged=False)
        h = Harness(chain, MoneyOptions(auto_fund=False), providers=(P, Q))
        h.sync()
        assert h.funder.due() == []
        await h.funder.cycle()
        assert (chain.transfers, chain.acks) == ([], [])
        assert h.accounts.of(P).funding is FundingState.OFF
        assert h.accounts.of(Q).funding is FundingState.OFF
        assert h.accounts.get(STATIC) is None

    async def test_run_funds_when_woken(self) -> None:
        """run() waits for wake() and then runs a cycle."""
        chain = FakeChain()
        h = Harness(chain)
        h.sync()
        task = asyncio.create_task(h.funder.run())
        await asyncio.sleep(0)
        assert chain.transfers == []
        h.funder.wake()
        funded = await h.events.wait_for(lambda e: isinstance(e, Funded), within=5)
        assert funded.provider == P
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class TestLedgerLow:
    async def test_ledger_too_low_reports_once_and_waits_for_a_deposit(self) -> None:
        """A ledger that cannot open the account: no transaction, FundingFailed(ledger_low) once, and no
        retry while the ledger stays as it is, however often it is re-read; a deposit brings funding."""
        chain = FakeChain(ledger=5 * TENTH)
        h = Harness(chain)
        h.sync()
        await h.funder.cycle()
        await h.funder.cycle()
        h.sync()
        await h.funder.cycle()
        assert chain.transfers == []
        [failure] = h.events.of(FundingFailed)
        assert (failure.wallet, failure.provider, failure.state) == (USER, P, "ledger_low")
        assert "deposit more" in failure.detail
        assert h.accounts.of(P).funding is FundingState.LEDGER_LOW
        assert h.funder.due() == []
        chain.ledger_available = 10 * NEURON
        h.sync()
        await h.funder.cycle()
        assert chain.transfers == [(P, 3 * NEURON)]
        assert h.accounts.of(P).funding is FundingState.OK
        assert len(h.events.of(FundingFailed)) == 1

    async def test_partial_top_up_when_the_ledger_covers_enough_to_serve(self) -> None:
        """Available -0.5 0G, ledger 1 0G: the whole ledger goes (it puts the provider back in service),
        with a ledger_low warning; the next cycle sends nothing and reports the ledger low."""
        chain = FakeChain(ledger=NEURON)
        chain.open(P, 12 * TENTH)
        h = Harness(chain)
        h.sync()
        h.spend(P, 7 * TENTH)
        assert h.accounts.of(P).available == -5 * TENTH
        await h.funder.cycle()
        assert chain.transfers == [(P, NEURON)]
        assert h.accounts.of(P).available == 5 * TENTH
        assert [e.amount for e in h.events.of(Funded)] == [NEURON]
        assert [f.state for f in h.events.of(FundingFailed)] == ["ledger_low"]
        assert h.accounts.of(P).funding is FundingState.OK
        await h.funder.cycle()
        await h.funder.cycle()
        assert len(chain.transfers) == 1
        assert [f.state for f in h.events.of(FundingFailed)] == ["ledger_low", "ledger_low"]
        assert h.accounts.of(P).funding is FundingState.LEDGER_LOW

    @pytest.mark.parametrize(
        ("balance", "ledger", "sent"),
        [
            (None, 15 * TENTH, 15 * TENTH),
            (None, NEURON, NEURON),
            (None, NEURON - 1, None),
            (12 * TENTH, 5 * TENTH, 5 * TENTH),
            (12 * TENTH, 5 * TENTH - 1, None),
        ],
    )
    async def test_a_short_ledger_sends_only_what_restores_service(
        self, balance: int | None, ledger: int, sent: int | None
    ) -> None:
        """Short of the full top-up, the ledger's whole balance goes if it opens a new account (at least
        the 1 0G first transfer) or brings an existing one (here at -0.5 0G) back to serving; else nothing."""
        chain = FakeChain(ledger=ledger)
        if balance is not None:
            chain.open(P, balance)
        h = Harness(chain)
        h.sync()
        if balance is not None:
            h.spend(P, 7 * TENTH)
        await h.funder.cycle()
        assert chain.transfers == ([(P, sent)] if sent is not None else [])
        expected = FundingState.OK if sent is not None else FundingState.LEDGER_LOW
        assert h.accounts.of(P).funding is expected

    async def test_a_revert_for_funds_counts_as_ledger_low(self) -> None:
        """Our ledger view says 10 0G but the chain has 0.1 (withdrawn elsewhere): the transfer reverts
        InsufficientAvailableBalance, the provider is ledger_low and not retried until the ledger grows."""
        chain = FakeChain(ledger=10 * NEURON)
        h = Harness(chain)
        h.sync()
        chain.ledger_available = TENTH
        await h.funder.cycle()
        assert chain.transfers == [(P, 3 * NEURON)]
        account = h.accounts.of(P)
        assert account.funding is FundingState.LEDGER_LOW
        assert "0.100000 0G available, short of the 3.000000 0G transfer" in account.funding_detail
        assert [f.state for f in h.events.of(FundingFailed)] == ["ledger_low"]
        assert h.events.of(Funded) == []
        h.sync()
        await h.funder.cycle()
        assert len(chain.transfers) == 1
        chain.ledger_available = 50 * NEURON
        h.sync()
        await h.funder.cycle()
        assert chain.transfers[-1] == (P, 3 * NEURON)
        assert h.accounts.of(P).funding is FundingState.OK

    async def test_after_a_revert_any_growth_of_the_real_ledger_brings_a_retry(self) -> None:
        """The revert showed our 10 0G view was stale (the chain had 0.1): once a deposit lifts the ledger
        to 5 0G, enough for the 3 0G top-up, funding resumes, though 5 is below the stale 10."""
        chain = FakeChain(ledger=10 * NEURON)
        h = Harness(chain)
        h.sync()
        chain.ledger_available = TENTH
        await h.funder.cycle()
        h.sync()
        chain.ledger_available = 5 * NEURON
        h.sync()
        await h.funder.cycle()
        assert chain.transfers == [(P, 3 * NEURON), (P, 3 * NEURON)]


class TestProviderCap:
    async def test_fifty_funded_providers_block_a_new_one(self) -> None:
        """At the contract's cap of 50 providers a new one is not attempted (provider_cap), while a
        provider already funded is still topped up."""
        chain = FakeChain()
        chain.open(Q, NEURON)
        chain.also_funded = {f"0x{i:040x}" for i in range(MAX_PROVIDERS_PER_SERVICE - 1)}
        h = Harness(chain, providers=(P, Q))
        h.sync()
        assert len(h.accounts.funded_providers) == MAX_PROVIDERS_PER_SERVICE
        await h.funder.cycle()
        assert chain.transfers == [(Q, 2 * NEURON)]
        assert h.accounts.of(P).funding is FundingState.PROVIDER_CAP
        [failure] = h.events.of(FundingFailed)
        assert (failure.provider, failure.state) == (P, "provider_cap")
        assert "50" in failure.detail
        await h.funder.cycle()
        assert len(h.events.of(FundingFailed)) == 1

    async def test_one_under_the_cap_is_funded(self) -> None:
        """49 funded providers leave room: the new provider is opened."""
        chain = FakeChain()
        chain.also_funded = {f"0x{i:040x}" for i in range(MAX_PROVIDERS_PER_SERVICE - 1)}
        h = Harness(chain)
        h.sync()
        await h.funder.cycle()
        assert chain.transfers == [(P, 3 * NEURON)]


class TestFailures:
    @pytest.mark.parametrize(
        ("error", "state"),
        [
            (ContractRevert("transferFund", "LedgerNotExists", [USER]), FundingState.LEDGER_LOW),
            (
                ContractRevert("transferFund", "TooManyProvidersForService", [50, 50]),
                FundingState.PROVIDER_CAP,
            ),
            (ContractRevert("transferFund", "Unknown", []), FundingState.FAILED),
            (TransactionFailed("transferFund: receipt timed out"), FundingState.FAILED),
            (ChainUnavailable("no RPC answered"), FundingState.FAILED),
        ],
    )
    async def test_errors_map_to_states(self, error: ChainError, state: FundingState) -> None:
        """Each failure is recorded on the account and reported with its state; the cycle itself survives."""
        chain = FakeChain()
        chain.errors = [error]
        h = Harness(chain)
        h.sync()
        await h.funder.cycle()
        assert h.accounts.of(P).funding is state
        assert [f.state for f in h.events.of(FundingFailed)] == [state.value]
        assert h.events.of(Funded) == []
        assert h.funded == []

    async def test_failed_transfer_is_retried_only_after_funding_retry(self) -> None:
        """A generic chain failure backs off for funding_retry seconds on the clock, then retries."""
        chain = FakeChain()
        chain.errors = [TransactionFailed("dropped from the mempool")]
        h = Harness(chain, MoneyOptions(funding_retry=60.0))
        h.sync()
        await h.funder.cycle()
        assert h.accounts.of(P).funding_detail == "dropped from the mempool"
        h.clock.now += 59.9
        assert h.funder.due() == []
        await h.funder.cycle()
        assert len(chain.transfers) == 1
        h.clock.now += 0.1
        assert h.funder.due() == [(P, 3 * NEURON)]
        await h.funder.cycle()
        assert len(chain.transfers) == 2
        assert h.accounts.of(P).funding is FundingState.OK
        assert len(h.events.of(FundingFailed)) == 1

    async def test_manual_fund_raises_or_sends_as_asked(self) -> None:
        """fund() by hand raises FundingError (with the state) for a revert, the chain error otherwise, and
        leaves the funding state as it was (an operator's refused request is no alert); its amount is
        neither capped at fund_to nor checked against our (here stale, 0.1 0G) ledger view."""
        chain = FakeChain(ledger=TENTH)
        h = Harness(chain)
        h.sync()
        with pytest.raises(FundingError) as caught:
            await h.funder.fund(P, 2 * NEURON)
        assert caught.value.reason == FundingState.LEDGER_LOW.value
        chain.errors = [TransactionFailed("reverted without a reason")]
        with pytest.raises(TransactionFailed):
            await h.funder.fund(P, 2 * NEURON)
        assert h.accounts.of(P).funding is FundingState.OK
        assert h.events.of(FundingFailed) == []
        chain.ledger_available = 50 * NEURON
        result = await h.funder.fund(P, 20 * NEURON)
        assert chain.transfers[-1] == (P, 20 * NEURON)
        assert result.block_number == chain.block
        assert (h.accounts.of(P).available, h.accounts.of(P).funding) == (19 * NEURON, FundingState.OK)


class TestSingleFlight:
    async def test_concurrent_funds_for_one_provider_run_one_at_a_time(self) -> None:
        """Two fund() calls for one provider (in either address case) never overlap on chain; a call for
        another provider runs alongside."""
        chain = FakeChain()
        chain.open(P, 2 * NEURON)
        chain.open(Q, 2 * NEURON)
        h = Harness(chain, providers=(P, Q))
        h.sync()
        chain.gate = asyncio.Event()
        tasks = [
            asyncio.create_task(h.funder.fund(P, NEURON)),
            asyncio.create_task(h.funder.fund(P.lower(), 2 * NEURON)),
            asyncio.create_task(h.funder.fund(Q, NEURON)),
        ]
        for _ in range(5):
            await asyncio.sleep(0)
        assert dict(chain.in_flight) == {P.lower(): 1, Q.lower(): 1}
        chain.gate.set()
        results = await asyncio.gather(*tasks)
        assert chain.overlap[P.lower()] == 1
        assert chain.peak == 2
        assert len({r.tx_hash for r in results}) == 3
        assert [a for p, a in chain.transfers if p.lower() == P.lower()] == [NEURON, 2 * NEURON]
        assert h.accounts.of(P).balance == 5 * NEURON
        assert [e.manual for e in h.events.of(Funded)] == [True, True, True]

    async def test_a_top_up_queued_behind_a_manual_fund_is_not_sent_stale(self) -> None:
        """A cycle that found the provider low while an operator's transfer was in flight waits for it,
        and then must not send its now-stale top-up: the provider is already above fund_below."""
        chain = FakeChain()
        chain.open(P, 15 * TENTH)  # available 0.5 0G
        h = Harness(chain)
        h.sync()
        chain.gate = asyncio.Event()
        manual = asyncio.create_task(h.funder.fund(P, 5 * NEURON))
        await asyncio.sleep(0)
        auto = asyncio.create_task(h.funder.cycle())
        await asyncio.sleep(0)
        chain.gate.set()
        await asyncio.gather(manual, auto)
        assert chain.transfers == [(P, 5 * NEURON)]
        assert h.accounts.of(P).available == 55 * TENTH


class TestDrain:
    async def test_drain_stops_funding_until_funded_by_hand(self) -> None:
        """drain() queues the refunds, marks DRAINING, and due() skips those providers though their
        headroom is gone; a manual fund() ends the drain and auto top-ups resume."""
        chain = FakeChain()
        chain.open(P, 3 * NEURON)
        chain.open(Q, 3 * NEURON)
        h = Harness(chain, providers=(P, Q))
        h.sync()
        results = await h.funder.drain([P, Q])
        assert chain.retrieves == [[P, Q]]
        assert len(results) == 1
        for provider in (P, Q):
            account = h.accounts.of(provider)
            assert account.pending_refund == 3 * NEURON
            assert account.available == -NEURON
            assert (account.funding, account.funding_detail) == (FundingState.DRAINING, "refund requested")
        assert h.funder.due() == []
        await h.funder.cycle()
        assert chain.transfers == []
        await h.funder.fund(P, 3 * NEURON)
        assert h.accounts.of(P).funding is FundingState.OK
        assert h.accounts.of(P).available == 2 * NEURON
        h.spend(P, 15 * TENTH)
        assert h.funder.due() == [(P, 15 * TENTH)]
        assert h.accounts.of(Q).funding is FundingState.DRAINING

    async def test_drain_sends_twenty_providers_per_call(self) -> None:
        """retrieveFund takes at most 20 providers: 25 go out as 20 + 5."""
        chain = FakeChain()
        providers = [f"0x{i + 1:040x}" for i in range(25)]
        for provider in providers:
            chain.open(provider, NEURON)
        h = Harness(chain, providers=tuple(providers))
        results = await h.funder.drain(providers)
        assert [len(call) for call in chain.retrieves] == [MAX_PROVIDERS_PER_RETRIEVE, 5]
        assert len(results) == 2
        assert all(h.accounts.of(p).funding is FundingState.DRAINING for p in providers)


class TestAcknowledge:
    async def test_unacknowledged_account_with_funds_is_only_acknowledged(self) -> None:
        """An existing, well-funded but unacknowledged sub-account gets acknowledgeTEESigner and no
        transfer; nothing is reported as funded, and the next cycle has nothing to do."""
        chain = FakeChain()
        chain.open(P, 5 * NEURON, acknowledged=False)
        h = Harness(chain)
        h.sync()
        assert h.funder.due() == [(P, 0)]
        await h.funder.cycle()
        assert chain.acks == [(P, True)]
        assert chain.transfers == []
        assert h.accounts.of(P).acknowledged
        assert h.events.of(Funded) == []
        assert h.funded == []
        assert h.funder.due() == []

    async def test_failed_acknowledgement_backs_off(self) -> None:
        """An acknowledgement that fails is FAILED, reported, and retried after funding_retry; once the
        retry succeeds the provider is OK again."""
        chain = FakeChain()
        chain.open(P, 5 * NEURON, acknowledged=False)
        chain.errors = [ChainUnavailable("no RPC answered")]
        h = Harness(chain)
        h.sync()
        await h.funder.cycle()
        assert h.accounts.of(P).funding is FundingState.FAILED
        [failure] = h.events.of(FundingFailed)
        assert "acknowledging the provider failed" in failure.detail
        assert h.funder.due() == []
        h.clock.now += h.options.funding_retry
        await h.funder.cycle()
        assert chain.acks == [(P, True)]
        account = h.accounts.of(P)
        assert account.acknowledged
        assert account.funding is FundingState.OK  # the retry succeeded: no stale "failed" in the admin view
