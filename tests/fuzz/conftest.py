"""A gateway in a child process over a devnet of every service type, for the fuzz test.

The devnet runs here (its simulated providers on this event loop); the router and gateway run in their own
Python process with the configuration the gateway tests use, logging JSON as ``zg-router serve`` does.
A crash shows as a dead child and an exit status; every log line it writes goes through the session's
secrets check.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from router.config import GatewayConfig
from router.devnet import Devnet, DevnetConfig
from router.devnet.node_tools import NodeModules
from tests.conftest import watch_text
from tests.gateway.conftest import API_KEY, GATEWAY_PROVIDERS, router_config
from tests.gateway.support import REPO, TIMEOUT
from tests.support import funded_wallet

ADMIN_KEY = "zg-admin-fuzz-" + "0123456789abcdef" * 2
# Runs ``zg-router serve``'s own ``serve`` over configurations pickled by the test; prints the URL.
CHILD_SCRIPT = """
import pickle, sys
from router.observability.logging import configure_logging
from router.server.command import config_secrets, serve
import asyncio

with open(sys.argv[1], "rb") as f:
    router_config, gateway_config = pickle.load(f)
configure_logging("info", format="json", secrets=config_secrets(router_config, gateway_config))
asyncio.run(serve(router_config, gateway_config, announce=lambda r, g: print(g.url, flush=True)))
"""


@dataclass
class ChildGateway:
    """The child's base URL, its process, and every line it has logged so far."""

    url: str
    process: asyncio.subprocess.Process
    providers: tuple[str, ...]
    log: list[str] = field(default_factory=list)


@pytest.fixture(scope="package")
async def fuzz_devnet(node_modules: NodeModules) -> AsyncIterator[Devnet]:
    async with Devnet(
        DevnetConfig(providers=GATEWAY_PROVIDERS, settle_interval=None), node_modules
    ) as devnet:
        yield devnet


@pytest.fixture
async def child_gateway(fuzz_devnet: Devnet, tmp_path: Path) -> AsyncIterator[ChildGateway]:
    """A router + gateway for a new funded wallet in a child process (API key, admin key, metrics on the
    API port so that /metrics is fuzzed too); stopped with SIGTERM afterwards."""
    _, key = await funded_wallet(fuzz_devnet)
    gateway = GatewayConfig(
        port=0,
        api_keys=(API_KEY,),
        admin_keys=(ADMIN_KEY,),
        shutdown_timeout=0.5,
        metrics_on_api_port=True,
    )
    configs = tmp_path / "configs.pickle"
    configs.write_bytes(pickle.dumps((router_config(fuzz_devnet, key), gateway)))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD_SCRIPT,
        str(configs),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    log: list[str] = []

    async def read_log(stream: asyncio.StreamReader) -> None:
        # In chunks, not lines: a line longer than the reader's limit must neither stop the reading (the
        # child would block on a full pipe) nor escape the checks.
        pending = b""
        while chunk := await stream.read(1 << 16):
            *lines, pending = (pending + chunk).split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace")
                log.append(line)
                watch_text(line, "the fuzzed gateway's log")
        if pending:
            log.append(pending.decode(errors="replace"))
            watch_text(log[-1], "the fuzzed gateway's log")

    reader = asyncio.create_task(read_log(process.stderr))
    try:
        line = await asyncio.wait_for(process.stdout.readline(), TIMEOUT)
        assert line.startswith(b"http://"), (line, log)
        providers = tuple(p.address for p in fuzz_devnet.providers)
        yield ChildGateway(line.decode().strip(), process, providers, log)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader, TIMEOUT)
