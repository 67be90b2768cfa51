"""CORS for browser apps: off by default; ``[gateway] cors_origins`` (or ``ZG_ROUTER_CORS_ORIGINS``) names
the origins whose pages may call the API. Their preflights are answered, and every reply to them (plain,
streamed, an error, the 413 refused before routing) is marked for the browser, with our receipt headers
readable. Any other origin gets no CORS header at all, so the browser refuses it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from router.client import Router
from router.config import GatewayConfig, RouterConfig, StaticUpstream, load_config
from router.errors import ConfigError
from router.server.app import Gateway
from tests.conftest import watch_text
from tests.gateway.conftest import API_KEY
from tests.gateway.support import MESSAGES, TIMEOUT, Answer
from tests.support import serving

APP = "https://app.example"
OTHER = "https://evil.example"
MODEL = "model-c"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = "/v1/chat/completions"
REPLY = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}
EVENTS = [
    b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n',
    b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}\n\n',
    b"data: [DONE]\n\n",
]
PREFLIGHT = {"Access-Control-Request-Method": "POST"}
UPSTREAM_TOML = '[[upstreams]]\nname = "u"\nurl = "https://u.example/v1"\nmodels = ["m"]\n'
RECEIPTS = {"x-request-id", "x-zg-provider", "x-zg-attempts", "x-zg-cost", "x-zg-chat-id", "zg-res-key"}


async def chat(request: web.Request) -> web.StreamResponse:
    if json.loads(await request.read()).get("stream"):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in EVENTS:
            await response.write(event)
        await response.write_eof()
        return response
    return web.json_response(REPLY)


class Browser:
    """Requests as a page's fetch() sends them (an Origin header), to one gateway."""

    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url, self.http = url, http

    async def send(self, method: str, path: str, headers: Mapping[str, str], **kwargs: Any) -> Answer:
        async with (
            asyncio.timeout(TIMEOUT),
            self.http.request(method, self.url + path, headers=headers, **kwargs) as response,
        ):
            text = await response.text()
        watch_text(f"{text} {dict(response.headers)!r}", f"the response to {method} {path}")
        return Answer(response.status, response.headers, text)

    async def chat(self, origin: str | None, **body: Any) -> Answer:
        headers = {**AUTH, **({"Origin": origin} if origin else {})}
        return await self.send("POST", CHAT, headers, json={"model": MODEL, "messages": MESSAGES, **body})


@asynccontextmanager
async def gateway(**config: Any) -> AsyncIterator[Browser]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    async with serving(app) as url:
        upstream = StaticUpstream(name="up", url=url + "/v1", models=(MODEL,))
        gateway_config = GatewayConfig(port=0, api_keys=(API_KEY,), shutdown_timeout=0.5, **config)
        async with (
            Router(RouterConfig(static_upstreams=(upstream,))) as router,
            Gateway(router, gateway_config) as served,
            aiohttp.ClientSession() as http,
        ):
            yield Browser(served.url, http)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with gateway(cors_origins=(APP,)) as served:
        yield served


def cors_headers(answer: Answer) -> dict[str, str]:
    return {
        name.lower(): value
        for name, value in answer.headers.items()
        if name.lower().startswith("access-control-")
    }


def exposed(answer: Answer) -> set[str]:
    return {name.strip() for name in answer.headers["Access-Control-Expose-Headers"].split(",")}


def assert_marked_for(answer: Answer, origin: str) -> None:
    assert answer.headers["Access-Control-Allow-Origin"] == origin
    assert exposed(answer) >= RECEIPTS
    assert "Access-Control-Allow-Credentials" not in answer.headers


class TestPreflight:
    async def test_an_allowed_origin_is_told_what_it_may_send(self, browser: Browser) -> None:
        """The preflight needs no key: it names our methods, the asked-for headers we take (ours, the
        SDKs' telemetry and Anthropic's) and how long to keep the answer. A header we do not take is
        left out, so the browser will not send it."""
        asked = "authorization, content-type, x-stainless-os, x-zg-sort, anthropic-version, x-api-key, x-evil"
        answer = await browser.send(
            "OPTIONS", CHAT, {**PREFLIGHT, "Origin": APP, "Access-Control-Request-Headers": asked}
        )
        assert answer.status == 204, answer.text
        assert answer.text == ""
        headers = cors_headers(answer)
        assert headers["access-control-allow-origin"] == APP
        assert headers["access-control-allow-methods"] == "GET, POST, OPTIONS"
        assert headers["access-control-allow-headers"] == (
            "authorization, content-type, x-stainless-os, x-zg-sort, anthropic-version, x-api-key"
        )
        assert headers["access-control-max-age"] == "3600"
        assert "Origin" in answer.headers["Vary"]

    async def test_another_origin_gets_no_cors_header(self, browser: Browser) -> None:
        """A preflight from an origin not configured meets the route's own 405, marked for nobody."""
        answer = await browser.send("OPTIONS", CHAT, {**PREFLIGHT, "Origin": OTHER})
        assert answer.status == 405
        assert cors_headers(answer) == {}

    async def test_an_options_request_that_is_no_preflight_is_routed_as_ever(self, browser: Browser) -> None:
        answer = await browser.send("OPTIONS", CHAT, {"Origin": APP})
        assert answer.status == 405
        assert answer.json()["error"]["code"] == "method_not_allowed"


class TestReplies:
    async def test_a_reply_to_an_allowed_origin_is_readable_with_its_receipts(self, browser: Browser) -> None:
        answer = await browser.chat(APP)
        assert answer.status == 200, answer.text
        assert_marked_for(answer, APP)
        assert answer.headers["x-zg-provider"] == "up"

    async def test_a_stream_is_marked_before_its_first_event(self, browser: Browser) -> None:
        answer = await browser.chat(APP, stream=True)
        assert answer.status == 200, answer.text
        assert answer.text.endswith("data: [DONE]\n\n")
        assert_marked_for(answer, APP)

    async def test_an_error_is_readable_too(self, browser: Browser) -> None:
        """A page must see why it was refused: a 401 (no key) and a 404 (no route) carry the headers."""
        unauthorized = await browser.send("POST", CHAT, {"Origin": APP}, json={})
        unknown = await browser.send("GET", "/v1/nowhere", {**AUTH, "Origin": APP})
        assert (unauthorized.status, unknown.status) == (401, 404)
        assert_marked_for(unauthorized, APP)
        assert_marked_for(unknown, APP)

    async def test_another_origin_is_served_but_not_marked(self, browser: Browser) -> None:
        """The gateway cannot tell a browser from a server: it answers, and the browser withholds the
        reply from the other origin's page. ``Vary: Origin`` keeps caches from mixing the two."""
        answer = await browser.chat(OTHER)
        assert answer.status == 200
        assert cors_headers(answer) == {}
        assert "Origin" in answer.headers["Vary"]

    async def test_a_body_refused_before_routing_is_marked(self) -> None:
        """A declared body over ``max_body_bytes`` is refused before the app routes it: marked all the
        same, so the page reads the 413 instead of a bare network error."""
        async with gateway(cors_origins=(APP,), max_body_bytes=1024) as served:
            answer = await served.send("POST", CHAT, {**AUTH, "Origin": APP}, data=b"x" * 4096)
        assert answer.status == 413
        assert_marked_for(answer, APP)

    async def test_any_origin_with_a_star(self) -> None:
        async with gateway(cors_origins=("*",)) as served:
            answer = await served.chat(OTHER)
            preflight = await served.send("OPTIONS", "/v1/models", {**PREFLIGHT, "Origin": OTHER})
        assert_marked_for(answer, "*")
        assert (preflight.status, preflight.headers["Access-Control-Allow-Origin"]) == (204, "*")

    async def test_cors_is_off_by_default(self) -> None:
        async with gateway() as served:
            answer = await served.chat(APP)
            preflight = await served.send("OPTIONS", CHAT, {**PREFLIGHT, "Origin": APP})
        assert answer.status == 200
        assert cors_headers(answer) == {}
        assert "Vary" not in answer.headers
        assert preflight.status == 405
        assert cors_headers(preflight) == {}


class TestConfig:
    def test_the_file_names_the_origins_and_the_environment_overrides_it(self, tmp_path: Path) -> None:
        path = tmp_path / "router.toml"
        path.write_text(
            UPSTREAM_TOML + '[gateway]\nallow_anonymous = true\ncors_origins = ["https://app.example"]\n'
        )
        _, from_file = load_config(path, {})
        _, from_env = load_config(path, {"ZG_ROUTER_CORS_ORIGINS": " https://a.example, http://[::1]:3000 ,"})
        _, switched_off = load_config(path, {"ZG_ROUTER_CORS_ORIGINS": ""})
        assert from_file.cors_origins == ("https://app.example",)
        assert from_env.cors_origins == ("https://a.example", "http://[::1]:3000")
        assert switched_off.cors_origins == ()

    @pytest.mark.parametrize(
        "origin",
        [
            "https://app.example/",
            "app.example",
            "https://App.example",
            "https://app.example/path",
            "ftp://x.example",
        ],
    )
    def test_an_origin_browsers_never_send_is_refused(self, origin: str) -> None:
        with pytest.raises(ConfigError) as caught:
            GatewayConfig(allow_anonymous=True, cors_origins=(origin,))
        assert caught.value.args[0] == (
            f"cors_origins: {origin!r} is not an origin as browsers send it: give scheme://host[:port] in "
            'lowercase, with no path or trailing slash, or "*" for any'
        )

    def test_a_list_of_something_else_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "router.toml"
        path.write_text(
            UPSTREAM_TOML + '[gateway]\nallow_anonymous = true\ncors_origins = "https://app.example"\n'
        )
        with pytest.raises(ConfigError, match=r"gateway\.cors_origins must be a list"):
            load_config(path, {})
