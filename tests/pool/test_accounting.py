"""Sub-account accounting: available headroom, holds, chain views stamped with their position, settlements."""

from __future__ import annotations

import pytest

from router.money.balances import END_OF_BLOCK as END
from router.pool.accounting import MINIMUM_LOCKED, Accounts, FundingState, Hold, SubAccount
from tests.support import NEURON

P = "0xAbCdEf0000000000000000000000000000000001"


def funded(
    accounts: Accounts, provider: str = P, *, balance: int = 5 * NEURON, pending: int = 0
) -> SubAccount:
    """Record ``provider``'s sub-account as read at block 10."""
    accounts.observe(
        provider, position=(10, END), exists=True, balance=balance, pending_refund=pending, acknowledged=True
    )
    return accounts.of(provider)


class TestAvailable:
    def test_a_missing_account_is_one_0g_short(self) -> None:
        """No account: available is -1 0G, so nothing (not even a free request) is routed there."""
        account = SubAccount(P)
        assert account.available == -MINIMUM_LOCKED == -NEURON
        account.balance = 9 * NEURON  # stale numbers of a deleted account do not count
        assert account.available == -NEURON

    def test_formula_subtracts_pending_unsettled_reserved_and_the_minimum(self) -> None:
        """available = balance - pending - max(provider, ours) - reserved - 1 0G."""
        account = SubAccount(P, exists=True, balance=10 * NEURON, pending_refund=2 * NEURON)
        account.reserved = NEURON // 2
        account.our_unsettled = NEURON
        account.provider_unsettled = 3 * NEURON
        assert account.locked == 8 * NEURON
        assert account.unsettled == 3 * NEURON
        assert account.available == 8 * NEURON - 3 * NEURON - NEURON // 2 - NEURON

    @pytest.mark.parametrize(("provider", "ours", "expected"), [(7, 3, 7), (3, 7, 7), (0, 0, 0)])
    def test_unsettled_is_the_larger_of_the_two_views(self, provider: int, ours: int, expected: int) -> None:
        """The provider's report and our own estimate overlap: the larger one counts, never their sum."""
        account = SubAccount(P, exists=True, balance=20, provider_unsettled=provider, our_unsettled=ours)
        assert account.unsettled == expected
        assert account.available == 20 - expected - MINIMUM_LOCKED

    def test_exactly_one_0g_locked_has_zero_headroom(self) -> None:
        """A sub-account holding just the broker's minimum can serve nothing that costs (protocol §4.6)."""
        account = SubAccount(P, exists=True, balance=NEURON)
        assert account.available == 0

    def test_defaults(self) -> None:
        """A fresh record knows nothing: no account, not acknowledged, position before any block, OK."""
        account = SubAccount(P)
        assert (account.exists, account.acknowledged, account.as_of) == (False, False, (-1, -1))
        assert account.funding is FundingState.OK


class TestLookup:
    def test_providers_are_case_insensitive_and_created_on_first_use(self) -> None:
        """``of`` creates one record per address in any case; ``get`` never creates."""
        accounts = Accounts()
        assert accounts.get(P) is None
        record = accounts.of(P.upper())
        assert accounts.of(P.lower()) is record
        assert accounts.get(P) is record
        assert list(accounts) == [record]
        assert record.provider == P.upper()

    def test_covers_needs_a_known_account_with_the_headroom(self) -> None:
        """``covers`` is False for unknown or missing accounts, and compares available with ``>=``."""
        accounts = Accounts()
        assert not accounts.covers(P, 0)
        assert accounts.get(P) is None  # asking does not create a record
        accounts.of(P)
        assert not accounts.covers(P, 0)
        funded(accounts, balance=3 * NEURON)
        assert accounts.covers(P.upper(), 2 * NEURON)
        assert not accounts.covers(P, 2 * NEURON + 1)


