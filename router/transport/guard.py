"""Provider URLs come from an untrusted registry (design.md invariant 7).

Only http(s) URLs without credentials are accepted; private, loopback, link-local and other non-public
targets are refused unless the config allows them (the devnet does). A literal IP is checked when the URL is
accepted, to refuse it early and say why; ``guarded_socket`` then checks the address of every connection
the registry session opens, before its socket exists, so no route around the first check (a host name that
resolves, or later rebinds, to a private address; a literal IP) reaches a non-public peer.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp import AddrInfoType

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


def guarded_socket(addr_info: AddrInfoType) -> socket.socket:
    """The registry session's socket factory (aiohttp's ``TCPConnector(socket_factory=...)``).

    aiohttp hands every address it is about to connect to through here, whether it came from a resolver or
    a literal IP in the URL; an OSError (a non-public address) makes that address's attempt fail before any
    byte is sent, and aiohttp moves on to the next address, if there is one.
    """
    family, kind, proto, _, sockaddr = addr_info
    host = str(sockaddr[0])
    try:
        refused = is_non_public(ipaddress.ip_address(host))
    except ValueError:
        refused = True
    if refused:
        raise OSError(f"{host} is not a public address")
    return socket.socket(family, kind, proto)
