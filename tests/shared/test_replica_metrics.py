"""The replica metrics and log lines: mode, replicas, leadership and transitions, with Redis configured
(``router.shared_status()`` answers) and without it (one replica, leading, no mode series)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog.testing

from router.observability.events import LeaderChanged, SharedModeChanged
from router.observability.logging import LogObserver
from router.observability.metrics import Metrics
from tests.observability.test_metrics_unit import FakeRouter


@dataclass
class SharedRouter(FakeRouter):
    """A router with ``[shared] redis_url``: its status as ``Router.shared_status`` gives it."""

    status: dict[str, Any] | None = None

    def shared_status(self) -> dict[str, Any] | None:
        return self.status


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_without_redis_one_replica_leads_and_no_mode_is_shown() -> None:
    metrics = Metrics(FakeRouter())  # type: ignore[arg-type]
    assert sample(metrics, "zg_router_shared_mode") is None
    assert sample(metrics, "zg_router_shared_replicas") == 1
    assert sample(metrics, "zg_router_leader") == 1
    for mode in ("shared", "local"):
        assert sample(metrics, "zg_router_shared_transitions_total", mode=mode) == 0


def test_with_redis_the_gauges_follow_the_shared_status() -> None:
    router = SharedRouter(status={"mode": "shared", "replicas": 3, "leader": False})
    metrics = Metrics(router)  # type: ignore[arg-type]
    assert sample(metrics, "zg_router_shared_mode") == 1
    assert sample(metrics, "zg_router_shared_replicas") == 3
    assert sample(metrics, "zg_router_leader") == 0
    router.status = {"mode": "local", "replicas": 3, "leader": True}
    assert sample(metrics, "zg_router_shared_mode") == 0
    assert sample(metrics, "zg_router_leader") == 1


def test_each_move_counts_once_per_mode() -> None:
    router = SharedRouter(status={"mode": "local", "replicas": 2, "leader": False})
    metrics = Metrics(router)  # type: ignore[arg-type]
    for mode in ("shared", "local", "shared"):
        metrics(SharedModeChanged(mode, 2, "test"))
    assert sample(metrics, "zg_router_shared_transitions_total", mode="shared") == 2
    assert sample(metrics, "zg_router_shared_transitions_total", mode="local") == 1


def test_one_log_line_per_move_a_warning_when_alone() -> None:
    observer = LogObserver()
    with structlog.testing.capture_logs() as logs:
        observer(SharedModeChanged("local", 2, "no answer within 0.25 s"))
        observer(SharedModeChanged("shared", 2, "Redis answers again"))
        observer(LeaderChanged(True, 7, "won the election"))
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("shared mode", "warning"),
        ("shared mode", "info"),
        ("leadership", "info"),
    ]
    assert logs[0]["mode"] == "local"
    assert logs[0]["replicas"] == 2
    assert logs[2]["token"] == 7
