"""Prometheus metrics for one ``Router``, on a registry of their own.

Two halves. Counters and histograms follow the router's events (``Metrics`` is an observer). Gauges of
state (pool, limits, breakers, balances, the admission queue) are read from the router when Prometheus
scrapes, so keeping them costs the request path nothing.

Labels stay bounded: ``provider`` is a pool member's id (a public address or an upstream's configured
name), ``model`` is a model the pool knows (any other name a client sends counts as ``unknown``),
``wallet`` is one of the router's configured wallets (its checksummed address; at most ``MAX_WALLETS``,
and only the router's own wallet services emit money events), and the rest are fixed sets. Keys, request
ids and free text never become labels.
"""

from __future__ import annotations

import importlib.metadata
import math
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
    SharedModeChanged,
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
SHARED_MODES = ("shared", "local")
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
        self._by_wallet: dict[str, _WalletSeries] = {}
        # Registered first, so that the wallets it starts at each scrape (below) show in that scrape.
        registry.register(_StateCollector(router, self._wallet))

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
            "Top-ups sent from a wallet's ledger to its sub-account at a provider (auto or manual).",
            ("provider", "wallet", "trigger"),
        )
        self.funded = counter(
            "funded_neuron", "Neuron moved into provider sub-accounts.", ("provider", "wallet")
        )
        self.funding_failures = counter(
            "funding_failures", "Sub-accounts a wallet could not fund, by reason.", ("wallet", "reason")
        )
        self.settlements = counter(
            "settlements", "Settlements of a wallet's fees seen on chain.", ("provider", "wallet")
        )
        self.settled = counter("settled_neuron", "Fees settled on chain (neuron).", ("provider", "wallet"))
        self.settlement_rejections = counter(
            "settlement_rejections", "Settlements for a wallet that failed on chain.", ("wallet",)
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
        self.shared_transitions = counter(
            "shared_transitions",
            "Times this replica started counting in each mode: shared (Redis) or local (Redis unreachable: "
            "1/N of each lane); its start counts once.",
            ("mode",),
        )
        self.watcher_block = Gauge(
            PREFIX + "watcher_block",
            "Last block a wallet's settlement watcher applied.",
            ("wallet",),
            registry=registry,
        )
        self.watcher_lag = Gauge(
            PREFIX + "watcher_lag_blocks",
            "Blocks between the chain head and a wallet's watcher's last applied block; while the watcher "
            "cannot read the chain, estimated from the head's observed pace since its last pass.",
            ("wallet",),
            registry=registry,
        )
        self.watcher_stalled = Gauge(
            PREFIX + "watcher_stalled_seconds",
            "Seconds since a wallet's watcher's last pass while its passes fail (an RPC outage); 0 while "
            "they succeed.",
            ("wallet",),
            registry=registry,
        )
        Gauge(
            PREFIX + "build_info", "The running zg-router version.", ("version",), registry=registry
        ).labels(_version()).set(1)
        # Fixed label sets start at zero: a dashboard shows "none" rather than "no data".
        for reason in FAILOVER_REASONS:
            self.failovers.labels(reason)
        for task in BACKGROUND_TASKS:
            self.background_errors.labels(task)
        for mode in SHARED_MODES:
            self.shared_transitions.labels(mode)
        if router.config.network is not None:
            from router.chain.rpc import redact_url  # web3's side: loaded only with a network

            for url in router.config.network.rpc_urls:
                self.rpc_errors.labels(redact_url(url))
        router.subscribe(self)

    def __call__(self, event: Event) -> None:
        if isinstance(event, RequestFinished):
            self._finished(event)
        elif isinstance(event, AttemptFailed):
            self.attempts.labels(event.provider, event.verdict).inc()
            if event.verdict in FAILOVER_REASONS:
                self.failovers.labels(event.verdict).inc()
        elif isinstance(event, WatcherProgress):
            wallet = self._wallet(event.wallet)
            wallet.block.set(event.block)
            wallet.lag.progress(event.block, event.head)
        elif isinstance(event, RpcFailed):
            self.rpc_errors.labels(event.endpoint).inc()
        elif isinstance(event, Funded):
            self._wallet(event.wallet)
            trigger = "manual" if event.manual else "auto"
            self.funding.labels(event.provider, event.wallet, trigger).inc()
            self.funded.labels(event.provider, event.wallet).inc(event.amount)
        elif isinstance(event, FundingFailed):
            self._wallet(event.wallet)
            self.funding_failures.labels(event.wallet, event.state).inc()
        elif isinstance(event, Settled):
            self._wallet(event.wallet)
            self.settlements.labels(event.provider, event.wallet).inc()
            self.settled.labels(event.provider, event.wallet).inc(event.amount)
        elif isinstance(event, SettlementRejected):
            self._wallet(event.wallet).rejections.inc()
        elif isinstance(event, BackgroundError):
            self.background_errors.labels(event.task).inc()
            if event.task == WATCHER_TASK and event.wallet is not None:
                self._wallet(event.wallet).lag.failed()
        elif isinstance(event, Verified):
            self.verifications.labels(event.provider, event.outcome).inc()
        elif isinstance(event, SharedModeChanged):
            self.shared_transitions.labels(event.mode).inc()

    def _wallet(self, address: str) -> _WalletSeries:
        """A wallet's series, started (at zero) the first time the wallet is seen: by a scrape of the
        router's wallets or by one of the wallet's events, whichever comes first."""
        series = self._by_wallet.get(address)
        if series is None:
            series = self._by_wallet[address] = _WalletSeries(self, address)
        return series

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


class _WalletSeries:
    """One wallet's watcher gauges and rejection counter, and its funding failures started at zero."""

    __slots__ = ("block", "lag", "rejections")

    def __init__(self, metrics: Metrics, wallet: str) -> None:
        self.block = metrics.watcher_block.labels(wallet)
        self.lag = _WatcherLag(metrics._router.now)
        metrics.watcher_lag.labels(wallet).set_function(self.lag.blocks)
        metrics.watcher_stalled.labels(wallet).set_function(self.lag.stalled)
        self.rejections = metrics.settlement_rejections.labels(wallet)
        for reason in FUNDING_FAILURES:
            metrics.funding_failures.labels(wallet, reason)


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
    """Gauges read from the router at scrape time: the pool, each provider's limits and breaker, the
    admission queue, and each wallet's ledger and sub-accounts (``start_wallet`` starts each wallet's
    other series too, so a configured wallet shows zeros before its first event)."""

    def __init__(self, router: Router, start_wallet: Callable[[str], object]) -> None:
        self._router = router
        self._start_wallet = start_wallet

    def describe(self) -> Iterable[Metric]:
        # Families without samples: the registry checks the names once without reading router state.
        return _Gauges().all()

    def collect(self) -> Iterator[Metric]:
        router, g = self._router, _Gauges()
        g.queue_depth.add_metric([], router.queued)
        now = router.now()
        capacity = router.pool.capacity
        # Lanes name their wallet in lowercase; the label shows it as the chain does.
        wallets: dict[str | None, str] = {w.address.lower(): w.address for w in router.wallets}
        for state in router.pool:
            labels = [state.id]
            health = state.health
            g.available.add_metric(labels, 1 if state.available(now) else 0)
            for lane in state.lanes:
                view = capacity.view(lane, now)
                lane_labels = [state.id, wallets.get(lane.wallet, "static")]
                g.in_flight.add_metric(lane_labels, view.in_flight)
                g.max_concurrent.add_metric(lane_labels, view.max_concurrent)
                g.limiter_tokens.add_metric(lane_labels, math.floor(view.requests))
                g.limiter_capacity.add_metric(lane_labels, view.request_capacity)
                if view.tokens is not None:
                    g.token_level.add_metric(lane_labels, view.tokens)
                if view.images is not None:
                    g.image_level.add_metric(lane_labels, view.images)
            current = health.state
            for each in BreakerState:
                g.breaker.add_metric([state.id, each.value], 1 if each is current else 0)
            g.health_score.add_metric(labels, health_score(current, health.error_rate))
            g.error_rate.add_metric(labels, health.error_rate)
            if health.latency is not None:
                g.latency.add_metric(labels, health.latency)
        for wallet in router.wallets:
            self._start_wallet(wallet.address)
            accounts = wallet.accounts
            for account in accounts:
                labels = [account.provider, wallet.address]
                g.balance.add_metric(labels, account.available)
                g.unsettled.add_metric(labels, account.unsettled)
            g.ledger.add_metric([wallet.address], accounts.ledger_available)
        _shared_gauges(router, g)
        return iter(g.all())


class _Gauges:
    """One scrape's gauge families, empty until filled."""

    def __init__(self) -> None:
        def gauge(name: str, doc: str, labels: tuple[str, ...] = ("provider",)) -> GaugeMetricFamily:
            return GaugeMetricFamily(PREFIX + name, doc, labels=labels)

        self.queue_depth = gauge("queue_depth", "Requests waiting in the admission queue for a slot.", ())
        self.available = gauge("provider_available", "1 if the provider can take requests now.")
        lane = ("provider", "wallet")
        self.in_flight = gauge(
            "provider_in_flight", "Requests in flight at the provider, per lane (wallet).", lane
        )
        self.max_concurrent = gauge(
            "provider_max_concurrent", "The provider's concurrency limit for each of our wallets.", lane
        )
        self.limiter_tokens = gauge(
            "provider_limiter_tokens", "Requests our bucket for the lane would admit right now.", lane
        )
        self.limiter_capacity = gauge(
            "provider_limiter_capacity", "Size of our request bucket for the lane (its burst less one).", lane
        )
        self.token_level = gauge(
            "provider_token_level",
            "Tokens left in the lane's per-minute token budget (negative: overdrawn); only where limited.",
            lane,
        )
        self.image_level = gauge(
            "provider_image_level",
            "Images left in the lane's per-minute image budget (negative: overdrawn); only where limited.",
            lane,
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
        money = ("provider", "wallet")
        self.balance = gauge(
            "provider_balance_neuron", "Sub-account balance available for new requests (neuron).", money
        )
        self.unsettled = gauge(
            "provider_unsettled_neuron", "Fees not yet settled at the provider (neuron).", money
        )
        self.ledger = gauge(
            "ledger_available_neuron",
            "A wallet's ledger balance not yet moved to providers (neuron).",
            ("wallet",),
        )

        self.shared_mode = gauge(
            "shared_mode",
            "1 while counting in Redis with the other replicas, 0 while local; only with Redis.",
            (),
        )
        self.shared_replicas = gauge(
            "shared_replicas", "Replicas seen alive recently, this one included (1 without Redis).", ()
        )
        self.leader = gauge(
            "leader", "1 while this replica runs the funder, balance sync and watcher (always, alone).", ()
        )

    def all(self) -> list[GaugeMetricFamily]:
        return list(vars(self).values())


def _shared_gauges(router: Router, g: _Gauges) -> None:
    """The replica gauges from ``router.shared_status()``: without Redis one replica, leading."""
    status_of = getattr(router, "shared_status", None)
    status = status_of() if status_of is not None else None
    if status is None:
        g.shared_replicas.add_metric([], 1)
        g.leader.add_metric([], 1)
        return
    g.shared_mode.add_metric([], 1 if status.get("mode") == "shared" else 0)
    g.shared_replicas.add_metric([], int(status.get("replicas", 1)))
    g.leader.add_metric([], 1 if status.get("leader") else 0)


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
