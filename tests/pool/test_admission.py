"""The admission queue over lanes: immediate leases in rank order, FIFO waiting, wake-ups on release and on
refill, deadlines, cancellation and the pump's lifecycle."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from router.errors import Saturated
from router.pool.admission import Admission
from router.pool.capacity import NO_DEMAND, Demand, Lease, MemoryCapacity
from router.pool.limits import ProviderLimits
from router.pool.providers import Exclusion, Lane
from tests.pool.support import W1, W2, Remote, Strict, counted, provider, roomy, take, until
from tests.support import FakeClock

FAR = 30.0  # seconds: a deadline no test reaches unless it means to


def admission_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t.get_name().startswith("admission")}


@pytest.fixture
async def capacity() -> MemoryCapacity:
    """Lane capacity on the running loop's clock, which the admission pump's timers run on too."""
    return MemoryCapacity(clock=asyncio.get_running_loop().time)


@pytest.fixture
async def admission(capacity: MemoryCapacity) -> AsyncIterator[Admission]:
    async with Admission(capacity) as running:
        yield running
        assert running.queued == 0, "a test left requests in the queue"


def lanes(
    capacity: MemoryCapacity,
    name: str,
    limits: ProviderLimits | None = None,
    *,
    wallets: Sequence[str | None] = (None,),
) -> list[Lane]:
    """The lanes of a new provider ``name`` (health on the loop clock), counted by ``capacity``."""
    state = provider(name, capacity.clock, limits or roomy(), wallets=wallets)
    counted(capacity, state)
    return list(state.lanes)


def lane(capacity: MemoryCapacity, name: str, limits: ProviderLimits | None = None) -> Lane:
    (only,) = lanes(capacity, name, limits)
    return only


def later(admission: Admission, seconds: float = FAR) -> float:
    return admission.now() + seconds


def enqueue(
    admission: Admission, candidates: Sequence[Lane], demand: Demand = NO_DEMAND
) -> asyncio.Task[Lease]:
    return asyncio.create_task(admission.acquire(candidates, later(admission), demand))


def in_flight(capacity: MemoryCapacity, *of: Lane) -> tuple[int, ...]:
    return tuple(capacity.view(one, capacity.clock()).in_flight for one in of)


class TestImmediate:
    async def test_a_free_lane_gives_a_lease_at_once(
        self, admission: Admission, capacity: MemoryCapacity
    ) -> None:
        """With room and a request token, ``acquire`` returns a lease on the lane and counts it."""
        a = lane(capacity, "a")
        lease = await admission.acquire([a], later(admission))
        assert lease.lane is a
        assert in_flight(capacity, a) == (1,)
        lease.release()
        assert in_flight(capacity, a) == (0,)

    async def test_the_first_ready_lane_in_rank_order_wins(
        self, admission: Admission, capacity: MemoryCapacity
    ) -> None:
        """Rank order decides while the first has room; a full first lane passes to the next."""
        a, b = lane(capacity, "a", roomy(max_concurrent=1)), lane(capacity, "b")
        assert (await admission.acquire([a, b], later(admission))).lane is a
        assert (await admission.acquire([a, b], later(admission))).lane is b
        assert in_flight(capacity, a, b) == (1, 1)

    @pytest.mark.parametrize(
        "shut",
        [
            lambda a, capacity, now: a.provider.health.cool_down(10.0),
            lambda a, capacity, now: a.provider.exclude(Exclusion.UNFUNDED, now + FAR),
            lambda a, capacity, now: a.exclude(Exclusion.MISCONFIGURED, now + FAR),
            lambda a, capacity, now: capacity.back_off(a, now + FAR),
            lambda a, capacity, now: capacity.hold_off(a.provider.id, now + FAR),
        ],
        ids=["breaker-open", "provider-excluded", "lane-excluded", "backed-off", "held-off"],
    )
    async def test_a_lane_that_cannot_take_requests_is_skipped(
        self,
        admission: Admission,
        capacity: MemoryCapacity,
        shut: Callable[[Lane, MemoryCapacity, float], object],
    ) -> None:
        """An open breaker, an exclusion of the provider or of the lane, a 429 back-off or a 503 hold-off
        passes the request to the next lane."""
        a, b = lane(capacity, "a"), lane(capacity, "b")
        shut(a, capacity, admission.now())
        assert (await admission.acquire([a, b], later(admission))).lane is b
        assert in_flight(capacity, a) == (0,)

    async def test_the_second_wallet_serves_once_the_first_is_full(
        self, admission: Admission, capacity: MemoryCapacity
    ) -> None:
        """Two wallets at a provider with a cap of 1 take two requests at once, one on each lane."""
        one, two = lanes(capacity, "0xp", roomy(max_concurrent=1), wallets=(W1, W2))
        assert (await admission.acquire([one, two], later(admission))).lane is one
        assert (await admission.acquire([one, two], later(admission))).lane is two

    async def test_a_half_open_breaker_lets_one_probe_through(
        self, admission: Admission, capacity: MemoryCapacity
    ) -> None:
        """After the cooldown one request goes as the probe; the next one goes elsewhere meanwhile."""
        health_clock = FakeClock()
        a = provider("a", health_clock, roomy())
        counted(capacity, a)
        b = lane(capacity, "b")
        a.health.cool_down(5.0)
        health_clock.now += 5.0
        probe = await admission.acquire([a.lanes[0], b], later(admission))
        assert probe.lane is a.lanes[0]
        assert not a.health.admits(), "the probe is out"
        assert (await admission.acquire([a.lanes[0], b], later(admission))).lane is b


class TestQueue:
    async def test_a_queued_request_gets_the_lease_a_release_frees(
        self, admission: Admission, capacity: MemoryCapacity
    ) -> None:
        """Every lane at its cap: the request waits, and the release wakes the queue (``on_change``)."""
        a = lane(capacity, "a", roomy(max_concurrent=1))
        held = await admission.acquire([a], later(admission))
        waiter = enqueue(admission, [a])
        await until(lambda: admission.queued == 1)
        held.release()
        assert (await waiter).lane is a
        assert in_flight(capacity, a) == (1,)
        assert admission.queued == 0

    async def test_queued_requests_are_served_in_arrival_order(
        self, admission: Admission, capacity: MemoryCapacity
    ) -> None:
        """Three waiters on one slot get it one release at a time, first come first served."""
        a = lane(capacity, "a", roomy(max_concurrent=1))
        held = await admission.acquire([a], later(admission))
        waiters = []
        for n in range(3):
            waiters.append(enqueue(admission, [a]))
            await until(lambda n=n: admission.queued == n + 1)
        for n, waiter in enumerate(waiters):
            held.release()
            held = await waiter
            assert [w.done() for w in waiters] == [True] * (n + 1) + [False] * (2 - n)
        held.release()
        assert in_flight(capacity, a) == (0,)

    async def test_a_newcomer_does_not_overtake_the_queue(
        self, admission: Admission, capacity: MemoryCapacity
    ) -> None:
        """A slot that opens before the pump looks (new limits: no release, so no wake-up) goes to the
        queued request, not to a new arrival, who queues behind it."""
        a = lane(capacity, "a", roomy(max_concurrent=1))
        await admission.acquire([a], later(admission))
        first = enqueue(admission, [a])
        await until(lambda: admission.queued == 1)
        capacity.configure(a, roomy(max_concurrent=2))
        second = enqueue(admission, [a])
        await until(lambda: first.done() or second.done())
        assert (first.done(), second.done()) == (True, False)
        assert first.result().lane is a
        first.result().release()
        assert (await second).lane is a

    async def test_a_free_lane_still_serves_a_newcomer_behind_a_blocked_waiter(
        self, admission: Admission, capacity: MemoryCapacity
    ) -> None:
        """The queue is FIFO per lane: a request for another, free lane does not wait behind one that is
        waiting for a full lane."""
        a, b = lane(capacity, "a", roomy(max_concurrent=1)), lane(capacity, "b")
        held = await admission.acquire([a], later(admission))
        first = enqueue(admission, [a])
        await until(lambda: admission.queued == 1)
        assert (await enqueue(admission, [b])).lane is b
        assert not first.done()
        held.release()
        assert (await first).lane is a

    async def test_a_lane_that_could_not_serve_an_earlier_waiter_is_not_given_to_a_later_one(
        self, capacity: MemoryCapacity
    ) -> None:
        """With a backend that admits a request only when its level covers the whole demand, a large
        request queued first is not starved by a small one behind it: the small one could go now (300
        tokens left, it wants 100) but waits until the large one has had the lane."""
        strict = Strict(capacity, tokens_per_second=2000)
        a = lane(capacity, "a", roomy(tokens_per_minute=120_000, token_burst=1000))
        finished: list[str] = []
        async with Admission(strict) as admission:
            held = await admission.acquire([a], later(admission), Demand(tokens=700))
            big = enqueue(admission, [a], Demand(tokens=900))
            await until(lambda: admission.queued == 1)
            small = enqueue(admission, [a], Demand(tokens=100))
            big.add_done_callback(lambda _: finished.append("big"))
            small.add_done_callback(lambda _: finished.append("small"))
            await until(lambda: admission.queued == 2)
            for _ in range(10):
                await asyncio.sleep(0)
            assert not small.done()
            assert strict.covers(a, Demand(tokens=100), admission.now())
            leases = [held, await big, await small]
        assert finished == ["big", "small"]
        for lease in leases:
            lease.release()

    async def test_a_waiter_is_served_when_the_request_bucket_refills_without_a_release(
        self, admission: Admission, capacity: MemoryCapacity
    ) -> None:
        """With room but no request token, a request waits for the next token (10 ms at 6000/min): the
        pump wakes by itself at the refill time."""
        a = lane(capacity, "a", roomy(burst=2))
        await admission.acquire([a], later(admission))
        took_first = admission.now()
        assert (await admission.acquire([a], later(admission))).lane is a
        assert admission.now() - took_first >= 0.01 - 1e-6
        assert in_flight(capacity, a) == (2,)

    @pytest.mark.parametrize(
        "shut",
        [
            lambda a, capacity, until: capacity.back_off(a, until),
            lambda a, capacity, until: capacity.hold_off(a.provider.id, until),
            lambda a, capacity, until: a.exclude(Exclusion.UNFUNDED, until),
            lambda a, capacity, until: a.provider.exclude(Exclusion.MISCONFIGURED, until),
        ],
        ids=["back-off", "hold-off", "lane-exclusion", "provider-exclusion"],
    )
    async def test_a_waiter_is_served_when_what_shut_the_lane_ends(
        self,
        admission: Admission,
        capacity: MemoryCapacity,
        shut: Callable[[Lane, MemoryCapacity, float], object],
    ) -> None:
        """The pump sleeps until the soonest end of a back-off, hold-off or exclusion, then serves."""
        a = lane(capacity, "a")
        ends = later(admission, 0.02)
        shut(a, capacity, ends)
        assert (await admission.acquire([a], later(admission))).lane is a
        assert admission.now() >= ends

    async def test_a_waiter_is_served_as_the_probe_when_the_cooldown_ends(
        self, admission: Admission, capacity: MemoryCapacity
    ) -> None:
        """An open breaker's cooldown ends by the clock alone: the pump wakes then and sends the waiter as the
        half-open probe."""
        a = lane(capacity, "a")
        ends = later(admission, 0.02)
        a.provider.health.cool_down(0.02)
        assert (await admission.acquire([a], later(admission))).lane is a
        assert admission.now() >= ends
        assert not a.provider.health.admits(), "the request went as the half-open breaker's probe"

    async def test_a_waiter_is_served_when_the_token_budget_is_above_zero_again(
        self, admission: Admission, capacity: MemoryCapacity
    ) -> None:
        """An overdrawn budget (-100 at 10000 tokens/s) opens again 10 ms later, by the refill alone."""
        a = lane(capacity, "a", roomy(tokens_per_minute=600_000, token_burst=1000))
        await admission.acquire([a], later(admission), Demand(tokens=1100))
        took_first = admission.now()
        assert (await admission.acquire([a], later(admission), Demand(tokens=10))).lane is a
        assert admission.now() - took_first >= 0.01 - 1e-6

    async def test_wake_lets_the_pump_see_an_exclusion_lifted_early(
        self, admission: Admission, capacity: MemoryCapacity
    ) -> None:
        """An exclusion ends before its time (a top-up landed): ``wake`` serves the waiter at once instead
        of at the exclusion's end, far away."""
        a = lane(capacity, "a")
        a.exclude(Exclusion.UNFUNDED, later(admission))
        waiter = enqueue(admission, [a])
        await until(lambda: admission.queued == 1)
        a.excluded.clear()
        admission.wake()
        async with asyncio.timeout(1.0):
            assert (await waiter).lane is a

    async def test_requests_handed_out_never_exceed_burst_plus_rate(
        self, admission: Admission, capacity: MemoryCapacity
    ) -> None:
        """Thirty requests racing for 0.3 s at 600/min with burst 3 (our bucket holds 2): at most
        2 + 10/s x elapsed get a lease."""
        a = lane(capacity, "a", ProviderLimits(requests_per_minute=600, burst=3, max_concurrent=100))
        start = admission.now()
        served: list[float] = []

        async def request() -> None:
            await admission.acquire([a], start + 0.3)
            served.append(admission.now())

        results = await asyncio.gather(*(request() for _ in range(30)), return_exceptions=True)
        assert all(r is None or isinstance(r, Saturated) for r in results)
        assert max(served) - start >= 0.1 - 1e-6, "nobody was served from a refill"
        assert len(served) <= 2 + 10 * (max(served) - start) + 1e-6
        assert in_flight(capacity, a) == (len(served),)


