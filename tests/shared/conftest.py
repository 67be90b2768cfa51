"""Fixtures for shared state: a fresh ``redis-server`` per test, options with short TTLs, and replicas
(a ``SharedStore`` with its ``RedisCapacity``, their background loops running) on it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from router.observability.events import Event
from router.shared.capacity import RedisCapacity
from router.shared.options import SharedOptions
from router.shared.store import SharedStore
from tests.shared_support import RedisServer, redis_server

__all__ = ["redis_server"]

# Short enough that a crashed replica's lease is back within a test, long enough for a loaded machine.
LEASE_TTL = 2.0
REPLICA_TTL = 1.0


@pytest.fixture
def options(redis_server: RedisServer) -> SharedOptions:
    return shared_options(redis_server)


def shared_options(server: RedisServer, **changes: Any) -> SharedOptions:
    fields: dict[str, Any] = {
        "redis_url": server.url,
        "timeout": 0.25,
        "lease_ttl": LEASE_TTL,
        "leader_ttl": LEASE_TTL,
        "replica_ttl": REPLICA_TTL,
        "prefix": "t",
    }
    return SharedOptions(**{**fields, **changes})


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client of the test's server, for looking at what the replicas wrote."""
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


class Replica:
    """One replica's store and capacity, with their background loops running while it is open."""

    def __init__(self, store: SharedStore, capacity: RedisCapacity) -> None:
        self.store = store
        self.capacity = capacity


@contextlib.asynccontextmanager
async def replica(
    options: SharedOptions,
    *,
    emit: Callable[[Event], None] = lambda event: None,
    name: str | None = None,
    clock: Callable[[], float] | None = None,
    rate_margin: float = 1.0,
    heartbeat: bool = True,
) -> AsyncIterator[Replica]:
    """A replica on ``options``' Redis; ``heartbeat=False`` leaves its leases unrenewed."""
    async with SharedStore(options, emit=emit, replica=name) as store:
        capacity = RedisCapacity(
            store, clock=clock or asyncio.get_running_loop().time, rate_margin=rate_margin
        )
        loops = [asyncio.create_task(store.run())]
        if heartbeat:
            loops.append(asyncio.create_task(capacity.run()))
        try:
            yield Replica(store, capacity)
        finally:
            await capacity.aclose()
            for task in loops:
                task.cancel()
            for task in loops:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
