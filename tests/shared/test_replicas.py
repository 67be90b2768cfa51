"""Several replicas on one Redis: together they keep each lane's limits, a crashed replica's slots come
back, a release wakes another replica's queue, and a Redis that stops answering is no outage."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from router.observability.events import SharedModeChanged
from router.pool.admission import Admission
from router.pool.capacity import NO_DEMAND
from router.pool.limits import ProviderLimits
from router.pool.providers import Lane
from router.shared import capacity as shared_capacity
from router.shared.capacity import RedisCapacity
from router.shared.options import SharedOptions
from router.shared.store import SharedStore
from tests.pool.support import provider
from tests.shared.conftest import LEASE_TTL, replica
from tests.shared_support import RedisServer
from tests.support import EventLog

ROOMY_RATE = ProviderLimits(requests_per_minute=6000, burst=100, max_concurrent=4)


def lane_for(capacity: RedisCapacity, limits: ProviderLimits = ROOMY_RATE) -> Lane:
    """The static lane of provider ``p`` as this replica knows it (same key on every replica)."""
    lane = provider("p", capacity.clock, limits).lanes[0]
    capacity.configure(lane, limits)
    return lane


async def take_all(capacity: RedisCapacity, lane: Lane) -> list[object]:
    leases = []
    while (lease := await capacity.acquire([lane], NO_DEMAND, capacity.clock())) is not None:
        leases.append(lease)
        assert len(leases) < 100
    return leases


async def test_two_replicas_never_exceed_the_cap_together(options: SharedOptions) -> None:
    """Acquiring concurrently from two replicas, the lane's four slots go out four times in all."""
    async with replica(options) as one, replica(options) as two:
        lanes = (lane_for(one.capacity), lane_for(two.capacity))
        tries = [
            capacity.acquire([lane], NO_DEMAND, capacity.clock())
            for _ in range(10)
            for capacity, lane in zip((one.capacity, two.capacity), lanes, strict=True)
        ]
        leases = [lease for lease in await asyncio.gather(*tries) if lease is not None]
        assert len(leases) == 4
        assert one.capacity.load(lanes[0]) + two.capacity.load(lanes[1]) > 0


async def test_two_replicas_share_one_request_bucket(options: SharedOptions) -> None:
    """A burst of 5 (a bucket of 4) at 6 a minute: four requests between both replicas, not eight."""
    slow = ProviderLimits(requests_per_minute=6, burst=5, max_concurrent=100)
    async with replica(options) as one, replica(options) as two:
        first = await take_all(one.capacity, lane_for(one.capacity, slow))
        second = await take_all(two.capacity, lane_for(two.capacity, slow))
        assert len(first) + len(second) == 4


async def test_a_crashed_replicas_lease_expires_within_the_ttl(
    options: SharedOptions, redis: aioredis.Redis
) -> None:
    """A replica that stops without releasing (and without renewing) holds its slot at most lease_ttl."""
    tight = ProviderLimits(requests_per_minute=6000, burst=100, max_concurrent=1)
    async with replica(options, heartbeat=False) as crashed:
        assert await crashed.capacity.acquire([lane_for(crashed.capacity, tight)], NO_DEMAND, 0.0)
        crashed.capacity._open.clear()
    async with replica(options) as survivor:
        lane = lane_for(survivor.capacity, tight)
        assert await survivor.capacity.acquire([lane], NO_DEMAND, survivor.capacity.clock()) is None
        started = time.monotonic()
        async with asyncio.timeout(LEASE_TTL + 1.0):
            while await survivor.capacity.acquire([lane], NO_DEMAND, survivor.capacity.clock()) is None:  # noqa: ASYNC110 - polling what only Redis or the loop can tell
                await asyncio.sleep(0.05)
        assert time.monotonic() - started <= LEASE_TTL + 0.5


async def test_the_heartbeat_keeps_a_long_request_counted(options: SharedOptions) -> None:
    """A lease open longer than the TTL still counts while its replica renews it."""
    tight = ProviderLimits(requests_per_minute=6000, burst=100, max_concurrent=1)
    async with replica(options) as one, replica(options) as two:
        assert await one.capacity.acquire([lane_for(one.capacity, tight)], NO_DEMAND, 0.0)
        lane = lane_for(two.capacity, tight)
        deadline = time.monotonic() + LEASE_TTL * 1.5
        while time.monotonic() < deadline:
            assert await two.capacity.acquire([lane], NO_DEMAND, two.capacity.clock()) is None
            await asyncio.sleep(0.25)


async def test_a_release_under_cancellation_frees_the_lease_in_redis(
    options: SharedOptions, redis: aioredis.Redis
) -> None:
    """A request cancelled while it holds a lease releases it in a ``finally``: Redis counts it off."""
    async with replica(options) as one:
        lane = lane_for(one.capacity)
        holding = asyncio.Event()

        async def request() -> None:
            lease = await one.capacity.acquire([lane], NO_DEMAND, one.capacity.clock())
            assert lease is not None
            try:
                holding.set()
                await asyncio.Event().wait()
            finally:
                lease.release()

        task = asyncio.create_task(request())
        await holding.wait()
        assert await redis.zcard(f"t:lane:{lane.key}:leases") == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await one.capacity.flush()
        assert await redis.zcard(f"t:lane:{lane.key}:leases") == 0


