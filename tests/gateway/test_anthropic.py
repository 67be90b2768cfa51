"""The official ``anthropic`` SDK, unchanged, works through the gateway's ``/v1/messages``.

On the default devnet no provider serves Anthropic's format, so every request is translated to chat
completions and back; the simulated model's answer to exactly the translated body shows that body is what
the provider got. A devnet of its own has providers that serve the format natively
(``ProviderSpec(anthropic=True)``): their model's requests pass through unchanged.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import httpx2
import pytest

from router.anthropic.to_chat import to_chat
from router.client import Router
from router.config import GatewayConfig
from router.devnet import Devnet, DevnetConfig, ProviderSpec
from router.devnet.node_tools import NodeModules
from router.devnet.simulator import anthropic_messages, synth
from router.server.app import Gateway
from tests.gateway.conftest import (
    API_KEY,
    CHAT_MODEL,
    CHAT_PROVIDERS,
    FAST,
    Served,
    ServeFactory,
    router_config,
)
from tests.gateway.support import HEX_ID, TIMEOUT, WRONG_KEY, send
from tests.support import funded_wallet, in_flight

WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
ASK = [{"role": "user", "content": "tell me about the network"}]


def client(served: Served, key: str = API_KEY) -> anthropic.AsyncAnthropic:
    # The SDK posts to {base_url}/v1/messages; the router has retried and failed over already.
    return anthropic.AsyncAnthropic(base_url=served.url, api_key=key, max_retries=0, timeout=TIMEOUT)


def translated_text(**request: Any) -> str | None:
    """What the simulated model says to the chat request ``request`` is translated to."""
    return synth.complete(to_chat(request)).text


async def streamed_text(sdk: anthropic.AsyncAnthropic, **request: Any) -> str:
    """The text of a ``messages.stream``, read to its end."""
    async with sdk.messages.stream(**request) as stream:
        return "".join([piece async for piece in stream.text_stream])


def chat_addresses(served: Served) -> set[str]:
    return {p.address for p in served.devnet.providers[:CHAT_PROVIDERS]}


class TestTranslated:
    async def test_create_plain(self, serve: ServeFactory) -> None:
        """A plain message comes back whole: the model's text for exactly the translated body, Anthropic's
        stop reason and usage, and the gateway's receipts."""
        served = await serve()
        request = {"model": CHAT_MODEL, "max_tokens": 12, "messages": ASK}
        async with client(served) as sdk:
            raw = await sdk.messages.with_raw_response.create(**request)
        message = await raw.parse()
        assert message.type == "message"
        assert message.role == "assistant"
        assert message.model == CHAT_MODEL
        assert [block.type for block in message.content] == ["text"]
        assert message.content[0].text == translated_text(**request)  # type: ignore[union-attr]
        # The simulated model talks until max_tokens cuts it.
        assert message.stop_reason == "max_tokens"
        assert message.usage.output_tokens == 12
        assert message.usage.input_tokens == len(ASK[0]["content"].split())
        assert message.id.startswith("msg_")
        assert message.id.removeprefix("msg_") == raw.headers["x-zg-chat-id"]
        assert raw.headers["x-zg-provider"] in chat_addresses(served)
        assert HEX_ID.match(raw.headers["x-request-id"])
        assert raw.headers["request-id"] == raw.headers["x-request-id"] == message._request_id
        assert raw.headers["x-zg-attempts"] == "1"
        assert int(raw.headers["x-zg-cost"]) > 0

    async def test_create_with_system_and_turns(self, serve: ServeFactory) -> None:
        """System blocks and earlier turns reach the provider as the translation lays them out."""
        served = await serve()
        request = {
            "model": CHAT_MODEL,
            "max_tokens": 8,
            "system": [{"type": "text", "text": "be brief"}, {"type": "text", "text": "be kind"}],
            "messages": [
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": [{"type": "text", "text": "hi, how can I help?"}]},
                {"role": "user", "content": [{"type": "text", "text": "tell me about the network"}]},
            ],
            "stop_sequences": ["END"],
        }
        async with client(served) as sdk:
            # This SDK takes the sampling fields (which newer models drop) only as extra body fields.
            message = await sdk.messages.create(**request, extra_body={"temperature": 0.2})
        assert message.content[0].text == translated_text(**request, temperature=0.2)  # type: ignore[union-attr]
        # Every word of every turn (the system's included) counts as a prompt token at the simulator.
        assert message.usage.input_tokens == 2 + 2 + 1 + 5 + 5

    async def test_stream(self, serve: ServeFactory) -> None:
        """``messages.stream``: text_stream yields the model's words, and the final message has the
        stop reason and the usage of the stream's last chunk."""
        served = await serve()
        request = {"model": CHAT_MODEL, "max_tokens": 10, "messages": ASK}
        async with client(served) as sdk, sdk.messages.stream(**request) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            final = await stream.get_final_message()
        assert text == translated_text(**request, stream=True)
        assert final.content[0].text == text  # type: ignore[union-attr]
        assert final.stop_reason == "max_tokens"
        assert (final.usage.input_tokens, final.usage.output_tokens) == (5, 10)
        assert in_flight(served.router) == 0

    async def test_raw_stream_events_and_receipts(self, serve: ServeFactory) -> None:
        """The stream is Anthropic's event sequence, with the gateway's receipts on its headers."""
        served = await serve()
        body = {"model": CHAT_MODEL, "max_tokens": 3, "messages": ASK, "stream": True}
        headers = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
        async with served.http.post(served.url + "/v1/messages", json=body, headers=headers) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/event-stream"
            assert response.headers["x-zg-provider"] in chat_addresses(served)
            text = await response.text()
        kinds = [line.removeprefix("event: ") for line in text.splitlines() if line.startswith("event: ")]
        assert kinds == [
            "message_start",
            "ping",
            "content_block_start",
            *["content_block_delta"] * 3,
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
        assert "[DONE]" not in text

    async def test_tool_use_round_trip(self, serve: ServeFactory) -> None:
        """The model calls the tool (a tool_use block, stop reason tool_use); handed the result, it answers
        in text. The call id the client got is the one its tool_result names."""
        served = await serve()
        turn = [{"role": "user", "content": "weather in Paris?"}]
        async with client(served) as sdk:
            first = await sdk.messages.create(model=CHAT_MODEL, max_tokens=64, messages=turn, tools=[WEATHER])
            assert first.stop_reason == "tool_use"
            [call] = first.content
            assert call.type == "tool_use"
            assert call.name == "get_weather"
            assert isinstance(call.input, dict)
            assert isinstance(call.input["city"], str)
            history = [
                *turn,
                {"role": "assistant", "content": [block.model_dump() for block in first.content]},
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}],
                },
            ]
            second = await sdk.messages.create(
                model=CHAT_MODEL, max_tokens=6, messages=history, tools=[WEATHER]
            )
        assert second.stop_reason == "max_tokens"
        assert second.content[0].type == "text"
        assert second.content[0].text == translated_text(  # type: ignore[union-attr]
            model=CHAT_MODEL, max_tokens=6, messages=history, tools=[WEATHER]
        )

    async def test_streamed_tool_use(self, serve: ServeFactory) -> None:
        """A streamed tool call arrives as input_json_delta fragments the SDK assembles into its input;
        a named tool_choice makes the model call that tool."""
        served = await serve()
        request = {
            "model": CHAT_MODEL,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "weather?"}],
            "tools": [WEATHER],
            "tool_choice": {"type": "tool", "name": "get_weather"},
        }
        async with client(served) as sdk, sdk.messages.stream(**request) as stream:
            final = await stream.get_final_message()
        expected = synth.complete(to_chat({**request, "stream": True})).choices[0].tool_call
        assert expected is not None
        [call] = final.content
        assert call.type == "tool_use"
        assert (call.id, call.name) == (expected["id"], "get_weather")
        assert call.input == json.loads(expected["function"]["arguments"])
        assert final.stop_reason == "tool_use"

    async def test_structured_output(self, serve: ServeFactory) -> None:
        """``output_config.format`` asks chat completions for that JSON schema: the text is JSON of it."""
        served = await serve()
        schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
        request = {
            "model": CHAT_MODEL,
            "max_tokens": 200,
            "messages": ASK,
            "output_config": {"format": {"type": "json_schema", "schema": schema}},
        }
        async with client(served) as sdk:
            message = await sdk.messages.create(**request)
        text = message.content[0].text  # type: ignore[union-attr]
        assert text == translated_text(**request)
        assert isinstance(json.loads(text)["answer"], str)
        assert message.stop_reason == "end_turn"

    async def test_routing_preferences(self, serve: ServeFactory) -> None:
        """The ``provider`` field (which providers never see) and ``X-ZG-*`` headers route as on the
        OpenAI routes."""
        served = await serve()
        pinned = served.devnet.providers[1].address
        async with client(served) as sdk:
            by_body = await sdk.messages.with_raw_response.create(
                model=CHAT_MODEL, max_tokens=4, messages=ASK, extra_body={"provider": {"only": [pinned]}}
            )
            by_header = await sdk.messages.with_raw_response.create(
                model=CHAT_MODEL, max_tokens=4, messages=ASK, extra_headers={"X-ZG-Provider": pinned}
            )
        assert by_body.headers["x-zg-provider"] == by_header.headers["x-zg-provider"] == pinned
        # The provider's answer is the one to the body without `provider`: it never saw the field.
        text = translated_text(model=CHAT_MODEL, max_tokens=4, messages=ASK)
        assert (await by_body.parse()).content[0].text == text  # type: ignore[union-attr]

    async def test_in_process_transport(self, serve: ServeFactory) -> None:
        """The route is the core's, so the SDK over the router's in-process transport gets it too."""
        served = await serve()
        request = {"model": CHAT_MODEL, "max_tokens": 6, "messages": ASK}
        http = httpx2.AsyncClient(transport=served.router.httpx_transport())
        async with anthropic.AsyncAnthropic(
            base_url="http://router", api_key="unused", http_client=http, max_retries=0
        ) as sdk:
            message = await sdk.messages.create(**request)
            streamed = await streamed_text(sdk, **request)
        assert message.content[0].text == translated_text(**request)  # type: ignore[union-attr]
        assert streamed == translated_text(**request, stream=True)


