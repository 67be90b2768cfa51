"""The shipped ``FakeTransport`` itself: it is public API, and the dispatch tests are only as true as it is
to ``HttpTransport`` (same errors, same framing and event checks, waits on the loop's clock).

The broker's bodies it builds are checked against the router's own rules (``router.policy.outcome``), so
a fake reply means to the router what the broker's reply would.
"""

from __future__ import annotations

import asyncio
import json
import math
import re

import pytest

from router.errors import ProviderUnreachable
from router.policy.outcome import Verdict, classify, error_message
from router.pool.providers import ProviderInfo, ProviderKind
from router.transport.fake import (
    BUSY_MESSAGE,
    DROPPED,
    FakeReply,
    FakeRequest,
    FakeTransport,
    FakeUpstream,
    RateLimit,
    ScriptExhausted,
)
from router.transport.http import TransportOptions
from router.transport.sse import DONE

INFO = ProviderInfo(
    "p", ProviderKind.STATIC, "http://p.test/v1", "http://p.test/v1/models", "chatbot", ("m",)
)
BODY = b'{"model":"m","messages":[]}'
SECRET = "Bearer sk-fake-" + "0123456789abcdef" * 2
# Short idle timeouts, so the stall tests wait a fraction of a second on the loop's clock.
QUICK = TransportOptions(stream_idle_timeout=0.05, body_idle_timeout=0.05)


async def post(
    fake: FakeTransport, *, stream: bool = False, time_left: float = 5.0, info: ProviderInfo = INFO
) -> FakeUpstream:
    return await fake.send(
        info, "/chat/completions", BODY, {"Authorization": SECRET}, time_left=time_left, stream=stream
    )


async def all_events(upstream: FakeUpstream) -> list[bytes]:
    return [event async for event in upstream.events()]


async def collect(upstream: FakeUpstream, into: list[bytes]) -> None:
    """The stream's events into ``into``, as far as they go before an error."""
    async for event in upstream.events():
        into.append(event)


def answering(reply: FakeReply, options: TransportOptions | None = None) -> FakeTransport:
    return FakeTransport(lambda request: reply, options=options)


class TestRequests:
    async def test_the_responder_sees_the_request_and_its_reply_comes_back(self) -> None:
        """The responder gets the whole request; the reply's status, headers and body come back, and the
        request is recorded with the provider's entry."""
        seen: list[FakeRequest] = []

        def respond(request: FakeRequest) -> FakeReply:
            seen.append(request)
            return FakeReply.chat("hi there", headers={"ZG-Res-Key": "k-1"})

        async with FakeTransport(respond) as fake:
            upstream = await post(fake)
            body = json.loads(await upstream.read())
        (request,) = seen
        assert fake.requests == [request]
        assert (request.method, request.provider, request.kind) == ("POST", "p", ProviderKind.STATIC)
        assert (request.url, request.path, request.stream) == (
            "http://p.test/v1/chat/completions",
            "/chat/completions",
            False,
        )
        assert request.json() == {"model": "m", "messages": []}
        assert request.headers["authorization"] == SECRET  # looked up case-insensitively
        assert request.info is INFO
        assert upstream.status == 200
        assert upstream.headers["zg-res-key"] == "k-1"
        assert upstream.headers["content-type"] == "application/json"
        assert body["choices"][0]["message"]["content"] == "hi there"
        assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
        fake.assert_all_closed()

    async def test_a_request_shows_no_secret_in_its_repr(self) -> None:
        """The recorded request's repr (what a failed assertion prints) leaves the Authorization out."""
        async with answering(FakeReply.chat()) as fake:
            await (await post(fake)).read()
        assert SECRET not in repr(fake.requests[0])
        assert "'p'" in repr(fake.requests[0])

    async def test_an_async_responder_is_awaited(self) -> None:
        async def respond(request: FakeRequest) -> FakeReply:
            await asyncio.sleep(0)
            return FakeReply.http_error(418, "teapot")

        async with FakeTransport(respond) as fake:
            upstream = await post(fake)
            assert (upstream.status, await upstream.read()) == (418, b'{"error": "teapot"}')

    async def test_it_must_be_entered_first(self) -> None:
        """Like ``HttpTransport``, the fake works inside ``async with`` only (a Router enters it)."""
        fake = answering(FakeReply.chat())
        with pytest.raises(RuntimeError, match="async with"):
            await post(fake)


