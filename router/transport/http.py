"""The aiohttp client for providers. aiohttp errors become ``ProviderUnreachable`` here and nowhere else.

Two sessions: one for registry providers (untrusted URLs, every connection's address checked by
``guarded_socket`` unless private targets are allowed) and one for static upstreams the operator configured.
Neither follows redirects: a redirect would take the request (the user's prompt, our session token) to a
target nobody checked, so a 3xx comes back as the reply it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiohttp

from router import jsonwire
from router.errors import ConfigError, ProviderUnreachable
from router.pool.providers import ProviderInfo, ProviderKind
from router.transport.guard import guarded_socket
from router.transport.sse import MalformedEvent, SSEFramer, usage_of

# Enough for a few large base64 images; a provider sending more is cut off rather than filling memory.
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class TransportOptions:
    """Timeouts in seconds. ``stream_idle_timeout`` bounds the gap between two stream events;
    ``body_idle_timeout`` the gap between two reads of a plain reply's body once its headers are in (the
    wait for the headers, while the provider generates, is bounded only by the request's deadline)."""

    connect_timeout: float = 5.0
    stream_idle_timeout: float = 60.0
    body_idle_timeout: float = 30.0
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    allow_private_targets: bool = False

    def __post_init__(self) -> None:
        if min(self.connect_timeout, self.stream_idle_timeout, self.body_idle_timeout) <= 0:
            raise ConfigError("connect_timeout, stream_idle_timeout and body_idle_timeout must be positive")
        if self.max_response_bytes < 1024:
            raise ConfigError("max_response_bytes must be at least 1024")


class Upstream:
    """A provider's reply whose headers have arrived. Close it (or read it to the end) exactly once.

    ``idle_timeout`` bounds each wait for more of the body. ``usage`` is the last non-empty usage object
    of the stream's events so far.
    """

    __slots__ = ("_at_end", "_framer", "_idle_timeout", "_max_bytes", "_provider", "_response", "usage")

    def __init__(
        self, provider: str, response: aiohttp.ClientResponse, idle_timeout: float, max_bytes: int
    ) -> None:
        self._provider = provider
        self._response = response
        self._idle_timeout = idle_timeout
        self._max_bytes = max_bytes
        self._framer = SSEFramer()
        self._at_end = False
        self.usage: dict[str, Any] | None = None

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    async def read(self) -> bytes:
        """The whole body (at most ``max_response_bytes``); closes the response. A body that stalls
        longer than the idle timeout raises ``ProviderUnreachable``, as a stream does."""
        content = self._response.content
        idle = self._idle_timeout
        loop = asyncio.get_running_loop()
        parts = []
        size = 0
        try:
            with _mapped(self._provider):
                async with asyncio.timeout(idle) as timer:
                    while chunk := await content.readany():
                        size += len(chunk)
                        if size > self._max_bytes:
                            raise ProviderUnreachable(
                                self._provider, f"response larger than {self._max_bytes} bytes"
                            )
                        parts.append(chunk)
                        timer.reschedule(loop.time() + idle)
            # One part (the common case) is joined without a copy.
            return b"".join(parts)
        finally:
            self._response.release()

    async def events(self) -> AsyncIterator[bytes]:
        """Whole SSE events as they arrive. A stall longer than the idle timeout, a dropped connection, an
        end without ``[DONE]`` mid-event, or an event whose data is not a JSON object raises
        ``ProviderUnreachable``: the client never gets an event it could not parse."""
        content = self._response.content
        while True:
            with _mapped(self._provider):
                async with asyncio.timeout(self._idle_timeout):
                    chunk = await content.readany()
            if not chunk:
                tail = self._framer.pending
                if tail.strip():
                    raise ProviderUnreachable(self._provider, "stream ended in the middle of an event")
                self._at_end = True
                if tail:
                    # Whitespace after the last event: relayed too, since the broker signed every byte.
                    yield tail
                return
            for event in self._framer.feed(chunk):
                # The one parse of each event: it checks the event and finds the usage.
                try:
                    usage = usage_of(event)
                except MalformedEvent as exc:
                    raise ProviderUnreachable(
                        self._provider, f"sent a malformed stream event ({exc})"
                    ) from None
                if usage is not None:
                    self.usage = usage
                yield event

    def close(self) -> None:
        """Hand the connection back to the pool after a complete stream; drop it mid-stream."""
        if self._at_end:
            self._response.release()
        else:
            self._response.close()