class TestDeadline:
    async def test_a_request_still_queued_at_its_deadline_is_saturated(
        self, admission: Admission, capacity: MemoryCapacity
    ) -> None:
        """429 with a whole-second Retry-After that the message repeats; the queue is empty and no lease
        changed hands."""
        a, b = lane(capacity, "a", roomy(max_concurrent=1)), lane(capacity, "b", roomy(max_concurrent=1))
        await admission.acquire([a], later(admission))
        await admission.acquire([b], later(admission))
        with pytest.raises(Saturated) as caught:
            await admission.acquire([a, b], later(admission, 0.02))
        assert caught.value.status == 429
        retry = caught.value.headers["Retry-After"]
        assert int(retry) >= 1
        assert f"try again in {retry} s" in str(caught.value)
        assert admission.queued == 0
        assert in_flight(capacity, a, b) == (1, 1)

    async def test_a_full_queue_refuses_at_once(self, capacity: MemoryCapacity) -> None:
        """Past ``max_queued`` a request gets Saturated without waiting for its deadline."""
        a = lane(capacity, "a", roomy(max_concurrent=1))
        async with Admission(capacity, max_queued=1) as admission:
            await admission.acquire([a], later(admission))
            waiter = enqueue(admission, [a])
            await until(lambda: admission.queued == 1)
            async with asyncio.timeout(1.0):
                with pytest.raises(Saturated, match="queue is full") as caught:
                    await admission.acquire([a], later(admission))
            assert int(caught.value.headers["Retry-After"]) >= 1
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert (in_flight(capacity, a), admission.queued) == ((1,), 0)

    @pytest.mark.parametrize(
        ("setup", "retry_after"),
        [
            pytest.param(lambda a, b, capacity, now: None, "2", id="next-token"),
            pytest.param(lambda a, b, capacity, now: capacity.back_off(a, now + 7.5), "2", id="b-sooner"),
            pytest.param(
                lambda a, b, capacity, now: (
                    capacity.back_off(a, now + 7.5),
                    capacity.back_off(b, now + 4.5),
                ),
                "5",
                id="back-offs",
            ),
            pytest.param(
                lambda a, b, capacity, now: (
                    a.provider.health.cool_down(3.5),
                    b.provider.health.cool_down(9),
                ),
                "4",
                id="cooldowns",
            ),
            pytest.param(
                lambda a, b, capacity, now: (
                    capacity.hold_off(a.provider.id, now + 6.2),
                    capacity.back_off(b, now + 8),
                ),
                "7",
                id="hold-off",
            ),
            pytest.param(
                lambda a, b, capacity, now: (
                    a.exclude(Exclusion.UNFUNDED, now + 3.2),
                    b.provider.exclude(Exclusion.MISCONFIGURED, now + 60),
                ),
                "4",
                id="exclusions",
            ),
        ],
    )
    async def test_retry_after_is_the_soonest_lanes_wait_rounded_up(
        self, setup: Callable[..., object], retry_after: str
    ) -> None:
        """Retry-After: the smallest over lanes of the longest of back-off, hold-off, cooldown, exclusion
        and next request token (2 s at 30/min), ceiled."""
        clock = FakeClock()
        capacity = MemoryCapacity(clock=clock)
        states = [provider(name, clock, ProviderLimits(requests_per_minute=30, burst=2)) for name in "ab"]
        counted(capacity, *states)
        a, b = (state.lanes[0] for state in states)
        take(capacity, a)
        take(capacity, b)
        async with Admission(capacity, clock=clock, max_queued=0) as admission:
            setup(a, b, capacity, clock.now)
            with pytest.raises(Saturated) as caught:
                await admission.acquire([a, b], later(admission))
        assert caught.value.headers == {"Retry-After": retry_after}

    async def test_lanes_waiting_only_for_a_release_say_one_second(self) -> None:
        """Lanes at their concurrency cap have no time to wait for, only a release: Retry-After is 1."""
        clock = FakeClock()
        capacity = MemoryCapacity(clock=clock)
        state = provider("0xp", clock, ProviderLimits(max_concurrent=1), wallets=(W1, W2))
        counted(capacity, state)
        take(capacity, *state.lanes)
        take(capacity, *state.lanes)
        async with Admission(capacity, clock=clock, max_queued=0) as admission:
            with pytest.raises(Saturated) as caught:
                await admission.acquire(state.lanes, later(admission))
        assert caught.value.headers == {"Retry-After": "1"}


