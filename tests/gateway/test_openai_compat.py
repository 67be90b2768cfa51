"""The official ``openai`` SDK, unchanged, works through the gateway: every endpoint, sync and async."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import openai
import pytest

from router.devnet.simulator import synth
from router.observability.events import RequestFinished
from tests.gateway.conftest import (
    API_KEY,
    CHAT_MODEL,
    CHAT_PROVIDERS,
    GATEWAY_PROVIDERS,
    Served,
    ServeFactory,
)
from tests.gateway.support import HEX_ID, TIMEOUT, WAV, WEATHER_TOOL
from tests.gateway.support import TALK as MESSAGES
from tests.support import in_flight


def chat_addresses(served: Served) -> set[str]:
    return {p.address for p in served.devnet.providers[:CHAT_PROVIDERS]}


def prices(served: Served) -> dict[str, tuple[int, int]]:
    """Each provider's (input, output) price per token, from the devnet's own provider specs."""
    return {
        p.address: (spec.input_price, spec.output_price)
        for p, spec in zip(served.devnet.providers, GATEWAY_PROVIDERS, strict=True)
    }


def client(served: Served) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=served.base_url, api_key=API_KEY, max_retries=0, timeout=TIMEOUT)


def expected_text(body: dict[str, Any], *, stream: bool = False) -> str | None:
    """What the simulated model says to ``body`` as the provider receives it (it forces include_usage)."""
    if stream:
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    return synth.complete(body).text


class TestChat:
    async def test_async_chat_reply_is_the_models_text(self, serve: ServeFactory) -> None:
        """A plain async chat comes back whole: the simulated model's text for exactly the body sent."""
        served = await serve()
        async with client(served) as sdk:
            reply = await sdk.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        choice = reply.choices[0]
        assert choice.message.role == "assistant"
        assert choice.message.content == expected_text({"messages": MESSAGES, "model": CHAT_MODEL})
        assert choice.finish_reason == "stop"
        assert reply.object == "chat.completion"
        assert reply.model == CHAT_MODEL
        assert reply.usage is not None
        assert reply.usage.completion_tokens == synth.DEFAULT_COMPLETION_TOKENS
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    async def test_sync_client_chat_and_stream(self, serve: ServeFactory) -> None:
        """The synchronous client gets the same reply and stream as the async one."""
        served = await serve()

        def run() -> tuple[str | None, str]:
            with openai.OpenAI(
                base_url=served.base_url, api_key=API_KEY, max_retries=0, timeout=TIMEOUT
            ) as sdk:
                reply = sdk.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
                with sdk.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True) as stream:
                    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            return reply.choices[0].message.content, text

        content, streamed = await asyncio.wait_for(asyncio.to_thread(run), TIMEOUT)
        body = {"messages": MESSAGES, "model": CHAT_MODEL}
        assert content == expected_text(body)
        assert streamed == expected_text(body, stream=True)

    async def test_max_tokens_reaches_the_provider(self, serve: ServeFactory) -> None:
        """Request parameters pass through untouched: max_tokens=5 gives five completion tokens."""
        served = await serve()
        async with client(served) as sdk:
            reply = await sdk.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=5)
        assert reply.usage is not None
        assert reply.usage.completion_tokens == 5
        content = reply.choices[0].message.content
        assert content is not None
        assert len(content.split()) == 5


