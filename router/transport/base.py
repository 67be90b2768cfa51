"""The provider transport protocol: what the router needs to talk to a provider, whatever carries it.

``HttpTransport`` (aiohttp) is the implementation; ``FakeTransport`` (``router.transport.fake``) is a
scriptable one that ships in the package for tests and library users. Both raise ``ProviderUnreachable``
for anything that is not an HTTP reply (connect errors, timeouts, broken bodies).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from router.pool.providers import ProviderInfo, ProviderKind


class Upstream(Protocol):
    """A provider's reply whose headers have arrived. Close it (or read it to the end) exactly once."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    # The last non-empty usage object of the stream's events so far.
    usage: dict[str, Any] | None

    async def read(self) -> bytes:
        """The whole body; closes the reply."""
        ...

    def events(self) -> AsyncIterator[bytes]:
        """Whole SSE events as they arrive, each checked to be JSON (or ``[DONE]``)."""
        ...

    def close(self) -> None: ...


class ProviderTransport(AbstractAsyncContextManager["ProviderTransport"], Protocol):
    """Sends requests to providers. Entered once by the router, which owns it."""

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
        """POST ``body`` to ``provider.base_url + path``; returns once the reply's headers are in."""
        ...

    async def get(
        self, kind: ProviderKind, provider: str, url: str, *, headers: Mapping[str, str], time_left: float
    ) -> tuple[Mapping[str, str], bytes]:
        """GET a free route of a provider: its reply's headers and body; non-2xx raises
        ``ProviderUnreachable``."""
        ...

    async def get_json(
        self, kind: ProviderKind, provider: str, url: str, *, headers: Mapping[str, str], time_left: float
    ) -> Any:
        """GET a free JSON route of a provider; non-2xx or non-JSON raises ``ProviderUnreachable``."""
        ...
