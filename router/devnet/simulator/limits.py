"""Per-wallet limits of a simulated provider: an RPM token bucket, then a concurrency cap (protocol.md §4.7).

The bucket follows the broker's ``golang.org/x/time/rate`` limiter: rate RPM/60 per second, ``burst``
tokens, starting full; a request takes its token when it is checked, even if a later check refuses it.
It is a few lines of our own rather than aiolimiter because the simulator must also report the level and
the time to the next token in ``x-ratelimit-*`` headers, which aiolimiter does not expose, and tests
drive it with an injected clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class RateLimits:
    """What a provider allows each wallet; advertised in ``/v1/models`` as ``rate_limits``."""

    requests_per_minute: int = 30
    burst: int = 5
    max_concurrent: int = 5


class LimitExceeded(Exception):
    """A 429 with the broker's body for it."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.body = body


class _TokenBucket:
    __slots__ = ("_per_second", "_size", "_tokens", "_updated")

    def __init__(self, per_minute: int, size: int, now: float) -> None:
        self._per_second = per_minute / 60
        self._size = size
        self._tokens = float(size)
        self._updated = now

    def refill(self, now: float) -> None:
        self._tokens = min(self._size, self._tokens + (now - self._updated) * self._per_second)
        self._updated = now

    def take(self) -> bool:
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    @property
    def remaining(self) -> int:
        return int(self._tokens)

    @property
    def seconds_to_next(self) -> int:
        return math.ceil((1 - self._tokens) / self._per_second) if self._tokens < 1 else 0


class WalletLimits:
    """Admits a wallet's request under its RPM bucket and concurrency cap, or raises LimitExceeded."""

    def __init__(self, limits: RateLimits, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._buckets: dict[str, _TokenBucket] = {}
        self._in_flight: dict[str, int] = {}
        self.peak_in_flight: dict[str, int] = {}

    def headers(self, user: str) -> dict[str, str]:
        """The ``x-ratelimit-*`` request headers, as the broker sets them: the level before this request."""
        bucket = self._bucket(user)
        return {
            "x-ratelimit-limit-requests": str(self.limits.requests_per_minute),
            "x-ratelimit-remaining-requests": str(bucket.remaining),
            "x-ratelimit-reset-requests": f"{bucket.seconds_to_next}s",
        }

    @contextmanager
    def admit(self, user: str) -> Iterator[None]:
        """Hold one of ``user``'s request slots for the duration of the block."""
        key = user.lower()
        if not self._bucket(user).take():
            raise LimitExceeded(
                {
                    "error": {
                        "type": "rate_limit_error",
                        "message": "Rate limit exceeded. Please slow down your request rate "
                        f"(limit: {self.limits.requests_per_minute} requests/min).",
                    }
                }
            )
        active = self._in_flight.get(key, 0)
        if active >= self.limits.max_concurrent:
            # The broker's concurrency body has a string ``error``, unlike the RPM one (§4.7).
            raise LimitExceeded(
                {
                    "error": f"Too many concurrent requests. You have {active} active requests "
                    f"(limit: {self.limits.max_concurrent}). Please wait for some to complete."
                }
            )
        self._in_flight[key] = active + 1
        self.peak_in_flight[key] = max(self.peak_in_flight.get(key, 0), active + 1)
        try:
            yield
        finally:
            self._in_flight[key] -= 1

    def in_flight(self, user: str) -> int:
        return self._in_flight.get(user.lower(), 0)

    def _bucket(self, user: str) -> _TokenBucket:
        key, now = user.lower(), self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _TokenBucket(
                self.limits.requests_per_minute, self.limits.burst, now
            )
        bucket.refill(now)
        return bucket
