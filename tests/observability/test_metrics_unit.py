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
from router.observability.metrics import FAILOVER_REASONS, FUNDING_FAILURES, Metrics, health_score
from router.pool.accounting import Accounts
from router.pool.health import BreakerState

ROUTER_SOURCES = Path(__file__).parents[2] / "router"
PROVIDER = "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65"
OTHER_PROVIDER = "0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc"
WALLET = "0x70997970C51812dc3A010C7d01b50e20d17dc79C"
OTHER_WALLET = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"


@dataclass
class FakePool:
    models: set[str] = field(default_factory=lambda: {"model-r"})
    capacity: None = None  # read only for the lanes of providers, and this pool has none

    def knows_model(self, model: str) -> bool:
        return model in self.models

    def __iter__(self) -> Iterator[object]:
        return iter(())


@dataclass
class FakeConfig:
    network: None = None


@dataclass
class FakeWallet:
    """What ``Metrics`` reads of a wallet's services: its address and book."""

    address: str
    accounts: Accounts = field(default_factory=Accounts)


@dataclass
class FakeRouter:
    """What ``Metrics`` reads of a router: its pool, queue, wallets, clock and config."""

    pool: FakePool = field(default_factory=FakePool)
    config: FakeConfig = field(default_factory=FakeConfig)
    queued: int = 0
    wallets: tuple[FakeWallet, ...] = ()
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
    """Each money event counts under its wallet (and provider); chain and background events by endpoint
    and task."""
    metrics(Funded(WALLET, PROVIDER, 2 * 10**18, "0xabc"))
    metrics(Funded(WALLET, PROVIDER, 10**18, "0xdef", manual=True))
    metrics(FundingFailed(WALLET, PROVIDER, "ledger_low", "deposit more"))
    metrics(Settled(WALLET, PROVIDER, 5000, 12))
    metrics(SettlementRejected(WALLET, 3, 5000, 13))
    metrics(WatcherProgress(WALLET, 40, 46))
    metrics(RpcFailed("http://127.0.0.1:9", "cannot connect"))
    metrics(BackgroundError("discovery", "boom"))
    at = {"provider": PROVIDER, "wallet": WALLET}
    assert value(metrics, "zg_router_funding_transactions_total", **at, trigger="auto") == 1
    assert value(metrics, "zg_router_funding_transactions_total", **at, trigger="manual") == 1
    assert value(metrics, "zg_router_funded_neuron_total", **at) == 3 * 10**18
    assert value(metrics, "zg_router_funding_failures_total", wallet=WALLET, reason="ledger_low") == 1
    assert value(metrics, "zg_router_funding_failures_total", wallet=WALLET, reason="failed") == 0
    assert value(metrics, "zg_router_settlements_total", **at) == 1
    assert value(metrics, "zg_router_settled_neuron_total", **at) == 5000
    assert value(metrics, "zg_router_settlement_rejections_total", wallet=WALLET) == 1
    assert value(metrics, "zg_router_watcher_block", wallet=WALLET) == 40
    assert value(metrics, "zg_router_watcher_lag_blocks", wallet=WALLET) == 6
    assert value(metrics, "zg_router_chain_rpc_errors_total", endpoint="http://127.0.0.1:9") == 1
    assert value(metrics, "zg_router_background_errors_total", task="discovery") == 1
    assert value(metrics, "zg_router_background_errors_total", task="settlement-watcher") == 0


