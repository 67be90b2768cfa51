"""A devnet shaped for issue 15's acceptance tests (several replicas on one wallet sharing a Redis).

Each test has providers of its own (its own model), so no test meets another's per-wallet buckets or
counters; every replica of every test pays with the devnet's first user. Each test starts its own
redis-server and its own ``zg-router serve`` processes, and kills them all at the end.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from router.devnet import Devnet, DevnetConfig, ProviderSpec
from router.devnet.node_tools import NodeModules
from router.devnet.simulator.faults import Faults
from router.devnet.simulator.limits import RateLimits
from tests.replicas.support import RedisServer, Replica, running_replicas

REPLICAS = 3

# Throughput: the request rate binds (4 per second a lane at most, 1 s replies, so about 4 of 8 slots in
# flight), on two providers of the model.
RATE_MODEL = "replicas-rate"
RATE_LIMITS = RateLimits(requests_per_minute=240, burst=10, max_concurrent=8)
RATE_LATENCY = 1.0
# A replica killed: the concurrency cap binds (6 slots, 1.5 s replies, a roomy rate); the replies are
# shorter than the lease TTL, so the killed replica's requests have left the provider before its
# leases expire.
KILL_MODEL = "replicas-kill"
KILL_LIMITS = RateLimits(requests_per_minute=6000, burst=100, max_concurrent=6)
KILL_LATENCY = 1.5
# Redis stopped: 6 slots, so 2 for each of 3 replicas counting alone.
STOP_MODEL = "replicas-redis-stop"
STOP_LIMITS = RateLimits(requests_per_minute=6000, burst=100, max_concurrent=6)
STOP_LATENCY = 0.5
# The leader killed: dear enough (3e14 neuron a token, about 0.005 0G a request) that the load drives
# top-ups every few seconds.
LEADER_MODEL = "replicas-leader"
LEADER_LIMITS = RateLimits(requests_per_minute=6000, burst=100, max_concurrent=5)
LEADER_LATENCY = 0.5
LEADER_PRICE = 300_000_000_000_000
# Cancellations: roomy limits, replies that take a while, streams that trickle. Roomy at the provider
# too: a request its client abandoned runs on there (as the broker's would) after our lease is gone.
CANCEL_MODEL = "replicas-cancel"
CANCEL_LIMITS = RateLimits(requests_per_minute=60000, burst=1000, max_concurrent=60)
CANCEL_GLOBAL_CAP = 100
CANCEL_LATENCY = 0.6
CANCEL_CHUNK_DELAY = 0.1

REPLICA_PROVIDERS = (
    ProviderSpec(model=RATE_MODEL, limits=RATE_LIMITS, faults=Faults(latency=RATE_LATENCY)),
    ProviderSpec(model=RATE_MODEL, limits=RATE_LIMITS, faults=Faults(latency=RATE_LATENCY)),
    ProviderSpec(model=KILL_MODEL, limits=KILL_LIMITS, faults=Faults(latency=KILL_LATENCY)),
    ProviderSpec(model=STOP_MODEL, limits=STOP_LIMITS, faults=Faults(latency=STOP_LATENCY)),
    ProviderSpec(
        model=LEADER_MODEL,
        limits=LEADER_LIMITS,
        input_price=LEADER_PRICE,
        output_price=LEADER_PRICE,
        faults=Faults(latency=LEADER_LATENCY),
    ),
    ProviderSpec(
        model=CANCEL_MODEL,
        limits=CANCEL_LIMITS,
        max_global_concurrent=CANCEL_GLOBAL_CAP,
        faults=Faults(latency=CANCEL_LATENCY, chunk_delay=CANCEL_CHUNK_DELAY),
    ),
)
RATE_PROVIDERS = (0, 1)
KILL_PROVIDER, STOP_PROVIDER, LEADER_PROVIDER, CANCEL_PROVIDER = 2, 3, 4, 5


@pytest.fixture(scope="package")
async def replicas_devnet(node_modules: NodeModules) -> AsyncIterator[Devnet]:
    # Settled only when a test says so, so that it knows what was settled.
    config = DevnetConfig(providers=REPLICA_PROVIDERS, settle_interval=None)
    async with Devnet(config, node_modules) as devnet:
        yield devnet


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    async with RedisServer(tmp_path) as server:
        yield server


@pytest.fixture
async def client_http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client without a connection cap (aiohttp's default of 100 would queue a test's clients
    in the client itself)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


StartReplicas = Callable[[Mapping[str, dict[str, Any]]], Awaitable[list[Replica]]]


@pytest.fixture
async def start_replicas(
    replicas_devnet: Devnet, redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[StartReplicas]:
    """``await start_replicas(sections)``: three replicas with ``sections`` (TOML tables) over the base
    config, sharing the test's Redis; stopped after the test.

    The test process's heap is frozen out of the garbage collector meanwhile (as in tests/lanes): the
    simulated providers run on the test's loop, and a full collection would stall them and bunch the
    requests they admit.
    """
    gc.freeze()
    try:
        async with AsyncExitStack() as stack:

            async def start(sections: Mapping[str, dict[str, Any]]) -> list[Replica]:
                return await stack.enter_async_context(
                    running_replicas(
                        replicas_devnet, tmp_path, sections, redis_server=redis_server, count=REPLICAS
                    )
                )

            yield start
    finally:
        gc.unfreeze()
