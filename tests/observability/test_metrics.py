"""End to end: the Prometheus metrics a devnet gateway serves agree with what its clients saw.

Each test opens a router and gateway for a new funded wallet on a devnet of its own (three chat providers
with different limits and prices) and drives it with the official ``openai`` SDK. Scrapes are parsed with
``prometheus_client``'s parser; where a gauge must match router state read at the same instant, the test
renders the in-process registry synchronously (no await between the scrape and the read).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import openai
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from router.chain.networks import Network
from router.client import Router
from router.config import DiscoveryOptions, DispatchOptions, GatewayConfig, MoneyOptions, RouterConfig
from router.devnet import Devnet, DevnetConfig, ProviderSpec
from router.devnet.node_tools import NodeModules
from router.devnet.simulator.faults import Faults
from router.devnet.simulator.limits import RateLimits
from router.errors import ConfigError
from router.observability.events import AttemptFailed, BreakerChanged, RpcFailed, WatcherProgress
from router.observability.metrics import Metrics
from router.pool.health import BreakerState, HealthPolicy
from router.server.app import Gateway
from router.transport.http import TransportOptions
from tests.support import EventLog, funded_wallet, in_flight

API_KEY = "sk-metrics-" + "0123456789abcdef" * 2
MODEL = "metrics-chat"
LIMITS = (
    RateLimits(requests_per_minute=600, burst=10, max_concurrent=5),
    RateLimits(requests_per_minute=600, burst=8, max_concurrent=4),
    RateLimits(requests_per_minute=600, burst=12, max_concurrent=3),
)
PROVIDERS = tuple(
    ProviderSpec(model=MODEL, input_price=(i + 1) * 10**9, output_price=(i + 2) * 10**9, limits=limits)
    for i, limits in enumerate(LIMITS)
)
CHAT = "/chat/completions"
TIMEOUT = 30.0
WAIT = 15.0


def sample(text: str, name: str, **labels: str) -> float | None:
    """The sum of the samples called ``name`` whose labels include ``labels``; None if there are none."""
    values = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return sum(values) if values else None


def label_values(text: str, label: str) -> set[str]:
    """Every value ``label`` takes anywhere in the scrape."""
    return {
        s.labels[label]
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if label in s.labels
    }


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(predicate: Callable[[], bool], within: float) -> None:
    """Poll ``predicate`` until it holds; fail the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within} s")
        await asyncio.sleep(0.01)


@pytest.fixture(scope="module")
async def metrics_devnet(node_modules: NodeModules) -> AsyncIterator[Devnet]:
    async with Devnet(DevnetConfig(providers=PROVIDERS, settle_interval=None), node_modules) as devnet:
        yield devnet


@dataclass
class Stack:
    """A running router + gateway for one new wallet, its events, and clients to drive and scrape it."""

    devnet: Devnet
    router: Router
    gateway: Gateway
    log: EventLog
    client: openai.AsyncOpenAI
    http: aiohttp.ClientSession
    private_key: str

    def address(self, index: int) -> str:
        return self.devnet.providers[index].address

    async def scrape(self) -> str:
        assert self.gateway.metrics_url is not None
        async with asyncio.timeout(TIMEOUT), self.http.get(self.gateway.metrics_url) as response:
            assert response.status == 200, await response.text()
            return await response.text()

    def scrape_now(self) -> str:
        """The in-process registry, rendered without yielding to the event loop."""
        assert self.gateway.metrics is not None
        return generate_latest(self.gateway.metrics.registry).decode()

    async def set_faults(self, index: int, **knobs: Any) -> None:
        simulator = self.devnet.providers[index].simulator
        await simulator.set_faults(replace(simulator.faults.faults, **knobs))

    async def chat(self, text: str, **extra: Any) -> Any:
        return await self.client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": text}], **extra
        )

    def pin(self, index: int, fallbacks: bool) -> dict[str, str]:
        return {"X-ZG-Provider": self.address(index), "X-ZG-Allow-Fallbacks": str(fallbacks).lower()}


Open = Callable[..., Awaitable[Stack]]


def default_gateway(**changes: Any) -> GatewayConfig:
    return GatewayConfig(**{"port": 0, "api_keys": (API_KEY,), "shutdown_timeout": 0.5, **changes})


