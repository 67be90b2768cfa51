"""No secret reaches the logs of a real gateway on a devnet, whatever the traffic.

A router (with ``LogObserver``) and gateway for a new funded wallet serve good and bad requests, provider
faults, a revoked session token, a client that hangs up mid-stream and admin calls. One pass logs for real
(``configure_logging`` as ``zg-router serve`` does, JSON into a buffer): that proves the processor chain. The
other captures the raw event dicts: that proves the events carry no secret in the first place. Either way the
wallet key, the gateway, admin and upstream keys and every session token the router minted stay out.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import openai
import pytest
import structlog
from aiohttp import web
from openai.types.chat import ChatCompletionMessageParam
from structlog.testing import capture_logs

from router.chain.wallet import Wallet
from router.client import Router
from router.config import (
    DiscoveryOptions,
    DispatchOptions,
    GatewayConfig,
    MoneyOptions,
    RouterConfig,
    StaticUpstream,
)
from router.devnet import Devnet, DevnetConfig, ProviderSpec
from router.devnet.node_tools import NodeModules
from router.devnet.simulator.faults import Faults
from router.devnet.simulator.limits import RateLimits
from router.observability.events import Event, Funded, RequestFinished
from router.observability.logging import REDACTED, LogObserver, configure_logging
from router.pool.health import HealthPolicy
from router.server.app import Gateway
from router.server.command import config_secrets
from router.transport.http import TransportOptions
from tests.observability.test_logging import restored_structlog
from tests.support import EventLog, funded_wallet, serving

CHAT_MODEL = "log-chat"
EMBED_MODEL = "log-embed"
ECHO_MODEL = "echo-model"  # the static upstream answers 401 and echoes the key it was sent
BROKE_MODEL = "broke-model"  # the static upstream answers 402 insufficient balance
API_KEY = "sk-logs-" + "a1B2c3D4e5F6g7H8" * 2
ADMIN_KEY = "sk-admin-" + "Q9w8E7r6T5y4U3i2" * 2
UPSTREAM_KEY = "sk-upstream-" + "Zm9vYmFyYmF6cXV4" * 2
WRONG_KEY = "sk-wrong-" + "fedcba9876543210" * 2
FAKE_TOKEN = "app-sk-" + base64.b64encode(b'{"address":"0x00"}|0x' + b"11" * 65).decode()
MY_REQUEST_ID = "my-req-123"
DISCONNECT_ID = "disconnect-1"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there, how are you today"}]
TIMEOUT = 30.0
ROOMY = RateLimits(requests_per_minute=600, burst=10, max_concurrent=5)
PROVIDERS = (
    *(
        ProviderSpec(model=CHAT_MODEL, input_price=n * 10**9, output_price=2 * n * 10**9, limits=ROOMY)
        for n in (1, 2, 3)
    ),
    ProviderSpec(model=EMBED_MODEL, service_type="embedding", limits=ROOMY),
)
_TOKEN_TEXT = re.compile(r"app-sk-[A-Za-z0-9+/=]{8,}")


@pytest.fixture(scope="module")
async def log_devnet(node_modules: NodeModules) -> AsyncIterator[Devnet]:
    async with Devnet(DevnetConfig(providers=PROVIDERS, settle_interval=None), node_modules) as devnet:
        yield devnet


async def _upstream_chat(request: web.Request) -> web.Response:
    body = await request.json()
    sent = request.headers.get("Authorization", "")
    if body.get("model") == ECHO_MODEL:
        # A careless upstream: its error names the key, bare and as the header it got.
        message = f"invalid api key {sent.removeprefix('Bearer ')} (you sent {sent!r})"
        return web.json_response({"error": {"message": message, "type": "auth"}}, status=401)
    return web.json_response({"error": "insufficient balance: top up your account"}, status=402)


async def _upstream_models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": []})


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    """A static upstream on 127.0.0.1 that never serves: 401 for ECHO_MODEL, 402 for the rest."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _upstream_chat)
    app.router.add_get("/v1/models", _upstream_models)
    async with serving(app) as url:
        yield url + "/v1"


