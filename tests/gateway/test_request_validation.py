"""A request with a field of the wrong type or out of range is the caller's 400, before any provider sees
it: one caller's bad bodies cannot make providers fail and eject the pool for everyone (issue 13).

End to end on the devnet: the gateway's exact OpenAI errors, the providers' own counters unchanged, every
breaker closed afterwards, valid requests with every field still served, and user input quoted short.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from router.errors import InvalidRequest
from router.pool.health import BreakerState
from tests.gateway.conftest import CHAT_MODEL, GATEWAY_PROVIDERS, Served, ServeFactory
from tests.gateway.support import CHAT, MESSAGES, WAV, assert_error, sdk, send, transcription_form

EMBEDDINGS = "/v1/embeddings"
IMAGES = "/v1/images/generations"
BODIES = {
    CHAT: {"model": CHAT_MODEL, "messages": MESSAGES},
    EMBEDDINGS: {"model": "embed-r", "input": "x"},
    IMAGES: {"model": "image-r", "prompt": "a boat"},
}
# The bodies of the issue: before, each made every simulated provider answer 500.
ISSUE_FIELDS: list[dict[str, Any]] = [
    {"max_tokens": "abc"},
    {"tools": "x"},
    {"tools": [1]},
    {"response_format": "json"},
    {"max_tokens": [1]},
]

# (id, path, fields over the route's valid body, param, message)
BAD_REQUESTS = [
    ("max-tokens-string", CHAT, {"max_tokens": "abc"}, "max_tokens", "must be a positive integer, not 'abc'"),
    ("max-tokens-list", CHAT, {"max_tokens": [1]}, "max_tokens", "must be a positive integer, not a list"),
    ("max-tokens-zero", CHAT, {"max_tokens": 0}, "max_tokens", "must be a positive integer, not 0"),
    (
        "max-completion-tokens-bool",
        CHAT,
        {"max_completion_tokens": False},
        "max_completion_tokens",
        "must be a positive integer, not false",
    ),
    ("n-too-many", CHAT, {"n": 1000}, "n", "must be an integer from 1 to 128, not 1000"),
    ("temperature-high", CHAT, {"temperature": 3}, "temperature", "must be a number from 0 to 2, not 3"),
    ("top-p-string", CHAT, {"top_p": "0.5"}, "top_p", "must be a number from 0 to 1, not '0.5'"),
    (
        "stream-options-list",
        CHAT,
        {"stream_options": []},
        "stream_options",
        "must be an object, not an empty list",
    ),
    ("tools-string", CHAT, {"tools": "x"}, "tools", "must be a list of tools, not 'x'"),
    ("tools-of-numbers", CHAT, {"tools": [1]}, "tools[0]", "must be an object, not 1"),
    (
        "tool-name-with-a-space",
        CHAT,
        {"tools": [{"type": "function", "function": {"name": "get weather"}}]},
        "tools[0].function.name",
        "must be 1 to 64 letters, digits, underscores or dashes, not 'get weather'",
    ),
    (
        "tool-choice-unknown",
        CHAT,
        {"tool_choice": "always"},
        "tool_choice",
        "must be none, auto, required or an object naming a tool, not 'always'",
    ),
    (
        "response-format-string",
        CHAT,
        {"response_format": "json"},
        "response_format",
        "must be an object, not 'json'",
    ),
    (
        "json-schema-without-name",
        CHAT,
        {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
        "response_format.json_schema.name",
        "is required and must be a non-empty string",
    ),
    (
        "message-of-an-unknown-role",
        CHAT,
        {"messages": [*MESSAGES, *MESSAGES, {"role": "robot", "content": "hi"}]},
        "messages[2].role",
        "must be one of system, developer, user, assistant, tool, function, not 'robot'",
    ),
    (
        "content-part-string",
        CHAT,
        {"messages": [{"role": "user", "content": ["hi"]}]},
        "messages[0].content[0]",
        "must be an object, not 'hi'",
    ),
    (
        "tool-message-without-call-id",
        CHAT,
        {"messages": [{"role": "tool", "content": "42"}]},
        "messages[0].tool_call_id",
        "is required and must be a string",
    ),
    ("stop-number", CHAT, {"stop": 5}, "stop", "must be a string or a list of strings, not 5"),
    ("seed-string", CHAT, {"seed": "1"}, "seed", "must be an integer, not '1'"),
    (
        "top-logprobs-high",
        CHAT,
        {"top_logprobs": 99},
        "top_logprobs",
        "must be an integer from 0 to 20, not 99",
    ),
    ("user-number", CHAT, {"user": 5}, "user", "must be a string, not 5"),
    ("input-mixed", EMBEDDINGS, {"input": ["a", 1]}, "input[1]", "must be a non-empty string, not 1"),
    (
        "input-empty-list",
        EMBEDDINGS,
        {"input": []},
        "input",
        "must be a non-empty string or a non-empty list, not an empty list",
    ),
    ("dimensions-zero", EMBEDDINGS, {"dimensions": 0}, "dimensions", "must be a positive integer, not 0"),
    (
        "encoding-format-unknown",
        EMBEDDINGS,
        {"encoding_format": "hex"},
        "encoding_format",
        "must be one of float, base64, not 'hex'",
    ),
    ("prompt-empty", IMAGES, {"prompt": ""}, "prompt", "must be a non-empty string, not ''"),
    ("images-n-high", IMAGES, {"n": 11}, "n", "must be an integer from 1 to 10, not 11"),
    ("images-size-number", IMAGES, {"size": 512}, "size", "must be a string, not 512"),
    (
        "images-response-format-unknown",
        IMAGES,
        {"response_format": "png"},
        "response_format",
        "must be one of url, b64_json, not 'png'",
    ),
]


async def provider_counters(served: Served) -> list[tuple[int, dict[str, int]]]:
    """Every provider's (served, refused by status): what providers saw of our requests."""
    counters = []
    for index in range(len(GATEWAY_PROVIDERS)):
        stats = await served.stats(index)
        counters.append((stats["served"], stats["refused"]))
    return counters


