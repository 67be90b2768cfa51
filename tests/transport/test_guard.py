"""Provider URLs from the untrusted registry: which are accepted, and the socket factory that refuses
connections to non-public addresses."""

from __future__ import annotations

import ipaddress
import re
import socket

import pytest

from router.errors import ProviderError, UnsafeProviderUrl
from router.transport.guard import check_provider_url, guarded_socket, is_non_public


class TestCheckProviderUrl:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("https://provider.example.com/v1/proxy", "https://provider.example.com/v1/proxy"),
            ("https://provider.example.com/v1/proxy/", "https://provider.example.com/v1/proxy"),
            ("https://provider.example.com//", "https://provider.example.com"),
            ("http://8.8.8.8:8080", "http://8.8.8.8:8080"),
            ("  https://8.8.8.8/  ", "https://8.8.8.8"),
            ("HTTPS://8.8.8.8", "HTTPS://8.8.8.8"),
            ("http://[2001:4860:4860::8888]:443/v1", "http://[2001:4860:4860::8888]:443/v1"),
            # A host name is checked at connect time (guarded_socket), not here.
            ("http://localhost:8080", "http://localhost:8080"),
        ],
    )
    def test_accepted(self, url: str, expected: str) -> None:
        """Public http(s) URLs and host names pass, stripped of blanks and trailing slashes."""
        assert check_provider_url("0xabc", url, allow_private=False) == expected

    @pytest.mark.parametrize(
        ("url", "reason"),
        [
            ("ftp://8.8.8.8/v1", "scheme 'ftp' is not http(s)"),
            ("file:///etc/passwd", "scheme 'file' is not http(s)"),
            ("8.8.8.8/v1", "scheme '' is not http(s)"),
            ("http:///v1/proxy", "URL has no host"),
            ("http://:8080", "URL has no host"),
            ("http://user:secret@8.8.8.8", "URL carries credentials"),
            ("http://user@provider.example.com", "URL carries credentials"),
            ("http://8.8.8.8\\@127.0.0.1/", "URL carries credentials"),
            ("http://8.8.8.8/v1?next=http://10.0.0.1", "URL has a query or fragment"),
            ("http://8.8.8.8/v1#top", "URL has a query or fragment"),
            ("http://8.8.8.8:99999", "unparsable URL"),
            ("http://[::1", "unparsable URL"),
            ("http://127.0.0.1:8080", "127.0.0.1 is not a public address"),
            ("http://127.8.9.10", "127.8.9.10 is not a public address"),
            ("http://10.1.2.3", "10.1.2.3 is not a public address"),
            ("http://172.16.0.1", "172.16.0.1 is not a public address"),
            ("http://192.168.1.1", "192.168.1.1 is not a public address"),
            ("http://100.64.0.1", "100.64.0.1 is not a public address"),
            ("http://169.254.169.254/latest/meta-data", "169.254.169.254 is not a public address"),
            ("http://0.0.0.0:80", "0.0.0.0 is not a public address"),
            ("http://224.0.0.1", "224.0.0.1 is not a public address"),
            ("http://255.255.255.255", "255.255.255.255 is not a public address"),
            ("http://[::1]:8080", "::1 is not a public address"),
            ("http://[::]", ":: is not a public address"),
            ("http://[::ffff:127.0.0.1]", "::ffff:127.0.0.1 is not a public address"),
            ("http://[::ffff:10.0.0.1]", "::ffff:10.0.0.1 is not a public address"),
            ("http://[fe80::1]", "fe80::1 is not a public address"),
            ("http://[fc00::1]", "fc00::1 is not a public address"),
            ("http://[ff02::1]", "ff02::1 is not a public address"),
        ],
    )
    def test_refused(self, url: str, reason: str) -> None:
        """Other schemes, missing hosts, credentials, queries, bad ports and non-public IPs are refused."""
        with pytest.raises(UnsafeProviderUrl, match=re.escape(reason)) as caught:
            check_provider_url("0xabc", url, allow_private=False)
        assert caught.value.provider == "0xabc"
        assert str(caught.value).startswith("provider 0xabc: ")
        assert isinstance(caught.value, ProviderError)

    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("http://127.0.0.1:8545/", "http://127.0.0.1:8545"),
            ("http://[::1]:9000/v1/proxy", "http://[::1]:9000/v1/proxy"),
            ("http://10.0.0.7", "http://10.0.0.7"),
            ("http://[::ffff:127.0.0.1]:80", "http://[::ffff:127.0.0.1]:80"),
        ],
    )
    def test_allow_private_accepts_local_targets(self, url: str, expected: str) -> None:
        """With allow_private (the devnet), loopback and private IPs pass."""
        assert check_provider_url("0xabc", url, allow_private=True) == expected

    @pytest.mark.parametrize(
        "url",
        ["ftp://127.0.0.1", "http://user:pw@127.0.0.1", "http://127.0.0.1/?q=1", "http:///v1"],
    )
    def test_allow_private_keeps_the_other_checks(self, url: str) -> None:
        """allow_private relaxes only the address check: scheme, host, credentials and query still count."""
        with pytest.raises(UnsafeProviderUrl):
            check_provider_url("0xabc", url, allow_private=True)


