"""Errors on the Messages route, in Anthropic's shape:
``{"type": "error", "error": {"type": "rate_limit_error", "message": "..."}, "request_id": "..."}``.

The status is the one the OpenAI routes give for the same failure, so receipts, ``Retry-After`` and the
metrics read alike on both faces; the Anthropic SDK picks its exception class by status (400
``BadRequestError``, 401 ``AuthenticationError``, 402 ``PaymentRequiredError``, 404 ``NotFoundError``,
429 ``RateLimitError``, 5xx ``InternalServerError``). Anthropic's API has a 402 of its own
(``billing_error``), so a request no provider balance covers keeps its 402.
"""

from __future__ import annotations

import json

from router.policy.outcome import error_message, json_object

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    # No provider can take the request now (ours), or a provider said it is over capacity.
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status."""
    return _TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def error_body(status: int, message: str, request_id: str) -> bytes:
    """The JSON body of an error with ``status``."""
    error = {"type": error_type(status), "message": message}
    return json.dumps({"type": "error", "error": error, "request_id": request_id}).encode()


def upstream_error_body(status: int, body: bytes, request_id: str) -> bytes:
    """A provider's own rejection: as it came when it is in Anthropic's shape already (a provider that
    serves the format natively), else its message in Anthropic's shape (a chat-completions error)."""
    doc = json_object(body)
    if doc is not None and doc.get("type") == "error" and isinstance(doc.get("error"), dict):
        return body
    return error_body(status, error_message(body), request_id)


def error_event(message: str, kind: str = "api_error") -> bytes:
    """The stream event that ends a stream which cannot go on (the SDK raises on it)."""
    data = json.dumps({"type": "error", "error": {"type": kind, "message": message}})
    return b"event: error\ndata: " + data.encode() + b"\n\n"
