"""Benchmark: the same load straight to the simulated providers, through a bare hop, and through zg-router.

    .venv/bin/python bench/bench.py [--quick] [--rounds N] [--profile DIR] [--json]
    .venv/bin/python bench/bench.py --soak [--minutes N] [--json]        (bench/soak.py)

Starts a devnet with fast providers (no latency, limits out of the way) in this process, and each hop as
a separate process pinned to the second core, so that its CPU time per request can be read from /proc.
This process (devnet + load generator) runs on the first core. Every load loop is bounded.

Four targets: ``direct`` (a provider), ``bare_hop`` (``bare_hop.py``, the least an aiohttp proxy can do:
read, forward, write back, relay a stream's bytes), ``gateway_unverified`` (``zg-router serve`` with
``[verify] sample_rate = 0``) and ``gateway`` (every TEE response verified after delivery; each phase
waits for its verifier to catch up and counts that CPU to the phase). The gateways' figures are read
against the bare hop's measured in the same run, since absolute CPU times depend on the machine.

The load runs in rounds (``--rounds``, default 2) that split it; each phase goes to every target in turn,
in an order that alternates round by round, so that a neighbour's burst on a shared machine weighs on all;
figures pool the rounds. Per target: throughput and CPU per request at concurrency 32 (closed loop);
latency p50/p99 and CPU per request at 50 and at 100 req/s (open loop) and what each hop adds to the
direct figures; streams of 20 SSE events at 20 req/s, their time to first token and CPU per stream. Then
each gateway's RSS, and its start to ready (spawn to the first /readyz 200, median of three) with static
upstreams only and on the devnet preset, with its RSS when ready; for reference, the bare hop's start to
ready, the wall time of ``import aiohttp.web`` (what the platform itself costs) and the RSS of a process
that imports web3 and nothing else (what the chain side's libraries hold). ``bench/goals.py`` judges issue
18's goals from the figures. ``--profile DIR`` records each gateway with py-spy through its c32 phase of
the first round (``bench/profiles.py``): ``DIR/<hop>.raw`` and its top functions, ``DIR/<hop>.top.txt``.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import functools
import gc
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import aiohttp
from goals import goals, report
from profiles import recording, write_tops
from prometheus_client.parser import text_string_to_metric_families

import router
from router.chain.session import SessionTokens
from router.devnet import USER_KEY_INDEX, Devnet, DevnetConfig, ProviderSpec, dev_private_key
from router.devnet.simulator.limits import RateLimits

MODEL = "bench-model"
API_KEY = "sk-bench-0123456789abcdef"
PROVIDERS = 3
# Limits far above the load: the benchmark measures the hop, not the providers' throttling.
UNLIMITED = RateLimits(requests_per_minute=10_000_000, burst=100_000, max_concurrent=100_000)
MESSAGES = [{"role": "user", "content": "hello, how are you?"}]
BODY = json.dumps({"model": MODEL, "messages": MESSAGES}).encode()
# ``ignore_eos`` makes the simulator say exactly ``max_tokens`` words, one SSE event each, after the role's
# event and before the finish, the usage and [DONE]: 16 words are 20 events.
STREAM_WORDS = 16
STREAM_EVENTS = STREAM_WORDS + 4
STREAM_BODY = json.dumps(
    {"model": MODEL, "stream": True, "max_tokens": STREAM_WORDS, "ignore_eos": True, "messages": MESSAGES}
).encode()
# Requests of a full run, over all rounds: ~5 s at c32, 10 s at each rate, 20 s of streams.
C32_REQUESTS, RATES, STREAMS, STREAM_RATE = 5000, {50: 500, 100: 1000}, 400, 20
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Read before this process pins itself to the first: the hops go to the second core.
CORES = sorted(os.sched_getaffinity(0))
T = TypeVar("T")


@dataclass
class Target:
    """Where requests go: a URL and the headers it needs."""

    url: str
    headers: Callable[[], Awaitable[dict[str, str]]]


async def gateway_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def one(http: aiohttp.ClientSession, target: Target, body: bytes) -> float:
    started = time.perf_counter()
    async with http.post(target.url, data=body, headers=await target.headers()) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"{target.url} answered {response.status}")
    return time.perf_counter() - started


async def closed_loop(http: aiohttp.ClientSession, target: Target, concurrency: int, total: int) -> float:
    """Requests per second with ``concurrency`` workers sending ``total`` requests in all."""
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one(http, target, BODY)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - started)


async def open_loop(http: aiohttp.ClientSession, target: Target, rate: float, total: int) -> list[float]:
    """Latencies of ``total`` requests started at a fixed ``rate`` per second, whatever the replies do."""
    start = time.perf_counter()

    async def scheduled(index: int) -> float:
        await asyncio.sleep(max(0.0, start + index / rate - time.perf_counter()))
        return await one(http, target, BODY)

    return list(await asyncio.gather(*(scheduled(i) for i in range(total))))


async def ttfts(http: aiohttp.ClientSession, target: Target, rate: float, total: int) -> list[float]:
    """Time to the first SSE event for ``total`` streams started at ``rate`` per second, each read to its
    end and checked to be ``STREAM_EVENTS`` events (the CPU per stream is per stream of that size)."""
    start = time.perf_counter()

    async def scheduled(index: int) -> float:
        await asyncio.sleep(max(0.0, start + index / rate - time.perf_counter()))
        sent = time.perf_counter()
        async with http.post(target.url, data=STREAM_BODY, headers=await target.headers()) as response:
            first = await response.content.readline()
            ttft = time.perf_counter() - sent
            whole = first + await response.read()
        if response.status != 200 or not first.startswith(b"data: "):
            raise RuntimeError(f"{target.url}: the stream did not start with an event ({response.status})")
        events = whole.count(b"\n\n")
        if events != STREAM_EVENTS:
            raise RuntimeError(f"{target.url}: the stream had {events} events, not {STREAM_EVENTS}")
        return ttft

    return list(await asyncio.gather(*(scheduled(i) for i in range(total))))


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """This process's garbage collector held off for a measured phase, after one collection first.

    The load generator shares its process with the devnet (web3, the simulated providers): a full
    collection over that heap takes about 50 ms here, and one landing mid-phase put 30-45 ms into
    the p99 of whichever hop it hit, a pause of the load generator's, not the hop's.
    """
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def devnet_config() -> DevnetConfig:
    spec = ProviderSpec(model=MODEL, limits=UNLIMITED, max_global_concurrent=100_000)
    return DevnetConfig(providers=(spec,) * PROVIDERS, settle_interval=None)


async def spawn_bare_hop(upstream: str, authorization: str) -> tuple[asyncio.subprocess.Process, str]:
    """A bare hop process, not yet waited for, and its URL."""
    port = free_port()
    env = {**os.environ, "UPSTREAM": upstream, "AUTHORIZATION": authorization, "PORT": str(port)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("bare_hop.py")), env=env
    )
    return process, f"http://127.0.0.1:{port}"


async def start_bare_hop(upstream: str, authorization: str) -> tuple[asyncio.subprocess.Process, str]:
    process, url = await spawn_bare_hop(upstream, authorization)
    return process, await wait_listening(process, url, "/readyz")


async def wait_listening(
    process: asyncio.subprocess.Process, url: str, path: str, interval: float = 0.05
) -> str:
    """``url`` once something answers on ``path`` (any status; /readyz: 200), polled every ``interval``
    for at most 15 s; the process is pinned to the second core first, if there is one."""
    if len(CORES) > 1:
        os.sched_setaffinity(process.pid, {CORES[1]})
    async with aiohttp.ClientSession() as http:
        for _ in range(int(15 / interval)):
            if process.returncode is not None:
                raise RuntimeError(f"{url}: the process exited with {process.returncode}")
            try:
                async with http.get(url + path) as response:
                    if path != "/readyz" or response.status == 200:
                        return url
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(interval)
    process.kill()
    raise RuntimeError(f"{url} did not come up in 15 s")


async def spawn_gateway(
    config_dir: Path, toml: str, devnet: Devnet | None
) -> tuple[asyncio.subprocess.Process, str, str]:
    """A ``zg-router serve`` process with config ``toml`` (on ``devnet``'s network if given, with no
    network otherwise), not yet waited for; its URL and metrics URL."""
    port, metrics_port = free_port(), free_port()
    config = config_dir / f"bench-{port}.toml"
    config.write_text(toml)
    # None of this shell's ZG_ROUTER_* settings: a stray network would turn a static config into a chain one.
    env = {name: value for name, value in os.environ.items() if not name.startswith("ZG_ROUTER_")}
    env |= {
        "ZG_ROUTER_API_KEYS": API_KEY,
        "ZG_ROUTER_PORT": str(port),
        "ZG_ROUTER_METRICS_PORT": str(metrics_port),
    }
    if devnet is not None:
        env |= {
            "ZG_ROUTER_NETWORK": "devnet",
            "ZG_ROUTER_RPC_URLS": devnet.rpc_url,
            "ZG_ROUTER_PRIVATE_KEY": dev_private_key(USER_KEY_INDEX),
        }
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("zg-router")),
        "serve",
        "--config",
        str(config),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return process, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"


async def start_gateway(
    devnet: Devnet, config_dir: Path, *, sample_rate: float, extra_config: str = ""
) -> tuple[asyncio.subprocess.Process, str, str]:
    """A ``zg-router serve`` process on the devnet, once ready, its URL and its metrics URL;
    ``sample_rate`` is the share of responses TEE-verified, ``extra_config`` more TOML tables for its
    config (bench/shared.py's ``[shared]``)."""
    # The verify queue holds a whole phase: at the default 1000, a c32 phase outruns the verifier and
    # the rest of its checks are dropped as unverifiable, which is not "every response verified".
    verify = f"[verify]\nsample_rate = {sample_rate}\nqueue_size = {C32_REQUESTS}\n"
    toml = f"[transport]\nallow_private_targets = true\n{verify}{extra_config}"
    process, url, metrics_url = await spawn_gateway(config_dir, toml, devnet)
    await wait_listening(process, url, "/readyz")
    return process, url, metrics_url


def compile_router() -> None:
    """Bytecode for our ``router`` package, written once before anything is timed. This machine sets
    PYTHONDONTWRITEBYTECODE=1, so an editable install never caches any and every start would compile
    the package from source, a cost a pip-installed user (whose wheel install writes the bytecode) never
    pays. The processes still write none; they only read these (and recompile a file edited since)."""
    compileall.compile_dir(Path(router.__file__).parent, quiet=1)


Spawn = Callable[[], Awaitable[tuple[asyncio.subprocess.Process, str]]]


async def start_to_ready(spawn: Spawn, starts: int = 3) -> tuple[float, float]:
    """Median seconds from ``spawn`` (a process and its URL) to its first /readyz 200 (polled every
    10 ms), and the median RSS (MB) it has then: what its imports and set-up hold before any load."""
    times, sizes = [], []
    for _ in range(starts):
        started = time.perf_counter()
        process, url = await spawn()
        try:
            await wait_listening(process, url, "/readyz", interval=0.01)
            times.append(time.perf_counter() - started)
            sizes.append(rss_mb(process.pid))
        finally:
            process.terminate()
            await process.wait()
    return statistics.median(times), statistics.median(sizes)


async def import_rss_mb(module: str) -> float:
    """The peak RSS (MB) of a Python process that imports ``module`` and nothing else. Read from its
    VmHWM: getrusage's maximum would start at this (forking) process's own."""
    code = (
        f"import {module}, pathlib; print(next(line.split()[1] for line in "
        "pathlib.Path('/proc/self/status').read_text().splitlines() if line.startswith('VmHWM:')))"
    )
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"python -c 'import {module}' failed")
    return int(out) / 1024


