"""The lane scripts decide as ``MemoryCapacity`` does: every step runs on a ``MemoryCapacity`` and on a
``RedisCapacity`` counting the same lanes, and both must agree on what is admitted, what waits how long
and what the buckets hold. Redis keeps its own time, so rates are slow enough that the milliseconds
between the two sides move no level by more than the tolerance."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest
import redis.asyncio as aioredis

from router.pool.capacity import NO_DEMAND, Demand, Lease, MemoryCapacity
from router.pool.limits import ProviderLimits
from router.pool.providers import Lane, ProviderState
from router.shared.capacity import POLL, RedisCapacity
from router.shared.options import SharedOptions
from tests.pool.support import W1, W2, provider
from tests.shared.conftest import replica

# Levels agree within this (a second of refill at the slowest rates below is 0.1 request, 1 token).
LEVEL = 0.2
TOKEN_LEVEL = 2.0
WAIT = 0.3
# One request every 10 s, five at once from a burst of 6; tokens refill 1 a second into 100.
SLOW = ProviderLimits(requests_per_minute=6, burst=6, max_concurrent=3)
TOKENS = ProviderLimits(
    requests_per_minute=6, burst=20, max_concurrent=20, tokens_per_minute=60, context_length=100
)
IMAGES = ProviderLimits(requests_per_minute=6, burst=20, max_concurrent=20, images_per_minute=60)


class Twin:
    """The same providers counted in memory and in Redis; each step runs on both and is compared."""

    def __init__(self, shared: RedisCapacity) -> None:
        self.shared = shared
        self.clock = shared.clock
        self.memory = MemoryCapacity(clock=shared.clock, rate_margin=shared.margin)
        self.leases: list[tuple[Lease, Lease]] = []

    def add(
        self, name: str, limits: ProviderLimits, wallets: Sequence[str | None] = (None,)
    ) -> ProviderState:
        state = provider(name, self.clock, limits, wallets=wallets)
        for lane in state.lanes:
            self.memory.configure(lane, limits)
            self.shared.configure(lane, limits)
        return state

    async def acquire(self, *lanes: Lane, demand: Demand = NO_DEMAND) -> Lane | None:
        """Both admit on the same lane, or both refuse; the leases are kept by index."""
        now = self.clock()
        memory = self.memory.try_acquire(lanes, demand, now)
        shared = await self.shared.acquire(lanes, demand, now)
        assert (shared.lane if shared else None) is (memory.lane if memory else None)
        if memory is not None and shared is not None:
            self.leases.append((memory, shared))
            return memory.lane
        return None

    async def count(self, *lanes: Lane, demand: Demand = NO_DEMAND) -> int:
        """How many both admit one after another now (the leases stay out)."""
        count = 0
        while await self.acquire(*lanes, demand=demand) is not None:
            count += 1
            assert count < 200
        return count

    async def release(self, index: int, tokens: int | None = None, images: int | None = None) -> None:
        for lease in self.leases[index]:
            lease.release(tokens, images)
        await self.shared.flush()

    async def observe(self, index: int, headers: dict[str, str]) -> None:
        for lease in self.leases[index]:
            lease.observe(headers)
        await self.shared.flush()

    async def back_off(self, lane: Lane, seconds: float) -> None:
        until = self.clock() + seconds
        self.memory.back_off(lane, until)
        self.shared.back_off(lane, until)
        await self.shared.flush()

    async def hold_off(self, state: ProviderState, seconds: float) -> None:
        until = self.clock() + seconds
        self.memory.hold_off(state.id, until)
        self.shared.hold_off(state.id, until)
        await self.shared.flush()

    async def same_view(self, lane: Lane) -> None:
        """After a look in Redis (a refused acquire), the views agree."""
        now = self.clock()
        memory = self.memory.view(lane, now)
        if self.memory.try_acquire([lane], NO_DEMAND, now) is not None:
            pytest.fail("same_view needs a lane that refuses a request")
        assert await self.shared.acquire([lane], NO_DEMAND, now) is None
        shared = self.shared.view(lane, now)
        assert shared.in_flight == memory.in_flight
        assert shared.max_concurrent == memory.max_concurrent
        assert shared.request_capacity == memory.request_capacity
        assert shared.requests == pytest.approx(memory.requests, abs=LEVEL)
        for ours, theirs in ((shared.tokens, memory.tokens), (shared.images, memory.images)):
            assert (ours is None) == (theirs is None)
            if ours is not None and theirs is not None:
                assert ours == pytest.approx(theirs, abs=TOKEN_LEVEL)
        assert shared.blocked_for == pytest.approx(memory.blocked_for, abs=WAIT)

    def same_wait(self, lane: Lane, demand: Demand = NO_DEMAND) -> None:
        """The shared wait is the memory one, with a short poll where only a release helps."""
        now = self.clock()
        memory = self.memory.wait(lane, demand, now)
        shared = self.shared.wait(lane, demand, now)
        if memory is None:
            assert shared == POLL
        else:
            assert shared == pytest.approx(memory, abs=WAIT)


@pytest.fixture
async def twin(options: SharedOptions) -> AsyncIterator[Twin]:
    async with replica(options, rate_margin=0.9) as one:
        yield Twin(one.capacity)


class TestRequestsAndConcurrency:
    async def test_the_burst_less_one_then_one_per_interval(self, twin: Twin) -> None:
        """A fresh lane admits burst - 1 (within the cap), then waits the same time for the next token."""
        lane = twin.add("p", ProviderLimits(requests_per_minute=6, burst=4, max_concurrent=10)).lanes[0]
        assert await twin.count(lane) == 3
        twin.same_wait(lane)
        assert twin.shared.wait(lane, NO_DEMAND, twin.clock()) > 9
        await twin.same_view(lane)

    async def test_the_cap_closes_the_lane_and_a_release_reopens_it(self, twin: Twin) -> None:
        """Three at once; the fourth waits for a release (a poll in Redis); a release admits one more."""
        lane = twin.add("p", SLOW).lanes[0]
        assert await twin.count(lane) == 3
        twin.same_wait(lane)
        await twin.same_view(lane)
        await twin.release(0)
        await twin.release(0)  # idempotent on both
        assert await twin.count(lane) == 1
        await twin.same_view(lane)
        assert twin.shared.load(lane) == twin.memory.load(lane) == 1.0

    async def test_the_first_lane_in_order_that_admits_wins(self, twin: Twin) -> None:
        """Two wallets at one provider: the first lane until its cap, then the second."""
        state = twin.add("0xp", ProviderLimits(requests_per_minute=6, burst=3, max_concurrent=2), (W1, W2))
        first, second = state.lanes
        assert await twin.acquire(first, second) is first
        assert await twin.acquire(first, second) is first
        assert await twin.acquire(first, second) is second
        assert await twin.acquire(second, first) is second
        assert await twin.acquire(first, second) is None
        await twin.same_view(first)
        await twin.same_view(second)

    async def test_new_limits_keep_the_level_at_most_the_new_size(self, twin: Twin) -> None:
        """A smaller burst cuts the level to the new size; what is in flight stays counted."""
        state = twin.add("p", ProviderLimits(requests_per_minute=6, burst=10, max_concurrent=4))
        lane = state.lanes[0]
        assert await twin.count(lane) == 4
        smaller = ProviderLimits(requests_per_minute=6, burst=3, max_concurrent=2)
        twin.memory.configure(lane, smaller)
        twin.shared.configure(lane, smaller)
        await twin.same_view(lane)
        assert twin.shared.load(lane) == twin.memory.load(lane) == 2.0


class TestTokensAndImages:
    async def test_a_request_goes_while_the_token_level_is_above_zero(self, twin: Twin) -> None:
        """Post-consume: 60 + 60 of 100 go (the second overdraws), the third waits until above zero."""
        lane = twin.add("p", TOKENS).lanes[0]
        assert await twin.count(lane, demand=Demand(tokens=60)) == 2
        await twin.same_view(lane)
        twin.same_wait(lane)
        assert twin.shared.view(lane, twin.clock()).tokens == pytest.approx(-20, abs=TOKEN_LEVEL)

    async def test_the_estimate_is_reconciled_to_the_actual_usage(self, twin: Twin) -> None:
        """Released with 10 actual tokens of a 60 estimate, the level gets 50 back; without a figure the
        estimate stands."""
        lane = twin.add("p", TOKENS).lanes[0]
        assert await twin.count(lane, demand=Demand(tokens=60)) == 2
        await twin.release(0, tokens=10)
        await twin.release(1)
        assert await twin.acquire(lane, demand=Demand(tokens=200)) is lane
        assert await twin.acquire(lane, demand=Demand(tokens=1)) is None
        await twin.same_view(lane)

    async def test_images_follow_the_same_rule(self, twin: Twin) -> None:
        """Ten images a bucket; 6 + 6 go, the rest waits; an actual count of 2 gives 4 back."""
        lane = twin.add("p", IMAGES).lanes[0]
        assert await twin.count(lane, demand=Demand(images=6)) == 2
        twin.same_wait(lane)
        await twin.release(1, images=2)
        assert await twin.count(lane, demand=Demand(images=6)) == 1
        await twin.same_view(lane)

    async def test_a_lane_without_a_token_budget_ignores_token_demand(self, twin: Twin) -> None:
        lane = twin.add("p", SLOW).lanes[0]
        assert await twin.count(lane, demand=Demand(tokens=10**6)) == 3
        await twin.same_view(lane)


class TestBackOffAndHoldOff:
    async def test_a_back_off_shuts_the_lane_until_its_time(self, twin: Twin) -> None:
        """Backed off 30 s: refused, and the wait is the back-off; a shorter one later cuts nothing."""
        lane = twin.add("p", SLOW).lanes[0]
        await twin.back_off(lane, 30)
        await twin.back_off(lane, 5)
        assert await twin.acquire(lane) is None
        twin.same_wait(lane)
        await twin.same_view(lane)
        assert twin.shared.view(lane, twin.clock()).blocked_for == pytest.approx(30, abs=WAIT)

    async def test_every_replica_sees_a_back_off_at_once(self, twin: Twin, options: SharedOptions) -> None:
        """Another replica of the same lanes refuses the lane too, and waits as long."""
        state = twin.add("p", SLOW)
        await twin.back_off(state.lanes[0], 30)
        async with replica(options) as other:
            lane = provider("p", other.capacity.clock, SLOW).lanes[0]
            other.capacity.configure(lane, SLOW)
            assert await other.capacity.acquire([lane], NO_DEMAND, other.capacity.clock()) is None
            wait = other.capacity.wait(lane, NO_DEMAND, other.capacity.clock())
            assert wait == pytest.approx(30, abs=WAIT)

    async def test_a_hold_off_shuts_every_lane_of_the_provider(self, twin: Twin) -> None:
        """A global-cap 503 holds off both wallets' lanes; the longer of hold-off and back-off counts."""
        state = twin.add("0xp", SLOW, (W1, W2))
        first, second = state.lanes
        await twin.hold_off(state, 20)
        await twin.hold_off(state, 2)
        await twin.back_off(first, 40)
        assert await twin.acquire(first, second) is None
        for lane in (first, second):
            twin.same_wait(lane)
            await twin.same_view(lane)


