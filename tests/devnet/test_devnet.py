"""The devnet: SDK addresses, lifecycle, failure cleanup, snapshots, the official CLI, config validation,
several funded wallets."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
from pathlib import Path

import aiohttp
import pytest

from router.chain.session import SessionTokens
from router.chain.wallet import Wallet
from router.cli import _parser
from router.devnet import USER_KEY_INDEX, Devnet, DevnetConfig, ProviderSpec, dev_private_key
from router.devnet.command import devnet_config
from router.devnet.node_tools import NodeModules
from router.errors import ConfigError, DevnetError
from tests.support import CHAT, CONNECT_TIMEOUT, NEURON, assert_port_refuses, run_node

CLI_TIMEOUT = 60.0


def anvil_pids_on_port(port: int) -> list[int]:
    """PIDs of running processes whose command line is an anvil started with ``--port port``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # the process exited while we looked
        if (
            argv
            and argv[0].endswith(b"anvil")
            and any(pair == (b"--port", str(port).encode()) for pair in itertools.pairwise(argv))
        ):
            pids.append(int(entry.name))
    return pids


class TestAddresses:
    async def test_network_addresses_are_the_sdk_hardhat_addresses(
        self, devnet: Devnet, node_modules: NodeModules
    ) -> None:
        """The devnet's ledger and inference addresses are the official SDK's, and hold contract code."""
        sdk = await run_node(node_modules, "sdk_client.js", "addresses", devnet.rpc_url)
        assert devnet.network.ledger.lower() == sdk["ledger"].lower()
        assert devnet.network.inference.lower() == sdk["inference"].lower()
        for address in (devnet.network.ledger, devnet.network.inference):
            code = await devnet.user.w3.eth.get_code(address)
            assert len(code) > 0, f"no contract code at {address}"


class TestLifecycle:
    async def test_independent_devnet_lists_its_providers_and_frees_its_port(
        self, devnet: Devnet, node_modules: NodeModules
    ) -> None:
        """A second devnet with two models runs beside the session one; leaving it stops its anvil."""
        config = DevnetConfig(providers=(ProviderSpec(model="x"), ProviderSpec(model="y")))
        async with Devnet(config, node_modules) as second:
            assert second.rpc_url != devnet.rpc_url
            services = await second.user.list_services()
            assert sorted(s.model for s in services) == ["x", "y"]
            assert {s.provider for s in services} == {p.address for p in second.providers}
        await assert_port_refuses(second.rpc_url)

    async def test_anvil_that_cannot_bind_raises_devnet_error_and_leaves_nothing(
        self, node_modules: NodeModules
    ) -> None:
        """A taken port makes the devnet raise DevnetError, and no anvil is left running on that port."""
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = int(holder.getsockname()[1])
            with pytest.raises(DevnetError, match="anvil"):
                async with Devnet(DevnetConfig(port=port), node_modules):
                    pass
            assert anvil_pids_on_port(port) == []
            # Our socket still owns the port: a connection reaches it.
            holder.setblocking(False)
            async with asyncio.timeout(CONNECT_TIMEOUT):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                accepted, _ = await asyncio.get_running_loop().sock_accept(holder)
            accepted.close()
            writer.close()
            await writer.wait_closed()


class TestSnapshots:
    async def test_revert_restores_balances_and_resyncs_nonces(self, fresh_devnet: Devnet) -> None:
        """A transfer is undone by revert, and the same client can transact again afterwards."""
        devnet = fresh_devnet
        user, provider = devnet.user_wallet.address, devnet.providers[0].address

        async def state() -> tuple[int, int, int]:
            ledger = await devnet.user.get_ledger(user)
            account = await devnet.user.get_account(user, provider)
            assert ledger is not None
            assert account is not None
            return await devnet.user.native_balance(user), ledger.available_balance, account.balance

        before = await state()
        snapshot_id = await devnet.snapshot()
        await devnet.user.transfer_fund(provider, NEURON)
        await devnet.user.transfer_fund(provider, NEURON)
        after = await state()
        assert after[1:] == (before[1] - 2 * NEURON, before[2] + 2 * NEURON)
        assert after[0] < before[0]  # gas was paid

        await devnet.revert(snapshot_id)
        assert await state() == before

        # A stale local nonce (ahead of the reverted chain) would leave this queued until the receipt timeout.
        async with asyncio.timeout(10):
            result = await devnet.user.transfer_fund(provider, NEURON)
        assert result.block_number == await devnet.user.block_number()
        assert (await state())[2] == before[2] + NEURON


class TestOfficialCli:
    async def test_cli_lists_every_registered_provider(
        self, devnet: Devnet, node_modules: NodeModules, tmp_path: Path
    ) -> None:
        """`0g-compute-cli inference list-providers` against the devnet shows every provider address."""
        config_dir = tmp_path / ".0g-compute-cli"
        config_dir.mkdir()
        config = {"privateKey": dev_private_key(USER_KEY_INDEX), "rpcEndpoint": devnet.rpc_url}
        (config_dir / "config.json").write_text(json.dumps(config))
        env = {**os.environ, "HOME": str(tmp_path), "NO_COLOR": "1", "FORCE_COLOR": "0"}
        process = await asyncio.create_subprocess_exec(
            "node",
            str(node_modules.cli),
            "inference",
            "list-providers",
            "--rpc",
            devnet.rpc_url,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            async with asyncio.timeout(CLI_TIMEOUT):
                stdout, stderr = await process.communicate()
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        output = stdout.decode(errors="replace")
        assert process.returncode == 0, stderr.decode(errors="replace")
        for provider in devnet.providers:
            assert provider.address in output, f"{provider.address} missing from:\n{output}"


class TestConfigValidation:
    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            pytest.param({"providers": ()}, "1 to 50 providers", id="no-providers"),
            pytest.param({"providers": (ProviderSpec(),) * 51}, "1 to 50 providers", id="51-providers"),
            pytest.param(
                {"ledger_deposit": 3 * NEURON - 1, "sub_account_funding": 0},
                "at least 3 0G",
                id="deposit-below-3-0G",
            ),
            pytest.param({"sub_account_funding": NEURON - 1}, "0 or at least 1 0G", id="funding-below-1-0G"),
            pytest.param(
                {
                    "providers": (ProviderSpec(),) * 3,
                    "ledger_deposit": 10 * NEURON,
                    "sub_account_funding": 4 * NEURON,
                },
                "cannot cover",
                id="funding-exceeds-deposit",
            ),
        ],
    )
    def test_invalid_config_raises_config_error(self, kwargs: dict[str, object], message: str) -> None:
        """Impossible devnet configurations are refused with ConfigError before anything starts."""
        with pytest.raises(ConfigError, match=message):
            DevnetConfig(**kwargs)

    def test_boundary_config_is_accepted(self) -> None:
        """Exactly 3 0G deposited and fully spent on sub-accounts is a valid configuration."""
        config = DevnetConfig(
            providers=(ProviderSpec(),) * 3, ledger_deposit=3 * NEURON, sub_account_funding=NEURON
        )
        assert config.sub_account_funding * len(config.providers) == config.ledger_deposit


class TestWallets:
    async def test_three_wallets_are_three_funded_users_with_their_own_sub_accounts(
        self, node_modules: NodeModules, http: aiohttp.ClientSession
    ) -> None:
        """Users at dev accounts 1, then after the providers; each has its ledger and a sub-account at
        every provider (as getAccount reads them), a provider serves each, and revert resyncs them all."""
        providers = (ProviderSpec(model="x"), ProviderSpec(model="y"))
        config = DevnetConfig(providers=providers, wallets=3, settle_interval=None)
        async with Devnet(config, node_modules) as devnet:
            summary = devnet.summary()
            users = summary["users"]
            assert summary["user"] == users[0]
            assert [u["private_key"] for u in users] == [dev_private_key(i) for i in (USER_KEY_INDEX, 4, 5)]
            addresses = [u["address"] for u in users]
            assert addresses == [Wallet(u["private_key"]).address for u in users]
            assert addresses == [w.address for w in devnet.user_wallets]
            assert devnet.user is devnet.users[0]
            assert len(set(addresses)) == 3
            assert not set(addresses) & {p.address for p in devnet.providers}
            assert set(devnet.users) <= set(devnet.clients())
            for address in addresses:
                ledger = await devnet.owner.get_ledger(address)
                assert ledger is not None
                assert ledger.available_balance == config.ledger_deposit - 2 * config.sub_account_funding
                for provider in devnet.providers:
                    account = await devnet.owner.get_account(address, provider.address)
                    assert account is not None
                    assert account.balance == config.sub_account_funding
            last, provider = devnet.users[2], devnet.providers[1]
            auth = await SessionTokens(last).authorization(provider.address)
            body = {"model": "y", "messages": [{"role": "user", "content": "hi"}]}
            async with http.post(provider.url + CHAT, json=body, headers={"Authorization": auth}) as reply:
                assert reply.status == 200, await reply.text()

            snapshot_id = await devnet.snapshot()
            await last.transfer_fund(provider.address, NEURON)
            await devnet.revert(snapshot_id)
            # A stale nonce of the third user would leave this queued until the receipt timeout.
            async with asyncio.timeout(10):
                await last.transfer_fund(provider.address, NEURON)
            account = await devnet.owner.get_account(addresses[2], provider.address)
            assert account is not None
            assert account.balance == config.sub_account_funding + NEURON

    def test_user_key_indexes_follow_the_providers(self) -> None:
        config = DevnetConfig(providers=(ProviderSpec(),) * 3, wallets=4)
        assert config.user_key_indexes() == [USER_KEY_INDEX, 5, 6, 7]
        assert DevnetConfig().user_key_indexes() == [USER_KEY_INDEX]

    @pytest.mark.parametrize("wallets", [0, 11])
    def test_the_devnet_takes_1_to_10_wallets(self, wallets: int) -> None:
        with pytest.raises(ConfigError, match="1 to 10 wallets"):
            DevnetConfig(wallets=wallets)

    def test_the_wallets_flag_sets_the_config(self) -> None:
        assert devnet_config(_parser().parse_args(["devnet", "--wallets", "3"])).wallets == 3
        assert devnet_config(_parser().parse_args(["devnet"])).wallets == 1
        with pytest.raises(SystemExit):
            _parser().parse_args(["devnet", "--wallets", "11"])
