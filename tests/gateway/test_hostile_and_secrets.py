"""Hostile bodies cannot take the gateway down, and logs and error bodies never show a secret.

Deeply nested JSON, from a client or from a provider, runs against a gateway in a child process so that a
crash shows as a dead child; the secrets check sends good and bad requests and reads every log event.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from router.observability.logging import LogObserver
from tests.gateway.conftest import API_KEY, CHAT_MODEL, ServeFactory
from tests.gateway.support import CHAT, FAKE_SECRET, MESSAGES, REPO, TIMEOUT, WRONG_KEY, sdk, send
from tests.support import serving

# A real gateway in a child process, so that a crash shows as a dead child, not a dead test run.
GATEWAY_SCRIPT = """
import asyncio, sys
from router.client import Router
from router.config import GatewayConfig, RouterConfig, StaticUpstream
from router.server.app import Gateway
from router.transport.http import TransportOptions

async def main():
    upstream = StaticUpstream(name="up", url=sys.argv[1], models=("model-s",))
    transport = TransportOptions(allow_private_targets=True)
    config = RouterConfig(static_upstreams=(upstream,), transport=transport)
    async with Router(config) as router:
        async with Gateway(router, GatewayConfig(port=0, api_keys=(sys.argv[2],))) as gateway:
            print(gateway.url, flush=True)
            await asyncio.to_thread(sys.stdin.readline)

asyncio.run(main())
"""
NESTED = b"[" * 200_000 + b"]" * 200_000


async def hostile_upstream_reply(request: web.Request) -> web.Response:
    """A chat "completion" whose usage is nested 200,000 lists deep."""
    await request.read()
    return web.Response(body=b'{"usage": ' + NESTED + b"}", content_type="application/json")


@pytest.fixture
async def hostile_upstream() -> AsyncIterator[str]:
    """An OpenAI-style upstream on 127.0.0.1 whose chat replies are deeply nested; yields its base URL."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", hostile_upstream_reply)
    async with serving(app) as url:
        yield url + "/v1"


@dataclass
class Child:
    """A gateway in a child process: its URL and the process."""

    url: str
    process: asyncio.subprocess.Process


@pytest.fixture
async def child_gateway(hostile_upstream: str) -> AsyncIterator[Child]:
    """A gateway in its own Python process, routing model-s to the hostile upstream (stopped afterwards)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        GATEWAY_SCRIPT,
        hostile_upstream,
        API_KEY,
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), TIMEOUT)
        assert line.startswith(b"http://"), line
        yield Child(line.decode().strip(), process)
    finally:
        if process.returncode is None:
            process.stdin.write(b"\n")
        try:
            await asyncio.wait_for(process.communicate(), TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.communicate()


async def post_to_child(child: Child, body: bytes) -> tuple[int, str]:
    """POST ``body`` to the child gateway's chat route; fails the test, naming the exit status, if it dies."""
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    dropped: aiohttp.ClientError | None = None
    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(TIMEOUT), http.get(child.url + "/healthz") as before:
            assert before.status == 200
        try:
            async with asyncio.timeout(TIMEOUT), http.post(child.url + CHAT, data=body, headers=headers) as r:
                status, text = r.status, await r.text()
        except aiohttp.ClientError as exc:
            dropped = exc
        if dropped is not None:
            code = await asyncio.wait_for(child.process.wait(), TIMEOUT)
            pytest.fail(f"the gateway dropped the connection ({dropped!r}) and exited with status {code}")
        assert "Traceback" not in text
        async with asyncio.timeout(TIMEOUT), http.get(child.url + "/healthz") as after:
            assert after.status == 200
    return status, text


class TestHostileBodies:
    @pytest.mark.parametrize(
        "body",
        [b"[" * 200_000, b'{"model": "model-s", "messages": ' + NESTED + b"}"],
        ids=["unterminated", "well-formed"],
    )
    async def test_deeply_nested_request_is_a_400_and_the_gateway_lives(
        self, child_gateway: Child, body: bytes
    ) -> None:
        """A deeply nested JSON body (400 KB, far under the limit) is a 400; the gateway keeps serving."""
        status, text = await post_to_child(child_gateway, body)
        assert status == 400, text
        assert json.loads(text)["error"]["type"] == "invalid_request_error"

    async def test_deeply_nested_provider_reply_leaves_the_gateway_alive(self, child_gateway: Child) -> None:
        """A provider's deeply nested reply cannot take the gateway down: the caller gets an answer."""
        body = json.dumps({"model": "model-s", "messages": MESSAGES}).encode()
        status, text = await post_to_child(child_gateway, body)
        assert status in (200, 502), text


class TestSecrets:
    async def test_no_secret_in_logs_or_error_bodies(self, serve: ServeFactory) -> None:
        """Across good and bad requests no log event shows a key, a session token or a sent secret."""
        served = await serve()
        served.router.subscribe(LogObserver())
        chat = {"model": CHAT_MODEL, "messages": MESSAGES}
        error_texts: list[str] = []
        with capture_logs() as events:
            async with sdk(served) as client:
                await client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
                stream = await client.chat.completions.create(
                    model=CHAT_MODEL, messages=MESSAGES, stream=True
                )
                _ = [chunk async for chunk in stream]
                await client.embeddings.create(model="embed-r", input="x")
            async with sdk(served, key=WRONG_KEY) as client:
                with pytest.raises(openai.AuthenticationError) as caught:
                    await client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
                error_texts.append(caught.value.response.text)
            bad_requests: list[tuple[str, dict[str, Any]]] = [
                (CHAT, {"json": chat, "headers": {"Authorization": f"Bearer {FAKE_SECRET}"}}),
                (CHAT, {"json": chat, "headers": {"Authorization": FAKE_SECRET}}),
                (CHAT, {"json": chat, "headers": {"Authorization": f"Basic {FAKE_SECRET}"}}),
                (CHAT, {"data": b"{oops", "headers": served.auth()}),
                (CHAT, {"json": {**chat, "model": "nope"}, "headers": served.auth()}),
                (
                    CHAT,
                    {"json": {**chat, "provider": {"only": ["0x" + "ab" * 20]}}, "headers": served.auth()},
                ),
                (
                    "/v1/images/generations",
                    {"json": {"model": "image-r", "prompt": "p", "n": 50}, "headers": served.auth()},
                ),
            ]
            for path, kwargs in bad_requests:
                answer = await send(served, "POST", path, **kwargs)
                assert answer.status >= 400
                error_texts.append(answer.text)
            # A failing provider, so that failed attempts are logged too.
            await served.set_faults(0, error_500=1.0)
            pinned = {**served.auth(), "X-ZG-Provider": served.devnet.providers[0].address}
            answer = await send(
                served, "POST", CHAT, json=chat, headers={**pinned, "X-ZG-Allow-Fallbacks": "true"}
            )
            assert answer.status == 200
        kinds = {event["event"] for event in events}
        assert {"request", "attempt failed"} <= kinds, kinds
        forbidden = {
            API_KEY,
            WRONG_KEY,
            FAKE_SECRET,
            served.private_key,
            served.private_key.removeprefix("0x"),
            "app-sk-",
        }
        for event in events:
            text = repr(event).lower()
            for secret in forbidden:
                assert secret.lower() not in text, event
        for text in error_texts:
            for secret in (API_KEY, WRONG_KEY, FAKE_SECRET):
                assert secret not in text, text
        assert served.private_key.removeprefix("0x") not in repr(served.router.config)