class TestIsNonPublic:
    @pytest.mark.parametrize(
        ("address", "non_public"),
        [
            ("8.8.8.8", False),
            ("1.1.1.1", False),
            ("2001:4860:4860::8888", False),
            ("::ffff:8.8.8.8", False),
            ("127.0.0.1", True),
            ("10.0.0.1", True),
            ("172.31.255.255", True),
            ("192.168.0.1", True),
            ("169.254.1.1", True),
            ("100.64.0.1", True),
            ("0.0.0.0", True),  # noqa: S104 - an address under test, nothing binds to it
            ("224.0.0.251", True),
            ("239.255.255.250", True),
            ("240.0.0.1", True),
            ("::1", True),
            ("::", True),
            ("::ffff:127.0.0.1", True),
            ("::ffff:192.168.0.1", True),
            ("fe80::1", True),
            ("fd12:3456::1", True),
            ("ff02::1", True),
            ("2001:db8::1", True),
        ],
    )
    def test_classification(self, address: str, non_public: bool) -> None:
        """Loopback, private, link-local, shared, multicast, reserved and unspecified are non-public."""
        assert is_non_public(ipaddress.ip_address(address)) is non_public


class TestGuardedSocket:
    @pytest.mark.parametrize(
        ("family", "sockaddr"),
        [
            (socket.AF_INET, ("127.0.0.1", 80)),
            (socket.AF_INET, ("10.0.0.1", 443)),
            (socket.AF_INET, ("169.254.169.254", 80)),
            (socket.AF_INET6, ("::1", 80, 0, 0)),
            (socket.AF_INET6, ("::ffff:127.0.0.1", 80, 0, 0)),
            (socket.AF_INET6, ("fe80::1%1", 80, 0, 1)),
        ],
    )
    def test_refuses_a_non_public_address(
        self, family: socket.AddressFamily, sockaddr: tuple[object]
    ) -> None:
        """A connection to a non-public address fails before its socket exists."""
        with pytest.raises(OSError, match=f"^{re.escape(str(sockaddr[0]))} is not a public address$"):
            guarded_socket((family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))

    def test_refuses_what_is_not_an_address(self) -> None:
        """Anything that does not parse as an IP address is refused rather than guessed at."""
        with pytest.raises(OSError, match=r"^localhost is not a public address$"):
            guarded_socket((socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("localhost", 80)))

    @pytest.mark.parametrize(
        ("family", "sockaddr"),
        [(socket.AF_INET, ("8.8.8.8", 443)), (socket.AF_INET6, ("2001:4860:4860::8888", 443, 0, 0))],
    )
    def test_a_public_address_gets_a_fresh_unconnected_socket(
        self, family: socket.AddressFamily, sockaddr: tuple[object]
    ) -> None:
        """A public address gets a new TCP socket of its family; nothing is connected (no traffic)."""
        sock = guarded_socket((family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
        with sock:
            assert (sock.family, sock.type) == (family, socket.SOCK_STREAM)
            with pytest.raises(OSError, match="not connected"):
                sock.getpeername()