class TestScripted:
    async def test_each_provider_answers_its_replies_in_order_then_the_default(self) -> None:
        """Replies go out in order per provider (ids compared case-insensitively), then the default."""
        other = ProviderInfo("Q", ProviderKind.STATIC, "http://q.test/v1", "", "chatbot", ("m",))
        script = {"p": [FakeReply.busy(), FakeReply.chat()], "q": [FakeReply.http_error(502)]}
        async with FakeTransport.scripted(script, default=FakeReply.http_error(500)) as fake:
            statuses = []
            for info in (INFO, other, INFO, INFO, other):
                upstream = await post(fake, info=info)
                await upstream.read()
                statuses.append(upstream.status)
        assert statuses == [503, 502, 200, 500, 500]
        assert [r.provider for r in fake.requests] == ["p", "Q", "p", "p", "Q"]

    async def test_a_script_without_a_default_says_when_it_runs_out(self) -> None:
        async with FakeTransport.scripted({"p": [FakeReply.chat()]}) as fake:
            await (await post(fake)).read()
            with pytest.raises(ScriptExhausted, match="no reply left for provider p"):
                await post(fake)


class TestFaults:
    async def test_a_refused_connection_raises_unreachable_before_any_headers(self) -> None:
        async with answering(FakeReply.unreachable()) as fake:
            with pytest.raises(ProviderUnreachable, match=r"^provider p: cannot connect \(") as caught:
                await post(fake)
        assert caught.value.provider == "p"
        assert fake.upstreams == []

    async def test_a_reply_slower_than_the_time_left_times_out_at_the_time_left(self) -> None:
        """A provider that never answers fails the send when the request's time is up, as aiohttp's
        timeout does, on the loop's clock."""
        loop = asyncio.get_running_loop()
        async with answering(FakeReply(delay=math.inf)) as fake:
            started = loop.time()
            with pytest.raises(ProviderUnreachable, match=r"^provider p: timed out$"):
                await post(fake, time_left=0.05)
        assert 0.05 <= loop.time() - started < 1.0

    async def test_a_delay_within_the_time_left_is_waited_out(self) -> None:
        loop = asyncio.get_running_loop()
        async with answering(FakeReply(delay=0.03, body={"ok": True})) as fake:
            started = loop.time()
            upstream = await post(fake)
            assert loop.time() - started >= 0.03
            assert await upstream.read() == b'{"ok": true}'

    async def test_a_body_cut_off_raises_unreachable_and_closes_the_reply(self) -> None:
        async with answering(FakeReply(body={"ok": True}, break_after=0)) as fake:
            upstream = await post(fake)
            with pytest.raises(ProviderUnreachable, match=f"^provider p: {re.escape(DROPPED)}$"):
                await upstream.read()
        assert upstream.closes == 1
        fake.assert_all_closed()

    async def test_a_stalled_body_fails_after_the_body_idle_timeout(self) -> None:
        loop = asyncio.get_running_loop()
        async with answering(FakeReply(body={"ok": True}, stall_after=0), QUICK) as fake:
            upstream = await post(fake)
            started = loop.time()
            with pytest.raises(ProviderUnreachable, match="timed out"):
                await upstream.read()
        assert 0.05 <= loop.time() - started < 1.0
        fake.assert_all_closed()

    async def test_a_stalled_body_fails_at_the_request_deadline_before_a_longer_idle_timeout(self) -> None:
        """A plain reply's whole exchange is bounded by ``time_left``, as aiohttp's total timeout is."""
        loop = asyncio.get_running_loop()
        slow_idle = TransportOptions(body_idle_timeout=30.0)
        async with answering(FakeReply(body={"ok": True}, stall_after=0), slow_idle) as fake:
            started = loop.time()
            upstream = await post(fake, time_left=0.1)
            with pytest.raises(ProviderUnreachable, match="timed out"):
                await upstream.read()
        assert loop.time() - started < 1.0