class TestCancellation:
    async def test_a_cancelled_waiter_leaves_the_queue_and_takes_nothing(
        self, admission: Admission, capacity: MemoryCapacity
    ) -> None:
        """Cancelling a queued request empties the queue; the next release is not handed to it."""
        a = lane(capacity, "a", roomy(max_concurrent=1))
        held = await admission.acquire([a], later(admission))
        waiter = enqueue(admission, [a])
        await until(lambda: admission.queued == 1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert (admission.queued, in_flight(capacity, a)) == (0, (1,))
        held.release()
        assert in_flight(capacity, a) == (0,)

    async def test_a_cancelled_waiter_does_not_hold_up_the_next(
        self, admission: Admission, capacity: MemoryCapacity
    ) -> None:
        """The release after a cancellation goes to the next waiter in line."""
        a = lane(capacity, "a", roomy(max_concurrent=1))
        held = await admission.acquire([a], later(admission))
        first, second = enqueue(admission, [a]), enqueue(admission, [a])
        await until(lambda: admission.queued == 2)
        first.cancel()
        held.release()
        assert (await second).lane is a
        assert first.cancelled()

    async def test_a_lease_handed_over_as_the_waiter_is_cancelled_goes_back(
        self, admission: Admission, capacity: MemoryCapacity
    ) -> None:
        """The pump gave the waiter a lease, but the waiter was cancelled before it ran: the lease
        returns."""
        a = lane(capacity, "a", roomy(max_concurrent=1))
        held = await admission.acquire([a], later(admission))
        waiter = enqueue(admission, [a])
        await until(lambda: admission.queued == 1)
        held.release()
        await until(lambda: admission.queued == 0)  # the pump has handed the lease over
        assert not waiter.done()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert in_flight(capacity, a) == (0,)
        (await admission.acquire([a], later(admission))).release()

    async def test_a_half_open_probe_handed_over_as_the_waiter_is_cancelled_is_freed(
        self, admission: Admission, capacity: MemoryCapacity
    ) -> None:
        """The handed-back lease was a half-open breaker's one probe: the probe must free up too."""
        health_clock = FakeClock()
        state = provider("a", health_clock, roomy(max_concurrent=1))
        counted(capacity, state)
        a = state.lanes[0]
        state.health.cool_down(5.0)
        health_clock.now += 5.0
        probe = await admission.acquire([a], later(admission))
        waiter = enqueue(admission, [a])
        await until(lambda: admission.queued == 1)
        state.health.abandon()  # the probe ended with no verdict, as an attempt reports it
        probe.release()
        await until(lambda: admission.queued == 0)
        assert not waiter.done()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert in_flight(capacity, a) == (0,)
        assert state.health.admits(), "the breaker stays half-open with a probe nobody holds"

    async def test_a_waiter_cancelled_while_a_remote_backend_answers_gets_its_lease_back(
        self, capacity: MemoryCapacity
    ) -> None:
        """A backend that awaits I/O in ``acquire`` (the protocol allows it) answers with a lease after
        the waiter was cancelled: the lease goes back, and the pump keeps serving the queue."""
        remote = Remote(capacity)
        a = lane(capacity, "a", roomy(max_concurrent=1))
        async with Admission(remote) as admission:
            held = await admission.acquire([a], later(admission))
            waiter = enqueue(admission, [a])
            await until(lambda: admission.queued == 1)
            remote.slow = True
            held.release()
            await until(lambda: remote.asked)  # the pump is inside the backend's acquire
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            remote.answer.set()
            await until(lambda: not remote.asked)
            assert in_flight(capacity, a) == (0,), "the lease answered too late was given back"
            remote.slow = False
            held = await admission.acquire([a], later(admission))
            next_one = enqueue(admission, [a])
            await until(lambda: admission.queued == 1)
            held.release()
            async with asyncio.timeout(1.0):
                (await next_one).release()


class TestLifecycle:
    async def test_admission_listens_to_its_capacitys_releases(self, capacity: MemoryCapacity) -> None:
        """Building an admission points the capacity's ``on_change`` at ``wake``."""
        admission = Admission(capacity)
        assert capacity.on_change == admission.wake

    async def test_leaving_cancels_the_pump(self, capacity: MemoryCapacity) -> None:
        """After ``async with`` no admission task is left running, even with a request queued."""
        a = lane(capacity, "a", ProviderLimits(requests_per_minute=1, burst=2))
        async with Admission(capacity) as admission:
            await admission.acquire([a], later(admission))
            waiter = enqueue(admission, [a])
            await until(lambda: repr(admission) == "<Admission queued=1>")
            tasks = admission_tasks()
            assert sorted(t.get_name() for t in tasks) == ["admission-pump"]
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
        assert admission_tasks() == set()
        assert all(t.cancelled() for t in tasks)
        assert repr(admission) == "<Admission queued=0>"
