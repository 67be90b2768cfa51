"""Provider URLs come from an untrusted registry (design.md invariant 7).

Only http(s) URLs without credentials are accepted; private, loopback, link-local and other non-public
targets are refused unless the config allows them (the devnet does). A literal IP is checked when the URL is
accepted; a host name is checked on every connection by ``GuardedResolver``, so a name that later resolves
to a private address (DNS rebinding) is refused too.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from router.errors import UnsafeProviderUrl


def check_provider_url(provider: str, url: str, *, allow_private: bool) -> str:
    """``url`` without a trailing slash, or ``UnsafeProviderUrl`` saying why it is refused."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise UnsafeProviderUrl(provider, f"unparsable URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeProviderUrl(provider, f"scheme {parts.scheme!r} is not http(s)")
    if not host:
        raise UnsafeProviderUrl(provider, "URL has no host")
    if parts.username or parts.password:
        raise UnsafeProviderUrl(provider, "URL carries credentials")
    if parts.query or parts.fragment:
        raise UnsafeProviderUrl(provider, "URL has a query or fragment")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None and not allow_private and is_non_public(address):
        raise UnsafeProviderUrl(provider, f"{host} is not a public address")
    return url.strip().rstrip("/")


def is_non_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Loopback, private, link-local, multicast, reserved or unspecified (IPv4-mapped IPv6 included)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, then drops every non-public address."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        public = [r for r in results if not is_non_public(ipaddress.ip_address(r["host"]))]
        if not public:
            raise OSError(f"{host} resolves only to non-public addresses")
        return public

    async def close(self) -> None:
        await self._inner.close()
