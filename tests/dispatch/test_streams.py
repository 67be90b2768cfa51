"""Streams through the dispatch loop on the fake transport: failover only before the first event reaches the
caller; after it, a failure ends the stream with an OpenAI-shaped ``stream_interrupted`` event and
``[DONE]``, charged once to the provider, never a silent cut or a hang (design.md §3, invariant 3).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from router.errors import AllAttemptsFailed
from router.replies import StreamReply
from router.transport.fake import FakeReply
from router.transport.sse import DONE
from tests.dispatch.conftest import CHAIN, MESSAGES, Routed, Serve, chat_call, fake_of

USAGE = {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}


async def open_stream(routed: Routed) -> StreamReply:
    reply = await routed.router.dispatch(chat_call(routed.router, stream=True))
    assert isinstance(reply, StreamReply)
    return reply


async def relayed(reply: StreamReply) -> list[bytes]:
    """Every event the caller gets, to the end; then the stream is closed as a face closes it."""
    try:
        return [event async for event in reply.events()]
    finally:
        await reply.aclose()


def data(event: bytes) -> Any:
    assert event.startswith(b"data: "), event
    assert event.endswith(b"\n\n"), event
    return json.loads(event[6:])


def contents(events: list[bytes]) -> list[str]:
    """The text deltas among ``events``."""
    return [
        choice["delta"]["content"]
        for event in events
        if event != DONE and "choices" in (chunk := data(event))
        for choice in chunk["choices"]
    ]


class TestWholeStreams:
    async def test_a_stream_is_relayed_event_by_event_and_ends_with_done(self, serve: Serve) -> None:
        routed = await serve(fake_of({"a": FakeReply.stream(["Hel", "lo", "!"], usage=USAGE)}))
        reply = await open_stream(routed)
        assert (reply.provider, reply.attempts) == ("a", 1)
        events = await relayed(reply)
        assert contents(events) == ["Hel", "lo", "!"]
        assert events[-1] == DONE
        assert reply.usage == USAGE
        assert routed.fake.requests[0].stream is True
        assert routed.fake.requests[0].json()["stream"] is True
        (finished,) = routed.finished()
        assert (finished.status, finished.provider, finished.stream) == (200, "a", True)
        assert (finished.prompt_tokens, finished.completion_tokens) == (4, 3)
        assert finished.ttft is not None
        assert routed.in_flight("a") == 0

    async def test_a_stream_without_done_gets_one(self, serve: Serve) -> None:
        """An upstream that ends cleanly without ``[DONE]`` still ends the caller's stream with it."""
        routed = await serve(fake_of({"a": FakeReply.stream(["x"], done=False)}))
        events = await relayed(await open_stream(routed))
        assert events[-1] == DONE
        assert events.count(DONE) == 1
        assert contents(events) == ["x"]

    async def test_the_library_stream_yields_each_chunk(self, serve: Serve) -> None:
        routed = await serve(fake_of({"a": FakeReply.stream(["one", "two"])}))
        chunks = [chunk async for chunk in routed.router.stream_chat(model="m", messages=MESSAGES)]
        assert [c["choices"][0]["delta"]["content"] for c in chunks if c["choices"]] == ["one", "two"]
        assert "usage" in chunks[-1]
        assert routed.in_flight("a") == 0


