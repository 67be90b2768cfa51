"""What the core reports. ``pool``, ``policy`` and ``transport`` never log or count themselves: the dispatch
loop and background tasks emit these events, and observers subscribed on the ``Router`` turn them into logs
or metrics. Events carry no secrets: provider ids are public addresses or configured upstream names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AttemptFailed:
    """One attempt at one provider did not produce the reply; ``verdict`` says what dispatch did next."""

    request_id: str
    provider: str
    verdict: str
    status: int | None
    detail: str


@dataclass(frozen=True, slots=True)
class RequestFinished:
    """A request ended. ``status`` is what the caller got; ``provider`` is None if no attempt answered."""

    request_id: str
    endpoint: str
    model: str
    status: int
    provider: str | None
    attempts: int
    cost: int | None
    latency: float
    ttft: float | None
    stream: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class PoolRefreshed:
    """Discovery replaced the chain providers: ``providers`` usable, ``skipped`` refused (and why)."""

    providers: int
    skipped: dict[str, str]


@dataclass(frozen=True, slots=True)
class BreakerChanged:
    """A provider's circuit breaker moved to ``state`` (``closed``, ``open``, ``half_open``)."""

    provider: str
    state: str


@dataclass(frozen=True, slots=True)
class BackgroundError:
    """A background task (discovery, prober) failed one round; it tries again on its next tick."""

    task: str
    detail: str


Event = AttemptFailed | RequestFinished | PoolRefreshed | BreakerChanged | BackgroundError
Observer = Callable[[Event], None]
