"""The face-neutral core: one request in (method, path, headers, a way to read the body), one reply out
(status, headers, and a body or a stream). Every face (the aiohttp gateway, the in-process httpx
transports) serves through ``Core``, so request ids, gateway keys, errors, receipts and ``Retry-After``
are the same whichever way a request came in; a face only converts between its own types and these.

    core = Core(router, api_keys=("sk-…",))
    reply = await core.handle(request)   # any object with method, path, headers and ``async read()``
    if reply.stream is not None:         # a StreamReply: iterate ``events()``, then ``aclose()`` it
        ...
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

import structlog

from router.client import Router
from router.errors import InvalidRequest, RequestFailed, Unauthorized, UpstreamRejected, clipped
from router.pool.catalog import model_entry, provider_catalog
from router.replies import Reply, StreamReply
from router.request import Endpoint, new_request_id, parse_body
from router.wire import bearer_matches

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_JSON = "application/json; charset=utf-8"
_STREAM_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
_HEALTHY = json.dumps({"status": "ok"}).encode()
# The routes served over the pool: each parsed, dispatched and answered with our receipts.
_ENDPOINTS = (
    Endpoint.CHAT,
    Endpoint.EMBEDDINGS,
    Endpoint.IMAGES,
    Endpoint.IMAGE_EDITS,
    Endpoint.TRANSCRIPTIONS,
)
_MODELS = "/v1/models/"
# `GET /v1/providers`' filters; a service type is one of a route's.
_PROVIDER_FILTERS = ("model", "service_type")
_SERVICE_TYPES = tuple(dict.fromkeys(e.service_type for e in Endpoint))
_log = structlog.get_logger("router.gateway")


class Request(Protocol):
    """What the core reads of a request. ``path`` is percent-decoded and without the query, whose
    parameters are ``query`` (decoded too); ``headers`` look up names case-insensitively (as aiohttp's
    and httpx's do); ``read`` returns the whole body, or raises ``RequestFailed`` (a 413 past the face's
    limit)."""

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def query(self) -> Mapping[str, str]: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def read(self) -> bytes: ...


class Response:
    """A reply for a face to write: ``body``, or (for a stream) ``stream``, whose ``events()`` the face
    relays and whose ``aclose()`` it must await in the end, however the stream ends: that frees the
    provider slot. ``request_id`` is None for the unguarded probes (``/healthz``, ``/readyz``)."""

    __slots__ = ("body", "headers", "request_id", "status", "stream")

    def __init__(
        self,
        status: int,
        headers: dict[str, str],
        body: bytes = b"",
        *,
        stream: StreamReply | None = None,
        request_id: str | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.stream = stream
        self.request_id = request_id


Handler = Callable[[Request], Awaitable[Response]]
_Inner = Callable[[Request, str], Awaitable[Response]]


class Core:
    """Every route of the gateway's OpenAI API over ``router``: ``routes[path][method]`` and
    ``prefix_routes[prefix][method]`` (every path under the prefix: ``/v1/models/{id}``, whose ids may
    hold ``/``) for a face that routes itself, ``handle`` for one that does not. ``api_keys`` empty means
    no gateway key is asked for. ``face_paths`` and ``face_prefixes`` are routes the face serves itself
    (admin, metrics): a wrong method on them is a 405 here, as on ours."""

    def __init__(
        self,
        router: Router,
        *,
        api_keys: Iterable[str] = (),
        face_paths: Iterable[str] = (),
        face_prefixes: tuple[str, ...] = (),
    ) -> None:
        self._router = router
        self._keys = tuple(key.encode() for key in api_keys)
        guarded = self._guarded
        self.routes: dict[str, dict[str, Handler]] = {
            f"/v1{e.path}": {"POST": guarded(self._endpoint(e))} for e in _ENDPOINTS
        }
        # Here, not at module level: router.anthropic.route builds its replies with this module's.
        from router.anthropic.route import MessagesRoute

        # Anthropic's Messages API: its own key header (x-api-key) and errors in Anthropic's shape.
        self.routes["/v1/messages"] = {"POST": MessagesRoute(router, self._keys)}
        self.routes["/v1/models"] = {"GET": guarded(self._models)}
        self.routes["/v1/providers"] = {"GET": guarded(self._providers)}
        self.routes["/healthz"] = {"GET": self._healthz}
        self.routes["/readyz"] = {"GET": self._readyz}
        self.prefix_routes: dict[str, dict[str, Handler]] = {_MODELS: {"GET": guarded(self._model)}}
        self.ours = frozenset(self.routes) | frozenset(face_paths)
        self.prefixes = (*self.prefix_routes, *face_prefixes)

    async def handle(self, request: Request) -> Response:
        """The reply to ``request``, on any path and method (404 and 405 included)."""
        path = request.path
        methods = self.routes.get(path)
        if methods is None:
            prefix = next((p for p in self.prefix_routes if path.startswith(p)), None)
            methods = self.prefix_routes[prefix] if prefix is not None else None
        handler = methods.get(request.method) if methods is not None else None
        if handler is None:
            return self.not_found(request)
        return await handler(request)

    def not_found(self, request: Request) -> Response:
        """A 405 for a wrong method on one of our paths, else a 404."""
        return not_found(request, self.ours, self.prefixes)

    def _guarded(self, handler: _Inner) -> Handler:
        """Request id, gateway API key, and errors rendered the OpenAI way, around ``handler``."""
        keys = self._keys

        async def guarded(request: Request) -> Response:
            rid = request_id(request.headers)
            # Every log line written while this request is served carries its id. Bound and reset by
            # hand: structlog's bound_contextvars (a generator context manager) costs three times more.
            bound = structlog.contextvars.bind_contextvars(request_id=rid)
            try:
                if keys:
                    _check_key(request.headers.get("Authorization"), keys)
                return await handler(request, rid)
            except RequestFailed as exc:
                return failure(exc, rid)
            except Exception:
                # A bug of ours: the client gets an id to quote, the log gets the traceback.
                _log.exception("unhandled error", request_id=rid, path=request.path)
                return error_reply(
                    500, f"internal error (request id {rid})", "api_error", None, {"x-request-id": rid}
                )
            finally:
                structlog.contextvars.reset_contextvars(**bound)

        return guarded

    def _endpoint(self, endpoint: Endpoint) -> _Inner:
        router = self._router

        async def serve(request: Request, rid: str) -> Response:
            parsed = parse_body(endpoint, await request.read(), request.headers)
            call = router.new_call(parsed, request_id=rid)
            reply = await router.dispatch(call)
            if isinstance(reply, StreamReply):
                headers = receipt_headers(rid, reply.attempts, reply.provider, reply.res_key)
                headers["x-zg-verifiability"] = reply.verifiability or "none"
                headers.update(_STREAM_HEADERS)
                return Response(200, headers, stream=reply, request_id=rid)
            return await self._whole(reply, rid, verify_sync=call.verify_sync)

        return serve

    async def _whole(self, reply: Reply, rid: str, *, verify_sync: bool) -> Response:
        headers = receipt_headers(rid, reply.attempts, reply.provider, reply.res_key)
        headers["x-zg-verifiability"] = reply.verifiability or "none"
        if verify_sync and (finding := await self._router.verdict(reply)) is not None:
            headers["x-zg-verify"] = finding.outcome.value
        headers["Content-Type"] = reply.content_type
        if reply.cost is not None:
            headers["x-zg-cost"] = str(reply.cost)
        return Response(reply.status, headers, reply.body, request_id=rid)

    async def _models(self, request: Request, rid: str) -> Response:
        return _listed(self._router.models(), rid)

    async def _model(self, request: Request, rid: str) -> Response:
        """OpenAI's model retrieve: the object the list holds for this id."""
        model = request.path.removeprefix(_MODELS)
        router = self._router
        entry = model_entry(router.pool, model, router.now())
        if entry is None:
            raise InvalidRequest(
                f"model {clipped(model)} does not exist; GET /v1/models lists the models on offer",
                status=404,
                code="model_not_found",
                param="model",
            )
        return Response(200, _json_headers(rid), json.dumps(entry).encode(), request_id=rid)

    async def _providers(self, request: Request, rid: str) -> Response:
        """Every provider (its prices, limits, health, trust and attestation), filtered by the query."""
        model, service_type = _provider_filters(request.query)
        router = self._router
        return _listed(
            provider_catalog(router.pool, router.now(), model=model, service_type=service_type), rid
        )

    async def _healthz(self, request: Request) -> Response:
        return Response(200, {"Content-Type": _JSON}, _HEALTHY)

    async def _readyz(self, request: Request) -> Response:
        router = self._router
        now = router.now()
        providers = list(router.pool)
        available = sum(1 for state in providers if state.available(now))
        body: dict[str, Any] = {
            "status": "ready" if available else "not_ready",
            "providers": len(providers),
            "available": available,
        }
        shared = router.shared_status()
        if shared is not None:
            # Said, not judged: a replica counting locally while Redis is away still serves.
            body["shared"] = shared
        return Response(200 if available else 503, {"Content-Type": _JSON}, json.dumps(body).encode())


