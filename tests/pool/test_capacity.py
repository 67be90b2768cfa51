"""Lane capacity (``MemoryCapacity``): the request bucket, the concurrency cap, post-consume token and image
budgets, back-off and hold-off, wait hints, leases and reconfiguration, on a hand-moved clock. The
corrections from reply headers are in ``test_capacity_headers.py``."""

from __future__ import annotations

import math

import pytest

from router.pool.capacity import Demand, LaneView, MemoryCapacity
from router.pool.limits import ProviderLimits
from tests.pool.support import (
    IMAGES,
    TOKENS,
    admitted,
    lane_of,
    provider,
    refused,
    roomy,
    take,
    two_wallets,
    view,
)
from tests.support import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def capacity(clock: FakeClock) -> MemoryCapacity:
    return MemoryCapacity(clock=clock)


class TestRequestBucket:
    @pytest.mark.parametrize(("burst", "count"), [(1, 1), (2, 1), (3, 2), (10, 9)])
    def test_a_fresh_lane_admits_one_request_less_than_the_burst(
        self, capacity: MemoryCapacity, clock: FakeClock, burst: int, count: int
    ) -> None:
        """Our bucket holds ``burst - 1`` (at least 1): the provider's starts refilling only when our
        burst arrives, a little after we sent it."""
        lane = lane_of(
            capacity, clock, ProviderLimits(requests_per_minute=60, burst=burst, max_concurrent=100)
        )
        assert admitted(capacity, lane) == count
        assert view(capacity, lane).request_capacity == max(1, burst - 1)

    def test_one_request_comes_back_per_interval(self, capacity: MemoryCapacity, clock: FakeClock) -> None:
        """At 60/min a request token returns each second; part of a second gives none."""
        lane = lane_of(capacity, clock, ProviderLimits(requests_per_minute=60, burst=3, max_concurrent=100))
        admitted(capacity, lane)
        clock.now += 0.75
        assert refused(capacity, lane)
        clock.now += 0.25
        assert admitted(capacity, lane) == 1

    def test_an_idle_lane_refills_only_up_to_its_size(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """A long idle spell gives back no more than the full bucket (``burst - 1``)."""
        lane = lane_of(capacity, clock, ProviderLimits(requests_per_minute=60, burst=4, max_concurrent=100))
        admitted(capacity, lane)
        clock.now += 3600
        assert admitted(capacity, lane) == 3

    def test_the_rate_margin_slows_the_refill(self, clock: FakeClock) -> None:
        """``rate_margin=0.5`` refills at half the advertised rate: a request every 2 s, not every 1 s."""
        capacity = MemoryCapacity(clock=clock, rate_margin=0.5)
        lane = lane_of(capacity, clock, ProviderLimits(requests_per_minute=60, burst=2, max_concurrent=100))
        take(capacity, lane)
        assert capacity.wait(lane, Demand(), clock.now) == pytest.approx(2.0)
        clock.now += 1.5
        assert refused(capacity, lane)
        clock.now += 0.5
        take(capacity, lane)

    @pytest.mark.parametrize("margin", [0.0, -0.5, 1.01, math.nan])
    def test_a_rate_margin_outside_0_to_1_is_refused(self, clock: FakeClock, margin: float) -> None:
        """The margin slows the rate; it can neither stop nor speed it."""
        with pytest.raises(ValueError, match="rate_margin"):
            MemoryCapacity(clock=clock, rate_margin=margin)

    def test_acquire_answers_without_suspending(self, capacity: MemoryCapacity, clock: FakeClock) -> None:
        """The in-memory backend never waits on I/O: its ``acquire`` finishes on its first step, so the
        admission's fast path never yields to the loop between checking and taking."""
        lane = lane_of(capacity, clock, roomy())
        step = capacity.acquire([lane], Demand(), clock.now)
        with pytest.raises(StopIteration) as finished:
            step.send(None)
        assert finished.value.value.lane is lane
        assert view(capacity, lane).in_flight == 1


class TestConcurrency:
    def test_the_cap_closes_the_lane_and_a_release_reopens_it(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """With ``max_concurrent=2`` two leases fill the lane; one release frees a slot."""
        lane = lane_of(capacity, clock, roomy(max_concurrent=2))
        first = take(capacity, lane)
        take(capacity, lane)
        assert refused(capacity, lane)
        first.release()
        take(capacity, lane)
        assert view(capacity, lane).in_flight == 2

    def test_load_is_the_share_of_the_cap_in_use(self, capacity: MemoryCapacity, clock: FakeClock) -> None:
        """0, then 1/4, 2/4, ... of a cap of 4; a lane the capacity does not count reads as full."""
        lane = lane_of(capacity, clock, roomy(max_concurrent=4))
        loads = [capacity.load(lane)]
        for _ in range(4):
            take(capacity, lane)
            loads.append(capacity.load(lane))
        assert loads == [0.0, 0.25, 0.5, 0.75, 1.0]
        stranger = provider("q", clock).lanes[0]
        assert capacity.load(stranger) == 1.0

    def test_repr_counts_the_lanes(self, capacity: MemoryCapacity, clock: FakeClock) -> None:
        """The repr is one line: how many lanes it counts."""
        two_wallets(capacity, clock, roomy())
        assert repr(capacity) == "<MemoryCapacity lanes=2>"


class TestTokens:
    def test_a_request_goes_while_the_level_is_above_zero(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """Post-consume: 900 of 1000 leaves 100 > 0, so another 900 goes and overdraws to -800; then
        nothing goes, however small."""
        lane = lane_of(capacity, clock, roomy(**TOKENS))
        assert view(capacity, lane).tokens == 1000
        take(capacity, lane, demand=Demand(tokens=900))
        assert view(capacity, lane).tokens == 100
        take(capacity, lane, demand=Demand(tokens=900))
        assert view(capacity, lane).tokens == -800
        assert refused(capacity, lane, Demand(tokens=1))
        assert refused(capacity, lane)

    def test_the_estimate_is_taken_at_acquire_and_reconciled_to_the_actual_on_release(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """600 estimated at acquire leaves 400; the reply used 250, so 350 come back."""
        lane = lane_of(capacity, clock, roomy(**TOKENS))
        lease = take(capacity, lane, demand=Demand(tokens=600))
        assert view(capacity, lane).tokens == 400
        lease.release(tokens=250)
        assert view(capacity, lane).tokens == 750

    def test_without_an_actual_figure_the_estimate_stands(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """A release without usage (none reported) keeps the estimate as the usage."""
        lane = lane_of(capacity, clock, roomy(**TOKENS))
        take(capacity, lane, demand=Demand(tokens=600)).release()
        assert view(capacity, lane).tokens == 400

    def test_usage_over_the_estimate_overdraws_and_blocks_until_refilled(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """A reply that used 1500 tokens against an estimate of 100 leaves -500: the lane is shut for the
        5 s the debt takes to refill at 100/s, and opens the moment the level is above zero."""
        lane = lane_of(capacity, clock, roomy(**TOKENS))
        take(capacity, lane, demand=Demand(tokens=100)).release(tokens=1500)
        assert view(capacity, lane).tokens == -500
        assert capacity.wait(lane, Demand(tokens=1), clock.now) == pytest.approx(5.0)
        clock.now += 5.0
        assert refused(capacity, lane), "a level of exactly 0 admits nothing"
        clock.now += 0.01
        take(capacity, lane)

    def test_a_lane_without_a_token_budget_ignores_token_demand(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """A provider that counts no tokens admits any token demand, and reports no token level."""
        lane = lane_of(capacity, clock, roomy())
        assert view(capacity, lane).tokens is None
        take(capacity, lane, demand=Demand(tokens=10**9)).release(tokens=10**9)
        take(capacity, lane, demand=Demand(tokens=10**9))
        assert view(capacity, lane).tokens is None

    def test_the_request_bucket_still_counts_on_a_token_lane(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """Plenty of tokens do not let more requests through than the request bucket holds."""
        lane = lane_of(capacity, clock, ProviderLimits(requests_per_minute=60, burst=3, **TOKENS))
        assert admitted(capacity, lane, demand=Demand(tokens=10)) == 2
        assert view(capacity, lane).tokens == 980


class TestImages:
    def test_images_follow_the_same_post_consume_rule(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """10 of 10 images leaves 0, which admits nothing; half a second refills half an image, and that
        lets a request for 4 through, to -3.5."""
        lane = lane_of(capacity, clock, roomy(**IMAGES))
        assert (view(capacity, lane).images, view(capacity, lane).tokens) == (10, None)
        take(capacity, lane, demand=Demand(images=10))
        assert refused(capacity, lane, Demand(images=1))
        clock.now += 0.5
        take(capacity, lane, demand=Demand(images=4))
        assert view(capacity, lane).images == pytest.approx(-3.5)
        assert refused(capacity, lane, Demand(images=1))

    def test_images_are_reconciled_to_the_actual_count_on_release(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """Two requests estimated at 4 and 2 images; the first made 1 and the second reported nothing: 10 - 1
        - 2."""
        lane = lane_of(capacity, clock, roomy(**IMAGES))
        first = take(capacity, lane, demand=Demand(images=4))
        second = take(capacity, lane, demand=Demand(images=2))
        assert view(capacity, lane).images == 4
        first.release(images=1)
        second.release()
        assert view(capacity, lane).images == 7


class TestLanes:
    def test_each_wallet_has_its_own_concurrency(self, capacity: MemoryCapacity, clock: FakeClock) -> None:
        """Two wallets at a provider with a cap of 1: two requests at once, one on each lane."""
        state = two_wallets(capacity, clock, roomy(max_concurrent=1))
        one, two = state.lanes
        assert take(capacity, one, two).lane is one
        assert take(capacity, one, two).lane is two
        assert capacity.try_acquire([one, two], Demand(), clock.now) is None
        assert (view(capacity, one).in_flight, view(capacity, two).in_flight) == (1, 1)

    def test_two_wallets_double_the_request_burst(self, capacity: MemoryCapacity, clock: FakeClock) -> None:
        """Each lane has its own request bucket: two wallets, twice the burst."""
        state = two_wallets(
            capacity, clock, ProviderLimits(requests_per_minute=60, burst=3, max_concurrent=10)
        )
        assert admitted(capacity, *state.lanes) == 4

    def test_two_wallets_double_the_token_budget(self, capacity: MemoryCapacity, clock: FakeClock) -> None:
        """Once one wallet's budget is spent, the other's still admits."""
        one, two = two_wallets(capacity, clock, roomy(**TOKENS)).lanes
        assert take(capacity, one, two, demand=Demand(tokens=1000)).lane is one
        assert take(capacity, one, two, demand=Demand(tokens=1000)).lane is two
        assert capacity.try_acquire([one, two], Demand(tokens=1), clock.now) is None

    def test_a_lease_on_one_lane_leaves_the_other_alone(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """Usage on one wallet's lane leaves the other wallet's lane as it was."""
        one, two = two_wallets(capacity, clock, roomy(**TOKENS)).lanes
        before = view(capacity, two)
        take(capacity, one, demand=Demand(tokens=700)).release(tokens=900)
        assert view(capacity, two) == before
        assert view(capacity, one).tokens == 100

    def test_the_first_lane_in_the_given_order_that_admits_wins(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """The caller's order (the dispatcher's ranking) decides, not the order the lanes were made in."""
        one, two = two_wallets(capacity, clock, roomy()).lanes
        assert take(capacity, two, one).lane is two

    def test_a_lane_the_capacity_does_not_count_is_skipped(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """A lane never configured (or forgotten) admits nothing and has nothing to wait for."""
        stranger = provider("q", clock).lanes[0]
        lane = lane_of(capacity, clock, roomy())
        assert take(capacity, stranger, lane).lane is lane
        assert capacity.wait(stranger, Demand(), clock.now) is None
        assert view(capacity, stranger) == LaneView(0, 0, 0.0, 0.0, None, None, 0.0)


class TestBackOff:
    def test_a_429_back_off_shuts_that_lane_only_until_its_time(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """A 429 at one wallet's lane sends the next request to the other; the lane opens at its time."""
        one, two = two_wallets(capacity, clock, roomy()).lanes
        capacity.back_off(one, clock.now + 5.0)
        assert take(capacity, one, two).lane is two
        assert capacity.wait(one, Demand(), clock.now) == pytest.approx(5.0)
        assert view(capacity, one).blocked_for == pytest.approx(5.0)
        assert view(capacity, two).blocked_for == 0.0
        clock.now += 4.75
        assert refused(capacity, one)
        clock.now += 0.25
        assert take(capacity, one).lane is one

    def test_an_earlier_back_off_does_not_shorten_a_later_one(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """Two 429s: the later end stands."""
        lane = lane_of(capacity, clock, roomy())
        capacity.back_off(lane, clock.now + 10.0)
        capacity.back_off(lane, clock.now + 3.0)
        clock.now += 5.0
        assert refused(capacity, lane)
        assert capacity.wait(lane, Demand(), clock.now) == pytest.approx(5.0)

    def test_backing_off_a_lane_the_capacity_does_not_count_is_harmless(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """A 429 arriving after the provider left the pool changes nothing."""
        stranger = provider("q", clock).lanes[0]
        capacity.back_off(stranger, clock.now + 5.0)
        assert capacity.wait(stranger, Demand(), clock.now) is None


class TestHoldOff:
    def test_a_global_cap_503_holds_off_every_lane_of_that_provider(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """Both wallets' lanes wait out the hold-off; another provider's lane is not touched."""
        state = two_wallets(capacity, clock, roomy())
        other = lane_of(capacity, clock, roomy())
        capacity.hold_off(state.id, clock.now + 3.0)
        assert capacity.try_acquire(state.lanes, Demand(), clock.now) is None
        assert [capacity.wait(lane, Demand(), clock.now) for lane in state.lanes] == [3.0, 3.0]
        assert [view(capacity, lane).blocked_for for lane in state.lanes] == [3.0, 3.0]
        assert take(capacity, *state.lanes, other).lane is other
        clock.now += 3.0
        assert take(capacity, *state.lanes).lane is state.lanes[0]

    def test_a_shorter_hold_off_does_not_cut_a_longer_one(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """Two global-cap 503s: the later end stands."""
        state = two_wallets(capacity, clock, roomy())
        capacity.hold_off(state.id, clock.now + 8.0)
        capacity.hold_off(state.id, clock.now + 1.0)
        clock.now += 2.0
        assert capacity.try_acquire(state.lanes, Demand(), clock.now) is None
        assert capacity.wait(state.lanes[1], Demand(), clock.now) == pytest.approx(6.0)

    def test_the_later_of_a_back_off_and_a_hold_off_counts(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """A lane backed off for 7 s under a provider held off for 2 s waits 7 s; its sibling 2 s."""
        one, two = two_wallets(capacity, clock, roomy()).lanes
        capacity.back_off(one, clock.now + 7.0)
        capacity.hold_off(one.provider.id, clock.now + 2.0)
        assert capacity.wait(one, Demand(), clock.now) == pytest.approx(7.0)
        assert capacity.wait(two, Demand(), clock.now) == pytest.approx(2.0)
        assert view(capacity, one).blocked_for == pytest.approx(7.0)


class TestWait:
    def test_a_lane_that_admits_now_waits_0(self, capacity: MemoryCapacity, clock: FakeClock) -> None:
        """Whatever the demand, a lane with room, a request token and budgets above zero waits 0."""
        lane = lane_of(capacity, clock, roomy(**TOKENS, **IMAGES))
        assert capacity.wait(lane, Demand(tokens=5000, images=50), clock.now) == 0.0

    def test_a_full_lane_waits_for_a_release_only(self, capacity: MemoryCapacity, clock: FakeClock) -> None:
        """At its cap a lane's wait is None (a release will come), even when a back-off ends sooner."""
        lane = lane_of(capacity, clock, roomy(max_concurrent=1))
        take(capacity, lane)
        capacity.back_off(lane, clock.now + 1.0)
        assert capacity.wait(lane, Demand(), clock.now) is None

    def test_an_empty_request_bucket_waits_exactly_for_the_next_token(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """At 60/min the next token is 1 s away, then 0.75 s a quarter second later, then here."""
        lane = lane_of(capacity, clock, ProviderLimits(requests_per_minute=60, burst=2, max_concurrent=10))
        take(capacity, lane)
        assert capacity.wait(lane, Demand(), clock.now) == pytest.approx(1.0)
        clock.now += 0.25
        assert capacity.wait(lane, Demand(), clock.now) == pytest.approx(0.75)
        clock.now += 0.75
        assert capacity.wait(lane, Demand(), clock.now) == 0.0
        take(capacity, lane)

    @pytest.mark.parametrize(("back_off", "expected"), [(0.5, 1.0), (3.0, 3.0)])
    def test_the_wait_is_the_longest_of_what_shuts_the_lane(
        self, capacity: MemoryCapacity, clock: FakeClock, back_off: float, expected: float
    ) -> None:
        """A back-off shorter than the next token's refill waits for the token, a longer one for itself."""
        lane = lane_of(capacity, clock, ProviderLimits(requests_per_minute=60, burst=2, max_concurrent=10))
        take(capacity, lane)
        capacity.back_off(lane, clock.now + back_off)
        assert capacity.wait(lane, Demand(), clock.now) == pytest.approx(expected)

    def test_an_overdrawn_image_budget_waits_until_it_is_above_zero(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """13 of 10 images leaves -3: 3 s at one a second, and the lane admits at exactly that time."""
        lane = lane_of(capacity, clock, roomy(**IMAGES))
        take(capacity, lane, demand=Demand(images=13))
        wait = capacity.wait(lane, Demand(images=1), clock.now)
        assert wait == pytest.approx(3.0)
        assert wait is not None
        clock.now += wait
        take(capacity, lane)


class TestLease:
    def test_a_lease_names_its_lane(self, capacity: MemoryCapacity, clock: FakeClock) -> None:
        """The lease says which lane (and so which wallet and provider) the request goes to."""
        _, two = two_wallets(capacity, clock, roomy()).lanes
        assert take(capacity, two).lane is two

    def test_release_is_idempotent(self, capacity: MemoryCapacity, clock: FakeClock) -> None:
        """A second release frees no second slot, reconciles nothing twice and tells nobody again."""
        lane = lane_of(capacity, clock, roomy(**TOKENS))
        changes: list[None] = []
        capacity.on_change = lambda: changes.append(None)
        take(capacity, lane, demand=Demand(tokens=10))
        lease = take(capacity, lane, demand=Demand(tokens=500))
        lease.release(tokens=100)
        lease.release(tokens=100)
        lease.release()
        assert view(capacity, lane).in_flight == 1
        assert view(capacity, lane).tokens == 890
        assert changes == [None]

    def test_each_release_tells_on_change(self, capacity: MemoryCapacity, clock: FakeClock) -> None:
        """Each release calls ``on_change`` once, after the slot is free, so a queued request can take it."""
        lane = lane_of(capacity, clock, roomy())
        changes: list[int] = []
        capacity.on_change = lambda: changes.append(view(capacity, lane).in_flight)
        first, second = take(capacity, lane), take(capacity, lane)
        first.release()
        second.release()
        assert changes == [1, 0], "on_change runs after the slot is free"

    def test_a_lease_on_a_forgotten_lane_still_releases(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """The provider left the pool with a request in flight: the lease ends normally, and the lane
        admits nothing any more."""
        lane = lane_of(capacity, clock, roomy(**TOKENS))
        lease = take(capacity, lane, demand=Demand(tokens=100))
        capacity.forget(lane)
        lease.release(tokens=50)
        assert refused(capacity, lane)
        assert repr(capacity) == "<MemoryCapacity lanes=0>"


class TestReconfigure:
    def test_new_limits_keep_what_is_in_flight_and_the_bucket_level(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """Two requests in flight stay counted under the new cap of 3; the new request bucket (burst 6,
        so 5) keeps the old one's level (empty after the two): we cannot know the provider's, and a fuller
        bucket could send what it refuses. It refills at the new rate."""
        lane = lane_of(capacity, clock, ProviderLimits(requests_per_minute=60, burst=3, max_concurrent=2))
        leases = [take(capacity, lane), take(capacity, lane)]
        capacity.configure(lane, ProviderLimits(requests_per_minute=120, burst=6, max_concurrent=3))
        assert view(capacity, lane) == LaneView(
            in_flight=2,
            max_concurrent=3,
            requests=0.0,
            request_capacity=5.0,
            tokens=None,
            images=None,
            blocked_for=0.0,
        )
        assert refused(capacity, lane)
        clock.now += 60 / 120 / capacity.margin
        leases.append(take(capacity, lane))
        assert refused(capacity, lane)
        for lease in leases:
            lease.release()
        assert view(capacity, lane).in_flight == 0
        assert capacity.load(lane) == 0.0

    def test_the_same_limits_again_keep_the_buckets(self, capacity: MemoryCapacity, clock: FakeClock) -> None:
        """A refresh that did not change the limits gives no free burst."""
        limits = ProviderLimits(requests_per_minute=60, burst=3, max_concurrent=10, **TOKENS)
        lane = lane_of(capacity, clock, limits)
        admitted(capacity, lane, demand=Demand(tokens=100))
        capacity.configure(lane, ProviderLimits(requests_per_minute=60, burst=3, max_concurrent=10, **TOKENS))
        assert refused(capacity, lane)
        assert view(capacity, lane).tokens == 800

    def test_a_cap_lowered_under_what_is_in_flight_reads_as_over_full(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """Four in flight under a new cap of 2: load 2, nothing admitted until releases bring it under the
        cap."""
        lane = lane_of(capacity, clock, roomy(max_concurrent=4))
        leases = [take(capacity, lane) for _ in range(4)]
        capacity.configure(lane, roomy(max_concurrent=2))
        assert capacity.load(lane) == 2.0
        assert capacity.wait(lane, Demand(), clock.now) is None
        for lease in leases[:3]:
            lease.release()
        take(capacity, lane)

    def test_a_token_budget_turned_on_counts_the_actual_usage_of_earlier_requests(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """A request admitted before the provider counted tokens reserved none; its release takes its
        actual usage from the new budget."""
        lane = lane_of(capacity, clock, roomy())
        lease = take(capacity, lane, demand=Demand(tokens=600))
        capacity.configure(lane, roomy(**TOKENS))
        assert view(capacity, lane).tokens == 1000
        lease.release(tokens=300)
        assert view(capacity, lane).tokens == 700

    def test_a_token_budget_turned_off_releases_cleanly(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """A lease that reserved tokens under a budget since removed releases without counting them."""
        lane = lane_of(capacity, clock, roomy(**TOKENS))
        lease = take(capacity, lane, demand=Demand(tokens=600))
        capacity.configure(lane, roomy())
        lease.release(tokens=900)
        assert (view(capacity, lane).tokens, view(capacity, lane).in_flight) == (None, 0)

    def test_a_release_after_new_limits_leaves_the_level_the_provider_has(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """The provider's new budget (2000) starts full at best and takes each request's actual usage
        after its reply: 2000 - 100 (the first request, estimated 800 under the old budget) - 1500 (the
        second) = 400. Ours keeps its level across the change, so it is not more: more would send what the
        provider refuses."""
        lane = lane_of(capacity, clock, roomy(**TOKENS))
        first = take(capacity, lane, demand=Demand(tokens=800))
        capacity.configure(lane, roomy(tokens_per_minute=12_000, context_length=1000))
        second = take(capacity, lane, demand=Demand(tokens=1500))
        first.release(tokens=100)
        second.release(tokens=1500)
        assert view(capacity, lane).tokens == -600