class HttpTransport:
    """Sends requests to providers. ``async with HttpTransport(options) as transport:``."""

    def __init__(self, options: TransportOptions | None = None) -> None:
        self.options = options or TransportOptions()
        self._sessions: dict[ProviderKind, aiohttp.ClientSession] = {}

    async def __aenter__(self) -> Self:
        registry = aiohttp.TCPConnector(
            limit=0,
            ttl_dns_cache=60,
            socket_factory=None if self.options.allow_private_targets else guarded_socket,
        )
        static = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60)
        # auto_decompress off: bodies pass through byte for byte, with their Content-Encoding. No cookie
        # jar: a cookie one provider sets must not reach another on the same host (and matching cookies
        # to every request is work for nothing).
        for kind, connector in ((ProviderKind.CHAIN, registry), (ProviderKind.STATIC, static)):
            self._sessions[kind] = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()

    async def send(
        self,
        provider: ProviderInfo,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        time_left: float,
        stream: bool,
    ) -> Upstream:
        """POST ``body`` to ``provider.base_url + path``; returns once the reply's headers are in.

        ``time_left`` (seconds) bounds the whole exchange for a plain reply and the wait for headers for a
        stream. A redirect is not followed: its 3xx is the reply.
        """
        opts = self.options
        client_timeout = aiohttp.ClientTimeout(
            total=None if stream else time_left,
            connect=min(opts.connect_timeout, time_left),
            sock_read=opts.stream_idle_timeout if stream else None,
        )
        session = self._sessions[provider.kind]
        with _mapped(provider.id):
            async with asyncio.timeout(time_left):
                response = await session.post(
                    provider.base_url + path,
                    data=body,
                    headers=headers,
                    timeout=client_timeout,
                    allow_redirects=False,
                )
        idle = opts.stream_idle_timeout if stream else opts.body_idle_timeout
        return Upstream(provider.id, response, idle, opts.max_response_bytes)

    async def get(
        self, kind: ProviderKind, provider: str, url: str, *, headers: Mapping[str, str], time_left: float
    ) -> tuple[Mapping[str, str], bytes]:
        """GET a free route of a provider: the reply's headers and body (at most ``max_response_bytes``).
        Non-2xx (a redirect too: it is not followed) raises ``ProviderUnreachable``."""
        session = self._sessions[kind]
        with _mapped(provider):
            async with (
                asyncio.timeout(time_left),
                session.get(
                    url,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=time_left),
                    allow_redirects=False,
                ) as response,
            ):
                if response.status >= 300:
                    raise ProviderUnreachable(provider, f"{url} answered {response.status}")
                limit, size, parts = self.options.max_response_bytes, 0, []
                async for chunk in response.content.iter_any():
                    size += len(chunk)
                    if size > limit:
                        raise ProviderUnreachable(provider, f"{url} answered more than {limit} bytes")
                    parts.append(chunk)
        return response.headers, b"".join(parts)

    async def get_json(
        self, kind: ProviderKind, provider: str, url: str, *, headers: Mapping[str, str], time_left: float
    ) -> Any:
        """GET a free JSON route of a provider (``/v1/models``); non-2xx or non-JSON raises."""
        _, body = await self.get(kind, provider, url, headers=headers, time_left=time_left)
        try:
            return jsonwire.loads(body)
        except (ValueError, RecursionError):
            raise ProviderUnreachable(provider, f"{url} did not answer JSON") from None


class _mapped:
    """Translate aiohttp and timeout errors into ``ProviderUnreachable`` for ``provider``."""

    __slots__ = ("_provider",)

    def __init__(self, provider: str) -> None:
        self._provider = provider

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            return
        if isinstance(exc, TimeoutError):
            raise ProviderUnreachable(self._provider, "timed out") from None
        if isinstance(exc, aiohttp.ClientConnectorError):
            raise ProviderUnreachable(self._provider, f"cannot connect ({exc.os_error})") from None
        if isinstance(exc, aiohttp.ClientError | ConnectionError):
            raise ProviderUnreachable(self._provider, f"connection failed ({type(exc).__name__})") from None
