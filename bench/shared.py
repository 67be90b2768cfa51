"""Benchmark of the shared path: the gateway admitting through Redis against the same gateway in memory.

    .venv/bin/python bench/shared.py [--quick] [--json]          (or: make bench-shared)

bench.py's setup and load: a devnet of three fast providers (limits out of the way) with the load generator
in this process on the first core, each gateway a ``zg-router serve`` process pinned to the second. Two
gateways, alike but for ``[shared] redis_url``: ``memory`` counts its lanes in memory (the default),
``shared`` in a redis-server started here on a loopback port (nothing persisted) and killed at the end.
Redis runs on the first core, beside the load, so that the gateway's core is its own, as it would be with
Redis on another host. Both gateways run with ``[verify] sample_rate = 0``: verification's CPU (see
bench.py) would drown admission's.

The load is bench.py's: 5,000 requests at concurrency 32 (closed loop) for throughput and CPU per request,
1,000 at a fixed 100 req/s (open loop) for latency. It runs in rounds that alternate which gateway goes
first, so that a neighbour's burst on a shared machine weighs on both; figures pool the rounds.

Reported per gateway: throughput and CPU per request at c32, latency p50/p99 and CPU per request at
100 req/s. Then what sharing costs: ``shared_added_*`` (shared minus memory) for the p50 latency and CPU per
request, redis-server's own CPU per request (user + system time from /proc), and from INFO the Lua scripts
a request costs (each one round trip) and the commands (those inside scripts included). A phase in which
Redis ran fewer scripts than there were requests means the gateway was counting locally (Redis slower
than ``[shared] timeout``): the run fails rather than report local figures as shared ones.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from bench import (
    API_KEY,
    CORES,
    MODEL,
    PROVIDERS,
    UNLIMITED,
    Target,
    closed_loop,
    cpu_seconds,
    free_port,
    open_loop,
    percentile,
    start_gateway,
)
from router.devnet import Devnet, DevnetConfig, ProviderSpec

PREFIX = "zg-router-bench"
SCRIPTS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro")


@dataclass
class Tally:
    """One gateway's measurements, pooled over the rounds."""

    c32_requests: int = 0
    c32_seconds: float = 0.0
    rate_requests: int = 0
    latencies: list[float] = field(default_factory=list)
    # Per (process, phase), CPU seconds: process "gateway" or "redis", phase "c32" or "100rps".
    cpu: dict[tuple[str, str], float] = field(default_factory=dict)
    # Per (counter, phase), what Redis counted: "scripts" run, "commands" (those in scripts included).
    redis: dict[tuple[str, str], float] = field(default_factory=dict)

    def add(self, key: tuple[str, str], seconds: float) -> None:
        self.cpu[key] = self.cpu.get(key, 0.0) + seconds


@dataclass
class Hop:
    """A gateway under test: where to send, which processes to meter, and the Redis it shares, if any."""

    name: str
    target: Target
    readyz: str
    pids: dict[str, int]
    redis: redis.asyncio.Redis | None = None
    tally: Tally = field(default_factory=Tally)

    async def meter(self) -> dict[str, float]:
        """CPU seconds of each process so far and, with Redis, the scripts it has run (one round trip
        each: the gateway sends nothing else per request) and the commands, those in scripts included."""
        readings = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        if self.redis is not None:
            calls: dict[str, Any] = await self.redis.info("commandstats")
            readings["scripts"] = float(
                sum(calls.get(f"cmdstat_{name}", {}).get("calls", 0) for name in SCRIPTS)
            )
            stats: dict[str, Any] = await self.redis.info("stats")
            readings["commands"] = float(stats["total_commands_processed"])
        return readings

    def record(self, phase: str, before: dict[str, float], after: dict[str, float], requests: int) -> None:
        for name in self.pids:
            self.tally.add((name, phase), after[name] - before[name])
        if self.redis is not None:
            scripts = after["scripts"] - before["scripts"]
            if scripts < requests:
                raise RuntimeError(
                    f"Redis ran {scripts:g} scripts for {requests} requests at {phase}: the gateway "
                    "counted locally, so these would not be the shared path's figures"
                )
            for counter in ("scripts", "commands"):
                key = (counter, phase)
                self.tally.redis[key] = self.tally.redis.get(key, 0.0) + after[counter] - before[counter]

    async def check_mode(self, http: aiohttp.ClientSession) -> None:
        """With Redis, the gateway must say it is sharing (where /readyz reports it at all)."""
        if self.redis is None:
            return
        async with http.get(self.readyz) as response:
            body = await response.json()
        mode = body.get("shared", {}).get("mode", "shared")
        if mode != "shared":
            raise RuntimeError(f"the {self.name} gateway reports mode {mode!r}, not shared: {body}")


