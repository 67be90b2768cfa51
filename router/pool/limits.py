"""The broker's per-wallet limit model (protocol.md §4.7) as data, and the bucket our capacity counts with.

A provider limits each wallet by a request bucket (RPM with a burst), a concurrency cap and, when it says
so, a token bucket (TPM, chat, embedding and speech services) or an image bucket (IPM, image services).
The token and image buckets are *post-consume* at the broker: a request is admitted while the level is
above zero, its actual usage is taken after the reply, and the level may go negative, which locks the
wallet out until it refills. ``Bucket`` models exactly that; aiolimiter's leaky bucket cannot go negative,
be reconciled after the fact or be corrected from a provider's ``x-ratelimit-*`` headers, so the bucket is
a few lines of ours with the clock passed in.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from router.errors import ConfigError

# The broker's defaults (protocol.md §4.7), used when a provider does not advertise its own.
DEFAULT_REQUESTS_PER_MINUTE = 30
DEFAULT_BURST = 5
DEFAULT_MAX_CONCURRENT = 5
# What a token budget's default burst is when the provider names no context length.
DEFAULT_CONTEXT_LENGTH = 8192


@dataclass(frozen=True, slots=True)
class ProviderLimits:
    """Per-wallet limits a provider enforces. ``tokens_per_minute``/``images_per_minute`` 0 means the
    provider counts none; a burst of 0 takes the broker's default (``token_burst``: the larger of a
    sixth of the TPM and the context length; ``image_burst``: a sixth of the IPM, at least 1)."""

    requests_per_minute: float = DEFAULT_REQUESTS_PER_MINUTE
    burst: int = DEFAULT_BURST
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    tokens_per_minute: int = 0
    token_burst: int = 0
    images_per_minute: int = 0
    image_burst: int = 0
    context_length: int = DEFAULT_CONTEXT_LENGTH

    def __post_init__(self) -> None:
        # Written so that NaN fails too (TOML allows nan and inf).
        if not (
            math.isfinite(self.requests_per_minute)
            and self.requests_per_minute > 0
            and _whole(self.burst, 1)
            and _whole(self.max_concurrent, 1)
        ):
            raise ConfigError(
                "provider limits must be finite and positive "
                "(rpm > 0, integer burst >= 1 and max_concurrent >= 1)"
            )
        counts = (
            self.tokens_per_minute,
            self.token_burst,
            self.images_per_minute,
            self.image_burst,
        )
        if not (all(_whole(n, 0) for n in counts) and _whole(self.context_length, 1)):
            raise ConfigError(
                "token and image limits must be integers >= 0 (0: not limited), context_length >= 1"
            )

    @property
    def tokens_capacity(self) -> int:
        """The token bucket's size (0 when tokens are not limited)."""
        if not self.tokens_per_minute:
            return 0
        return self.token_burst or max(self.tokens_per_minute // 6, self.context_length)

    @property
    def images_capacity(self) -> int:
        if not self.images_per_minute:
            return 0
        return self.image_burst or max(1, self.images_per_minute // 6)


def _whole(value: object, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


class Bucket:
    """A token bucket that starts full, refills at ``per_minute``, holds at most ``size``, and may be
    overdrawn: ``take`` never refuses, callers ask ``level`` first. Times are the caller's clock."""

    __slots__ = ("_level", "_updated", "per_second", "size")

    def __init__(self, per_minute: float, size: float, now: float) -> None:
        self.per_second = per_minute / 60.0
        self.size = float(size)
        self._level = self.size
        self._updated = now

    def __repr__(self) -> str:
        return f"<Bucket {self._level:.1f}/{self.size:g} at {self.per_second * 60:g}/min>"

    def level(self, now: float) -> float:
        if now > self._updated:
            self._level = min(self.size, self._level + (now - self._updated) * self.per_second)
            self._updated = now
        return self._level

    def take(self, amount: float, now: float) -> None:
        """Use ``amount`` (negative gives back: a reservation reconciled to a smaller actual figure)."""
        self._level = min(self.size, self.level(now) - amount)

    def seconds_until(self, level: float, now: float) -> float:
        """How long until the level reaches ``level`` (0 if it is there; inf if it never will)."""
        missing = level - self.level(now)
        if missing <= 0:
            return 0.0
        if level > self.size:
            return math.inf
        return missing / self.per_second

    def lower_to(self, level: float, now: float) -> None:
        """Never more than ``level`` now: a provider's own count says it has less than we think."""
        if level < self.level(now):
            self._level = level


_DURATION = re.compile(
    r"^\s*(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?\s*$"
)

# A provider's header is untrusted: no back-off longer than this, whatever it says.
MAX_RESET_SECONDS = 3600.0


def reset_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """Parse an ``x-ratelimit-reset-*`` value: a duration such as ``"2s"``, ``"1m30s"``, ``"250ms"`` or
    ``"3"`` (the broker's OpenAI routes), or an ISO-8601 time such as ``"2026-12-02T10:00:05Z"`` (its
    Anthropic routes), as seconds from ``now`` (the wall clock by default).

    None for anything unparsable or not finite; at most ``MAX_RESET_SECONDS``.
    """
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        match = _DURATION.match(value)
        if match is not None and any(match.groups()):
            hours, minutes, secs, millis = (float(g) if g else 0.0 for g in match.groups())
            seconds = hours * 3600 + minutes * 60 + secs + millis / 1000
        else:
            seconds = _until(value, now)
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), MAX_RESET_SECONDS)


def _until(value: str, now: datetime | None) -> float:
    """Seconds from ``now`` to the ISO-8601 time ``value`` (NaN when it is not one)."""
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        return math.nan
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - (now or datetime.now(UTC))).total_seconds()
