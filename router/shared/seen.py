"""What ``RedisCapacity`` knows of a lane between script calls: the lane as the last call saw it
(``SeenLane``, from an ``ACQUIRE`` reply), and the ``LaneView`` that implies now, its buckets refilled
at their rates since. The synchronous ``wait``, ``load`` and ``view`` answer from it, without Redis."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from router.pool.capacity import LaneView
from router.pool.limits import ProviderLimits

# What ``lua.ACQUIRE`` returns of each lane it examined.
FIELDS_PER_LANE = 6


@dataclass(slots=True)
class SeenLane:
    """A lane as the last script saw it, at ``at`` (our clock). ``wait`` is None when only a release can
    let it admit; ``blocked_for`` the back-off or hold-off left then."""

    at: float
    in_flight: int
    wait: float | None
    requests: float
    tokens: float | None
    images: float | None
    blocked_for: float


def seen_lanes(fields: Sequence[str], at: float) -> list[SeenLane]:
    """The lanes an ``ACQUIRE`` reply examined, in the order they were asked (its ``fields`` after the
    first three)."""
    lanes = []
    for i in range(len(fields) // FIELDS_PER_LANE):
        in_flight, wait, requests, tokens, images, blocked = fields[
            FIELDS_PER_LANE * i : FIELDS_PER_LANE * (i + 1)
        ]
        waits = float(wait)
        lanes.append(
            SeenLane(
                at,
                int(float(in_flight)),
                None if waits < 0 else waits,
                float(requests),
                _number(tokens),
                _number(images),
                float(blocked),
            )
        )
    return lanes


def seen_view(
    seen: SeenLane | None,
    limits: ProviderLimits,
    margin: float,
    now: float,
    *,
    in_flight: int,
    mirrored: float,
) -> LaneView:
    """The lane now as ``seen`` implies (a lane never seen has full buckets); ``mirrored``: the seconds of
    back-off or hold-off this replica knows of itself."""
    size = max(1, limits.burst - 1)
    if seen is None:
        since, requests, tokens, images = 0.0, float(size), None, None
    else:
        since = now - seen.at
        requests = _refilled(seen.requests, limits.requests_per_minute * margin, size, since)
        tokens, images = seen.tokens, seen.images
    if limits.tokens_per_minute:
        tokens = _refilled(tokens, limits.tokens_per_minute * margin, limits.tokens_capacity, since)
    else:
        tokens = None
    if limits.images_per_minute:
        images = _refilled(images, limits.images_per_minute * margin, limits.images_capacity, since)
    else:
        images = None
    blocked = max(0.0, mirrored, (seen.blocked_for - since) if seen is not None else 0.0)
    return LaneView(in_flight, limits.max_concurrent, requests, size, tokens, images, blocked)


def _refilled(level: float | None, per_minute: float, size: float, since: float) -> float:
    """A level last seen ``since`` seconds ago, refilled since (a lane never seen is full)."""
    if level is None:
        return float(size)
    return min(float(size), level + per_minute / 60.0 * since)


def _number(text: str) -> float | None:
    return float(text) if text else None
