"""The watcher gauges on their own: progress and failure events in, ``watcher_lag_blocks`` and
``watcher_stalled_seconds`` out (per wallet), on a small fake router whose clock the test moves."""

from __future__ import annotations

from dataclasses import dataclass

from router.observability.events import BackgroundError, WatcherProgress
from router.observability.metrics import Metrics
from tests.observability.test_metrics_unit import OTHER_WALLET, WALLET, FakeRouter, FakeWallet


@dataclass
class ClockedRouter(FakeRouter):
    clock: float = 0.0

    def now(self) -> float:
        return self.clock


def gauges(metrics: Metrics, wallet: str = WALLET) -> tuple[float | None, float | None]:
    registry = metrics.registry
    return (
        registry.get_sample_value("zg_router_watcher_lag_blocks", {"wallet": wallet}),
        registry.get_sample_value("zg_router_watcher_stalled_seconds", {"wallet": wallet}),
    )


def clocked() -> tuple[ClockedRouter, Metrics]:
    router = ClockedRouter(wallets=(FakeWallet(WALLET), FakeWallet(OTHER_WALLET)))
    return router, Metrics(router)  # type: ignore[arg-type]


def test_lag_is_exact_while_passes_succeed() -> None:
    """Each pass's report sets the lag to head minus applied block, however long since the last pass."""
    router, metrics = clocked()
    assert gauges(metrics) == (0, 0)
    metrics(WatcherProgress(WALLET, 100, 103))
    router.clock = 50.0
    metrics(WatcherProgress(WALLET, 150, 151))
    router.clock = 80.0
    assert gauges(metrics) == (1, 0)


def test_lag_rises_at_the_observed_pace_while_the_watcher_fails() -> None:
    """The head went 100 -> 150 in 50 s (one block a second). The watcher then fails: 30 s later the lag
    is the last one (1) plus the 30 blocks the chain has made meanwhile, and the stall shows 30 s; the
    first pass after the outage brings back the exact figures."""
    router, metrics = clocked()
    metrics(WatcherProgress(WALLET, 99, 100))
    router.clock = 50.0
    metrics(WatcherProgress(WALLET, 149, 150))
    router.clock = 52.0
    metrics(BackgroundError("settlement-watcher", "no RPC answered", wallet=WALLET))
    assert gauges(metrics) == (3, 2)
    router.clock = 80.0
    assert gauges(metrics) == (31, 30)
    metrics(WatcherProgress(WALLET, 170, 181))
    assert gauges(metrics) == (11, 0)


def test_without_an_observed_pace_only_the_stall_grows() -> None:
    """With a single report there is no pace to go by: the lag stays what it was (no invented blocks)
    while the stalled seconds still count the outage. Another task's failure changes nothing."""
    router, metrics = clocked()
    metrics(WatcherProgress(WALLET, 10, 12))
    metrics(BackgroundError("discovery", "registry unreachable"))
    router.clock = 5.0
    assert gauges(metrics) == (2, 0)
    metrics(BackgroundError("settlement-watcher", "no RPC answered", wallet=WALLET))
    router.clock = 65.0
    assert gauges(metrics) == (2, 65)


def test_each_wallet_has_its_own_lag() -> None:
    """One wallet's watcher failing stalls only that wallet's gauges; the other wallet's lag stays
    exact, and a watcher failure that names no wallet stalls none."""
    router, metrics = clocked()
    metrics(WatcherProgress(WALLET, 99, 100))
    metrics(WatcherProgress(OTHER_WALLET, 95, 100))
    router.clock = 10.0
    metrics(WatcherProgress(WALLET, 109, 110))
    metrics(WatcherProgress(OTHER_WALLET, 108, 110))
    metrics(BackgroundError("settlement-watcher", "no RPC answered", wallet=OTHER_WALLET))
    metrics(BackgroundError("settlement-watcher", "no RPC answered"))
    router.clock = 20.0
    assert gauges(metrics, WALLET) == (1, 0)
    assert gauges(metrics, OTHER_WALLET) == (12, 10)
    assert metrics.registry.get_sample_value("zg_router_watcher_block", {"wallet": WALLET}) == 109
    assert metrics.registry.get_sample_value("zg_router_watcher_block", {"wallet": OTHER_WALLET}) == 108
