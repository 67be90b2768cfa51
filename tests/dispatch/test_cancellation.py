"""A caller that goes away (its task cancelled: a client disconnect cancels the gateway's handler) at every
stage of a request: nothing leaks, and the next request gets the slot at once.

``solo`` takes one request at a time, so a slot leaked there would leave the next request queued until
its deadline (a 429) instead of served. Every reply the fake handed out must be closed exactly once (the
``serve`` fixture checks that on teardown; the tests check it where it matters).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import pytest

from router.replies import Reply, StreamReply
from router.transport.fake import FakeReply, FakeTransport
from router.transport.http import TransportOptions
from tests.dispatch.conftest import SOLO_MODEL, Routed, Serve, chat_call, fake_of

# Idle timeouts far beyond any test: a stalled reply stays stalled until the test cancels it.
SLOW = TransportOptions(stream_idle_timeout=60.0, body_idle_timeout=60.0)


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until ``condition`` holds (the tasks in play get there without any timed wait)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def cancelled(task: asyncio.Task[object]) -> None:
    """Cancel ``task`` and check that the cancellation is what ended it."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def solo_served(routed: Routed, *, stream: bool = False) -> str:
    """The next request to ``solo`` is served well within a second, whole: its slot is free."""
    reply = await routed.router.dispatch(
        chat_call(routed.router, model=SOLO_MODEL, stream=stream, timeout=1.0)
    )
    if isinstance(reply, StreamReply):
        events = [event async for event in reply.events()]
        await reply.aclose()
        assert events[-1] == b"data: [DONE]\n\n"
    return reply.provider


def solo(*replies: FakeReply) -> FakeTransport:
    return FakeTransport.scripted({"solo": replies}, options=SLOW)


class TestPlainRequests:
    async def test_cancelled_while_waiting_for_the_headers(self, serve: Serve) -> None:
        routed = await serve(solo(FakeReply(delay=math.inf), FakeReply.chat("next")))
        task = asyncio.create_task(routed.router.dispatch(chat_call(routed.router, model=SOLO_MODEL)))
        await routed.fake.wait_sent(1)
        assert routed.in_flight("solo") == 1
        await cancelled(task)
        assert routed.in_flight("solo") == 0
        assert routed.error_rate("solo") == 0.0  # the caller left: no verdict on the provider
        assert await solo_served(routed) == "solo"
        assert [f.status for f in routed.finished()] == [499, 200]
        # The cancelled send never handed out a reply: the only one is the second request's.
        assert [u.request for u in routed.fake.upstreams] == [routed.fake.requests[1]]

    async def test_cancelled_while_reading_the_body(self, serve: Serve) -> None:
        """Headers in, the body stalled: the reply is closed once and the slot comes back."""
        routed = await serve(solo(FakeReply(body={"id": "x"}, stall_after=0), FakeReply.chat("next")))
        task = asyncio.create_task(routed.router.dispatch(chat_call(routed.router, model=SOLO_MODEL)))
        await until(lambda: len(routed.fake.upstreams) == 1)
        await cancelled(task)
        assert routed.fake.upstreams[0].closes == 1
        assert routed.in_flight("solo") == 0
        assert await solo_served(routed) == "solo"

    async def test_cancelled_while_queued_for_a_slot(self, serve: Serve) -> None:
        """A request waiting for the one slot leaves the queue when cancelled and takes nothing with it."""
        routed = await serve(solo(FakeReply(delay=math.inf), FakeReply.chat("next")))
        router = routed.router
        holder = asyncio.create_task(router.dispatch(chat_call(router, model=SOLO_MODEL)))
        await routed.fake.wait_sent(1)
        waiter = asyncio.create_task(router.dispatch(chat_call(router, model=SOLO_MODEL)))
        await until(lambda: router.queued == 1)
        await cancelled(waiter)
        assert router.queued == 0
        await cancelled(holder)
        assert routed.in_flight("solo") == 0
        assert await solo_served(routed) == "solo"
        assert len(routed.fake.requests) == 2  # the cancelled waiter never reached the provider

    async def test_cancelled_in_the_middle_of_a_failover(self, serve: Serve) -> None:
        """a failed and is charged; the caller goes away while b works: b is neither charged nor held."""
        routed = await serve(fake_of({"a": FakeReply.http_error(502), "b": FakeReply(delay=math.inf)}))
        task = asyncio.create_task(routed.router.dispatch(chat_call(routed.router)))
        await routed.fake.wait_sent(2)
        assert routed.in_flight("b") == 1
        await cancelled(task)
        assert (routed.in_flight("a"), routed.in_flight("b")) == (0, 0)
        assert routed.error_rate("a") == pytest.approx(0.2)
        assert routed.error_rate("b") == 0.0
        assert routed.tried() == ["a", "b"]


