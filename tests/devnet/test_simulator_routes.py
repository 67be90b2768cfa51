"""The simulator's image-editing and Anthropic routes, driven like a client of the broker would: over HTTP
with a session token, through the openai and anthropic SDKs too (protocol.md §4.1, §4.4, §4.7, §5.3)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from eth_account import Account as EthAccount
from eth_account.messages import encode_defunct

from router.devnet import Devnet, DevnetConfig, DevnetProvider, ProviderSpec
from router.devnet.node_tools import NodeModules
from router.devnet.simulator import synth
from router.devnet.simulator.faults import Faults
from router.devnet.simulator.limits import RateLimits
from tests.support import Client, funded_client

EDITS, MESSAGES = "/v1/proxy/images/edits", "/v1/proxy/v1/messages"
# Two images a wallet may get back to back (IPM 12, bucket 2), then the IPM 429.
IMAGE_LIMITS = RateLimits(requests_per_minute=600, burst=10, images_per_minute=12)
ROOMY = RateLimits(requests_per_minute=600, burst=10)
PROVIDERS = (
    ProviderSpec(model="edit-model", service_type="image-editing", output_price=7, limits=IMAGE_LIMITS),
    ProviderSpec(model="claude-like", anthropic=True, limits=ROOMY),
    ProviderSpec(model="openai-only", limits=ROOMY),
)
EDITOR, CLAUDE, PLAIN = range(3)
PICTURE, OTHER, MASK = b"\x89PNG\r\n\x1a\nfirst", b"\x89PNG\r\n\x1a\nsecond", b"\x89PNG\r\n\x1a\nmask"
WEATHER = {
    "name": "weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 3}},
        "required": ["city", "days"],
    },
}


@pytest.fixture(scope="module")
async def routes_devnet(node_modules: NodeModules) -> AsyncIterator[Devnet]:
    async with Devnet(DevnetConfig(providers=PROVIDERS, settle_interval=None), node_modules) as devnet:
        yield devnet


async def wallet(devnet: Devnet, http: aiohttp.ClientSession, index: int) -> Client:
    """A new funded wallet at provider ``index``: limits and counters of its own."""
    return await funded_client(devnet, http, provider_index=index)


async def post(client: Client, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
    auth = await client.tokens.authorization(client.provider.address)
    headers = {"Authorization": auth, **kwargs.pop("headers", {})}
    return await client.http.post(client.provider.url + path, headers=headers, **kwargs)


async def signed_text(client: Client, key: str, provider: DevnetProvider) -> str:
    """The signed text stored for ``key``, after checking it was signed by the provider's TEE key."""
    async with client.http.get(f"{provider.url}/v1/proxy/signature/{key}") as response:
        entry = await response.json()
    signer = EthAccount.recover_message(encode_defunct(text=entry["text"]), signature=entry["signature"])
    assert signer == provider.tee_signer.address
    return str(entry["text"])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def edit_form(*images: bytes, **fields: str) -> tuple[bytes, str]:
    """A multipart body (and its Content-Type) with each of ``images`` as an ``image`` part, a mask and
    ``fields`` as text parts: bytes of our own, so that a test knows what the signature covers."""
    boundary = "zg-devnet-edit"
    parts = [(f'name="image"; filename="{i}.png"', image) for i, image in enumerate(images)]
    parts.append(('name="mask"; filename="mask.png"', MASK))
    parts += [(f'name="{name}"', value.encode()) for name, value in fields.items()]
    body = b"".join(
        f"--{boundary}\r\nContent-Disposition: form-data; {disposition}\r\n\r\n".encode() + data + b"\r\n"
        for disposition, data in parts
    )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def pictures(body: dict[str, Any]) -> list[bytes]:
    return [base64.b64decode(item["b64_json"]) for item in body["data"]]


