"""Per-(wallet, provider) admission: a token bucket (aiolimiter) and a concurrency cap. Decides nothing.

The router has one wallet per chain provider, so one ``Gate`` per provider is one per (wallet, provider)
pair, which is what the provider's broker counts (protocol.md §4.7).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

from router.errors import ConfigError

# The broker's defaults (protocol.md §4.7), used when a provider does not advertise its own.
DEFAULT_REQUESTS_PER_MINUTE = 30
DEFAULT_BURST = 5
DEFAULT_MAX_CONCURRENT = 5


@dataclass(frozen=True, slots=True)
class ProviderLimits:
    """Per-wallet limits a provider enforces: a token bucket (rate, burst) and a concurrency cap."""

    requests_per_minute: float = DEFAULT_REQUESTS_PER_MINUTE
    burst: int = DEFAULT_BURST
    max_concurrent: int = DEFAULT_MAX_CONCURRENT

    def __post_init__(self) -> None:
        # Written so that NaN fails too (TOML allows nan and inf).
        if not (
            math.isfinite(self.requests_per_minute)
            and self.requests_per_minute > 0
            and isinstance(self.burst, int)
            and self.burst >= 1
            and isinstance(self.max_concurrent, int)
            and self.max_concurrent >= 1
        ):
            raise ConfigError(
                "provider limits must be finite and positive "
                "(rpm > 0, integer burst >= 1 and max_concurrent >= 1)"
            )


class Gate:
    """One (wallet, provider) pair's bucket, concurrency count and back-off.

    Our bucket is a little smaller and slower than the provider's, so that the time a request spends on the
    wire never turns one we admitted into a provider 429: it holds one token less than the provider's burst
    (the provider's bucket starts its refill when our burst *arrives*, a little after we sent it), and
    refills at ``rate_margin`` (0 < m <= 1) of the provider's rate, so jitter cannot add up over time.
    Tokens are only ever taken through ``AsyncLimiter.acquire``; a token a refill task waited for is
    "banked" until a queued request uses it, so no token is lost between the two.
    """

    __slots__ = (
        "_banked",
        "blocked_until",
        "in_flight",
        "limiter",
        "max_concurrent",
        "seconds_per_request",
    )

    def __init__(self, limits: ProviderLimits, rate_margin: float = 1.0) -> None:
        self.in_flight = 0
        self.blocked_until = 0.0
        self._banked = 0
        self.reconfigure(limits, rate_margin)

    def __repr__(self) -> str:
        return (
            f"<Gate in_flight={self.in_flight}/{self.max_concurrent} banked={self._banked} "
            f"rate={60 / self.seconds_per_request:.1f}/min burst={self.limiter.max_rate:g}>"
        )

    def reconfigure(self, limits: ProviderLimits, rate_margin: float) -> None:
        """Adopt new limits. The bucket starts over (full), as the provider's own does on a config change."""
        if not 0 < rate_margin <= 1:
            raise ConfigError("rate_margin must be in (0, 1]")
        per_minute = limits.requests_per_minute * rate_margin
        self.seconds_per_request = 60.0 / per_minute
        capacity = max(1, limits.burst - 1)
        self.limiter = AsyncLimiter(capacity, capacity * self.seconds_per_request)
        self.max_concurrent = limits.max_concurrent

    def has_room(self, now: float) -> bool:
        """A concurrency slot is free and no back-off is in force."""
        return self.in_flight < self.max_concurrent and now >= self.blocked_until

    def has_token(self) -> bool:
        return self._banked > 0 or self.limiter.has_capacity()

    def tokens(self) -> int:
        """Requests the bucket would admit right now, banked tokens included: the limiter's headroom."""
        room = 0
        while room < self.limiter.max_rate and self.limiter.has_capacity(room + 1):
            room += 1
        return self._banked + room

    async def take(self) -> None:
        """Use a token and a slot. Called right after ``has_room`` and ``has_token`` held, with no await in
        between, so the acquire below finds capacity and returns without suspending."""
        if self._banked:
            self._banked -= 1
        else:
            await self.limiter.acquire()
        self.in_flight += 1

    async def refill(self) -> None:
        """Wait for the bucket's next token and bank it for a queued request."""
        await self.limiter.acquire()
        self._banked += 1

    def release(self) -> None:
        self.in_flight -= 1

    def back_off(self, until: float) -> None:
        """Send nothing before ``until`` (the provider said 429)."""
        self.blocked_until = max(self.blocked_until, until)
