"""A web3 provider over several HTTP RPC URLs with retries and failover.

Transport failures (connection errors, timeouts, HTTP 429/5xx) are retried with exponential backoff and
jitter, moving to the next URL after each failure; the URL that answered stays preferred. JSON-RPC error
responses are answers, not failures: they pass through to web3 unchanged. Resending the same request is
safe for every method we use, including ``eth_sendRawTransaction`` (the same signed bytes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)
from web3.providers.async_base import AsyncJSONBaseProvider
from web3.types import RPCEndpoint, RPCResponse

from router.errors import ChainUnavailable

_TRANSIENT = (aiohttp.ClientError, TimeoutError)


def redact_url(url: str) -> str:
    """``scheme://host:port`` only: RPC URLs often carry an API key in the path or query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _describe(exc: BaseException) -> str:
    """A failure's kind without its text, which for aiohttp errors can include the full URL."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or type(exc.os_error).__name__})"
    return type(exc).__name__


class FailoverHTTPProvider(AsyncJSONBaseProvider):
    """JSON-RPC over HTTP to the first of ``urls`` that answers. Does not own ``session``."""

    def __init__(
        self,
        urls: tuple[str, ...],
        session: aiohttp.ClientSession,
        *,
        attempts: int,
        backoff_initial: float,
        backoff_max: float,
        on_error: Callable[[str, str], None] = lambda endpoint, detail: None,
    ) -> None:
        """``on_error(endpoint, detail)`` hears every failed call (retried or not), with the endpoint as
        ``redact_url`` shows it."""
        super().__init__()
        self._urls = urls
        self._on_error = on_error
        self._session = session
        self._preferred = 0
        self._attempts = attempts
        self._wait = wait_exponential_jitter(multiplier=backoff_initial, max=backoff_max)

    async def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        body = self.encode_rpc_request(method, params)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=self._wait,
            retry=retry_if_exception_type(_TRANSIENT),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    raw = await self._post(body)
        except _TRANSIENT as exc:
            hosts = ", ".join(redact_url(u) for u in self._urls)
            raise ChainUnavailable(
                f"no RPC endpoint answered {method} after {self._attempts} attempts "
                f"({hosts}): {_describe(exc)}"
            ) from exc
        return self.decode_rpc_response(raw)

    async def _post(self, body: bytes) -> bytes:
        url = self._urls[self._preferred]
        try:
            async with self._session.post(
                url, data=body, headers={"Content-Type": "application/json"}
            ) as response:
                response.raise_for_status()
                return await response.read()
        except _TRANSIENT as exc:
            self._preferred = (self._preferred + 1) % len(self._urls)
            self._on_error(redact_url(url), _describe(exc))
            raise

    async def is_connected(self, show_traceback: bool = False) -> bool:
        try:
            response = await self.make_request(RPCEndpoint("eth_chainId"), [])
        except ChainUnavailable:
            if show_traceback:
                raise
            return False
        return "result" in response

    async def disconnect(self) -> None:
        """Nothing to do: the session belongs to whoever passed it in."""
