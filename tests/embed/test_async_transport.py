"""The unmodified openai SDK on ``router.openai_client()``: every gateway route served in-process, with
the gateway's receipts and errors, and no socket between the SDK and the router."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
import httpx2
import openai
import pydantic
import pytest

from router.client import Router
from router.config import RouterConfig
from router.devnet import Devnet
from router.devnet.simulator import synth
from router.embed.sdk import BASE_URL
from router.request import Endpoint
from tests.gateway.conftest import CHAT_MODEL, CHAT_PROVIDERS
from tests.gateway.support import HEX_ID, TIMEOUT, WAV, WEATHER_TOOL
from tests.gateway.support import TALK as MESSAGES
from tests.support import in_flight

HOST = BASE_URL.removesuffix("/v1")


class Answer(pydantic.BaseModel):
    answer: str


def chat_addresses(devnet: Devnet) -> set[str]:
    return {p.address for p in devnet.providers[:CHAT_PROVIDERS]}


def expected_text(body: dict[str, Any], *, stream: bool = False) -> str | None:
    """What the simulated model says to ``body`` as the provider receives it (it forces include_usage)."""
    if stream:
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    return synth.complete(body).text


class TestChat:
    async def test_chat_reply_is_the_models_text_with_receipts(
        self, embedded: Router, gateway_devnet: Devnet
    ) -> None:
        """A chat completion through the in-process client is the model's text, and its raw response
        carries the gateway's receipts: provider, attempts, cost, request id."""
        async with embedded.openai_client() as sdk:
            raw = await sdk.chat.completions.with_raw_response.create(model=CHAT_MODEL, messages=MESSAGES)
        reply = raw.parse()
        assert reply.choices[0].message.content == expected_text({"model": CHAT_MODEL, "messages": MESSAGES})
        assert raw.headers["x-zg-provider"] in chat_addresses(gateway_devnet)
        assert raw.headers["x-zg-attempts"] == "1"
        assert HEX_ID.match(raw.headers["x-request-id"])
        assert int(raw.headers["x-zg-cost"]) > 0
        assert raw.headers["zg-res-key"] == raw.headers["x-zg-chat-id"]
        assert in_flight(embedded) == 0

    async def test_client_request_id_is_echoed(self, embedded: Router) -> None:
        """A sane X-Request-Id from the caller is the request's id, as at the gateway."""
        async with embedded.openai_client() as sdk:
            raw = await sdk.chat.completions.with_raw_response.create(
                model=CHAT_MODEL, messages=MESSAGES, extra_headers={"X-Request-Id": "trace-42"}
            )
        assert raw.headers["x-request-id"] == "trace-42"

    async def test_stream_reassembles_the_text_and_ends_with_usage(self, embedded: Router) -> None:
        """A stream arrives chunk by chunk through the transport and reads to the model's whole text."""
        async with embedded.openai_client() as sdk:
            stream = await sdk.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True)
            chunks = [chunk async for chunk in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == expected_text({"model": CHAT_MODEL, "messages": MESSAGES}, stream=True)
        assert len(chunks) > 2
        assert chunks[-1].usage is not None
        assert in_flight(embedded) == 0

    async def test_stream_headers_carry_receipts(self, embedded: Router, gateway_devnet: Devnet) -> None:
        """A streamed reply's headers name the provider and the request, as the gateway's do."""
        async with embedded.openai_client() as sdk:
            raw = await sdk.chat.completions.with_raw_response.create(
                model=CHAT_MODEL, messages=MESSAGES, stream=True
            )
            async with raw.parse() as stream:
                chunks = [chunk async for chunk in stream]
        assert raw.headers["content-type"] == "text/event-stream"
        assert raw.headers["x-zg-provider"] in chat_addresses(gateway_devnet)
        assert HEX_ID.match(raw.headers["x-request-id"])
        assert chunks

    async def test_stream_closed_early_frees_its_slot(self, embedded: Router, gateway_devnet: Devnet) -> None:
        """Closing a stream after its first chunk ends it at once: the provider slot it held is free
        again (the provider still had chunks to send), and the same client keeps working."""
        for provider in gateway_devnet.providers[:CHAT_PROVIDERS]:
            faults = provider.simulator.faults.faults
            await provider.simulator.set_faults(type(faults)(chunk_delay=0.05))
        async with embedded.openai_client() as sdk:
            stream = await sdk.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True)
            async for _ in stream:
                break
            assert in_flight(embedded) == 1
            await stream.close()
            assert in_flight(embedded) == 0
            assert embedded.queued == 0
            reply = await sdk.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        assert reply.choices[0].message.content

    async def test_fifty_concurrent_requests_all_succeed(self, embedded: Router) -> None:
        """Fifty requests at once through one client (ten times the providers' concurrency) all finish
        with the model's text, each with its own request id, and leave no slot taken."""
        async with embedded.openai_client() as sdk:

            async def one(index: int) -> tuple[str | None, str]:
                messages: list[Any] = [{"role": "user", "content": f"question {index}"}]
                raw = await sdk.chat.completions.with_raw_response.create(model=CHAT_MODEL, messages=messages)
                return raw.parse().choices[0].message.content, raw.headers["x-request-id"]

            results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(50))), TIMEOUT)
        for index, (text, _) in enumerate(results):
            messages = [{"role": "user", "content": f"question {index}"}]
            assert text == expected_text({"model": CHAT_MODEL, "messages": messages})
        assert len({request_id for _, request_id in results}) == 50
        assert in_flight(embedded) == 0