def assert_pool_healthy(served: Served) -> None:
    for state in served.router.pool:
        assert state.health.state is BreakerState.CLOSED, state
        assert state.health.error_rate == 0, state


async def post_json(served: Served, path: str, body: dict[str, Any]) -> Any:
    headers = {**served.auth(), "Content-Type": "application/json"}
    return await send(served, "POST", path, data=json.dumps(body).encode(), headers=headers)


class TestBadFields:
    @pytest.mark.parametrize(
        ("path", "fields", "param", "message"),
        [case[1:] for case in BAD_REQUESTS],
        ids=[case[0] for case in BAD_REQUESTS],
    )
    async def test_a_bad_field_is_a_400_no_provider_sees(
        self, serve: ServeFactory, path: str, fields: dict[str, Any], param: str, message: str
    ) -> None:
        """The exact OpenAI 400 naming the field; no attempt, and no provider's counter moves."""
        served = await serve()
        before = await provider_counters(served)
        answer = await post_json(served, path, {**BODIES[path], **fields})
        assert_error(answer, 400, "invalid_request_error", f"`{param}` {message}", param=param)
        assert answer.headers["x-zg-attempts"] == "0"
        assert await provider_counters(served) == before

    @pytest.mark.parametrize(
        ("fields", "param", "message"),
        [
            (
                {"response_format": "xml"},
                "response_format",
                "`response_format` must be one of json, text, srt, verbose_json, vtt, not 'xml'",
            ),
            ({"temperature": "3"}, "temperature", "`temperature` must be a number from 0 to 1, not '3'"),
        ],
        ids=["format", "temperature"],
    )
    async def test_a_bad_transcription_field_is_a_400(
        self, serve: ServeFactory, fields: dict[str, str], param: str, message: str
    ) -> None:
        served = await serve()
        before = await provider_counters(served)
        form = transcription_form(model="whisper-r", file=WAV, **fields)
        answer = await send(served, "POST", "/v1/audio/transcriptions", data=form, headers=served.auth())
        assert_error(answer, 400, "invalid_request_error", message, param=param)
        assert await provider_counters(served) == before

    async def test_the_issues_bodies_cannot_eject_the_pool(self, serve: ServeFactory) -> None:
        """Each of the issue's bodies, three times over: all 400s, every breaker stays closed, no provider
        counts a failure, and the next caller is served."""
        served = await serve()
        before = await provider_counters(served)
        for _ in range(3):
            for fields in ISSUE_FIELDS:
                answer = await post_json(served, CHAT, {**BODIES[CHAT], **fields})
                assert answer.status == 400, answer.text
        assert await provider_counters(served) == before
        assert_pool_healthy(served)
        async with sdk(served) as client:
            reply = await client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        assert reply.choices[0].message.content

    async def test_the_library_checks_the_same_fields(self, serve: ServeFactory) -> None:
        """``Router.chat`` raises the gateway's 400 for a bad field; no provider sees it."""
        served = await serve()
        before = await provider_counters(served)
        with pytest.raises(InvalidRequest) as caught:
            await served.router.chat(model=CHAT_MODEL, messages=MESSAGES, max_tokens="abc")
        assert (caught.value.status, caught.value.param) == (400, "max_tokens")
        with pytest.raises(InvalidRequest) as caught:
            await served.router.embeddings(model="embed-r", input=[])
        assert caught.value.param == "input"
        assert await provider_counters(served) == before


WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": False,
    },
}


class TestValidFields:
    async def test_the_sdk_with_every_chat_field_is_served(self, serve: ServeFactory) -> None:
        """Tools, tool choice, a JSON schema, sampling knobs, stop words, seed, logprobs and user: a 200."""
        served = await serve()
        async with sdk(served) as client:
            called, answered = await self._ask_for_weather(client)
        call = called.choices[0].message.tool_calls
        assert call is not None
        assert call[0].function.name == "get_weather"
        assert "answer" in json.loads(answered.choices[0].message.content or "")

    @staticmethod
    async def _ask_for_weather(client: openai.AsyncOpenAI) -> tuple[Any, Any]:
        """A tool call forced by tool_choice, then its result sent back with a JSON schema to answer in."""
        called = await client.chat.completions.create(
            model=CHAT_MODEL,
            messages=[
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "weather in Paris?"}]},
            ],
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            parallel_tool_calls=False,
            max_completion_tokens=8,
            temperature=0.7,
            top_p=0.9,
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            n=1,
            stop=["\n\n"],
            seed=42,
            logprobs=True,
            top_logprobs=2,
            user="ann",
        )
        call = called.choices[0].message.tool_calls
        assert call is not None
        answered = await client.chat.completions.create(
            model=CHAT_MODEL,
            messages=[
                {"role": "user", "content": "weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [call[0].model_dump()]},
                {"role": "tool", "tool_call_id": call[0].id, "content": "sunny"},
            ],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
            },
            max_tokens=5,
        )
        return called, answered

    async def test_a_stream_with_its_options_is_served(self, serve: ServeFactory) -> None:
        served = await serve()
        async with sdk(served) as client:
            stream = await client.chat.completions.create(
                model=CHAT_MODEL,
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
                max_tokens=3,
            )
            chunks = [chunk async for chunk in stream]
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 3

    async def test_embeddings_and_images_with_their_fields_are_served(self, serve: ServeFactory) -> None:
        served = await serve()
        async with sdk(served) as client:
            vectors = await client.embeddings.create(
                model="embed-r", input=["one", "two"], dimensions=8, encoding_format="float", user="ann"
            )
            images = await client.images.generate(
                model="image-r",
                prompt="a boat",
                n=2,
                size="256x256",
                response_format="b64_json",
                quality="standard",
                style="vivid",
                user="ann",
            )
        assert len(vectors.data) == 2
        assert len(images.data or []) == 2

    async def test_a_bad_field_from_the_sdk_is_its_bad_request_error(self, serve: ServeFactory) -> None:
        """The SDK raises ``BadRequestError`` with the field as ``param``."""
        served = await serve()
        async with sdk(served) as client:
            with pytest.raises(openai.BadRequestError) as caught:
                await client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=0)
        assert caught.value.param == "max_tokens"


HUGE = 200_000


class TestQuotedInputIsShort:
    async def test_a_huge_model_name_gets_a_short_error(self, serve: ServeFactory) -> None:
        """A 200 KB model name comes back as its first 100 characters and its length."""
        served = await serve()
        answer = await post_json(served, CHAT, {"model": "m" * HUGE, "messages": MESSAGES})
        assert_error(
            answer,
            404,
            "invalid_request_error",
            f"model '{'m' * 100}'… ({HUGE} characters) does not exist; "
            "GET /v1/models lists the models on offer",
            code="model_not_found",
            param="model",
        )
        assert len(answer.text) < 500

    @pytest.mark.parametrize(
        ("fields", "param"),
        [
            ({"provider": {"sort": "s" * HUGE}}, "provider.sort"),
            ({"provider": {"k" * HUGE: 1}}, "provider"),
            ({"tools": [{"type": "function", "function": {"name": "n" * HUGE}}]}, "tools[0].function.name"),
            ({"messages": [{"role": "r" * HUGE, "content": "hi"}]}, "messages[0].role"),
        ],
        ids=["sort", "preference-field", "tool-name", "role"],
    )
    async def test_huge_values_in_fields_get_short_errors(
        self, serve: ServeFactory, fields: dict[str, Any], param: str
    ) -> None:
        served = await serve()
        answer = await post_json(served, CHAT, {**BODIES[CHAT], **fields})
        assert answer.status == 400, answer.text[:300]
        error = answer.json()["error"]
        assert error["param"] == param
        assert f"… ({HUGE} characters)" in error["message"]
        assert len(answer.text) < 600
