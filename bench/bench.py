"""Benchmark: the same load straight to the simulated providers, then through the zg-router gateway.

    .venv/bin/python bench/bench.py [--quick] [--json]

Starts a devnet with fast providers (no latency, limits out of the way) in this process, and the gateway
as a separate ``zg-router serve`` process pinned to one core, so that its CPU time per request can be read
from /proc. This process (devnet + load generator) runs on the other core. Every load loop is bounded.

The gateway runs twice: as configured by default (every TEE response verified after delivery, the
verifier's lookups and hashing in the same process) and with ``[verify] sample_rate = 0``
(``gateway_unverified``), so the cost of verification shows. A third target is ``bare_hop.py``, the
least an aiohttp proxy can do (read, forward, write back), run the same way on the same core: the
gateway's figures are best read against it, since absolute CPU times depend on the machine.

Reported, for direct / bare hop / gateway where it applies:
- throughput at concurrency 32 (closed loop);
- latency p50/p99 at a fixed 100 req/s (open loop), and what each hop adds to the direct figures;
- time to first event for streams at 20 req/s (gateway vs direct);
- CPU per request of the hop process (user + system time from /proc) at c32 and at 100 req/s, and the
  gateway's RSS at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from router.chain.session import SessionTokens
from router.devnet import USER_KEY_INDEX, Devnet, DevnetConfig, ProviderSpec, dev_private_key
from router.devnet.simulator.limits import RateLimits

MODEL = "bench-model"
API_KEY = "sk-bench-0123456789abcdef"
PROVIDERS = 3
# Limits far above the load: the benchmark measures the hop, not the providers' throttling.
UNLIMITED = RateLimits(requests_per_minute=10_000_000, burst=100_000, max_concurrent=100_000)
BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hello, how are you?"}]}).encode()
STREAM_BODY = json.dumps(
    {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hello, how are you?"}]}
).encode()
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Read before this process pins itself to the first: the hops go to the second core.
CORES = sorted(os.sched_getaffinity(0))


@dataclass
class Target:
    """Where requests go: a URL and the headers it needs."""

    url: str
    headers: Callable[[], Awaitable[dict[str, str]]]


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
    """Time to the first SSE event for ``total`` streams started at ``rate`` per second."""
    start = time.perf_counter()

    async def scheduled(index: int) -> float:
        await asyncio.sleep(max(0.0, start + index / rate - time.perf_counter()))
        sent = time.perf_counter()
        async with http.post(target.url, data=STREAM_BODY, headers=await target.headers()) as response:
            first = await response.content.readline()
            ttft = time.perf_counter() - sent
            await response.read()
        if not first.startswith(b"data: "):
            raise RuntimeError("stream did not start with an event")
        return ttft

    return list(await asyncio.gather(*(scheduled(i) for i in range(total))))


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


async def start_bare_hop(upstream: str, authorization: str) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    env = {**os.environ, "UPSTREAM": upstream, "AUTHORIZATION": authorization, "PORT": str(port)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("bare_hop.py")), env=env
    )
    return process, await wait_listening(process, f"http://127.0.0.1:{port}", "/v1/chat/completions")


async def wait_listening(process: asyncio.subprocess.Process, url: str, path: str) -> str:
    """``url`` once something answers on ``path`` (any status), pinned to the second core if there is one."""
    if len(CORES) > 1:
        os.sched_setaffinity(process.pid, {CORES[1]})
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            try:
                async with http.get(url + path) as response:
                    if path != "/readyz" or response.status == 200:
                        return url
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{url} did not come up in 15 s")


async def start_gateway(
    devnet: Devnet, config_dir: Path, *, sample_rate: float, extra_config: str = ""
) -> tuple[asyncio.subprocess.Process, str, str]:
    """A ``zg-router serve`` process, its URL and its metrics URL; ``sample_rate`` is the share of
    responses TEE-verified, ``extra_config`` more TOML tables for its config (bench/shared.py's
    ``[shared]``)."""
    port, metrics_port = free_port(), free_port()
    config = config_dir / f"bench-{port}.toml"
    config.write_text(
        f"[transport]\nallow_private_targets = true\n[verify]\nsample_rate = {sample_rate}\n{extra_config}"
    )
    env = {
        **os.environ,
        "ZG_ROUTER_NETWORK": "devnet",
        "ZG_ROUTER_RPC_URLS": devnet.rpc_url,
        "ZG_ROUTER_PRIVATE_KEY": dev_private_key(USER_KEY_INDEX),
        "ZG_ROUTER_API_KEYS": API_KEY,
        "ZG_ROUTER_PORT": str(port),
        "ZG_ROUTER_METRICS_PORT": str(metrics_port),
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
    url = await wait_listening(process, f"http://127.0.0.1:{port}", "/readyz")
    return process, url, f"http://127.0.0.1:{metrics_port}/metrics"


async def verified_all(http: aiohttp.ClientSession, metrics_url: str) -> None:
    """Wait (at most 120 s) until the gateway's verifier has judged every response it served, so that
    one phase's verification backlog does not weigh on the next phase's figures."""
    for _ in range(600):
        async with http.get(metrics_url) as response:
            text = await response.text()
        served = verified = 0.0
        for line in text.splitlines():
            if line.startswith("zg_router_requests_total{") and 'status="200"' in line:
                served += float(line.rsplit(" ", 1)[1])
            elif line.startswith("zg_router_verifications_total{"):
                verified += float(line.rsplit(" ", 1)[1])
        if verified >= served:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the gateway verified {verified:g} of {served:g} responses in 120 s")


async def hop_figures(
    http: aiohttp.ClientSession,
    target: Target,
    pid: int | None,
    name: str,
    scale: float,
    settle: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, float]:
    """Throughput at c32 and latencies at 100 req/s for one target; CPU per request if ``pid`` is a hop.
    ``settle`` waits for the hop's background work after each phase; its CPU counts to that phase."""
    figures: dict[str, float] = {}
    await closed_loop(http, target, 32, 500)  # warm up connections, tokens, caches
    if settle:
        await settle()
    total = int(5000 * scale)
    cpu = cpu_seconds(pid) if pid else 0.0
    figures[f"{name}_rps_c32"] = await closed_loop(http, target, 32, total)
    if settle:
        await settle()
    if pid:
        figures[f"{name}_cpu_ms_per_request_c32"] = (cpu_seconds(pid) - cpu) * 1000 / total
    count = int(1000 * scale)
    cpu = cpu_seconds(pid) if pid else 0.0
    latencies = await open_loop(http, target, 100, count)
    if settle:
        await settle()
    if pid:
        figures[f"{name}_cpu_ms_per_request_100rps"] = (cpu_seconds(pid) - cpu) * 1000 / count
    figures[f"{name}_p50_ms"] = percentile(latencies, 0.5) * 1000
    figures[f"{name}_p99_ms"] = percentile(latencies, 0.99) * 1000
    return figures


