"""Helpers the pool tests share: providers with lanes, counted by a real ``MemoryCapacity``, and two other
``Capacity`` backends built on it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from router.pool.capacity import NO_DEMAND, Demand, LaneView, Lease, MemoryCapacity
from router.pool.health import Health
from router.pool.limits import ProviderLimits
from router.pool.providers import Lane, ProviderInfo, ProviderKind, ProviderState

# Two paying wallets, as the pool lowercases them.
W1 = "0x" + "a1" * 20
W2 = "0x" + "b2" * 20
# Limits no test meets unless it lowers one of them: 100 requests a second, 99 at once from the bucket.
ROOMY: dict[str, Any] = {"requests_per_minute": 6000, "burst": 100, "max_concurrent": 10}
# A token budget of 1000 (its context length; a sixth of 6000 is less) that refills 100 a second.
TOKENS: dict[str, Any] = {"tokens_per_minute": 6000, "context_length": 1000}
# An image budget of 10 (a sixth of 60) that refills one a second.
IMAGES: dict[str, Any] = {"images_per_minute": 60}


def roomy(**fields: Any) -> ProviderLimits:
    """``ROOMY`` limits with ``fields`` instead."""
    return ProviderLimits(**{**ROOMY, **fields})


def info(
    name: str,
    limits: ProviderLimits | None = None,
    *,
    kind: ProviderKind = ProviderKind.STATIC,
    service_type: str = "chatbot",
) -> ProviderInfo:
    return ProviderInfo(
        id=name,
        kind=kind,
        base_url=f"http://{name}.test/v1",
        probe_url=f"http://{name}.test/v1/models",
        service_type=service_type,
        models=("model-a",),
        limits=limits or ProviderLimits(),
    )


def provider(
    name: str,
    clock: Callable[[], float],
    limits: ProviderLimits | None = None,
    *,
    wallets: Sequence[str | None] = (None,),
    service_type: str = "chatbot",
) -> ProviderState:
    """A provider whose breaker runs on ``clock``, with one lane per wallet (one static lane by default)."""
    kind = ProviderKind.STATIC if tuple(wallets) == (None,) else ProviderKind.CHAIN
    return ProviderState(
        info(name, limits, kind=kind, service_type=service_type), Health(clock=clock), wallets
    )


def counted(capacity: MemoryCapacity, *states: ProviderState) -> None:
    """Let ``capacity`` count every lane of ``states`` under its advertised limits."""
    for state in states:
        for lane in state.lanes:
            capacity.configure(lane, state.info.limits)


def take(capacity: MemoryCapacity, *lanes: Lane, demand: Demand = NO_DEMAND) -> Lease:
    """A lease on the first of ``lanes`` that admits ``demand`` now; fails the test if none does."""
    lease = capacity.try_acquire(lanes, demand, capacity.clock())
    assert lease is not None, f"none of {lanes} admitted {demand}"
    return lease


def lane_of(capacity: MemoryCapacity, clock: Callable[[], float], limits: ProviderLimits) -> Lane:
    """The one static lane of a new provider ``p`` with ``limits``, counted by ``capacity``."""
    state = provider("p", clock, limits)
    counted(capacity, state)
    return state.lanes[0]


def two_wallets(
    capacity: MemoryCapacity, clock: Callable[[], float], limits: ProviderLimits
) -> ProviderState:
    """A new chain provider ``0xp`` with a lane for each of ``W1`` and ``W2``, counted by ``capacity``."""
    state = provider("0xp", clock, limits, wallets=(W1, W2))
    counted(capacity, state)
    return state


def admitted(capacity: MemoryCapacity, *lanes: Lane, demand: Demand | None = None) -> int:
    """How many requests ``lanes`` admit one after another right now (their leases stay out)."""
    count = 0
    while capacity.try_acquire(lanes, demand or Demand(), capacity.clock()) is not None:
        count += 1
        assert count < 1000
    return count


def refused(capacity: MemoryCapacity, lane: Lane, demand: Demand | None = None) -> bool:
    return capacity.try_acquire([lane], demand or Demand(), capacity.clock()) is None


def view(capacity: MemoryCapacity, lane: Lane) -> LaneView:
    return capacity.view(lane, capacity.clock())


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the loop (zero-length sleeps, no waiting on time) until ``condition`` holds."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    pytest.fail("the condition never held")


class Backend:
    """Another ``Capacity`` backend, as the protocol allows (a shared store, a stricter rule): it counts
    with a real ``MemoryCapacity`` and changes what its subclass says."""

    def __init__(self, inner: MemoryCapacity) -> None:
        self.inner = inner

    @property
    def on_change(self) -> Callable[[], None]:
        return self.inner.on_change

    @on_change.setter
    def on_change(self, hook: Callable[[], None]) -> None:
        self.inner.on_change = hook

    def configure(self, lane: Lane, limits: ProviderLimits) -> None:
        self.inner.configure(lane, limits)

    def forget(self, lane: Lane) -> None:
        self.inner.forget(lane)

    async def acquire(self, lanes: Sequence[Lane], demand: Demand, now: float) -> Lease | None:
        return self.inner.try_acquire(lanes, demand, now)

    def wait(self, lane: Lane, demand: Demand, now: float) -> float | None:
        return self.inner.wait(lane, demand, now)

    def back_off(self, lane: Lane, until: float) -> None:
        self.inner.back_off(lane, until)

    def hold_off(self, provider: str, until: float) -> None:
        self.inner.hold_off(provider, until)

    def load(self, lane: Lane) -> float:
        return self.inner.load(lane)

    def view(self, lane: Lane, now: float) -> LaneView:
        return self.inner.view(lane, now)


class Strict(Backend):
    """Stricter than the broker's post-consume rule: a request goes only when the lane's token level
    covers all of its demand."""

    def __init__(self, inner: MemoryCapacity, *, tokens_per_second: float) -> None:
        super().__init__(inner)
        self.rate = tokens_per_second

    def covers(self, lane: Lane, demand: Demand, now: float) -> bool:
        tokens = self.inner.view(lane, now).tokens
        return tokens is None or tokens >= demand.tokens

    async def acquire(self, lanes: Sequence[Lane], demand: Demand, now: float) -> Lease | None:
        return self.inner.try_acquire([one for one in lanes if self.covers(one, demand, now)], demand, now)

    def wait(self, lane: Lane, demand: Demand, now: float) -> float | None:
        wait = self.inner.wait(lane, demand, now)
        tokens = self.inner.view(lane, now).tokens
        if wait is None or tokens is None:
            return wait
        return max(wait, (demand.tokens - tokens) / self.rate)


class Remote(Backend):
    """A shared store: while ``slow``, ``acquire`` awaits its answer, which the test gives with
    ``answer.set()``."""

    def __init__(self, inner: MemoryCapacity) -> None:
        super().__init__(inner)
        self.slow = False
        self.asked = False
        self.answer = asyncio.Event()

    async def acquire(self, lanes: Sequence[Lane], demand: Demand, now: float) -> Lease | None:
        if self.slow:
            self.asked = True
            await self.answer.wait()
            self.asked = False
        return await super().acquire(lanes, demand, now)
