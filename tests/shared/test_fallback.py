"""The local fallback (``router/shared/fallback.py``): alone, a replica counts 1/N of each lane with
empty buckets, and while the requests from before Redis went away may still be in flight elsewhere it
admits no more than it held plus its part of the slots that were free."""

from __future__ import annotations

import pytest

from router.pool.capacity import NO_DEMAND, Lease
from router.pool.limits import ProviderLimits
from router.pool.providers import Lane
from router.shared.fallback import LaneCount, LocalFallback
from tests.pool.support import provider
from tests.support import FakeClock

# 6 slots among 3 replicas: a share of 2 each. The rate (100 a second) is out of the way once refilled.
LIMITS = ProviderLimits(requests_per_minute=6000, burst=100, max_concurrent=6)
REPLICAS = 3
UNKNOWN_FOR = 10.0
REQUEST_SECONDS = 0.5
REFILL = 0.05


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fallback(clock: FakeClock) -> LocalFallback:
    return LocalFallback(clock=clock, rate_margin=1.0, unknown_for=UNKNOWN_FOR)


@pytest.fixture
def lane(fallback: LocalFallback, clock: FakeClock) -> Lane:
    lane = provider("p", clock, LIMITS).lanes[0]
    fallback.configure(lane, LIMITS)
    return lane


def take(fallback: LocalFallback, lane: Lane, clock: FakeClock) -> Lease | None:
    return fallback.try_acquire([lane], NO_DEMAND, clock())


def test_an_even_spread_gets_its_share_at_once(fallback: LocalFallback, lane: Lane, clock: FakeClock) -> None:
    """2 of 6 in flight, 1 of them here: 4 were free, so this replica may hold 1 + 4 // 3 = 2, its
    share. Its buckets start empty: nothing before they refill."""
    fallback.go_alone(REPLICAS, {lane: LaneCount(in_flight=2, own=1)})
    assert fallback.carry(lane, clock()) is not None
    assert take(fallback, lane, clock) is None
    clock.now += REFILL
    assert take(fallback, lane, clock) is not None
    assert take(fallback, lane, clock) is None
    assert fallback.view(lane, clock()).in_flight == 2


def test_a_replica_under_its_share_of_a_full_lane_waits_for_the_others(
    fallback: LocalFallback, lane: Lane, clock: FakeClock
) -> None:
    """The lane full (6 of 6) with 1 here: the other replicas hold 5, more than their shares. This one
    keeps its 1 slot (a release frees it again) and takes its second only once requests as long as the
    longest it has seen on the lane have had time to end."""
    fallback.finished(lane, REQUEST_SECONDS)
    fallback.go_alone(REPLICAS, {lane: LaneCount(in_flight=6, own=1)})
    carried = fallback.carry(lane, clock())
    assert carried is not None
    clock.now += REFILL
    assert take(fallback, lane, clock) is None
    wait = fallback.wait(lane, NO_DEMAND, clock())
    assert wait == pytest.approx(REQUEST_SECONDS - REFILL)
    carried.release()
    again = take(fallback, lane, clock)
    assert again is not None
    assert take(fallback, lane, clock) is None
    clock.now += wait
    assert take(fallback, lane, clock) is not None
    assert fallback.view(lane, clock()).in_flight == 2


def test_a_lane_never_counted_settles_for_the_unknown_span(
    fallback: LocalFallback, lane: Lane, clock: FakeClock
) -> None:
    """No count from Redis and no request seen here: what the others hold is unknown, so nothing new
    for ``unknown_for`` seconds, then the share."""
    fallback.go_alone(REPLICAS, {})
    clock.now += UNKNOWN_FOR - REFILL
    assert take(fallback, lane, clock) is None
    clock.now += REFILL
    assert take(fallback, lane, clock) is not None


def test_the_longest_request_seen_fades_over_later_ones(
    fallback: LocalFallback, lane: Lane, clock: FakeClock
) -> None:
    """One 30 s request among hundreds of short ones stops holding every outage's settling at 30 s."""
    fallback.finished(lane, 30.0)
    for _ in range(400):
        fallback.finished(lane, REQUEST_SECONDS)
    fallback.go_alone(REPLICAS, {lane: LaneCount(in_flight=6, own=0)})
    clock.now += 1.0
    assert take(fallback, lane, clock) is not None


def test_starting_afresh_ends_the_settling_and_the_count(
    fallback: LocalFallback, lane: Lane, clock: FakeClock
) -> None:
    """Back in Redis: the next time alone starts from full buckets and nothing in flight."""
    fallback.go_alone(REPLICAS, {lane: LaneCount(in_flight=6, own=0)})
    assert fallback.carry(lane, clock()) is not None
    fallback.start_afresh()
    assert fallback.view(lane, clock()).in_flight == 0
    assert take(fallback, lane, clock) is not None
    assert take(fallback, lane, clock) is not None
    assert take(fallback, lane, clock) is None