class TestKeys:
    @pytest.mark.parametrize("header", ["x-api-key", "Authorization"])
    async def test_either_key_header_is_accepted(self, serve: ServeFactory, header: str) -> None:
        """Anthropic clients send ``x-api-key``; OpenAI-style ones ``Authorization: Bearer``."""
        served = await serve()
        value = API_KEY if header == "x-api-key" else f"Bearer {API_KEY}"
        body = {"model": CHAT_MODEL, "max_tokens": 2, "messages": ASK}
        answer = await send(served, "POST", "/v1/messages", json=body, headers={header: value})
        assert answer.status == 200, answer.text
        assert answer.json()["type"] == "message"

    @pytest.mark.parametrize(
        ("headers", "message"),
        [
            ({}, "missing API key: send `x-api-key: <key>` or `Authorization: Bearer <key>`"),
            ({"x-api-key": WRONG_KEY}, "invalid API key"),
            # x-api-key, when sent, is the key: a right bearer beside it does not make up for it.
            ({"x-api-key": WRONG_KEY, "Authorization": f"Bearer {API_KEY}"}, "invalid API key"),
            ({"Authorization": f"Bearer {WRONG_KEY}"}, "invalid API key"),
        ],
    )
    async def test_a_missing_or_wrong_key_is_a_401(
        self, serve: ServeFactory, headers: dict[str, str], message: str
    ) -> None:
        """The 401 is Anthropic's authentication_error, and names no key."""
        served = await serve()
        body = {"model": CHAT_MODEL, "max_tokens": 2, "messages": ASK}
        answer = await send(served, "POST", "/v1/messages", json=body, headers=headers)
        assert answer.status == 401
        rid = answer.headers["x-request-id"]
        assert answer.json() == {
            "type": "error",
            "error": {"type": "authentication_error", "message": message},
            "request_id": rid,
        }
        assert WRONG_KEY not in answer.text

    async def test_sdk_authentication_error(self, serve: ServeFactory) -> None:
        """The SDK raises its own AuthenticationError for a wrong key."""
        served = await serve()
        async with client(served, WRONG_KEY) as sdk:
            with pytest.raises(anthropic.AuthenticationError) as caught:
                await sdk.messages.create(model=CHAT_MODEL, max_tokens=2, messages=ASK)
        assert caught.value.body == {
            "type": "error",
            "error": {"type": "authentication_error", "message": "invalid API key"},
            "request_id": caught.value.request_id,
        }


