"""Deadlines: a provider that stalls (before its headers, in its body, before a stream's first event) never
holds a request past its deadline; every request ends with a precise error in time (design.md §3,
invariant 4). Waits are the loop's own clock; each test is bounded by ``BOUND`` so that a hang fails it.
"""

from __future__ import annotations

import asyncio
import math

import pytest

from router.dispatch import MIN_ATTEMPT_SECONDS
from router.errors import AllAttemptsFailed, RequestFailed, Saturated
from router.replies import Reply, StreamReply
from router.transport.fake import FakeReply, FakeTransport
from router.transport.http import TransportOptions
from tests.dispatch.conftest import CHAIN, SOLO_MODEL, Routed, Serve, chat_call, fake_of

DEADLINE = 0.3
# How late past its deadline a request may end: loop scheduling, not another timeout.
SLACK = 0.5
BOUND = 3.0
SLOW = TransportOptions(stream_idle_timeout=60.0, body_idle_timeout=60.0)


async def timed(routed: Routed, *, stream: bool = False, model: str = "m") -> tuple[RequestFailed, float]:
    """The error a request with ``DEADLINE`` ends in, and how long it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    call = chat_call(routed.router, stream=stream, model=model, timeout=DEADLINE)
    with pytest.raises(RequestFailed) as caught:
        async with asyncio.timeout(BOUND):
            await routed.router.dispatch(call)
    return caught.value, loop.time() - started


class TestPlain:
    async def test_providers_that_never_answer_end_the_request_at_its_deadline(self, serve: Serve) -> None:
        routed = await serve(fake_of(dict.fromkeys(CHAIN, FakeReply(delay=math.inf)), options=SLOW))
        error, took = await timed(routed)
        assert DEADLINE <= took < DEADLINE + SLACK
        assert isinstance(error, AllAttemptsFailed)
        assert error.status == 502
        assert error.message.endswith("last: a: no reply provider a: timed out")
        assert routed.in_flight("a") == 0

    async def test_a_stalled_body_ends_the_request_at_its_deadline(self, serve: Serve) -> None:
        """Headers in, then nothing, with an idle timeout far past the deadline: the deadline wins."""
        stalled = FakeReply(body={"id": "x"}, stall_after=0)
        routed = await serve(fake_of(dict.fromkeys(CHAIN, stalled), options=SLOW))
        error, took = await timed(routed)
        assert DEADLINE <= took < DEADLINE + SLACK
        assert isinstance(error, AllAttemptsFailed)
        assert "timed out" in error.message
        assert routed.fake.upstreams[0].closes == 1

    async def test_a_body_idle_timeout_inside_the_deadline_leaves_time_to_fail_over(
        self, serve: Serve
    ) -> None:
        """The idle timeout (0.2 s) ends a's stalled body well before the deadline: b serves in time."""
        routed = await serve(fake_of({"a": FakeReply(body={"id": "x"}, stall_after=0)}))
        loop = asyncio.get_running_loop()
        started = loop.time()
        reply = await routed.router.dispatch(chat_call(routed.router, timeout=2.0))
        assert isinstance(reply, Reply)
        assert (reply.provider, reply.attempts) == ("b", 2)
        assert loop.time() - started < 1.0
        assert routed.error_rate("a") == pytest.approx(0.2)

    async def test_a_slow_provider_inside_the_deadline_is_waited_for(self, serve: Serve) -> None:
        routed = await serve(fake_of({"a": FakeReply(delay=0.1, body=FakeReply.chat("late").body)}))
        reply = await routed.router.dispatch(chat_call(routed.router, timeout=2.0))
        assert isinstance(reply, Reply)
        assert reply.provider == "a"
        assert routed.failures() == []

    async def test_a_request_queued_for_a_busy_slot_gets_a_429_at_its_deadline(self, serve: Serve) -> None:
        """``solo`` takes one request at a time: the second waits for the slot, then is told when to retry."""
        routed = await serve(FakeTransport.scripted({"solo": [FakeReply(delay=math.inf)]}, options=SLOW))
        holder = asyncio.create_task(routed.router.dispatch(chat_call(routed.router, model=SOLO_MODEL)))
        await routed.fake.wait_sent(1)
        error, took = await timed(routed, model=SOLO_MODEL)
        # The queue gives up just before the deadline, when no attempt could be answered in time.
        assert DEADLINE - MIN_ATTEMPT_SECONDS <= took < DEADLINE + SLACK
        assert isinstance(error, Saturated)
        assert error.status == 429
        assert int(error.headers["Retry-After"]) >= 1
        assert len(routed.fake.requests) == 1
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder


class TestStreams:
    async def test_a_stream_whose_first_event_never_comes_ends_at_the_deadline(self, serve: Serve) -> None:
        """Headers in, no event, an idle timeout far past the deadline: the request still ends at its
        deadline (a stream's first event is part of the request's wait)."""
        routed = await serve(fake_of(dict.fromkeys(CHAIN, FakeReply.stream(stall_after=0)), options=SLOW))
        error, took = await timed(routed, stream=True)
        assert DEADLINE <= took < DEADLINE + SLACK
        assert isinstance(error, AllAttemptsFailed)
        assert "timed out" in error.message
        assert routed.fake.upstreams[0].closes == 1

    async def test_a_stream_idle_timeout_before_the_first_event_leaves_time_to_fail_over(
        self, serve: Serve
    ) -> None:
        routed = await serve(fake_of({"a": FakeReply.stream(stall_after=0), "b": FakeReply.stream(["b"])}))
        reply = await routed.router.dispatch(chat_call(routed.router, stream=True, timeout=2.0))
        assert isinstance(reply, StreamReply)
        assert (reply.provider, reply.attempts) == ("b", 2)
        await reply.aclose()
