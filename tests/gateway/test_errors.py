"""Bad input gets the OpenAI error the SDKs understand: status, type, code, param and a precise message.

Malformed and incomplete bodies, unknown models, bad uploads and routing preferences of the wrong shape.
Every request runs under a timeout (nothing may hang), every error carries ``x-request-id``, and no body
shows a traceback.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.gateway.conftest import CHAT_MODEL, ServeFactory
from tests.gateway.support import CHAT, MESSAGES, WAV, assert_error, sdk, send, transcription_form

# (id, path, body, status, type, code, param, message)
INVALID_JSON_REQUESTS = [
    (
        "empty-body",
        CHAT,
        b"",
        400,
        "invalid_request_error",
        None,
        None,
        "the request body is empty; send a JSON object",
    ),
    (
        "body-is-a-list",
        CHAT,
        b"[1, 2]",
        400,
        "invalid_request_error",
        None,
        None,
        "the request body must be a JSON object",
    ),
    (
        "body-is-a-string",
        CHAT,
        b'"hello"',
        400,
        "invalid_request_error",
        None,
        None,
        "the request body must be a JSON object",
    ),
    (
        "missing-model",
        CHAT,
        {"messages": MESSAGES},
        400,
        "invalid_request_error",
        None,
        "model",
        "you must provide a model parameter (a non-empty string)",
    ),
    (
        "empty-model",
        CHAT,
        {"model": "", "messages": MESSAGES},
        400,
        "invalid_request_error",
        None,
        "model",
        "you must provide a model parameter (a non-empty string)",
    ),
    (
        "model-not-a-string",
        CHAT,
        {"model": 7, "messages": MESSAGES},
        400,
        "invalid_request_error",
        None,
        "model",
        "you must provide a model parameter (a non-empty string)",
    ),
    (
        "missing-messages",
        CHAT,
        {"model": CHAT_MODEL},
        400,
        "invalid_request_error",
        None,
        "messages",
        "`messages` is required and must be a non-empty list of messages",
    ),
    (
        "empty-messages",
        CHAT,
        {"model": CHAT_MODEL, "messages": []},
        400,
        "invalid_request_error",
        None,
        "messages",
        "`messages` is required and must be a non-empty list of messages",
    ),
    (
        "messages-not-a-list",
        CHAT,
        {"model": CHAT_MODEL, "messages": "hello"},
        400,
        "invalid_request_error",
        None,
        "messages",
        "`messages` is required and must be a non-empty list of messages",
    ),
    (
        "stream-not-bool",
        CHAT,
        {"model": CHAT_MODEL, "messages": MESSAGES, "stream": "yes"},
        400,
        "invalid_request_error",
        None,
        "stream",
        "`stream` must be true or false",
    ),
    (
        "stream-as-number",
        CHAT,
        {"model": CHAT_MODEL, "messages": MESSAGES, "stream": 1},
        400,
        "invalid_request_error",
        None,
        "stream",
        "`stream` must be true or false",
    ),
    (
        "stream-on-embeddings",
        "/v1/embeddings",
        {"model": "embed-r", "input": "x", "stream": True},
        400,
        "invalid_request_error",
        None,
        "stream",
        "streaming is not supported on /embeddings",
    ),
    (
        "embeddings-without-input",
        "/v1/embeddings",
        {"model": "embed-r"},
        400,
        "invalid_request_error",
        None,
        "input",
        "`input` is required and must be a string or a list",
    ),
    (
        "images-without-prompt",
        "/v1/images/generations",
        {"model": "image-r", "prompt": 5},
        400,
        "invalid_request_error",
        None,
        "prompt",
        "`prompt` is required and must be a string",
    ),
    (
        "unknown-model",
        CHAT,
        {"model": "no-such-model", "messages": MESSAGES},
        404,
        "invalid_request_error",
        "model_not_found",
        "model",
        "model 'no-such-model' does not exist; GET /v1/models lists the models on offer",
    ),
    (
        "embedding-model-on-chat",
        CHAT,
        {"model": "embed-r", "messages": MESSAGES},
        404,
        "invalid_request_error",
        "model_not_found",
        "model",
        "model 'embed-r' is not served on chat/completions",
    ),
    (
        "chat-model-on-embeddings",
        "/v1/embeddings",
        {"model": CHAT_MODEL, "input": "x"},
        404,
        "invalid_request_error",
        "model_not_found",
        "model",
        "model 'model-r' is not served on embeddings",
    ),
    (
        "chat-model-on-images",
        "/v1/images/generations",
        {"model": CHAT_MODEL, "prompt": "x"},
        404,
        "invalid_request_error",
        "model_not_found",
        "model",
        "model 'model-r' is not served on images/generations",
    ),
]


class TestInvalidRequests:
    @pytest.mark.parametrize(
        ("path", "body", "status", "kind", "code", "param", "message"),
        [case[1:] for case in INVALID_JSON_REQUESTS],
        ids=[case[0] for case in INVALID_JSON_REQUESTS],
    )
    async def test_invalid_json_request(
        self,
        serve: ServeFactory,
        path: str,
        body: bytes | dict[str, Any],
        status: int,
        kind: str,
        code: str | None,
        param: str | None,
        message: str,
    ) -> None:
        """Each malformed request gets its own precise OpenAI error, and no provider is asked."""
        served = await serve()
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {**served.auth(), "Content-Type": "application/json"}
        answer = await send(served, "POST", path, data=data, headers=headers)
        assert_error(answer, status, kind, message, code=code, param=param)
        assert answer.headers["x-zg-attempts"] == "0"

    async def test_malformed_json(self, serve: ServeFactory) -> None:
        """A body that is not JSON is a 400 naming where the JSON breaks."""
        served = await serve()
        answer = await send(served, "POST", CHAT, data=b'{"model": "model-r",', headers=served.auth())
        assert_error(
            answer,
            400,
            "invalid_request_error",
            "the request body is not valid JSON: Expecting property name enclosed in double quotes: "
            "line 1 column 21 (char 20)",
        )

    async def test_body_not_utf8(self, serve: ServeFactory) -> None:
        """Bytes that are not text at all are a 400, not a server error."""
        served = await serve()
        answer = await send(served, "POST", CHAT, data=b"\xff\xfe\x00", headers=served.auth())
        assert answer.status == 400
        assert answer.json()["error"]["type"] == "invalid_request_error"
        assert answer.json()["error"]["message"].startswith("the request body is not valid JSON: ")

    async def test_transcription_needs_multipart(self, serve: ServeFactory) -> None:
        """A JSON body on the transcription route is a 400 saying what to send."""
        served = await serve()
        answer = await send(
            served,
            "POST",
            "/v1/audio/transcriptions",
            json={"model": "whisper-r", "file": "a.wav"},
            headers=served.auth(),
        )
        assert_error(
            answer,
            400,
            "invalid_request_error",
            "audio transcriptions take multipart/form-data (a file and a model)",
        )

    async def test_transcription_without_file(self, serve: ServeFactory) -> None:
        """A transcription upload without a file part is a 400 on param file."""
        served = await serve()
        answer = await send(
            served,
            "POST",
            "/v1/audio/transcriptions",
            data=transcription_form(model="whisper-r"),
            headers=served.auth(),
        )
        assert_error(
            answer,
            400,
            "invalid_request_error",
            "`file` is required: the audio to transcribe",
            param="file",
        )

    async def test_transcription_without_model(self, serve: ServeFactory) -> None:
        """A transcription upload without a model is a 400 on param model."""
        served = await serve()
        answer = await send(
            served,
            "POST",
            "/v1/audio/transcriptions",
            data=transcription_form(file=WAV),
            headers=served.auth(),
        )
        assert_error(
            answer,
            400,
            "invalid_request_error",
            "you must provide a model parameter (a non-empty string)",
            param="model",
        )

    async def test_transcription_with_a_chat_model(self, serve: ServeFactory) -> None:
        """A chat model on the transcription route is a 404 model_not_found."""
        served = await serve()
        answer = await send(
            served,
            "POST",
            "/v1/audio/transcriptions",
            data=transcription_form(model=CHAT_MODEL, file=WAV),
            headers=served.auth(),
        )
        assert_error(
            answer,
            404,
            "invalid_request_error",
            "model 'model-r' is not served on audio/transcriptions",
            code="model_not_found",
            param="model",
        )


# (id, body `provider` field or None, extra headers, param, message)
BAD_PREFERENCES = [
    ("not-an-object", "fast", {}, "provider", "`provider` must be an object"),
    (
        "unknown-field",
        {"speed": "max"},
        {},
        "provider",
        "unknown field(s) in `provider`: speed; known: order, only, ignore, allow_fallbacks, sort, "
        "max_price, verified_only",
    ),
    (
        "order-not-a-list",
        {"order": "0xabc"},
        {},
        "provider.order",
        "`provider.order` must be a list of provider ids",
    ),
    ("only-empty-id", {"only": [""]}, {}, "provider.only", "`provider.only` must be a list of provider ids"),
    (
        "ignore-number",
        {"ignore": [5]},
        {},
        "provider.ignore",
        "`provider.ignore` must be a list of provider ids",
    ),
    (
        "allow-fallbacks-string",
        {"allow_fallbacks": "no"},
        {},
        "provider.allow_fallbacks",
        "`provider.allow_fallbacks` must be true or false",
    ),
    (
        "unknown-sort",
        {"sort": "fastest"},
        {},
        "provider.sort",
        "unknown sort 'fastest'; use one of: balanced, price, latency, least-loaded, random",
    ),
    ("sort-not-a-string", {"sort": 3}, {}, "provider.sort", "`provider.sort` must be a string"),
    (
        "max-price-string",
        {"max_price": "cheap"},
        {},
        "provider.max_price",
        "`provider.max_price` must be an object",
    ),
    # Falsy values of the wrong type are as wrong as truthy ones.
    ("max-price-zero", {"max_price": 0}, {}, "provider.max_price", "`provider.max_price` must be an object"),
    ("max-price-list", {"max_price": []}, {}, "provider.max_price", "`provider.max_price` must be an object"),
    (
        "max-price-negative",
        {"max_price": {"prompt": -1}},
        {},
        "provider.max_price.prompt",
        "`provider.max_price.prompt` must be a non-negative integer (neuron per token)",
    ),
    (
        "max-price-fraction",
        {"max_price": {"completion": 1.5}},
        {},
        "provider.max_price.completion",
        "`provider.max_price.completion` must be a non-negative integer (neuron per token)",
    ),
    (
        "max-price-bool",
        {"max_price": {"prompt": True}},
        {},
        "provider.max_price.prompt",
        "`provider.max_price.prompt` must be a non-negative integer (neuron per token)",
    ),
    (
        "verified-only-number",
        {"verified_only": 1},
        {},
        "provider.verified_only",
        "`provider.verified_only` must be true or false",
    ),
    (
        "header-allow-fallbacks",
        None,
        {"X-ZG-Allow-Fallbacks": "maybe"},
        "X-ZG-Allow-Fallbacks",
        "header X-ZG-Allow-Fallbacks must be true or false",
    ),
    (
        # The error names the header the client actually sent.
        "0g-header-allow-fallbacks",
        None,
        {"X-0G-Provider-Allow-Fallbacks": "maybe"},
        "X-0G-Provider-Allow-Fallbacks",
        "header X-0G-Provider-Allow-Fallbacks must be true or false",
    ),
    (
        "header-max-price",
        None,
        {"X-ZG-Max-Price-Prompt": "cheap"},
        "X-ZG-Max-Price-Prompt",
        "header X-ZG-Max-Price-Prompt must be a non-negative integer (neuron per token)",
    ),
    (
        "header-max-price-completion",
        None,
        {"X-ZG-Max-Price-Completion": "1e9"},
        "X-ZG-Max-Price-Completion",
        "header X-ZG-Max-Price-Completion must be a non-negative integer (neuron per token)",
    ),
    (
        "header-verified-only",
        None,
        {"X-ZG-Verified-Only": "perhaps"},
        "X-ZG-Verified-Only",
        "header X-ZG-Verified-Only must be true or false",
    ),
    (
        "header-trust-mode",
        None,
        {"X-0G-Provider-Trust-Mode": "paranoid"},
        "X-0G-Provider-Trust-Mode",
        "X-0G-Provider-Trust-Mode must be standard, verified or private",
    ),
    (
        "header-sort",
        None,
        {"X-ZG-Sort": "fastest"},
        "X-ZG-Sort",
        "unknown sort 'fastest'; use one of: balanced, price, latency, least-loaded, random",
    ),
    (
        "0g-header-sort",
        None,
        {"X-0G-Provider-Sort": "fastest"},
        "X-0G-Provider-Sort",
        "unknown sort 'fastest'; use one of: balanced, price, latency, least-loaded, random",
    ),
    (
        "header-max-price-negative",
        None,
        {"X-ZG-Max-Price-Prompt": "-5"},
        "X-ZG-Max-Price-Prompt",
        "header X-ZG-Max-Price-Prompt must be a non-negative integer (neuron per token)",
    ),
    (
        "empty-sort",
        {"sort": ""},
        {},
        "provider.sort",
        "unknown sort ''; use one of: balanced, price, latency, least-loaded, random",
    ),
    (
        "max-price-unknown-key",
        {"max_price": {"image": 5}},
        {},
        "provider.max_price",
        "`provider.max_price` takes `prompt` and `completion` (neuron per token)",
    ),
]


class TestBadPreferences:
    @pytest.mark.parametrize(
        ("provider", "headers", "param", "message"),
        [case[1:] for case in BAD_PREFERENCES],
        ids=[case[0] for case in BAD_PREFERENCES],
    )
    async def test_bad_preferences_are_400_with_param(
        self,
        serve: ServeFactory,
        provider: Any,
        headers: dict[str, str],
        param: str,
        message: str,
    ) -> None:
        """Routing preferences of the wrong shape are a 400 naming the field (or header) at fault."""
        served = await serve()
        body: dict[str, Any] = {"model": CHAT_MODEL, "messages": MESSAGES}
        if provider is not None:
            body["provider"] = provider
        answer = await send(served, "POST", CHAT, json=body, headers={**served.auth(), **headers})
        assert_error(answer, 400, "invalid_request_error", message, param=param)

    async def test_sdk_sees_bad_preferences_as_bad_request(self, serve: ServeFactory) -> None:
        """The SDK raises BadRequestError carrying the preference's param."""
        served = await serve()
        async with sdk(served) as client:
            with pytest.raises(openai.BadRequestError) as caught:
                await client.chat.completions.create(
                    model=CHAT_MODEL, messages=MESSAGES, extra_body={"provider": {"sort": "fastest"}}
                )
        assert caught.value.status_code == 400
        assert caught.value.param == "provider.sort"
        assert caught.value.type == "invalid_request_error"