def _listed(data: list[dict[str, Any]], rid: str) -> Response:
    body = json.dumps({"object": "list", "data": data}).encode()
    return Response(200, _json_headers(rid), body, request_id=rid)


def _json_headers(rid: str) -> dict[str, str]:
    return {"x-request-id": rid, "Content-Type": _JSON}


def _provider_filters(query: Mapping[str, str]) -> tuple[str | None, str | None]:
    """``GET /v1/providers``' ``model`` and ``service_type`` filters; anything else in the query is the
    caller's mistake (a filter misspelt would list every provider as if it matched)."""
    unknown = [name for name in query if name not in _PROVIDER_FILTERS]
    if unknown:
        raise InvalidRequest(
            f"unknown query parameter {clipped(unknown[0])} on /v1/providers; "
            f"the filters are {', '.join(_PROVIDER_FILTERS)}",
            param=clipped(unknown[0], quote=False),
        )
    model = query.get("model")
    if model is not None and not model.strip():
        raise InvalidRequest("`model` must be a non-empty model id", param="model")
    service_type = query.get("service_type")
    if service_type is not None and service_type not in _SERVICE_TYPES:
        raise InvalidRequest(
            f"`service_type` must be one of {', '.join(_SERVICE_TYPES)}, not {clipped(service_type)}",
            param="service_type",
        )
    return model, service_type