@pytest.fixture
async def open_stack(metrics_devnet: Devnet) -> AsyncIterator[Open]:
    """``await open_stack(gateway=, network=, health=)``: a router and gateway for a new funded wallet.
    Everything is closed and every provider's faults are reset afterwards."""
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(aiohttp.ClientSession())

        async def reset_faults() -> None:
            for provider in metrics_devnet.providers:
                await provider.simulator.set_faults(Faults())

        stack.push_async_callback(reset_faults)

        async def start(
            *,
            gateway: GatewayConfig | None = None,
            network: Network | None = None,
            health: HealthPolicy | None = None,
        ) -> Stack:
            _, key = await funded_wallet(metrics_devnet)
            config = RouterConfig(
                network=network or metrics_devnet.network,
                private_key=key,
                transport=TransportOptions(allow_private_targets=True, stream_idle_timeout=5.0),
                discovery=DiscoveryOptions(event_poll_interval=0.2, probe_interval=0.1),
                health=health or HealthPolicy(cooldown=0.3, max_cooldown=1.0),
                dispatch=DispatchOptions(request_timeout=TIMEOUT),
                # Far more than these tests spend: no top-up runs in the middle of a test.
                money=MoneyOptions(fund_below=0.5, fund_to=1.0, watch_interval=0.2),
            )
            log = EventLog()
            gateway = gateway or default_gateway()
            router = Router(config, observers=[log])
            # Built before the router opens, as `zg-router serve` does: start-up events count too.
            metrics = Metrics(router) if gateway.metrics else None
            await stack.enter_async_context(router)
            served = await stack.enter_async_context(Gateway(router, gateway, metrics=metrics))
            client = await stack.enter_async_context(
                openai.AsyncOpenAI(
                    base_url=served.url + "/v1", api_key=API_KEY, max_retries=0, timeout=TIMEOUT
                )
            )
            return Stack(metrics_devnet, router, served, log, client, http, key)

        yield start


def fee(devnet: Devnet, provider: str, prompt: int, completion: int) -> int:
    """What a reply costs at ``provider``'s registered prices (README: tokens x price)."""
    spec = next(p.spec for p in devnet.providers if p.address == provider)
    return prompt * spec.input_price + completion * spec.output_price


async def test_request_counters_match_what_the_clients_saw(open_stack: Open) -> None:
    """N plain chats and M streams: requests, durations, TTFT, tokens, cost, attempts and queue waits
    in the scrape equal the replies' own counts. Plain costs come from ``x-zg-cost``; a stream's cost
    (no header) is its final ``usage`` chunk at the serving provider's registered prices."""
    s = await open_stack()
    plain, streams = 5, 3
    prompt = completion = cost = 0
    for i in range(plain):
        raw = await s.chat(f"plain request number {i}")
        usage = raw.parse().usage
        assert raw.status_code == 200
        assert usage is not None
        header_cost = int(raw.headers["x-zg-cost"])
        assert header_cost == fee(
            s.devnet, raw.headers["x-zg-provider"], usage.prompt_tokens, usage.completion_tokens
        )
        prompt, completion, cost = (
            prompt + usage.prompt_tokens,
            completion + usage.completion_tokens,
            cost + header_cost,
        )
    for i in range(streams):
        raw = await s.chat(f"stream {i}", stream=True, stream_options={"include_usage": True})
        chunks = [chunk async for chunk in raw.parse()]
        usage = chunks[-1].usage
        assert raw.status_code == 200
        assert usage is not None
        prompt, completion = prompt + usage.prompt_tokens, completion + usage.completion_tokens
        cost += fee(s.devnet, raw.headers["x-zg-provider"], usage.prompt_tokens, usage.completion_tokens)
    assert prompt > 0
    assert completion > 0
    text = await s.scrape()
    total = plain + streams
    assert sample(text, "zg_router_requests_total", endpoint=CHAT, model=MODEL, status="200") == total
    assert sample(text, "zg_router_requests_total") == total
    assert sample(text, "zg_router_request_duration_seconds_count", endpoint=CHAT, model=MODEL) == total
    assert sample(text, "zg_router_ttft_seconds_count", model=MODEL) == streams
    assert sample(text, "zg_router_tokens_total", model=MODEL, kind="prompt") == prompt
    assert sample(text, "zg_router_tokens_total", model=MODEL, kind="completion") == completion
    assert sample(text, "zg_router_cost_neuron_total") == cost
    assert sample(text, "zg_router_attempts_total", outcome="ok") == total
    assert sample(text, "zg_router_attempts_total") == total
    assert sample(text, "zg_router_failovers_total") == 0
    assert sample(text, "zg_router_queue_wait_seconds_count") == total
    assert sample(text, "zg_router_build_info") == 1