async def gateway_start(
    config_dir: Path, toml: str, devnet: Devnet | None
) -> tuple[asyncio.subprocess.Process, str]:
    process, url, _ = await spawn_gateway(config_dir, toml, devnet)
    return process, url


async def import_seconds(module: str = "aiohttp.web", runs: int = 3) -> float:
    """Median wall seconds of ``python -c "import <module>"`` on the second core: the floor of any
    aiohttp server's start on this machine."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        process = await asyncio.create_subprocess_exec(sys.executable, "-c", f"import {module}")
        if len(CORES) > 1:
            os.sched_setaffinity(process.pid, {CORES[1]})
        if await process.wait() != 0:
            raise RuntimeError(f"import {module} failed ({process.returncode})")
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def verified_all(http: aiohttp.ClientSession, metrics_url: str) -> None:
    """Wait (at most 120 s) until the gateway's verifier has judged every response it served, so that
    one phase's verification backlog does not weigh on the next phase's figures; raise if any verdict is
    not ``verified`` (a full queue, a failed lookup): the figures would then not be "every response
    verified"."""
    for _ in range(600):
        async with http.get(metrics_url) as response:
            text = await response.text()
        served, outcomes = 0.0, Counter[str]()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "zg_router_requests_total" and sample.labels.get("status") == "200":
                    served += sample.value
                elif sample.name == "zg_router_verifications_total":
                    outcomes[sample.labels["outcome"]] += sample.value
        judged = sum(outcomes.values())
        if served and judged >= served:  # none served yet would be a misread page, not a settled one
            if judged > outcomes["verified"]:
                raise RuntimeError(f"of {served:g} responses served, not all were verified: {dict(outcomes)}")
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the gateway judged {judged:g} of {served:g} responses in 120 s")


