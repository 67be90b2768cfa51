"""The admission queue: immediate slots in rank order, FIFO waiting, deadlines, cancellation, the buckets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from router.errors import Saturated
from router.pool.admission import Admission
from router.pool.health import Health
from router.pool.limits import Gate, ProviderLimits
from router.pool.providers import Exclusion, ProviderInfo, ProviderKind, ProviderState
from tests.support import FakeClock

FAR = 30.0  # seconds: a deadline no test reaches unless it means to


def provider(name: str, clock: FakeClock, **limits: float) -> ProviderState:
    """A provider whose breaker runs on ``clock``; limits default to roomy unless given."""
    info = ProviderInfo(
        id=name,
        kind=ProviderKind.STATIC,
        base_url=f"http://{name}.test/v1",
        probe_url=f"http://{name}.test/v1/models",
        service_type="chatbot",
        models=("model-a",),
        limits=ProviderLimits(**{"requests_per_minute": 6000, "burst": 100, "max_concurrent": 10, **limits}),
    )
    return ProviderState(info, Health(clock=clock), Gate(info.limits))


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the loop (zero-length sleeps, no waiting on time) until ``condition`` holds."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    pytest.fail("the condition never held")


def admission_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t.get_name().startswith("admission")}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def admission() -> AsyncIterator[Admission]:
    async with Admission() as running:
        yield running
        assert running.queued == 0, "a test left requests in the queue"


def later(admission: Admission, seconds: float = FAR) -> float:
    return admission.now() + seconds


def enqueue(admission: Admission, candidates: list[ProviderState]) -> asyncio.Task[ProviderState]:
    return asyncio.create_task(admission.acquire(candidates, later(admission)))


class TestImmediate:
    async def test_a_free_provider_gives_a_slot_at_once(self, admission: Admission, clock: FakeClock) -> None:
        """With room and a token, ``acquire`` returns the provider and counts the slot."""
        a = provider("a", clock)
        assert await admission.acquire([a], later(admission)) is a
        assert a.gate.in_flight == 1
        admission.release(a)
        assert a.gate.in_flight == 0

    async def test_the_first_ready_candidate_in_rank_order_wins(
        self, admission: Admission, clock: FakeClock
    ) -> None:
        """Rank order decides while the first has room; a full first candidate passes to the next."""
        a, b = provider("a", clock, max_concurrent=1), provider("b", clock)
        assert await admission.acquire([a, b], later(admission)) is a
        assert await admission.acquire([a, b], later(admission)) is b
        assert (a.gate.in_flight, b.gate.in_flight) == (1, 1)

    @pytest.mark.parametrize(
        "shut",
        [
            lambda a, now: a.health.cool_down(10.0),
            lambda a, now: a.exclude(Exclusion.UNFUNDED, now + FAR),
            lambda a, now: a.gate.back_off(now + FAR),
        ],
        ids=["breaker-open", "excluded", "backed-off"],
    )
    async def test_a_candidate_that_cannot_take_requests_is_skipped(
        self, admission: Admission, clock: FakeClock, shut: Callable[[ProviderState, float], object]
    ) -> None:
        """An open breaker, an exclusion or a 429 back-off passes the request to the next candidate."""
        a, b = provider("a", clock), provider("b", clock)
        shut(a, admission.now())
        assert await admission.acquire([a, b], later(admission)) is b
        assert a.gate.in_flight == 0


class TestQueue:
    async def test_a_queued_request_gets_the_slot_another_releases(
        self, admission: Admission, clock: FakeClock
    ) -> None:
        """All candidates at their cap: the request waits, then takes the slot a release frees."""
        a = provider("a", clock, max_concurrent=1)
        await admission.acquire([a], later(admission))
        waiter = enqueue(admission, [a])
        await until(lambda: admission.queued == 1)
        admission.release(a)
        assert await waiter is a
        assert a.gate.in_flight == 1
        assert admission.queued == 0

    async def test_queued_requests_are_served_in_arrival_order(
        self, admission: Admission, clock: FakeClock
    ) -> None:
        """Three waiters on one slot get it one release at a time, first come first served."""
        a = provider("a", clock, max_concurrent=1)
        await admission.acquire([a], later(admission))
        waiters = []
        for n in range(3):
            waiters.append(enqueue(admission, [a]))
            await until(lambda n=n: admission.queued == n + 1)
        for n, waiter in enumerate(waiters):
            admission.release(a)
            assert await waiter is a
            assert [w.done() for w in waiters] == [True] * (n + 1) + [False] * (2 - n)
        admission.release(a)
        assert a.gate.in_flight == 0

    async def test_a_newcomer_does_not_overtake_the_queue(
        self, admission: Admission, clock: FakeClock
    ) -> None:
        """A slot that frees before the pump looks goes to the queued request, not to a new arrival."""
        a, b = provider("a", clock, max_concurrent=1), provider("b", clock)
        await admission.acquire([a], later(admission))
        first = enqueue(admission, [a])
        await until(lambda: admission.queued == 1)
        assert await enqueue(admission, [b]) is b  # a free candidate still serves; the pump is idle after
        a.gate.release()  # a slot frees without waking the pump
        second = enqueue(admission, [a])
        await until(lambda: first.done() or second.done())
        assert (first.done(), second.done()) == (True, False)
        assert first.result() is a
        admission.release(a)
        assert await second is a
        admission.release(a)

    async def test_a_waiter_blocked_by_a_back_off_is_served_when_it_ends(
        self, admission: Admission, clock: FakeClock
    ) -> None:
        """The pump wakes by itself when the only candidate's back-off is over."""
        a = provider("a", clock)
        a.gate.back_off(later(admission, 0.02))
        assert await admission.acquire([a], later(admission)) is a
        assert admission.now() >= a.gate.blocked_until

    async def test_a_waiter_blocked_only_by_the_bucket_is_served_when_it_refills(
        self, admission: Admission, clock: FakeClock
    ) -> None:
        """With room but no token, a request waits for the bucket's next token (10 ms at 6000/min)."""
        a = provider("a", clock, requests_per_minute=6000, burst=1)
        await admission.acquire([a], later(admission))
        took_first = admission.now()
        assert await admission.acquire([a], later(admission)) is a
        assert admission.now() - took_first >= 0.01 - 1e-6
        assert a.gate.in_flight == 2

    async def test_tokens_handed_out_never_exceed_burst_plus_rate(
        self, admission: Admission, clock: FakeClock
    ) -> None:
        """Thirty requests racing for 0.3 s at 600/min, burst 2: at most 2 + 10/s x elapsed get a slot."""
        a = provider("a", clock, requests_per_minute=600, burst=2, max_concurrent=100)
        start = admission.now()
        served: list[float] = []

        async def request() -> None:
            await admission.acquire([a], start + 0.3)
            served.append(admission.now())

        results = await asyncio.gather(*(request() for _ in range(30)), return_exceptions=True)
        assert all(r is None or isinstance(r, Saturated) for r in results)
        assert max(served) - start >= 0.1 - 1e-6, "nobody was served from a refill"
        assert len(served) <= 2 + 10 * (max(served) - start) + 1e-6
        assert a.gate.in_flight == len(served)


