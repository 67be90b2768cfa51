"""What a provider's reply means for the request and for the provider (protocol.md §4.2, §4.7, §10). Pure.

400 means many things at a 0G provider; the broker's message text is the only signal, so the rules below
match substrings the broker is known to use.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from router import jsonwire
from router.pool.providers import ProviderKind


class Verdict(enum.Enum):
    OK = "ok"
    UNHEALTHY = "unhealthy"  # 5xx, connect error, timeout: cool the provider down, fail over
    RATE_LIMITED = "rate_limited"  # 429: back off this (wallet, provider) pair, fail over
    BUSY = "busy"  # 503 from the provider's global cap: hold off the provider on every lane, fail over
    UNFUNDED = "unfunded"  # our sub-account is too low there: exclude until funded, fail over
    MISCONFIGURED = "misconfigured"  # auth, acknowledgement, model, route or redirect there: fail over
    CLIENT_ERROR = "client_error"  # the request itself is wrong: return the provider's answer as is


# Order matters: the first match wins.
_RULES_400: tuple[tuple[Verdict, tuple[str, ...]], ...] = (
    (Verdict.UNFUNDED, ("insufficient balance", "account not exist", "account does not exist")),
    (
        Verdict.MISCONFIGURED,
        (
            "not acknowledge",
            # Our session token (protocol.md §3.3): we signed it, so the fault is ours, never the client's.
            "session token",
            "authorization",
            "ephemeral token",
            "signature verification",
            "invalid signature",
            "signature format",
            "recover public key",
            "token expired",
            "token revoked",
            "generation mismatch",
            "model not supported",
            "endpoint not supported",
        ),
    ),
)


def classify(status: int, body: bytes, kind: ProviderKind = ProviderKind.CHAIN) -> Verdict:
    """The verdict for an HTTP reply with ``status`` and (the start of) its ``body``."""
    if status < 300:
        return Verdict.OK
    if status < 400:
        # A redirect is never followed (it could point anywhere, the operator's network included), so
        # the provider is not where the registry says it is, or is hostile; either way no retry there
        # helps until its entry changes, and a short breaker cooldown would only bring it back to fail.
        return Verdict.MISCONFIGURED
    if status == 429:
        # Five wrong-model requests block the wallet at that provider for an hour (protocol.md §4.2).
        if b"invalid model" in body:
            return Verdict.MISCONFIGURED
        return Verdict.RATE_LIMITED
    if status >= 500 or status == 408:
        return Verdict.UNHEALTHY
    if status in (401, 403):
        # Our credentials (a session token or a configured API key), not the client's.
        return Verdict.MISCONFIGURED
    if status in (404, 410):
        # A route or model the provider no longer serves: our registry view is stale.
        return Verdict.MISCONFIGURED
    if status == 402:
        return Verdict.UNFUNDED
    if status == 400 and kind is ProviderKind.CHAIN:
        text = error_message(body).lower()
        for verdict, needles in _RULES_400:
            if any(needle in text for needle in needles):
                return verdict
    return Verdict.CLIENT_ERROR


# The broker's global concurrency cap (protocol.md §4.2) and its newer global RPM/TPM caps (§4.7).
_GLOBAL_CAPS = (b"currently processing too many requests", b"Server is at capacity")


def busy(status: int, headers: Mapping[str, str], body: bytes) -> bool:
    """A 503 that is back-pressure, not ill health: one of the broker's global caps (by its body) or any
    503 with ``Retry-After`` (the server says when to come back). The provider is fine; it is full."""
    return status == 503 and ("Retry-After" in headers or any(cap in body for cap in _GLOBAL_CAPS))


def json_object(body: bytes) -> dict[str, Any] | None:
    """``body`` parsed, if it is a JSON object; None for anything else (truncated, not JSON, nested too
    deeply, another JSON value)."""
    try:
        data = jsonwire.loads(body)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def says_json(content_type: str) -> bool:
    """Whether a ``Content-Type`` header value is ``application/json`` (its parameters aside)."""
    return content_type.partition(";")[0].strip().lower() == "application/json"


def error_message(body: bytes) -> str:
    """The error text of a provider body: ``{"error": "..."}``, ``{"error": {"message": ...}}`` or raw."""
    data = json_object(body)
    if data is not None:
        error = data.get("error", data.get("message"))
        if isinstance(error, dict):
            error = error.get("message")
        if isinstance(error, str):
            return error
    return body[:500].decode("utf-8", "replace")