class TestBeforeTheFirstEvent:
    @pytest.mark.parametrize(
        ("reply", "detail"),
        [
            (FakeReply.stream(["x"], break_after=0), "ClientPayloadError"),
            (FakeReply.stream(["x"], stall_after=0), "timed out"),
            (FakeReply(events=["not json"]), "sent a malformed stream event (its data is not JSON)"),
            (FakeReply(events=[], done=False), "stream ended before any event"),
            (FakeReply.unreachable(), "cannot connect"),
            (FakeReply.http_error(502), "Bad Gateway"),
        ],
        ids=["dropped", "stalled", "malformed", "empty", "refused", "502"],
    )
    async def test_a_stream_failing_before_its_first_event_fails_over(
        self, serve: Serve, reply: FakeReply, detail: str
    ) -> None:
        """Nothing reached the caller yet, so another provider serves the whole stream; the failed one
        is charged once."""
        routed = await serve(fake_of({"a": reply, "b": FakeReply.stream(["from", "b"])}))
        stream = await open_stream(routed)
        assert (stream.provider, stream.attempts) == ("b", 2)
        assert contents(await relayed(stream)) == ["from", "b"]
        assert routed.tried() == ["a", "b"]
        assert routed.error_rate("a") == pytest.approx(0.2)
        assert routed.error_rate("b") == 0.0
        (failure,) = routed.failures()
        assert (failure.provider, failure.verdict) == ("a", "unhealthy")
        assert detail in failure.detail

    async def test_a_rate_limited_stream_fails_over_without_a_charge(self, serve: Serve) -> None:
        routed = await serve(fake_of({"a": FakeReply.rate_limited(reset="30s"), "b": FakeReply.stream()}))
        stream = await open_stream(routed)
        await relayed(stream)
        assert stream.provider == "b"
        assert routed.error_rate("a") == 0.0


class TestAfterTheFirstEvent:
    @pytest.mark.parametrize(
        ("reply", "detail"),
        [
            (FakeReply.stream(["a", "b", "c"], break_after=2), "connection failed (ClientPayloadError)"),
            (FakeReply.stream(["a", "b", "c"], stall_after=2), "timed out"),
            (
                FakeReply(events=[{"choices": [{"index": 0, "delta": {"content": "a"}}]}, "{oops"]),
                "sent a malformed stream event (its data is not JSON)",
            ),
            (
                FakeReply(events=[{"choices": []}, b'data: {"half'], done=False),
                "stream ended in the middle of an event",
            ),
        ],
        ids=["dropped", "stalled", "malformed", "cut-mid-event"],
    )
    async def test_a_failure_mid_stream_ends_it_with_an_error_event_and_done(
        self, serve: Serve, reply: FakeReply, detail: str
    ) -> None:
        """No failover once the caller has an event: the stream ends with ``stream_interrupted`` naming
        the failure, then ``[DONE]``; the provider is charged once and the attempt reported broken."""
        routed = await serve(fake_of({"a": reply}))
        stream = await open_stream(routed)
        events = await relayed(stream)
        assert events[-1] == DONE
        error = data(events[-2])["error"]
        assert error["code"] == "stream_interrupted"
        assert error["type"] == "provider_error"
        assert error["message"] == f"the provider failed mid-stream: provider a: {detail}"
        assert all(b"half" not in event for event in events)  # the client never gets half an event
        assert routed.tried() == ["a"]
        assert routed.error_rate("a") == pytest.approx(0.2)
        assert routed.in_flight("a") == 0
        (failure,) = routed.failures()
        assert (failure.provider, failure.verdict, failure.status) == ("a", "stream_broken", 200)
        (finished,) = routed.finished()
        assert (finished.status, finished.provider) == (502, "a")

    async def test_the_library_stream_raises_on_a_failure_mid_stream(self, serve: Serve) -> None:
        routed = await serve(fake_of({"a": FakeReply.stream(["a", "b", "c"], break_after=1)}))
        got: list[dict[str, Any]] = []

        async def read_all() -> None:
            async for chunk in routed.router.stream_chat(model="m", messages=MESSAGES):
                got.append(chunk)

        with pytest.raises(AllAttemptsFailed, match="the provider failed mid-stream") as caught:
            await read_all()
        assert len(got) == 1
        assert caught.value.attempts == 1
        assert routed.in_flight("a") == 0

    async def test_a_stream_broken_after_a_failover_charges_only_the_first_failure(
        self, serve: Serve
    ) -> None:
        """One charge per request: a's failure before the first event is charged; b's break after it is
        reported but not charged."""
        routed = await serve(
            fake_of({"a": FakeReply.http_error(500), "b": FakeReply.stream(["x", "y"], break_after=1)})
        )
        events = await relayed(await open_stream(routed))
        assert data(events[-2])["error"]["code"] == "stream_interrupted"
        assert routed.error_rate("a") == pytest.approx(0.2)
        assert routed.error_rate("b") == 0.0
        assert [f.verdict for f in routed.failures()] == ["unhealthy", "stream_broken"]
        assert all(routed.in_flight(p) == 0 for p in CHAIN)