class TestDeadline:
    async def test_a_request_still_queued_at_its_deadline_is_saturated(
        self, admission: Admission, clock: FakeClock
    ) -> None:
        """429 with a whole-second Retry-After; the queue is empty and no slot changed hands."""
        a, b = provider("a", clock, max_concurrent=1), provider("b", clock, max_concurrent=1)
        await admission.acquire([a], later(admission))
        await admission.acquire([b], later(admission))
        with pytest.raises(Saturated) as caught:
            await admission.acquire([a, b], later(admission, 0.02))
        assert caught.value.status == 429
        assert int(caught.value.headers["Retry-After"]) >= 1
        assert admission.queued == 0
        assert (a.gate.in_flight, b.gate.in_flight) == (1, 1)

    async def test_a_full_queue_refuses_at_once(self, clock: FakeClock) -> None:
        """Past ``max_queued`` a request gets Saturated without waiting for its deadline."""
        a = provider("a", clock, max_concurrent=1)
        async with Admission(max_queued=1) as admission:
            await admission.acquire([a], later(admission))
            waiter = enqueue(admission, [a])
            await until(lambda: admission.queued == 1)
            async with asyncio.timeout(1.0):
                with pytest.raises(Saturated) as caught:
                    await admission.acquire([a], later(admission))
            assert int(caught.value.headers["Retry-After"]) >= 1
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert (a.gate.in_flight, admission.queued) == (1, 0)

    @pytest.mark.parametrize(
        ("setup", "retry_after"),
        [
            (lambda a, b, now: None, "2"),  # one token per 2 s at 30/min
            (lambda a, b, now: a.gate.back_off(now + 7.5), "2"),  # b is the sooner
            (lambda a, b, now: (a.gate.back_off(now + 7.5), b.gate.back_off(now + 4.5)), "5"),
            (lambda a, b, now: (a.health.cool_down(3.5), b.health.cool_down(9)), "4"),
        ],
    )
    async def test_retry_after_is_the_soonest_candidates_wait_rounded_up(
        self, clock: FakeClock, setup: Callable[..., object], retry_after: str
    ) -> None:
        """Retry-After: the smallest over candidates of back-off, cooldown and token interval, ceiled."""
        a = provider("a", clock, requests_per_minute=30, max_concurrent=1)
        b = provider("b", clock, requests_per_minute=30, max_concurrent=1)
        async with Admission(max_queued=0) as admission:
            a.gate.in_flight = b.gate.in_flight = 1
            setup(a, b, admission.now())
            with pytest.raises(Saturated) as caught:
                await admission.acquire([a, b], later(admission))
        assert caught.value.headers == {"Retry-After": retry_after}


