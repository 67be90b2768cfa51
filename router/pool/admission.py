"""The admission queue: a request gets a slot at one of its ranked candidates, now or in FIFO order later.

A request takes the first candidate that is available (breaker, exclusions), has a free concurrency slot,
no 429 back-off and a token. If none has, it queues. One pump task hands freed capacity to queued requests
in arrival order; it wakes when a slot is released, when a bucket's next token is due (a refill task waits
for it in aiolimiter and banks it), or when a back-off or cooldown ends. A request still queued at its
deadline gets ``Saturated`` (429) with a ``Retry-After`` estimate.
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
from router.pool.health import BreakerState
from router.pool.limits import Gate
from router.pool.providers import ProviderState

DEFAULT_MAX_QUEUED = 10_000


class _Waiter:
    __slots__ = ("candidates", "future")

    def __init__(self, candidates: Sequence[ProviderState], future: asyncio.Future[ProviderState]) -> None:
        self.candidates = candidates
        self.future = future


class Admission:
    """Hands out provider slots. ``async with Admission() as admission:`` runs its pump task.

    ``acquire`` returns the provider whose slot the caller now holds; the caller must ``release`` it
    exactly once, also on error and cancellation.
    """

    def __init__(
        self, *, clock: Callable[[], float] | None = None, max_queued: int = DEFAULT_MAX_QUEUED
    ) -> None:
        self._clock = clock
        self._max_queued = max_queued
        self._waiters: deque[_Waiter] = deque()
        self._changed = asyncio.Event()
        self._refills: dict[Gate, asyncio.Task[None]] = {}
        self._pump: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Admission queued={len(self._waiters)} refills={len(self._refills)}>"

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
        tasks = [t for t in (self._pump, *self._refills.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._refills.clear()

    def now(self) -> float:
        assert self._clock is not None, "Admission is not entered"
        return self._clock()

    async def acquire(self, candidates: Sequence[ProviderState], deadline: float) -> ProviderState:
        """A slot at the first ready candidate, waiting in the queue until ``deadline`` (clock time)."""
        now = self.now()
        if not self._waiters:
            for state in candidates:
                if _ready(state, now):
                    await _take(state)
                    return state
        if len(self._waiters) >= self._max_queued:
            raise Saturated(
                "the admission queue is full", headers={"Retry-After": str(retry_after(candidates, now))}
            )
        waiter = _Waiter(candidates, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self._changed.set()
        try:
            async with asyncio.timeout(max(0.0, deadline - now)):
                return await waiter.future
        except BaseException as exc:
            future = waiter.future
            if future.done() and not future.cancelled():
                # The pump handed us a slot (and maybe a half-open probe) just as we gave up: give both back.
                state = future.result()
                state.health.abandon()
                self.release(state)
            if isinstance(exc, TimeoutError):
                retry = retry_after(candidates, self.now())
                raise Saturated(
                    "every provider for this request is at its rate or concurrency limit; "
                    f"try again in {retry} s",
                    headers={"Retry-After": str(retry)},
                ) from None
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def release(self, state: ProviderState) -> None:
        """Give back a slot taken by ``acquire``; wakes the queue. Synchronous, so safe in ``finally``."""
        state.gate.release()
        self.wake()

    def wake(self) -> None:
        """Something changed (a slot, a breaker, an exclusion): let the pump look at the queue again."""
        if self._waiters:
            self._changed.set()

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
        """Serve queued requests in order; return how long until a blocked candidate may open up."""
        now = self.now()
        blocked: set[int] = set()
        soonest: float | None = None
        for waiter in list(self._waiters):
            if waiter.future.done():
                continue
            for state in waiter.candidates:
                if id(state) in blocked:
                    continue
                if _ready(state, now):
                    await _take(state)
                    waiter.future.set_result(state)
                    self._waiters.remove(waiter)
                    break
                blocked.add(id(state))
                wait = self._until_open(state, now)
                if wait is not None:
                    soonest = wait if soonest is None else min(soonest, wait)
        return soonest

    def _until_open(self, state: ProviderState, now: float) -> float | None:
        """Seconds until ``state`` may be ready, or None when a release or refill will wake us anyway."""
        if state.excluded_at(now) is not None:
            return max(0.0, min(until for until in state.excluded.values() if until > now) - now)
        if state.health.state is BreakerState.OPEN:
            return state.health.retry_in
        if not state.health.admits():
            return None  # a half-open probe is out; its release wakes us
        gate = state.gate
        if gate.in_flight >= gate.max_concurrent:
            return None
        if now < gate.blocked_until:
            return gate.blocked_until - now
        if gate not in self._refills:
            task = asyncio.create_task(gate.refill(), name="admission-refill")
            self._refills[gate] = task
            task.add_done_callback(lambda _: self._refilled(gate))
        return None

    def _refilled(self, gate: Gate) -> None:
        self._refills.pop(gate, None)
        self._changed.set()


def _ready(state: ProviderState, now: float) -> bool:
    return state.available(now) and state.gate.has_room(now) and state.gate.has_token()


async def _take(state: ProviderState) -> None:
    state.health.begin()
    await state.gate.take()


def retry_after(candidates: Sequence[ProviderState], now: float) -> int:
    """Whole seconds until the soonest candidate is likely to take a request again, rounded up, at least
    1: for each, the last of its breaker's reopening, its exclusion's end, its 429 back-off's end and its
    next token. The ``Retry-After`` of both our 429 (queue) and our 503 (every candidate ejected)."""
    waits = [
        max(
            state.gate.blocked_until - now,
            state.health.retry_in,
            max(state.excluded.values(), default=now) - now,
            state.gate.seconds_per_request,
        )
        for state in candidates
    ]
    return max(1, math.ceil(min(waits, default=1.0)))
