"""The gateway's HTTP server holds up against what a hostile or broken client sends below the API.

A real gateway (over a static upstream on 127.0.0.1) takes raw bytes from ``asyncio.open_connection``:
requests aiohttp's parser refuses, credentials that are not UTF-8, heads and bodies that never finish,
declared bodies over the limit, more connections than allowed. Each answer is OpenAI-shaped JSON quoting
nothing of the request, each stalled connection is closed by the server, and the log (JSON, as
``zg-router serve`` writes it) holds no key. The server closing a connection is awaited under ``GUARD``,
which only stops a hung test.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from router.client import Router
from router.config import GatewayConfig, RouterConfig, StaticUpstream, load_config
from router.errors import ConfigError
from router.observability.logging import configure_logging
from router.server.app import Gateway
from router.transport.http import TransportOptions
from tests.observability.test_logging import restored_structlog
from tests.support import serving

API_KEY = "sk-harden-" + "0123456789abcdef" * 2
ADMIN_KEY = "zg-admin-harden-" + "fedcba9876543210" * 2
MODEL = "model-h"
GUARD = 20.0
SLOW = 0.5  # header_timeout and body_timeout of the gateway under test, in seconds
MAX_BODY = 4096
# Put into the offending part of each malformed request: no answer may quote it.
MARK = "echo-me-" + "5a17" * 4
MALFORMED = "the request is not valid HTTP/1.1: a header or the body's framing is malformed"


@dataclass
class Raw:
    """A response read off a socket."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def parse(data: bytes) -> Raw:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Raw(int(status_line.split()[1]), headers, body)


def assert_openai_error(raw: Raw, status: int, kind: str, code: str, message: str | None = None) -> None:
    assert raw.status == status, raw
    assert raw.headers["content-type"].startswith("application/json"), raw
    error = raw.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (kind, code, None), raw
    if message is not None:
        assert error["message"] == message


@dataclass
class Hardened:
    """A running gateway, its config, and what it has logged so far."""

    gateway: Gateway
    config: GatewayConfig
    log: io.StringIO

    @property
    def port(self) -> int:
        port = urlsplit(self.gateway.url).port
        assert port is not None
        return port

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def until_closed(self, data: bytes) -> bytes:
        """Send ``data`` on a new connection; everything the server sends until it closes."""
        reader, writer = await self.connect()
        try:
            writer.write(data)
            async with asyncio.timeout(GUARD):
                return await reader.read()
        finally:
            writer.close()

    async def response(self, data: bytes) -> Raw:
        """Send ``data`` on a new connection; the one response, read by its Content-Length."""
        reader, writer = await self.connect()
        try:
            writer.write(data)
            async with asyncio.timeout(GUARD):
                head = await reader.readuntil(b"\r\n\r\n")
                raw = parse(head)
                raw.body = await reader.readexactly(int(raw.headers["content-length"]))
            return raw
        finally:
            writer.close()

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.getvalue().splitlines()]


Harden = Callable[..., Awaitable[Hardened]]


async def upstream_chat(request: web.Request) -> web.Response:
    await request.read()
    message = {"role": "assistant", "content": "hi"}
    return web.json_response({"object": "chat.completion", "choices": [{"index": 0, "message": message}]})