class TestToolsAndStructuredOutput:
    async def test_tool_call_reply(self, embedded: Router) -> None:
        """With a tool offered, the reply is one call to that tool with JSON arguments."""
        async with embedded.openai_client() as sdk:
            reply = await sdk.chat.completions.create(
                model=CHAT_MODEL, messages=MESSAGES, tools=[WEATHER_TOOL]
            )
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls"
        calls = choice.message.tool_calls
        assert calls is not None
        functions = [call.function for call in calls if call.type == "function"]
        assert [function.name for function in functions] == ["get_weather"]
        assert isinstance(json.loads(functions[0].arguments), dict)

    async def test_parse_with_a_pydantic_model(self, embedded: Router) -> None:
        """chat.completions.parse sends the model's JSON schema and reads the reply into the model."""
        async with embedded.openai_client() as sdk:
            reply = await sdk.chat.completions.parse(
                model=CHAT_MODEL, messages=MESSAGES, response_format=Answer
            )
        parsed = reply.choices[0].message.parsed
        assert isinstance(parsed, Answer)
        assert parsed.answer


class TestOtherEndpoints:
    async def test_embeddings(self, embedded: Router, gateway_devnet: Devnet) -> None:
        """Embeddings come back one vector per input from the embedding provider, with its receipt."""
        async with embedded.openai_client() as sdk:
            raw = await sdk.embeddings.with_raw_response.create(model="embed-r", input=["first text", "two"])
        reply = raw.parse()
        assert [d.index for d in reply.data] == [0, 1]
        assert all(len(d.embedding) == synth.EMBEDDING_DIMENSIONS for d in reply.data)
        assert raw.headers["x-zg-provider"] == gateway_devnet.providers[3].address

    async def test_image_generation(self, embedded: Router, gateway_devnet: Devnet) -> None:
        """An image request gives PNG data from the text-to-image provider."""
        async with embedded.openai_client() as sdk:
            raw = await sdk.images.with_raw_response.generate(model="image-r", prompt="a red cat", n=2)
        reply = raw.parse()
        assert reply.data is not None
        pictures = [base64.b64decode(d.b64_json or "") for d in reply.data]
        assert len(pictures) == 2
        assert all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pictures)
        assert raw.headers["x-zg-provider"] == gateway_devnet.providers[4].address

    async def test_audio_transcription(self, embedded: Router, gateway_devnet: Devnet) -> None:
        """A multipart upload built by the SDK is transcribed by the speech-to-text provider."""
        async with embedded.openai_client() as sdk:
            raw = await sdk.audio.transcriptions.with_raw_response.create(
                model="whisper-r", file=("a.wav", WAV, "audio/wav")
            )
        assert raw.parse().text == synth.transcription_text(WAV)
        assert raw.headers["x-zg-provider"] == gateway_devnet.providers[5].address

    async def test_model_list(self, embedded: Router) -> None:
        """The model list names every model on the devnet."""
        async with embedded.openai_client() as sdk:
            page = await sdk.models.list()
        assert {m.id for m in page.data} == {CHAT_MODEL, "embed-r", "image-r", "whisper-r"}