class TestImageEdits:
    async def test_a_multipart_edit_is_billed_per_image_and_signed_over_each(
        self, routes_devnet: Devnet, http: aiohttp.ClientSession
    ) -> None:
        """Two images, a mask, ``n=2``: two edited images (b64_json), ``ZG-Res-Key``, IPM headers, two
        images at the output price, and a signature over the request body and each image's hash."""
        client = await wallet(routes_devnet, http, EDITOR)
        body, content_type = edit_form(PICTURE, OTHER, prompt="add a hat", model="edit-model", n="2")
        response = await post(client, EDITS, data=body, headers={"Content-Type": content_type})
        reply = await response.json()
        assert response.status == 200, reply
        images = pictures(reply)
        assert len(images) == len(set(images)) == 2
        assert response.headers["x-ratelimit-limit-images"] == "12"
        assert client.provider.simulator.billing.unsettled(client.address) == 2 * 7
        text = await signed_text(client, response.headers["ZG-Res-Key"], client.provider)
        assert text == f"{sha(body)}:{sha(images[0])},{sha(images[1])}"
        # Another picture, another edit: the output depends on what was sent.
        other, content_type = edit_form(OTHER, prompt="add a hat", model="edit-model", n="2")
        again = await post(client, EDITS, data=other, headers={"Content-Type": content_type})
        assert not set(pictures(await again.json())) & set(images)

    @pytest.mark.parametrize(
        "fields",
        [
            pytest.param({"image": base64.b64encode(PICTURE).decode()}, id="image-base64"),
            pytest.param(
                {
                    "images": [
                        "data:image/png;base64," + base64.b64encode(p).decode() for p in (PICTURE, OTHER)
                    ]
                },
                id="images-data-urls",
            ),
        ],
    )
    async def test_a_json_edit_takes_base64_images(
        self, routes_devnet: Devnet, http: aiohttp.ClientSession, fields: dict[str, Any]
    ) -> None:
        client = await wallet(routes_devnet, http, EDITOR)
        body = {
            "model": "edit-model",
            "prompt": "make it blue",
            "mask": base64.b64encode(MASK).decode(),
            **fields,
        }
        response = await post(client, EDITS, json=body)
        reply = await response.json()
        assert response.status == 200, reply
        assert len(pictures(reply)) == 1
        text = await signed_text(client, response.headers["ZG-Res-Key"], client.provider)
        assert text.split(":")[1] == sha(pictures(reply)[0])

    async def test_the_openai_sdk_edits_several_images(
        self, routes_devnet: Devnet, http: aiohttp.ClientSession
    ) -> None:
        """``images.edit`` with a list of images (sent as ``image[]`` parts) and a mask."""
        client = await wallet(routes_devnet, http, EDITOR)
        token = (await client.tokens.authorization(client.provider.address)).removeprefix("Bearer ")
        async with openai.AsyncOpenAI(
            base_url=client.provider.url + "/v1/proxy", api_key=token, max_retries=0
        ) as sdk:
            reply = await sdk.images.edit(
                model="edit-model",
                image=[("a.png", PICTURE, "image/png"), ("b.png", OTHER, "image/png")],
                mask=("m.png", MASK, "image/png"),
                prompt="add a hat",
            )
        assert reply.data is not None
        assert [base64.b64decode(d.b64_json or "")[:8] for d in reply.data] == [PICTURE[:8]]

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            pytest.param({"prompt": "x"}, "1-16 non-empty images are required", id="no-image"),
            pytest.param({"prompt": "x", "image": "not base64!"}, "neither base64 nor", id="bad-base64"),
            pytest.param({"image": base64.b64encode(PICTURE).decode()}, "prompt is required", id="no-prompt"),
            pytest.param(
                {"prompt": "x", "image": base64.b64encode(PICTURE).decode(), "n": 11},
                "n must be 1-10",
                id="n",
            ),
        ],
    )
    async def test_a_bad_edit_is_the_brokers_400_and_unbilled(
        self, routes_devnet: Devnet, http: aiohttp.ClientSession, body: dict[str, Any], message: str
    ) -> None:
        client = await wallet(routes_devnet, http, EDITOR)
        response = await post(client, EDITS, json={"model": "edit-model", **body})
        assert response.status == 400
        assert message in (await response.json())["error"]
        assert client.provider.simulator.billing.unsettled(client.address) == 0

    async def test_edits_spend_the_image_bucket_into_the_ipm_429(
        self, routes_devnet: Devnet, http: aiohttp.ClientSession
    ) -> None:
        """IPM 12 (a bucket of 2): three images go out and drive the level below zero (post-consume), so
        the next edit is the broker's image 429."""
        client = await wallet(routes_devnet, http, EDITOR)
        image = base64.b64encode(PICTURE).decode()
        first = await post(client, EDITS, json={"model": "edit-model", "prompt": "x", "image": image, "n": 3})
        assert first.status == 200
        second = await post(client, EDITS, json={"model": "edit-model", "prompt": "x", "image": image})
        error = (await second.json())["error"]
        assert second.status == 429
        assert re.fullmatch(
            r"Image rate limit exceeded\. Please wait \d+ seconds \(limit: 12 images/min\)\.",
            error["message"],
        )


