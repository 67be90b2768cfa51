"""Capacity per lane: the ``Capacity`` protocol and its in-memory default, ``MemoryCapacity``.

A lane is one (wallet, provider) pair: the broker counts every limit per wallet (protocol.md §4.7). For each
lane the capacity keeps the request bucket, the token and image buckets when the provider counts them, the
concurrency leases, and the back-off after a 429; per provider it keeps the back-pressure after a global-cap
503. ``acquire`` hands out a ``Lease`` on the first lane of a list that can take a request now;
``Lease.release`` gives it back with the request's actual usage, exactly once (it is idempotent, and
synchronous so that it runs under cancellation). Another implementation (shared across replicas) keeps the
same promises behind the same calls.

Our request bucket is a little smaller and slower than the provider's, so that the time a request spends on
the wire never turns one we admitted into a provider 429: it holds one token less than the provider's burst
(the provider's bucket starts its refill when our burst *arrives*, a little after we sent it), and refills at
``rate_margin`` of the provider's rate. Token and image buckets follow the broker's post-consume rule: a
request goes while the level is above zero; we take its estimate at once (the broker takes nothing until the
reply, so it always sees at least our level) and reconcile to the actual usage on release.

Every reply's ``x-ratelimit-*`` headers correct the model (``Lease.observe``): a limit the provider
reports replaces the one it advertised, and a remaining count below ours (another client of the same
wallet, a clock that drifted) lowers our level to it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from router.pool.limits import Bucket, ProviderLimits, reset_seconds
from router.pool.providers import Lane

# A provider's header is untrusted: a limit outside this range is ignored.
_MAX_HEADER_LIMIT = 10**9
_INTEGER = re.compile(r"-?[0-9]{1,10}")


@dataclass(frozen=True, slots=True)
class Demand:
    """What a request is expected to consume: tokens (prompt estimate + output cap) and images."""

    tokens: int = 0
    images: int = 0


NO_DEMAND = Demand()


@dataclass(frozen=True, slots=True)
class LaneView:
    """A lane's capacity right now, for views and metrics."""

    in_flight: int
    max_concurrent: int
    requests: float  # request tokens our bucket would admit now
    request_capacity: float
    tokens: float | None  # the token level (None: not limited)
    images: float | None
    blocked_for: float  # seconds of 429 back-off or provider back-pressure left


class Lease(Protocol):
    """One admitted request's hold on a lane."""

    @property
    def lane(self) -> Lane: ...

    def observe(self, headers: Mapping[str, str]) -> None:
        """Correct the lane's model from the ``x-ratelimit-*`` headers of the reply to this request."""
        ...

    def release(self, tokens: int | None = None, images: int | None = None) -> None:
        """Give the slot back, with the actual usage when known (None: the estimate stands). Idempotent."""
        ...


class Capacity(Protocol):
    """Lane capacity. ``on_change`` is called when a release may let a queued request go."""

    on_change: Callable[[], None]

    def configure(self, lane: Lane, limits: ProviderLimits) -> None:
        """Start counting ``lane`` under ``limits``, or adopt new limits for it."""
        ...

    def forget(self, lane: Lane) -> None:
        """The lane's provider left the pool. Its leases still release normally."""
        ...

    async def acquire(self, lanes: Sequence[Lane], demand: Demand, now: float) -> Lease | None:
        """A lease on the first of ``lanes`` whose limits admit ``demand`` now, or None."""
        ...

    def wait(self, lane: Lane, demand: Demand, now: float) -> float | None:
        """Seconds until ``lane`` may admit ``demand`` (0: now), or None when only a release can help."""
        ...

    def back_off(self, lane: Lane, until: float) -> None:
        """Send ``lane`` nothing before ``until`` (the provider said 429)."""
        ...

    def hold_off(self, provider: str, until: float) -> None:
        """Send ``provider`` nothing on any lane before ``until`` (its global cap answered 503)."""
        ...

    def load(self, lane: Lane) -> float:
        """The share of the lane's concurrency in use: 0..1, more while a lowered cap is under what is
        already in flight."""
        ...

    def view(self, lane: Lane, now: float) -> LaneView: ...


class _LaneState:
    """One lane's counters. ``limits`` is what we count by: the advertised limits, corrected by headers.
    ``taken`` counts the requests ever admitted and ``reserved`` the tokens in flight, so that a reply's
    headers (the broker's levels when it admitted that request) can be compared with ours."""

    __slots__ = (
        "blocked_until",
        "images",
        "in_flight",
        "limits",
        "requests",
        "reserved",
        "reserved_images",
        "taken",
        "tokens",
    )

    def __init__(self, limits: ProviderLimits, margin: float, now: float) -> None:
        self.in_flight = 0
        self.blocked_until = 0.0
        self.taken = 0
        self.reserved = 0
        self.reserved_images = 0
        self.limits = limits
        self.requests = Bucket(limits.requests_per_minute * margin, max(1, limits.burst - 1), now)
        self.tokens = _bucket(limits.tokens_per_minute, limits.tokens_capacity, margin, now)
        self.images = _bucket(limits.images_per_minute, limits.images_capacity, margin, now)

    def reconfigure(self, limits: ProviderLimits, margin: float, now: float) -> None:
        """Count by ``limits`` from now. A bucket whose limit changed keeps its level (at most its new
        size): we cannot know the provider's, and a fuller one could send what it refuses. A bucket newly
        limited starts full; what is in flight stays counted (its leases hold this object)."""
        self.limits = limits
        self.requests = _resized(
            self.requests, limits.requests_per_minute * margin, max(1, limits.burst - 1), now
        )
        self.tokens = _rebuilt(self.tokens, limits.tokens_per_minute, limits.tokens_capacity, margin, now)
        self.images = _rebuilt(self.images, limits.images_per_minute, limits.images_capacity, margin, now)