class TestStreaming:
    async def test_stream_reassembles_the_models_text_and_ends_with_usage(self, serve: ServeFactory) -> None:
        """Chunks arrive in order, rebuild the model's text, finish with stop, then a usage-only chunk."""
        served = await serve()
        async with client(served) as sdk:
            stream = await sdk.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True)
            chunks = [chunk async for chunk in stream]
        with_choices = [c for c in chunks if c.choices]
        assert len(with_choices) > 2
        assert with_choices[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in with_choices)
        assert text == expected_text({"messages": MESSAGES, "model": CHAT_MODEL}, stream=True)
        assert [c.choices[0].finish_reason for c in with_choices][-1] == "stop"
        assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
        last = chunks[-1]
        assert last.choices == []
        assert last.usage is not None
        assert last.usage.completion_tokens == len(text.split())
        assert {c.id for c in chunks} == {chunks[0].id}
        assert all(c.object == "chat.completion.chunk" for c in chunks)

    async def test_same_stream_request_streams_the_same_text(self, serve: ServeFactory) -> None:
        """The simulator is deterministic, so two identical streamed requests give identical text."""
        served = await serve()
        texts = []
        async with client(served) as sdk:
            for _ in range(2):
                stream = await sdk.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True)
                texts.append("".join([c.choices[0].delta.content or "" async for c in stream if c.choices]))
        assert texts[0] == texts[1]
        assert texts[0]

    async def test_stream_headers_name_the_provider(self, serve: ServeFactory) -> None:
        """A streamed reply is an event stream whose headers name the provider and carry the request id."""
        served = await serve()
        async with client(served) as sdk:
            raw = await sdk.chat.completions.with_raw_response.create(
                model=CHAT_MODEL, messages=MESSAGES, stream=True
            )
            stream = raw.parse()
            chunks = [c async for c in stream]
        assert raw.headers["content-type"].startswith("text/event-stream")
        assert raw.headers["x-zg-provider"] in chat_addresses(served)
        assert raw.headers["x-zg-attempts"] == "1"
        assert raw.headers["zg-res-key"]
        assert HEX_ID.match(raw.headers["x-request-id"])
        assert chunks[-1].usage is not None

    async def test_stream_closed_early_frees_the_slot(self, serve: ServeFactory) -> None:
        """Leaving a stream after its first chunk ends it at the gateway (499) and frees the provider slot."""
        served = await serve()
        for index in range(CHAT_PROVIDERS):
            await served.set_faults(index, chunk_delay=0.05)
        finished: asyncio.Queue[RequestFinished] = asyncio.Queue()
        served.router.subscribe(lambda e: finished.put_nowait(e) if isinstance(e, RequestFinished) else None)
        async with client(served) as sdk:
            stream = await sdk.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True)
            async for _ in stream:
                break
            await stream.close()
            event = await asyncio.wait_for(finished.get(), TIMEOUT)
            assert (event.status, event.stream, event.error) == (499, True, "the caller closed the stream")
            assert in_flight(served.router) == 0
            # The same client still works afterwards.
            reply = await sdk.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        assert reply.choices[0].message.content


class TestTools:
    async def test_tool_call_reply(self, serve: ServeFactory) -> None:
        """With a tool offered, the reply is one call to that tool with JSON arguments."""
        served = await serve()
        async with client(served) as sdk:
            reply = await sdk.chat.completions.create(
                model=CHAT_MODEL, messages=MESSAGES, tools=[WEATHER_TOOL]
            )
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls"
        calls = choice.message.tool_calls
        assert calls is not None
        assert len(calls) == 1
        assert calls[0].type == "function"
        assert calls[0].function.name == "get_weather"
        assert calls[0].id.startswith("call_")
        assert set(json.loads(calls[0].function.arguments)) == {"city"}

    async def test_streamed_tool_call(self, serve: ServeFactory) -> None:
        """A streamed tool call arrives as tool_call deltas and ends with finish_reason tool_calls."""
        served = await serve()
        async with client(served) as sdk:
            stream = await sdk.chat.completions.create(
                model=CHAT_MODEL, messages=MESSAGES, tools=[WEATHER_TOOL], stream=True
            )
            chunks = [c async for c in stream]
        deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
        assert deltas
        assert {d.index for d in deltas} == {0}
        names = "".join(d.function.name or "" for d in deltas if d.function)
        arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
        assert names == "get_weather"
        assert set(json.loads(arguments)) == {"city"}
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finishes == ["tool_calls"]
        assert chunks[-1].usage is not None


class TestResponseFormat:
    async def test_json_object_reply_parses_as_json(self, serve: ServeFactory) -> None:
        """response_format json_object gives content that parses as a JSON object."""
        served = await serve()
        async with client(served) as sdk:
            reply = await sdk.chat.completions.create(
                model=CHAT_MODEL, messages=MESSAGES, response_format={"type": "json_object"}
            )
        content = reply.choices[0].message.content
        assert content is not None
        parsed = json.loads(content)
        assert isinstance(parsed, dict)
        assert isinstance(parsed["answer"], str)
        assert parsed["answer"]