class TestHeaderCorrections:
    async def test_remaining_requests_lower_the_shared_level(self, twin: Twin) -> None:
        """A reply saying 4 requests remained when it was admitted lowers both levels alike, to 4 less
        this request and the two sent after it: one more goes."""
        lane = twin.add("p", ProviderLimits(requests_per_minute=6, burst=20, max_concurrent=20)).lanes[0]
        for _ in range(3):
            assert await twin.acquire(lane) is lane
        await twin.observe(0, {"x-ratelimit-remaining-requests": "4"})
        assert await twin.count(lane) == 1
        await twin.same_view(lane)

    async def test_remaining_tokens_lower_the_level_less_what_is_in_flight(self, twin: Twin) -> None:
        lane = twin.add("p", TOKENS).lanes[0]
        assert await twin.acquire(lane, demand=Demand(tokens=10)) is lane
        assert await twin.acquire(lane, demand=Demand(tokens=10)) is lane
        await twin.observe(0, {"x-ratelimit-remaining-tokens": "30"})
        assert await twin.count(lane, demand=Demand(tokens=15)) == 1
        await twin.same_view(lane)

    async def test_replies_sent_in_one_flush_each_correct_their_own_lane(self, twin: Twin) -> None:
        """Two replies on two lanes, observed before one flush (one OBSERVE call for both): each lowers
        its own lane as memory does, the requests of the one and the tokens of the other."""
        first = twin.add("p", ProviderLimits(requests_per_minute=6, burst=20, max_concurrent=20)).lanes[0]
        second = twin.add("q", TOKENS).lanes[0]
        for _ in range(3):
            assert await twin.acquire(first) is first
        for _ in range(2):
            assert await twin.acquire(second, demand=Demand(tokens=10)) is second
        replies = ((0, {"x-ratelimit-remaining-requests": "4"}), (3, {"x-ratelimit-remaining-tokens": "30"}))
        for index, headers in replies:
            for lease in twin.leases[index]:
                lease.observe(headers)
        await twin.shared.flush()
        assert await twin.count(first) == 1
        assert await twin.count(second, demand=Demand(tokens=15)) == 1
        await twin.same_view(first)
        await twin.same_view(second)

    async def test_a_reported_limit_replaces_the_advertised_one(self, twin: Twin) -> None:
        """The provider says 3 a minute: both count by it (the next refill is 20 s away, not 10)."""
        lane = twin.add("p", ProviderLimits(requests_per_minute=6, burst=2, max_concurrent=5)).lanes[0]
        assert await twin.acquire(lane) is lane
        await twin.observe(0, {"x-ratelimit-limit-requests": "3", "x-ratelimit-remaining-requests": "0"})
        assert await twin.acquire(lane) is None
        twin.same_wait(lane)
        assert twin.shared.wait(lane, NO_DEMAND, twin.clock()) > 15
        await twin.same_view(lane)


async def test_the_lane_lives_in_redis_under_the_agreed_keys(twin: Twin, redis: aioredis.Redis) -> None:
    """``P:lane:{key}`` holds the levels and ``P:lane:{key}:leases`` the leases, by expiry; a release
    removes its lease."""
    lane = twin.add("p", SLOW).lanes[0]
    assert await twin.acquire(lane) is lane
    (shared_lease,) = [s for _, s in twin.leases]
    leases = await redis.zrange(f"t:lane:{lane.key}:leases", 0, -1, withscores=True)
    assert [member for member, _ in leases] == [shared_lease.id]  # type: ignore[attr-defined]
    (seconds, micros) = await redis.time()
    assert leases[0][1] == pytest.approx(seconds + micros / 1e6 + 2.0, abs=0.5)
    fields = await redis.hgetall(f"t:lane:{lane.key}")
    assert float(fields["rq"]) == pytest.approx(4, abs=LEVEL)
    assert fields["taken"] == "1"
    await twin.release(0)
    assert await redis.zcard(f"t:lane:{lane.key}:leases") == 0
    assert f"L:{shared_lease.id}" not in await redis.hgetall(f"t:lane:{lane.key}")  # type: ignore[attr-defined]
    await asyncio.sleep(0)