@pytest.fixture
async def harden() -> AsyncIterator[Harden]:
    """``await harden(**gateway_config)``: a gateway over a static upstream, with short header and body
    timeouts and a small body limit unless told otherwise, logging JSON (with its keys as secrets) into
    a buffer as ``zg-router serve`` does."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", upstream_chat)
    with restored_structlog():
        async with serving(app) as url:
            upstream = StaticUpstream(name="up", url=url + "/v1", models=(MODEL,))
            router_config = RouterConfig(
                static_upstreams=(upstream,), transport=TransportOptions(allow_private_targets=True)
            )
            async with Router(router_config) as router:
                opened: list[Gateway] = []

                async def start(**changes: Any) -> Hardened:
                    log = io.StringIO()
                    configure_logging("debug", format="json", secrets=[API_KEY, ADMIN_KEY], stream=log)
                    options: dict[str, Any] = {
                        "port": 0,
                        "api_keys": (API_KEY,),
                        "admin_keys": (ADMIN_KEY,),
                        "shutdown_timeout": 0.5,
                        "header_timeout": SLOW,
                        "body_timeout": SLOW,
                        "max_body_bytes": MAX_BODY,
                    }
                    config = GatewayConfig(**{**options, **changes})
                    gateway = Gateway(router, config)
                    await gateway.__aenter__()
                    opened.append(gateway)
                    return Hardened(gateway, config, log)

                try:
                    yield start
                finally:
                    for gateway in opened:
                        await gateway.__aexit__(None, None, None)


def request(head: str, *, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body


class TestMalformedRequests:
    async def test_a_nul_byte_in_a_header_holding_the_key_is_a_json_400_and_the_key_is_logged_nowhere(
        self, harden: Harden
    ) -> None:
        """aiohttp's parser refuses the header; the answer is an OpenAI 400 that quotes nothing, and the
        parser's log record goes through the JSON pipeline (one line, logger aiohttp.server) with no key."""
        hardened = await harden()
        data = request(f"GET /v1/models HTTP/1.1\nHost: x\nAuthorization: Bearer {API_KEY}\x00\n")
        answer = await hardened.until_closed(data)
        raw = parse(answer)
        assert_openai_error(raw, 400, "invalid_request_error", "bad_request", MALFORMED)
        assert API_KEY.encode() not in answer
        assert b"Authorization" not in answer
        text = hardened.log.getvalue()
        assert API_KEY not in text
        (line,) = [line for line in hardened.log_lines() if line.get("logger") == "aiohttp.server"]
        assert line["event"] == "malformed request from 127.0.0.1: BadHttpMessage"
        assert line["level"] == "info"

    @pytest.mark.parametrize(
        ("data", "message"),
        [
            (
                request(f"GET /{MARK} HTTP/1.1 extra\nHost: x\n"),
                "the request line is not valid HTTP/1.1",
            ),
            (request(f"G\x01T /{MARK} HTTP/1.1\nHost: x\n"), "the request method is not a valid HTTP method"),
            (request(f"GET /v1/models HTTP/1.1\nHost: x\n{MARK} bad: 1\n"), MALFORMED),
            (
                request(f"GET /v1/models HTTP/1.1\nHost: x\nX-Big: {MARK * 600}\n"),
                "a request line or header is longer than the gateway's limit of 8190 bytes",
            ),
            (
                request(
                    "POST /v1/chat/completions HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n",
                    body=f"zz{MARK}\r\n".encode(),
                ),
                MALFORMED,
            ),
            (
                request(f"GET /v1/models HTTP/1.1\nHost: x\nContent-Length: 1\nContent-Length: 2{MARK}\n"),
                MALFORMED,
            ),
            (request(f"GET http://[{MARK} HTTP/1.1\nHost: x\n"), "the request target is not a valid URL"),
        ],
        ids=["request-line", "method", "header-name", "header-too-long", "chunk-size", "two-lengths", "url"],
    )
    async def test_what_the_parser_refuses_is_a_json_400_that_quotes_nothing(
        self, harden: Harden, data: bytes, message: str
    ) -> None:
        """Each parser-level refusal is an OpenAI 400 ``bad_request`` saying what is wrong, not where."""
        hardened = await harden()
        answer = await hardened.until_closed(data)
        assert_openai_error(parse(answer), 400, "invalid_request_error", "bad_request", message)
        assert MARK.encode() not in answer
        assert MARK not in hardened.log.getvalue()

    async def test_an_expectation_aiohttp_refuses_is_json_too(self, harden: Harden) -> None:
        """aiohttp answers an unknown ``Expect`` itself, before any handler: JSON, not its text echo."""
        hardened = await harden()
        raw = await hardened.response(request(f"GET /healthz HTTP/1.1\nHost: x\nExpect: {MARK}\n"))
        assert_openai_error(raw, 417, "invalid_request_error", "expectation_failed", "Expectation Failed")
        assert MARK.encode() not in raw.body


