"""The zg-router exception tree. Every error a caller can see is one of these.

    RouterError
    ├── ConfigError            bad or missing configuration; raised before anything starts
    ├── ChainError             anything on the chain side
    │   ├── ChainUnavailable   no RPC URL answered after retries and failover
    │   ├── ContractRevert     a call or transaction reverted; carries the decoded error
    │   ├── TransactionFailed  a transaction was sent but did not succeed (dropped, timed out, reverted
    │   │                      without a reason we can decode)
    │   └── FundingError       the funder could not fund a provider (ledger too low, 50-provider cap)
    ├── SessionTokenError      a session token cannot be minted (revoked id, unacknowledged account, ...)
    ├── DevnetError            the local devnet could not start or was used wrongly
    ├── ProviderError          one attempt at one provider failed (internal: dispatch fails over)
    │   ├── ProviderUnreachable    connect error, timeout, or the connection dropped before a reply
    │   └── UnsafeProviderUrl      a registry URL points somewhere we refuse to connect to
    └── RequestFailed          a request ends in an error the caller sees; carries the HTTP status
        ├── InvalidRequest         400/404/413: the request itself is wrong (bad JSON, unknown model, ...)
        ├── Unauthorized           401: missing or wrong gateway API key
        ├── UpstreamRejected       a provider refused the request as the client's fault; status and body
        │                          are passed through unchanged
        ├── InsufficientFunds      402: no provider that could serve it has the balance to cover it
        ├── Saturated              429: every candidate was at its limits until the request's deadline
        ├── AllAttemptsFailed      502: every attempt failed at the providers
        └── NoProviderAvailable    503: no provider can take the request now

Lower-layer exceptions (web3, aiohttp) are translated at the boundary of the layer that owns them and
never escape it.
"""

from __future__ import annotations

import reprlib
from collections.abc import Sequence


class RouterError(Exception):
    """Root of every error raised by zg-router."""


class ConfigError(RouterError):
    """The configuration is invalid or incomplete."""


class ChainError(RouterError):
    """A chain read or write failed."""


class ChainUnavailable(ChainError):
    """Every configured RPC URL failed with a transport error, after retries."""


class ContractRevert(ChainError):
    """A contract call or transaction reverted.

    ``name`` is the custom error's name (``"MinimumDepositRequired"``), ``"Error"`` for a string revert,
    ``"Panic"`` for a Solidity panic, or ``"Unknown"`` when the revert data matched nothing we know.
    ``error_args`` are the decoded arguments, ``function`` the contract function that reverted.
    """

    def __init__(self, function: str, name: str, args: Sequence[object], raw: str = "") -> None:
        self.function = function
        self.name = name
        self.error_args = tuple(args)
        self.raw = raw
        rendered = ", ".join(_render_arg(a) for a in self.error_args)
        super().__init__(f"{function} reverted with {name}({rendered})")


class TransactionFailed(ChainError):
    """A transaction was sent but did not succeed."""


class FundingError(ChainError):
    """A sub-account could not be funded; ``reason`` is ``ledger_low``, ``provider_cap`` or ``failed``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SessionTokenError(RouterError):
    """A session token could not be minted for a provider."""


class DevnetError(RouterError):
    """The local devnet failed to start or was misused."""


def _render_arg(value: object) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, str):
        return repr(value)
    return str(value)


class ProviderError(RouterError):
    """One attempt at one provider failed. Dispatch classifies it and fails over; callers rarely see it."""

    def __init__(self, provider: str, message: str) -> None:
        self.provider = provider
        super().__init__(f"provider {provider}: {message}")


class ProviderUnreachable(ProviderError):
    """No reply: connection refused or reset, a timeout, or a body cut off before it was complete."""


class UnsafeProviderUrl(ProviderError):
    """A provider URL from the (untrusted) registry has a scheme or target we refuse."""


class RequestFailed(RouterError):
    """A request ended in an error for its caller. ``status``/``type``/``code`` are the OpenAI error fields.

    ``headers`` are extra response headers (``Retry-After``); ``attempts`` how many provider attempts ran.
    """

    status = 500
    type = "api_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        attempts: int = 0,
    ) -> None:
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.attempts = attempts
        super().__init__(message)


class InvalidRequest(RequestFailed):
    """The request is malformed or names something that does not exist (400, 404 or 413)."""

    type = "invalid_request_error"

    def __init__(
        self, message: str, *, status: int = 400, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message, code=code, param=param)
        self.status = status


class Unauthorized(RequestFailed):
    status = 401
    type = "authentication_error"


class UpstreamRejected(RequestFailed):
    """A provider answered with a client error (e.g. 400 context length); its body is passed on as is."""

    type = "invalid_request_error"

    def __init__(self, status: int, body: bytes, content_type: str, *, provider: str, attempts: int) -> None:
        super().__init__(f"provider {provider} rejected the request with {status}", attempts=attempts)
        self.status = status
        self.body = body
        self.content_type = content_type
        self.provider = provider


class InsufficientFunds(RequestFailed):
    """No provider that could serve the request has the balance to cover it (HTTP 402)."""

    status = 402
    type = "insufficient_funds"


class Saturated(RequestFailed):
    status = 429
    type = "rate_limit_error"


class AllAttemptsFailed(RequestFailed):
    status = 502
    type = "provider_error"


class NoProviderAvailable(RequestFailed):
    status = 503
    type = "service_unavailable"


def clipped(value: object, limit: int = 100, *, quote: bool = True) -> str:
    """``value`` as an error message quotes it, at most about ``limit`` characters: input quoted back must
    not make an error as large as the input. A cut string ends in an ellipsis and its full length;
    ``quote=False`` leaves a string unquoted. Other values get ``reprlib``'s bounded repr, cut the same."""
    if isinstance(value, str):
        shown = value[:limit]
        text = repr(shown) if quote else shown
        return text if len(value) <= limit else f"{text}… ({len(value)} characters)"
    text = reprlib.repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…"


def provider_not_found(unknown: Sequence[str], param: str) -> InvalidRequest:
    """The 404 for ``unknown``: providers neither in the pool nor holding a sub-account of ours (the
    first three named, clipped)."""
    names = ", ".join(clipped(p, 42, quote=False) for p in unknown[:3])
    more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
    return InvalidRequest(
        f"not a provider in the pool, nor one we hold a sub-account at: {names}{more}",
        status=404,
        code="provider_not_found",
        param=param,
    )
