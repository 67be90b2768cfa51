"""The benchmark's soak: one gateway at 100 req/s for some minutes, its RSS and CPU per request per minute.

    .venv/bin/python bench/bench.py --soak [--minutes N] [--json]        (or: make bench-soak MINUTES=N)

bench.py's devnet and gateway (the default config: every response verified), the load an open loop of
exactly 100 requests a second, ``minutes * 6000`` in all, run a minute at a time. After each minute: the
gateway's RSS and open file descriptors (its sockets among them), the CPU it spent per request in that
minute (user + system from /proc, the verifier's included, since it keeps up or falls behind within the
minute), and the minute's latency p50/p99. At the end it fails unless every response was verified.

The verdict is "flat" when the last minute's RSS is within 5 MB of minute 2's (minute 1 warms caches and
pools up) and its CPU per request within 15% of the median minute's (after minute 1). A run of one minute
compares minute 1 with itself: it checks the harness, not the gateway.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from goals import SOAK_CPU_DRIFT_PERCENT, SOAK_RSS_DRIFT_MB

from bench import (
    CORES,
    Target,
    collector_paused,
    cpu_seconds,
    devnet_config,
    gateway_headers,
    open_loop,
    percentile,
    rss_mb,
    start_gateway,
    verified_all,
)
from router.devnet import Devnet

RATE = 100
# Minute 2 is the baseline: the first minute fills caches, connection pools and the verifier's lookups.
BASELINE_MINUTE = 2


async def soak(minutes: int, *, quiet: bool = False) -> dict[str, float]:
    """The per-minute figures, ``soak_rss_drift_mb`` and ``soak_cpu_drift_percent``; each minute's line
    goes to stdout as it ends (to stderr if ``quiet``: --json keeps stdout for the one JSON object)."""
    out = sys.stderr if quiet else sys.stdout
    if len(CORES) > 1:
        os.sched_setaffinity(0, {CORES[0]})
    results: dict[str, float] = {"soak_minutes": minutes}
    async with Devnet(devnet_config()) as devnet:
        with tempfile.TemporaryDirectory() as tmp:
            process, url, metrics_url = await start_gateway(devnet, Path(tmp), sample_rate=1.0)
            target = Target(url + "/v1/chat/completions", gateway_headers)
            try:
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                    for minute in range(1, minutes + 1):
                        with collector_paused():
                            cpu, started = cpu_seconds(process.pid), time.perf_counter()
                            latencies = await open_loop(http, target, RATE, RATE * 60)
                            seconds = time.perf_counter() - started
                        figures = {
                            "rss_mb": rss_mb(process.pid),
                            "open_fds": len(os.listdir(f"/proc/{process.pid}/fd")),
                            "cpu_ms_per_request": (cpu_seconds(process.pid) - cpu) * 1000 / len(latencies),
                            "rps": len(latencies) / seconds,
                            "p50_ms": percentile(latencies, 0.5) * 1000,
                            "p99_ms": percentile(latencies, 0.99) * 1000,
                        }
                        results |= {f"soak_minute_{minute}_{key}": value for key, value in figures.items()}
                        print(f"minute {minute:>2}: {line(figures)}", file=out, flush=True)
                    await verified_all(http, metrics_url)  # every response was checked, none dropped
            finally:
                process.terminate()
                await process.wait()
    results |= drift(results, minutes)
    rss_flat = results["soak_rss_drift_mb"] <= SOAK_RSS_DRIFT_MB
    flat = rss_flat and results["soak_cpu_drift_percent"] <= SOAK_CPU_DRIFT_PERCENT
    print(f"verdict: {'flat' if flat else 'NOT flat'}", file=out, flush=True)
    return results


def line(figures: dict[str, float]) -> str:
    return (
        f"RSS {figures['rss_mb']:6.1f} MB, {figures['open_fds']:.0f} fds, "
        f"CPU/request {figures['cpu_ms_per_request']:.3f} ms, "
        f"{figures['rps']:.1f} req/s, p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms"
    )


def drift(results: dict[str, float], minutes: int) -> dict[str, float]:
    """The last minute's RSS against the baseline minute's (MB, either way) and its CPU per request
    against the median minute's after the first (percent, either way)."""
    baseline = min(BASELINE_MINUTE, minutes)
    rss = [results[f"soak_minute_{m}_rss_mb"] for m in range(1, minutes + 1)]
    cpu = [results[f"soak_minute_{m}_cpu_ms_per_request"] for m in range(1, minutes + 1)]
    median = statistics.median(cpu[1:] or cpu)
    return {
        "soak_baseline_minute": baseline,
        "soak_rss_mb": rss[-1],
        "soak_rss_drift_mb": abs(rss[-1] - rss[baseline - 1]),
        "soak_cpu_drift_percent": abs(cpu[-1] - median) / median * 100,
    }