def not_found(request: Request, ours: frozenset[str], prefixes: tuple[str, ...] = ()) -> Response:
    """A 405 for a wrong method on a path in ``ours`` (or under one of ``prefixes``), else a 404."""
    headers = {"x-request-id": request_id(request.headers)}
    # Both are the client's: quoted cut short, so a 4,000-character path is no 4,000-character error.
    method, path = clipped(request.method, 20, quote=False), clipped(request.path, quote=False)
    if request.path in ours or request.path.startswith(prefixes):
        return error_reply(
            405, f"{method} is not allowed on {path}", "invalid_request_error", "method_not_allowed", headers
        )
    return error_reply(404, f"no route {method} {path}", "invalid_request_error", "not_found", headers)


def _check_key(header: str | None, keys: tuple[bytes, ...]) -> None:
    if not header:
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>`", code="missing_api_key")
    if not bearer_matches(header, keys):
        raise Unauthorized("invalid API key", code="invalid_api_key")


def request_id(headers: Mapping[str, str]) -> str:
    """The client's ``X-Request-Id`` if it is sane (short, no odd characters), else a new one."""
    given = headers.get("X-Request-Id", "")
    return given if _REQUEST_ID.match(given) else new_request_id()


def receipt_headers(
    rid: str, attempts: int, provider: str | None = None, res_key: str | None = None
) -> dict[str, str]:
    headers = {"x-request-id": rid, "x-zg-attempts": str(attempts)}
    if provider is not None:
        headers["x-zg-provider"] = provider
    if res_key:
        # Our name for it, and the broker's own, which the 0G SDKs' verification looks for.
        headers["x-zg-chat-id"] = headers["zg-res-key"] = res_key
    return headers


def failure(error: RequestFailed, rid: str) -> Response:
    """The OpenAI error for ``error``, with its status, its headers (``Retry-After`` on 429/503) and our
    receipts; a provider's own rejection passes through as it came."""
    headers = {**error.headers, **receipt_headers(rid, error.attempts)}
    if isinstance(error, UpstreamRejected):
        headers["Content-Type"] = error.content_type
        return Response(error.status, headers, error.body, request_id=rid)
    return error_reply(error.status, error.message, error.type, error.code, headers, error.param)


def error_reply(
    status: int,
    message: str,
    kind: str,
    code: str | None,
    headers: dict[str, str],
    param: str | None = None,
) -> Response:
    """An OpenAI-shaped JSON error; ``headers`` (the caller's own dict) gains its Content-Type."""
    body = json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()
    headers["Content-Type"] = _JSON
    return Response(status, headers, body, request_id=headers.get("x-request-id"))


def too_large(max_body: int) -> InvalidRequest:
    """What a body over the face's limit of ``max_body`` bytes is told (413)."""
    return InvalidRequest(
        f"the request body is larger than the gateway's limit of {max_body} bytes",
        status=413,
        code="request_too_large",
    )