class TestErrors:
    async def test_bad_request(self, serve: ServeFactory) -> None:
        """A wrong field is the SDK's BadRequestError, naming the field, before any provider sees it."""
        served = await serve()
        before = [(await served.stats(i))["served"] for i in range(CHAT_PROVIDERS)]
        async with client(served) as sdk:
            with pytest.raises(anthropic.BadRequestError) as caught:
                await sdk.messages.create(
                    model=CHAT_MODEL, max_tokens=2, messages=ASK, extra_body={"temperature": 1.5}
                )
        assert caught.value.body["error"] == {  # type: ignore[index]
            "type": "invalid_request_error",
            "message": "`temperature` must be a number from 0 to 1, not 1.5",
        }
        assert [(await served.stats(i))["served"] for i in range(CHAT_PROVIDERS)] == before

    async def test_what_cannot_be_translated_is_a_400(self, serve: ServeFactory) -> None:
        """A server tool has no chat-completions form: refused by name, not dropped."""
        served = await serve()
        search = {"type": "web_search_20250305", "name": "web_search"}
        async with client(served) as sdk:
            with pytest.raises(anthropic.BadRequestError, match="server tool 'web_search_20250305'"):
                await sdk.messages.create(model=CHAT_MODEL, max_tokens=2, messages=ASK, tools=[search])

    async def test_unknown_model_is_not_found(self, serve: ServeFactory) -> None:
        """A model no provider serves is the SDK's NotFoundError."""
        served = await serve()
        async with client(served) as sdk:
            with pytest.raises(anthropic.NotFoundError) as caught:
                await sdk.messages.create(model="no-such-model", max_tokens=2, messages=ASK)
        assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
        assert "no-such-model" in caught.value.body["error"]["message"]  # type: ignore[index]

    async def test_a_model_of_another_service_is_not_found_on_messages(self, serve: ServeFactory) -> None:
        """An embedding model exists, but not on this route: 404 saying so."""
        served = await serve()
        async with client(served) as sdk:
            with pytest.raises(anthropic.NotFoundError, match="is not served on messages"):
                await sdk.messages.create(model="embed-r", max_tokens=2, messages=ASK)

    async def test_saturation_is_a_rate_limit_error(self, serve: ServeFactory) -> None:
        """Every provider busy past the queue deadline: the SDK's RateLimitError, with Retry-After."""
        served = await serve(queue_timeout=0.3)
        for index in range(CHAT_PROVIDERS):
            await served.set_faults(index, latency=2.0)
        async with client(served) as sdk:
            # Three providers with five slots each: fifteen go through, three wait past 0.3 s.
            results = await asyncio.gather(
                *(
                    sdk.messages.create(model=CHAT_MODEL, max_tokens=2, messages=ASK)
                    for _ in range(CHAT_PROVIDERS * 5 + 3)
                ),
                return_exceptions=True,
            )
        limited = [r for r in results if isinstance(r, anthropic.RateLimitError)]
        assert len(limited) == 3
        assert sum(isinstance(r, anthropic.types.Message) for r in results) == CHAT_PROVIDERS * 5
        for error in limited:
            assert error.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
            assert int(error.response.headers["Retry-After"]) >= 1

    async def test_every_provider_failing_is_an_internal_server_error(self, serve: ServeFactory) -> None:
        """No attempt succeeds: a 502 api_error, which the SDK raises as InternalServerError."""
        served = await serve(max_attempts=2)
        for index in range(CHAT_PROVIDERS):
            await served.set_faults(index, error_500=1.0)
        async with client(served) as sdk:
            with pytest.raises(anthropic.InternalServerError) as caught:
                await sdk.messages.create(model=CHAT_MODEL, max_tokens=2, messages=ASK)
        assert caught.value.status_code == 502
        assert caught.value.body["error"]["type"] == "api_error"  # type: ignore[index]
        assert caught.value.body["error"]["message"].startswith("every attempt failed")  # type: ignore[index]

    async def test_a_mid_stream_failure_raises_in_the_stream(self, serve: ServeFactory) -> None:
        """A provider dropping after the first event ends the stream with an ``error`` event, which the
        SDK raises; the slot is freed."""
        served = await serve()
        for index in range(CHAT_PROVIDERS):
            await served.set_faults(index, drop_mid_stream=1.0)
        async with client(served) as sdk:
            with pytest.raises(anthropic.APIStatusError) as caught:
                await streamed_text(sdk, model=CHAT_MODEL, max_tokens=40, messages=ASK)
        assert caught.value.body["type"] == "error"  # type: ignore[index]
        assert caught.value.body["error"]["message"].startswith("the provider failed mid-stream")  # type: ignore[index]
        assert in_flight(served.router) == 0


