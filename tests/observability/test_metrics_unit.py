"""The metrics observer on its own: events in, samples out, on a small fake router (no devnet)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from router.observability.events import (
    BACKGROUND_TASKS,
    AttemptFailed,
    BackgroundError,
    Funded,
    FundingFailed,
    RequestFinished,
    RpcFailed,
    Settled,
    SettlementRejected,
    WatcherProgress,
)
from router.observability.metrics import FAILOVER_REASONS, Metrics, health_score
from router.pool.health import BreakerState

ROUTER_SOURCES = Path(__file__).parents[2] / "router"
PROVIDER = "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65"


@dataclass
class FakePool:
    models: set[str] = field(default_factory=lambda: {"model-r"})

    def knows_model(self, model: str) -> bool:
        return model in self.models

    def __iter__(self) -> Iterator[object]:
        return iter(())


@dataclass
class FakeConfig:
    network: None = None


@dataclass
class FakeRouter:
    """What ``Metrics`` reads of a router: its pool, queue, accounts, clock and config."""

    pool: FakePool = field(default_factory=FakePool)
    config: FakeConfig = field(default_factory=FakeConfig)
    queued: int = 0
    accounts: None = None
    observers: list[object] = field(default_factory=list)

    def subscribe(self, observer: object) -> None:
        self.observers.append(observer)

    def now(self) -> float:
        return 0.0


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(FakeRouter())  # type: ignore[arg-type]


def finished(model: str = "model-r", status: int = 200, **changes: object) -> RequestFinished:
    fields: dict[str, object] = {
        "request_id": "r1",
        "endpoint": "/chat/completions",
        "model": model,
        "status": status,
        "provider": PROVIDER,
        "attempts": 1,
        "cost": 1000,
        "latency": 0.2,
        "ttft": None,
        "stream": False,
        "queued": 0.01,
        "prompt_tokens": 7,
        "completion_tokens": 11,
    }
    fields.update(changes)
    return RequestFinished(**fields)  # type: ignore[arg-type]


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_it_subscribes_itself() -> None:
    router = FakeRouter()
    metrics = Metrics(router)  # type: ignore[arg-type]
    assert router.observers == [metrics]


def test_a_finished_request_counts_everywhere(metrics: Metrics) -> None:
    metrics(finished())
    metrics(finished(stream=True, ttft=0.05, cost=500, prompt_tokens=3, completion_tokens=4))
    route = {"endpoint": "/chat/completions", "model": "model-r"}
    assert value(metrics, "zg_router_requests_total", **route, status="200") == 2
    assert value(metrics, "zg_router_request_duration_seconds_count", **route) == 2
    assert value(metrics, "zg_router_ttft_seconds_count", model="model-r") == 1
    assert value(metrics, "zg_router_tokens_total", model="model-r", kind="prompt") == 10
    assert value(metrics, "zg_router_tokens_total", model="model-r", kind="completion") == 15
    assert value(metrics, "zg_router_cost_neuron_total", provider=PROVIDER) == 1500
    assert value(metrics, "zg_router_attempts_total", provider=PROVIDER, outcome="ok") == 2
    assert value(metrics, "zg_router_queue_wait_seconds_count") == 2


def test_a_request_that_got_no_answer_counts_no_attempt_or_cost(metrics: Metrics) -> None:
    metrics(finished(status=502, provider=None, cost=None, prompt_tokens=None, completion_tokens=None))
    assert value(
        metrics, "zg_router_requests_total", endpoint="/chat/completions", model="model-r", status="502"
    )
    assert value(metrics, "zg_router_attempts_total", provider=PROVIDER, outcome="ok") is None
    assert value(metrics, "zg_router_cost_neuron_total", provider=PROVIDER) is None


def test_model_names_the_pool_does_not_know_share_one_label(metrics: Metrics) -> None:
    for index in range(20):
        metrics(finished(model=f"made-up-{index}", status=404, provider=None))
    text = generate_latest(metrics.registry).decode()
    assert "made-up" not in text
    labels = {"endpoint": "/chat/completions", "model": "unknown", "status": "404"}
    assert value(metrics, "zg_router_requests_total", **labels) == 20


def test_failed_attempts_count_by_reason_and_only_pre_byte_ones_are_failovers(metrics: Metrics) -> None:
    for reason in FAILOVER_REASONS:
        assert value(metrics, "zg_router_failovers_total", reason=reason) == 0
    metrics(AttemptFailed("r1", PROVIDER, "unhealthy", 503, "busy"))
    metrics(AttemptFailed("r1", PROVIDER, "stream_broken", 200, "cut"))
    assert value(metrics, "zg_router_failovers_total", reason="unhealthy") == 1
    assert value(metrics, "zg_router_failovers_total", reason="stream_broken") is None
    assert value(metrics, "zg_router_attempts_total", provider=PROVIDER, outcome="stream_broken") == 1


def test_money_chain_and_background_events(metrics: Metrics) -> None:
    metrics(Funded(PROVIDER, 2 * 10**18, "0xabc"))
    metrics(Funded(PROVIDER, 10**18, "0xdef", manual=True))
    metrics(FundingFailed(PROVIDER, "ledger_low", "deposit more"))
    metrics(Settled(PROVIDER, 5000, 12))
    metrics(SettlementRejected(3, 5000, 13))
    metrics(WatcherProgress(40, 46))
    metrics(RpcFailed("http://127.0.0.1:9", "cannot connect"))
    metrics(BackgroundError("discovery", "boom"))
    assert value(metrics, "zg_router_funding_transactions_total", provider=PROVIDER, trigger="auto") == 1
    assert value(metrics, "zg_router_funding_transactions_total", provider=PROVIDER, trigger="manual") == 1
    assert value(metrics, "zg_router_funded_neuron_total", provider=PROVIDER) == 3 * 10**18
    assert value(metrics, "zg_router_funding_failures_total", reason="ledger_low") == 1
    assert value(metrics, "zg_router_funding_failures_total", reason="failed") == 0
    assert value(metrics, "zg_router_settlements_total", provider=PROVIDER) == 1
    assert value(metrics, "zg_router_settled_neuron_total", provider=PROVIDER) == 5000
    assert value(metrics, "zg_router_settlement_rejections_total") == 1
    assert value(metrics, "zg_router_watcher_block") == 40
    assert value(metrics, "zg_router_watcher_lag_blocks") == 6
    assert value(metrics, "zg_router_chain_rpc_errors_total", endpoint="http://127.0.0.1:9") == 1
    assert value(metrics, "zg_router_background_errors_total", task="discovery") == 1
    assert value(metrics, "zg_router_background_errors_total", task="settlement-watcher") == 0


def test_every_background_task_the_router_names_is_pre_initialised() -> None:
    """The tasks in ``BackgroundError("...")`` calls across router/ are exactly ``BACKGROUND_TASKS``."""
    named = set()
    for source in ROUTER_SOURCES.rglob("*.py"):
        named |= set(re.findall(r'BackgroundError\(\s*"([^"]+)"', source.read_text()))
    assert named == set(BACKGROUND_TASKS)


@pytest.mark.parametrize(
    ("breaker", "error_rate", "score"),
    [
        (BreakerState.CLOSED, 0.0, 1.0),
        (BreakerState.CLOSED, 0.25, 0.75),
        (BreakerState.HALF_OPEN, 0.0, 0.5),
        (BreakerState.OPEN, 0.0, 0.0),
    ],
)
def test_health_score(breaker: BreakerState, error_rate: float, score: float) -> None:
    assert health_score(breaker, error_rate) == score
