"""``POST /v1/messages``: Anthropic's Messages API over the pool's chatbot providers.

Which way a request goes is decided per request, before dispatch: passed through unchanged (to the
providers' ``/messages``, ``Endpoint.MESSAGES``) when every provider of its model says it serves the
Anthropic format, and translated to chat completions (``Endpoint.CHAT``) and back otherwise. A provider
says so in its ``/v1/models`` entry, ``"supported_formats": ["openai", "anthropic"]``: that is our
reading, the broker's field is unconfirmed, so translating (which every chatbot provider serves) is the
default. Asking every provider keeps failover whole: any of them can take the same body.

Everything else is the OpenAI routes' (``router.core``): request ids, routing preferences (``X-ZG-*``
headers, a ``provider`` field that providers never see), receipts (``x-zg-*``, ``x-request-id``, and
Anthropic's ``request-id``) and ``Retry-After``; only errors take Anthropic's shape
(``router.anthropic.errors``). The gateway key may come as ``x-api-key`` (what Anthropic clients send)
or ``Authorization: Bearer``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from router.anthropic.errors import error_body, upstream_error_body
from router.anthropic.from_chat import MalformedReply, from_chat
from router.anthropic.stream import ChatToMessages, MessagesStream, NativeRelay
from router.anthropic.to_chat import to_chat
from router.anthropic.validate import validate_request
from router.client import Router
from router.core import Request, Response, receipt_headers, request_id
from router.endpoints import Endpoint
from router.errors import AllAttemptsFailed, RequestFailed, Unauthorized, UpstreamRejected
from router.policy.outcome import json_object
from router.policy.select import parse_preferences
from router.replies import Reply, StreamReply
from router.request import Request as Parsed
from router.request import json_body, parse_payload, verify_mode
from router.wire import bearer_matches

NATIVE_FORMAT = "anthropic"
_JSON = "application/json; charset=utf-8"
_STREAM_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
_log = structlog.get_logger("router.gateway")


class MessagesRoute:
    """The route's handler for ``router``; ``keys`` are the gateway's API keys (empty: none asked for)."""

    __slots__ = ("_keys", "_router")

    def __init__(self, router: Router, keys: tuple[bytes, ...]) -> None:
        self._router = router
        self._keys = keys

    async def __call__(self, request: Request) -> Response:
        rid = request_id(request.headers)
        # Every log line written while this request is served carries its id.
        with structlog.contextvars.bound_contextvars(request_id=rid):
            try:
                if self._keys:
                    check_key(request.headers, self._keys)
                return await self._serve(request, rid)
            except UpstreamRejected as exc:
                headers = {**exc.headers, **_receipts(rid, exc.attempts), "Content-Type": _JSON}
                return Response(
                    exc.status, headers, upstream_error_body(exc.status, exc.body, rid), request_id=rid
                )
            except RequestFailed as exc:
                return error_reply(exc.status, exc.message, {**exc.headers, **_receipts(rid, exc.attempts)})
            except Exception:
                # A bug of ours: the client gets an id to quote, the log gets the traceback.
                _log.exception("unhandled error", request_id=rid, path=request.path)
                return error_reply(500, f"internal error (request id {rid})", _receipts(rid, 0))

    async def _serve(self, request: Request, rid: str) -> Response:
        router = self._router
        payload = json_body(await request.read())
        validate_request(payload)
        model = payload["model"]
        # No provider at all counts as native too: dispatch then says why, naming this route.
        native = all(
            NATIVE_FORMAT in state.info.formats
            for state in router.pool.candidates(Endpoint.MESSAGES.service_type, model)
        )
        if native:
            parsed = native_request(payload, request.headers)
        else:
            parsed = parse_payload(Endpoint.CHAT, to_chat(payload), request.headers)
        call = router.new_call(parsed, request_id=rid)
        reply = await router.dispatch(call)
        headers = _receipts(rid, reply.attempts, reply)
        if isinstance(reply, StreamReply):
            stops = payload.get("stop_sequences") or ()
            translator = NativeRelay() if native else ChatToMessages(model=model, stop_sequences=stops)
            headers.update(_STREAM_HEADERS)
            return Response(200, headers, stream=MessagesStream(reply, translator), request_id=rid)
        if call.verify_sync and (finding := await router.verdict(reply)) is not None:
            headers["x-zg-verify"] = finding.outcome.value
        if reply.cost is not None:
            headers["x-zg-cost"] = str(reply.cost)
        if native:
            headers["Content-Type"] = reply.content_type
            return Response(reply.status, headers, reply.body, request_id=rid)
        body = _translated(reply, model, payload.get("stop_sequences") or ())
        headers["Content-Type"] = _JSON
        return Response(reply.status, headers, body, request_id=rid)


def native_request(payload: Mapping[str, Any], headers: Mapping[str, str]) -> Parsed:
    """A checked Messages request as it goes to providers that serve the format: unchanged, but for our
    ``provider`` field, which becomes its routing preferences."""
    body = json.dumps({name: value for name, value in payload.items() if name != "provider"}).encode()
    return Parsed(
        endpoint=Endpoint.MESSAGES,
        model=payload["model"],
        body=body,
        content_type="application/json",
        stream=payload.get("stream") is True,
        prefs=parse_preferences(payload.get("provider"), headers),
        max_output=payload["max_tokens"],
        verify_sync=verify_mode(headers),
        # About four bytes of JSON per token, as router.request estimates.
        prompt_estimate=len(body) // 4 + 1,
        images=0,
    )


def check_key(headers: Mapping[str, str], keys: tuple[bytes, ...]) -> None:
    """``x-api-key: <key>`` (if sent) or ``Authorization: Bearer <key>`` must be one of ``keys``; both
    compared with every key in constant time, as ``bearer_matches`` does."""
    given = headers.get("x-api-key")
    if given:
        matched = bearer_matches("Bearer " + given, keys)
    elif header := headers.get("Authorization"):
        matched = bearer_matches(header, keys)
    else:
        raise Unauthorized(
            "missing API key: send `x-api-key: <key>` or `Authorization: Bearer <key>`",
            code="missing_api_key",
        )
    if not matched:
        raise Unauthorized("invalid API key", code="invalid_api_key")


def error_reply(status: int, message: str, headers: dict[str, str]) -> Response:
    """An Anthropic-shaped JSON error; ``headers`` (the caller's own dict, with ``x-request-id``) gains
    its Content-Type."""
    rid = headers["x-request-id"]
    headers["Content-Type"] = _JSON
    return Response(status, headers, error_body(status, message, rid), request_id=rid)


def _receipts(rid: str, attempts: int, reply: Reply | StreamReply | None = None) -> dict[str, str]:
    if reply is None:
        headers = receipt_headers(rid, attempts)
    else:
        headers = receipt_headers(rid, attempts, reply.provider, reply.res_key)
        headers["x-zg-verifiability"] = reply.verifiability or "none"
    # Anthropic's own name for it, which its SDK shows as `_request_id`.
    headers["request-id"] = rid
    return headers


def _translated(reply: Reply, model: str, stop_sequences: Sequence[str]) -> bytes:
    """The Messages reply for a provider's chat completion; 502 for one that is none (it was paid for,
    and its provider's health counted it a success: only this route cannot use it)."""
    doc = json_object(reply.body)
    try:
        message = from_chat(doc, model=model, stop_sequences=stop_sequences) if doc is not None else None
    except MalformedReply as exc:
        message, problem = None, str(exc)
    else:
        problem = "it is not a JSON object"
    if message is None:
        raise AllAttemptsFailed(
            f"provider {reply.provider} answered with a reply that is not a chat completion: {problem}",
            attempts=reply.attempts,
        )
    return json.dumps(message).encode()