async def start_redis() -> tuple[asyncio.subprocess.Process, int]:
    """A redis-server on a free loopback port, once it answers; it inherits this process's core."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (make tools installs it)")
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        binary,
        *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    # One try per poll: redis-py's default retries would stretch each poll to seconds.
    client = redis.asyncio.Redis(port=port, retry=Retry(NoBackoff(), retries=0))
    try:
        for _ in range(200):
            try:
                if await client.ping():
                    return process, port
            except redis.ConnectionError:
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()
    process.kill()
    await process.wait()
    raise RuntimeError("redis-server did not answer in 10 s")


async def measure(http: aiohttp.ClientSession, hop: Hop, c32_total: int, rate_total: int) -> None:
    """One round of bench.py's two loads against ``hop``, metered."""
    await hop.check_mode(http)
    before = await hop.meter()
    started = time.perf_counter()
    await closed_loop(http, hop.target, 32, c32_total)
    hop.tally.c32_seconds += time.perf_counter() - started
    hop.tally.c32_requests += c32_total
    hop.record("c32", before, await hop.meter(), c32_total)
    before = await hop.meter()
    hop.tally.latencies += await open_loop(http, hop.target, 100, rate_total)
    hop.tally.rate_requests += rate_total
    hop.record("100rps", before, await hop.meter(), rate_total)
    await hop.check_mode(http)


def figures(hop: Hop) -> dict[str, float]:
    tally = hop.tally
    results = {
        f"{hop.name}_rps_c32": tally.c32_requests / tally.c32_seconds,
        f"{hop.name}_p50_ms": percentile(tally.latencies, 0.5) * 1000,
        f"{hop.name}_p99_ms": percentile(tally.latencies, 0.99) * 1000,
    }
    requests = {"c32": tally.c32_requests, "100rps": tally.rate_requests}
    for (process, phase), seconds in tally.cpu.items():
        label = hop.name if process == "gateway" else process
        results[f"{label}_cpu_ms_per_request_{phase}"] = seconds * 1000 / requests[phase]
    for (counter, phase), count in tally.redis.items():
        results[f"redis_{counter}_per_request_{phase}"] = count / requests[phase]
    return results


async def run(quick: bool, rounds: int) -> dict[str, float]:
    if len(CORES) > 1:
        os.sched_setaffinity(0, {CORES[0]})
    scale = (0.2 if quick else 1.0) / rounds
    c32_total, rate_total = int(5000 * scale), int(1000 * scale)
    spec = ProviderSpec(model=MODEL, limits=UNLIMITED, max_global_concurrent=100_000)
    config = DevnetConfig(providers=(spec,) * PROVIDERS, settle_interval=None)

    async def headers() -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}

    redis_process, redis_port = await start_redis()
    processes = [redis_process]
    store = redis.asyncio.Redis(port=redis_port)
    try:
        async with Devnet(config) as devnet:
            with tempfile.TemporaryDirectory() as tmp:
                shared_toml = (
                    f'[shared]\nredis_url = "redis://127.0.0.1:{redis_port}/0"\nprefix = "{PREFIX}"\n'
                )
                hops = []
                for name, extra in (("memory", ""), ("shared", shared_toml)):
                    process, url, _ = await start_gateway(
                        devnet, Path(tmp), sample_rate=0.0, extra_config=extra
                    )
                    processes.append(process)
                    pids = {"gateway": process.pid} | ({"redis": redis_process.pid} if extra else {})
                    target = Target(url + "/v1/chat/completions", headers)
                    hops.append(Hop(name, target, url + "/readyz", pids, store if extra else None))
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                    for hop in hops:  # warm up connections, tokens, caches (and Redis's scripts)
                        await closed_loop(http, hop.target, 32, 500)
                    for round_ in range(rounds):
                        for hop in hops if round_ % 2 == 0 else reversed(hops):
                            await measure(http, hop, c32_total, rate_total)
                lanes = [key async for key in store.scan_iter(match=f"{PREFIX}:lane:*", count=1000)]
    finally:
        await store.aclose()
        for process in reversed(processes):
            if process.returncode is None:
                process.terminate()
            await process.wait()
    if not lanes:
        raise RuntimeError("the shared gateway left no lane in Redis: it did not admit through it")
    results: dict[str, float] = {}
    for hop in hops:
        results |= figures(hop)
    results["shared_added_p50_ms"] = results["shared_p50_ms"] - results["memory_p50_ms"]
    for phase in ("c32", "100rps"):
        key = f"cpu_ms_per_request_{phase}"
        results[f"shared_added_{key}"] = results[f"shared_{key}"] - results[f"memory_{key}"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fifth of the requests (a smoke run)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds the load is split into (default 2)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    results = asyncio.run(run(args.quick, args.rounds))
    if args.json:
        print(json.dumps({k: round(v, 3) for k, v in results.items()}))
        return
    width = max(len(k) for k in results)
    for key, value in sorted(results.items()):
        print(f"{key:<{width}}  {value:10.3f}")
    print(f"({len(CORES)} cores; figures on a busy machine move by tens of percent)", file=sys.stderr)


if __name__ == "__main__":
    main()