def configs(devnet: Devnet, key: str, upstream_url: str) -> tuple[RouterConfig, GatewayConfig]:
    router_config = RouterConfig(
        network=devnet.network,
        private_key=key,
        # Two names for one upstream: a provider excluded after its failure is excluded for every model.
        static_upstreams=(
            StaticUpstream(name="careless", url=upstream_url, models=(ECHO_MODEL,), api_key=UPSTREAM_KEY),
            StaticUpstream(name="broke", url=upstream_url, models=(BROKE_MODEL,), api_key=UPSTREAM_KEY),
        ),
        transport=TransportOptions(allow_private_targets=True, stream_idle_timeout=5.0),
        discovery=DiscoveryOptions(event_poll_interval=0.2, probe_interval=0.1),
        health=HealthPolicy(cooldown=0.3, max_cooldown=1.0),
        dispatch=DispatchOptions(request_timeout=30.0),
        # Far above anything spent here: no automatic top-up races the test's own transactions.
        money=MoneyOptions(fund_below=0.5, fund_to=1.0),
    )
    gateway_config = GatewayConfig(port=0, api_keys=(API_KEY,), admin_keys=(ADMIN_KEY,), shutdown_timeout=0.5)
    return router_config, gateway_config


class BindingProbe:
    """Logs a line for each finished request without naming its id: the id in it must come from the
    request's bound context."""

    def __init__(self) -> None:
        self._log = structlog.get_logger("probe")

    def __call__(self, event: Event) -> None:
        if isinstance(event, RequestFinished):
            self._log.info("probe", expected=event.request_id)


@dataclass
class Live:
    devnet: Devnet
    router: Router
    url: str
    key: str
    http: aiohttp.ClientSession
    events: EventLog
    tokens: set[str] = field(default_factory=set)

    def headers(self, key: str = API_KEY, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}", **{k.replace("_", "-"): v for k, v in extra.items()}}

    def pin(self, index: int, fallbacks: bool) -> dict[str, str]:
        return self.headers(
            X_ZG_Provider=self.devnet.providers[index].address, X_ZG_Allow_Fallbacks=str(fallbacks).lower()
        )

    async def send(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, str]:
        async with asyncio.timeout(TIMEOUT), self.http.request(method, self.url + path, **kwargs) as response:
            return response.status, response.headers, await response.text()

    async def chat(self, headers: dict[str, str], **extra: Any) -> tuple[int, Any, str]:
        body = {"model": CHAT_MODEL, "messages": MESSAGES, **extra}
        return await self.send("POST", "/v1/chat/completions", json=body, headers=headers)

    async def faults(self, index: int, **knobs: Any) -> None:
        simulator = self.devnet.providers[index].simulator
        await simulator.set_faults(replace(simulator.faults.faults, **knobs))


def record_tokens(router: Router, seen: set[str]) -> None:
    """Every ``Authorization`` value the router's session tokens hand out goes into ``seen``."""
    tokens = router.wallets[0].tokens  # the wallet's SessionTokens: the cache of the tokens it minted
    original = tokens.authorization

    async def authorization(provider: str) -> str:
        value = await original(provider)
        seen.add(value)
        return value

    tokens.authorization = authorization  # type: ignore[method-assign]


async def reset_faults(devnet: Devnet) -> None:
    for provider in devnet.providers:
        await provider.simulator.set_faults(Faults())


async def run_traffic(
    devnet: Devnet, router_config: RouterConfig, gateway_config: GatewayConfig, *, echo: bool
) -> Live:
    """Start the router and gateway, drive every scenario, stop them; returns what the test checks."""
    events = EventLog()
    async with AsyncExitStack() as stack:
        stack.push_async_callback(reset_faults, devnet)
        router = await stack.enter_async_context(
            Router(router_config, observers=[LogObserver(), BindingProbe(), events])
        )
        gateway = await stack.enter_async_context(Gateway(router, gateway_config))
        http = await stack.enter_async_context(aiohttp.ClientSession())
        assert router_config.private_key is not None
        live = Live(devnet, router, gateway.url, router_config.private_key, http, events)
        record_tokens(router, live.tokens)
        await drive(live, echo=echo)
        live.tokens |= {token.authorization for token in router.wallets[0].tokens._tokens.values()}
    return live