class TestStreams:
    async def test_a_stream_is_framed_checked_and_ends_with_done(self) -> None:
        """One event per piece, the usage chunk, ``[DONE]``; the usage is tracked as events pass."""
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        async with answering(FakeReply.stream(["Hel", "lo"], usage=usage)) as fake:
            upstream = await post(fake, stream=True)
            assert upstream.headers["Content-Type"] == "text/event-stream"
            events = await all_events(upstream)
            upstream.close()
        assert len(events) == 4
        assert events[-1] == DONE
        chunks = [json.loads(event.removeprefix(b"data: ")) for event in events[:-1]]
        assert [c["choices"][0]["delta"]["content"] for c in chunks[:2]] == ["Hel", "lo"]
        assert chunks[2]["choices"] == []
        assert upstream.usage == usage
        fake.assert_all_closed()

    async def test_events_are_mappings_strings_or_raw_bytes_and_done_can_be_left_out(self) -> None:
        reply = FakeReply(events=[{"a": 1}, '{"b": 2}', b": comment\n\n"], done=False)
        async with answering(reply) as fake:
            upstream = await post(fake, stream=True)
            events = await all_events(upstream)
            upstream.close()
        assert events == [b'data: {"a": 1}\n\n', b'data: {"b": 2}\n\n', b": comment\n\n"]

    @pytest.mark.parametrize(
        ("event", "why"), [("not json", "its data is not JSON"), ("[1, 2]", "its data is not a JSON object")]
    )
    async def test_a_malformed_event_raises_unreachable_after_the_good_ones(
        self, event: str, why: str
    ) -> None:
        async with answering(FakeReply(events=[{"ok": 1}, event])) as fake:
            upstream = await post(fake, stream=True)
            got: list[bytes] = []
            with pytest.raises(
                ProviderUnreachable, match=rf"^provider p: sent a malformed stream event \({why}\)$"
            ):
                await collect(upstream, got)
            upstream.close()
        assert got == [b'data: {"ok": 1}\n\n']

    async def test_a_stream_that_ends_inside_an_event_raises_unreachable(self) -> None:
        async with answering(FakeReply(events=[{"ok": 1}, b'data: {"half'], done=False)) as fake:
            upstream = await post(fake, stream=True)
            with pytest.raises(ProviderUnreachable, match="stream ended in the middle of an event"):
                await all_events(upstream)
            upstream.close()

    async def test_an_event_split_over_chunks_comes_out_whole(self) -> None:
        async with answering(FakeReply(events=[b'data: {"a"', b": 1}\n\n"])) as fake:
            upstream = await post(fake, stream=True)
            assert await all_events(upstream) == [b'data: {"a": 1}\n\n', DONE]
            upstream.close()

    async def test_break_after_drops_the_stream_after_that_many_events(self) -> None:
        async with answering(FakeReply.stream(["a", "b", "c"], break_after=2)) as fake:
            upstream = await post(fake, stream=True)
            got: list[bytes] = []
            with pytest.raises(ProviderUnreachable, match="ClientPayloadError"):
                await collect(upstream, got)
            upstream.close()
        assert len(got) == 2

    async def test_a_stall_fails_after_the_stream_idle_timeout(self) -> None:
        loop = asyncio.get_running_loop()
        async with answering(FakeReply.stream(["a", "b"], stall_after=1), QUICK) as fake:
            upstream = await post(fake, stream=True, time_left=0.01)
            events = upstream.events()
            await anext(events)
            started = loop.time()
            with pytest.raises(ProviderUnreachable, match="timed out"):
                await anext(events)
            upstream.close()
        # A stream's events are bounded by the idle timeout, not by the time left for its headers.
        assert 0.05 <= loop.time() - started < 1.0

    async def test_event_delay_paces_every_chunk(self) -> None:
        loop = asyncio.get_running_loop()
        async with answering(FakeReply.stream(["a"], event_delay=0.02)) as fake:
            upstream = await post(fake, stream=True)
            started = loop.time()
            assert len(await all_events(upstream)) == 3
            upstream.close()
        assert loop.time() - started >= 0.06