@dataclass
class Hop:
    """A target under test, the process to meter (None: direct) and what it measured over the rounds."""

    name: str
    target: Target
    pid: int | None = None
    # Waits for the hop's background work after each phase (the verifier's): its CPU counts to the phase.
    settle: Callable[[], Awaitable[None]] | None = None
    # Per phase ("c32", "50rps", "100rps", "streams"): requests sent, seconds taken, CPU seconds spent.
    requests: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    # Latencies in seconds, per phase ("50rps", "100rps", "ttft").
    latencies: dict[str, list[float]] = field(default_factory=dict)

    async def metered(self, phase: str, count: int, load: Awaitable[T]) -> T:
        """``load`` (of ``count`` requests) run, settled, and its time and CPU added to ``phase``'s."""
        with collector_paused():
            cpu = cpu_seconds(self.pid) if self.pid else 0.0
            started = time.perf_counter()
            result = await load
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - started
        if self.settle:
            await self.settle()
        if self.pid:
            self.cpu[phase] = self.cpu.get(phase, 0.0) + cpu_seconds(self.pid) - cpu
        self.requests[phase] = self.requests.get(phase, 0) + count
        return result

    def figures(self) -> dict[str, float]:
        name, results = self.name, {f"{self.name}_rps_c32": self.requests["c32"] / self.seconds["c32"]}
        for phase, values in self.latencies.items():
            for q in (0.5, 0.99):
                label = f"ttft_p{q * 100:.0f}_ms" if phase == "ttft" else f"p{q * 100:.0f}_ms_{phase}"
                results[f"{name}_{label}"] = percentile(values, q) * 1000
        for phase, seconds in self.cpu.items():
            unit = "stream" if phase == "streams" else f"request_{phase}"
            results[f"{name}_cpu_ms_per_{unit}"] = seconds * 1000 / self.requests[phase]
        return results


