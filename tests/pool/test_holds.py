"""Balance holds per lane (``AccountHolds``): each wallet's sub-account covers and holds its own requests;
static upstreams hold nothing."""

from __future__ import annotations

import pytest

from router.pool.accounting import Accounts
from router.pool.capacity import MemoryCapacity
from router.pool.holds import NO_HOLD, AccountHolds
from router.pool.providers import Lane, Pool, ProviderKind
from router.types import NEURON_PER_0G
from tests.pool.support import W1, W2, info, provider
from tests.support import FakeClock

G = NEURON_PER_0G


def funded(balance: int, provider_id: str = "0xp") -> Accounts:
    """A wallet's book with one sub-account at ``provider_id`` holding ``balance`` (1 0G of it must stay)."""
    book = Accounts()
    book.observe(provider_id, position=(1, 0), exists=True, balance=balance, acknowledged=True)
    return book


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def two_lanes(clock: FakeClock) -> tuple[Lane, Lane]:
    one, two = provider("0xp", clock, wallets=(W1, W2)).lanes
    return one, two


class TestCovers:
    def test_each_wallet_covers_from_its_own_sub_account(self, two_lanes: tuple[Lane, Lane]) -> None:
        """W1 has 4 0G available at the provider, W2 half a 0G: the same request fits only W1's lane."""
        one, two = two_lanes
        holds = AccountHolds({W1: funded(5 * G), W2: funded(3 * G // 2)})
        assert holds.covers(one, 3 * G)
        assert not holds.covers(two, 3 * G)
        assert holds.covers(two, G // 2)
        assert not holds.covers(two, G // 2 + 1)

    def test_a_wallet_without_a_sub_account_there_covers_nothing(self, two_lanes: tuple[Lane, Lane]) -> None:
        """No sub-account at the provider: not even a free request is covered (it would be refused)."""
        one, _ = two_lanes
        holds = AccountHolds({W1: funded(5 * G, provider_id="0xother")})
        assert not holds.covers(one, 0)

    def test_a_static_lane_covers_any_amount(self, clock: FakeClock) -> None:
        """Static upstreams are not paid from our 0G sub-accounts."""
        (static,) = provider("openai", clock).lanes
        assert AccountHolds({W1: funded(0)}).covers(static, 10**30)


class TestReserve:
    def test_a_hold_reserves_on_its_wallets_book_only(self, two_lanes: tuple[Lane, Lane]) -> None:
        """Holding 1 0G on W1's lane lowers what W1 covers and leaves W2's book alone; closing it books
        the actual cost."""
        one, two = two_lanes
        books = {W1: funded(5 * G), W2: funded(5 * G)}
        holds = AccountHolds(books)
        hold = holds.reserve(one, G)
        assert hold.amount == G
        first, second = books[W1].of("0xp"), books[W2].of("0xp")
        assert (first.reserved, second.reserved) == (G, 0)
        assert not holds.covers(one, 3 * G + 1)
        assert holds.covers(two, 4 * G)
        hold.close(G // 4)
        assert (first.reserved, first.spent, first.our_unsettled) == (0, G // 4, G // 4)
        assert (second.reserved, second.spent) == (0, 0)

    def test_concurrent_holds_never_together_exceed_the_sub_account(
        self, two_lanes: tuple[Lane, Lane]
    ) -> None:
        """Design invariant 2: once the holds use up what is available, no further request is covered."""
        one, _ = two_lanes
        holds = AccountHolds({W1: funded(4 * G)})
        held = []
        while holds.covers(one, G):
            held.append(holds.reserve(one, G))
        assert len(held) == 3
        held.pop().close(None)
        assert holds.covers(one, G)

    def test_a_static_lane_holds_nothing(self, clock: FakeClock) -> None:
        """A static upstream's request holds nothing on any book, and closing it books nothing."""
        (static,) = provider("openai", clock).lanes
        book = funded(5 * G)
        hold = AccountHolds({W1: book}).reserve(static, 10**20)
        assert hold is NO_HOLD
        assert hold.amount == 0
        hold.close(10**20)
        assert [account.reserved for account in book] == [0]
        assert [account.spent for account in book] == [0]

    def test_a_pools_lanes_find_their_wallets_books_whatever_the_address_case(self, clock: FakeClock) -> None:
        """The pool lowercases its wallets, and the books are keyed by lowercase address, so a checksummed
        wallet's lane holds on its own book."""
        pool = Pool(clock=clock, capacity=MemoryCapacity(clock=clock), wallets=(W1.upper(), W2))
        pool.replace(ProviderKind.CHAIN, [info("0xP", kind=ProviderKind.CHAIN)])
        state = pool.get("0xp")
        assert state is not None
        lane = state.lane(W1.upper())
        assert lane is not None
        books = {W1: funded(5 * G), W2: funded(5 * G)}
        AccountHolds(books).reserve(lane, G)
        assert (books[W1].of("0xp").reserved, books[W2].of("0xp").reserved) == (G, 0)