async def run(quick: bool) -> dict[str, float]:
    if len(CORES) > 1:
        os.sched_setaffinity(0, {CORES[0]})
    scale = 0.2 if quick else 1.0
    spec = ProviderSpec(model=MODEL, limits=UNLIMITED, max_global_concurrent=100_000)
    config = DevnetConfig(providers=(spec,) * PROVIDERS, settle_interval=None)
    results: dict[str, float] = {}
    async with Devnet(config) as devnet:
        tokens = SessionTokens(devnet.user)
        provider = devnet.providers[0]
        authorization = await tokens.authorization(provider.address)

        async def direct_headers() -> dict[str, str]:
            return {"Authorization": authorization, "Content-Type": "application/json"}

        async def gateway_headers() -> dict[str, str]:
            return {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}

        upstream = provider.url + "/v1/proxy/chat/completions"
        direct = Target(upstream, direct_headers)
        with tempfile.TemporaryDirectory() as tmp:
            bare_process, bare_url = await start_bare_hop(upstream, authorization)
            process, gateway_url, metrics_url = await start_gateway(devnet, Path(tmp), sample_rate=1.0)
            plain_process, plain_url, _ = await start_gateway(devnet, Path(tmp), sample_rate=0.0)
            bare = Target(bare_url + "/v1/chat/completions", direct_headers)
            routed = Target(gateway_url + "/v1/chat/completions", gateway_headers)
            unverified = Target(plain_url + "/v1/chat/completions", gateway_headers)
            try:
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                    results |= await hop_figures(http, direct, None, "direct", scale)
                    results |= await hop_figures(http, bare, bare_process.pid, "bare_hop", scale)
                    results |= await hop_figures(
                        http, unverified, plain_process.pid, "gateway_unverified", scale
                    )
                    results |= await hop_figures(
                        http,
                        routed,
                        process.pid,
                        "gateway",
                        scale,
                        settle=functools.partial(verified_all, http, metrics_url),
                    )
                    for hop in ("bare_hop", "gateway", "gateway_unverified"):
                        for q in ("p50", "p99"):
                            results[f"{hop}_added_{q}_ms"] = (
                                results[f"{hop}_{q}_ms"] - results[f"direct_{q}_ms"]
                            )
                    streams = int(400 * scale)
                    direct_ttft = await ttfts(http, direct, 20, streams)
                    routed_ttft = await ttfts(http, routed, 20, streams)
                    results["direct_ttft_p50_ms"] = statistics.median(direct_ttft) * 1000
                    results["gateway_ttft_p50_ms"] = statistics.median(routed_ttft) * 1000
                    results["gateway_added_ttft_p50_ms"] = (
                        results["gateway_ttft_p50_ms"] - results["direct_ttft_p50_ms"]
                    )
                    results["gateway_rss_mb"] = rss_mb(process.pid)
            finally:
                for hop_process in (process, plain_process, bare_process):
                    hop_process.terminate()
                    await hop_process.wait()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fifth of the requests (a smoke run)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = parser.parse_args()
    results = asyncio.run(run(args.quick))
    if args.json:
        print(json.dumps({k: round(v, 3) for k, v in results.items()}))
        return
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value:10.3f}")


if __name__ == "__main__":
    main()