def _bucket(per_minute: int, size: int, margin: float, now: float) -> Bucket | None:
    return Bucket(per_minute * margin, size, now) if per_minute else None


def _rebuilt(old: Bucket | None, per_minute: int, size: int, margin: float, now: float) -> Bucket | None:
    if not per_minute:
        return None
    if old is None:
        return Bucket(per_minute * margin, size, now)
    return _resized(old, per_minute * margin, size, now)


def _resized(old: Bucket, per_minute: float, size: float, now: float) -> Bucket:
    """``old`` at a new rate and size, its level kept (at most the new size)."""
    if old.per_second * 60.0 == per_minute and old.size == size:
        return old
    bucket = Bucket(per_minute, size, now)
    bucket.lower_to(old.level(now), now)
    return bucket


class _MemoryLease:
    __slots__ = ("_capacity", "_images", "_open", "_sent", "_seq", "_tokens", "lane", "state")

    def __init__(
        self, capacity: MemoryCapacity, lane: Lane, state: _LaneState, demand: Demand, now: float
    ) -> None:
        self._capacity = capacity
        self.lane = lane
        self.state = state
        self._tokens = demand.tokens if state.tokens is not None else 0
        self._images = demand.images if state.images is not None else 0
        self._sent = now
        self._seq = state.taken
        self._open = True

    def observe(self, headers: Mapping[str, str]) -> None:
        capacity, state = self._capacity, self.state
        now = capacity.clock()
        limits = corrected_limits(state.limits, headers)
        if limits != state.limits:
            state.reconfigure(limits, capacity.margin, now)
        # What the broker's levels (taken when it admitted this request, before it counted it) mean for
        # ours now: less this request and those we sent after it, plus what refilled since (at our own,
        # slower rate); for tokens, less what is in flight, which the broker counts only once replied.
        # Only ever lowered: a level above ours is the margin our bucket keeps on purpose.
        since = now - self._sent
        requests = state.requests
        _lower(
            requests,
            headers.get("x-ratelimit-remaining-requests"),
            requests.per_second * since - 1 - (state.taken - self._seq),
            now,
        )
        for bucket, name, in_flight in (
            (state.tokens, "tokens", state.reserved),
            (state.images, "images", state.reserved_images),
        ):
            if bucket is not None:
                _lower(
                    bucket,
                    headers.get(f"x-ratelimit-remaining-{name}"),
                    bucket.per_second * since - in_flight,
                    now,
                )

    def release(self, tokens: int | None = None, images: int | None = None) -> None:
        if not self._open:
            return
        self._open = False
        state = self.state
        state.in_flight -= 1
        state.reserved -= self._tokens
        state.reserved_images -= self._images
        now = self._capacity.clock()
        if tokens is not None and state.tokens is not None:
            state.tokens.take(tokens - self._tokens, now)
        if images is not None and state.images is not None:
            state.images.take(images - self._images, now)
        self._capacity.on_change()