class TestErrors:
    async def test_a_bad_field_is_the_sdks_bad_request_error(self, embedded: Router) -> None:
        """A field no provider would take is refused before any provider sees it, as the SDK's
        BadRequestError with the gateway's message, param and request id."""
        async with embedded.openai_client() as sdk:
            with pytest.raises(openai.BadRequestError) as caught:
                await sdk.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, temperature=7)
        error = caught.value
        assert error.status_code == 400
        assert error.param == "temperature"
        assert HEX_ID.match(error.response.headers["x-request-id"])
        assert error.response.headers["x-zg-attempts"] == "0"

    async def test_an_unknown_model_is_the_sdks_not_found_error(self, embedded: Router) -> None:
        """A model nobody serves is the SDK's NotFoundError, naming the model."""
        async with embedded.openai_client() as sdk:
            with pytest.raises(openai.NotFoundError) as caught:
                await sdk.chat.completions.create(model="no-such-model", messages=MESSAGES)
        assert "'no-such-model' does not exist" in caught.value.message
        assert caught.value.code == "model_not_found"

    async def test_a_closed_router_is_a_connection_error_saying_so(self, embed_config: RouterConfig) -> None:
        """A client used after its router closed (or before it opened) gets the SDK's connection error
        naming the cause, not a 500 from a router that is not there."""
        router = Router(embed_config)
        async with router:
            sdk = router.openai_client()
        with pytest.raises(openai.APIConnectionError) as caught:
            await sdk.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        assert "the router is not open" in str(caught.value.__cause__)
        await sdk.close()

    async def test_no_retries_by_default(self, embedded: Router) -> None:
        """The client does not retry what the router already retried (max_retries 0), unless told."""
        assert embedded.openai_client().max_retries == 0
        assert embedded.openai_client(max_retries=3).max_retries == 3


class TestTransport:
    async def test_every_gateway_route_is_served_without_a_socket(self, embedded: Router) -> None:
        """A plain httpx2 client on the transport reaches the probes and the API under the placeholder
        host (which no resolver knows: nothing here opens a connection), and gets the gateway's 404 and
        405 answers elsewhere. The admin API stays with the gateway: in-process, call the Router."""
        async with httpx2.AsyncClient(transport=embedded.httpx_transport(), base_url=BASE_URL) as http:
            health = await http.get(f"{HOST}/healthz")
            ready = await http.get(f"{HOST}/readyz")
            wrong_method = await http.post("/models")
            unknown = await http.get("/nowhere")
            admin = await http.get(f"{HOST}/admin/balance")
            paths = {f"/v1{e.path}" for e in Endpoint}
            answers = {path: (await http.get(f"{HOST}{path}")).status_code for path in paths}
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        assert ready.status_code == 200
        assert ready.json()["status"] == "ready"
        assert wrong_method.status_code == 405
        assert wrong_method.json()["error"]["code"] == "method_not_allowed"
        assert unknown.status_code == 404
        assert unknown.json()["error"]["message"] == "no route GET /v1/nowhere"
        assert admin.status_code == 404
        assert set(answers.values()) == {405}

    async def test_the_classic_httpx_package_is_served_too(self, embedded: Router) -> None:
        """Frameworks that hand around the classic ``httpx`` get the same transport in its flavour: a
        whole reply, and a stream read line by line until [DONE]."""
        body = {"model": CHAT_MODEL, "messages": MESSAGES}
        transport = embedded.httpx_transport(package="httpx")
        assert isinstance(transport, httpx.AsyncBaseTransport)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
            whole = await http.post(f"{BASE_URL}/chat/completions", json=body)
            async with http.stream(
                "POST", f"{BASE_URL}/chat/completions", json={**body, "stream": True}
            ) as s:
                lines = [line async for line in s.aiter_lines() if line]
        assert whole.status_code == 200
        assert whole.json()["choices"][0]["message"]["content"] == expected_text(body)
        assert whole.headers["x-zg-attempts"] == "1"
        assert lines[-1] == "data: [DONE]"
        assert in_flight(embedded) == 0