class TestCancellation:
    async def test_a_cancelled_waiter_leaves_the_queue_and_takes_nothing(
        self, admission: Admission, clock: FakeClock
    ) -> None:
        """Cancelling a queued request empties the queue; the next release is not handed to it."""
        a = provider("a", clock, max_concurrent=1)
        await admission.acquire([a], later(admission))
        waiter = enqueue(admission, [a])
        await until(lambda: admission.queued == 1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert (admission.queued, a.gate.in_flight) == (0, 1)
        admission.release(a)
        assert a.gate.in_flight == 0

    async def test_a_slot_handed_over_as_the_waiter_is_cancelled_goes_back(
        self, admission: Admission, clock: FakeClock
    ) -> None:
        """The pump gave the waiter a slot, but the waiter was cancelled before it ran: the slot returns."""
        a = provider("a", clock, max_concurrent=1)
        await admission.acquire([a], later(admission))
        waiter = enqueue(admission, [a])
        await until(lambda: admission.queued == 1)
        admission.release(a)
        await until(lambda: admission.queued == 0)  # the pump has handed the slot over
        assert not waiter.done()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert a.gate.in_flight == 0
        assert await admission.acquire([a], later(admission)) is a
        admission.release(a)

    async def test_a_half_open_probe_handed_over_as_the_waiter_is_cancelled_is_freed(
        self, admission: Admission, clock: FakeClock
    ) -> None:
        """The handed-back slot was a half-open breaker's one probe: the probe must free up too."""
        a = provider("a", clock, max_concurrent=1)
        a.health.cool_down(5.0)
        clock.now += 5.0
        await admission.acquire([a], later(admission))  # the probe
        waiter = enqueue(admission, [a])
        await until(lambda: admission.queued == 1)
        a.health.abandon()  # the probe ended with no verdict, as dispatch reports it
        admission.release(a)
        await until(lambda: admission.queued == 0)
        assert not waiter.done()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert a.gate.in_flight == 0
        assert a.health.admits(), "the breaker stays half-open with a probe nobody holds"


class TestLifecycle:
    async def test_leaving_cancels_the_pump_and_refill_tasks(self, clock: FakeClock) -> None:
        """After ``async with`` no admission task is left running."""
        slow = provider("a", clock, requests_per_minute=1, burst=1)
        async with Admission() as admission:
            await admission.acquire([slow], later(admission))
            waiter = enqueue(admission, [slow])
            await until(lambda: "refills=1" in repr(admission))
            tasks = admission_tasks()
            assert sorted(t.get_name() for t in tasks) == ["admission-pump", "admission-refill"]
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
        assert admission_tasks() == set()
        assert all(t.cancelled() for t in tasks)
        assert repr(admission) == "<Admission queued=0 refills=0>"
