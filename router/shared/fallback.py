"""``LocalFallback``: how a replica counts its lanes by itself while Redis is away.

Each lane gets 1/N of its limits (N: the replicas last seen alive, ``scaled``), counted by a
``MemoryCapacity``. Going alone (``go_alone``) it starts with empty buckets (the shared ones were in use
and the provider's may be low) and counts what it still has in flight against its share.

Shares alone are not enough at the moment Redis goes away: the replicas' requests in flight then are
rarely spread evenly, and a replica holding fewer than its share would fill it while another still
holds more than its own, over the lane's concurrency. So for a while each lane is *settling*: this
replica admits no more than it holds plus its 1/N of the slots that were free in the last count it got
from Redis (the replicas together stay within the lane). The settling lasts as long as the longest
request this replica has lately seen on the lane (the others' requests from before the outage end by
then), or ``unknown_for`` seconds on a lane it has no such figure for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from router.pool.capacity import Demand, LaneView, Lease, MemoryCapacity
from router.pool.limits import ProviderLimits
from router.pool.providers import Lane

# How fast the longest request seen on a lane is forgotten: per request released, its weight shrinks
# by this factor, so one long request stops mattering after a few hundred short ones.
LONGEST_DECAY = 0.99


@dataclass(frozen=True, slots=True)
class LaneCount:
    """A lane at the moment Redis went away: its leases in flight in the last count Redis returned
    (``None``: never counted), and those of this replica's."""

    in_flight: int | None
    own: int


@dataclass(frozen=True, slots=True)
class _Settling:
    cap: int
    until: float


class LocalFallback:
    """The local count: ``configure`` with a lane's whole limits, ``rescale`` to the replicas alive."""

    def __init__(
        self, *, clock: Callable[[], float], rate_margin: float, unknown_for: float, replicas: int = 1
    ) -> None:
        self._memory = MemoryCapacity(clock=clock, rate_margin=rate_margin)
        self._clock = clock
        self._unknown_for = unknown_for
        self._limits: dict[Lane, ProviderLimits] = {}
        self._settling: dict[Lane, _Settling] = {}
        self._longest: dict[Lane, float] = {}
        self.replicas = replicas

    def __repr__(self) -> str:
        return f"<LocalFallback 1/{self.replicas} lanes={len(self._limits)} settling={len(self._settling)}>"

    def configure(self, lane: Lane, limits: ProviderLimits) -> None:
        self._limits[lane] = limits
        self._memory.configure(lane, scaled(limits, self.replicas))

    def forget(self, lane: Lane) -> None:
        self._limits.pop(lane, None)
        self._settling.pop(lane, None)
        self._longest.pop(lane, None)
        self._memory.forget(lane)

    def rescale(self, replicas: int) -> None:
        """Count 1/``replicas`` of each lane from now."""
        if replicas == self.replicas:
            return
        self.replicas = replicas
        for lane, limits in self._limits.items():
            self._memory.configure(lane, scaled(limits, replicas))

    def go_alone(self, replicas: int, counts: dict[Lane, LaneCount]) -> None:
        """Redis went away: 1/``replicas`` of each lane, empty buckets, each lane settling as ``counts``
        says (a lane missing from it had nothing in flight here and was never counted)."""
        self.rescale(replicas)
        now = self._clock()
        self._settling.clear()
        for lane, limits in self._limits.items():
            self._memory.drain(lane, now)
            count = counts.get(lane, LaneCount(None, 0))
            free = 0 if count.in_flight is None else max(0, limits.max_concurrent - count.in_flight)
            cap = count.own + free // replicas
            if cap < scaled(limits, replicas).max_concurrent:
                self._settling[lane] = _Settling(cap, now + self._longest.get(lane, self._unknown_for))

    def start_afresh(self) -> None:
        """What the fallback used is counted in Redis now: full buckets and nothing in flight for the
        next time alone."""
        self._settling.clear()
        for lane, limits in self._limits.items():
            self._memory.forget(lane)
            self._memory.configure(lane, scaled(limits, self.replicas))

    def finished(self, lane: Lane, seconds: float) -> None:
        """A request on ``lane`` held its lease ``seconds`` (wherever it was counted)."""
        self._longest[lane] = max(seconds, self._longest.get(lane, 0.0) * LONGEST_DECAY)

    def carry(self, lane: Lane, now: float) -> Lease | None:
        """Count a request Redis admitted, still in flight, against this replica's share."""
        return self._memory.carry(lane, now)

    def try_acquire(self, lanes: Sequence[Lane], demand: Demand, now: float) -> Lease | None:
        if self._settling:
            lanes = [lane for lane in lanes if self._settle_wait(lane, now) == 0.0]
        return self._memory.try_acquire(lanes, demand, now)

    def wait(self, lane: Lane, demand: Demand, now: float) -> float | None:
        wait = self._memory.wait(lane, demand, now)
        if wait is None:
            return None
        return max(wait, self._settle_wait(lane, now))

    def back_off(self, lane: Lane, until: float) -> None:
        self._memory.back_off(lane, until)

    def hold_off(self, provider: str, until: float) -> None:
        self._memory.hold_off(provider, until)

    def load(self, lane: Lane) -> float:
        return self._memory.load(lane)

    def view(self, lane: Lane, now: float) -> LaneView:
        return self._memory.view(lane, now)

    def used(self, lane: Lane, now: float) -> tuple[float, float, float]:
        """What the buckets for ``lane`` used and have not refilled yet: requests, tokens, images."""
        limits = self._limits.get(lane)
        if limits is None:
            return 0.0, 0.0, 0.0
        view = self._memory.view(lane, now)
        local = scaled(limits, self.replicas)
        tokens = local.tokens_capacity - view.tokens if view.tokens is not None else 0.0
        images = local.images_capacity - view.images if view.images is not None else 0.0
        return max(0.0, view.request_capacity - view.requests), max(0.0, tokens), max(0.0, images)

    def levels(self, lane: Lane, now: float) -> tuple[float | str, float | str, float | str]:
        """The buckets' levels for ``lane`` ("" where it counts none)."""
        view = self._memory.view(lane, now)
        return (
            view.requests,
            view.tokens if view.tokens is not None else "",
            view.images if view.images is not None else "",
        )

    def _settle_wait(self, lane: Lane, now: float) -> float:
        """Seconds until settling lets ``lane`` admit one more (0: it does now)."""
        settling = self._settling.get(lane)
        if settling is None:
            return 0.0
        if now >= settling.until:
            del self._settling[lane]
            return 0.0
        if self._memory.view(lane, now).in_flight < settling.cap:
            return 0.0
        return settling.until - now


def scaled(limits: ProviderLimits, replicas: int) -> ProviderLimits:
    """One replica's share of ``limits`` among ``replicas``: the rates divided, the burst, concurrency
    and bucket sizes floor-divided, each at least 1."""
    if replicas <= 1:
        return limits

    def part(count: int) -> int:
        return max(1, count // replicas)

    tokens, images = limits.tokens_per_minute, limits.images_per_minute
    return ProviderLimits(
        requests_per_minute=limits.requests_per_minute / replicas,
        burst=part(limits.burst),
        max_concurrent=part(limits.max_concurrent),
        tokens_per_minute=part(tokens) if tokens else 0,
        token_burst=part(limits.tokens_capacity) if tokens else 0,
        images_per_minute=part(images) if images else 0,
        image_burst=part(limits.images_capacity) if images else 0,
        context_length=limits.context_length,
    )