class TestCredentialsThatAreNotText:
    @pytest.mark.parametrize(
        ("path", "code", "message"),
        [
            ("/v1/chat/completions", "invalid_api_key", "invalid API key"),
            ("/admin/balance", "invalid_admin_key", "missing or invalid admin key"),
        ],
    )
    async def test_a_bearer_token_that_is_not_utf8_is_a_401(
        self, harden: Harden, path: str, code: str, message: str
    ) -> None:
        """``Authorization: Bearer \\xff`` reaches the key check as a surrogate; it is a wrong key (401),
        not a crash, on the API and on the admin routes."""
        hardened = await harden()
        method = "POST" if path.startswith("/v1") else "GET"
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n".encode()
        raw = await hardened.response(head + b"Authorization: Bearer \xff\xfe\r\n\r\n" + body)
        assert_openai_error(raw, 401, "authentication_error", code, message)
        assert "Traceback" not in hardened.log.getvalue()


class TestSlowClients:
    @pytest.mark.parametrize(
        "data",
        [b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"POST /v1/chat/comp"],
        ids=["nothing", "headers-unfinished", "request-line-unfinished"],
    )
    async def test_a_connection_that_never_finishes_its_headers_is_closed(
        self, harden: Harden, data: bytes
    ) -> None:
        """Within ``header_timeout`` of connecting, the head must be in: the server closes the connection,
        answering nothing."""
        hardened = await harden()
        assert await hardened.until_closed(data) == b""

    async def test_a_body_shorter_than_its_content_length_is_a_408_and_the_connection_closes(
        self, harden: Harden
    ) -> None:
        """Ten bytes of a declared hundred: after ``body_timeout`` the handler gives up with a 408, and
        the server closes the connection."""
        hardened = await harden()
        head = f"POST /v1/chat/completions HTTP/1.1\nHost: x\nAuthorization: Bearer {API_KEY}\n"
        answer = await hardened.until_closed(request(head + "Content-Length: 100\n", body=b'{"model":'))
        message = f"the request body did not arrive within {SLOW:g} s"
        assert_openai_error(parse(answer), 408, "invalid_request_error", "request_timeout", message)

    async def test_a_short_body_no_handler_reads_still_closes(self, harden: Harden) -> None:
        """Without a key the body is never read (401 at once); the rest of it gets ``body_timeout`` too."""
        hardened = await harden()
        head = "POST /v1/chat/completions HTTP/1.1\nHost: x\nContent-Length: 100\n"
        raw = parse(await hardened.until_closed(request(head, body=b'{"model":')))
        assert_openai_error(raw, 401, "authentication_error", "missing_api_key")

    async def test_a_declared_body_over_the_limit_is_a_413_before_it_is_sent(self, harden: Harden) -> None:
        """Only the head is sent: the 413 comes back anyway, naming the limit, and closes the connection
        for further requests."""
        hardened = await harden()
        head = f"POST /v1/chat/completions HTTP/1.1\nHost: x\nAuthorization: Bearer {API_KEY}\n"
        raw = await hardened.response(request(head + f"Content-Length: {MAX_BODY + 1}\n"))
        assert_openai_error(
            raw,
            413,
            "invalid_request_error",
            "request_too_large",
            f"the request body is larger than the gateway's limit of {MAX_BODY} bytes",
        )
        assert raw.headers["connection"] == "close"

    async def test_a_body_that_arrives_in_time_is_served(self, harden: Harden) -> None:
        """The limits leave an honest request alone: a chat with its body in time is a 200."""
        hardened = await harden()
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
        head = f"POST /v1/chat/completions HTTP/1.1\nHost: x\nAuthorization: Bearer {API_KEY}\n"
        raw = await hardened.response(
            request(head + f"Content-Type: application/json\nContent-Length: {len(body)}\n", body=body)
        )
        assert raw.status == 200, raw
        assert raw.json()["choices"][0]["message"]["content"] == "hi"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class TestConnectionCap:
    async def test_connections_over_max_connections_get_a_503_and_are_closed(self, harden: Harden) -> None:
        """With ``max_connections`` held open, each further connection gets a 503 and is closed by the
        server, so no descriptor stays open for it; the held ones are still served, and once one closes
        a new connection is served again."""
        held_count, excess_count = 4, 40
        hardened = await harden(max_connections=held_count, header_timeout=GUARD * 3)
        before = open_fds()
        held = [await hardened.connect() for _ in range(held_count)]
        excess = [await hardened.connect() for _ in range(excess_count)]
        for reader, writer in excess:
            async with asyncio.timeout(GUARD):
                answer = await reader.read()
            writer.close()
            await writer.wait_closed()
            assert_openai_error(parse(answer), 503, "service_unavailable", "too_many_connections")
            assert parse(answer).headers["retry-after"] == "1"
        # The held connections (client and server ends) and little else: not one per refused connection.
        assert open_fds() - before <= 2 * held_count + 4
        healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        for reader, writer in held:
            writer.write(healthz)
            async with asyncio.timeout(GUARD):
                assert parse(await reader.read()).status == 200
            writer.close()
        assert parse(await hardened.until_closed(healthz)).status == 200


