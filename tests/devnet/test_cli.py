"""The ``zg-router devnet`` command as a user runs it: a subprocess, its output, Ctrl-C, bad flags."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from router import Router, RouterConfig
from router.chain.client import ChainClient
from router.chain.networks import DEVNET
from router.devnet import USER_KEY_INDEX, dev_private_key
from router.devnet.node_tools import NodeModules
from tests.support import assert_port_refuses

ZG_ROUTER = Path(sys.executable).with_name("zg-router")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


@contextlib.asynccontextmanager
async def zg_router(node_modules: NodeModules, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``zg-router *args`` in its own process group; the whole group (anvil too) is killed on the way out."""
    env = {**os.environ, "ZG_ROUTER_NODE_MODULES": str(node_modules.root)}
    process = await asyncio.create_subprocess_exec(
        str(ZG_ROUTER),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.communicate()


async def read_until(stream: asyncio.StreamReader, marker: bytes) -> bytes:
    """Lines from ``stream`` up to and including the one containing ``marker``."""
    lines = []
    async with asyncio.timeout(START_TIMEOUT):
        while True:
            line = await stream.readline()
            if not line:
                raise AssertionError(f"stream ended before {marker!r}; got {b''.join(lines)!r}")
            lines.append(line)
            if marker in line:
                return b"".join(lines)


async def stop(process: asyncio.subprocess.Process, *, group: bool) -> bytes:
    """SIGINT the process (or its whole group, as a terminal's Ctrl-C does); its remaining stderr."""
    if group:
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGINT)
    assert process.stderr is not None
    async with asyncio.timeout(STOP_TIMEOUT):
        stderr = await process.stderr.read()
        await process.wait()
    return stderr


