"""Prometheus metrics for one ``Router``, on a registry of their own.

Two halves. Counters and histograms follow the router's events (``Metrics`` is an observer). Gauges of
state (pool, limits, breakers, balances, the admission queue) are read from the router when Prometheus
scrapes, so keeping them costs the request path nothing.

Labels stay bounded: ``provider`` is a pool member's id (a public address or an upstream's configured
name), ``model`` is a model the pool knows (any other name a client sends counts as ``unknown``), and the
rest are fixed sets. Keys, users, request ids and free text never become labels.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from router.observability.events import (
    BACKGROUND_TASKS,
    AttemptFailed,
    BackgroundError,
    Event,
    Funded,
    FundingFailed,
    RequestFinished,
    RpcFailed,
    Settled,
    SettlementRejected,
    Verified,
    WatcherProgress,
)
from router.policy.outcome import Verdict
from router.pool.health import BreakerState

if TYPE_CHECKING:
    from router.client import Router

PREFIX = "zg_router_"
UNKNOWN_MODEL = "unknown"
# Request latency spans a cached reply (tens of ms) to a long generation (minutes).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Failures before the first byte: each one moves the request to another attempt while its budget lasts.
FAILOVER_REASONS = tuple(v.value for v in Verdict if v not in (Verdict.OK, Verdict.CLIENT_ERROR))
FUNDING_FAILURES = ("ledger_low", "provider_cap", "failed")
WATCHER_TASK = "settlement-watcher"


class Metrics:
    """Counts what ``router`` does and exposes what it holds; ``registry`` is what ``/metrics`` serves.

    ``Metrics(router)`` subscribes itself to the router's events. Build it after the router is open (the
    RPC endpoints and the pool must be known) and before traffic.
    """

    def __init__(self, router: Router, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = registry or CollectorRegistry(auto_describe=True)
        self._router = router
        self._by_request: dict[tuple[str, str, int], _RequestSeries] = {}
        self._by_provider: dict[str, _ProviderSeries] = {}

        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(PREFIX + name, doc, tuple(labels), registry=registry)

        self.requests = counter(
            "requests", "Requests finished, by route, model and the status the caller got.", _REQUEST
        )
        self.duration = Histogram(
            PREFIX + "request_duration_seconds",
            "Time from arrival to the end of the reply (the stream's end for streams).",
            ("endpoint", "model"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            PREFIX + "ttft_seconds",
            "Time to the first streamed event, from sending to the provider.",
            ("model",),
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            PREFIX + "queue_wait_seconds",
            "Time a request waited in the admission queue for provider slots, over all its attempts.",
            buckets=QUEUE_BUCKETS,
            registry=registry,
        )
        self.tokens = counter("tokens", "Tokens billed, by model and kind (prompt, completion).", _TOKENS)
        self.cost = counter("cost_neuron", "Fees as we count them (neuron), by provider.", ("provider",))
        self.attempts = counter(
            "attempts", "Attempts at providers, by outcome (ok or why it failed).", ("provider", "outcome")
        )
        self.failovers = counter(
            "failovers", "Attempts given up before the first byte, by reason.", ("reason",)
        )
        self.funding = counter(
            "funding_transactions",
            "Top-ups sent from the ledger to a provider sub-account (auto or manual).",
            ("provider", "trigger"),
        )
        self.funded = counter("funded_neuron", "Neuron moved into provider sub-accounts.", ("provider",))
        self.funding_failures = counter(
            "funding_failures", "Providers that could not be funded, by reason.", ("reason",)
        )
        self.settlements = counter("settlements", "Settlements of our fees seen on chain.", ("provider",))
        self.settled = counter("settled_neuron", "Fees settled on chain (neuron).", ("provider",))
        self.settlement_rejections = counter(
            "settlement_rejections", "Settlements for our wallet that failed on chain."
        )
        self.verifications = counter(
            "verifications",
            "TEE verification verdicts on delivered responses: verified, failed or unverifiable.",
            ("provider", "outcome"),
        )
        self.background_errors = counter(
            "background_errors", "Failed rounds of background tasks, by task.", ("task",)
        )
        self.rpc_errors = counter(
            "chain_rpc_errors", "Failed JSON-RPC calls, by endpoint (scheme://host:port).", ("endpoint",)
        )
        self.watcher_block = Gauge(
            PREFIX + "watcher_block", "Last block the settlement watcher applied.", registry=registry
        )
        self._watcher = watcher = _WatcherLag(router.now)
        Gauge(
            PREFIX + "watcher_lag_blocks",
            "Blocks between the chain head and the watcher's last applied block; while the watcher cannot "
            "read the chain, estimated from the head's observed pace since its last pass.",
            registry=registry,
        ).set_function(watcher.blocks)
        Gauge(
            PREFIX + "watcher_stalled_seconds",
            "Seconds since the watcher's last pass while its passes fail (an RPC outage); 0 while they "
            "succeed.",
            registry=registry,
        ).set_function(watcher.stalled)
        Gauge(
            PREFIX + "build_info", "The running zg-router version.", ("version",), registry=registry
        ).labels(_version()).set(1)
        # Fixed label sets start at zero: a dashboard shows "none" rather than "no data".
        for reason in FAILOVER_REASONS:
            self.failovers.labels(reason)
        for reason in FUNDING_FAILURES:
            self.funding_failures.labels(reason)
        for task in BACKGROUND_TASKS:
            self.background_errors.labels(task)
        if router.config.network is not None:
            from router.chain.rpc import redact_url  # web3's side: loaded only with a network

            for url in router.config.network.rpc_urls:
                self.rpc_errors.labels(redact_url(url))
        self.settlement_rejections.inc(0)
        registry.register(_StateCollector(router))
        router.subscribe(self)

    def __call__(self, event: Event) -> None:
        if isinstance(event, RequestFinished):
            self._finished(event)
        elif isinstance(event, AttemptFailed):
            self.attempts.labels(event.provider, event.verdict).inc()
            if event.verdict in FAILOVER_REASONS:
                self.failovers.labels(event.verdict).inc()
        elif isinstance(event, WatcherProgress):
            self.watcher_block.set(event.block)
            self._watcher.progress(event.block, event.head)
        elif isinstance(event, RpcFailed):
            self.rpc_errors.labels(event.endpoint).inc()
        elif isinstance(event, Funded):
            self.funding.labels(event.provider, "manual" if event.manual else "auto").inc()
            self.funded.labels(event.provider).inc(event.amount)
        elif isinstance(event, FundingFailed):
            self.funding_failures.labels(event.state).inc()
        elif isinstance(event, Settled):
            self.settlements.labels(event.provider).inc()
            self.settled.labels(event.provider).inc(event.amount)
        elif isinstance(event, SettlementRejected):
            self.settlement_rejections.inc()
        elif isinstance(event, BackgroundError):
            self.background_errors.labels(event.task).inc()
            if event.task == WATCHER_TASK:
                self._watcher.failed()
        elif isinstance(event, Verified):
            self.verifications.labels(event.provider, event.outcome).inc()

    def _finished(self, event: RequestFinished) -> None:
        model = event.model if self._router.pool.knows_model(event.model) else UNKNOWN_MODEL
        key = (event.endpoint, model, event.status)
        series = self._by_request.get(key)
        if series is None:
            series = self._by_request[key] = _RequestSeries(self, *key)
        series.requests.inc()
        series.duration.observe(event.latency)
        self.queue_wait.observe(event.queued)
        if event.ttft is not None:
            series.ttft.observe(event.ttft)
        if event.prompt_tokens:
            series.prompt.inc(event.prompt_tokens)
        if event.completion_tokens:
            series.completion.inc(event.completion_tokens)
        if event.provider is not None:
            provider = self._by_provider.get(event.provider)
            if provider is None:
                provider = self._by_provider[event.provider] = _ProviderSeries(self, event.provider)
            provider.ok.inc()
            if event.cost:
                provider.cost.inc(event.cost)


class _RequestSeries:
    """The children of one (endpoint, model, status): ``labels()`` is a locked lookup; a request finishing
    takes this dict hit instead. As bounded as the labels themselves."""

    __slots__ = ("completion", "duration", "prompt", "requests", "ttft")

    def __init__(self, metrics: Metrics, endpoint: str, model: str, status: int) -> None:
        self.requests = metrics.requests.labels(endpoint, model, str(status))
        self.duration = metrics.duration.labels(endpoint, model)
        self.ttft = metrics.ttft.labels(model)
        self.prompt = metrics.tokens.labels(model, "prompt")
        self.completion = metrics.tokens.labels(model, "completion")


class _ProviderSeries:
    """The children a successful request at one provider touches."""

    __slots__ = ("cost", "ok")

    def __init__(self, metrics: Metrics, provider: str) -> None:
        self.ok = metrics.attempts.labels(provider, "ok")
        self.cost = metrics.cost.labels(provider)


class _WatcherLag:
    """The watcher's lag as a dashboard should read it, also while the RPC is down.

    Each pass reports the head and the last applied block: the lag is their difference, exact. When a pass
    fails no head can be read, yet the chain goes on: from then until the next pass the lag is the last
    one plus the blocks the chain makes meanwhile at the pace the watcher saw (first head to last head
    over the time between), so it rises through an outage instead of freezing. ``stalled`` is the
    measured side: seconds since the last pass, while failing.
    """

    __slots__ = ("_clock", "_failing", "_first", "_lag", "_last")

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lag = 0
        self._first: tuple[float, int] | None = None
        self._last: tuple[float, int] | None = None
        self._failing = False

    def progress(self, block: int, head: int) -> None:
        now = self._clock()
        self._lag = max(0, head - block)
        self._last = (now, head)
        if self._first is None:
            self._first = self._last
        self._failing = False

    def failed(self) -> None:
        self._failing = True

    def stalled(self) -> float:
        if not self._failing or self._last is None:
            return 0.0
        return max(0.0, self._clock() - self._last[0])

    def blocks(self) -> float:
        if not self._failing or self._first is None or self._last is None:
            return self._lag
        (first_at, first_head), (last_at, last_head) = self._first, self._last
        if last_at <= first_at:
            return self._lag
        pace = (last_head - first_head) / (last_at - first_at)
        return self._lag + int(pace * self.stalled())


_REQUEST = ("endpoint", "model", "status")
_TOKENS = ("model", "kind")


class _StateCollector(Collector):
    """Gauges read from the router at scrape time: the pool, each provider's limits, breaker and balance,
    the admission queue and the ledger."""

    def __init__(self, router: Router) -> None:
        self._router = router

    def describe(self) -> Iterable[Metric]:
        # Families without samples: the registry checks the names once without reading router state.
        return _Gauges().all()

    def collect(self) -> Iterator[Metric]:
        router, g = self._router, _Gauges()
        g.queue_depth.add_metric([], router.queued)
        now = router.now()
        for state in router.pool:
            labels = [state.id]
            health, gate = state.health, state.gate
            g.available.add_metric(labels, 1 if state.available(now) else 0)
            g.in_flight.add_metric(labels, gate.in_flight)
            g.max_concurrent.add_metric(labels, gate.max_concurrent)
            g.limiter_tokens.add_metric(labels, gate.tokens())
            g.limiter_capacity.add_metric(labels, gate.limiter.max_rate)
            current = health.state
            for each in BreakerState:
                g.breaker.add_metric([state.id, each.value], 1 if each is current else 0)
            g.health_score.add_metric(labels, health_score(current, health.error_rate))
            g.error_rate.add_metric(labels, health.error_rate)
            if health.latency is not None:
                g.latency.add_metric(labels, health.latency)
        accounts = router.accounts
        if accounts is not None:
            for account in accounts:
                g.balance.add_metric([account.provider], account.available)
                g.unsettled.add_metric([account.provider], account.unsettled)
            g.ledger.add_metric([], accounts.ledger_available)
        return iter(g.all())


class _Gauges:
    """One scrape's gauge families, empty until filled."""

    def __init__(self) -> None:
        def gauge(name: str, doc: str, labels: tuple[str, ...] = ("provider",)) -> GaugeMetricFamily:
            return GaugeMetricFamily(PREFIX + name, doc, labels=labels)

        self.queue_depth = gauge("queue_depth", "Requests waiting in the admission queue for a slot.", ())
        self.available = gauge("provider_available", "1 if the provider can take requests now.")
        self.in_flight = gauge("provider_in_flight", "Requests in flight at the provider.")
        self.max_concurrent = gauge("provider_max_concurrent", "The provider's concurrency limit for us.")
        self.limiter_tokens = gauge(
            "provider_limiter_tokens", "Requests our bucket for the provider would admit right now."
        )
        self.limiter_capacity = gauge(
            "provider_limiter_capacity", "Size of our bucket for the provider (its burst less one)."
        )
        self.breaker = gauge(
            "provider_breaker_state",
            "1 for the breaker's current state (closed, open, half_open), 0 for the others.",
            ("provider", "state"),
        )
        self.health_score = gauge(
            "provider_health_score", "1 healthy .. 0 unusable: (1 - error rate) x breaker factor."
        )
        self.error_rate = gauge("provider_error_rate", "Recent error rate (moving average) of attempts.")
        self.latency = gauge("provider_latency_seconds", "Recent latency (moving average) of replies.")
        self.balance = gauge(
            "provider_balance_neuron", "Sub-account balance available for new requests (neuron)."
        )
        self.unsettled = gauge("provider_unsettled_neuron", "Fees not yet settled at the provider (neuron).")
        self.ledger = gauge(
            "ledger_available_neuron", "The wallet's ledger balance not yet moved to providers (neuron).", ()
        )

    def all(self) -> list[GaugeMetricFamily]:
        return list(vars(self).values())


def health_score(breaker: BreakerState, error_rate: float) -> float:
    """One number per provider for a dashboard: the success rate, halved while a probe decides, zero
    while the breaker is open."""
    factor = {BreakerState.CLOSED: 1.0, BreakerState.HALF_OPEN: 0.5, BreakerState.OPEN: 0.0}[breaker]
    return round((1.0 - error_rate) * factor, 4)


def _version() -> str:
    try:
        return importlib.metadata.version("zg-router")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
