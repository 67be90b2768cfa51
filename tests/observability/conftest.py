"""A devnet gateway that has served every kind of traffic the dashboard shows, and a real Prometheus
scraping it.

The gateway runs in-process for a new funded wallet; the traffic goes through the official ``openai`` SDK.
Prometheus is the system binary, started on a free loopback port with its own storage and stopped (and
waited for) on teardown.
"""

from __future__ import annotations

import asyncio
import ctypes
import signal
import socket
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import openai
import pytest

from router.client import Router
from router.config import GatewayConfig, MoneyOptions, RouterConfig
from router.devnet import Devnet, DevnetConfig, ProviderSpec
from router.devnet.node_tools import NodeModules
from router.devnet.simulator.faults import Faults
from router.devnet.simulator.limits import RateLimits
from router.observability.events import Funded, Settled
from router.server.app import Gateway
from tests.gateway.conftest import router_config as gateway_router_config
from tests.support import NEURON, EventLog, funded_wallet

API_KEY = "sk-obs-" + "0123456789abcdef" * 2
MODEL = "obs-chat"
ROOMY = RateLimits(requests_per_minute=600, burst=10, max_concurrent=5)
# Dear tokens (an output token costs 1e-6 0G), so one request's reserve (default_max_tokens of output)
# is 0.004 0G or more.
# The third also advertises token and image budgets (too large to bind), so their per-lane gauges have data.
BUDGETED = RateLimits(
    requests_per_minute=600, burst=10, max_concurrent=5, tokens_per_minute=10**8, images_per_minute=10**5
)
OBS_PROVIDERS = tuple(
    ProviderSpec(
        model=MODEL, input_price=n * 10**11, output_price=n * 10**12, limits=BUDGETED if n == 3 else ROOMY
    )
    for n in (1, 2, 3)
)
# The wallet starts with 2 0G at each provider: 1 0G available above the locked minimum, just over
# fund_below. The first request's reserve takes a provider under it, so the funder tops it up while the
# gateway counts (funding with trigger "auto"); the top-up to fund_to leaves room for the rest.
OBS_MONEY = MoneyOptions(fund_below=0.999, fund_to=1.2, balance_interval=1.0, watch_interval=0.2)
EVENT_WAIT = 15.0
PROMETHEUS_START = 20.0
SCRAPE_SAMPLES = 5
SCRAPE_WAIT = 30.0
_PR_SET_PDEATHSIG = 1


@dataclass
class Live:
    """The gateway under observation, its router's events and the SDK client that drives it."""

    devnet: Devnet
    router: Router
    gateway: Gateway
    log: EventLog
    client: openai.AsyncOpenAI
    http: aiohttp.ClientSession

    @property
    def metrics_url(self) -> str:
        assert self.gateway.metrics_url is not None
        return self.gateway.metrics_url

    async def scrape(self) -> str:
        async with self.http.get(self.metrics_url) as response:
            assert response.status == 200, await response.text()
            return await response.text()

    async def set_faults(self, index: int, **knobs: Any) -> None:
        simulator = self.devnet.providers[index].simulator
        await simulator.set_faults(replace(simulator.faults.faults, **knobs))

    async def chat(self, index: int, **extra: Any) -> Any:
        return await self.client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": f"observe me {index}"}], **extra
        )

    async def stream(self, index: int) -> None:
        stream = await self.client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"stream {index}"}], stream=True
        )
        chunks = [chunk async for chunk in stream]
        assert chunks

    async def unknown_model(self) -> None:
        with pytest.raises(openai.NotFoundError):
            await self.client.chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "hi"}]
            )

    async def failover(self, index: int) -> Any:
        """A chat pinned first to provider 0 (which the fixture makes answer 503), fallbacks allowed."""
        pin = {"X-ZG-Provider": self.devnet.providers[0].address, "X-ZG-Allow-Fallbacks": "true"}
        return await self.chat(index, extra_headers=pin)

    async def round(self, index: int) -> None:
        """One round of mixed traffic: two plain chats, a stream, a 404 and a failover (unless provider
        0's breaker is open, which skips it)."""
        chats = (self.chat(index), self.chat(index + 1), self.stream(index), self.failover(index))
        await asyncio.gather(*chats, self.unknown_model())


@pytest.fixture(scope="module")
async def obs_devnet(node_modules: NodeModules) -> AsyncIterator[Devnet]:
    # No settlement cadence: the fixtures settle when they want the settlement counters to move.
    config = DevnetConfig(providers=OBS_PROVIDERS, settle_interval=None)
    async with Devnet(config, node_modules) as devnet:
        yield devnet


def router_config(devnet: Devnet, private_key: str) -> RouterConfig:
    """The gateway tests' router, with the funding thresholds above (top-ups happen under traffic)."""
    return replace(gateway_router_config(devnet, private_key), money=OBS_MONEY)


@pytest.fixture(scope="module")
async def live(obs_devnet: Devnet) -> AsyncIterator[Live]:
    """A router + gateway that has served plain and streamed chats, a 404, failovers, automatic and
    manual funding and a settlement, before anything scrapes it."""
    log = EventLog()
    async with AsyncExitStack() as stack:
        router = await stack.enter_async_context(
            Router(router_config(obs_devnet, (await funded_wallet(obs_devnet))[1]), observers=[log])
        )
        gateway = await stack.enter_async_context(
            Gateway(router, GatewayConfig(port=0, api_keys=(API_KEY,), shutdown_timeout=0.5))
        )
        http = await stack.enter_async_context(aiohttp.ClientSession())
        client = await stack.enter_async_context(
            openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=API_KEY, max_retries=0)
        )
        stack.push_async_callback(_reset_faults, obs_devnet)
        served = Live(obs_devnet, router, gateway, log, client, http)
        await _warm_up(served)
        yield served


