"""``zg-router balance | providers | fund | refund`` as a user runs them: processes against a live gateway.

The gateway runs in the test's own loop (a router for a new funded wallet on the session devnet, with an
admin key; or for two wallets, in the last tests); the command runs as the installed console script, so the
test awaits it without blocking the gateway. The chain is the witness for money moved, and no run may print
a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import pytest

from router.chain.client import ChainClient
from router.client import Router
from router.config import GatewayConfig
from router.devnet import Devnet
from router.devnet.node_tools import NodeModules
from router.server.app import Gateway
from tests.devnet.test_cli import ZG_ROUTER, read_until, stop, zg_router
from tests.gateway.conftest import router_config
from tests.support import NEURON, funded_wallet

API_KEY = "sk-cli-admin-test-0123456789abcdef"
ADMIN_KEY = "zg-admin-cli-test-0123456789abcdef"
WRONG_KEY = "zg-admin-wrong-0123456789abcdef"
CLI_TIMEOUT = 120.0  # two busy cores: starting Python and importing aiohttp can be slow
TX_HASH = r"0x[0-9a-f]{64}"


@dataclass
class Run:
    """A finished ``zg-router`` process: exit status and its output as text."""

    code: int
    out: str
    err: str


@dataclass
class Live:
    """A router and an admin-enabled gateway for a new funded wallet, and a chain reader."""

    devnet: Devnet
    router: Router
    url: str
    chain: ChainClient
    http: aiohttp.ClientSession

    @property
    def wallet(self) -> str:
        return self.router.wallets[0].address

    def provider(self, index: int) -> str:
        return self.devnet.providers[index].address

    def env(self, **extra: str) -> dict[str, str]:
        return clean_env(**{"ZG_ROUTER_URL": self.url, "ZG_ROUTER_ADMIN_KEY": ADMIN_KEY, **extra})

    async def api(self, path: str) -> dict[str, Any]:
        """``path`` of the admin API, asked over HTTP (what the command's --json should print)."""
        async with (
            asyncio.timeout(CLI_TIMEOUT),
            self.http.get(self.url + path, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as response,
        ):
            assert response.status == 200, await response.text()
            return dict(await response.json())

    async def on_chain(self, index: int, wallet: str | None = None) -> tuple[int, int]:
        """(balance, pending refund) of ``wallet``'s (default: the first wallet's) sub-account at
        provider ``index``."""
        account = await self.chain.get_account(wallet or self.wallet, self.provider(index))
        assert account is not None
        return account.balance, account.pending_refund


def clean_env(**values: str) -> dict[str, str]:
    """This process's environment without any ZG_ROUTER_* variable, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZG_ROUTER_")}
    return {**env, **values}


async def admin_cli(*args: str, env: dict[str, str]) -> Run:
    """Run ``zg-router *args`` to completion (killed if it outlives CLI_TIMEOUT)."""
    process = await asyncio.create_subprocess_exec(
        str(ZG_ROUTER),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        async with asyncio.timeout(CLI_TIMEOUT):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    assert b"Traceback" not in out + err, (out + err).decode()
    return Run(process.returncode, out.decode(), err.decode())


def refused_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def live(devnet: Devnet) -> AsyncIterator[Live]:
    _, key = await funded_wallet(devnet)
    config = GatewayConfig(port=0, api_keys=(API_KEY,), admin_keys=(ADMIN_KEY,), shutdown_timeout=0.5)
    async with (
        Router(router_config(devnet, key)) as router,
        Gateway(router, config) as gateway,
        aiohttp.ClientSession() as http,
    ):
        yield Live(devnet, router, gateway.url, await devnet.open_client(), http)


def table_rows(text: str) -> dict[str, list[str]]:
    """The rows of a readable table keyed by their first column (a provider address)."""
    return {row.split()[0]: row.split()[1:] for row in text.splitlines() if row.startswith("0x")}


def wallet_blocks(text: str) -> dict[str, str]:
    """``zg-router balance``'s output split into its blocks by the wallet each is headed with (a
    ``wallet  0x…`` line); each block but the last ends with a blank line."""
    blocks: dict[str, list[str]] = {}
    lines = text.splitlines()
    assert lines[0].startswith("wallet  "), text
    for line in lines:
        if line.startswith("wallet  "):
            current = blocks.setdefault(line.removeprefix("wallet  "), [])
        else:
            current.append(line)
    for wallet, block in list(blocks.items())[:-1]:
        assert block[-1] == "", wallet
    return {wallet: "\n".join(block) for wallet, block in blocks.items()}


class TestViews:
    async def test_balance_shows_the_wallet_ledger_and_a_line_per_provider(self, live: Live) -> None:
        """``zg-router balance`` prints the wallet, the ledger, and one line per provider with balance,
        available, unsettled and pending refund as 0G with 6 decimals, and the funding state."""
        run = await admin_cli("balance", env=live.env())
        assert (run.code, run.err) == (0, "")
        lines = run.out.splitlines()
        assert lines[0] == f"wallet  {live.wallet}"
        assert lines[1] == "ledger  available 14.000000 0G, total 20.000000 0G, 3 provider(s) funded"
        assert lines[3].split() == ["PROVIDER", "BALANCE", "AVAILABLE", "UNSETTLED", "PENDING", "FUNDING"]
        rows = table_rows(run.out)
        assert rows == {
            p.address: ["2.000000", "1.000000", "0.000000", "0.000000", "ok"] for p in live.devnet.providers
        }
        assert "ALERT" not in run.out

    async def test_balance_json_is_the_admin_api_answer(self, live: Live) -> None:
        """``zg-router balance --json`` prints exactly what GET /admin/balance answers."""
        run = await admin_cli("balance", "--json", env=live.env())
        assert (run.code, run.err) == (0, "")
        printed = json.loads(run.out)
        assert printed == await live.api("/admin/balance")
        (report,) = printed["wallets"]
        assert report["wallet"] == live.wallet
        assert {a["provider"] for a in report["accounts"]} == {p.address for p in live.devnet.providers}

    async def test_providers_shows_models_limits_health_and_available(self, live: Live) -> None:
        """``zg-router providers`` prints a line per provider: model, breaker, limits (rpm/burst/concurrency),
        in-flight, our available balance in 0G, and its attestation: verifiability, the acknowledged TEE
        signer, the acknowledgement and the trust record; with --json, the /admin/providers answer."""
        run = await admin_cli("providers", env=live.env())
        assert (run.code, run.err) == (0, "")
        assert run.out.splitlines()[0].split() == [
            "PROVIDER",
            "MODELS",
            "BREAKER",
            "LIMITS",
            "IN-FLIGHT",
            "AVAILABLE",
            "TEE",
            "SIGNER",
            "ACK",
            "TRUST",
            "CHECKS(ok/failed/n-a)",
        ]
        expected = {}
        for provider in live.devnet.providers:
            limits = provider.spec.limits
            rate = f"{limits.requests_per_minute}/{limits.burst}/{limits.max_concurrent}"
            expected[provider.address] = [
                provider.spec.model,
                "closed",
                rate,
                "0",
                "1.000000",
                provider.spec.verifiability,
                provider.tee_signer.address,
                "yes",
            ]
        rows = table_rows(run.out)
        assert {address: row[:8] for address, row in rows.items()} == expected
        # Whatever traffic earlier tests sent: nothing the honest simulators signed failed.
        assert {row[8] for row in rows.values()} <= {"unverified", "verified"}
        assert all(row[9].split("/")[1] == "0" for row in rows.values())
        run = await admin_cli("providers", "--json", env=live.env())
        assert (run.code, run.err) == (0, "")
        assert json.loads(run.out) == await live.api("/admin/providers")

    async def test_flags_take_precedence_over_the_environment(self, live: Live) -> None:
        """``--url`` and ``--admin-key`` win over ZG_ROUTER_URL and ZG_ROUTER_ADMIN_KEY."""
        env = clean_env(ZG_ROUTER_URL=f"http://127.0.0.1:{refused_port()}", ZG_ROUTER_ADMIN_KEY=WRONG_KEY)
        run = await admin_cli("balance", "--url", live.url + "/", "--admin-key", ADMIN_KEY, env=env)
        assert (run.code, run.err) == (0, "")
        assert run.out.splitlines()[0] == f"wallet  {live.wallet}"


# The gateway's refusal of an amount that is not a plain decimal, before the offending text.
PLAIN_DECIMAL = (
    "`amount` must be a plain decimal number of 0G (ASCII digits, at most 18 decimals, no sign, exponent "
    'or separators), such as "1.5"'
)


class TestMoney:
    async def test_fund_moves_the_amount_on_chain(self, live: Live) -> None:
        """``zg-router fund --provider X --amount 0.5`` moves exactly 0.5 0G to X's sub-account, says so
        with the transaction hash, and ``balance`` then shows X at 2.5 0G."""
        before, _ = await live.on_chain(1)
        provider = live.provider(1)
        run = await admin_cli("fund", "--provider", provider, "--amount", "0.5", env=live.env())
        assert (run.code, run.err) == (0, "")
        expected = rf"funded {provider} with 0\.500000 0G from {live.wallet} \(tx {TX_HASH}\)\n"
        assert re.fullmatch(expected, run.out), run.out
        assert await live.on_chain(1) == (before + NEURON // 2, 0)
        run = await admin_cli("balance", env=live.env())
        assert table_rows(run.out)[provider] == ["2.500000", "1.500000", "0.000000", "0.000000", "ok"]

    async def test_fund_json_prints_the_api_answer(self, live: Live) -> None:
        """``fund --json`` prints the API's answer: the provider, the amount in neuron, the transaction."""
        provider = live.provider(0)
        run = await admin_cli("fund", "--provider", provider, "--amount", "0.25", "--json", env=live.env())
        assert (run.code, run.err) == (0, "")
        reply = json.loads(run.out)
        assert reply["wallet"] == live.wallet
        assert reply["provider"] == provider
        assert reply["amount"] == str(NEURON // 4)
        assert re.fullmatch(TX_HASH, reply["tx_hash"])
        assert await live.on_chain(0) == (2 * NEURON + NEURON // 4, 0)

    async def test_refund_queues_the_providers_whole_balance(self, live: Live) -> None:
        """``zg-router refund --provider X`` queues X's whole balance for refund on chain, and ``balance``
        shows X as draining; the other providers are untouched."""
        provider = live.provider(2)
        run = await admin_cli("refund", "--provider", provider, env=live.env())
        assert (run.code, run.err) == (0, "")
        expected = rf"refund requested for {live.wallet} \(tx {TX_HASH}, block \d+\)\n"
        assert re.fullmatch(expected, run.out), run.out
        assert await live.on_chain(2) == (2 * NEURON, 2 * NEURON)
        assert await live.on_chain(0) == (2 * NEURON, 0)
        rows = table_rows((await admin_cli("balance", env=live.env())).out)
        assert rows[provider] == ["2.000000", "-1.000000", "0.000000", "2.000000", "draining"]
        assert rows[live.provider(0)][-1] == "ok"

    @pytest.mark.parametrize(
        ("amount", "message"),
        [
            ("abc", f"400: {PLAIN_DECIMAL}; got 'abc'"),
            ("-1", f"400: {PLAIN_DECIMAL}; got '-1'"),
            ("0.0000000000000000001", f"400: {PLAIN_DECIMAL}; got '0.0000000000000000001'"),
            ("0.000", "400: `amount` must be positive"),
            (
                "100",
                "409: the ledger has 14.000000 0G available, short of the 100.000000 0G transfer; "
                "deposit more to the ledger",
            ),
        ],
    )
    async def test_a_refused_fund_exits_1_with_the_gateways_message(
        self, live: Live, amount: str, message: str
    ) -> None:
        """A fund the gateway refuses (bad amount: 400; more than the ledger holds: 409) exits 1 with the
        status and the gateway's message on stderr, prints nothing on stdout, and moves nothing."""
        run = await admin_cli("fund", "--provider", live.provider(0), "--amount", amount, env=live.env())
        assert run == Run(1, "", f"zg-router: error: {message}\n")
        assert await live.on_chain(0) == (2 * NEURON, 0)


class TestErrors:
    @pytest.mark.parametrize("command", [("balance",), ("providers",), ("refund",)])
    async def test_no_admin_key_exits_1_before_any_request(self, command: tuple[str, ...]) -> None:
        """Without ZG_ROUTER_ADMIN_KEY or --admin-key the command says so and exits 1 (it never gets as far
        as the URL, which here refuses connections)."""
        env = clean_env(ZG_ROUTER_URL=f"http://127.0.0.1:{refused_port()}")
        run = await admin_cli(*command, env=env)
        assert run == Run(
            1, "", "zg-router: error: no admin key: set ZG_ROUTER_ADMIN_KEY (or pass --admin-key)\n"
        )

    async def test_wrong_admin_key_exits_1_with_the_401_message(self, live: Live) -> None:
        """A wrong key (and the gateway's API key, which is no admin key) gets the gateway's 401 message."""
        for key in (WRONG_KEY, API_KEY):
            run = await admin_cli("balance", env=live.env(ZG_ROUTER_ADMIN_KEY=key))
            assert run == Run(1, "", "zg-router: error: 401: missing or invalid admin key\n")

    async def test_gateway_without_admin_keys_exits_1_with_the_403_message(self, live: Live) -> None:
        """Against a gateway with no admin keys the command relays its 403: the admin API is off."""
        config = GatewayConfig(port=0, api_keys=(API_KEY,), shutdown_timeout=0.5)
        async with Gateway(live.router, config) as gateway:
            run = await admin_cli("balance", env=live.env(ZG_ROUTER_URL=gateway.url))
        assert run == Run(
            1,
            "",
            "zg-router: error: 403: the admin API is off: set [gateway] admin_keys or ZG_ROUTER_ADMIN_KEYS\n",
        )

    @pytest.mark.parametrize(
        "command", [("balance",), ("fund", "--provider", "0x" + "ab" * 20, "--amount", "1")]
    )
    async def test_unreachable_gateway_exits_1(self, command: tuple[str, ...]) -> None:
        """Nothing listening at the URL: exit 1 with "cannot reach the gateway at <url>" and no traceback."""
        url = f"http://127.0.0.1:{refused_port()}"
        run = await admin_cli(*command, env=clean_env(ZG_ROUTER_URL=url, ZG_ROUTER_ADMIN_KEY=ADMIN_KEY))
        assert (run.code, run.out) == (1, "")
        assert run.err.startswith(f"zg-router: error: cannot reach the gateway at {url}: "), run.err
        assert run.err.count("\n") == 1

    async def test_a_non_json_answer_exits_1(self, live: Live) -> None:
        """A URL that answers something other than the admin API's JSON (here a 404 page on a provider's
        broker) is reported, not crashed on."""
        broker = live.devnet.providers[0].url
        run = await admin_cli("balance", env=live.env(ZG_ROUTER_URL=broker))
        assert run == Run(
            1, "", f"zg-router: error: {broker}/admin/balance answered 404 with a non-JSON body\n"
        )


@dataclass
class TwoLive:
    """A gateway over a router of two funded wallets (``live.wallet`` is the first), and both addresses."""

    live: Live
    wallets: tuple[str, str]


@pytest.fixture
async def two(devnet: Devnet) -> AsyncIterator[TwoLive]:
    (first, first_key), (second, second_key) = [await funded_wallet(devnet) for _ in range(2)]
    keys = (first_key, second_key)
    both = replace(router_config(devnet, first_key), private_key=None, private_keys=keys)
    config = GatewayConfig(port=0, api_keys=(API_KEY,), admin_keys=(ADMIN_KEY,), shutdown_timeout=0.5)
    async with (
        Router(both) as router,
        Gateway(router, config) as gateway,
        aiohttp.ClientSession() as http,
    ):
        live = Live(devnet, router, gateway.url, await devnet.open_client(), http)
        yield TwoLive(live, (first.address, second.address))


class TestTwoWallets:
    async def test_balance_shows_a_block_per_wallet(self, two: TwoLive) -> None:
        """``zg-router balance`` prints one block per wallet, in config order, headed by the wallet's
        address: its ledger and a line per provider; the blocks are a blank line apart."""
        run = await admin_cli("balance", env=two.live.env())
        assert (run.code, run.err) == (0, "")
        blocks = wallet_blocks(run.out)
        assert list(blocks) == list(two.wallets)
        providers = two.live.devnet.providers
        for block in blocks.values():
            assert block.splitlines()[0] == (
                f"ledger  available 14.000000 0G, total 20.000000 0G, {len(providers)} provider(s) funded"
            )
            assert table_rows(block) == {
                p.address: ["2.000000", "1.000000", "0.000000", "0.000000", "ok"] for p in providers
            }

    async def test_providers_show_what_all_wallets_have_available(self, two: TwoLive) -> None:
        """``zg-router providers`` shows, per provider, the available balance of both wallets together."""
        run = await admin_cli("providers", env=two.live.env())
        assert (run.code, run.err) == (0, "")
        rows = table_rows(run.out)
        assert {address: row[4] for address, row in rows.items()} == {
            p.address: "2.000000" for p in two.live.devnet.providers
        }

    async def test_fund_needs_a_wallet_and_moves_the_named_ones_money(self, two: TwoLive) -> None:
        """Without ``--wallet`` the fund is refused (exit 1, the gateway's 400 naming both wallets);
        with ``--wallet`` it moves that wallet's money only and says which wallet paid."""
        live, (first, second) = two.live, two.wallets
        provider = live.provider(0)
        run = await admin_cli("fund", "--provider", provider, "--amount", "0.5", env=live.env())
        assert run == Run(
            1,
            "",
            f"zg-router: error: 400: this router has 2 wallets: name the one to fund from in `wallet` "
            f"({first}, {second})\n",
        )
        args = ("fund", "--provider", provider, "--amount", "0.5", "--wallet", second.lower())
        run = await admin_cli(*args, env=live.env())
        assert (run.code, run.err) == (0, "")
        expected = rf"funded {provider} with 0\.500000 0G from {second} \(tx {TX_HASH}\)\n"
        assert re.fullmatch(expected, run.out), run.out
        assert await live.on_chain(0, second) == (2 * NEURON + NEURON // 2, 0)
        assert await live.on_chain(0, first) == (2 * NEURON, 0)

    async def test_refund_covers_every_wallet_unless_one_is_named(self, two: TwoLive) -> None:
        """``refund --provider X`` queues X's refund for each wallet (a line each); with ``--wallet`` only
        for that one."""
        live, (first, second) = two.live, two.wallets
        run = await admin_cli("refund", "--provider", live.provider(1), env=live.env())
        assert (run.code, run.err) == (0, "")
        lines = run.out.splitlines()
        assert [line.split()[3] for line in lines] == [first, second], run.out
        for wallet in (first, second):
            assert await live.on_chain(1, wallet) == (2 * NEURON, 2 * NEURON)
        run = await admin_cli("refund", "--provider", live.provider(2), "--wallet", second, env=live.env())
        assert (run.code, run.err) == (0, "")
        expected = rf"refund requested for {second} \(tx {TX_HASH}, block \d+\)\n"
        assert re.fullmatch(expected, run.out), run.out
        assert await live.on_chain(2, second) == (2 * NEURON, 2 * NEURON)
        assert await live.on_chain(2, first) == (2 * NEURON, 0)


async def test_the_admin_line_printed_by_devnet_serve_works(node_modules: NodeModules) -> None:
    """``zg-router devnet --serve`` prints a ``ZG_ROUTER_URL=… ZG_ROUTER_ADMIN_KEY=… zg-router balance``
    line; run as printed, it shows the devnet user's wallet and its provider."""
    async with zg_router(node_modules, "devnet", "--serve", "--providers", "1") as process:
        assert process.stdout is not None
        text = (await read_until(process.stdout, b"zg-router balance")).decode()
        user = re.search(r"^  user +(0x[0-9a-fA-F]{40})$", text, re.MULTILINE)
        provider = re.search(r"^    (0x[0-9a-fA-F]{40}) ", text, re.MULTILINE)
        line = re.search(r"ZG_ROUTER_URL=(\S+) ZG_ROUTER_ADMIN_KEY=(\S+) \S+ balance$", text, re.MULTILINE)
        assert user, text
        assert provider, text
        assert line, text
        run = await admin_cli("balance", env=clean_env(ZG_ROUTER_URL=line[1], ZG_ROUTER_ADMIN_KEY=line[2]))
        assert (run.code, run.err) == (0, "")
        assert run.out.splitlines()[0] == f"wallet  {user[1]}"
        assert provider[1] in table_rows(run.out)
        await stop(process, group=True)
        assert process.returncode == 0