async def test_labels_stay_bounded_and_hold_no_secrets(open_stack: Open) -> None:
    """30 made-up model names count as model="unknown" and never appear in the scrape; neither do the
    gateway key, the wallet key, a session token or a client's request id."""
    s = await open_stack()
    names = [f"made-up-{os.urandom(6).hex()}" for _ in range(30)]
    request_id = "client-req-" + os.urandom(8).hex()
    for name in names:
        with pytest.raises(openai.NotFoundError):
            await s.client.chat.completions.create(
                model=name,
                messages=[{"role": "user", "content": "hi"}],
                extra_headers={"X-Request-Id": request_id},
            )
    raw = await s.chat("one that works", extra_headers={"X-Request-Id": request_id})
    assert raw.status_code == 200
    text = await s.scrape()
    assert sample(text, "zg_router_requests_total", endpoint=CHAT, model="unknown", status="404") == 30
    assert sample(text, "zg_router_requests_total", status="404") == 30
    assert label_values(text, "model") == {MODEL, "unknown"}
    for name in names:
        assert name not in text
    secrets = (API_KEY, s.private_key, s.private_key.removeprefix("0x"), "app-sk-", request_id)
    for secret in secrets:
        assert secret.lower() not in text.lower()


async def test_failover_counts_the_failing_provider(open_stack: Open) -> None:
    """A provider that answers 503 to everything is tried, counted as "unhealthy" (failover and attempt),
    and every request still succeeds elsewhere."""
    s = await open_stack()
    await s.set_faults(0, error_503=1.0)
    bad = s.address(0)

    def tried() -> int:
        return sum(1 for e in s.log.of(AttemptFailed) if e.provider == bad)

    for i in range(20):
        raw = await s.chat(f"failover {i}")
        assert raw.status_code == 200
        assert raw.headers["x-zg-provider"] != bad
        if tried():
            break
    assert tried() > 0, "the failing provider was never tried in 20 requests"
    unhealthy = [e for e in s.log.of(AttemptFailed) if e.verdict == "unhealthy"]
    text = await s.scrape()
    assert sample(text, "zg_router_failovers_total", reason="unhealthy") == len(unhealthy) > 0
    assert sample(text, "zg_router_attempts_total", provider=bad, outcome="unhealthy") == tried()
    assert not sample(text, "zg_router_attempts_total", provider=bad, outcome="ok")
    assert sample(text, "zg_router_requests_total", status="200") == i + 1


async def test_provider_gauges_follow_limits_breakers_and_balances(open_stack: Open) -> None:
    """Every provider's availability, limits and breaker; a breaker driven open shows as open with a
    health score of 0; balances equal the router's books at the moment of the scrape."""
    s = await open_stack(health=HealthPolicy(cooldown=60.0, max_cooldown=120.0))
    text = await s.scrape()
    ids = {state.id for state in s.router.pool}
    assert ids == {p.address for p in s.devnet.providers}
    for provider in s.devnet.providers:
        p, limits = provider.address, provider.spec.limits
        assert sample(text, "zg_router_provider_available", provider=p) == 1
        assert sample(text, "zg_router_provider_max_concurrent", provider=p) == limits.max_concurrent
        assert sample(text, "zg_router_provider_limiter_capacity", provider=p) == limits.burst - 1
        assert sample(text, "zg_router_provider_breaker_state", provider=p) == 1
        assert sample(text, "zg_router_provider_breaker_state", provider=p, state="closed") == 1
        assert sample(text, "zg_router_provider_health_score", provider=p) == 1
    assert label_values(text, "state") == {s.value for s in BreakerState}

    await s.set_faults(0, error_503=1.0)
    bad = s.address(0)

    def opened() -> bool:
        return any(
            isinstance(e, BreakerChanged) and e.provider == bad and e.state == "open" for e in s.log.events
        )

    for i in range(10):
        raw = await s.chat(f"break it {i}", extra_headers=s.pin(0, fallbacks=True))
        assert raw.status_code == 200
        if opened():
            break
    assert opened(), "the breaker did not open in 10 requests"
    state = s.router.pool.get(bad)
    assert state is not None
    assert state.health.state is BreakerState.OPEN

    text = s.scrape_now()
    (wallet,) = s.router.wallets
    accounts = wallet.accounts
    books = {a.provider: (a.available, a.unsettled) for a in accounts}
    ledger = accounts.ledger_available
    assert sample(text, "zg_router_provider_breaker_state", provider=bad, state="open") == 1
    assert sample(text, "zg_router_provider_breaker_state", provider=bad) == 1
    assert sample(text, "zg_router_provider_health_score", provider=bad) == 0
    assert sample(text, "zg_router_provider_available", provider=bad) == 0
    for good in (s.address(1), s.address(2)):
        assert sample(text, "zg_router_provider_breaker_state", provider=good, state="closed") == 1
    assert set(books) == ids
    for p, (available, unsettled) in books.items():
        at = {"provider": p, "wallet": wallet.address}
        assert available > 0
        assert sample(text, "zg_router_provider_balance_neuron", **at) == available
        assert sample(text, "zg_router_provider_unsettled_neuron", **at) == unsettled
    assert ledger > 0
    assert sample(text, "zg_router_ledger_available_neuron", wallet=wallet.address) == ledger


