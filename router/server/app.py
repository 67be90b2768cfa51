"""The OpenAI-compatible gateway: ``make_app(router, config)`` builds the aiohttp application.

The API's routes are the core's (``router.core``: parsing, dispatch, receipts and errors, shared with the
in-process transports); this face turns aiohttp requests into core requests and core replies into
aiohttp responses, and adds what only an HTTP server has: the admin API and ``/metrics``, and the limits
``GatewayConfig`` sets on connections, heads and bodies, and CORS for browser apps (``cors_origins``).
Every error a client can see is OpenAI-shaped JSON with the right status, down to the HTTP server's own
(requests its parser refuses, too many connections); nothing here decides routing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from http.client import responses
from types import TracebackType
from typing import Any, Self

import structlog
from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from router.client import Router
from router.config import GatewayConfig
from router.core import Core, Handler, error_reply, failure, not_found, request_id, too_large
from router.core import Response as CoreResponse
from router.errors import ConfigError
from router.observability.metrics import Metrics
from router.replies import StreamReply
from router.server.admin import add_admin_routes

ROUTER = web.AppKey("router", Router)
# The routes the gateway serves besides the core's: a wrong method on them is a 405, not a 404.
_ADMIN_PATHS = frozenset(f"/admin/{name}" for name in ("balance", "providers", "fund", "refund"))
_ADMIN_PREFIXES = ("/admin/verify/",)
_METRICS_ONLY = frozenset({"/metrics"})


class Gateway:
    """The gateway listening on ``config.host:config.port``: ``async with Gateway(router, config) as gw:``.

    Handlers are cancelled when their client disconnects, so an abandoned request frees its slot at once.
    On exit, requests in flight get ``config.shutdown_timeout`` seconds to finish. With ``config.metrics``
    it serves ``/metrics`` at ``self.metrics_url`` (its own port unless ``config.metrics_on_api_port``)
    from ``metrics``, or from a ``Metrics`` of its own (``self.metrics``). Pass one built before the router
    opened to count what happens while it opens.
    """

    def __init__(self, router: Router, config: GatewayConfig, *, metrics: Metrics | None = None) -> None:
        if metrics is None and config.metrics:
            metrics = Metrics(router)
        self.metrics = metrics
        registry = self.metrics.registry if self.metrics is not None else None
        shared = registry if config.metrics_on_api_port else None
        self._sites = [(_Runner(make_app(router, config, metrics=shared), config), config.host, config.port)]
        address = config.metrics_address
        if registry is not None and address is not None:
            self._sites.append((_Runner(make_metrics_app(registry), config), *address))
        self.url = ""
        self.metrics_url: str | None = None

    async def __aenter__(self) -> Self:
        urls = []
        try:
            for runner, host, port in self._sites:
                await runner.setup()
                await _listen(runner, host, port)
                bound_host, bound = runner.addresses[0][:2]
                urls.append(f"http://{bound_host}:{bound}")
        except BaseException:
            await self._cleanup()
            raise
        self.url = urls[0]
        if self.metrics is not None:
            self.metrics_url = urls[-1] + "/metrics"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._cleanup()

    async def _cleanup(self) -> None:
        for runner, _, _ in self._sites:
            await runner.cleanup()


async def _listen(runner: web.AppRunner, host: str, port: int) -> None:
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


class _Runner(web.AppRunner):
    """An ``AppRunner`` whose server is a ``_Server`` for ``config``."""

    __slots__ = ("_gateway_config",)

    def __init__(self, app: web.Application, config: GatewayConfig) -> None:
        super().__init__(app, shutdown_timeout=config.shutdown_timeout)
        self._gateway_config = config

    async def _make_server(self) -> web.Server:
        # aiohttp has no public way to choose the connection class (aio-libs/aiohttp#3287): take the
        # handler and request factory of the server AppRunner builds (after the app's startup) into ours.
        made = await super()._make_server()
        return _Server(made.request_handler, made.request_factory, self._gateway_config)


class _Server(web.Server):
    """aiohttp's low-level server, making ``_Connection``s and holding at most ``max_connections``.

    A connection over the cap gets a canned 503 and is closed before anything reads from it: it costs an
    accept and a write, and no file descriptor stays open for it.
    """

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        request_factory: Callable[..., web.BaseRequest],
        config: GatewayConfig,
    ) -> None:
        limited = functools.partial(
            _body_limits,
            handler=handler,
            max_body=config.max_body_bytes,
            body_timeout=config.body_timeout,
            cors=_Cors(config.cors_origins) if config.cors_origins else None,
        )
        super().__init__(limited, request_factory=request_factory, handler_cancellation=True)
        self._connection_options: dict[str, Any] = {
            # A connection that has not sent a whole request head within header_timeout of opening (or
            # of its previous response) is closed: aiohttp's keep-alive timer also runs while a head is
            # half received, and nothing else bounds that wait.
            "keepalive_timeout": config.header_timeout,
            # How long the rest of a body nobody reads may take to arrive, after the response.
            "lingering_time": config.body_timeout,
            "access_log": None,
        }
        self._max_connections = config.max_connections
        self._open: set[RequestHandler] = set()
        self._busy = _busy_response(config.max_connections)

    def __call__(self) -> RequestHandler:
        return _Connection(self, loop=asyncio.get_running_loop(), **self._connection_options)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        if len(self._open) >= self._max_connections:
            transport.write(self._busy)
            handler.force_close()
            return
        self._open.add(handler)
        super().connection_made(handler, transport)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        self._open.discard(handler)
        super().connection_lost(handler, exc)


async def _body_limits(
    request: web.BaseRequest,
    *,
    handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
    max_body: int,
    body_timeout: float,
    cors: _Cors | None,
) -> web.StreamResponse:
    """``handler``, unless the declared body is over ``max_body`` (413 before a byte of it is read), with
    ``body_timeout`` seconds for the body to arrive (408 after). Once it has, the handler has all the time
    it needs; a body it never reads is left to aiohttp's lingering, which ``lingering_time`` bounds. The
    413 comes before routing, so before the app adds CORS headers: a browser app is shown it all the same."""
    if not request.body_exists:
        return await handler(request)
    if request.content_length is not None and request.content_length > max_body:
        refused = _too_large(max_body, request_id(request.headers))
        if cors is not None:
            cors.add(request.headers, refused.headers)
        return refused
    deadline = asyncio.timeout(body_timeout)
    try:
        async with deadline:
            request.content.on_eof(functools.partial(_lift, deadline))
            return await handler(request)
    except TimeoutError:
        if not deadline.expired():
            raise
    return _web(
        error_reply(
            408,
            f"the request body did not arrive within {body_timeout:g} s",
            "invalid_request_error",
            "request_timeout",
            {"x-request-id": request_id(request.headers)},
        )
    )


def _lift(deadline: asyncio.Timeout) -> None:
    # The body is all in. If the handler has returned already the deadline is gone: nothing to lift.
    with contextlib.suppress(RuntimeError):
        deadline.reschedule(None)


def _too_large(max_body: int, rid: str) -> web.Response:
    response = _web(failure(too_large(max_body), rid))
    # The client may still be sending the rest: it should not send another request on this connection.
    response.force_close()
    return response


def _web(reply: CoreResponse) -> web.Response:
    return web.Response(status=reply.status, body=reply.body, headers=reply.headers)


# What a request aiohttp's parser refused gets told, by the parser's exception: never the exception's own
# text, which quotes the offending bytes (a header holding a key, say). Subclasses before their bases.
_PARSER_ERRORS: tuple[tuple[type[http_exceptions.HttpProcessingError], str], ...] = (
    (http_exceptions.LineTooLong, "a request line or header is longer than the gateway's limit of {} bytes"),
    (http_exceptions.InvalidHeader, "a request header is malformed"),
    (http_exceptions.BadHttpMethod, "the request method is not a valid HTTP method"),
    (http_exceptions.BadStatusLine, "the request line is not valid HTTP/1.1"),
    (http_exceptions.InvalidURLError, "the request target is not a valid URL"),
    (http_exceptions.TransferEncodingError, "the request body's chunked encoding is malformed"),
    (http_exceptions.ContentEncodingError, "the request body's Content-Encoding cannot be decoded"),
    (http_exceptions.PayloadEncodingError, "the request body is malformed"),
)
_MALFORMED = "the request is not valid HTTP/1.1: a header or the body's framing is malformed"


class _Connection(RequestHandler):
    """One client connection: aiohttp's, except that the answers it makes itself (to requests its parser
    refuses, and to aiohttp's own HTTP exceptions) are OpenAI-shaped JSON that quote nothing of the
    request; aiohttp's are text/plain and echo the offending line."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            self.log_exception("error handling a request from %s", request.remote, exc_info=exc)
        else:
            # TLS or scanners on a plain port send bad methods all day: debug, as aiohttp does.
            log = self.logger.debug if isinstance(exc, http_exceptions.BadHttpMethod) else self.logger.info
            log("malformed request from %s: %s", request.remote, type(exc).__name__)
        if request.writer.output_size > 0:
            raise ConnectionError("the response has started: no error response can follow")
        response = _protocol_error(status, None if status >= 500 else self._describe(exc))
        response.force_close()
        return response

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        if isinstance(resp, web.HTTPException) and resp.status >= 400:
            # Raised by aiohttp before our handlers run (an unknown Expect, say), with a text body.
            resp = _protocol_error(resp.status, resp.reason)
        return await super().finish_response(request, resp, start_time)

    def _describe(self, exc: BaseException | None) -> str:
        for kind, text in _PARSER_ERRORS:
            if isinstance(exc, kind):
                return text.format(self.max_field_size)
        return _MALFORMED