class TestWallets:
    def test_each_wallet_counts_apart(self, metrics: Metrics) -> None:
        """Two wallets funding and settling at one provider: every money series is per wallet, and one
        wallet's events leave the other's series alone."""
        metrics(Funded(WALLET, PROVIDER, 7, "0xa"))
        metrics(Funded(OTHER_WALLET, PROVIDER, 5, "0xb"))
        metrics(Funded(OTHER_WALLET, PROVIDER, 1, "0xc", manual=True))
        metrics(Settled(OTHER_WALLET, PROVIDER, 300, 9))
        metrics(FundingFailed(WALLET, OTHER_PROVIDER, "provider_cap", "50 providers"))
        metrics(SettlementRejected(OTHER_WALLET, 2, 10, 9))
        funded = "zg_router_funded_neuron_total"
        assert value(metrics, funded, provider=PROVIDER, wallet=WALLET) == 7
        assert value(metrics, funded, provider=PROVIDER, wallet=OTHER_WALLET) == 6
        auto = {"provider": PROVIDER, "trigger": "auto"}
        assert value(metrics, "zg_router_funding_transactions_total", **auto, wallet=WALLET) == 1
        assert value(metrics, "zg_router_funding_transactions_total", **auto, wallet=OTHER_WALLET) == 1
        assert value(metrics, "zg_router_settled_neuron_total", provider=PROVIDER, wallet=WALLET) is None
        assert value(metrics, "zg_router_settled_neuron_total", provider=PROVIDER, wallet=OTHER_WALLET) == 300
        failures = "zg_router_funding_failures_total"
        assert value(metrics, failures, wallet=WALLET, reason="provider_cap") == 1
        assert value(metrics, failures, wallet=OTHER_WALLET, reason="provider_cap") == 0
        assert value(metrics, "zg_router_settlement_rejections_total", wallet=WALLET) == 0
        assert value(metrics, "zg_router_settlement_rejections_total", wallet=OTHER_WALLET) == 1

    def test_configured_wallets_start_at_zero_on_the_first_scrape(self) -> None:
        """Before any event, the first scrape already shows each configured wallet's funding failures
        (every reason), settlement rejections and watcher gauges at zero, and no other wallet."""
        router = FakeRouter(wallets=(FakeWallet(WALLET), FakeWallet(OTHER_WALLET)))
        metrics = Metrics(router)  # type: ignore[arg-type]
        text = generate_latest(metrics.registry).decode()
        for wallet in (WALLET, OTHER_WALLET):
            for reason in FUNDING_FAILURES:
                labels = {"wallet": wallet, "reason": reason}
                assert value(metrics, "zg_router_funding_failures_total", **labels) == 0
            assert value(metrics, "zg_router_settlement_rejections_total", wallet=wallet) == 0
            for gauge in ("watcher_block", "watcher_lag_blocks", "watcher_stalled_seconds"):
                assert value(metrics, f"zg_router_{gauge}", wallet=wallet) == 0, gauge
            assert f'zg_router_settlement_rejections_total{{wallet="{wallet}"}} 0.0' in text
        assert set(re.findall(r'wallet="([^"]+)"', text)) == {WALLET, OTHER_WALLET}

    def test_balances_and_ledgers_are_read_per_wallet_at_scrape(self) -> None:
        """The sub-account and ledger gauges show each wallet's own book as it is when scraped."""
        mine, theirs = FakeWallet(WALLET), FakeWallet(OTHER_WALLET)
        metrics = Metrics(FakeRouter(wallets=(mine, theirs)))  # type: ignore[arg-type]
        mine.accounts.observe_ledger(block=5, available=9 * 10**18, total=12 * 10**18, providers=frozenset())
        theirs.accounts.observe_ledger(block=5, available=4 * 10**18, total=4 * 10**18, providers=frozenset())
        for wallet, balance in ((mine, 3 * 10**18), (theirs, 5 * 10**18)):
            wallet.accounts.observe(PROVIDER, position=(5, 0), exists=True, balance=balance, pending_refund=0)
        expected = {
            WALLET: (mine.accounts.of(PROVIDER).available, 9 * 10**18),
            OTHER_WALLET: (theirs.accounts.of(PROVIDER).available, 4 * 10**18),
        }
        assert expected[WALLET][0] != expected[OTHER_WALLET][0]
        for wallet, (available, ledger) in expected.items():
            at = {"provider": PROVIDER, "wallet": wallet}
            assert value(metrics, "zg_router_provider_balance_neuron", **at) == available
            assert value(metrics, "zg_router_provider_unsettled_neuron", **at) == 0
            assert value(metrics, "zg_router_ledger_available_neuron", wallet=wallet) == ledger
        mine.accounts.hold(PROVIDER, 10**17).close(10**17)
        at = {"provider": PROVIDER, "wallet": WALLET}
        assert value(metrics, "zg_router_provider_unsettled_neuron", **at) == 10**17


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
