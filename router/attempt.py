"""One request's run through its attempts, and the ``Attempt`` object that carries each attempt to its end.

An attempt starts when admission hands the request a lane's lease and its balance hold is taken. It ends
exactly once, for a plain reply or a stream alike, in one of: success (``succeeded``), a reply the client
gets as it came (``rejected``), a failure another lane may fix (``failed``), a stream broken after its
first byte (``broke``), or the caller going away (``abandoned``). Each end records what it means in every
place that counts it: the provider's health, the lane's capacity (the lease, with the usage the provider
reported), the balance hold (with the cost) and the events. Nothing else records outcomes.

A request charges provider health at most once (``Run.charge_once``). A request whose attempts fail alike on
several providers (a body every model server chokes on) is evidence against the request, not the providers:
left unbounded, three such requests would open every breaker of a model. So only a request's first
unhealthy failure counts against its provider's health; later ones fail over, still reported as
``AttemptFailed``, without charging theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from router.observability.events import AttemptFailed, Observer, RequestFinished
from router.policy.outcome import Verdict
from router.pool.accounting import Hold
from router.pool.capacity import Capacity, Lease, retry_seconds
from router.pool.pricing import Charge
from router.pool.providers import Exclusion, Lane, ProviderState
from router.request import Call

if TYPE_CHECKING:
    from router.config import DispatchOptions

NO_CHARGE = Charge(None)
# A global-cap 503 without a Retry-After: how long the provider is left alone.
DEFAULT_HOLD_OFF = 1.0


class FailOver(Exception):
    """An attempt failed in a way another attempt may fix."""

    def __init__(
        self,
        provider: str,
        status: int | None,
        detail: str,
        *,
        counts: bool,
        unhealthy: ProviderState | None = None,
    ) -> None:
        super().__init__(detail)
        self.provider = provider
        self.status = status
        self.detail = detail
        self.counts = counts  # whether it uses up one of the request's attempts
        self.unhealthy = unhealthy  # the provider it counts against, if it says the provider is unhealthy


class Outcomes:
    """What the attempts of every request report to: the clock, the events, the cooldowns to apply and
    who to tell about unfunded and misconfigured lanes. Built once by the dispatcher."""

    __slots__ = ("capacity", "clock", "emit", "on_misconfigured", "on_unfunded", "options")

    def __init__(
        self,
        capacity: Capacity,
        options: DispatchOptions,
        emit: Observer,
        clock: Callable[[], float],
        *,
        on_unfunded: Callable[[Lane], None],
        on_misconfigured: Callable[[Lane], None],
    ) -> None:
        self.capacity = capacity
        self.options = options
        self.emit = emit
        self.clock = clock
        self.on_unfunded = on_unfunded
        self.on_misconfigured = on_misconfigured


class Run:
    """One request's progress through its attempts."""

    __slots__ = (
        "_charge",
        "_last",
        "attempts",
        "call",
        "charged",
        "counted",
        "failed_at",
        "outcomes",
        "queued",
        "started",
        "tried",
    )

    def __init__(self, call: Call, outcomes: Outcomes, charge: Callable[[Call, ProviderState], None]) -> None:
        self.call = call
        self.outcomes = outcomes
        self.started = outcomes.clock()
        self.attempts = 0
        self.counted = 0
        self.queued = 0.0  # seconds spent waiting for lanes, over all attempts
        self.tried: set[str] = set()  # providers
        self.failed_at: set[str] = set()  # providers whose failure counted against this request
        self.charged = False  # whether one of its failures was charged to a provider's health
        self._charge = charge
        self._last: FailOver | None = None

    def failed(self, exc: BaseException | None) -> None:
        if isinstance(exc, FailOver) and exc is not self._last:
            self._last = exc
            if exc.counts:
                self.counted += 1
                self.failed_at.add(exc.provider)
            if exc.unhealthy is not None:
                self.charge_once(exc.unhealthy)

    def charge_once(self, state: ProviderState) -> None:
        """An unhealthy failure at ``state``: charged to its health if it is the request's first."""
        if not self.charged:
            self.charged = True
            self._charge(self.call, state)

    def last_failure(self) -> FailOver:
        assert self._last is not None
        return self._last

    def finish(
        self,
        status: int,
        provider: str | None,
        charge: Charge = NO_CHARGE,
        *,
        ttft: float | None = None,
        error: str | None = None,
    ) -> None:
        call = self.call
        self.outcomes.emit(
            RequestFinished(
                request_id=call.request_id,
                endpoint=call.endpoint.path,
                model=call.model,
                status=status,
                provider=provider,
                attempts=self.attempts,
                cost=charge.cost,
                latency=self.outcomes.clock() - self.started,
                ttft=ttft,
                stream=call.stream,
                error=error,
                queued=self.queued,
                prompt_tokens=charge.prompt_tokens,
                completion_tokens=charge.completion_tokens,
            )
        )