class TestOtherEndpoints:
    async def test_embeddings(self, serve: ServeFactory) -> None:
        """Embeddings come back one vector per input, in order, from the embedding provider."""
        served = await serve()
        inputs = ["the first text", "second"]
        async with client(served) as sdk:
            raw = await sdk.embeddings.with_raw_response.create(model="embed-r", input=inputs)
        reply = raw.parse()
        assert [d.index for d in reply.data] == [0, 1]
        assert all(len(d.embedding) == synth.EMBEDDING_DIMENSIONS for d in reply.data)
        assert reply.data[0].embedding != reply.data[1].embedding
        assert reply.model == "embed-r"
        assert reply.usage.prompt_tokens == 4
        embedder = served.devnet.providers[3]
        assert raw.headers["x-zg-provider"] == embedder.address
        assert raw.headers["x-zg-cost"] == str(4 * embedder.spec.input_price)

    async def test_image_generation(self, serve: ServeFactory) -> None:
        """An image request gives b64_json PNG data, billed per picture at the output price."""
        served = await serve()
        async with client(served) as sdk:
            raw = await sdk.images.with_raw_response.generate(model="image-r", prompt="a red cat", n=2)
        reply = raw.parse()
        assert reply.data is not None
        assert len(reply.data) == 2
        pictures = [base64.b64decode(d.b64_json or "") for d in reply.data]
        assert all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pictures)
        assert pictures[0] != pictures[1]
        painter = served.devnet.providers[4]
        assert raw.headers["x-zg-provider"] == painter.address
        assert raw.headers["x-zg-cost"] == str(2 * painter.spec.output_price)

    async def test_audio_transcription(self, serve: ServeFactory) -> None:
        """A multipart audio upload is transcribed by the speech-to-text provider."""
        served = await serve()
        async with client(served) as sdk:
            raw = await sdk.audio.transcriptions.with_raw_response.create(
                model="whisper-r", file=("a.wav", WAV, "audio/wav")
            )
        reply = raw.parse()
        assert reply.text == synth.transcription_text(WAV)
        assert len(reply.text.split()) == 3
        assert raw.headers["x-zg-provider"] == served.devnet.providers[5].address
        assert raw.headers["zg-res-key"]

    async def test_sync_client_on_every_endpoint(self, serve: ServeFactory) -> None:
        """The synchronous client works for embeddings, images, transcriptions and the model list."""
        served = await serve()

        def run() -> tuple[int, int, str, set[str]]:
            with openai.OpenAI(
                base_url=served.base_url, api_key=API_KEY, max_retries=0, timeout=TIMEOUT
            ) as sdk:
                vectors = sdk.embeddings.create(model="embed-r", input=["one", "two", "three"])
                images = sdk.images.generate(model="image-r", prompt="a boat")
                words = sdk.audio.transcriptions.create(model="whisper-r", file=("a.wav", WAV, "audio/wav"))
                models = {m.id for m in sdk.models.list()}
            return len(vectors.data), len(images.data or []), words.text, models

        vectors, images, text, models = await asyncio.wait_for(asyncio.to_thread(run), TIMEOUT)
        assert vectors == 3
        assert images == 1
        assert text == synth.transcription_text(WAV)
        assert models == {CHAT_MODEL, "embed-r", "image-r", "whisper-r"}


class TestModels:
    async def test_models_list_has_every_model_and_zg_fields(self, serve: ServeFactory) -> None:
        """The model list names each devnet model with its provider count, price range and details."""
        served = await serve()
        async with client(served) as sdk:
            page = await sdk.models.list()
        models = {m.id: m.to_dict() for m in page.data}
        assert set(models) == {CHAT_MODEL, "embed-r", "image-r", "whisper-r"}
        chat = models[CHAT_MODEL]
        assert chat["object"] == "model"
        assert chat["owned_by"] == "0g-compute"
        assert chat["providers"] == CHAT_PROVIDERS
        assert chat["available"] == CHAT_PROVIDERS
        assert chat["service_types"] == ["chatbot"]
        assert chat["pricing"] == {
            "prompt": {"min": "1000000000", "max": "3000000000"},
            "completion": {"min": "2000000000", "max": "4000000000"},
        }
        assert chat["tee"] is True
        details = {d["id"]: d for d in chat["provider_details"]}
        assert set(details) == chat_addresses(served)
        for address, (prompt, completion) in prices(served).items():
            if address in details:
                assert details[address]["pricing"] == {"prompt": str(prompt), "completion": str(completion)}
                assert details[address]["kind"] == "chain"
                assert details[address]["limits"]["max_concurrent"] == 5
        kinds = {name: models[name]["service_types"] for name in ("embed-r", "image-r", "whisper-r")}
        assert kinds == {
            "embed-r": ["embedding"],
            "image-r": ["text-to-image"],
            "whisper-r": ["speech-to-text"],
        }
        assert all(models[name]["providers"] == 1 for name in kinds)


