"""Constants and helpers shared by the tests."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from router.devnet import ProviderSpec
from router.devnet.node_tools import NodeModules

NODE_SCRIPTS = Path(__file__).parent / "node"
NEURON = 10**18
CONNECT_TIMEOUT = 5.0

DEVNET_PROVIDERS = (
    ProviderSpec(model="model-a", input_price=1_000_000_000, output_price=2_000_000_000),
    ProviderSpec(model="model-b", input_price=3_000_000_000, output_price=4_000_000_000),
    ProviderSpec(model="model-a", input_price=5_000_000_000, output_price=6_000_000_000),
)


async def run_node(node_modules: NodeModules, script: str, *args: str, home: Path | None = None) -> Any:
    """Run a Node script with the devnet's node_modules; returns its stdout parsed as JSON."""
    env = {**os.environ, "ZG_ROUTER_NODE_MODULES": str(node_modules.root)}
    if home is not None:
        env["HOME"] = str(home)
    process = await asyncio.create_subprocess_exec(
        "node",
        str(NODE_SCRIPTS / script),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    return json.loads(stdout)


async def assert_port_refuses(url: str) -> None:
    """Nothing listens at ``url``'s port any more: connecting is refused (not timed out)."""
    port = urlsplit(url).port
    assert port is not None, url
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return
    writer.close()
    await writer.wait_closed()
    pytest.fail(f"{url} still accepts connections")
