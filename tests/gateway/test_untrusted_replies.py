"""Provider replies are not trusted: a body that stalls, a 200 that is not JSON, a stream event that is not
JSON and a redirect are each a provider failure that fails over (or, mid-stream, ends the stream cleanly),
never a hung client, a broken reply passed on as good, or the user's prompt sent where nobody checked.

Simulated providers on the devnet show the stalls and malformed replies (their fault knobs); upstreams of
our own on 127.0.0.1, configured as static upstreams, show the redirects and a stream broken from its
first event.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from router.client import Router
from router.config import DispatchOptions, GatewayConfig, RouterConfig, StaticUpstream
from router.observability.events import AttemptFailed
from router.server.app import Gateway
from tests.gateway.conftest import API_KEY, CHAT_MODEL, Served, ServeFactory
from tests.gateway.support import CHAT, MESSAGES, TIMEOUT, WAV, Answer, send, transcription_form
from tests.support import EventLog, in_flight, serving

STATIC_MODEL = "model-s"
REPLY = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "all good"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
}
GOOD_EVENTS = [
    b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{"content":"all good"}}]}\n\n',
    b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}\n\n',
    b"data: [DONE]\n\n",
]


def fallback_from(served: Served, index: int) -> dict[str, str]:
    """Headers that send a request to provider ``index`` first, others allowed after it."""
    return {
        **served.auth(),
        "X-ZG-Provider": served.devnet.providers[index].address,
        "X-ZG-Allow-Fallbacks": "true",
    }


def events_of(text: str) -> list[str]:
    return [block for block in text.split("\n\n") if block]


def failures_at(log: EventLog, provider: str) -> list[tuple[str, str]]:
    return [(e.verdict, e.detail) for e in log.of(AttemptFailed) if e.provider.lower() == provider.lower()]


class TestStalledBody:
    async def test_a_body_that_stalls_fails_over_well_within_the_deadline(self, serve: ServeFactory) -> None:
        """Provider 0 sends its headers and half its body, then nothing for 30 s, past the 15 s deadline:
        the body idle timeout (5 s here) fails the attempt, and another provider answers in time."""
        served = await serve(request_timeout=15.0)
        log = EventLog()
        served.router.subscribe(log)
        stalled = served.devnet.providers[0].address
        await served.set_faults(0, stall_body=1.0, stall_seconds=30.0)
        body = {"model": CHAT_MODEL, "messages": MESSAGES}
        answer = await send(served, "POST", CHAT, json=body, headers=fallback_from(served, 0))
        assert answer.status == 200, answer.text
        assert answer.headers["x-zg-provider"] != stalled
        assert answer.json()["choices"][0]["message"]["content"]
        assert failures_at(log, stalled) == [("unhealthy", "provider " + stalled + ": timed out")]


class TestMalformedPlainReply:
    async def test_a_truncated_200_fails_over_and_counts_against_its_provider(
        self, serve: ServeFactory
    ) -> None:
        """Provider 0 answers 200 with half a JSON body: another provider's whole reply comes back, and the
        broken one is counted unhealthy."""
        served = await serve()
        log = EventLog()
        served.router.subscribe(log)
        broken = served.devnet.providers[0].address
        await served.set_faults(0, malformed_json=1.0)
        body = {"model": CHAT_MODEL, "messages": MESSAGES}
        answer = await send(served, "POST", CHAT, json=body, headers=fallback_from(served, 0))
        assert answer.status == 200, answer.text
        assert answer.headers["x-zg-provider"] != broken
        assert answer.json()["choices"][0]["message"]["content"]
        detail = "reply body is not a JSON object (truncated or malformed)"
        assert failures_at(log, broken) == [("unhealthy", detail)]
        state = served.router.pool.get(broken)
        assert state is not None
        assert state.health.error_rate > 0
        assert in_flight(served.router, state) == 0

    async def test_a_pinned_provider_answering_broken_json_is_a_502_not_a_200(
        self, serve: ServeFactory
    ) -> None:
        """With no provider to fall over to, the caller gets our 502 naming the broken reply, never the
        broken body as a success."""
        served = await serve()
        broken = served.devnet.providers[0].address
        await served.set_faults(0, malformed_json=1.0)
        headers = {**served.auth(), "X-ZG-Provider": broken}
        answer = await send(
            served, "POST", CHAT, json={"model": CHAT_MODEL, "messages": MESSAGES}, headers=headers
        )
        assert answer.status == 502, answer.text
        error = answer.json()["error"]
        assert error["type"] == "provider_error"
        assert f"{broken}: 200 reply body is not a JSON object (truncated or malformed)" in error["message"]


class TestMalformedStreamEvent:
    async def test_a_bad_event_mid_stream_ends_it_with_stream_interrupted_and_done(
        self, serve: ServeFactory
    ) -> None:
        """Provider 0's second event is not JSON: the client has the first event, then our error event
        and [DONE], and never the bad event; the provider is counted unhealthy."""
        served = await serve()
        broken = served.devnet.providers[0].address
        await served.set_faults(0, malformed_json=1.0)
        headers = {**served.auth(), "X-ZG-Provider": broken}
        body = {"model": CHAT_MODEL, "messages": MESSAGES, "stream": True}
        answer = await send(served, "POST", CHAT, json=body, headers=headers)
        assert answer.status == 200
        events = events_of(answer.text)
        assert json.loads(events[0].removeprefix("data: "))["choices"][0]["delta"]["role"] == "assistant"
        assert "not json" not in answer.text
        error = json.loads(events[-2].removeprefix("data: "))["error"]
        assert error["code"] == "stream_interrupted"
        assert "malformed stream event" in error["message"]
        assert events[-1] == "data: [DONE]"
        assert len(events) == 3
        state = served.router.pool.get(broken)
        assert state is not None
        assert state.health.error_rate > 0
        assert in_flight(served.router, state) == 0


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class StaticGateway:
    """A gateway over static upstreams only: its URL, router, the router's events and a client."""

    url: str
    router: Router
    log: EventLog
    http: aiohttp.ClientSession

    async def post(self, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> Answer:
        """One request under TIMEOUT with our API key; the answer read whole, never a traceback."""
        auth = {"Authorization": f"Bearer {API_KEY}", **(headers or {})}
        async with self.http.post(
            self.url + path, headers=auth, timeout=aiohttp.ClientTimeout(TIMEOUT), **kwargs
        ) as r:
            text = await r.text()
        assert "Traceback" not in text, text
        return Answer(r.status, r.headers, text)


@asynccontextmanager
async def upstream(
    seen: list[str], chat: Handler, *, path: str = "/v1/chat/completions"
) -> AsyncIterator[str]:
    """A server on 127.0.0.1 answering ``path`` with ``chat`` (every request recorded in ``seen``);
    yields its base URL (``…/v1``)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.path)
        await request.read()
        return await chat(request)

    async def anything(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(status=404)

    app = web.Application()
    app.router.add_post(path, handler)
    app.router.add_route("*", "/{tail:.*}", anything)
    async with serving(app) as url:
        yield url + "/v1"


@asynccontextmanager
async def static_gateway(
    *upstreams: tuple[str, str], service_type: str = "chatbot"
) -> AsyncIterator[StaticGateway]:
    """A router and gateway whose only providers are the ``(name, url)`` static upstreams, with private
    targets refused (the default): the operator's own upstreams are reachable on 127.0.0.1 all the same."""
    config = RouterConfig(
        static_upstreams=tuple(
            StaticUpstream(name=name, url=url, models=(STATIC_MODEL,), service_type=service_type)
            for name, url in upstreams
        ),
        dispatch=DispatchOptions(request_timeout=15.0),
    )
    log = EventLog()
    gateway_config = GatewayConfig(port=0, api_keys=(API_KEY,), shutdown_timeout=0.5)
    async with (
        Router(config) as router,
        Gateway(router, gateway_config) as gateway,
        aiohttp.ClientSession() as http,
    ):
        router.subscribe(log)
        yield StaticGateway(gateway.url, router, log, http)


async def good_reply(request: web.Request) -> web.StreamResponse:
    if json.loads(await request.read() or b"{}").get("stream"):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in GOOD_EVENTS:
            await response.write(event)
        await response.write_eof()
        return response
    return web.json_response(REPLY)


CHAT_BODY = {"model": STATIC_MODEL, "messages": MESSAGES}
FIRST = {"X-ZG-Provider": "first", "X-ZG-Allow-Fallbacks": "true"}


class TestRedirects:
    @pytest.mark.parametrize("status", [302, 307])
    async def test_a_redirect_to_loopback_is_never_followed_and_another_upstream_answers(
        self, status: int
    ) -> None:
        """The first upstream redirects the prompt to another loopback server: that server sees no
        request, the client gets the next upstream's answer, and no Location reaches the client."""
        target_seen: list[str] = []
        first_seen: list[str] = []
        second_seen: list[str] = []
        async with upstream(target_seen, good_reply) as target:

            async def redirect(request: web.Request) -> web.StreamResponse:
                return web.Response(status=status, headers={"Location": target + "/chat/completions"})

            async with (
                upstream(first_seen, redirect) as first,
                upstream(second_seen, good_reply) as second,
                static_gateway(("first", first), ("second", second)) as gateway,
            ):
                answer = await gateway.post(CHAT, FIRST, json=CHAT_BODY)
        assert answer.status == 200, answer.text
        assert answer.json() == REPLY
        assert answer.headers["x-zg-provider"] == "second"
        assert "Location" not in answer.headers
        assert first_seen == ["/v1/chat/completions"]
        assert target_seen == []
        assert [(e.verdict, e.status) for e in gateway.log.of(AttemptFailed)] == [("misconfigured", status)]

    async def test_a_redirect_with_no_other_upstream_is_our_error_that_does_not_show_the_target(self) -> None:
        """The only upstream redirects: the client gets our error, without the redirect's Location, and the
        target saw nothing. (A redirecting upstream is excluded as misconfigured, so the retry finds no
        provider left: a 503 no_available_provider, as for a lone upstream answering 404.)"""
        target_seen: list[str] = []
        first_seen: list[str] = []
        async with upstream(target_seen, good_reply) as target:

            async def redirect(request: web.Request) -> web.StreamResponse:
                return web.Response(status=307, headers={"Location": target + "/chat/completions"})

            async with upstream(first_seen, redirect) as first, static_gateway(("first", first)) as gateway:
                answer = await gateway.post(CHAT, json=CHAT_BODY)
        assert (answer.status, answer.json()["error"]["type"]) in {
            (502, "provider_error"),
            (503, "service_unavailable"),
        }, answer.text
        assert "Location" not in answer.headers
        assert target not in answer.text
        assert target_seen == []


class TestStreamBrokenFromTheStart:
    async def test_a_first_event_that_is_not_json_fails_over(self) -> None:
        """Nothing has reached the client when the first event turns out not to be JSON: the stream comes
        whole from the next upstream, and the broken one is counted unhealthy."""

        async def broken(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b"data: {not json\n\n" + b"".join(GOOD_EVENTS))
            await response.write_eof()
            return response

        first_seen: list[str] = []
        second_seen: list[str] = []
        async with (
            upstream(first_seen, broken) as first,
            upstream(second_seen, good_reply) as second,
            static_gateway(("first", first), ("second", second)) as gateway,
        ):
            answer = await gateway.post(CHAT, FIRST, json={**CHAT_BODY, "stream": True})
            state = gateway.router.pool.get("first")
            assert state is not None
            assert state.health.error_rate > 0
        assert answer.status == 200, answer.text
        assert answer.headers["x-zg-provider"] == "second"
        assert answer.text.encode() == b"".join(GOOD_EVENTS)
        assert [(e.verdict, e.detail) for e in gateway.log.of(AttemptFailed)] == [
            ("unhealthy", "provider first: sent a malformed stream event (its data is not JSON)")
        ]


class TestNonJsonReplies:
    async def test_a_text_transcription_passes_as_it_is(self) -> None:
        """Transcriptions in text, srt or vtt are not JSON, and say so in their Content-Type: passed on."""

        async def text(request: web.Request) -> web.StreamResponse:
            return web.Response(text="hello there\n", content_type="text/plain")

        seen: list[str] = []
        async with (
            upstream(seen, text, path="/v1/audio/transcriptions") as url,
            static_gateway(("first", url), service_type="speech-to-text") as gateway,
        ):
            form = transcription_form(model=STATIC_MODEL, file=WAV, response_format="text")
            answer = await gateway.post("/v1/audio/transcriptions", data=form)
        assert answer.status == 200, answer.text
        assert answer.text == "hello there\n"
        assert answer.headers["Content-Type"].startswith("text/plain")
        assert gateway.log.of(AttemptFailed) == []

    async def test_a_chat_reply_in_plain_text_is_a_provider_failure(self) -> None:
        """A chat reply is JSON whatever its Content-Type says: plain text is a 502 with no other upstream."""

        async def text(request: web.Request) -> web.StreamResponse:
            return web.Response(text="all good", content_type="text/plain")

        seen: list[str] = []
        async with upstream(seen, text) as url, static_gateway(("first", url)) as gateway:
            answer = await gateway.post(CHAT, json=CHAT_BODY)
        assert answer.status == 502, answer.text
        assert "first: 200 reply body is not a JSON object" in answer.json()["error"]["message"]

    async def test_a_transcription_that_says_json_must_be_json(self) -> None:
        """A transcription whose Content-Type says JSON but whose body is cut short is a provider failure."""

        async def cut(request: web.Request) -> web.StreamResponse:
            return web.Response(body=b'{"text": "hel', content_type="application/json")

        seen: list[str] = []
        async with (
            upstream(seen, cut, path="/v1/audio/transcriptions") as url,
            static_gateway(("first", url), service_type="speech-to-text") as gateway,
        ):
            form = transcription_form(model=STATIC_MODEL, file=WAV)
            answer = await gateway.post("/v1/audio/transcriptions", data=form)
        assert answer.status == 502, answer.text
        assert "first: 200 reply body is not a JSON object" in answer.json()["error"]["message"]