async def _reset_faults(devnet: Devnet) -> None:
    for provider in devnet.providers:
        await provider.simulator.set_faults(Faults())


async def _warm_up(live: Live) -> None:
    providers = live.devnet.providers
    # Failover, while every bucket is full: provider 0 answers 503 to everything from now on; pinned
    # first with fallbacks allowed, each request fails there and is served by another provider.
    await live.set_faults(0, error_503=1.0)
    for i in range(2):
        raw = await live.failover(100 + i)
        assert raw.headers["x-zg-attempts"] == "2"
        assert raw.headers["x-zg-provider"] != providers[0].address
    for i in range(4):
        await live.round(2 * i)
    # The first requests' reserves took their providers under fund_below: the funder tops them up.
    await live.log.wait_for(lambda e: isinstance(e, Funded) and not e.manual, within=EVENT_WAIT)
    # A settlement on chain, seen by the watcher; and a manual top-up through the admin path.
    await asyncio.gather(*(p.simulator.settle_now() for p in providers))
    await live.log.wait_for(lambda e: isinstance(e, Settled), within=EVENT_WAIT)
    await live.router.fund(providers[1].address, NEURON // 10)
    await live.log.wait_for(lambda e: isinstance(e, Funded) and e.manual, within=EVENT_WAIT)


class Prometheus:
    """A running ``prometheus`` scraping one target every second."""

    def __init__(self, url: str, http: aiohttp.ClientSession, log_path: Path) -> None:
        self.url = url
        self._http = http
        self.log_path = log_path

    async def query(self, expr: str) -> dict[str, Any]:
        """``/api/v1/query`` at now; returns the ``data`` object (raises on an API error)."""
        async with self._http.get(self.url + "/api/v1/query", params={"query": expr}) as response:
            body = await response.json()
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')}")
        return dict(body["data"])

    async def samples(self, expr: str) -> list[dict[str, Any]]:
        return list((await self.query(expr))["result"])

    async def ready(self) -> bool:
        try:
            async with self._http.get(self.url + "/-/ready") as response:
                return response.status == 200
        except aiohttp.ClientConnectionError:
            return False

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


class PrometheusError(Exception):
    pass


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel kills Prometheus if the test run dies uncleanly."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
async def prometheus(live: Live, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Prometheus]:
    """A real Prometheus scraping the live gateway's ``/metrics`` every second, with at least
    ``SCRAPE_SAMPLES`` scrapes taken while traffic (plain, streamed, 404s, failovers) kept flowing."""
    home = tmp_path_factory.mktemp("prometheus")
    target = urlsplit(live.metrics_url).netloc
    (home / "prometheus.yml").write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: zg-router\n"
        "    metrics_path: /metrics\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n"
    )
    port = free_port()
    log_path = home / "prometheus.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            "prometheus",
            f"--config.file={home / 'prometheus.yml'}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            cwd=home,
            preexec_fn=_die_with_parent,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}", live.http, log_path)
    try:
        await _wait_ready(prom, process)
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(_keep_traffic_flowing(live, stop))
            try:
                problem = await _wait_scraped(prom, process)
            finally:
                stop.set()
        if problem is not None:
            pytest.fail(f"{problem}:\n{prom.log_tail()}")
        yield prom
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _wait_ready(prom: Prometheus, process: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + PROMETHEUS_START
    while time.monotonic() < deadline:
        if process.returncode is not None:
            pytest.fail(f"prometheus exited with {process.returncode}:\n{prom.log_tail()}")
        if await prom.ready():
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"prometheus not ready within {PROMETHEUS_START} s:\n{prom.log_tail()}")


async def _wait_scraped(prom: Prometheus, process: asyncio.subprocess.Process) -> str | None:
    """Until Prometheus holds ``SCRAPE_SAMPLES`` successful scrapes of the gateway; returns what went
    wrong, if anything."""
    expr = "count_over_time(zg_router_build_info[1m])"
    deadline = time.monotonic() + SCRAPE_WAIT
    while time.monotonic() < deadline:
        if process.returncode is not None:
            return f"prometheus exited with {process.returncode}"
        result = await prom.samples(expr)
        if result and float(result[0]["value"][1]) >= SCRAPE_SAMPLES:
            return None
        await asyncio.sleep(0.25)
    return f"fewer than {SCRAPE_SAMPLES} scrapes in {SCRAPE_WAIT} s; up = {await prom.samples('up')}"


async def _keep_traffic_flowing(live: Live, stop: asyncio.Event) -> None:
    """Rounds of mixed traffic until ``stop`` (at most ``SCRAPE_WAIT`` seconds' worth)."""
    deadline = time.monotonic() + SCRAPE_WAIT
    index = 1000
    while not stop.is_set() and time.monotonic() < deadline:
        await live.round(index)
        if index % 10 == 0:
            # Settlements land while Prometheus watches, so the settlement rates move too.
            await asyncio.gather(*(p.simulator.settle_now() for p in live.devnet.providers))
        index += 2
        # Paced so that the providers' buckets are never the limit; the stop flag ends it early.
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.2)