async def test_in_flight_gauge_counts_a_pending_request(open_stack: Open) -> None:
    """While a slow request is out at its provider, that provider shows one in flight (and the others
    none); once it has answered, zero."""
    s = await open_stack()
    await s.set_faults(1, latency=2.0)
    slow = s.address(1)
    state = s.router.pool.get(slow)
    assert state is not None
    task = asyncio.create_task(s.chat("take your time", extra_headers=s.pin(1, fallbacks=False)))
    try:
        await until(lambda: in_flight(s.router, state) == 1 or task.done(), within=WAIT)
        assert not task.done(), "the request finished before it was seen in flight"
        text = s.scrape_now()
        assert sample(text, "zg_router_provider_in_flight", provider=slow) == 1
        assert sample(text, "zg_router_provider_in_flight") == 1
        assert sample(text, "zg_router_queue_depth") == 0
        async with asyncio.timeout(TIMEOUT):
            raw = await task
    finally:
        if not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
    assert raw.status_code == 200
    assert raw.headers["x-zg-provider"] == slow
    text = await s.scrape()
    assert sample(text, "zg_router_provider_in_flight", provider=slow) == 0
    assert sample(text, "zg_router_provider_in_flight") == 0


async def test_metrics_are_on_a_loopback_port_of_their_own_by_default(open_stack: Open) -> None:
    """By default the metrics (no key, balances and spend) listen on loopback on a port of their own (a
    free one, as the API port is); the API port has no /metrics (404)."""
    s = await open_stack(gateway=default_gateway())
    assert s.gateway.metrics_url is not None
    metrics, api = urlsplit(s.gateway.metrics_url), urlsplit(s.gateway.url)
    assert metrics.hostname == "127.0.0.1"
    assert metrics.port != api.port
    raw = await s.chat("count me")
    assert raw.status_code == 200
    async with s.http.get(s.gateway.metrics_url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    assert sample(text, "zg_router_requests_total", model=MODEL, status="200") == 1
    await assert_no_metrics(s.http, s.gateway.url)


async def test_metrics_share_the_api_port_only_when_asked(open_stack: Open) -> None:
    """``metrics_on_api_port``: /metrics is served on the API port, and nothing listens elsewhere."""
    s = await open_stack(gateway=default_gateway(metrics_on_api_port=True))
    assert s.gateway.metrics_url == s.gateway.url + "/metrics"
    async with asyncio.timeout(TIMEOUT), s.http.get(s.gateway.metrics_url) as response:
        assert response.status == 200
        assert "zg_router_build_info" in await response.text()


async def test_metrics_off(open_stack: Open) -> None:
    """``metrics=False``: no registry, no metrics URL, and /metrics is a 404 like any unknown path."""
    s = await open_stack(gateway=default_gateway(metrics=False))
    assert s.gateway.metrics is None
    assert s.gateway.metrics_url is None
    await assert_no_metrics(s.http, s.gateway.url)


async def assert_no_metrics(http: aiohttp.ClientSession, url: str) -> None:
    async with asyncio.timeout(TIMEOUT), http.get(url + "/metrics") as response:
        body = await response.json(content_type=None)
        assert response.status == 404, body
        assert response.headers["Content-Type"].startswith("application/json")
    assert body["error"]["code"] == "not_found"
    assert "zg_router" not in str(body)


def test_metrics_port_config_errors() -> None:
    with pytest.raises(ConfigError, match="metrics_port must differ from port"):
        GatewayConfig(port=9000, metrics_port=9000, api_keys=(API_KEY,))
    with pytest.raises(ConfigError, match="metrics_port must differ from port"):
        GatewayConfig(port=9464, api_keys=(API_KEY,))
    with pytest.raises(ConfigError, match="metrics = false"):
        GatewayConfig(port=0, metrics_port=9100, metrics=False, api_keys=(API_KEY,))
    with pytest.raises(ConfigError, match="metrics = false"):
        GatewayConfig(port=0, metrics_on_api_port=True, metrics=False, api_keys=(API_KEY,))
    with pytest.raises(ConfigError, match="choose one"):
        GatewayConfig(port=0, metrics_port=9100, metrics_on_api_port=True, api_keys=(API_KEY,))
    with pytest.raises(ConfigError, match="metrics_port must be 0-65535"):
        GatewayConfig(port=0, metrics_port=70000, api_keys=(API_KEY,))
    # Both on ephemeral ports is fine: they get different ones.
    assert GatewayConfig(port=0, metrics_port=0, api_keys=(API_KEY,)).metrics_port == 0


def test_metrics_address_defaults_to_loopback_9464_or_a_free_port_beside_a_free_api_port() -> None:
    assert GatewayConfig(api_keys=(API_KEY,)).metrics_address == ("127.0.0.1", 9464)
    assert GatewayConfig(port=0, api_keys=(API_KEY,)).metrics_address == ("127.0.0.1", 0)
    shown = GatewayConfig(metrics_host="0.0.0.0", metrics_port=9100, api_keys=(API_KEY,))  # noqa: S104
    assert shown.metrics_address == ("0.0.0.0", 9100)  # noqa: S104
    assert GatewayConfig(metrics_on_api_port=True, api_keys=(API_KEY,)).metrics_address is None
    assert GatewayConfig(metrics=False, api_keys=(API_KEY,)).metrics_address is None


async def test_rpc_errors_are_counted_by_endpoint(open_stack: Open, metrics_devnet: Devnet) -> None:
    """A dead RPC URL listed first fails while the router opens; the scrape counts it under that
    endpoint, and the healthy endpoint's series exists at zero."""
    dead = f"http://127.0.0.1:{closed_port()}"
    real = metrics_devnet.rpc_url
    parts = urlsplit(real)
    s = await open_stack(network=metrics_devnet.network.with_rpc_urls(dead, real))
    failed = [e for e in s.log.of(RpcFailed) if e.endpoint == dead]
    assert failed, "the router never tried the dead endpoint"
    text = await s.scrape()
    assert sample(text, "zg_router_chain_rpc_errors_total", endpoint=f"{parts.scheme}://{parts.netloc}") == 0
    errors = sample(text, "zg_router_chain_rpc_errors_total", endpoint=dead)
    assert errors is not None
    assert errors >= len(failed), f"{len(failed)} RPC errors at {dead}, counted {errors}"


async def test_watcher_gauges(open_stack: Open) -> None:
    """Once the settlement watcher has applied a block, its block and lag gauges hold its last progress
    report. Anvil mines only on transactions, so the test mines one block past the watcher's start."""
    s = await open_stack()
    mined = await s.devnet.owner.block_number() + 1
    await s.devnet.owner.rpc("evm_mine")
    await s.log.wait_for(lambda e: isinstance(e, WatcherProgress) and e.block >= mined, within=WAIT)
    text = s.scrape_now()
    last = s.log.of(WatcherProgress)[-1]
    head = await s.devnet.owner.block_number()
    (wallet,) = s.router.wallets
    assert last.wallet == wallet.address
    assert sample(text, "zg_router_watcher_block", wallet=wallet.address) == last.block
    assert 0 < mined <= last.block <= head
    lag = sample(text, "zg_router_watcher_lag_blocks", wallet=wallet.address)
    assert lag is not None
    assert lag == max(0, last.head - last.block)
    assert lag >= 0