class TestMetricsPort:
    async def test_metrics_are_not_on_the_api_port_by_default(self, harden: Harden) -> None:
        """The API port answers /metrics with a 404; the metrics URL is on loopback, on another port."""
        hardened = await harden()
        raw = await hardened.until_closed(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert_openai_error(parse(raw), 404, "invalid_request_error", "not_found")
        assert b"zg_router" not in raw
        metrics_url = hardened.gateway.metrics_url
        assert metrics_url is not None
        metrics = urlsplit(metrics_url)
        assert (metrics.hostname, metrics.path) == ("127.0.0.1", "/metrics")
        assert metrics.port != hardened.port
        reader, writer = await asyncio.open_connection("127.0.0.1", metrics.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(GUARD):
            scraped = parse(await reader.read())
        writer.close()
        assert scraped.status == 200
        assert b"zg_router_build_info" in scraped.body


class TestConfig:
    @pytest.mark.parametrize(
        ("changes", "message"),
        [
            ({"header_timeout": 0}, "header_timeout must be a positive number of seconds"),
            ({"header_timeout": float("nan")}, "header_timeout must be a positive number of seconds"),
            ({"body_timeout": -1.0}, "body_timeout must be a positive number of seconds"),
            ({"body_timeout": float("inf")}, "body_timeout must be a positive number of seconds"),
            ({"max_connections": 0}, "max_connections must be at least 1"),
        ],
    )
    def test_bad_limits_are_config_errors(self, changes: dict[str, Any], message: str) -> None:
        with pytest.raises(ConfigError, match=message):
            GatewayConfig(api_keys=(API_KEY,), **changes)

    def test_limits_and_the_metrics_host_load_from_toml_and_the_environment(self, tmp_path: Path) -> None:
        config = tmp_path / "zg-router.toml"
        config.write_text(
            '[[upstreams]]\nname = "up"\nurl = "http://127.0.0.1:9/v1"\nmodels = ["m"]\n\n'
            "[gateway]\nheader_timeout = 5.0\nbody_timeout = 7\nmax_connections = 64\n"
        )
        env = {"ZG_ROUTER_API_KEYS": API_KEY, "ZG_ROUTER_METRICS_HOST": "10.1.2.3"}
        _, gateway = load_config(config, env)
        assert (gateway.header_timeout, gateway.body_timeout, gateway.max_connections) == (5.0, 7, 64)
        assert gateway.metrics_address == ("10.1.2.3", 9464)
        config.write_text(config.read_text().replace("max_connections = 64", 'max_connections = "many"'))
        with pytest.raises(ConfigError, match="must be an integer"):
            load_config(config, env)