class TestHold:
    def test_hold_reserves_until_closed(self) -> None:
        """A hold lowers available by its amount at once; closing without a cost gives it all back."""
        accounts = Accounts()
        account = funded(accounts)
        before = account.available
        hold = accounts.hold(P, NEURON)
        assert account.reserved == NEURON
        assert account.available == before - NEURON
        hold.close(None)
        assert account.reserved == 0
        assert account.available == before
        assert (account.spent, account.our_unsettled) == (0, 0)

    def test_close_books_the_cost_as_spent_and_unsettled(self) -> None:
        """The actual cost replaces the reservation: spent and our unsettled grow by it."""
        accounts = Accounts()
        account = funded(accounts)
        hold = accounts.hold(P, 10_000)
        hold.close(2_500)
        assert account.reserved == 0
        assert account.spent == 2_500
        assert account.our_unsettled == 2_500
        assert account.available == 4 * NEURON - 2_500

    def test_close_is_idempotent(self) -> None:
        """A second close (failover cleanup after success, say) neither releases nor books again."""
        accounts = Accounts()
        account = funded(accounts)
        other = accounts.hold(P, 300)
        hold = accounts.hold(P, 1_000)
        hold.close(700)
        hold.close(700)
        hold.close(None)
        assert account.reserved == 300
        assert (account.spent, account.our_unsettled) == (700, 700)
        other.close(0)
        assert account.reserved == 0
        assert account.spent == 700

    def test_zero_cost_books_nothing(self) -> None:
        """A free reply releases the hold and books no spend."""
        accounts = Accounts()
        account = funded(accounts)
        accounts.hold(P, 5).close(0)
        assert (account.reserved, account.spent, account.our_unsettled) == (0, 0, 0)

    def test_a_hold_without_a_book_does_nothing(self) -> None:
        """The dispatcher's placeholder hold (no accounts) can be closed with a cost harmlessly."""
        hold = Hold(None, None, 0)
        hold.close(100)
        hold.close(100)
        assert hold.amount == 0

    def test_hold_on_an_unknown_provider_creates_its_record(self) -> None:
        """Reserving at a provider never seen creates an empty record carrying the reservation."""
        accounts = Accounts()
        accounts.hold(P, 42)
        record = accounts.get(P)
        assert record is not None
        assert record.reserved == 42
        assert not record.exists


class TestLowWater:
    def test_on_low_fires_when_a_cost_crosses_low_water(self) -> None:
        """A cost taking available under ``low_water`` calls ``on_low``; one that leaves it above does not."""
        calls: list[str] = []
        accounts = Accounts(low_water=NEURON, on_low=lambda: calls.append("low"))
        funded(accounts, balance=2 * NEURON + 500)  # available = 1 0G + 500
        accounts.hold(P, 1_000).close(500)
        assert calls == []
        assert accounts.of(P).available == NEURON
        accounts.hold(P, 1_000).close(1)
        assert calls == ["low"]

    def test_releasing_without_cost_never_calls_on_low(self) -> None:
        """Only booked spend can wake the funder; a hold released unbilled cannot."""
        calls: list[str] = []
        accounts = Accounts(low_water=10 * NEURON, on_low=lambda: calls.append("low"))
        funded(accounts)
        accounts.hold(P, NEURON).close(None)
        assert calls == []

    def test_reservations_in_flight_count_towards_low_water(self) -> None:
        """Another request's hold is part of what is no longer available when the check runs."""
        calls: list[str] = []
        accounts = Accounts(low_water=NEURON, on_low=lambda: calls.append("low"))
        funded(accounts, balance=3 * NEURON)  # available = 2 0G
        big = accounts.hold(P, NEURON)
        accounts.hold(P, 10).close(1)
        assert calls == ["low"]
        big.close(None)