class TestAnthropicMessages:
    async def test_models_lists_the_formats_each_provider_serves(
        self, routes_devnet: Devnet, http: aiohttp.ClientSession
    ) -> None:
        formats = {}
        for provider in routes_devnet.providers:
            async with http.get(provider.url + "/v1/models") as response:
                formats[provider.spec.model] = (await response.json())["data"][0]["supported_formats"]
        assert formats == {
            "edit-model": ["openai"],
            "claude-like": ["openai", "anthropic"],
            "openai-only": ["openai"],
        }

    async def test_a_message_is_billed_signed_and_carries_anthropic_rate_headers(
        self, routes_devnet: Devnet, http: aiohttp.ClientSession
    ) -> None:
        client = await wallet(routes_devnet, http, CLAUDE)
        body = json.dumps(
            {"model": "claude-like", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
        )
        response = await post(
            client, MESSAGES, data=body.encode(), headers={"Content-Type": "application/json"}
        )
        raw = await response.read()
        assert response.status == 200, raw
        message = json.loads(raw)
        assert (message["type"], message["role"], message["stop_reason"]) == (
            "message",
            "assistant",
            "end_turn",
        )
        assert message["id"] == "msg_" + response.headers["ZG-Res-Key"]
        assert len(message["content"][0]["text"].split()) == synth.DEFAULT_COMPLETION_TOKENS
        usage = message["usage"]
        billing = client.provider.simulator.billing
        assert billing.unsettled(client.address) == billing.fee(usage["input_tokens"], usage["output_tokens"])
        assert response.headers["anthropic-ratelimit-requests-limit"] == "600"
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", response.headers["anthropic-ratelimit-requests-reset"]
        )
        assert "x-ratelimit-limit-requests" not in response.headers
        text = await signed_text(client, response.headers["ZG-Res-Key"], client.provider)
        assert text == f"{sha(body.encode())}:{sha(raw)}"

    async def test_the_anthropic_sdk_runs_a_tool_loop_streamed_and_whole(
        self, routes_devnet: Devnet, http: aiohttp.ClientSession
    ) -> None:
        """The SDK's own parsing: a streamed ``tool_use`` whose input fits the schema, then, handed the
        ``tool_result``, a whole text answer that ends the turn."""
        client = await wallet(routes_devnet, http, CLAUDE)
        token = (await client.tokens.authorization(client.provider.address)).removeprefix("Bearer ")
        async with anthropic.AsyncAnthropic(
            base_url=client.provider.url + "/v1/proxy", auth_token=token, max_retries=0
        ) as sdk:
            question: list[Any] = [{"role": "user", "content": "weather in Oslo?"}]
            async with sdk.messages.stream(
                model="claude-like", max_tokens=200, messages=question, tools=[WEATHER]
            ) as stream:
                called = await stream.get_final_message()
            assert called.stop_reason == "tool_use"
            (use,) = called.content
            assert use.type == "tool_use"
            assert use.name == "weather"
            assert isinstance(use.input, dict)
            assert set(use.input) == {"city", "days"}
            assert 1 <= use.input["days"] <= 3
            turns = [
                *question,
                {"role": "assistant", "content": [use.model_dump()]},
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "9C"}],
                },
            ]
            answered = await sdk.messages.create(
                model="claude-like", max_tokens=200, messages=turns, tools=[WEATHER]
            )
        assert answered.stop_reason == "end_turn"
        assert answered.content[0].type == "text"
        assert answered.usage.output_tokens == synth.DEFAULT_COMPLETION_TOKENS

    async def test_a_streamed_message_is_the_events_in_order_and_signed(
        self, routes_devnet: Devnet, http: aiohttp.ClientSession
    ) -> None:
        client = await wallet(routes_devnet, http, CLAUDE)
        body = {
            "model": "claude-like",
            "max_tokens": 5,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
        response = await post(client, MESSAGES, json=body)
        raw = await response.read()
        assert response.headers["Content-Type"].startswith("text/event-stream")
        kinds = [
            line.removeprefix(b"event: ").decode() for line in raw.split(b"\n") if line.startswith(b"event: ")
        ]
        assert kinds[:3] == ["message_start", "ping", "content_block_start"]
        assert kinds[-4:] == ["content_block_delta", "content_block_stop", "message_delta", "message_stop"]
        assert kinds.count("content_block_delta") == 5
        delta = json.loads(raw.split(b"event: message_delta\ndata: ")[1].split(b"\n")[0])
        assert delta["delta"]["stop_reason"] == "max_tokens"
        text = await signed_text(client, response.headers["ZG-Res-Key"], client.provider)
        assert text.endswith(":" + sha(raw))

    async def test_429s_on_the_anthropic_route_are_wrapped_as_its_errors(
        self, routes_devnet: Devnet, http: aiohttp.ClientSession
    ) -> None:
        """The broker's rate 429 (and a storm's) as Anthropic's ``{"type": "error", "error": {...}}``."""
        client = await wallet(routes_devnet, http, CLAUDE)
        simulator = client.provider.simulator
        body = {"model": "claude-like", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        await simulator.set_faults(Faults(rate_limit_storm=1.0))
        try:
            storm = await post(client, MESSAGES, json=body)
            assert storm.status == 429
            assert await storm.json() == {
                "type": "error",
                "error": {"type": "rate_limit_error", "message": "Rate limit exceeded."},
            }
        finally:
            await simulator.set_faults(Faults())
        simulator.set_limits({"burst": 1, "requests_per_minute": 1})
        try:
            # The bucket keeps its level, cut to the new size of one: one more request, then the 429.
            assert (await post(client, MESSAGES, json=body)).status == 200
            refused = await post(client, MESSAGES, json=body)
            error = await refused.json()
        finally:
            simulator.set_limits(ROOMY.as_dict())
        assert refused.status == 429
        assert error["type"] == "error"
        assert error["error"]["type"] == "rate_limit_error"
        assert error["error"]["message"].startswith("Rate limit exceeded. Please slow down")

    async def test_a_bad_message_is_anthropics_400_and_unbilled(
        self, routes_devnet: Devnet, http: aiohttp.ClientSession
    ) -> None:
        client = await wallet(routes_devnet, http, CLAUDE)
        response = await post(
            client, MESSAGES, json={"model": "claude-like", "messages": [{"role": "user", "content": "hi"}]}
        )
        assert response.status == 400
        assert await response.json() == {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
        }
        assert client.provider.simulator.billing.unsettled(client.address) == 0

    async def test_a_provider_without_the_format_does_not_serve_the_route(
        self, routes_devnet: Devnet, http: aiohttp.ClientSession
    ) -> None:
        client = await wallet(routes_devnet, http, PLAIN)
        body = {"model": "openai-only", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        for path in (MESSAGES, "/v1/proxy/messages"):
            response = await post(client, path, json=body)
            assert response.status == 400
            assert await response.json() == {"error": "endpoint not supported"}