# -- providers that serve the format natively ---------------------------------------------------

NATIVE_MODEL = "claude-r"
MIXED_MODEL = "mixed-r"
NATIVE_PROVIDERS = (
    ProviderSpec(model=NATIVE_MODEL, anthropic=True, limits=FAST),
    ProviderSpec(model=NATIVE_MODEL, anthropic=True, limits=FAST),
    # One of two: the model is translated, so that either provider can take any of its requests.
    ProviderSpec(model=MIXED_MODEL, anthropic=True, limits=FAST),
    ProviderSpec(model=MIXED_MODEL, limits=FAST),
)


@pytest.fixture(scope="module")
async def native_devnet(node_modules: NodeModules) -> AsyncIterator[Devnet]:
    config = DevnetConfig(providers=NATIVE_PROVIDERS, settle_interval=None)
    async with Devnet(config, node_modules) as devnet:
        yield devnet


@pytest.fixture
async def native(native_devnet: Devnet) -> AsyncIterator[Served]:
    """A router and gateway over the native devnet, for a new funded wallet."""
    wallet, key = await funded_wallet(native_devnet)
    async with (
        aiohttp.ClientSession() as http,
        Router(router_config(native_devnet, key)) as router,
        Gateway(router, GatewayConfig(port=0, api_keys=(API_KEY,), shutdown_timeout=0.5)) as gateway,
    ):
        yield Served(native_devnet, router, gateway.url, wallet, key, http)