async def drive(live: Live, *, echo: bool) -> None:
    # Good traffic through the SDK.
    async with openai.AsyncOpenAI(base_url=live.url + "/v1", api_key=API_KEY, max_retries=0) as client:
        reply = await client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        assert reply.choices[0].message.content
        stream = await client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True)
        assert [chunk async for chunk in stream]
        assert (await client.embeddings.create(model=EMBED_MODEL, input="x")).data
    async with openai.AsyncOpenAI(base_url=live.url + "/v1", api_key=WRONG_KEY, max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    # Bad requests: JSON, keys (none, the admin key, a session token), an unknown model, a request too
    # dear for any sub-account (the router's own 402).
    status, _, _ = await live.send("POST", "/v1/chat/completions", data=b"{oops", headers=live.headers())
    assert status == 400
    for headers in ({}, live.headers(ADMIN_KEY), live.headers(FAKE_TOKEN), {"Authorization": UPSTREAM_KEY}):
        assert (await live.chat(headers))[0] == 401
    assert (await live.chat(live.headers(), model="no-such-model"))[0] == 404
    status, _, text = await live.chat(live.headers(), max_tokens=10**9)
    assert status == 402, text
    status, headers, _ = await live.chat(live.headers(X_Request_Id=MY_REQUEST_ID))
    assert status == 200
    assert headers["x-request-id"] == MY_REQUEST_ID
    # Admin calls, before anything else sends a transaction from this wallet.
    status, _, text = await live.send("GET", "/admin/balance", headers=live.headers(ADMIN_KEY))
    assert status == 200, text
    for key in (API_KEY, WRONG_KEY):
        assert (await live.send("GET", "/admin/balance", headers=live.headers(key)))[0] == 401
    fund = {"provider": live.devnet.providers[0].address, "amount": "0.01"}
    assert (await live.send("POST", "/admin/fund", json=fund, headers=live.headers(WRONG_KEY)))[0] == 401
    status, _, text = await live.send("POST", "/admin/fund", json=fund, headers=live.headers(ADMIN_KEY))
    assert status == 200, text
    tx_hash = json.loads(text)["tx_hash"]
    await live.events.wait_for(lambda e: isinstance(e, Funded) and e.tx_hash == tx_hash, within=TIMEOUT)
    # Provider faults: a 500 and a 429 (each failed over), a stream cut after its first event.
    await live.faults(0, error_500=1.0)
    status, headers, text = await live.chat(live.pin(0, fallbacks=True))
    assert (status, headers["x-zg-attempts"]) == (200, "2"), text
    await live.faults(0, error_500=0.0)
    await live.faults(1, rate_limit_storm=1.0)
    assert (await live.chat(live.pin(1, fallbacks=True)))[0] == 200
    await live.faults(2, drop_mid_stream=1.0)
    status, _, text = await live.chat(live.pin(2, fallbacks=False), stream=True)
    assert status == 200
    assert "stream_interrupted" in text
    await live.faults(2, drop_mid_stream=0.0)
    # The static upstream: a provider-side insufficient balance, and (rendered pass) a key echoed back.
    assert (await live.chat(live.headers(), model=BROKE_MODEL))[0] >= 400
    if echo:
        status, _, text = await live.chat(live.headers(), model=ECHO_MODEL)
        assert status >= 400
        # The upstream echoed our key for it; the caller gets the error with the key blanked.
        assert UPSTREAM_KEY not in text
        assert UPSTREAM_KEY.removeprefix("sk-") not in text
    # A session token the provider rejects: the wallet revokes its tokens there behind the router's back.
    provider = live.devnet.providers[2]
    chain = await live.devnet.open_client(Wallet(live.key))
    await chain.revoke_all_tokens(provider.address)
    provider.simulator.validator.forget_account(Wallet(live.key).address)
    status, headers, text = await live.chat(live.pin(2, fallbacks=True))
    assert (status, headers["x-zg-attempts"]) == (200, "2"), text
    # A client that hangs up after the first event of a slow stream.
    await live.faults(0, chunk_delay=1.0)
    headers = live.pin(0, fallbacks=False) | {"X-Request-Id": DISCONNECT_ID}
    body = {"model": CHAT_MODEL, "messages": MESSAGES, "stream": True}
    async with asyncio.timeout(TIMEOUT):
        async with live.http.post(live.url + "/v1/chat/completions", json=body, headers=headers) as response:
            assert response.status == 200
            assert await response.content.readline()
            response.close()
        gone = await live.events.wait_for(
            lambda e: isinstance(e, RequestFinished) and e.request_id == DISCONNECT_ID, within=TIMEOUT
        )
    assert gone.status == 499


def forbidden(live: Live) -> list[str]:
    """Every secret text, lower-cased: keys, and each minted token whole, bare, and in parts."""
    assert live.tokens, "the router minted no session token"
    texts = [live.key, live.key.removeprefix("0x"), API_KEY, ADMIN_KEY, UPSTREAM_KEY, WRONG_KEY, FAKE_TOKEN]
    for authorization in live.tokens:
        assert authorization.startswith("Bearer app-sk-"), authorization[:20]
        body = authorization.removeprefix("Bearer app-sk-")
        signature = base64.b64decode(body).decode().rpartition("|")[2]
        texts += [authorization, body, body[:32], body[-32:], signature.removeprefix("0x")]
    return [text.lower() for text in texts]


def assert_no_secret(text: str, secrets: list[str], where: str) -> None:
    lowered = text.lower()
    for secret in secrets:
        at = lowered.find(secret)
        assert at < 0, f"a secret ({secret[:10]}...) in {where}: ...{text[max(at - 300, 0) : at + 300]}..."
    token = _TOKEN_TEXT.search(text)
    assert token is None, f"a session token in {where}: ...{text[max(token.start() - 300, 0) : token.end()]}"


def check_request_lines(lines: list[dict[str, Any]]) -> None:
    """``request`` lines name their request, provider, attempts, status and latency; probes carry the
    request's id from the bound context; the requests of every scenario are there."""
    requests = [line for line in lines if line["event"] == "request"]
    for line in requests:
        assert isinstance(line["request_id"], str), line
        assert line["request_id"], line
        assert "provider" in line, line
        assert isinstance(line["attempts"], int), line
        assert isinstance(line["status"], int), line
        assert isinstance(line["latency_ms"], int | float), line
    probes = [line for line in lines if line["event"] == "probe"]
    assert len(probes) == len(requests)
    for line in probes:
        assert line.get("request_id") == line["expected"], line
    (mine,) = [line for line in requests if line["request_id"] == MY_REQUEST_ID]
    assert mine["status"] == 200
    assert mine["provider"]
    statuses = {line["status"] for line in requests}
    assert {200, 402, 404, 499, 502} <= statuses, statuses
    verdicts = {line["verdict"] for line in lines if line["event"] == "attempt failed"}
    assert {"unhealthy", "rate_limited", "stream_broken", "misconfigured", "unfunded"} <= verdicts, verdicts
    for line in lines:
        if line["event"] in ("funded", "pool refreshed", "settled", "background task failed"):
            assert "request_id" not in line, line


async def test_rendered_logs_show_no_secret(log_devnet: Devnet, upstream: str) -> None:
    """The JSON lines of ``configure_logging`` with the config's secrets: every line parses, none shows a
    secret (even the key a careless upstream echoed back, which arrives blanked), and the ids are right."""
    router_config, gateway_config = configs(log_devnet, (await funded_wallet(log_devnet))[1], upstream)
    secrets = config_secrets(router_config, gateway_config)
    assert {router_config.private_key, API_KEY, ADMIN_KEY, UPSTREAM_KEY} <= set(secrets)
    stream = io.StringIO()
    with restored_structlog():
        configure_logging("debug", format="json", secrets=secrets, stream=stream)
        live = await run_traffic(log_devnet, router_config, gateway_config, echo=True)
    text = stream.getvalue()
    assert_no_secret(text, forbidden(live), "the rendered log")
    lines = [json.loads(line) for line in text.splitlines()]
    for line in lines:
        assert {"level", "timestamp", "event"} <= line.keys(), line
    check_request_lines(lines)
    echoed = [
        line
        for line in lines
        if line["event"] == "attempt failed"
        and line["provider"] == "careless"
        and line["verdict"] == "misconfigured"
    ]
    assert echoed, "the upstream's echo was never logged"
    assert all(REDACTED in line["detail"] for line in echoed), echoed
    # Public values are not over-redacted: the admin top-up's transaction hash is logged as is.
    funded = [line for line in lines if line["event"] == "funded" and line["manual"]]
    assert len(funded) == 1
    assert re.fullmatch(r"0x[0-9a-f]{64}", funded[0]["tx"]), funded
    assert funded[0]["provider"] == log_devnet.providers[0].address


async def test_raw_events_carry_no_secret(log_devnet: Devnet, upstream: str) -> None:
    """The event dicts themselves, before any processor but the context merge, hold no secret: not even
    the key a careless upstream echoed, which dispatch blanks as the error body arrives."""
    router_config, gateway_config = configs(log_devnet, (await funded_wallet(log_devnet))[1], upstream)
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as events:
        live = await run_traffic(log_devnet, router_config, gateway_config, echo=True)
    assert events
    secrets = forbidden(live)
    for event in events:
        assert_no_secret(repr(event), secrets, "a raw event")
    check_request_lines([{**event, "event": str(event["event"])} for event in events])
