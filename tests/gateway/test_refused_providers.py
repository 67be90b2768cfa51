"""Providers the URL guard refuses (a devnet's, on 127.0.0.1, without ``allow_private_targets``): the router
says so and names the setting, at open and on each request, instead of calling the model unknown."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from router.client import Router
from router.config import GatewayConfig, RouterConfig, StaticUpstream
from router.devnet import Devnet
from router.errors import ConfigError, NoProviderAvailable
from router.server.app import Gateway
from router.transport.http import TransportOptions
from tests.gateway.conftest import API_KEY, CHAT_MODEL, CHAT_PROVIDERS, GATEWAY_PROVIDERS, Served
from tests.gateway.support import MESSAGES, assert_error, send
from tests.support import serving

STATIC_MODEL = "static-model"
SETTING = (
    "set [transport] allow_private_targets = true (TransportOptions(allow_private_targets=True); "
    "RouterConfig.for_devnet sets it) to allow such providers"
)


def refused(count: int, model: str) -> str:
    return (
        f"{count} provider(s) of model {model!r} were refused by the URL guard: their registry URLs are "
        f"loopback or private addresses; {SETTING}"
    )


async def upstream_chat(request: web.Request) -> web.Response:
    await request.read()
    message = {"role": "assistant", "content": "from the static upstream"}
    return web.json_response({"object": "chat.completion", "choices": [{"index": 0, "message": message}]})


@pytest.fixture
async def guarded(gateway_devnet: Devnet) -> AsyncIterator[tuple[Served, list[dict[str, object]]]]:
    """A router and gateway for the devnet with the URL guard on (a default ``TransportOptions``) and one
    static upstream, so that it has something to route to; with the log events of its opening."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", upstream_chat)
    async with serving(app) as url, aiohttp.ClientSession() as http:
        upstream = StaticUpstream(name="local", url=url + "/v1", models=(STATIC_MODEL,))
        config = RouterConfig.for_devnet(
            gateway_devnet, transport=TransportOptions(), static_upstreams=(upstream,)
        )
        with capture_logs() as events:
            router = await Router(config).__aenter__()
        try:
            async with Gateway(router, GatewayConfig(port=0, api_keys=(API_KEY,))) as gateway:
                served = Served(gateway_devnet, router, gateway.url, gateway_devnet.user_wallet, "", http)
                yield served, events
        finally:
            await router.__aexit__(None, None, None)


async def test_a_router_whose_every_provider_is_refused_does_not_open(gateway_devnet: Devnet) -> None:
    """With nothing else to route to, the router refuses to open: a ConfigError that counts the refused
    providers and names the setting that allows them."""
    config = RouterConfig.for_devnet(gateway_devnet, transport=TransportOptions())
    with pytest.raises(ConfigError) as caught:
        async with Router(config):
            pytest.fail("the router opened with no provider")
    assert str(caught.value) == (
        f"nothing to route to: the URL guard refused {len(GATEWAY_PROVIDERS)} provider(s) on network "
        f"'devnet' because their registry URLs are loopback or private addresses; {SETTING}"
    )


async def test_opening_with_some_providers_refused_warns_and_names_the_setting(
    guarded: tuple[Served, list[dict[str, object]]],
) -> None:
    """A router that still has providers opens, with one warning that names the setting."""
    _, events = guarded
    warnings = [e for e in events if e["event"] == "providers refused"]
    assert warnings == [
        {
            "event": "providers refused",
            "log_level": "warning",
            "detail": f"the URL guard refused {len(GATEWAY_PROVIDERS)} provider(s) on network 'devnet' "
            f"because their registry URLs are loopback or private addresses; {SETTING}",
        }
    ]


async def test_a_request_for_a_model_only_refused_providers_serve_is_told_why(
    guarded: tuple[Served, list[dict[str, object]]],
) -> None:
    """Through the gateway, a chat for the devnet's model is a 503 ``providers_refused`` that counts its
    refused providers and names the setting (not a 404 saying the model does not exist), and so is an
    embeddings request for the embedding model; the static upstream's model is served as usual."""
    served, _ = guarded
    chat = await send(
        served,
        "POST",
        "/v1/chat/completions",
        json={"model": CHAT_MODEL, "messages": MESSAGES},
        headers=served.auth(),
    )
    assert_error(
        chat, 503, "service_unavailable", refused(CHAT_PROVIDERS, CHAT_MODEL), code="providers_refused"
    )
    embed = await send(
        served, "POST", "/v1/embeddings", json={"model": "embed-r", "input": "hi"}, headers=served.auth()
    )
    assert_error(embed, 503, "service_unavailable", refused(1, "embed-r"), code="providers_refused")
    served_chat = await send(
        served,
        "POST",
        "/v1/chat/completions",
        json={"model": STATIC_MODEL, "messages": MESSAGES},
        headers=served.auth(),
    )
    assert served_chat.status == 200, served_chat.text
    unknown = await send(
        served,
        "POST",
        "/v1/chat/completions",
        json={"model": "no-such-model", "messages": MESSAGES},
        headers=served.auth(),
    )
    assert unknown.status == 404
    assert unknown.json()["error"]["code"] == "model_not_found"


async def test_the_library_raises_the_same_error(guarded: tuple[Served, list[dict[str, object]]]) -> None:
    """``router.chat`` raises NoProviderAvailable with that message and code."""
    served, _ = guarded
    with pytest.raises(NoProviderAvailable) as caught:
        await served.router.chat(model=CHAT_MODEL.upper(), messages=MESSAGES)
    assert caught.value.code == "providers_refused"
    assert caught.value.message == refused(CHAT_PROVIDERS, CHAT_MODEL.upper())