def native_completion(**request: Any) -> synth.Completion:
    """What a native provider's model says to the Messages request ``request``, as it got it."""
    return anthropic_messages.complete(request)


class TestNative:
    async def test_discovery_reads_the_formats(self, native: Served) -> None:
        """Each provider's ``supported_formats`` is on its ProviderInfo."""
        formats = {
            state.info.models[0]: state.info.formats
            for state in native.router.pool.candidates("chatbot", NATIVE_MODEL)
        }
        assert formats == {NATIVE_MODEL: ("openai", "anthropic")}
        mixed = sorted(s.info.formats for s in native.router.pool.candidates("chatbot", MIXED_MODEL))
        assert mixed == [("openai",), ("openai", "anthropic")]

    async def test_create_passes_through(self, native: Served) -> None:
        """The provider's own Messages reply comes back as it sent it, with the gateway's receipts."""
        request = {"model": NATIVE_MODEL, "max_tokens": 64, "system": "be brief", "messages": ASK}
        async with client(native) as sdk:
            raw = await sdk.messages.with_raw_response.create(
                **request, extra_body={"provider": {"sort": "price"}}
            )
        message = await raw.parse()
        completion = native_completion(**request)
        assert message.content[0].text == completion.text  # type: ignore[union-attr]
        # The native model stops on its own (a translated one would run to max_tokens).
        assert message.stop_reason == "end_turn"
        assert (message.usage.input_tokens, message.usage.output_tokens) == (
            completion.prompt_tokens,
            completion.completion_tokens,
        )
        assert message.id == "msg_" + raw.headers["x-zg-chat-id"]
        natives = {p.address for p in native.devnet.providers[:2]}
        assert raw.headers["x-zg-provider"] in natives

    async def test_stream_passes_through(self, native: Served) -> None:
        """The provider's own events reach the SDK; our ``[DONE]`` does not."""
        request = {"model": NATIVE_MODEL, "max_tokens": 64, "messages": ASK}
        async with client(native) as sdk, sdk.messages.stream(**request) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            final = await stream.get_final_message()
        completion = native_completion(**request, stream=True)
        assert text == completion.text
        assert final.usage.output_tokens == completion.completion_tokens
        assert final.stop_reason == "end_turn"
        assert in_flight(native.router) == 0

    async def test_tool_use_round_trip(self, native: Served) -> None:
        """A native provider's tool_use and the client's tool_result go through unchanged."""
        turn = [{"role": "user", "content": "weather in Paris?"}]
        async with client(native) as sdk:
            first = await sdk.messages.create(
                model=NATIVE_MODEL, max_tokens=64, messages=turn, tools=[WEATHER]
            )
            [call] = first.content
            assert (first.stop_reason, call.type) == ("tool_use", "tool_use")
            history = [
                *turn,
                {"role": "assistant", "content": [block.model_dump() for block in first.content]},
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}],
                },
            ]
            second = await sdk.messages.create(
                model=NATIVE_MODEL, max_tokens=64, messages=history, tools=[WEATHER]
            )
        assert second.stop_reason == "end_turn"
        expected = native_completion(model=NATIVE_MODEL, max_tokens=64, messages=history, tools=[WEATHER])
        assert second.content[0].text == expected.text  # type: ignore[union-attr]

    async def test_a_mixed_model_is_translated(self, native: Served) -> None:
        """A model only some of whose providers serve the format is translated for all of them."""
        request = {"model": MIXED_MODEL, "max_tokens": 20, "messages": ASK}
        mixed = [p.address for p in native.devnet.providers[2:]]
        async with client(native) as sdk:
            replies = [
                await sdk.messages.with_raw_response.create(
                    **request, extra_headers={"X-ZG-Provider": address}
                )
                for address in mixed
            ]
        assert [raw.headers["x-zg-provider"] for raw in replies] == mixed
        for raw in replies:
            message = await raw.parse()
            assert message.content[0].text == translated_text(**request)  # type: ignore[union-attr]
            # 20 tokens allowed, the simulator's whole reply is shorter: it ends the turn.
            assert (message.stop_reason, message.usage.output_tokens) == (
                "end_turn",
                synth.DEFAULT_COMPLETION_TOKENS,
            )