class TestStreams:
    async def test_cancelled_while_waiting_for_the_first_event(self, serve: Serve) -> None:
        routed = await serve(solo(FakeReply.stream(["x"], stall_after=0), FakeReply.stream(["next"])))
        task = asyncio.create_task(
            routed.router.dispatch(chat_call(routed.router, model=SOLO_MODEL, stream=True))
        )
        await until(lambda: len(routed.fake.upstreams) == 1)
        await cancelled(task)
        assert routed.fake.upstreams[0].closes == 1
        assert routed.in_flight("solo") == 0
        assert await solo_served(routed, stream=True) == "solo"

    async def test_cancelled_mid_stream(self, serve: Serve) -> None:
        """The caller's task is cancelled while the stream waits for its next event, and closes the
        stream as a face does: the upstream is closed once, the request ends as 499, the slot is free."""
        routed = await serve(solo(FakeReply.stream(["a", "b"], stall_after=1), FakeReply.stream(["next"])))
        reply = await routed.router.dispatch(chat_call(routed.router, model=SOLO_MODEL, stream=True))
        assert isinstance(reply, StreamReply)
        got: list[bytes] = []

        async def relay() -> None:
            try:
                async for event in reply.events():
                    got.append(event)
            finally:
                await reply.aclose()

        task = asyncio.create_task(relay())
        await until(lambda: len(got) == 1)
        await cancelled(task)
        assert routed.fake.upstreams[0].closes == 1
        assert routed.in_flight("solo") == 0
        assert routed.error_rate("solo") == 0.0
        (finished,) = routed.finished()
        assert (finished.status, finished.error) == (499, "the caller closed the stream")
        assert await solo_served(routed, stream=True) == "solo"

    async def test_the_library_stream_cancelled_mid_stream(self, serve: Serve) -> None:
        routed = await serve(solo(FakeReply.stream(["a", "b"], stall_after=1), FakeReply.chat("next")))
        got: list[object] = []

        async def consume() -> None:
            async for chunk in routed.router.stream_chat(
                model=SOLO_MODEL, messages=[{"role": "user", "content": "x"}]
            ):
                got.append(chunk)

        task = asyncio.create_task(consume())
        await until(lambda: len(got) == 1)
        await cancelled(task)
        assert routed.fake.upstreams[0].closes == 1
        assert routed.in_flight("solo") == 0
        assert await solo_served(routed) == "solo"

    async def test_closed_early_by_the_caller(self, serve: Serve) -> None:
        """A caller that stops after the first event and closes the stream frees everything at once."""
        routed = await serve(solo(FakeReply.stream(["a", "b", "c"]), FakeReply.chat("next")))
        reply = await routed.router.dispatch(chat_call(routed.router, model=SOLO_MODEL, stream=True))
        assert isinstance(reply, StreamReply)
        await anext(reply.events())
        await reply.aclose()
        assert routed.fake.upstreams[0].closes == 1
        assert routed.in_flight("solo") == 0
        assert [f.status for f in routed.finished()] == [499]
        served = await routed.router.dispatch(chat_call(routed.router, model=SOLO_MODEL, timeout=1.0))
        assert isinstance(served, Reply)
