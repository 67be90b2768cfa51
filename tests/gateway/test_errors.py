"""Bad input gets the OpenAI error the SDKs understand: status, type, code, param and a precise message.

Every request runs under a timeout (nothing may hang), every error carries ``x-request-id``, and no body
shows a traceback. Logs and error bodies never show a secret.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy
from structlog.testing import capture_logs

from router.config import GatewayConfig
from router.observability.logging import LogObserver
from router.server.app import Gateway
from tests.gateway.conftest import API_KEY, CHAT_MODEL, Served, ServeFactory

TIMEOUT = 30.0
HEX_ID = re.compile(r"^[0-9a-f]{32}$")
MESSAGES = [{"role": "user", "content": "hello"}]
CHAT = "/v1/chat/completions"
WAV = b"RIFF" + b"\x00" * 2996
WRONG_KEY = "sk-wrong-" + "fedcba9876543210" * 2
FAKE_SECRET = "sk-live-SECRET-" + "a1b2c3d4" * 4
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Answer:
    """A response read whole: status, headers and text."""

    status: int
    headers: CIMultiDictProxy[str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


async def send(served: Served, method: str, path: str, *, url: str | None = None, **kwargs: Any) -> Answer:
    """One raw request that must answer within TIMEOUT and never show a traceback."""
    async with (
        asyncio.timeout(TIMEOUT),
        served.http.request(method, (url or served.url) + path, **kwargs) as response,
    ):
        text = await response.text()
    assert "Traceback" not in text, text
    return Answer(response.status, response.headers, text)


def assert_error(
    answer: Answer,
    status: int,
    kind: str,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    request_id: bool = True,
) -> None:
    """``answer`` is exactly this OpenAI error (and, unless told otherwise, carries a request id)."""
    assert answer.status == status, answer.text
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.json() == {"error": {"message": message, "type": kind, "param": param, "code": code}}
    if request_id:
        assert HEX_ID.match(answer.headers.get("x-request-id", "")), dict(answer.headers)


def sdk(served: Served, key: str = API_KEY, base_url: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=base_url or served.base_url, api_key=key, max_retries=0, timeout=TIMEOUT
    )


def transcription_form(**fields: Any) -> aiohttp.FormData:
    form = aiohttp.FormData(default_to_multipart=True)
    for name, value in fields.items():
        if isinstance(value, bytes):
            form.add_field(name, value, filename="a.wav", content_type="audio/wav")
        else:
            form.add_field(name, value)
    return form


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


class TestAuthentication:
    async def test_missing_key(self, serve: ServeFactory) -> None:
        """No Authorization header: 401 missing_api_key, saying how to send one."""
        served = await serve()
        answer = await send(served, "POST", CHAT, json={"model": CHAT_MODEL, "messages": MESSAGES})
        assert_error(
            answer,
            401,
            "authentication_error",
            "missing API key: send `Authorization: Bearer <key>`",
            code="missing_api_key",
        )

    @pytest.mark.parametrize(
        "authorization",
        [
            f"Bearer {WRONG_KEY}",
            f"Basic {API_KEY}",
            f"Token {API_KEY}",
            API_KEY,
            "Bearer ",
            f"Bearer {API_KEY}x",
            f"Bearer {API_KEY[:-1]}",
        ],
        ids=["wrong-key", "basic-scheme", "token-scheme", "no-scheme", "empty-bearer", "longer", "shorter"],
    )
    async def test_wrong_key_or_scheme(self, serve: ServeFactory, authorization: str) -> None:
        """A wrong key, or the right key under another scheme, is 401 invalid_api_key."""
        served = await serve()
        answer = await send(
            served,
            "POST",
            CHAT,
            json={"model": CHAT_MODEL, "messages": MESSAGES},
            headers={"Authorization": authorization},
        )
        assert_error(answer, 401, "authentication_error", "invalid API key", code="invalid_api_key")

    async def test_bearer_scheme_is_case_insensitive(self, serve: ServeFactory) -> None:
        """``bearer`` in lower case is still the Bearer scheme."""
        served = await serve()
        answer = await send(
            served,
            "POST",
            CHAT,
            json={"model": CHAT_MODEL, "messages": MESSAGES},
            headers={"Authorization": f"bearer {API_KEY}"},
        )
        assert answer.status == 200, answer.text

    async def test_key_is_checked_before_the_body(self, serve: ServeFactory) -> None:
        """A wrong key with a malformed body is a 401: nothing is parsed for an unknown caller."""
        served = await serve()
        answer = await send(served, "POST", CHAT, data=b"{not json", headers=served.auth(WRONG_KEY))
        assert_error(answer, 401, "authentication_error", "invalid API key", code="invalid_api_key")

    @pytest.mark.parametrize(
        ("method", "path"),
        [("GET", "/v1/models"), ("POST", "/v1/embeddings"), ("POST", "/v1/audio/transcriptions")],
    )
    async def test_every_api_route_needs_the_key(self, serve: ServeFactory, method: str, path: str) -> None:
        """The model list and every endpoint refuse a caller without a key."""
        served = await serve()
        answer = await send(served, method, path)
        assert_error(
            answer,
            401,
            "authentication_error",
            "missing API key: send `Authorization: Bearer <key>`",
            code="missing_api_key",
        )

    async def test_sdk_raises_authentication_error(self, serve: ServeFactory) -> None:
        """The SDK with a wrong key raises AuthenticationError with code invalid_api_key."""
        served = await serve()
        async with sdk(served, key=WRONG_KEY) as client:
            with pytest.raises(openai.AuthenticationError) as caught:
                await client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
            with pytest.raises(openai.AuthenticationError):
                await client.models.list()
        error = caught.value
        assert (error.status_code, error.code, error.type) == (401, "invalid_api_key", "authentication_error")
        assert error.body == {
            "message": "invalid API key",
            "type": "authentication_error",
            "param": None,
            "code": "invalid_api_key",
        }
        assert HEX_ID.match(error.response.headers["x-request-id"])
        assert WRONG_KEY not in error.response.text


class TestRoutes:
    @pytest.mark.parametrize(
        ("method", "path"),
        [("GET", "/v1/nope"), ("POST", "/v1/completions"), ("GET", "/"), ("POST", "/v1/chat/completions/")],
    )
    async def test_unknown_route_is_404(self, serve: ServeFactory, method: str, path: str) -> None:
        """A route we do not serve is an OpenAI-shaped 404 not_found naming it."""
        served = await serve()
        answer = await send(served, method, path, headers=served.auth())
        assert_error(
            answer,
            404,
            "invalid_request_error",
            f"no route {method} {path}",
            code="not_found",
            request_id=False,
        )

    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("GET", "/v1/chat/completions"),
            ("PUT", "/v1/chat/completions"),
            ("DELETE", "/v1/embeddings"),
            ("GET", "/v1/audio/transcriptions"),
            ("POST", "/v1/models"),
            ("POST", "/healthz"),
        ],
    )
    async def test_wrong_method_is_405(self, serve: ServeFactory, method: str, path: str) -> None:
        """A known path with the wrong method is a 405 method_not_allowed."""
        served = await serve()
        answer = await send(served, method, path, headers=served.auth())
        assert_error(
            answer,
            405,
            "invalid_request_error",
            f"{method} is not allowed on {path}",
            code="method_not_allowed",
            request_id=False,
        )

    async def test_sdk_raises_not_found_for_unknown_model(self, serve: ServeFactory) -> None:
        """The SDK raises NotFoundError with code model_not_found and param model."""
        served = await serve()
        async with sdk(served) as client:
            with pytest.raises(openai.NotFoundError) as unknown:
                await client.chat.completions.create(model="no-such-model", messages=MESSAGES)
            with pytest.raises(openai.NotFoundError) as elsewhere:
                await client.embeddings.create(model=CHAT_MODEL, input="x")
        assert (unknown.value.code, unknown.value.param) == ("model_not_found", "model")
        assert elsewhere.value.body == {
            "message": "model 'model-r' is not served on embeddings",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }

    async def test_sdk_raises_bad_request_for_empty_messages(self, serve: ServeFactory) -> None:
        """The SDK raises BadRequestError for an empty messages list, param messages."""
        served = await serve()
        async with sdk(served) as client:
            with pytest.raises(openai.BadRequestError) as caught:
                await client.chat.completions.create(model=CHAT_MODEL, messages=[])
        assert caught.value.param == "messages"
        assert caught.value.body == {
            "message": "`messages` is required and must be a non-empty list of messages",
            "type": "invalid_request_error",
            "param": "messages",
            "code": None,
        }


class TestRequestIds:
    @pytest.mark.parametrize(
        ("method", "path", "authorized"),
        [
            ("POST", CHAT, False),
            ("POST", CHAT, True),
            ("GET", "/v1/nope", True),
            ("PUT", "/v1/chat/completions", True),
            ("POST", "/v1/models", True),
        ],
        ids=["401", "400", "404-route", "405-method", "405-models"],
    )
    async def test_every_error_has_a_request_id(
        self, serve: ServeFactory, method: str, path: str, authorized: bool
    ) -> None:
        """Every error response carries an x-request-id a client can quote, and echoes a valid one."""
        served = await serve()
        headers = {"X-Request-Id": "client-rid-42", **(served.auth() if authorized else {})}
        answer = await send(served, method, path, data=b"{", headers=headers)
        assert answer.status >= 400
        assert answer.headers.get("x-request-id") == "client-rid-42", dict(answer.headers)


@pytest.fixture
async def small_gateway(serve: ServeFactory) -> AsyncIterator[tuple[Served, str]]:
    """A second gateway on the same router whose body limit is 2048 bytes; yields (served, its url)."""
    served = await serve()
    config = GatewayConfig(port=0, api_keys=(API_KEY,), max_body_bytes=2048)
    async with Gateway(served.router, config) as gateway:
        yield served, gateway.url


class TestBodyLimit:
    async def test_oversized_json_body_is_413(self, small_gateway: tuple[Served, str]) -> None:
        """A body over max_body_bytes is a 413 request_too_large naming the limit."""
        served, url = small_gateway
        body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "x" * 4096}]}
        answer = await send(served, "POST", CHAT, url=url, json=body, headers=served.auth())
        assert_error(
            answer,
            413,
            "invalid_request_error",
            "the request body is larger than the gateway's limit of 2048 bytes",
            code="request_too_large",
        )

    async def test_body_under_the_limit_is_served(self, small_gateway: tuple[Served, str]) -> None:
        """The same gateway serves a request that fits."""
        served, url = small_gateway
        body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "x" * 1024}]}
        answer = await send(served, "POST", CHAT, url=url, json=body, headers=served.auth())
        assert answer.status == 200, answer.text

    async def test_oversized_upload_is_413(self, small_gateway: tuple[Served, str]) -> None:
        """An audio upload over the limit is a 413 too."""
        served, url = small_gateway
        form = transcription_form(model="whisper-r", file=b"RIFF" + b"\x00" * 4096)
        answer = await send(
            served, "POST", "/v1/audio/transcriptions", url=url, data=form, headers=served.auth()
        )
        assert_error(
            answer,
            413,
            "invalid_request_error",
            "the request body is larger than the gateway's limit of 2048 bytes",
            code="request_too_large",
        )

    async def test_sdk_sees_413(self, small_gateway: tuple[Served, str]) -> None:
        """The SDK raises APIStatusError 413 with code request_too_large."""
        served, url = small_gateway
        async with sdk(served, base_url=url + "/v1") as client:
            with pytest.raises(openai.APIStatusError) as caught:
                await client.chat.completions.create(
                    model=CHAT_MODEL, messages=[{"role": "user", "content": "y" * 4096}]
                )
        assert caught.value.status_code == 413
        assert caught.value.code == "request_too_large"


class TestProviderRejections:
    async def test_provider_client_error_is_passed_through(self, serve: ServeFactory) -> None:
        """A request the provider refuses as the client's fault returns the provider's status and body."""
        served = await serve()
        before = await served.stats(4)
        answer = await send(
            served,
            "POST",
            "/v1/images/generations",
            json={"model": "image-r", "prompt": "cats", "n": 11},
            headers=served.auth(),
        )
        assert answer.status == 400
        assert answer.json() == {"error": "invalid request body: n must be 1-10"}
        assert answer.headers["x-zg-attempts"] == "1"
        assert HEX_ID.match(answer.headers["x-request-id"])
        after = await served.stats(4)
        assert after["refused"].get("400", 0) == before["refused"].get("400", 0) + 1
        # The provider did nothing wrong: it is not cooled down, and serves the next request at once.
        fine = await send(
            served,
            "POST",
            "/v1/images/generations",
            json={"model": "image-r", "prompt": "cats", "n": 1},
            headers=served.auth(),
        )
        assert fine.status == 200
        assert fine.headers["x-zg-attempts"] == "1"

    async def test_provider_rejection_through_the_sdk(self, serve: ServeFactory) -> None:
        """The SDK raises BadRequestError carrying the provider's own message."""
        served = await serve()
        async with sdk(served) as client:
            with pytest.raises(openai.BadRequestError) as caught:
                await client.embeddings.create(model="embed-r", input=[[1, 2, 3]])
        assert caught.value.status_code == 400
        assert caught.value.body == "invalid request body: input must be a string or a list of strings"


