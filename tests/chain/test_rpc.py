"""RPC failover, network presets and the wallet's handling of its key."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from router.chain.client import ChainClient, ChainOptions
from router.chain.networks import DEVNET, MAINNET, Network, network_by_name
from router.chain.rpc import redact_url
from router.chain.wallet import Wallet
from router.devnet import Devnet
from router.errors import ChainUnavailable, ConfigError

FAST_RETRIES = ChainOptions(attempts=3, backoff_initial=0.001, backoff_max=0.01)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def unavailable_rpc() -> AsyncIterator[tuple[str, list[int]]]:
    """An HTTP server on 127.0.0.1 that answers every JSON-RPC call with 503; yields (url, hit counter)."""
    hits: list[int] = []

    async def overloaded(request: web.Request) -> web.Response:
        hits.append(1)
        return web.Response(status=503, text="overloaded")

    app = web.Application()
    app.router.add_post("/{tail:.*}", overloaded)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/", hits
    finally:
        await runner.cleanup()


class TestFailover:
    async def test_a_refused_url_fails_over_to_the_next(self, devnet: Devnet) -> None:
        """With a dead first URL the client still opens, reads, and sends through the second."""
        network = DEVNET.with_rpc_urls(f"http://127.0.0.1:{_closed_port()}", devnet.rpc_url)
        async with ChainClient(network, options=FAST_RETRIES) as chain:
            services = await chain.list_services()
        assert {s.provider for s in services} == {p.address for p in devnet.providers}

    async def test_http_errors_fail_over_too(
        self, devnet: Devnet, unavailable_rpc: tuple[str, list[int]]
    ) -> None:
        """An RPC answering 503 is skipped; the one that answered stays preferred for later calls."""
        url, hits = unavailable_rpc
        async with ChainClient(DEVNET.with_rpc_urls(url, devnet.rpc_url), options=FAST_RETRIES) as chain:
            first = await chain.block_number()
            assert await chain.block_number() >= first
        assert len(hits) == 1

    async def test_every_url_down_raises_chain_unavailable_without_secrets(self) -> None:
        """All URLs failing is a ChainUnavailable naming hosts only: API keys in paths stay hidden."""
        port = _closed_port()
        network = DEVNET.with_rpc_urls(f"http://127.0.0.1:{port}/v1/secret-api-key-123")
        with pytest.raises(ChainUnavailable) as caught:
            async with ChainClient(network, options=FAST_RETRIES):
                pass
        message = str(caught.value)
        assert f"127.0.0.1:{port}" in message
        assert "secret-api-key-123" not in message
        assert "3 attempts" in message

    async def test_wrong_chain_id_is_a_config_error(self, devnet: Devnet) -> None:
        """Pointing the mainnet preset at the devnet RPC is refused at open."""
        with pytest.raises(ConfigError, match="reports chain id 31337, expected 16661"):
            async with ChainClient(MAINNET.with_rpc_urls(devnet.rpc_url)):
                pass

    @pytest.mark.parametrize(
        ("url", "redacted"),
        [
            ("https://user:pw@rpc.example.org:8545/v3/KEY?x=1", "https://rpc.example.org:8545"),
            ("http://127.0.0.1:8545", "http://127.0.0.1:8545"),
            ("https://evmrpc.0g.ai/abc", "https://evmrpc.0g.ai"),
        ],
    )
    def test_redact_url_keeps_scheme_and_host_only(self, url: str, redacted: str) -> None:
        assert redact_url(url) == redacted


class TestNetworks:
    def test_presets_by_name(self) -> None:
        """The three presets resolve by name; an unknown name lists the known ones."""
        assert network_by_name("mainnet").chain_id == 16661
        assert network_by_name("testnet").chain_id == 16602
        assert network_by_name("devnet").inference == "0x0165878A594ca255338adfa4d48449f69242Eb8F"
        with pytest.raises(ConfigError, match="known: devnet, mainnet, testnet"):
            network_by_name("moonnet")

    def test_rejects_unchecksummed_addresses_and_non_http_urls(self) -> None:
        with pytest.raises(ConfigError, match="not checksummed"):
            Network("x", 1, (), DEVNET.ledger.lower(), DEVNET.inference)
        with pytest.raises(ConfigError, match="must be http"):
            DEVNET.with_rpc_urls("ws://127.0.0.1:8545")
        with pytest.raises(ConfigError, match="at least one RPC URL"):
            DEVNET.with_rpc_urls()


class TestWallet:
    def test_a_bad_key_is_a_config_error_that_does_not_echo_it(self) -> None:
        with pytest.raises(ConfigError) as caught:
            Wallet("0xnot-a-key-but-secret")
        assert "not-a-key-but-secret" not in str(caught.value)

    def test_repr_shows_the_address_only(self) -> None:
        key = "0x" + "11" * 32
        wallet = Wallet(key)
        assert repr(wallet) == f"Wallet({wallet.address})"
        assert "11" * 32 not in repr(wallet) + str(wallet)

    def test_from_file_strips_whitespace_and_reports_missing_files(self, tmp_path: Path) -> None:
        key_file = tmp_path / "key"
        key_file.write_text("0x" + "22" * 32 + "\n")
        assert Wallet.from_file(key_file).address == Wallet("0x" + "22" * 32).address
        with pytest.raises(ConfigError, match="cannot read wallet key file"):
            Wallet.from_file(tmp_path / "missing")
