"""Constants and helpers shared by the tests."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web

from router.chain.client import ChainClient
from router.chain.devtools import set_balance
from router.chain.session import SessionTokens
from router.chain.wallet import Wallet
from router.client import Router
from router.devnet import Devnet, DevnetProvider, ProviderSpec
from router.devnet.node_tools import NodeModules
from router.devnet.simulator.limits import RateLimits
from router.pool.providers import ProviderState

NODE_SCRIPTS = Path(__file__).parent / "node"
CHAT = "/v1/proxy/chat/completions"
NEURON = 10**18
CONNECT_TIMEOUT = 5.0

DEVNET_PROVIDERS = (
    ProviderSpec(model="model-a", input_price=1_000_000_000, output_price=2_000_000_000),
    ProviderSpec(model="model-b", input_price=3_000_000_000, output_price=4_000_000_000),
    # A roomier RPM bucket, so six requests at once meet the concurrency cap rather than the RPM limit.
    ProviderSpec(
        model="model-a",
        input_price=5_000_000_000,
        output_price=6_000_000_000,
        limits=RateLimits(requests_per_minute=120, burst=10),
    ),
)


class FakeClock:
    """A clock a test moves by hand: ``clock.now += 2``; call it for the time in seconds."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


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


@dataclass
class Client:
    """A fresh funded wallet talking to one simulated provider."""

    provider: DevnetProvider
    chain: ChainClient
    tokens: SessionTokens
    http: aiohttp.ClientSession

    @property
    def address(self) -> str:
        assert self.chain.wallet is not None
        return self.chain.wallet.address

    async def chat(self, body: dict[str, Any] | bytes, **headers: str) -> aiohttp.ClientResponse:
        auth = headers.pop("authorization", None) or await self.tokens.authorization(self.provider.address)
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await self.http.post(
            self.provider.url + CHAT,
            data=data,
            headers={"Authorization": auth, "Content-Type": "application/json", **headers},
        )


def chat_body(provider: DevnetProvider, **extra: Any) -> dict[str, Any]:
    return {"model": provider.spec.model, "messages": [{"role": "user", "content": "hello there"}], **extra}


async def funded_client(
    devnet: Devnet, http: aiohttp.ClientSession, *, sub_account: int = 2 * NEURON, provider_index: int = 0
) -> Client:
    """A new wallet with a 10 0G ledger and ``sub_account`` moved to the provider."""
    wallet = Wallet("0x" + os.urandom(32).hex())
    await set_balance(devnet.owner, wallet.address, 100 * NEURON)
    chain = await devnet.open_client(wallet)
    provider = devnet.providers[provider_index]
    await chain.add_ledger(10 * NEURON)
    await chain.transfer_fund(provider.address, sub_account)
    return Client(provider, chain, SessionTokens(chain), http)


class EventLog:
    """A router observer that keeps every event and lets a test await one that matches.

    ``await log.wait_for(lambda e: isinstance(e, Funded), within=10)`` returns the first matching event,
    past or future; it fails the test (TimeoutError) if none comes in time. No sleeping: it wakes on the
    event itself.
    """

    def __init__(self) -> None:
        self.events: list[Any] = []
        self._changed = asyncio.Event()

    def __call__(self, event: Any) -> None:
        self.events.append(event)
        self._changed.set()

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    async def wait_for(self, match: Callable[[Any], bool], within: float) -> Any:
        seen = 0
        async with asyncio.timeout(within):
            while True:
                for event in self.events[seen:]:
                    if match(event):
                        return event
                seen = len(self.events)
                self._changed.clear()
                await self._changed.wait()


async def funded_wallet(devnet: Devnet) -> tuple[Wallet, str]:
    """A new wallet (and its key) with a 20 0G ledger and 2 0G at every provider."""
    key = "0x" + os.urandom(32).hex()
    wallet = Wallet(key)
    await set_balance(devnet.owner, wallet.address, 100 * NEURON)
    chain = await devnet.open_client(wallet)
    await chain.add_ledger(20 * NEURON)
    for provider in devnet.providers:
        await chain.transfer_fund(provider.address, 2 * NEURON)
    return wallet, key


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` on a free 127.0.0.1 port; yields its base URL (``http://127.0.0.1:<port>``)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def in_flight(router: Router, state: ProviderState | None = None) -> int:
    """Requests in flight on the lanes of ``state`` (every provider's, by default), as capacity counts."""
    now = router.now()
    states = [state] if state is not None else list(router.pool)
    return sum(router.pool.capacity.view(lane, now).in_flight for s in states for lane in s.lanes)
