"""Issue 18's goals, judged from a benchmark's results: a pure function, no I/O.

``goals(results)`` takes the dict that ``bench.py`` (or its soak) returns and gives each goal its figure,
its limit and whether it is met. Every limit is relative to the bare hop measured in the same run, except
start to ready, RSS and the soak's flatness. A goal whose figures are missing from ``results`` (a soak
run has no c32 figures, a bench run no soak) is left out rather than judged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# The gateways and what each may cost in CPU per request, as a multiple of the bare hop's.
GATEWAYS = {"gateway_unverified": ("verification off", 1.25), "gateway": ("every response verified", 1.6)}
# Added latency (and time to first token) over the bare hop's own, in ms.
ADDED_P50_MS = 0.3
ADDED_P99_MS = 1.0
STREAM_CPU_RATIO = 1.2
READY_STATIC_S = 0.5
READY_DEVNET_S = 1.0
RSS_MB = 60.0
SOAK_RSS_DRIFT_MB = 5.0
SOAK_CPU_DRIFT_PERCENT = 15.0


@dataclass(frozen=True)
class Goal:
    """One goal: met when ``figure`` is at most ``limit`` (both in ``unit``)."""

    name: str
    figure: float
    limit: float
    unit: str

    @property
    def met(self) -> bool:
        return self.figure <= self.limit


def goals(results: Mapping[str, float]) -> list[Goal]:
    """Every goal whose figures ``results`` holds, in the issue's order."""
    found: list[Goal | None] = []
    for hop, (label, factor) in GATEWAYS.items():
        for phase, load in (("c32", "concurrency 32"), ("100rps", "100 req/s")):
            key = f"cpu_ms_per_request_{phase}"
            found.append(_ratio(results, f"CPU/request at {load}, {label}", hop, key, factor))
    for hop, (label, _) in GATEWAYS.items():
        for rate in (50, 100):
            for q, margin in (("p50", ADDED_P50_MS), ("p99", ADDED_P99_MS)):
                name = f"added latency {q} at {rate} req/s, {label}"
                found.append(_over_bare(results, name, hop, f"added_{q}_ms_{rate}rps", margin))
        for q, margin in (("p50", ADDED_P50_MS), ("p99", ADDED_P99_MS)):
            name = f"added time to first token {q}, {label}"
            found.append(_over_bare(results, name, hop, f"added_ttft_{q}_ms", margin))
    for hop, (label, _) in GATEWAYS.items():
        name = f"CPU/stream (20 chunks), {label}"
        found.append(_ratio(results, name, hop, "cpu_ms_per_stream", STREAM_CPU_RATIO))
    for preset, limit in (("static", READY_STATIC_S), ("devnet", READY_DEVNET_S)):
        name = f"start to ready, {'static upstreams' if preset == 'static' else 'devnet preset'}"
        found.append(_absolute(results, name, f"ready_{preset}_s", limit, "s"))
    for hop, (label, _) in GATEWAYS.items():
        found.append(_absolute(results, f"RSS after the runs, {label}", f"{hop}_rss_mb", RSS_MB, "MB"))
    if minutes := results.get("soak_minutes"):
        span = f"soak of {minutes:g} min"
        found.append(_absolute(results, f"{span}: RSS at the end", "soak_rss_mb", RSS_MB, "MB"))
        name = f"{span}: RSS, last minute against minute {results.get('soak_baseline_minute', 2):g}"
        found.append(_absolute(results, name, "soak_rss_drift_mb", SOAK_RSS_DRIFT_MB, "MB"))
        name = f"{span}: CPU/request, last minute against the median"
        found.append(_absolute(results, name, "soak_cpu_drift_percent", SOAK_CPU_DRIFT_PERCENT, "%"))
    return [goal for goal in found if goal is not None]


def _ratio(results: Mapping[str, float], name: str, hop: str, key: str, factor: float) -> Goal | None:
    """The hop's figure over the bare hop's, against ``factor``."""
    figure, bare = results.get(f"{hop}_{key}"), results.get(f"bare_hop_{key}")
    if figure is None or not bare:
        return None
    return Goal(name, figure / bare, factor, "x")


def _over_bare(results: Mapping[str, float], name: str, hop: str, key: str, margin: float) -> Goal | None:
    """The hop's figure against the bare hop's plus ``margin``."""
    figure, bare = results.get(f"{hop}_{key}"), results.get(f"bare_hop_{key}")
    if figure is None or bare is None:
        return None
    return Goal(name, figure, bare + margin, "ms")


def _absolute(results: Mapping[str, float], name: str, key: str, limit: float, unit: str) -> Goal | None:
    figure = results.get(key)
    return None if figure is None else Goal(name, figure, limit, unit)


def report(judged: list[Goal]) -> str:
    """The goals as lines of text, then "met N of M"."""
    width = max((len(goal.name) for goal in judged), default=0)
    lines = [
        f"{'met' if goal.met else 'NOT met':<8}{goal.name:<{width}}  "
        f"{goal.figure:8.2f} {goal.unit:<2} (limit {goal.limit:.2f} {goal.unit})"
        for goal in judged
    ]
    lines.append(f"met {sum(goal.met for goal in judged)} of {len(judged)}")
    return "\n".join(lines)