class TestGetJson:
    async def test_a_provider_lists_its_models_by_default(self) -> None:
        """The free GETs (probe, model list) answer each provider's models, and are recorded apart."""
        async with FakeTransport(lambda r: FakeReply.chat(), models={"P": ["m", "m2"]}) as fake:
            doc = await fake.get_json(ProviderKind.STATIC, "p", INFO.probe_url, headers={}, time_left=1.0)
        assert [entry["id"] for entry in doc["data"]] == ["m", "m2"]
        assert doc["object"] == "list"
        assert (fake.requests, [(g.method, g.url, g.path) for g in fake.gets]) == (
            [],
            [("GET", "http://p.test/v1/models", "/v1/models")],
        )

    @pytest.mark.parametrize(
        ("reply", "message"),
        [
            (FakeReply.http_error(404), "http://p.test/v1/models answered 404"),
            (FakeReply.redirect("http://elsewhere.test/"), "http://p.test/v1/models answered 307"),
            (FakeReply(body=b"<html>"), "http://p.test/v1/models did not answer JSON"),
            (FakeReply.unreachable(), "cannot connect"),
            (FakeReply(delay=math.inf), "timed out"),
        ],
    )
    async def test_what_is_not_a_json_answer_raises_unreachable(self, reply: FakeReply, message: str) -> None:
        async with FakeTransport(lambda r: FakeReply.chat(), on_get=lambda r: reply) as fake:
            with pytest.raises(ProviderUnreachable, match=message.replace("(", r"\(")):
                await fake.get_json(ProviderKind.STATIC, "p", INFO.probe_url, headers={}, time_left=0.05)


class TestBookkeeping:
    async def test_a_reply_left_open_or_closed_twice_is_reported(self) -> None:
        async with answering(FakeReply.chat()) as fake:
            left_open = await post(fake)
            twice = await post(fake)
            await twice.read()
            twice.close()
            closed = await post(fake)
            closed.close()
        assert fake.open_upstreams == [left_open]
        with pytest.raises(AssertionError, match="not closed exactly once") as caught:
            fake.assert_all_closed()
        assert "closes=0" in str(caught.value)
        assert "closes=2" in str(caught.value)
        assert "closes=1" not in str(caught.value)

    async def test_wait_sent_returns_while_the_requests_are_in_flight(self) -> None:
        """A test can act on requests in flight: ``wait_sent`` returns once they reached the provider."""
        async with answering(FakeReply(delay=math.inf)) as fake:
            tasks = [asyncio.create_task(post(fake)) for _ in range(2)]
            await fake.wait_sent(2)
            assert [task.done() for task in tasks] == [False, False]
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(result, asyncio.CancelledError) for result in results)
        assert fake.upstreams == []


class TestBrokerBodies:
    """Each constructor's reply means to the router's rules what the broker's does (protocol.md §4.2)."""

    @pytest.mark.parametrize(
        "kind", ["requests", "requests_legacy", "tokens", "images", "concurrency", "token_budget", "ip"]
    )
    def test_every_429_shape_is_a_rate_limit(self, kind: RateLimit) -> None:
        reply = FakeReply.rate_limited(kind, limit=30, reset="7s")
        body = b"".join(reply.wire())
        assert classify(reply.status, body) is Verdict.RATE_LIMITED
        assert error_message(body).startswith(("Rate limit", "Token", "Image", "Too many"))
        assert reply.header_map()["X-RateLimit-Reset-Requests"] == "7s"

    def test_the_invalid_model_block_is_a_misconfiguration(self) -> None:
        reply = FakeReply.rate_limited("invalid_model")
        assert classify(429, b"".join(reply.wire())) is Verdict.MISCONFIGURED

    def test_a_429_can_come_without_rate_limit_headers(self) -> None:
        assert "x-ratelimit-reset-requests" not in FakeReply.rate_limited(reset=None).header_map()

    def test_the_busy_503_has_the_global_cap_body_and_retry_after(self) -> None:
        reply = FakeReply.busy(retry_after=3)
        assert reply.status == 503
        assert error_message(b"".join(reply.wire())) == BUSY_MESSAGE
        assert reply.header_map()["retry-after"] == "3"
        assert "Retry-After" not in FakeReply.busy(retry_after=None).header_map()

    def test_the_unfunded_400_is_unfunded_at_a_chain_provider(self) -> None:
        body = b"".join(FakeReply.unfunded().wire())
        assert classify(400, body, ProviderKind.CHAIN) is Verdict.UNFUNDED
        assert "insufficient balance: your locked balance is 1.000000 0G" in error_message(body)

    @pytest.mark.parametrize(
        ("status", "text"), [(502, "Bad Gateway"), (504, "Gateway Timeout"), (500, "Internal Server Error")]
    )
    def test_a_5xx_says_its_status_text_as_the_broker_does(self, status: int, text: str) -> None:
        reply = FakeReply.http_error(status)
        assert error_message(b"".join(reply.wire())) == text
        assert classify(status, b"".join(reply.wire())) is Verdict.UNHEALTHY