class Attempt:
    """One attempt on one lane, from its lease to its end. ``sent`` is set once the request may have
    reached the provider: from then on an attempt that ends without a cost books the hold's amount (the
    provider bills what it generated, protocol.md §10) until the provider's own figure says otherwise."""

    __slots__ = ("_ended", "hold", "lane", "lease", "run", "sent", "sent_at")

    def __init__(self, run: Run, lease: Lease, hold: Hold) -> None:
        self.run = run
        self.lease = lease
        self.lane = lease.lane
        self.hold = hold
        self.sent = False
        self.sent_at = 0.0
        self._ended = False

    @property
    def provider(self) -> ProviderState:
        return self.lane.provider

    def send(self) -> None:
        self.sent = True
        self.sent_at = self.run.outcomes.clock()

    def elapsed(self) -> float:
        return self.run.outcomes.clock() - self.sent_at

    def observe(self, headers: Mapping[str, str]) -> None:
        """The reply's rate-limit headers, for the lane's capacity model."""
        self.lease.observe(headers)

    def succeeded(self, status: int, charge: Charge, *, ttft: float | None = None) -> None:
        """The provider answered in full; the caller gets (or got) the reply. A stream without usage
        books the hold's amount (it is billed by what it generated); a whole reply's charge is what its
        body says, or nothing known (a transcription in text billed by the provider's own count)."""
        self.provider.health.record_success(latency=self.elapsed(), ttft=ttft)
        self._end(charge, billed=ttft is not None)
        self.run.finish(status, self.provider.id, charge, ttft=ttft)

    def rejected(self) -> None:
        """The provider refused the request itself (the client's error): no fault of the provider's."""
        self.provider.health.record_success()
        self._end(NO_CHARGE, billed=False)

    def failed(
        self,
        verdict: Verdict,
        status: int | None,
        detail: str,
        headers: Mapping[str, str] | None = None,
        *,
        billed: bool = False,
    ) -> FailOver:
        """Record what a failed attempt means for its lane and provider; the signal to try another.
        ``billed``: the provider answered 2xx, so it bills the request however its body ended. An
        unhealthy verdict is charged to health by the request's run, once per request."""
        outcomes, lane, state = self.run.outcomes, self.lane, self.provider
        now = outcomes.clock()
        options = outcomes.options
        if verdict is Verdict.UNFUNDED:
            state.health.record_success()
            lane.exclude(Exclusion.UNFUNDED, now + options.unfunded_cooldown)
            outcomes.on_unfunded(lane)
        elif verdict is Verdict.MISCONFIGURED:
            state.health.record_success()
            lane.exclude(Exclusion.MISCONFIGURED, now + options.misconfigured_cooldown)
            outcomes.on_misconfigured(lane)
        elif verdict is Verdict.RATE_LIMITED:
            wait = retry_seconds(headers) if headers is not None else None
            outcomes.capacity.back_off(lane, now + (wait or options.rate_limit_backoff))
        elif verdict is Verdict.BUSY:
            state.health.record_success()
            wait = _retry_after(headers)
            outcomes.capacity.hold_off(state.id, now + (wait or DEFAULT_HOLD_OFF))
        self._end(NO_CHARGE, billed=billed)
        outcomes.emit(AttemptFailed(self.run.call.request_id, state.id, verdict.value, status, detail[:300]))
        return FailOver(
            state.id,
            status,
            f"{state.id}: {status or 'no reply'} {detail[:200]}",
            counts=verdict not in (Verdict.RATE_LIMITED, Verdict.BUSY),
            unhealthy=state if verdict is Verdict.UNHEALTHY else None,
        )

    def broke(self, detail: str, charge: Charge) -> None:
        """A stream failed after its first byte reached the caller: no failover any more."""
        self.run.charge_once(self.provider)
        self._end(charge)
        self.run.outcomes.emit(
            AttemptFailed(self.run.call.request_id, self.provider.id, "stream_broken", 200, detail[:300])
        )

    def abandoned(self, charge: Charge = NO_CHARGE) -> None:
        """The caller went away (cancelled, or closed the stream early)."""
        self._end(charge)

    @property
    def ended(self) -> bool:
        return self._ended

    def _end(self, charge: Charge, *, billed: bool | None = None) -> None:
        """Close the hold, the probe and the lease, once. Without a cost from the provider, a request it
        billed (``billed``; by default: one that was sent) books the hold's amount, an upper bound, until
        its own unsettled figure says otherwise."""
        if self._ended:
            return
        self._ended = True
        cost = charge.cost
        if cost is None and (self.sent if billed is None else billed):
            cost = self.hold.amount
        self.hold.close(cost)
        # A probe that never reported (cancelled) must not keep the breaker half-open forever.
        self.provider.health.abandon()
        self.lease.release(charge.tokens, charge.images)


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    """A ``Retry-After`` in seconds (the delta form; a date is not worth trusting from a provider)."""
    value = headers.get("Retry-After") if headers is not None else None
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return min(max(0.0, seconds), 300.0) if seconds == seconds else None