def _protocol_error(status: int, message: str | None) -> web.Response:
    """An answer aiohttp makes itself, as an OpenAI error: ``message``, or the status's own phrase."""
    phrase = responses.get(status, "Error")
    code = "_".join(phrase.lower().replace("-", " ").split())
    if status >= 500:
        return _web(
            error_reply(status, message or f"internal error in the gateway ({phrase})", "api_error", code, {})
        )
    return _web(error_reply(status, message or phrase, "invalid_request_error", code, {}))


def _busy_response(limit: int) -> bytes:
    """The whole 503 a connection over ``limit`` gets, as bytes to write on its transport."""
    error = {
        "message": f"the gateway is at its limit of {limit} open connections; retry shortly",
        "type": "service_unavailable",
        "param": None,
        "code": "too_many_connections",
    }
    body = json.dumps({"error": error}).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


# -- CORS -------------------------------------------------------------------------------------------

_CORS_METHODS = "GET, POST, OPTIONS"
# The request headers a page may send: ours, and the OpenAI and Anthropic SDKs' (their x-stainless-*
# telemetry, anthropic-version, openai-organization, ...), by name or by prefix.
_CORS_HEADERS = frozenset({"authorization", "content-type", "x-api-key", "x-request-id"})
_CORS_HEADER_PREFIXES = ("x-zg-", "x-0g-", "x-stainless-", "anthropic-", "openai-")
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]{1,100}")
# What a page may read of a reply besides the safelisted headers: the receipts, and when to retry.
_CORS_EXPOSED = ", ".join(
    (
        "x-request-id",
        "x-zg-provider",
        "x-zg-attempts",
        "x-zg-cost",
        "x-zg-chat-id",
        "zg-res-key",
        "x-zg-verifiability",
        "x-zg-verify",
        "retry-after",
    )
)
# Seconds a browser may keep a preflight's answer (Chromium caps it at 7200).
_CORS_MAX_AGE = "3600"