async def warm_up(http: aiohttp.ClientSession, hop: Hop) -> None:
    """Connections, tokens and caches warm, and the streams checked, before anything is measured."""
    await closed_loop(http, hop.target, 32, 500)
    await ttfts(http, hop.target, STREAM_RATE, 20)
    if hop.settle:
        await hop.settle()


def profiled(hop: Hop, profile: Path | None) -> contextlib.AbstractAsyncContextManager[None]:
    """py-spy on a gateway's process into ``profile/<hop>.raw`` if ``profile`` is given."""
    if profile is None or hop.pid is None or not hop.name.startswith("gateway"):
        return contextlib.nullcontext()
    return recording(hop.pid, profile / f"{hop.name}.raw")


async def measure(
    http: aiohttp.ClientSession, hops: list[Hop], rounds: int, scale: float, profile: Path | None = None
) -> None:
    """The load in ``rounds``: each phase to every hop in turn, the order reversed every other round;
    with ``profile``, each gateway recorded through its c32 phase of the first round."""
    share = scale / rounds
    for round_ in range(rounds):
        order = hops if round_ % 2 == 0 else hops[::-1]
        count = int(C32_REQUESTS * share)
        for hop in order:
            async with profiled(hop, profile if round_ == 0 else None):
                await hop.metered("c32", count, closed_loop(http, hop.target, 32, count))
        for rate, total in RATES.items():
            count = int(total * share)
            for hop in order:
                latencies = await hop.metered(f"{rate}rps", count, open_loop(http, hop.target, rate, count))
                hop.latencies.setdefault(f"{rate}rps", []).extend(latencies)
        count = int(STREAMS * share)
        for hop in order:
            latencies = await hop.metered("streams", count, ttfts(http, hop.target, STREAM_RATE, count))
            hop.latencies.setdefault("ttft", []).extend(latencies)