async def test_a_release_wakes_another_replicas_queue(
    options: SharedOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replica two's request queues behind replica one's lease; one's release reaches two by pub/sub
    and two's queue takes the slot (the poll is set far beyond the test, so only the message can)."""
    monkeypatch.setattr(shared_capacity, "POLL", 60.0)
    tight = ProviderLimits(requests_per_minute=6000, burst=100, max_concurrent=1)
    async with replica(options) as one, replica(options) as two:
        held = await one.capacity.acquire([lane_for(one.capacity, tight)], NO_DEMAND, 0.0)
        assert held is not None
        lane = lane_for(two.capacity, tight)
        async with Admission(two.capacity) as admission:
            waiter = asyncio.create_task(admission.acquire([lane], admission.now() + 30))
            while admission.queued == 0:  # noqa: ASYNC110 - polling what only Redis or the loop can tell
                await asyncio.sleep(0)
            held.release()
            async with asyncio.timeout(5):
                lease = await waiter
            assert lease.lane is lane
            lease.release()


async def test_a_frozen_redis_is_no_outage(redis_server: RedisServer, options: SharedOptions) -> None:
    """Redis frozen: an acquire answers within the timeout and the replica counts alone, at its 1/N
    share (2 of 4 slots, its shared lease included), and says so; Redis back: it rejoins and its open
    leases count in Redis again."""
    log = EventLog()
    tight = ProviderLimits(requests_per_minute=6000, burst=100, max_concurrent=4)
    async with replica(options) as other, replica(options, emit=log) as one:
        lane = lane_for(one.capacity, tight)
        lane_for(other.capacity, tight)
        async with asyncio.timeout(5):
            while one.store.replicas < 2:  # noqa: ASYNC110 - polling what only Redis or the loop can tell
                await asyncio.sleep(0.05)
        shared = await one.capacity.acquire([lane], NO_DEMAND, one.capacity.clock())
        assert shared is not None
        redis_server.stop()
        try:
            started = time.monotonic()
            during = await one.capacity.acquire([lane], NO_DEMAND, one.capacity.clock())
            assert time.monotonic() - started < options.timeout + 0.2
            assert one.capacity.mode == one.store.mode == "local"
            event = await log.wait_for(
                lambda e: isinstance(e, SharedModeChanged) and e.mode == "local", within=1
            )
            assert event.replicas == 2
            assert "redis://" not in event.detail
            local = [] if during is None else [during]
            async with asyncio.timeout(2):
                while len(local) < 1:
                    lease = await one.capacity.acquire([lane], NO_DEMAND, one.capacity.clock())
                    if lease is not None:
                        local.append(lease)
                    await asyncio.sleep(0.01)
            assert await one.capacity.acquire([lane], NO_DEMAND, one.capacity.clock()) is None
        finally:
            redis_server.cont()
        await log.wait_for(lambda e: isinstance(e, SharedModeChanged) and e.mode == "shared", within=5)
        async with asyncio.timeout(5):
            while one.capacity.mode != "shared":  # noqa: ASYNC110 - polling what only Redis or the loop can tell
                await asyncio.sleep(0.02)
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            assert await client.zcard(f"t:lane:{lane.key}:leases") == 2 == 1 + len(local)
        finally:
            await client.aclose()
        for lease in (shared, *local):
            lease.release()
        await one.capacity.flush()


async def test_a_replica_that_cannot_reach_redis_at_start_counts_locally(tmp_path: object) -> None:
    """No Redis on the port: the store opens in local mode and says so; nothing hangs."""
    from tests.shared_support import free_port

    log = EventLog()
    options = SharedOptions(redis_url=f"redis://:hunter2secret@127.0.0.1:{free_port()}/0", prefix="t")
    async with asyncio.timeout(2), SharedStore(options, emit=log) as store:
        assert store.mode == "local"
        capacity = RedisCapacity(store, clock=asyncio.get_running_loop().time)
        lane = lane_for(capacity)
        assert await capacity.acquire([lane], NO_DEMAND, capacity.clock()) is not None
    (event,) = log.of(SharedModeChanged)
    assert event.mode == "local"
    assert "hunter2secret" not in event.detail
    assert "hunter2secret" not in repr(store)


async def test_replicas_recount_at_once_when_one_joins_or_leaves(
    redis_server: RedisServer, redis: aioredis.Redis
) -> None:
    """A joining replica is counted by the others within moments, not at their next beat (here 10 s
    away), and one leaving cleanly is counted off as fast: a Redis lost just then leaves N right."""
    from tests.shared.conftest import shared_options

    options = shared_options(redis_server, replica_ttl=30.0)
    async with replica(options) as first:
        assert first.store.replicas == 1
        async with asyncio.timeout(2):
            while (await redis.pubsub_numsub("t:replicas:changed"))[0][1] < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.02)  # until its listener is subscribed
        async with replica(options):
            async with asyncio.timeout(2):
                while first.store.replicas != 2:  # noqa: ASYNC110 - the count is the store's own
                    await asyncio.sleep(0.02)
        async with asyncio.timeout(2):
            while first.store.replicas != 1:  # noqa: ASYNC110 - the count is the store's own
                await asyncio.sleep(0.02)
