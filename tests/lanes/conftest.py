"""A devnet shaped for issue 14's end-to-end acceptance tests, and routers on its funded users.

Each test has providers of its own (its own models), so no test meets another's per-wallet buckets or
counters; they share the devnet's three users, the first of which every router pays with.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import replace

import pytest

from router.client import Router
from router.config import DispatchOptions, RouterConfig
from router.devnet import Devnet, DevnetConfig, ProviderSpec
from router.devnet.node_tools import NodeModules
from router.devnet.simulator.faults import Faults
from router.devnet.simulator.limits import RateLimits
from tests.support import EventLog

LONG_MODEL = "lanes-long"
IMAGE_MODEL = "lanes-image"
SOLO_MODEL = "lanes-capped-solo"
PAIR_MODEL = "lanes-capped-pair"
ONE_WALLET_MODEL = "lanes-one-wallet"
THREE_WALLET_MODEL = "lanes-three-wallets"

# Roomy request and concurrency limits, so that a test's own dimension (tokens, images, the global cap)
# is the one that binds.
ROOMY = RateLimits(requests_per_minute=600, burst=20, max_concurrent=5)
TOKENS_PER_MINUTE = 3000
IMAGES_PER_MINUTE = 4
GLOBAL_CAP = 3
# Longer than any of the global-cap tests: a saturating request holds its slot for the whole test.
HOLD_SLOT_SECONDS = 30.0
# Mainnet's shape with replies slow enough that five in flight per lane is reached, so that the
# concurrency cap binds at the start and the request rate after.
MAINNET_LATENCY = 8.0

LANE_PROVIDERS = (
    ProviderSpec(model=LONG_MODEL, limits=replace(ROOMY, tokens_per_minute=TOKENS_PER_MINUTE)),
    ProviderSpec(model=LONG_MODEL, limits=replace(ROOMY, tokens_per_minute=TOKENS_PER_MINUTE)),
    ProviderSpec(
        model=IMAGE_MODEL,
        service_type="text-to-image",
        limits=replace(ROOMY, images_per_minute=IMAGES_PER_MINUTE),
    ),
    ProviderSpec(
        model=SOLO_MODEL,
        limits=ROOMY,
        max_global_concurrent=GLOBAL_CAP,
        faults=Faults(latency=HOLD_SLOT_SECONDS),
    ),
    # The capped provider of the pair is the cheaper one, so a price-ranked router tries it first.
    ProviderSpec(
        model=PAIR_MODEL,
        input_price=1_000_000_000,
        output_price=2_000_000_000,
        limits=ROOMY,
        max_global_concurrent=GLOBAL_CAP,
        faults=Faults(latency=HOLD_SLOT_SECONDS),
    ),
    ProviderSpec(model=PAIR_MODEL, input_price=5_000_000_000, output_price=6_000_000_000, limits=ROOMY),
    ProviderSpec(model=ONE_WALLET_MODEL, faults=Faults(latency=MAINNET_LATENCY)),
    ProviderSpec(model=THREE_WALLET_MODEL, faults=Faults(latency=MAINNET_LATENCY)),
)
LONG_PROVIDERS = (0, 1)
IMAGE_PROVIDER = 2
SOLO_CAPPED = 3
PAIR_CAPPED, PAIR_OPEN = 4, 5
ONE_WALLET_PROVIDER, THREE_WALLET_PROVIDER = 6, 7
WALLETS = 3


@pytest.fixture(scope="package")
async def lanes_devnet(node_modules: NodeModules) -> AsyncIterator[Devnet]:
    # Settled only when a test says so, so that it knows what was settled.
    config = DevnetConfig(providers=LANE_PROVIDERS, wallets=WALLETS, settle_interval=None)
    async with Devnet(config, node_modules) as devnet:
        yield devnet


OpenRouter = Callable[[int, DispatchOptions], Awaitable[tuple[Router, EventLog]]]


@pytest.fixture
async def open_router(lanes_devnet: Devnet) -> AsyncIterator[OpenRouter]:
    """``await open_router(wallets, dispatch)``: a router paying with the devnet's first ``wallets``
    users, and the log of its events; closed after the test.

    The test process's heap is frozen out of the garbage collector meanwhile (as in the gateway tests):
    a full collection of the whole suite's heap stalls the one loop that runs routers and providers
    alike, and would deliver requests a router paced to a provider in a bunch.
    """
    gc.freeze()
    try:
        async with AsyncExitStack() as stack:

            async def start(wallets: int, dispatch: DispatchOptions) -> tuple[Router, EventLog]:
                log = EventLog()
                config = RouterConfig.for_devnet(lanes_devnet, wallets=wallets, dispatch=dispatch)
                router = await stack.enter_async_context(Router(config, observers=[log]))
                assert len(router.wallets) == wallets
                return router, log

            yield start
    finally:
        gc.unfreeze()