def added(results: dict[str, float], hops: list[str]) -> dict[str, float]:
    """What each hop adds to the direct latencies (p50 and p99, each rate, time to first token)."""
    labels = [f"{q}_ms_{rate}rps" for rate in RATES for q in ("p50", "p99")] + ["ttft_p50_ms", "ttft_p99_ms"]
    return {
        f"{hop}_added_{label}": results[f"{hop}_{label}"] - results[f"direct_{label}"]
        for hop in hops
        for label in labels
    }


async def run(quick: bool, rounds: int, profile: Path | None = None) -> dict[str, float]:
    if len(CORES) > 1:
        os.sched_setaffinity(0, {CORES[0]})
    compile_router()
    scale = 0.2 if quick else 1.0
    results: dict[str, float] = {}
    async with Devnet(devnet_config()) as devnet:
        provider = devnet.providers[0]
        authorization = await SessionTokens(devnet.user).authorization(provider.address)

        async def direct_headers() -> dict[str, str]:
            return {"Authorization": authorization, "Content-Type": "application/json"}

        upstream = provider.url + "/v1/proxy/chat/completions"
        with tempfile.TemporaryDirectory() as tmp:
            bare_process, bare_url = await start_bare_hop(upstream, authorization)
            process, gateway_url, metrics_url = await start_gateway(devnet, Path(tmp), sample_rate=1.0)
            plain_process, plain_url, _ = await start_gateway(devnet, Path(tmp), sample_rate=0.0)
            processes = {"bare_hop": bare_process, "gateway_unverified": plain_process, "gateway": process}
            try:
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                    hops = [
                        Hop("direct", Target(upstream, direct_headers)),
                        Hop(
                            "bare_hop",
                            Target(bare_url + "/v1/chat/completions", direct_headers),
                            bare_process.pid,
                        ),
                        Hop(
                            "gateway_unverified",
                            Target(plain_url + "/v1/chat/completions", gateway_headers),
                            plain_process.pid,
                        ),
                        Hop(
                            "gateway",
                            Target(gateway_url + "/v1/chat/completions", gateway_headers),
                            process.pid,
                            functools.partial(verified_all, http, metrics_url),
                        ),
                    ]
                    for hop in hops:
                        await warm_up(http, hop)
                    await measure(http, hops, rounds, scale, profile)
                if profile is not None:
                    write_tops(profile)
                for hop in hops:
                    results |= hop.figures()
                results |= added(results, [hop.name for hop in hops[1:]])
                results |= {f"{name}_rss_mb": rss_mb(p.pid) for name, p in processes.items()}
                # Start-up is timed on a quiet core: the measured gateways' background work (discovery,
                # balance sync, the watcher) would share it (a devnet start took 1.24 s beside them and
                # 0.73 s alone). The bare hop stays up, idle, as the static upstream.
                for name in ("gateway", "gateway_unverified"):
                    stopped = processes.pop(name)
                    stopped.terminate()
                    await stopped.wait()
                static = (
                    "[transport]\nallow_private_targets = true\n"
                    f'[[upstreams]]\nname = "bare"\nurl = "{bare_url}/v1"\nmodels = ["{MODEL}"]\n'
                )
                static_start = functools.partial(gateway_start, Path(tmp), static, None)
                ready = await start_to_ready(static_start)
                results["ready_static_s"], results["ready_static_rss_mb"] = ready
                preset = "[transport]\nallow_private_targets = true\n"
                devnet_start = functools.partial(gateway_start, Path(tmp), preset, devnet)
                results["ready_devnet_s"], results["ready_devnet_rss_mb"] = await start_to_ready(devnet_start)
                # For reference: what starting any aiohttp server costs here, and what the chain side's
                # libraries hold by themselves; not goals.
                bare_start = functools.partial(spawn_bare_hop, upstream, authorization)
                results["bare_hop_ready_s"], _ = await start_to_ready(bare_start)
                results["import_aiohttp_s"] = await import_seconds()
                results["import_web3_rss_mb"] = await import_rss_mb("web3")
            finally:
                for hop_process in processes.values():
                    hop_process.terminate()
                    await hop_process.wait()
    return results