class TestObserve:
    def test_newer_position_replaces_older_is_ignored(self) -> None:
        """A view at an older (block, log index) returns False and changes nothing."""
        accounts = Accounts()
        assert accounts.observe(P, position=(20, 3), exists=True, balance=7, pending_refund=1)
        assert not accounts.observe(P, position=(20, 2), exists=True, balance=99, pending_refund=0)
        assert not accounts.observe(P, position=(19, END), exists=False)
        account = accounts.of(P)
        assert (account.exists, account.balance, account.pending_refund, account.as_of) == (
            True,
            7,
            1,
            (20, 3),
        )
        assert accounts.observe(P, position=(20, 4), exists=True, balance=5, pending_refund=0)
        assert (account.balance, account.pending_refund) == (5, 0)

    def test_the_same_position_applies_again(self) -> None:
        """Re-applying the same log (same position) is accepted and idempotent."""
        accounts = Accounts()
        accounts.observe(P, position=(5, 1), exists=True, balance=10)
        assert accounts.observe(P, position=(5, 1), exists=True, balance=10)
        assert accounts.of(P).balance == 10

    def test_a_read_of_a_block_beats_every_log_in_it(self) -> None:
        """A read at block N (end of block) is newer than any log of block N, older than block N+1's."""
        accounts = Accounts()
        accounts.observe(P, position=(30, END), exists=True, balance=4 * NEURON)
        assert not accounts.observe(P, position=(30, 10_000), exists=True, balance=NEURON)
        assert accounts.observe(P, position=(31, 0), exists=True, balance=3 * NEURON)
        assert accounts.of(P).balance == 3 * NEURON

    def test_a_closed_account_is_zeroed_and_unacknowledged(self) -> None:
        """``exists=False`` clears balance, pending and acknowledgement whatever else is passed."""
        accounts = Accounts()
        funded(accounts, balance=3 * NEURON, pending=NEURON)
        accounts.observe(P, position=(11, 0), exists=False, balance=5, pending_refund=5, acknowledged=True)
        account = accounts.of(P)
        assert (account.exists, account.balance, account.pending_refund, account.acknowledged) == (
            False,
            0,
            0,
            False,
        )
        assert account.available == -NEURON

    def test_acknowledged_none_keeps_what_is_known(self) -> None:
        """Logs carry no acknowledgement flag: a log's view keeps the last read's flag."""
        accounts = Accounts()
        funded(accounts)
        accounts.observe(P, position=(12, 0), exists=True, balance=NEURON)
        assert accounts.of(P).acknowledged
        accounts.observe(P, position=(13, END), exists=True, balance=NEURON, acknowledged=False)
        assert not accounts.of(P).acknowledged

    def test_observe_leaves_local_estimates_alone(self) -> None:
        """A chain view replaces balance and pending only: reservations and our spend are ours."""
        accounts = Accounts()
        account = funded(accounts)
        hold = accounts.hold(P, 50)
        accounts.hold(P, 10).close(10)
        accounts.observe(P, position=(40, END), exists=True, balance=2 * NEURON)
        assert (account.reserved, account.our_unsettled, account.spent) == (50, 10, 10)
        hold.close(None)


class TestSettled:
    def test_settlement_lowers_our_unsettled_and_counts_settled(self) -> None:
        """A settlement of X takes X off our unsettled estimate and adds X to settled."""
        accounts = Accounts()
        account = funded(accounts)
        accounts.hold(P, 0).close(1_000)
        accounts.settled(P.upper(), 600)
        assert (account.our_unsettled, account.settled, account.spent) == (400, 600, 1_000)

    def test_settling_more_than_we_counted_floors_at_zero(self) -> None:
        """Fees we never saw (another router on the wallet) cannot make our estimate negative."""
        accounts = Accounts()
        account = funded(accounts)
        accounts.hold(P, 0).close(100)
        accounts.settled(P, 500)
        assert account.our_unsettled == 0
        assert account.settled == 500

    def test_settlement_for_an_unknown_provider_creates_a_record(self) -> None:
        """A settlement seen before any read still lands (on a fresh record)."""
        accounts = Accounts()
        accounts.settled(P, 5)
        record = accounts.get(P)
        assert record is not None
        assert (record.settled, record.our_unsettled) == (5, 0)


class TestLedger:
    def test_ledger_view_and_funded_providers_lowercased(self) -> None:
        """The ledger's numbers and the funded set are stored; addresses are lowercased."""
        accounts = Accounts()
        accounts.observe_ledger(block=7, available=3, total=9, providers=frozenset({P, "0xBB"}))
        assert (accounts.ledger_block, accounts.ledger_available, accounts.ledger_total) == (7, 3, 9)
        assert accounts.funded_providers == {P.lower(), "0xbb"}

    def test_an_older_ledger_read_is_ignored(self) -> None:
        """A read from an earlier block never replaces a later one; the same block does."""
        accounts = Accounts()
        accounts.observe_ledger(block=7, available=3, total=9, providers=frozenset({"0xaa"}))
        accounts.observe_ledger(block=6, available=100, total=100, providers=frozenset())
        assert (accounts.ledger_available, accounts.funded_providers) == (3, frozenset({"0xaa"}))
        accounts.observe_ledger(block=7, available=4, total=9, providers=frozenset())
        assert (accounts.ledger_available, accounts.funded_providers) == (4, frozenset())

    def test_a_new_book_knows_no_ledger(self) -> None:
        """Before any read the ledger is empty at block -1, so any read replaces it."""
        accounts = Accounts()
        assert (accounts.ledger_block, accounts.ledger_available, accounts.funded_providers) == (
            -1,
            0,
            frozenset(),
        )
        accounts.observe_ledger(block=0, available=1, total=1, providers=frozenset())
        assert accounts.ledger_available == 1
