"""httpx transports over the core: ``AsyncTransport`` runs on the router's own loop, ``SyncTransport``
submits each request to the loop thread ``Router.start_in_thread`` runs, and streams back chunk by chunk.

One implementation serves both httpx flavours: the ``httpx2`` package the openai SDK (3.x) is built on,
and the classic ``httpx`` some frameworks still hand around. ``transport_classes(module)`` makes the
flavour's subclasses of its own base classes (``AsyncBaseTransport``, ``AsyncByteStream``, ...), since
httpx checks a response stream's class before it reads it.

Closing a stream (``Response.aclose()``, the SDK's ``stream.close()``, leaving its ``with``, or reading
to the end) closes the router's stream, which frees the provider slot at once.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping
from concurrent.futures import Future
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from router.core import Core
from router.errors import ConfigError
from router.replies import StreamReply

if TYPE_CHECKING:
    from router.client import Router

_T = TypeVar("_T")


class _Incoming:
    """An httpx request as the core reads it (its body read already)."""

    __slots__ = ("_body", "headers", "method", "path", "query")

    def __init__(self, method: str, url: Any, headers: Mapping[str, str], body: bytes) -> None:
        """``url`` is an httpx ``URL`` (of either flavour): its path and its query parameters."""
        self.method = method
        self.path = url.path
        self.query = url.params
        self.headers = headers
        self._body = body

    async def read(self) -> bytes:
        return self._body


class _AsyncStream:
    """A router stream as httpx's ``AsyncByteStream``."""

    def __init__(self, stream: StreamReply) -> None:
        self._stream = stream

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._stream.events()

    async def aclose(self) -> None:
        await self._stream.aclose()


class _AsyncServe:
    """``handle_async_request`` over ``core``, on the loop the router runs on."""

    _httpx: ModuleType
    _stream_class: type[_AsyncStream]

    def __init__(self, router: Router, core: Core) -> None:
        self._router = router
        self._core = core

    async def handle_async_request(self, request: Any) -> Any:
        if not self._router.serving:
            # What the SDK turns into its APIConnectionError, saying why, rather than a 500 of ours.
            raise self._httpx.ConnectError(
                "the router is not open: use the client inside `async with Router(config) as router:`",
                request=request,
            )
        body = await request.aread()
        reply = await self._core.handle(_Incoming(request.method, request.url, request.headers, body))
        if reply.stream is None:
            return self._httpx.Response(reply.status, headers=reply.headers, content=reply.body)
        return self._httpx.Response(
            reply.status, headers=reply.headers, stream=self._stream_class(reply.stream)
        )


class _SyncStream:
    """A router stream as httpx's ``SyncByteStream``: each chunk fetched on the loop thread."""

    _httpx: ModuleType

    def __init__(self, stream: StreamReply, loop: asyncio.AbstractEventLoop) -> None:
        self._stream = stream
        self._loop = loop

    def __iter__(self) -> Iterator[bytes]:
        events = self._stream.events()
        while True:
            if self._loop.is_closed():
                # Never a silent cut: the SDK reports a read error as the stream's end.
                raise self._httpx.ReadError("the router closed in the middle of the stream")
            event = on_loop(self._loop, anext(events, None))
            if event is None:
                return
            yield event

    def close(self) -> None:
        if not self._loop.is_closed():
            on_loop(self._loop, self._stream.aclose())


class _SyncServe:
    """``handle_request`` over ``core``, run on ``loop`` (another thread's) for a caller that blocks."""

    _httpx: ModuleType
    _stream_class: type[_SyncStream]

    def __init__(self, router: Router, core: Core, loop: asyncio.AbstractEventLoop) -> None:
        self._router = router
        self._core = core
        self._loop = loop

    def handle_request(self, request: Any) -> Any:
        if self._loop.is_closed() or not self._router.serving:
            # What the SDK turns into its APIConnectionError: there is nothing left to connect to.
            raise self._httpx.ConnectError(
                "the router is closed: its loop thread has stopped", request=request
            )
        body = request.read()
        incoming = _Incoming(request.method, request.url, request.headers, body)
        reply = on_loop(self._loop, self._core.handle(incoming))
        if reply.stream is None:
            return self._httpx.Response(reply.status, headers=reply.headers, content=reply.body)
        return self._httpx.Response(
            reply.status, headers=reply.headers, stream=self._stream_class(reply.stream, self._loop)
        )


def on_loop(loop: asyncio.AbstractEventLoop, awaitable: Any) -> Any:
    """Run ``awaitable`` on ``loop`` (a thread of its own) and wait for its result. If the caller is
    interrupted while it waits (Ctrl-C), the work on the loop is cancelled, which frees what it holds."""
    future: Future[Any] = asyncio.run_coroutine_threadsafe(_awaited(awaitable), loop)
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise


async def _awaited(awaitable: Coroutine[Any, Any, _T]) -> _T:
    # run_coroutine_threadsafe takes coroutines only; anext() gives a plain awaitable.
    return await awaitable


def flavour(package: str | None = None) -> ModuleType:
    """The httpx module to serve: ``package`` ("httpx2" or "httpx"), else the openai SDK's (httpx2 when
    installed, else httpx)."""
    names = (package,) if package is not None else ("httpx2", "httpx")
    for name in names:
        if name not in ("httpx2", "httpx"):
            raise ConfigError(f"httpx_transport serves the httpx2 or httpx package, not {name!r}")
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ConfigError(
        f"{' or '.join(names)} is not installed: install zg-router[openai] for the in-process transports"
    )


@functools.cache
def transport_classes(module: ModuleType) -> tuple[type[_AsyncServe], type[_SyncServe]]:
    """``module``'s async and sync transport classes over the core, made once per flavour."""
    namespace = {"_httpx": module, "__module__": __name__}
    async_stream = type("AsyncStream", (_AsyncStream, module.AsyncByteStream), {"__module__": __name__})
    sync_stream = type("SyncStream", (_SyncStream, module.SyncByteStream), namespace)
    async_transport = type(
        "AsyncTransport",
        (_AsyncServe, module.AsyncBaseTransport),
        {**namespace, "_stream_class": async_stream},
    )
    sync_transport = type(
        "SyncTransport", (_SyncServe, module.BaseTransport), {**namespace, "_stream_class": sync_stream}
    )
    return async_transport, sync_transport