class TestHeaders:
    async def test_headers_name_provider_cost_and_keys(self, serve: ServeFactory) -> None:
        """x-zg-provider is a chat provider and x-zg-cost is its prices times the reply's token counts."""
        served = await serve()
        table = prices(served)
        async with client(served) as sdk:
            for _ in range(6):
                raw = await sdk.chat.completions.with_raw_response.create(model=CHAT_MODEL, messages=MESSAGES)
                reply = raw.parse()
                provider = raw.headers["x-zg-provider"]
                assert provider in chat_addresses(served)
                assert reply.usage is not None
                input_price, output_price = table[provider]
                cost = reply.usage.prompt_tokens * input_price + reply.usage.completion_tokens * output_price
                assert raw.headers["x-zg-cost"] == str(cost)
                assert raw.headers["x-zg-attempts"] == "1"
                # The provider's chat key, which the reply's id is built from.
                assert raw.headers["zg-res-key"]
                assert reply.id == "chatcmpl-" + raw.headers["zg-res-key"]
                assert HEX_ID.match(raw.headers["x-request-id"])

    async def test_request_ids_are_fresh_per_request(self, serve: ServeFactory) -> None:
        """Without an X-Request-Id each request gets its own new id."""
        served = await serve()
        async with client(served) as sdk:
            ids = set()
            for _ in range(3):
                raw = await sdk.chat.completions.with_raw_response.create(model=CHAT_MODEL, messages=MESSAGES)
                ids.add(raw.headers["x-request-id"])
        assert len(ids) == 3

    @pytest.mark.parametrize("request_id", ["trace-01.abc:XYZ_9", "a", "x" * 128])
    async def test_valid_request_id_is_echoed(self, serve: ServeFactory, request_id: str) -> None:
        """A valid X-Request-Id from the client is echoed back unchanged."""
        served = await serve()
        async with client(served) as sdk:
            raw = await sdk.chat.completions.with_raw_response.create(
                model=CHAT_MODEL, messages=MESSAGES, extra_headers={"X-Request-Id": request_id}
            )
        assert raw.headers["x-request-id"] == request_id

    @pytest.mark.parametrize("request_id", ["has space", "x" * 129, "semi;colon", "slash/id"])
    async def test_invalid_request_id_is_replaced(self, serve: ServeFactory, request_id: str) -> None:
        """An X-Request-Id that is too long or has odd characters is replaced by a fresh id."""
        served = await serve()
        async with client(served) as sdk:
            raw = await sdk.chat.completions.with_raw_response.create(
                model=CHAT_MODEL, messages=MESSAGES, extra_headers={"X-Request-Id": request_id}
            )
        assert HEX_ID.match(raw.headers["x-request-id"])

    async def test_request_id_is_echoed_on_every_endpoint(self, serve: ServeFactory) -> None:
        """Embeddings, images, transcriptions and the model list echo the client's request id too."""
        served = await serve()
        headers = {"X-Request-Id": "rid-every-endpoint"}
        async with client(served) as sdk:
            raws = [
                await sdk.embeddings.with_raw_response.create(
                    model="embed-r", input="x", extra_headers=headers
                ),
                await sdk.images.with_raw_response.generate(
                    model="image-r", prompt="p", extra_headers=headers
                ),
                await sdk.audio.transcriptions.with_raw_response.create(
                    model="whisper-r", file=("a.wav", WAV, "audio/wav"), extra_headers=headers
                ),
                await sdk.models.with_raw_response.list(extra_headers=headers),
            ]
        assert [r.headers["x-request-id"] for r in raws] == ["rid-every-endpoint"] * 4
