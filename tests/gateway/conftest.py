"""A devnet shaped for routing tests, and a fresh router + gateway (with its own wallet) per test.

A new wallet per test keeps the providers' per-wallet limits and counters apart between tests.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import pytest

from router.chain.wallet import Wallet
from router.client import Router
from router.config import DiscoveryOptions, DispatchOptions, GatewayConfig, MoneyOptions, RouterConfig
from router.devnet import Devnet, DevnetConfig, ProviderSpec
from router.devnet.node_tools import NodeModules
from router.devnet.simulator.faults import Faults
from router.devnet.simulator.limits import RateLimits
from router.pool.health import HealthPolicy
from router.server.app import Gateway
from router.transport.http import TransportOptions
from tests.support import funded_wallet

API_KEY = "sk-test-" + "0123456789abcdef" * 2
CHAT_MODEL = "model-r"
# Roomy buckets so that hundreds of requests finish in seconds; concurrency stays at the broker's 5.
FAST = RateLimits(requests_per_minute=600, burst=10, max_concurrent=5)
GATEWAY_PROVIDERS = (
    ProviderSpec(model=CHAT_MODEL, input_price=1_000_000_000, output_price=2_000_000_000, limits=FAST),
    ProviderSpec(model=CHAT_MODEL, input_price=2_000_000_000, output_price=3_000_000_000, limits=FAST),
    ProviderSpec(model=CHAT_MODEL, input_price=3_000_000_000, output_price=4_000_000_000, limits=FAST),
    ProviderSpec(model="embed-r", service_type="embedding", limits=FAST),
    ProviderSpec(model="image-r", service_type="text-to-image", limits=FAST),
    ProviderSpec(model="whisper-r", service_type="speech-to-text", limits=FAST),
)
CHAT_PROVIDERS = 3


@pytest.fixture(scope="package")
async def gateway_devnet(node_modules: NodeModules) -> AsyncIterator[Devnet]:
    config = DevnetConfig(providers=GATEWAY_PROVIDERS, settle_interval=None)
    async with Devnet(config, node_modules) as devnet:
        yield devnet


@dataclass
class Served:
    """A running router + gateway for one test, with its own funded wallet."""

    devnet: Devnet
    router: Router
    url: str
    wallet: Wallet
    private_key: str
    http: aiohttp.ClientSession

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def auth(self, key: str = API_KEY) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    async def stats(self, index: int) -> dict[str, Any]:
        """Provider ``index``'s own counters (its admin route)."""
        async with self.http.get(self.devnet.providers[index].simulator.admin_url + "/admin/stats") as r:
            return dict(await r.json())

    async def set_faults(self, index: int, **knobs: Any) -> None:
        simulator = self.devnet.providers[index].simulator
        await simulator.set_faults(replace(simulator.faults.faults, **knobs))


ServeFactory = Callable[..., Awaitable[Served]]


def router_config(devnet: Devnet, private_key: str, **dispatch: Any) -> RouterConfig:
    return RouterConfig(
        network=devnet.network,
        private_key=private_key,
        transport=TransportOptions(
            allow_private_targets=True, stream_idle_timeout=5.0, body_idle_timeout=5.0
        ),
        discovery=DiscoveryOptions(event_poll_interval=0.2, probe_interval=0.1),
        health=HealthPolicy(cooldown=0.3, max_cooldown=1.0),
        dispatch=DispatchOptions(**{"request_timeout": 30.0, **dispatch}),
        # Each wallet starts with 1 0G available at every provider and these tests spend far less: no
        # top-up transaction runs in the middle of a timing-sensitive test (funding has its own tests).
        money=MoneyOptions(fund_below=0.5, fund_to=1.0),
    )


@pytest.fixture
async def serve(gateway_devnet: Devnet) -> AsyncIterator[ServeFactory]:
    """``await serve(**dispatch_options)``: a router and gateway for a new funded wallet (``health=`` a
    HealthPolicy replaces the fast-cooling default).

    Every provider's faults are reset afterwards. The test process's heap (the whole suite's, simulators
    included) is frozen out of the garbage collector meanwhile: a full collection of it stalls the one
    loop that runs router and providers alike, and a stalled loop delivers admitted requests to a
    provider in a bunch, which no production router (a small heap, providers elsewhere) sees.
    """
    opened: list[tuple[Router, Gateway]] = []
    gc.freeze()
    async with aiohttp.ClientSession() as http:

        async def start(health: HealthPolicy | None = None, **dispatch: Any) -> Served:
            wallet, key = await funded_wallet(gateway_devnet)
            config = router_config(gateway_devnet, key, **dispatch)
            router = Router(replace(config, health=health) if health is not None else config)
            await router.__aenter__()
            gateway = Gateway(router, GatewayConfig(port=0, api_keys=(API_KEY,), shutdown_timeout=0.5))
            await gateway.__aenter__()
            opened.append((router, gateway))
            return Served(gateway_devnet, router, gateway.url, wallet, key, http)

        try:
            yield start
        finally:
            gc.unfreeze()
            for router, gateway in reversed(opened):
                await gateway.__aexit__(None, None, None)
                await router.__aexit__(None, None, None)
            for provider in gateway_devnet.providers:
                await provider.simulator.set_faults(Faults())
