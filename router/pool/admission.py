"""The admission queue: a request gets a lease on one of its ranked lanes, now or in FIFO order later.

A request takes the first lane that is available (breaker, exclusions) and whose capacity admits it (a
concurrency slot, no back-off, a request token, token and image budget). If none does, it queues. One pump
task hands freed capacity to queued requests in arrival order; it wakes when a lease is released or a
breaker or exclusion changes (``wake``), and when the soonest bucket refill, back-off or cooldown among the
queued requests' lanes is due. A request still queued at its deadline gets ``Saturated`` (429) with a
``Retry-After`` estimate.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

from router.errors import Saturated
from router.pool.capacity import NO_DEMAND, Capacity, Demand, Lease
from router.pool.health import BreakerState
from router.pool.providers import Lane

DEFAULT_MAX_QUEUED = 10_000


class _Waiter:
    __slots__ = ("demand", "future", "lanes")

    def __init__(self, lanes: Sequence[Lane], demand: Demand, future: asyncio.Future[Lease]) -> None:
        self.lanes = lanes
        self.demand = demand
        self.future = future


class Admission:
    """Hands out lane leases. ``async with Admission(capacity) as admission:`` runs its pump task.

    ``acquire`` returns a lease the caller must release exactly once (``Lease.release``), also on error
    and cancellation; the release wakes the queue through ``capacity.on_change``.
    """

    def __init__(
        self,
        capacity: Capacity,
        *,
        clock: Callable[[], float] | None = None,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        self.capacity = capacity
        capacity.on_change = self.wake
        self._clock = clock
        self._max_queued = max_queued
        self._waiters: deque[_Waiter] = deque()
        self._changed = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Admission queued={len(self._waiters)}>"

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def __aenter__(self) -> Self:
        if self._clock is None:
            self._clock = asyncio.get_running_loop().time
        self._pump = asyncio.create_task(self._pump_forever(), name="admission-pump")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump

    def now(self) -> float:
        assert self._clock is not None, "Admission is not entered"
        return self._clock()

    async def acquire(self, lanes: Sequence[Lane], deadline: float, demand: Demand = NO_DEMAND) -> Lease:
        """A lease on the first ready lane, waiting in the queue until ``deadline`` (clock time)."""
        now = self.now()
        if not self._waiters:
            lease = await self._take(lanes, demand, now)
            if lease is not None:
                return lease
        if len(self._waiters) >= self._max_queued:
            raise Saturated(
                "the admission queue is full",
                headers={"Retry-After": str(self.retry_after(lanes, now, demand))},
            )
        waiter = _Waiter(lanes, demand, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self._changed.set()
        try:
            async with asyncio.timeout(max(0.0, deadline - now)):
                return await waiter.future
        except BaseException as exc:
            future = waiter.future
            if future.done() and not future.cancelled():
                # The pump handed us a lease (and maybe a half-open probe) just as we gave up: give both back.
                lease = future.result()
                lease.lane.provider.health.abandon()
                lease.release()
            if isinstance(exc, TimeoutError):
                retry = self.retry_after(lanes, self.now(), demand)
                raise Saturated(
                    "every provider for this request is at its rate or concurrency limit; "
                    f"try again in {retry} s",
                    headers={"Retry-After": str(retry)},
                ) from None
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def wake(self) -> None:
        """Something changed (a lease, a breaker, an exclusion): let the pump look at the queue again."""
        if self._waiters:
            self._changed.set()

    async def _take(self, lanes: Sequence[Lane], demand: Demand, now: float) -> Lease | None:
        ready = [lane for lane in lanes if lane.available(now)]
        if not ready:
            return None
        lease = await self.capacity.acquire(ready, demand, now)
        if lease is not None:
            lease.lane.provider.health.begin()
        return lease

    async def _pump_forever(self) -> None:
        while True:
            self._changed.clear()
            delay = await self._assign()
            try:
                async with asyncio.timeout(delay):
                    await self._changed.wait()
            except TimeoutError:
                pass

    async def _assign(self) -> float | None:
        """Serve queued requests in order; return how long until a blocked lane may open up. A lane that
        could not serve an earlier request is not offered to a later one, so a large request is not
        starved by smaller ones behind it."""
        now = self.now()
        blocked: set[Lane] = set()
        soonest: float | None = None
        for waiter in list(self._waiters):
            if waiter.future.done():
                continue
            lanes = [lane for lane in waiter.lanes if lane not in blocked]
            lease = await self._take(lanes, waiter.demand, now) if lanes else None
            if lease is not None:
                if waiter.future.done():
                    # It gave up while a backend that waits on I/O was deciding: the lease goes back.
                    lease.lane.provider.health.abandon()
                    lease.release()
                    continue
                waiter.future.set_result(lease)
                self._waiters.remove(waiter)
                continue
            for lane in lanes:
                blocked.add(lane)
                wait = self._until_open(lane, waiter.demand, now)
                if wait is not None:
                    soonest = wait if soonest is None else min(soonest, wait)
        return soonest

    def _until_open(self, lane: Lane, demand: Demand, now: float) -> float | None:
        """Seconds until ``lane`` may be ready, or None when a release or ``wake`` will come anyway."""
        state = lane.provider
        exclusion = lane.excluded_at(now)
        if exclusion is not None:
            ends = [u for u in (*lane.excluded.values(), *state.excluded.values()) if u > now]
            return max(0.0, min(ends, default=now) - now)
        if state.health.state is BreakerState.OPEN:
            return state.health.retry_in
        if not state.health.admits():
            return None  # a half-open probe is out; its release wakes us
        return self.capacity.wait(lane, demand, now)

    def retry_after(self, lanes: Sequence[Lane], now: float, demand: Demand = NO_DEMAND) -> int:
        """Whole seconds until the soonest lane is likely to take a request again, rounded up, at least
        1: for each, the last of its breaker's reopening, its exclusions' end and its capacity's wait
        (back-off, next token). The ``Retry-After`` of both our 429 (queue) and our 503 (all ejected)."""
        waits = []
        for lane in lanes:
            state = lane.provider
            ends = [u - now for u in (*lane.excluded.values(), *state.excluded.values())]
            capacity = self.capacity.wait(lane, demand, now)
            waits.append(max(state.health.retry_in, *ends, capacity if capacity is not None else 1.0))
        return max(1, math.ceil(min(waits, default=1.0)))
