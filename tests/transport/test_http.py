"""The provider transport against real aiohttp servers on 127.0.0.1: a plain body that stalls, stream events
that are not JSON, redirects (never followed), and the guard on every connection's address.

127.0.0.1 is the only address these tests may reach, so "refused" is shown with it: with private targets
refused, a registry provider at 127.0.0.1 (literal or named ``localhost``) must never receive a request,
while a static upstream (the operator's own) at the same address is served.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from router.errors import ConfigError, ProviderUnreachable
from router.pool.providers import ProviderInfo, ProviderKind
from router.transport.http import HttpTransport, TransportOptions, Upstream
from tests.support import serving

CHAT = "/chat/completions"
REPLY = b'{"id":"chatcmpl-1","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}]}'
# The whole test is bounded: an exchange that would run to the request's deadline fails the test instead.
BOUND = 10.0
DEADLINE = 60.0
USAGE_EVENT = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}\n\n'


@dataclass
class Seen:
    """The requests a test server received, by path."""

    paths: list[str] = field(default_factory=list)


def provider(url: str, kind: ProviderKind = ProviderKind.CHAIN) -> ProviderInfo:
    return ProviderInfo("0xp", kind, url + "/v1/proxy", url + "/v1/proxy/models", "chatbot", ("m",))


@pytest.fixture
async def target() -> AsyncIterator[tuple[str, Seen]]:
    """A server that answers every request 200 and records it: where redirects point."""
    seen = Seen()

    async def anything(request: web.Request) -> web.Response:
        seen.paths.append(request.path)
        await request.read()
        return web.Response(body=REPLY, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    async with serving(app) as url:
        yield url, seen


async def post(transport: HttpTransport, info: ProviderInfo, *, stream: bool = False) -> Upstream:
    return await transport.send(info, CHAT, b"{}", {}, time_left=DEADLINE, stream=stream)


class TestOptions:
    @pytest.mark.parametrize("value", [0.0, -1.0])
    def test_body_idle_timeout_must_be_positive(self, value: float) -> None:
        """A body idle timeout of zero or less is a config error naming the field."""
        with pytest.raises(ConfigError, match="body_idle_timeout"):
            TransportOptions(body_idle_timeout=value)


class TestPlainBody:
    async def test_a_body_that_stalls_fails_after_the_idle_timeout(self) -> None:
        """Headers and half a body, then nothing: the read fails on the idle timeout, long before the
        request's deadline (60 s here), so the attempt can still fail over."""
        release = asyncio.Event()

        async def stall(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.content_length = len(REPLY)
            await response.prepare(request)
            await response.write(REPLY[:10])
            await release.wait()
            return response

        app = web.Application()
        app.router.add_post("/v1/proxy" + CHAT, stall)
        options = TransportOptions(allow_private_targets=True, body_idle_timeout=0.2)
        async with serving(app) as url, HttpTransport(options) as transport:
            upstream = await post(transport, provider(url))
            try:
                async with asyncio.timeout(BOUND):
                    with pytest.raises(ProviderUnreachable, match="timed out"):
                        await upstream.read()
            finally:
                release.set()  # the stalled handler ends, so the server stops at once

    async def test_the_idle_timeout_does_not_bound_the_wait_for_headers(self) -> None:
        """A provider generating longer than the body idle timeout before it answers is not cut off: the
        timeout starts once the headers are in."""

        async def slow(request: web.Request) -> web.Response:
            await asyncio.sleep(0.5)  # the provider generating its reply
            return web.Response(body=REPLY, content_type="application/json")

        app = web.Application()
        app.router.add_post("/v1/proxy" + CHAT, slow)
        options = TransportOptions(allow_private_targets=True, body_idle_timeout=0.1)
        async with serving(app) as url, HttpTransport(options) as transport:
            upstream = await post(transport, provider(url))
            assert await upstream.read() == REPLY

    @pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
    async def test_a_body_in_many_writes_is_read_whole(self, declared: bool) -> None:
        """A body sent in several writes, with or without a Content-Length, comes back byte for byte."""
        body = b'{"data":"' + b"x" * 300_000 + b'"}'

        async def pieces(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            if declared:
                response.content_length = len(body)
            await response.prepare(request)
            for start in range(0, len(body), 70_000):
                await response.write(body[start : start + 70_000])
            await response.write_eof()
            return response

        app = web.Application()
        app.router.add_post("/v1/proxy" + CHAT, pieces)
        async with (
            serving(app) as url,
            HttpTransport(TransportOptions(allow_private_targets=True)) as transport,
        ):
            upstream = await post(transport, provider(url))
            assert await upstream.read() == body

    @pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
    async def test_a_body_over_the_limit_is_cut_off(self, declared: bool) -> None:
        """More than ``max_response_bytes`` is a provider failure, declared or not."""
        body = b"x" * 5000

        async def big(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            if declared:
                response.content_length = len(body)
            await response.prepare(request)
            await response.write(body)
            await response.write_eof()
            return response

        app = web.Application()
        app.router.add_post("/v1/proxy" + CHAT, big)
        options = TransportOptions(allow_private_targets=True, max_response_bytes=4096)
        async with serving(app) as url, HttpTransport(options) as transport:
            upstream = await post(transport, provider(url))
            with pytest.raises(ProviderUnreachable, match="response larger than 4096 bytes"):
                await upstream.read()


async def stream_of(body: bytes) -> tuple[list[bytes], Upstream, ProviderUnreachable | None]:
    """The events a stream whose body is ``body`` yields, its upstream, and the failure that ended it."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(body)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/proxy" + CHAT, handler)
    events: list[bytes] = []
    failure = None
    async with serving(app) as url, HttpTransport(TransportOptions(allow_private_targets=True)) as transport:
        upstream = await post(transport, provider(url), stream=True)
        try:
            async for event in upstream.events():
                events.append(event)
        except ProviderUnreachable as exc:
            failure = exc
        finally:
            upstream.close()
    return events, upstream, failure


class TestStreamEvents:
    async def test_events_pass_and_the_usage_is_kept(self) -> None:
        """Good events (a comment among them) pass as sent; the final chunk's usage is kept."""
        sent = [b'data: {"choices":[]}\n\n', b": keep-alive\n\n", USAGE_EVENT, b"data: [DONE]\n\n"]
        events, upstream, failure = await stream_of(b"".join(sent))
        assert failure is None
        assert events == sent
        assert upstream.usage == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}

    @pytest.mark.parametrize(
        ("bad", "reason"),
        [
            (b"data: {not json\n\n", "its data is not JSON"),
            (b'data: {"choices":[{"delta":\n\n', "its data is not JSON"),
            (b"data: [1, 2]\n\n", "its data is not a JSON object"),
        ],
        ids=["not-json", "truncated", "json-list"],
    )
    async def test_an_event_that_is_not_a_json_object_ends_the_stream(self, bad: bytes, reason: str) -> None:
        """The events before it pass; the bad one is never yielded and the stream fails there."""
        good = b'data: {"choices":[]}\n\n'
        events, _, failure = await stream_of(good + bad + USAGE_EVENT + b"data: [DONE]\n\n")
        assert events == [good]
        assert failure is not None
        assert str(failure) == f"provider 0xp: sent a malformed stream event ({reason})"


class TestRedirects:
    @pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
    @pytest.mark.parametrize("kind", [ProviderKind.CHAIN, ProviderKind.STATIC])
    async def test_a_redirect_is_the_reply_and_is_never_followed(
        self, target: tuple[str, Seen], status: int, kind: ProviderKind
    ) -> None:
        """A provider's 3xx comes back as it is; the place it points at (a loopback server) sees nothing."""
        target_url, seen = target

        async def redirect(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(status=status, headers={"Location": target_url + "/steal"})

        app = web.Application()
        app.router.add_post("/v1/proxy" + CHAT, redirect)
        async with (
            serving(app) as url,
            HttpTransport(TransportOptions(allow_private_targets=True)) as transport,
        ):
            upstream = await post(transport, provider(url, kind))
            assert upstream.status == status
            await upstream.read()
        assert seen.paths == []

    async def test_a_redirect_of_a_free_route_is_a_failure_and_is_never_followed(
        self, target: tuple[str, Seen]
    ) -> None:
        """A GET of ``/v1/models`` answered by a redirect raises; the redirect target sees nothing."""
        target_url, seen = target

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPFound(target_url + "/models")

        app = web.Application()
        app.router.add_get("/v1/proxy/models", redirect)
        async with (
            serving(app) as url,
            HttpTransport(TransportOptions(allow_private_targets=True)) as transport,
        ):
            with pytest.raises(ProviderUnreachable, match="answered 302"):
                await transport.get_json(
                    ProviderKind.CHAIN, "0xp", url + "/v1/proxy/models", headers={}, time_left=5
                )
        assert seen.paths == []


class TestConnectGuard:
    @pytest.mark.parametrize("host", ["127.0.0.1", "localhost"], ids=["literal-ip", "host-name"])
    async def test_a_registry_provider_at_loopback_never_gets_a_request(
        self, target: tuple[str, Seen], host: str
    ) -> None:
        """With private targets refused, a registry provider whose URL reaches 127.0.0.1 (a literal IP,
        which no resolver sees, or a name) is refused at connect time: no byte of the request is sent."""
        target_url, seen = target
        url = target_url.replace("127.0.0.1", host)
        async with HttpTransport(TransportOptions()) as transport:
            with pytest.raises(ProviderUnreachable, match=r"cannot connect \(.*is not a public address"):
                await post(transport, provider(url))
            with pytest.raises(ProviderUnreachable, match=r"cannot connect \(.*is not a public address"):
                await transport.get_json(
                    ProviderKind.CHAIN, "0xp", url + "/v1/models", headers={}, time_left=5
                )
        assert seen.paths == []

    async def test_a_static_upstream_at_loopback_is_served(self, target: tuple[str, Seen]) -> None:
        """The operator's own upstreams are not guarded: one on 127.0.0.1 is reached as configured."""
        target_url, seen = target
        async with HttpTransport(TransportOptions()) as transport:
            upstream = await post(transport, provider(target_url, ProviderKind.STATIC))
            assert (upstream.status, await upstream.read()) == (200, REPLY)
        assert seen.paths == ["/v1/proxy" + CHAT]

    async def test_allowing_private_targets_reaches_loopback(self, target: tuple[str, Seen]) -> None:
        """``allow_private_targets`` (the devnet) lets a registry provider on 127.0.0.1 be reached."""
        target_url, seen = target
        async with HttpTransport(TransportOptions(allow_private_targets=True)) as transport:
            upstream = await post(transport, provider(target_url))
            assert (upstream.status, await upstream.read()) == (200, REPLY)
        assert seen.paths == ["/v1/proxy" + CHAT]


async def test_a_cookie_one_provider_sets_reaches_no_provider() -> None:
    """Two providers on one host: the first answers with Set-Cookie; neither sees it come back."""
    cookies: list[str | None] = []

    async def setting(request: web.Request) -> web.Response:
        cookies.append(request.headers.get("Cookie"))
        response = web.Response(body=REPLY, content_type="application/json")
        response.set_cookie("session", "provider-a-secret")
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", setting)
    async with serving(app) as url, HttpTransport(TransportOptions(allow_private_targets=True)) as transport:
        # By name: aiohttp's own jar would keep no cookie of a bare IP address.
        named = url.replace("127.0.0.1", "localhost")
        first = ProviderInfo("0xa", ProviderKind.CHAIN, named + "/a", named + "/a/models", "chatbot", ("m",))
        second = ProviderInfo("0xb", ProviderKind.CHAIN, named + "/b", named + "/b/models", "chatbot", ("m",))
        for info in (first, second, first):
            upstream = await post(transport, info)
            assert upstream.status == 200
            await upstream.read()
    assert cookies == [None, None, None]