# A real gateway in a child process, so that a crash shows as a dead child, not a dead test run.
GATEWAY_SCRIPT = """
import asyncio, sys
from router.client import Router
from router.config import GatewayConfig, RouterConfig, StaticUpstream
from router.server.app import Gateway
from router.transport.http import TransportOptions

async def main():
    upstream = StaticUpstream(name="up", url=sys.argv[1], models=("model-s",))
    transport = TransportOptions(allow_private_targets=True)
    config = RouterConfig(static_upstreams=(upstream,), transport=transport)
    async with Router(config) as router:
        async with Gateway(router, GatewayConfig(port=0, api_keys=(sys.argv[2],))) as gateway:
            print(gateway.url, flush=True)
            await asyncio.to_thread(sys.stdin.readline)

asyncio.run(main())
"""
NESTED = b"[" * 200_000 + b"]" * 200_000


async def hostile_upstream_reply(request: web.Request) -> web.Response:
    """A chat "completion" whose usage is nested 200,000 lists deep."""
    await request.read()
    return web.Response(body=b'{"usage": ' + NESTED + b"}", content_type="application/json")


@pytest.fixture
async def hostile_upstream() -> AsyncIterator[str]:
    """An OpenAI-style upstream on 127.0.0.1 whose chat replies are deeply nested; yields its base URL."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", hostile_upstream_reply)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


@dataclass
class Child:
    """A gateway in a child process: its URL and the process."""

    url: str
    process: asyncio.subprocess.Process


@pytest.fixture
async def child_gateway(hostile_upstream: str) -> AsyncIterator[Child]:
    """A gateway in its own Python process, routing model-s to the hostile upstream (stopped afterwards)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        GATEWAY_SCRIPT,
        hostile_upstream,
        API_KEY,
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), TIMEOUT)
        assert line.startswith(b"http://"), line
        yield Child(line.decode().strip(), process)
    finally:
        if process.returncode is None:
            process.stdin.write(b"\n")
        try:
            await asyncio.wait_for(process.communicate(), TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.communicate()


async def post_to_child(child: Child, body: bytes) -> tuple[int, str]:
    """POST ``body`` to the child gateway's chat route; fails the test, naming the exit status, if it dies."""
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    dropped: aiohttp.ClientError | None = None
    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(TIMEOUT), http.get(child.url + "/healthz") as before:
            assert before.status == 200
        try:
            async with asyncio.timeout(TIMEOUT), http.post(child.url + CHAT, data=body, headers=headers) as r:
                status, text = r.status, await r.text()
        except aiohttp.ClientError as exc:
            dropped = exc
        if dropped is not None:
            code = await asyncio.wait_for(child.process.wait(), TIMEOUT)
            pytest.fail(f"the gateway dropped the connection ({dropped!r}) and exited with status {code}")
        assert "Traceback" not in text
        async with asyncio.timeout(TIMEOUT), http.get(child.url + "/healthz") as after:
            assert after.status == 200
    return status, text


class TestHostileBodies:
    @pytest.mark.parametrize(
        "body",
        [b"[" * 200_000, b'{"model": "model-s", "messages": ' + NESTED + b"}"],
        ids=["unterminated", "well-formed"],
    )
    async def test_deeply_nested_request_is_a_400_and_the_gateway_lives(
        self, child_gateway: Child, body: bytes
    ) -> None:
        """A deeply nested JSON body (400 KB, far under the limit) is a 400; the gateway keeps serving."""
        status, text = await post_to_child(child_gateway, body)
        assert status == 400, text
        assert json.loads(text)["error"]["type"] == "invalid_request_error"

    async def test_deeply_nested_provider_reply_leaves_the_gateway_alive(self, child_gateway: Child) -> None:
        """A provider's deeply nested reply cannot take the gateway down: the caller gets an answer."""
        body = json.dumps({"model": "model-s", "messages": MESSAGES}).encode()
        status, text = await post_to_child(child_gateway, body)
        assert status in (200, 502), text


class TestSecrets:
    async def test_no_secret_in_logs_or_error_bodies(self, serve: ServeFactory) -> None:
        """Across good and bad requests no log event shows a key, a session token or a sent secret."""
        served = await serve()
        served.router.subscribe(LogObserver())
        chat = {"model": CHAT_MODEL, "messages": MESSAGES}
        error_texts: list[str] = []
        with capture_logs() as events:
            async with sdk(served) as client:
                await client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
                stream = await client.chat.completions.create(
                    model=CHAT_MODEL, messages=MESSAGES, stream=True
                )
                _ = [chunk async for chunk in stream]
                await client.embeddings.create(model="embed-r", input="x")
            async with sdk(served, key=WRONG_KEY) as client:
                with pytest.raises(openai.AuthenticationError) as caught:
                    await client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
                error_texts.append(caught.value.response.text)
            bad_requests: list[tuple[str, dict[str, Any]]] = [
                (CHAT, {"json": chat, "headers": {"Authorization": f"Bearer {FAKE_SECRET}"}}),
                (CHAT, {"json": chat, "headers": {"Authorization": FAKE_SECRET}}),
                (CHAT, {"json": chat, "headers": {"Authorization": f"Basic {FAKE_SECRET}"}}),
                (CHAT, {"data": b"{oops", "headers": served.auth()}),
                (CHAT, {"json": {**chat, "model": "nope"}, "headers": served.auth()}),
                (
                    CHAT,
                    {"json": {**chat, "provider": {"only": ["0x" + "ab" * 20]}}, "headers": served.auth()},
                ),
                (
                    "/v1/images/generations",
                    {"json": {"model": "image-r", "prompt": "p", "n": 50}, "headers": served.auth()},
                ),
            ]
            for path, kwargs in bad_requests:
                answer = await send(served, "POST", path, **kwargs)
                assert answer.status >= 400
                error_texts.append(answer.text)
            # A failing provider, so that failed attempts are logged too.
            await served.set_faults(0, error_500=1.0)
            pinned = {**served.auth(), "X-ZG-Provider": served.devnet.providers[0].address}
            answer = await send(
                served, "POST", CHAT, json=chat, headers={**pinned, "X-ZG-Allow-Fallbacks": "true"}
            )
            assert answer.status == 200
        kinds = {event["event"] for event in events}
        assert {"request", "attempt failed"} <= kinds, kinds
        forbidden = {
            API_KEY,
            WRONG_KEY,
            FAKE_SECRET,
            served.private_key,
            served.private_key.removeprefix("0x"),
            "app-sk-",
        }
        for event in events:
            text = repr(event).lower()
            for secret in forbidden:
                assert secret.lower() not in text, event
        for text in error_texts:
            for secret in (API_KEY, WRONG_KEY, FAKE_SECRET):
                assert secret not in text, text
        assert served.private_key.removeprefix("0x") not in repr(served.router.config)
