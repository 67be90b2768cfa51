"""The OpenAI-compatible gateway: ``make_app(router, config)`` builds the aiohttp application.

Handlers parse and validate, call ``Router.dispatch``, and write the reply. Every error a client can see is
OpenAI-shaped JSON with the right status; nothing here decides routing.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from router.client import Router
from router.config import GatewayConfig
from router.errors import ConfigError, RequestFailed, Unauthorized
from router.observability.metrics import Metrics
from router.replies import Endpoint, Reply, StreamReply
from router.server.admin import add_admin_routes
from router.server.wire import (
    bearer_matches,
    error_json,
    error_response,
    parse_json_request,
    parse_multipart_request,
)

ROUTER = web.AppKey("router", Router)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_OUR_PATHS = (
    {f"/v1{e.path}" for e in Endpoint}
    | {"/v1/models", "/healthz", "/readyz"}
    | {f"/admin/{name}" for name in ("balance", "providers", "fund", "refund")}
)
# Routes with a variable last segment.
_OUR_PREFIXES = ("/admin/verify/",)
_log = structlog.get_logger("router.gateway")

Handler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]


class Gateway:
    """The gateway listening on ``config.host:config.port``: ``async with Gateway(router, config) as gw:``.

    Handlers are cancelled when their client disconnects, so an abandoned request frees its slot at once.
    On exit, requests in flight get ``config.shutdown_timeout`` seconds to finish. With ``config.metrics``
    it serves ``/metrics`` at ``self.metrics_url`` from ``metrics``, or from a ``Metrics`` of its own
    (``self.metrics``). Pass one built before the router opened to count what happens while it opens.
    """

    def __init__(self, router: Router, config: GatewayConfig, *, metrics: Metrics | None = None) -> None:
        if metrics is None and config.metrics:
            metrics = Metrics(router)
        self.metrics = metrics
        registry = self.metrics.registry if self.metrics is not None else None
        shared = registry if config.metrics_port is None else None
        self._runners = [
            web.AppRunner(
                make_app(router, config, metrics=shared),
                access_log=None,
                handler_cancellation=True,
                shutdown_timeout=config.shutdown_timeout,
            )
        ]
        if registry is not None and config.metrics_port is not None:
            self._runners.append(web.AppRunner(make_metrics_app(registry), access_log=None))
        self._config = config
        self.url = ""
        self.metrics_url: str | None = None

    async def __aenter__(self) -> Self:
        ports = (self._config.port, self._config.metrics_port)
        urls = []
        try:
            for runner, port in zip(self._runners, ports, strict=False):
                await runner.setup()
                await _listen(runner, self._config.host, port or 0)
                host, bound = runner.addresses[0][:2]
                urls.append(f"http://{host}:{bound}")
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
        for runner in self._runners:
            await runner.cleanup()


async def _listen(runner: web.AppRunner, host: str, port: int) -> None:
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def make_app(
    router: Router, config: GatewayConfig, *, metrics: CollectorRegistry | None = None
) -> web.Application:
    """The gateway for ``router``, with ``/metrics`` from ``metrics`` if given. The caller owns the router
    (opens it before, closes it after)."""
    app = web.Application(client_max_size=config.max_body_bytes)
    app[ROUTER] = router
    guard = functools.partial(
        _guarded, keys=tuple(k.encode() for k in config.api_keys), max_body=config.max_body_bytes
    )
    for endpoint in (Endpoint.CHAT, Endpoint.EMBEDDINGS, Endpoint.IMAGES):
        app.router.add_post(
            f"/v1{endpoint.path}", guard(functools.partial(_json_endpoint, endpoint=endpoint))
        )
    app.router.add_post("/v1/audio/transcriptions", guard(_transcription))
    app.router.add_get("/v1/models", guard(_models))
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    add_admin_routes(app, ROUTER, config.admin_keys)
    ours = _OUR_PATHS
    if metrics is not None:
        app.router.add_get("/metrics", functools.partial(_metrics, registry=metrics))
        ours = ours | {"/metrics"}
    app.router.add_route("*", "/{tail:.*}", functools.partial(_not_found, ours=ours))
    return app


def _guarded(
    handler: Handler, *, keys: tuple[bytes, ...], max_body: int
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Request id, gateway API key, and errors rendered the OpenAI way, around ``handler``."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        request_id = _request_id(request)
        # Every log line written while this request is served carries its id.
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            return await _answer(request, request_id)

    async def _answer(request: web.Request, request_id: str) -> web.StreamResponse:
        try:
            if keys:
                _check_key(request.headers.get("Authorization"), keys)
            return await handler(request, request_id)
        except RequestFailed as exc:
            return error_response(exc, _reply_headers(request_id, exc.attempts))
        except web.HTTPRequestEntityTooLarge:
            return error_json(
                413,
                f"the request body is larger than the gateway's limit of {max_body} bytes",
                "invalid_request_error",
                code="request_too_large",
                headers={"x-request-id": request_id},
            )
        except Exception:
            # A bug of ours: the client gets an id to quote, the log gets the traceback.
            _log.exception("unhandled error", request_id=request_id, path=request.path)
            return error_json(
                500,
                f"internal error (request id {request_id})",
                "api_error",
                headers={"x-request-id": request_id},
            )

    return guarded


def _check_key(header: str | None, keys: tuple[bytes, ...]) -> None:
    if not header:
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>`", code="missing_api_key")
    if not bearer_matches(header, keys):
        raise Unauthorized("invalid API key", code="invalid_api_key")


async def _json_endpoint(request: web.Request, request_id: str, *, endpoint: Endpoint) -> web.StreamResponse:
    router = request.app[ROUTER]
    parsed = parse_json_request(endpoint, await request.read(), request.headers)
    call = router.new_call(
        endpoint,
        model=parsed.model,
        body=parsed.body,
        content_type=parsed.content_type,
        stream=parsed.stream,
        prefs=parsed.prefs,
        request_id=request_id,
        max_output=parsed.max_output,
        verify_sync=parsed.verify_sync,
    )
    reply = await router.dispatch(call)
    if isinstance(reply, StreamReply):
        return await _stream(request, reply, request_id)
    return await _whole(router, reply, request_id, verify_sync=call.verify_sync)


async def _transcription(request: web.Request, request_id: str) -> web.StreamResponse:
    router = request.app[ROUTER]
    parsed = parse_multipart_request(
        await request.read(), request.headers.get("Content-Type", ""), request.headers
    )
    call = router.new_call(
        Endpoint.TRANSCRIPTIONS,
        model=parsed.model,
        body=parsed.body,
        content_type=parsed.content_type,
        prefs=parsed.prefs,
        request_id=request_id,
        verify_sync=parsed.verify_sync,
    )
    reply = await router.dispatch(call)
    assert isinstance(reply, Reply)
    return await _whole(router, reply, request_id, verify_sync=call.verify_sync)


async def _whole(router: Router, reply: Reply, request_id: str, *, verify_sync: bool) -> web.Response:
    headers = _reply_headers(request_id, reply.attempts, reply.provider, reply.res_key)
    headers["x-zg-verifiability"] = reply.verifiability or "none"
    if verify_sync and (finding := await router.verdict(reply)) is not None:
        headers["x-zg-verify"] = finding.outcome.value
    headers["Content-Type"] = reply.content_type
    if reply.cost is not None:
        headers["x-zg-cost"] = str(reply.cost)
    return web.Response(status=reply.status, body=reply.body, headers=headers)


async def _stream(request: web.Request, reply: StreamReply, request_id: str) -> web.StreamResponse:
    headers = _reply_headers(request_id, reply.attempts, reply.provider, reply.res_key)
    headers["x-zg-verifiability"] = reply.verifiability or "none"
    headers.update(
        {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    response = web.StreamResponse(headers=headers)
    try:
        await response.prepare(request)
        async for event in reply.events():
            await response.write(event)
        await response.write_eof()
    except ConnectionError:
        # The client went away mid-stream; nobody is left to tell. The slot is freed below.
        pass
    finally:
        await reply.aclose()
    return response


def _reply_headers(
    request_id: str, attempts: int, provider: str | None = None, res_key: str | None = None
) -> dict[str, str]:
    headers = {"x-request-id": request_id, "x-zg-attempts": str(attempts)}
    if provider is not None:
        headers["x-zg-provider"] = provider
    if res_key:
        # Our name for it, and the broker's own, which the 0G SDKs' verification looks for.
        headers["x-zg-chat-id"] = headers["zg-res-key"] = res_key
    return headers


async def _models(request: web.Request, request_id: str) -> web.StreamResponse:
    data = request.app[ROUTER].models()
    return web.json_response({"object": "list", "data": data}, headers={"x-request-id": request_id})


def make_metrics_app(registry: CollectorRegistry) -> web.Application:
    """``/metrics`` alone, for a port of its own."""
    app = web.Application()
    app.router.add_get("/metrics", functools.partial(_metrics, registry=registry))
    app.router.add_route("*", "/{tail:.*}", functools.partial(_not_found, ours={"/metrics"}))
    return app


async def _metrics(request: web.Request, *, registry: CollectorRegistry) -> web.Response:
    return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    router = request.app[ROUTER]
    now = router.now()
    providers = list(router.pool)
    available = sum(1 for state in providers if state.available(now))
    body = {
        "status": "ready" if available else "not_ready",
        "providers": len(providers),
        "available": available,
    }
    return web.json_response(body, status=200 if available else 503)


async def _not_found(request: web.Request, *, ours: set[str]) -> web.Response:
    headers = {"x-request-id": _request_id(request)}
    if request.path in ours or request.path.startswith(_OUR_PREFIXES):
        return error_json(
            405,
            f"{request.method} is not allowed on {request.path}",
            "invalid_request_error",
            code="method_not_allowed",
            headers=headers,
        )
    return error_json(
        404,
        f"no route {request.method} {request.path}",
        "invalid_request_error",
        code="not_found",
        headers=headers,
    )


def _request_id(request: web.Request) -> str:
    """The client's ``X-Request-Id`` if it is sane (short, no odd characters), else a new one."""
    given = request.headers.get("X-Request-Id", "")
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex
