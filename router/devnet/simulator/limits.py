"""The broker's whole limit model for one simulated provider (protocol.md §4.2, §4.7).

Provider-wide caps come first and answer 503 (``ProviderBusy``): global concurrency, then the global RPM
and TPM buckets. Then, per wallet and in the broker's order, each answering 429 (``LimitExceeded``) with
the broker's body: the RPM bucket (a request takes its token when checked, even if a later check refuses
it), the TPM or IPM bucket, the concurrency cap, and the KV budget of tokens in flight.

TPM and IPM are post-consume: a request is admitted while the level is above 0, and what it produced (the
tokens or images billed) is deducted when it leaves, so the level can go negative and lock the wallet out
until it refills. TPM applies to token services, IPM to image services, as the provider's type says.

The buckets follow ``golang.org/x/time/rate``: per minute / 60 per second, ``size`` units, starting full.
They are a few lines of our own rather than aiolimiter because the simulator must report levels and refill
times in headers, let levels go negative, and run under an injected clock in tests.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from router.errors import ConfigError

TOKEN_SERVICES = frozenset({"chatbot", "embedding", "speech-to-text"})
IMAGE_SERVICES = frozenset({"text-to-image", "image-editing"})
DEFAULT_CONTEXT_LENGTH = 8192
# Admission times kept per wallet: enough for a test to check "at most N in any 60 s window".
ADMISSION_HISTORY = 10_000
REJECTION_KINDS = ("rpm", "tpm", "ipm", "concurrency", "kv_budget", "global_concurrency", "global_rate")
BUSY = "Server is currently processing too many requests. Please try again later."
_KV_FULL = (
    "Server is at capacity: this request's context does not fit in the remaining KV cache budget. "
    "Please retry shortly."
)
# The broker's body for its global RPM and TPM caps (its concurrency cap answers BUSY).
_AT_CAPACITY = "Server is at capacity (global limit: {} {}/min). Please try again later."
_NULLABLE = ("token_burst", "image_burst")


@dataclass(frozen=True, slots=True)
class RateLimits:
    """What a provider allows each wallet; advertised in ``/v1/models`` as ``rate_limits``.

    ``tokens_per_minute``, ``images_per_minute`` and ``kv_token_budget`` are off at 0. A burst of None is
    the broker's default: ``max(TPM // 6, context_length)`` tokens, ``max(1, IPM // 6)`` images.
    ``kv_token_budget`` caps the tokens a wallet has in flight: each request holds its prompt tokens plus
    the most it may generate (its ``max_tokens``, or the simulator's default) until it ends.
    """

    requests_per_minute: int = 30
    burst: int = 5
    max_concurrent: int = 5
    tokens_per_minute: int = 0
    token_burst: int | None = None
    images_per_minute: int = 0
    image_burst: int | None = None
    kv_token_budget: int = 0

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "burst", "max_concurrent"):
            if getattr(self, name) < 1:
                raise ConfigError(f"rate limit {name} must be at least 1, got {getattr(self, name)}")
        for name in ("tokens_per_minute", "images_per_minute", "kv_token_budget"):
            if getattr(self, name) < 0:
                raise ConfigError(f"rate limit {name} must be 0 (off) or more, got {getattr(self, name)}")
        for name in _NULLABLE:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"rate limit {name} must be at least 1 or null (the default), got {value}")

    def token_bucket_size(self, context_length: int) -> int:
        """The TPM bucket's size: ``token_burst``, or the broker's default for this context length."""
        if self.token_burst is not None:
            return self.token_burst
        return max(self.tokens_per_minute // 6, context_length, 1)

    def image_bucket_size(self) -> int:
        """The IPM bucket's size: ``image_burst``, or the broker's default ``max(1, IPM // 6)``."""
        return self.image_burst if self.image_burst is not None else max(1, self.images_per_minute // 6)

    def updated(self, changes: Mapping[str, Any]) -> RateLimits:
        """A copy with ``changes`` applied; unknown names or wrong types raise ConfigError."""
        known = [f.name for f in fields(self)]
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise ConfigError(f"unknown rate limits: {', '.join(unknown)}; known: {', '.join(known)}")
        for name, value in changes.items():
            if value is None and name in _NULLABLE:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                either = " or null" if name in _NULLABLE else ""
                raise ConfigError(f"rate limit {name} takes a whole number{either}")
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class LimitExceeded(Exception):
    """A per-wallet 429 with the broker's body; ``kind`` is one of ``REJECTION_KINDS``."""

    def __init__(self, body: dict[str, Any], kind: str) -> None:
        super().__init__(body)
        self.body = body
        self.kind = kind


class ProviderBusy(Exception):
    """A provider-wide 503 with the broker's body and ``Retry-After`` in whole seconds."""

    def __init__(self, body: dict[str, Any], kind: str, retry_after: int) -> None:
        super().__init__(body)
        self.body = body
        self.kind = kind
        self.retry_after = retry_after


@dataclass(slots=True)
class Usage:
    """What an admitted request produced (what it was billed for), deducted from the post-consume
    buckets when it leaves; ``served`` once a producer answers it."""

    tokens: int = 0
    images: int = 0
    served: bool = False


class _Bucket:
    """A token bucket whose level may go below 0 (post-consume deductions)."""

    __slots__ = ("_level", "_updated", "per_minute", "size")

    def __init__(self, per_minute: int, size: int, now: float) -> None:
        self.per_minute = per_minute
        self.size = size
        self._level = float(size)
        self._updated = now

    def level(self, now: float) -> float:
        self._level = min(self.size, self._level + (now - self._updated) * self.per_minute / 60)
        self._updated = now
        return self._level

    def take(self, now: float) -> bool:
        """Take one unit if a whole one is there (the RPM buckets)."""
        if self.level(now) < 1:
            return False
        self._level -= 1
        return True

    def deduct(self, units: int, now: float) -> None:
        self._level = self.level(now) - units

    def resize(self, per_minute: int, size: int, now: float) -> None:
        """New rate and size, keeping the level (at most the new size), as the Go limiter's setters do."""
        self._level = min(self.level(now), size)
        self.per_minute, self.size = per_minute, size

    def remaining(self, now: float) -> int:
        """Whole units left; 0 while the level is negative (the broker clamps it)."""
        return max(0, math.floor(self.level(now)))

    def seconds_to_unit(self, now: float) -> int:
        """Whole seconds until a whole unit is there; 0 if one is."""
        level = self.level(now)
        return 0 if level >= 1 else math.ceil((1 - level) * 60 / self.per_minute)

    def seconds_to_positive(self, now: float) -> int:
        """Whole seconds until the level is above 0 (post-consume admission); 0 if it is."""
        level = self.level(now)
        return 0 if level > 0 else math.floor(-level * 60 / self.per_minute) + 1


@dataclass(slots=True)
class WalletCounters:
    """What one wallet met at this provider (served as ``wallets`` by ``/admin/stats``).

    ``admitted_at`` holds the clock times at which its last ``ADMISSION_HISTORY`` requests passed every
    limit check.
    """

    rejections: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECTION_KINDS, 0))
    served_requests: int = 0
    served_tokens: int = 0
    served_images: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    admitted_at: deque[float] = field(default_factory=lambda: deque(maxlen=ADMISSION_HISTORY))

    def as_dict(self) -> dict[str, Any]:
        return {
            "rejections": dict(self.rejections),
            "served_requests": self.served_requests,
            "served_tokens": self.served_tokens,
            "served_images": self.served_images,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "admitted_at": list(self.admitted_at),
        }


@dataclass(slots=True)
class _Wallet:
    limits: RateLimits
    requests: _Bucket
    tokens: _Bucket | None = None
    images: _Bucket | None = None
    kv_in_use: int = 0
    counters: WalletCounters = field(default_factory=WalletCounters)


class WalletLimits:
    """Admits a wallet's request under its limits (``overrides``, by address, else ``limits``), or raises
    LimitExceeded; ``service_type`` decides whether TPM or IPM applies."""

    def __init__(
        self,
        limits: RateLimits | None = None,
        *,
        overrides: Mapping[str, RateLimits] | None = None,
        service_type: str = "chatbot",
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits or RateLimits()
        self.overrides = {k.lower(): v for k, v in (overrides or {}).items()}
        self._service_type = service_type
        self._context_length = context_length
        self._clock = clock
        self._wallets: dict[str, _Wallet] = {}

    def limits_for(self, user: str) -> RateLimits:
        return self.overrides.get(user.lower(), self.limits)

    def reconfigure(self, limits: RateLimits, overrides: Mapping[str, RateLimits] | None = None) -> None:
        """New limits from now on; buckets keep their levels (clipped to their new sizes), and a dimension
        switched on starts full."""
        self.limits = limits
        if overrides is not None:
            self.overrides = {k.lower(): v for k, v in overrides.items()}
        now = self._clock()
        for user, wallet in self._wallets.items():
            self._apply(wallet, self.limits_for(user), now)

    def headers(self, user: str) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers as the broker sets them: the levels before this request, with
        ``-tokens`` or ``-images`` when TPM or IPM applies."""
        wallet, now = self._wallet(user), self._clock()
        headers = {
            "x-ratelimit-limit-requests": str(wallet.limits.requests_per_minute),
            "x-ratelimit-remaining-requests": str(wallet.requests.remaining(now)),
            "x-ratelimit-reset-requests": f"{wallet.requests.seconds_to_unit(now)}s",
        }
        resource = self._resource(wallet)
        if resource is not None:
            name, bucket = resource
            headers[f"x-ratelimit-limit-{name}"] = str(bucket.per_minute)
            headers[f"x-ratelimit-remaining-{name}"] = str(bucket.remaining(now))
            headers[f"x-ratelimit-reset-{name}"] = f"{bucket.seconds_to_positive(now)}s"
        return headers

    @contextmanager
    def admit(self, user: str, usage: Usage | None = None, *, kv_tokens: int = 1) -> Iterator[Usage]:
        """Hold one of ``user``'s request slots (and ``kv_tokens`` of its KV budget) for the block; on
        the way out, deduct what ``usage`` says it produced."""
        usage = usage or Usage()
        wallet, now = self._wallet(user), self._clock()
        limits, counters = wallet.limits, wallet.counters
        if not wallet.requests.take(now):
            message = (
                "Rate limit exceeded. Please slow down your request rate "
                f"(limit: {limits.requests_per_minute} requests/min)."
            )
            raise _refused(counters, "rpm", {"error": {"type": "rate_limit_error", "message": message}})
        resource = self._resource(wallet)
        if resource is not None and resource[1].level(now) <= 0:
            name, bucket = resource
            what = "Token" if name == "tokens" else "Image"
            message = (
                f"{what} rate limit exceeded. Please wait {bucket.seconds_to_positive(now)} seconds "
                f"(limit: {bucket.per_minute} {name}/min)."
            )
            kind = "tpm" if name == "tokens" else "ipm"
            raise _refused(counters, kind, {"error": {"type": "rate_limit_error", "message": message}})
        if counters.in_flight >= limits.max_concurrent:
            # The broker's concurrency body has a string ``error``, unlike the rate ones (§4.7).
            message = (
                f"Too many concurrent requests. You have {counters.in_flight} active requests "
                f"(limit: {limits.max_concurrent}). Please wait for some to complete."
            )
            raise _refused(counters, "concurrency", {"error": message})
        budget = limits.kv_token_budget
        # A request heavier than the whole budget is charged the whole budget, so it runs when the
        # wallet has nothing else in flight rather than never (the broker's rule).
        weight = min(max(kv_tokens, 1), budget) if budget else 0
        if weight and wallet.kv_in_use + weight > budget:
            body = {
                "error": {"type": "rate_limit_error", "code": "token_budget_exceeded", "message": _KV_FULL},
                "used_tokens": wallet.kv_in_use,
                "budget_tokens": budget,
                "requested_tokens": weight,
            }
            raise _refused(counters, "kv_budget", body)
        wallet.kv_in_use += weight
        counters.in_flight += 1
        counters.peak_in_flight = max(counters.peak_in_flight, counters.in_flight)
        counters.admitted_at.append(now)
        try:
            yield usage
        finally:
            counters.in_flight -= 1
            wallet.kv_in_use -= weight
            self._consume(wallet, usage)

    def count_rejection(self, user: str, kind: str) -> None:
        """Count a refusal made before the wallet's own checks (a provider-wide 503)."""
        self._wallet(user).counters.rejections[kind] += 1

    def in_flight(self, user: str) -> int:
        return self._wallet(user).counters.in_flight

    def kv_in_use(self, user: str) -> int:
        return self._wallet(user).kv_in_use

    def counters(self) -> dict[str, WalletCounters]:
        """Every wallet seen so far, by lowercased address."""
        return {user: wallet.counters for user, wallet in self._wallets.items()}

    @property
    def peak_in_flight(self) -> dict[str, int]:
        return {user: wallet.counters.peak_in_flight for user, wallet in self._wallets.items()}

    def _consume(self, wallet: _Wallet, usage: Usage) -> None:
        counters = wallet.counters
        counters.served_requests += int(usage.served)
        counters.served_tokens += usage.tokens
        counters.served_images += usage.images
        resource = self._resource(wallet)
        if resource is not None:
            name, bucket = resource
            bucket.deduct(usage.tokens if name == "tokens" else usage.images, self._clock())

    def _resource(self, wallet: _Wallet) -> tuple[str, _Bucket] | None:
        """The post-consume dimension that applies to this provider's requests, if it is on."""
        if wallet.tokens is not None:
            return "tokens", wallet.tokens
        if wallet.images is not None:
            return "images", wallet.images
        return None

    def _wallet(self, user: str) -> _Wallet:
        key = user.lower()
        wallet = self._wallets.get(key)
        if wallet is None:
            limits, now = self.limits_for(key), self._clock()
            wallet = _Wallet(limits, _Bucket(limits.requests_per_minute, limits.burst, now))
            self._apply(wallet, limits, now)
            self._wallets[key] = wallet
        return wallet

    def _apply(self, wallet: _Wallet, limits: RateLimits, now: float) -> None:
        wallet.limits = limits
        wallet.requests.resize(limits.requests_per_minute, limits.burst, now)
        tokens_on = self._service_type in TOKEN_SERVICES and limits.tokens_per_minute > 0
        images_on = self._service_type in IMAGE_SERVICES and limits.images_per_minute > 0
        tokens_size = limits.token_bucket_size(self._context_length)
        wallet.tokens = _resized(wallet.tokens, limits.tokens_per_minute, tokens_size, now, on=tokens_on)
        wallet.images = _resized(
            wallet.images, limits.images_per_minute, limits.image_bucket_size(), now, on=images_on
        )


class GlobalLimits:
    """The provider-wide caps over every wallet together: concurrency, then the global RPM and TPM
    buckets (each ``rate // 6`` in size, at least 1; 0 turns a bucket off). Over any: ProviderBusy."""

    def __init__(
        self,
        *,
        max_concurrent: int = 20,
        requests_per_minute: int = 0,
        tokens_per_minute: int = 0,
        service_type: str = "chatbot",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._token_service = service_type in TOKEN_SERVICES
        self._clock = clock
        self._requests: _Bucket | None = None
        self._tokens: _Bucket | None = None
        self.in_flight = 0
        self.peak_in_flight = 0
        self.rejections = {"global_concurrency": 0, "global_rate": 0}
        self.max_concurrent = max_concurrent
        self.reconfigure(
            max_concurrent=max_concurrent,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
        )

    def reconfigure(self, *, max_concurrent: int, requests_per_minute: int, tokens_per_minute: int) -> None:
        """New caps from now on; buckets keep their levels (clipped to their new sizes)."""
        now = self._clock()
        self.max_concurrent = max_concurrent
        rpm, tpm = requests_per_minute, tokens_per_minute
        self._requests = _resized(self._requests, rpm, _global_size(rpm), now, on=rpm > 0)
        tokens_on = self._token_service and tpm > 0
        self._tokens = _resized(self._tokens, tpm, _global_size(tpm), now, on=tokens_on)

    @contextmanager
    def enter(self) -> Iterator[Usage]:
        """Hold a provider-wide slot for the block; on the way out, deduct the tokens the request produced
        from the global TPM bucket."""
        now = self._clock()
        if self.in_flight >= self.max_concurrent:
            raise self._busy("global_concurrency", BUSY, 1)
        requests, tokens = self._requests, self._tokens
        if requests is not None and not requests.take(now):
            message = _AT_CAPACITY.format(requests.per_minute, "requests")
            raise self._busy("global_rate", message, requests.seconds_to_unit(now))
        if tokens is not None and tokens.level(now) <= 0:
            message = _AT_CAPACITY.format(tokens.per_minute, "tokens")
            raise self._busy("global_rate", message, tokens.seconds_to_positive(now))
        usage = Usage()
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            yield usage
        finally:
            self.in_flight -= 1
            if self._tokens is not None:
                self._tokens.deduct(usage.tokens, self._clock())

    def _busy(self, kind: str, message: str, retry_after: int) -> ProviderBusy:
        self.rejections[kind] += 1
        return ProviderBusy({"error": message}, kind, retry_after)


def _refused(counters: WalletCounters, kind: str, body: dict[str, Any]) -> LimitExceeded:
    counters.rejections[kind] += 1
    return LimitExceeded(body, kind)


def _global_size(per_minute: int) -> int:
    return max(1, per_minute // 6)


def _resized(bucket: _Bucket | None, per_minute: int, size: int, now: float, *, on: bool) -> _Bucket | None:
    """``bucket`` with a new rate and size, a new full one if it was off, or None when ``on`` is false."""
    if not on:
        return None
    if bucket is None:
        return _Bucket(per_minute, size, now)
    bucket.resize(per_minute, size, now)
    return bucket