class _Cors:
    """CORS for ``origins`` (exact origins, or ``*``): preflights answered, replies to an allowed origin
    marked so the browser hands them to the page. A request from any other origin gets no CORS header,
    so the browser refuses it; the gateway serves it as ever (a non-browser client is not told apart).
    No credentials mode: the API key travels in a header, never in a cookie."""

    def __init__(self, origins: Iterable[str]) -> None:
        self._origins = frozenset(origins)
        self._any = "*" in self._origins

    def _allowed(self, headers: Mapping[str, str]) -> str | None:
        """The ``Access-Control-Allow-Origin`` for a request, or None for none at all."""
        origin = headers.get("Origin")
        if origin is None:
            return None
        if self._any:
            return "*"
        return origin if origin in self._origins else None

    def add(self, request: Mapping[str, str], reply: MutableMapping[str, str]) -> None:
        """Mark ``reply`` (its headers) for the request's origin, if it is allowed. Idempotent."""
        if not self._any and "origin" not in reply.get("Vary", "").lower():
            # The reply depends on the Origin sent: a shared cache must not hand one origin's to another.
            reply["Vary"] = f"{reply['Vary']}, Origin" if "Vary" in reply else "Origin"
        allowed = self._allowed(request)
        if allowed is not None:
            reply["Access-Control-Allow-Origin"] = allowed
            reply["Access-Control-Expose-Headers"] = _CORS_EXPOSED

    def preflight(self, request: web.Request) -> web.Response | None:
        """The answer to a preflight from an allowed origin; None for anything else, which is routed as
        ever (a preflight from another origin meets a 404 or 405 without CORS headers: refused)."""
        headers = request.headers
        if (
            request.method != "OPTIONS"
            or "Access-Control-Request-Method" not in headers
            or self._allowed(headers) is None
        ):
            return None
        answer = {
            "Access-Control-Allow-Methods": _CORS_METHODS,
            "Access-Control-Max-Age": _CORS_MAX_AGE,
            "Vary": "Access-Control-Request-Headers",
        }
        asked = (
            name.strip().lower() for name in headers.get("Access-Control-Request-Headers", "").split(",")
        )
        # The browser sends the request only if every header it asked for is named: one we do not take
        # is left out, and the browser refuses the request.
        allowed = [name for name in asked if _HEADER_NAME.fullmatch(name) and _cors_header(name)]
        if allowed:
            answer["Access-Control-Allow-Headers"] = ", ".join(allowed)
        return web.Response(status=204, headers=answer)


def _cors_header(name: str) -> bool:
    return name in _CORS_HEADERS or name.startswith(_CORS_HEADER_PREFIXES)


def _cors_middleware(cors: _Cors) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def answer_preflights(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        preflight = cors.preflight(request)
        return preflight if preflight is not None else await handler(request)

    return answer_preflights


async def _mark_for_cors(request: web.Request, response: web.StreamResponse, *, cors: _Cors) -> None:
    # Before the head is sent: a stream's headers go out before its first event.
    cors.add(request.headers, response.headers)


def make_app(
    router: Router, config: GatewayConfig, *, metrics: CollectorRegistry | None = None
) -> web.Application:
    """The gateway for ``router``, with ``/metrics`` from ``metrics`` if given. The caller owns the router
    (opens it before, closes it after)."""
    app = web.Application(client_max_size=config.max_body_bytes)
    if config.cors_origins:
        cors = _Cors(config.cors_origins)
        app.middlewares.append(_cors_middleware(cors))
        app.on_response_prepare.append(functools.partial(_mark_for_cors, cors=cors))
    app[ROUTER] = router
    face_paths = set(_ADMIN_PATHS)
    if metrics is not None:
        app.router.add_get("/metrics", functools.partial(_metrics, registry=metrics))
        face_paths.add("/metrics")
    core = Core(router, api_keys=config.api_keys, face_paths=face_paths, face_prefixes=_ADMIN_PREFIXES)
    # A prefix route serves every path under it, the prefix itself included (the core says what an empty
    # model id is); ours go before the catch-all 404 below.
    routes = [*core.routes.items(), *((p + "{tail:.*}", m) for p, m in core.prefix_routes.items())]
    for path, methods in routes:
        for method, handler in methods.items():
            serve = functools.partial(_serve, handler=handler, max_body=config.max_body_bytes)
            # add_get also answers HEAD, as the gateway always has (probes use it).
            if method == "GET":
                app.router.add_get(path, serve)
            else:
                app.router.add_route(method, path, serve)
    add_admin_routes(app, ROUTER, config.admin_keys)
    app.router.add_route(
        "*", "/{tail:.*}", functools.partial(_not_found, ours=core.ours, prefixes=core.prefixes)
    )
    return app


class _Incoming:
    """An aiohttp request as the core reads it: its body past ``client_max_size`` is the core's 413."""

    __slots__ = ("_max_body", "_request", "headers", "method", "path", "query")

    def __init__(self, request: web.Request, max_body: int) -> None:
        self._request = request
        self._max_body = max_body
        self.method = request.method
        self.path = request.path
        self.query = request.query
        self.headers = request.headers

    async def read(self) -> bytes:
        try:
            return await self._request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large(self._max_body) from None


async def _serve(request: web.Request, *, handler: Handler, max_body: int) -> web.StreamResponse:
    reply = await handler(_Incoming(request, max_body))
    if reply.stream is None:
        response = _web(reply)
        if reply.status == 413:
            # The client may still be sending the rest: it should not send another request on this one.
            response.force_close()
        return response
    return await _stream(request, reply, reply.stream)


async def _stream(request: web.Request, reply: CoreResponse, stream: StreamReply) -> web.StreamResponse:
    response = web.StreamResponse(headers=reply.headers)
    # By hand, as the core binds it: structlog's bound_contextvars costs three times more.
    bound = structlog.contextvars.bind_contextvars(request_id=reply.request_id)
    try:
        await response.prepare(request)
        async for event in stream.events():
            await response.write(event)
        await response.write_eof()
    except ConnectionError:
        # The client went away mid-stream; nobody is left to tell. The slot is freed below.
        pass
    finally:
        structlog.contextvars.reset_contextvars(**bound)
        await stream.aclose()
    return response


def make_metrics_app(registry: CollectorRegistry) -> web.Application:
    """``/metrics`` alone, for a port of its own."""
    app = web.Application()
    app.router.add_get("/metrics", functools.partial(_metrics, registry=registry))
    app.router.add_route("*", "/{tail:.*}", functools.partial(_not_found, ours=_METRICS_ONLY))
    return app


async def _metrics(request: web.Request, *, registry: CollectorRegistry) -> web.Response:
    return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _not_found(
    request: web.Request, *, ours: frozenset[str], prefixes: tuple[str, ...] = ()
) -> web.Response:
    return _web(not_found(request, ours, prefixes))
