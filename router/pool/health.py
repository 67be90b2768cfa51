"""A provider's health: EWMA latency, TTFT and error rate, and a circuit breaker. Sync, no I/O.

Breaker states:
    closed     traffic flows; ``failure_threshold`` failures in a row open it
    open       no traffic until the cooldown has passed; each re-opening doubles the cooldown (capped)
    half-open  the cooldown passed: one probe at a time may go. A real request's success closes the
               breaker and resets the cooldown; any failure re-opens it with the cooldown doubled

Recovery needs no real traffic: a free ``/v1/models`` probe that answers closes a half-open breaker, on
probation. A provider may list its models and still fail every paid request, so an answer proves less
than a served request: on probation the cooldown stays as it was, and the first counted failure re-opens
the breaker at once with the cooldown doubled. A provider that answers probes but serves nothing thus
costs the requests in flight to it a failover once per cooldown, a cooldown that grows to
``max_cooldown``. A real success ends the probation and resets the cooldown. (Envoy's active health
checks likewise return an ejected host to the pool, where outlier detection watches its real traffic;
the doubling plays the part of its ejection-time multiplier.)

``reprieve`` moves an open breaker to half-open before its time: the ejection cap
(``max_ejection_percent``, applied by the dispatcher) uses it to keep a share of a model's providers
eligible, so that breakers alone never eject a whole model.

The clock is injected, so every transition is testable without waiting.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

from router.errors import ConfigError

MAX_EJECTION_PERCENT = 50.0


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """How quickly health reacts. Times in seconds."""

    ewma_alpha: float = 0.2
    failure_threshold: int = 3
    cooldown: float = 5.0
    max_cooldown: float = 120.0
    # The most of a model's providers (%) that breakers may eject at once, as Envoy's outlier detection
    # has it: past it the least bad of them stay eligible. 100 lets breakers eject them all.
    max_ejection_percent: float = MAX_EJECTION_PERCENT

    def __post_init__(self) -> None:
        if not 0 < self.ewma_alpha <= 1:
            raise ConfigError("ewma_alpha must be in (0, 1]")
        if self.failure_threshold < 1:
            raise ConfigError("failure_threshold must be at least 1")
        if not 0 < self.cooldown <= self.max_cooldown:
            raise ConfigError("need 0 < cooldown <= max_cooldown")
        if not 0 <= self.max_ejection_percent <= 100:
            raise ConfigError("max_ejection_percent must be in [0, 100]")


class Health:
    """One provider's health record. Mutations are synchronous and atomic on the event loop."""

    __slots__ = (
        "_clock",
        "_cooldown",
        "_failures_in_a_row",
        "_on_change",
        "_open_until",
        "_policy",
        "_probation",
        "_probing",
        "error_rate",
        "latency",
        "ttft",
    )

    def __init__(
        self,
        policy: HealthPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ):
        """``on_change`` hears each opening and each closing of the breaker (not the timed move to
        half-open, which happens by the clock alone)."""
        self._policy = policy or HealthPolicy()
        self._clock = clock
        self._on_change = on_change
        self.latency: float | None = None
        self.ttft: float | None = None
        self.error_rate = 0.0
        self._failures_in_a_row = 0
        self._cooldown = self._policy.cooldown
        self._open_until: float | None = None
        self._probing = False
        self._probation = False

    def __repr__(self) -> str:
        latency = f"{self.latency * 1000:.1f}ms" if self.latency is not None else "-"
        return f"<Health {self.state.value} latency={latency} error_rate={self.error_rate:.2f}>"

    @property
    def state(self) -> BreakerState:
        if self._open_until is None:
            return BreakerState.CLOSED
        if self._clock() < self._open_until:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    @property
    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when not open)."""
        if self._open_until is None:
            return 0.0
        return max(0.0, self._open_until - self._clock())

    def admits(self) -> bool:
        """May a request go now? Closed: yes. Half-open: only if no probe is already out."""
        until = self._open_until
        # Closed, the common case, needs no clock read: this runs for every candidate of every request.
        return until is None or (not self._probing and self._clock() >= until)

    def begin(self) -> None:
        """A request (or a free probe) is going out; in half-open it is the one probe allowed."""
        if self.state is BreakerState.HALF_OPEN:
            self._probing = True

    def reachable(self) -> None:
        """A free probe got an answer: a half-open breaker closes, on probation (see the module doc). A
        breaker that re-opened meanwhile stays open: a real failure outweighs a free answer."""
        self._probing = False
        if self.state is BreakerState.HALF_OPEN:
            self._probation = True
            self._failures_in_a_row = 0
            self._close()

    def reprieve(self) -> None:
        """Let an open breaker's one probe through now, before its cooldown ends (the ejection cap needs
        the provider back). The cooldown is kept: a failed probe re-opens it for twice as long."""
        if self._open_until is not None:
            self._open_until = min(self._open_until, self._clock())

    def abandon(self) -> None:
        """A request that began here ended with no verdict (it was cancelled): the probe slot frees up."""
        self._probing = False

    def record_success(self, latency: float | None = None, ttft: float | None = None) -> None:
        """An attempt succeeded. Timings (seconds) feed the EWMAs; a probe's success closes the breaker."""
        alpha = self._policy.ewma_alpha
        if latency is not None:
            self.latency = (
                latency if self.latency is None else self.latency + alpha * (latency - self.latency)
            )
        if ttft is not None:
            self.ttft = ttft if self.ttft is None else self.ttft + alpha * (ttft - self.ttft)
        self.error_rate -= alpha * self.error_rate
        self._failures_in_a_row = 0
        self._probing = False
        self._probation = False
        self._cooldown = self._policy.cooldown
        if self._open_until is not None:
            self._close()

    def record_failure(self) -> None:
        """An attempt failed in a way that counts against the provider (5xx, connect, timeout)."""
        self.error_rate += self._policy.ewma_alpha * (1.0 - self.error_rate)
        self._failures_in_a_row += 1
        state = self.state
        if state is BreakerState.HALF_OPEN or (state is BreakerState.CLOSED and self._probation):
            self._probing = False
            self._probation = False
            self._cooldown = min(self._cooldown * 2, self._policy.max_cooldown)
            self._open(self._cooldown)
        elif self._failures_in_a_row >= self._policy.failure_threshold and state is BreakerState.CLOSED:
            self._open(self._cooldown)

    def cool_down(self, seconds: float) -> None:
        """Open the breaker for at least ``seconds`` (a provider said it is overloaded, say)."""
        self._probing = False
        until = self._clock() + seconds
        if self._open_until is None:
            self._open(seconds)
        else:
            self._open_until = max(self._open_until, until)

    def _close(self) -> None:
        self._open_until = None
        if self._on_change is not None:
            self._on_change(BreakerState.CLOSED)

    def _open(self, seconds: float) -> None:
        self._open_until = self._clock() + seconds
        if self._on_change is not None:
            self._on_change(BreakerState.OPEN)