def child_pids(parent: int, command_part: bytes) -> list[int]:
    """Direct children of ``parent`` whose command line contains ``command_part`` (from /proc)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(pid) for pid in children if command_part in Path(f"/proc/{pid}/cmdline").read_bytes()]


class TestDevnetCommand:
    async def test_json_summary_matches_the_chain_and_sigint_stops_cleanly(
        self, node_modules: NodeModules
    ) -> None:
        """--json prints one line the chain agrees with, from which ``RouterConfig.for_devnet`` builds a
        router that serves a chat; SIGINT exits 0 and frees the anvil port."""
        async with zg_router(
            node_modules,
            "devnet",
            "--json",
            "--providers",
            "2",
            "--model",
            "a",
            "--model",
            "b",
            "--input-price",
            "7",
            "--output-price",
            "9",
        ) as process:
            assert process.stdout is not None
            async with asyncio.timeout(START_TIMEOUT):
                line = await process.stdout.readline()
            summary = json.loads(line)
            assert set(summary) == {
                "rpc_url",
                "chain_id",
                "ledger",
                "inference",
                "user",
                "users",
                "providers",
            }
            assert summary["chain_id"] == 31337
            assert (summary["ledger"], summary["inference"]) == (DEVNET.ledger, DEVNET.inference)
            assert summary["user"]["private_key"] == dev_private_key(USER_KEY_INDEX)
            assert [p["model"] for p in summary["providers"]] == ["a", "b"]

            async with ChainClient(DEVNET.with_rpc_urls(summary["rpc_url"])) as chain:
                services = {s.provider: s for s in await chain.list_services()}
                assert set(services) == {p["address"] for p in summary["providers"]}
                for printed in summary["providers"]:
                    service = services[printed["address"]]
                    assert (service.url, service.model) == (printed["url"], printed["model"])
                    assert (service.input_price, service.output_price) == (7, 9)
                ledger = await chain.get_ledger(summary["user"]["address"])
                assert ledger is not None
            async with aiohttp.ClientSession() as http:
                for printed in summary["providers"]:
                    async with http.get(printed["url"] + "/v1/models") as models:
                        assert (await models.json())["data"][0]["id"] == printed["model"]
                    async with http.get(printed["admin_url"] + "/admin/faults") as faults:
                        assert (await faults.json())["down"] is False
            async with Router(RouterConfig.for_devnet(line)) as router:
                reply = await router.chat(model="b", messages=[{"role": "user", "content": "hi"}])
                assert reply["choices"][0]["message"]["content"]

            stderr = await stop(process, group=False)
            assert process.returncode == 0, stderr.decode(errors="replace")
            assert b"devnet stopped" in stderr
            assert b"Traceback" not in stderr
        await assert_port_refuses(summary["rpc_url"])
        for printed in summary["providers"]:
            await assert_port_refuses(printed["url"])
            await assert_port_refuses(printed["admin_url"])

    async def test_readable_summary_names_rpc_and_providers_and_ctrl_c_stops(
        self, node_modules: NodeModules
    ) -> None:
        """Without --json the summary shows the RPC URL and every provider; Ctrl-C to the group exits 0."""
        async with zg_router(node_modules, "devnet", "--providers", "2") as process:
            assert process.stdout is not None
            text = (await read_until(process.stdout, b"providers:")).decode()
            rpc_line = next(line for line in text.splitlines() if "RPC" in line)
            rpc_url = rpc_line.split()[1]
            assert rpc_url.startswith("http://127.0.0.1:")
            async with ChainClient(DEVNET.with_rpc_urls(rpc_url)) as chain:
                providers = [s.provider for s in await chain.list_services()]
            assert len(providers) == 2
            async with asyncio.timeout(START_TIMEOUT):
                for _ in providers:
                    text += (await process.stdout.readline()).decode()
            for provider in providers:
                assert provider in text, f"{provider} missing from:\n{text}"

            stderr = await stop(process, group=True)
            assert process.returncode == 0, stderr.decode(errors="replace")
            assert b"Traceback" not in stderr
        await assert_port_refuses(rpc_url)

    @pytest.mark.parametrize(
        ("flags", "message"),
        [
            pytest.param(["--providers", "0"], "argument --providers: must be 1-50", id="providers-0"),
            pytest.param(["--providers", "51"], "argument --providers: must be 1-50", id="providers-51"),
            pytest.param(
                ["--input-price", "-1"], "argument --input-price: must be 0 or more", id="input-price--1"
            ),
            pytest.param(["--providers", "two"], "argument --providers: invalid", id="providers-not-int"),
        ],
    )
    async def test_bad_flags_are_usage_errors(
        self, node_modules: NodeModules, flags: list[str], message: str
    ) -> None:
        """Invalid flags exit with status 2 and an argparse message, no traceback, no devnet started."""
        async with zg_router(node_modules, "devnet", *flags) as process:
            async with asyncio.timeout(STOP_TIMEOUT):
                stdout, stderr = await process.communicate()
        errors = stderr.decode(errors="replace")
        assert process.returncode == 2, errors
        assert errors.startswith("usage: zg-router devnet"), errors
        assert f"zg-router devnet: error: {message}" in errors
        assert "Traceback" not in errors
        assert stdout == b""

    async def test_sigkill_of_the_router_takes_anvil_down(self, node_modules: NodeModules) -> None:
        """A SIGKILL skips every cleanup, yet no anvil survives: the kernel kills it with its parent."""
        async with zg_router(node_modules, "devnet", "--json") as process:
            assert process.stdout is not None
            summary = json.loads(await read_until(process.stdout, b"rpc_url"))
            anvils = child_pids(process.pid, b"anvil")
            assert len(anvils) == 1, anvils
            anvil_exit = os.pidfd_open(anvils[0])
            loop = asyncio.get_running_loop()
            exited = asyncio.Event()
            loop.add_reader(anvil_exit, exited.set)
            try:
                process.kill()
                async with asyncio.timeout(STOP_TIMEOUT):
                    await exited.wait()
            finally:
                loop.remove_reader(anvil_exit)
                os.close(anvil_exit)
        await assert_port_refuses(summary["rpc_url"])

    async def test_startup_error_exits_1_with_one_line(self, node_modules: NodeModules) -> None:
        """A devnet that cannot start (its port is taken) exits 1 with a one-line `zg-router: error:`."""
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = str(holder.getsockname()[1])
            async with zg_router(node_modules, "devnet", "--port", port) as process:
                async with asyncio.timeout(START_TIMEOUT):
                    stdout, stderr = await process.communicate()
        errors = stderr.decode(errors="replace")
        assert process.returncode == 1, errors
        assert errors.startswith("zg-router: error: "), errors
        assert errors.count("\n") == 1, errors
        assert stdout == b""