# The figures table: a row per measure, a column per target; then the figures that stand alone.
ROWS = {
    "rps_c32": "throughput at concurrency 32 (req/s)",
    "cpu_ms_per_request_c32": "CPU per request at c32 (ms)",
    **{
        f"{key}_{rate}rps": f"{label} at {rate} req/s (ms)"
        for rate in RATES
        for key, label in (
            ("p50_ms", "latency p50"),
            ("p99_ms", "latency p99"),
            ("added_p50_ms", "added latency p50"),
            ("added_p99_ms", "added latency p99"),
            ("cpu_ms_per_request", "CPU per request"),
        )
    },
    "ttft_p50_ms": f"time to first token p50, {STREAM_RATE} streams/s (ms)",
    "ttft_p99_ms": "time to first token p99 (ms)",
    "added_ttft_p50_ms": "added time to first token p50 (ms)",
    "added_ttft_p99_ms": "added time to first token p99 (ms)",
    "cpu_ms_per_stream": f"CPU per stream of {STREAM_EVENTS} events (ms)",
    "rss_mb": "RSS after the runs (MB)",
}
COLUMNS = {
    "direct": "direct",
    "bare_hop": "bare hop",
    "gateway_unverified": "gw verify off",
    "gateway": "gw verified",
}
SINGLE = {
    "ready_static_s": "start to ready, static upstreams (s)",
    "ready_devnet_s": "start to ready, devnet (s)",
    "bare_hop_ready_s": "start to ready, bare hop (s)",
    "import_aiohttp_s": "python -c 'import aiohttp.web' (s)",
    "ready_static_rss_mb": "RSS when ready, static upstreams (MB)",
    "ready_devnet_rss_mb": "RSS when ready, devnet (MB)",
    "import_web3_rss_mb": "RSS of python -c 'import web3' (MB)",
}


def table(results: dict[str, float]) -> str:
    width = max(len(label) for label in (*ROWS.values(), *SINGLE.values()))
    lines = [f"{'':<{width}}" + "".join(f"{title:>15}" for title in COLUMNS.values())]
    for key, label in ROWS.items():
        cells = [results.get(f"{hop}_{key}") for hop in COLUMNS]
        lines.append(f"{label:<{width}}" + "".join(f"{'' if c is None else f'{c:.2f}':>15}" for c in cells))
    lines += [f"{label:<{width}}{results[key]:>15.3f}" for key, label in SINGLE.items() if key in results]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fifth of the requests (a smoke run)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds the load is split into (default 2)")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy each gateway through its first c32 phase: DIR/<hop>.raw and DIR/<hop>.top.txt",
    )
    parser.add_argument("--json", action="store_true", help="print the results and goals as one JSON object")
    parser.add_argument("--soak", action="store_true", help="one gateway at 100 req/s, reported per minute")
    parser.add_argument("--minutes", type=int, default=10, help="the soak's length (default 10)")
    args = parser.parse_args()
    if args.rounds < 1 or args.minutes < 1:
        parser.error("--rounds and --minutes must be at least 1")
    if args.soak:
        # Imported here, before anything pins this process: soak imports this module as ``bench``,
        # whose CORES must see both cores.
        from soak import soak

        results = asyncio.run(soak(args.minutes, quiet=args.json))
    else:
        results = asyncio.run(run(args.quick, args.rounds, args.profile))
    judged = goals(results)
    if args.json:
        rounded = {key: round(value, 3) for key, value in results.items()}
        listed = [
            {"name": g.name, "figure": round(g.figure, 3), "limit": g.limit, "unit": g.unit, "met": g.met}
            for g in judged
        ]
        print(json.dumps({"results": rounded, "goals": listed}))
        return
    if not args.soak:
        print(table(results))
        print()
    print(report(judged))
    print(f"({len(CORES)} cores; figures on a busy machine move by tens of percent)", file=sys.stderr)


if __name__ == "__main__":
    main()
