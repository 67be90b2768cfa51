"""The in-process library API (``Router.chat``, ``stream_chat``, ``embeddings``, ``models``): no HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from router.client import Router
from router.devnet.simulator import synth
from router.errors import InvalidRequest, NoProviderAvailable, RequestFailed, UpstreamRejected
from router.observability.events import Event, RequestFinished
from tests.gateway.conftest import CHAT_MODEL, CHAT_PROVIDERS, GATEWAY_PROVIDERS, Served, ServeFactory
from tests.gateway.support import TIMEOUT
from tests.support import in_flight

MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": "hello from the library"}]


def chat_addresses(served: Served) -> set[str]:
    return {p.address for p in served.devnet.providers[:CHAT_PROVIDERS]}


def record(router: Router) -> list[RequestFinished]:
    """Every request the router finishes from now on."""
    finished: list[RequestFinished] = []

    def observe(event: Event) -> None:
        if isinstance(event, RequestFinished):
            finished.append(event)

    router.subscribe(observe)
    return finished


def no_slot_taken(router: Router) -> bool:
    return in_flight(router) == 0


class TestChat:
    async def test_chat_returns_the_completion_dict(self, serve: ServeFactory) -> None:
        """router.chat returns the chat.completion object as a dict, with the model's text and usage."""
        served = await serve()
        reply = await asyncio.wait_for(served.router.chat(model=CHAT_MODEL, messages=MESSAGES), TIMEOUT)
        assert reply["object"] == "chat.completion"
        assert reply["model"] == CHAT_MODEL
        choice = reply["choices"][0]
        assert choice["message"]["role"] == "assistant"
        assert (
            choice["message"]["content"] == synth.complete({"model": CHAT_MODEL, "messages": MESSAGES}).text
        )
        assert choice["finish_reason"] == "stop"
        assert reply["usage"]["completion_tokens"] == synth.DEFAULT_COMPLETION_TOKENS
        assert no_slot_taken(served.router)

    async def test_chat_passes_parameters(self, serve: ServeFactory) -> None:
        """Extra keyword arguments (max_tokens, tools) reach the provider."""
        served = await serve()
        short = await served.router.chat(model=CHAT_MODEL, messages=MESSAGES, max_tokens=3)
        assert short["usage"]["completion_tokens"] == 3
        tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
        called = await served.router.chat(model=CHAT_MODEL, messages=MESSAGES, tools=[tool])
        assert called["choices"][0]["finish_reason"] == "tool_calls"
        assert called["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "lookup"

    async def test_chat_reports_provider_and_cost_to_observers(self, serve: ServeFactory) -> None:
        """Each library call is reported once, with the provider that served it and its cost."""
        served = await serve()
        finished = record(served.router)
        reply = await served.router.chat(model=CHAT_MODEL, messages=MESSAGES)
        assert len(finished) == 1
        event = finished[0]
        assert event.status == 200
        assert event.provider in chat_addresses(served)
        index = [p.address for p in served.devnet.providers].index(event.provider)
        spec = GATEWAY_PROVIDERS[index]
        usage = reply["usage"]
        assert (
            event.cost
            == usage["prompt_tokens"] * spec.input_price + usage["completion_tokens"] * spec.output_price
        )


class TestStreamChat:
    async def test_stream_chat_yields_chunks_and_ends(self, serve: ServeFactory) -> None:
        """stream_chat yields chunk dicts that rebuild the text, ends with a usage chunk, then stops."""
        served = await serve()
        chunks = []
        async with asyncio.timeout(TIMEOUT):
            async for chunk in served.router.stream_chat(model=CHAT_MODEL, messages=MESSAGES):
                chunks.append(chunk)
        assert all(isinstance(c, dict) for c in chunks)
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        body = {
            "model": CHAT_MODEL,
            "messages": MESSAGES,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        assert text == synth.complete(body).text
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"]["completion_tokens"] == synth.DEFAULT_COMPLETION_TOKENS
        assert no_slot_taken(served.router)

    async def test_stream_left_early_frees_its_slot(self, serve: ServeFactory) -> None:
        """Closing stream_chat after one chunk ends the call (499) and frees the provider slot at once."""
        served = await serve()
        finished = record(served.router)
        stream = served.router.stream_chat(model=CHAT_MODEL, messages=MESSAGES)
        async with contextlib.aclosing(stream):
            first = await asyncio.wait_for(anext(stream), TIMEOUT)
            assert first["choices"][0]["delta"]["role"] == "assistant"
            assert not no_slot_taken(served.router)
        assert no_slot_taken(served.router)
        assert [(e.status, e.stream) for e in finished] == [(499, True)]


class TestEmbeddings:
    async def test_embeddings_returns_vectors(self, serve: ServeFactory) -> None:
        """router.embeddings returns one vector per input as the OpenAI list object."""
        served = await serve()
        reply = await asyncio.wait_for(
            served.router.embeddings(model="embed-r", input=["alpha", "beta gamma"]), TIMEOUT
        )
        assert reply["object"] == "list"
        assert [d["index"] for d in reply["data"]] == [0, 1]
        assert all(len(d["embedding"]) == synth.EMBEDDING_DIMENSIONS for d in reply["data"])
        assert reply["usage"]["prompt_tokens"] == 3

    async def test_single_string_input(self, serve: ServeFactory) -> None:
        """A single string is one embedding."""
        served = await serve()
        reply = await served.router.embeddings(model="embed-r", input="just one")
        assert len(reply["data"]) == 1


class TestModels:
    async def test_models_lists_every_devnet_model(self, serve: ServeFactory) -> None:
        """router.models() lists the four devnet models with their provider counts."""
        served = await serve()
        catalog = {m["id"]: m for m in served.router.models()}
        assert {name: m["providers"] for name, m in catalog.items()} == {
            "embed-r": 1,
            "image-r": 1,
            CHAT_MODEL: CHAT_PROVIDERS,
            "whisper-r": 1,
        }
        assert {d["id"] for d in catalog[CHAT_MODEL]["provider_details"]} == chat_addresses(served)


class TestErrors:
    async def test_unknown_model_raises_invalid_request_404(self, serve: ServeFactory) -> None:
        """An unknown model raises InvalidRequest with status 404 and code model_not_found."""
        served = await serve()
        with pytest.raises(InvalidRequest) as caught:
            await served.router.chat(model="no-such-model", messages=MESSAGES)
        error = caught.value
        assert (error.status, error.code, error.param) == (404, "model_not_found", "model")
        assert (
            error.message == "model 'no-such-model' does not exist; GET /v1/models lists the models on offer"
        )

    async def test_unknown_model_on_stream_raises_at_first_chunk(self, serve: ServeFactory) -> None:
        """stream_chat for an unknown model raises InvalidRequest 404 when iterated."""
        served = await serve()
        stream = served.router.stream_chat(model="no-such-model", messages=MESSAGES)
        async with contextlib.aclosing(stream):
            with pytest.raises(InvalidRequest) as caught:
                await anext(stream)
        assert caught.value.status == 404

    async def test_model_of_another_endpoint(self, serve: ServeFactory) -> None:
        """A chat model asked for embeddings raises InvalidRequest 404 naming the endpoint."""
        served = await serve()
        with pytest.raises(InvalidRequest) as caught:
            await served.router.embeddings(model=CHAT_MODEL, input="x")
        assert caught.value.status == 404
        assert caught.value.message == "model 'model-r' is not served on embeddings"

    async def test_provider_rejection_raises_upstream_rejected(self, serve: ServeFactory) -> None:
        """A request the provider refuses as malformed raises UpstreamRejected with its status and body
        (token ids pass the router's checks; the simulated provider takes only strings)."""
        served = await serve()
        with pytest.raises(UpstreamRejected) as caught:
            await served.router.embeddings(model="embed-r", input=[101, 102])
        assert caught.value.status == 400
        assert (
            caught.value.body
            == b'{"error": "invalid request body: input must be a string or a list of strings"}'
        )

    async def test_bad_preferences_raise_invalid_request(self, serve: ServeFactory) -> None:
        """Bad provider= preferences raise InvalidRequest 400 with the param, before any provider is asked."""
        served = await serve()
        with pytest.raises(InvalidRequest) as caught:
            await served.router.chat(model=CHAT_MODEL, messages=MESSAGES, provider={"sort": "fastest"})
        assert (caught.value.status, caught.value.param) == (400, "provider.sort")

    async def test_errors_are_request_failed(self, serve: ServeFactory) -> None:
        """Every library error a caller sees is a RequestFailed carrying an HTTP status."""
        served = await serve()
        with pytest.raises(RequestFailed) as caught:
            await served.router.chat(
                model=CHAT_MODEL, messages=MESSAGES, provider={"only": ["0x" + "00" * 20]}
            )
        assert isinstance(caught.value, NoProviderAvailable)
        assert (caught.value.status, caught.value.code) == (503, "no_matching_provider")


class TestPreferences:
    async def test_provider_kwarg_pins(self, serve: ServeFactory) -> None:
        """provider={"order": [addr], "allow_fallbacks": False} sends every call to that provider."""
        served = await serve()
        finished = record(served.router)
        pinned = served.devnet.providers[1].address
        for _ in range(5):
            await served.router.chat(
                model=CHAT_MODEL, messages=MESSAGES, provider={"order": [pinned], "allow_fallbacks": False}
            )
        assert [e.provider for e in finished] == [pinned] * 5

    async def test_provider_kwarg_on_streams_and_embeddings(self, serve: ServeFactory) -> None:
        """provider= works on stream_chat (ignore) and embeddings too, and is not sent to the provider."""
        served = await serve()
        finished = record(served.router)
        ignored = [p.address for p in served.devnet.providers[:2]]
        chunks = [
            c
            async for c in served.router.stream_chat(
                model=CHAT_MODEL, messages=MESSAGES, provider={"ignore": ignored}
            )
        ]
        assert chunks[-1]["usage"]
        # The simulator seeds its text on the body it receives: the same text means `provider` was stripped.
        body = {
            "model": CHAT_MODEL,
            "messages": MESSAGES,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert text == synth.complete(body).text
        await served.router.embeddings(model="embed-r", input="x", provider={"sort": "price"})
        assert [e.provider for e in finished] == [
            served.devnet.providers[2].address,
            served.devnet.providers[3].address,
        ]

    async def test_sort_price_kwarg(self, serve: ServeFactory) -> None:
        """provider={"sort": "price"} picks the cheapest chat provider while idle."""
        served = await serve()
        finished = record(served.router)
        for _ in range(5):
            await served.router.chat(model=CHAT_MODEL, messages=MESSAGES, provider={"sort": "price"})
        assert [e.provider for e in finished] == [served.devnet.providers[0].address] * 5