class MemoryCapacity:
    """Lane capacity in this process: the default, and all one replica needs."""

    def __init__(self, *, clock: Callable[[], float], rate_margin: float = 1.0) -> None:
        if not 0 < rate_margin <= 1:
            raise ValueError("rate_margin must be in (0, 1]")
        self.clock = clock
        self.margin = rate_margin
        self._lanes: dict[Lane, _LaneState] = {}
        self._held_off: dict[str, float] = {}
        self.on_change: Callable[[], None] = lambda: None

    def __repr__(self) -> str:
        return f"<MemoryCapacity lanes={len(self._lanes)}>"

    def configure(self, lane: Lane, limits: ProviderLimits) -> None:
        state = self._lanes.get(lane)
        if state is None:
            self._lanes[lane] = _LaneState(limits, self.margin, self.clock())
        elif state.limits != limits:
            state.reconfigure(limits, self.margin, self.clock())

    def forget(self, lane: Lane) -> None:
        self._lanes.pop(lane, None)

    async def acquire(self, lanes: Sequence[Lane], demand: Demand, now: float) -> Lease | None:
        return self.try_acquire(lanes, demand, now)

    def try_acquire(self, lanes: Sequence[Lane], demand: Demand, now: float) -> Lease | None:
        """``acquire`` without the await: this backend never waits on I/O."""
        for lane in lanes:
            state = self._lanes.get(lane)
            if state is None or not self._admits(lane, state, now):
                continue
            state.in_flight += 1
            state.taken += 1
            state.requests.take(1, now)
            lease = _MemoryLease(self, lane, state, demand, now)
            if state.tokens is not None and demand.tokens:
                state.tokens.take(demand.tokens, now)
                state.reserved += demand.tokens
            if state.images is not None and demand.images:
                state.images.take(demand.images, now)
                state.reserved_images += demand.images
            return lease
        return None

    def carry(self, lane: Lane, now: float) -> Lease | None:
        """A lease on ``lane`` that asks nothing of its buckets: a request another count admitted, still
        in flight, which this one must count against the lane's concurrency from now on."""
        state = self._lanes.get(lane)
        if state is None:
            return None
        state.in_flight += 1
        state.taken += 1
        return _MemoryLease(self, lane, state, NO_DEMAND, now)

    def drain(self, lane: Lane, now: float) -> None:
        """Empty ``lane``'s buckets: another count was using them, and what it left is not known here."""
        state = self._lanes.get(lane)
        if state is None:
            return
        for bucket in (state.requests, state.tokens, state.images):
            if bucket is not None:
                bucket.lower_to(0.0, now)

    def _admits(self, lane: Lane, state: _LaneState, now: float) -> bool:
        if state.in_flight >= state.limits.max_concurrent or now < state.blocked_until:
            return False
        if self._held_off and now < self._held_off.get(lane.provider.id, 0.0):
            return False
        if state.requests.level(now) < 1:
            return False
        if state.tokens is not None and state.tokens.level(now) <= 0:
            return False
        return state.images is None or state.images.level(now) > 0

    def wait(self, lane: Lane, demand: Demand, now: float) -> float | None:
        state = self._lanes.get(lane)
        if state is None or state.in_flight >= state.limits.max_concurrent:
            return None
        waits = [
            state.blocked_until - now,
            self._held_off.get(lane.provider.id, 0.0) - now,
            state.requests.seconds_until(1, now),
        ]
        for bucket in (state.tokens, state.images):
            if bucket is not None and bucket.level(now) <= 0:
                # Above zero, not at it: the broker admits while the level is positive.
                waits.append(bucket.seconds_until(1e-6, now))
        wait = max(waits)
        return max(0.0, wait) if math.isfinite(wait) else None

    def back_off(self, lane: Lane, until: float) -> None:
        state = self._lanes.get(lane)
        if state is not None:
            state.blocked_until = max(state.blocked_until, until)

    def hold_off(self, provider: str, until: float) -> None:
        now = self.clock()
        # Ended hold-offs are dropped here, so the map stays as small as the providers holding us off.
        for ended in [p for p, end in self._held_off.items() if end <= now]:
            del self._held_off[ended]
        self._held_off[provider] = max(self._held_off.get(provider, 0.0), until)

    def load(self, lane: Lane) -> float:
        state = self._lanes.get(lane)
        return 1.0 if state is None else state.in_flight / state.limits.max_concurrent

    def view(self, lane: Lane, now: float) -> LaneView:
        state = self._lanes.get(lane)
        if state is None:
            return LaneView(0, 0, 0.0, 0.0, None, None, 0.0)
        blocked = max(state.blocked_until, self._held_off.get(lane.provider.id, 0.0)) - now
        return LaneView(
            in_flight=state.in_flight,
            max_concurrent=state.limits.max_concurrent,
            requests=state.requests.level(now),
            request_capacity=state.requests.size,
            tokens=state.tokens.level(now) if state.tokens is not None else None,
            images=state.images.level(now) if state.images is not None else None,
            blocked_for=max(0.0, blocked),
        )


def retry_seconds(headers: Mapping[str, str]) -> float | None:
    """The longest ``x-ratelimit-reset-*`` a 429 names: when every bucket it may have hit is back."""
    resets = [
        seconds
        for name in ("requests", "tokens", "images")
        if (seconds := reset_seconds(headers.get(f"x-ratelimit-reset-{name}"))) is not None
    ]
    return max(resets, default=None)


def corrected_limits(limits: ProviderLimits, headers: Mapping[str, str]) -> ProviderLimits:
    """``limits`` with the per-minute limits the reply's headers report instead of the advertised (also
    what ``RedisCapacity`` counts by)."""
    changes: dict[str, int] = {}
    for name, field in (
        ("requests", "requests_per_minute"),
        ("tokens", "tokens_per_minute"),
        ("images", "images_per_minute"),
    ):
        reported = header_int(headers.get(f"x-ratelimit-limit-{name}"))
        if reported is not None and reported >= 1 and reported != getattr(limits, field):
            changes[field] = reported
    return replace(limits, **changes) if changes else limits


def _lower(bucket: Bucket, remaining: str | None, offset: float, now: float) -> None:
    count = header_int(remaining)
    if count is not None:
        bucket.lower_to(count + offset, now)


def header_int(value: str | None) -> int | None:
    """An ``x-ratelimit-*`` count as an integer, or None when absent, not an integer or out of range."""
    if value is None:
        return None
    text = value.strip()
    if not _INTEGER.fullmatch(text):
        return None
    number = int(text)
    return number if -_MAX_HEADER_LIMIT <= number <= _MAX_HEADER_LIMIT else None
