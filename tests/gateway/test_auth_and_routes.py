"""Who may call and where: API keys, unknown routes and methods, request ids, body limits, provider refusals.

Each answer is the OpenAI error the SDKs understand; every request runs under a timeout and no body shows a
traceback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest

from router.config import GatewayConfig
from router.server.app import Gateway
from tests.gateway.conftest import API_KEY, CHAT_MODEL, Served, ServeFactory
from tests.gateway.support import (
    CHAT,
    HEX_ID,
    MESSAGES,
    WRONG_KEY,
    assert_error,
    sdk,
    send,
    transcription_form,
)


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
        [
            ("GET", "/v1/models"),
            ("GET", "/v1/models/model-r"),
            ("GET", "/v1/providers"),
            ("POST", "/v1/embeddings"),
            ("POST", "/v1/images/edits"),
            ("POST", "/v1/audio/transcriptions"),
        ],
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
            ("GET", "/v1/images/edits"),
            ("POST", "/v1/models"),
            ("POST", "/v1/models/model-r"),
            ("POST", "/v1/providers"),
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
        """A request the provider refuses as the client's fault returns the provider's status and body
        (token ids pass the gateway's checks; the simulated provider takes only strings)."""
        served = await serve()
        before = await served.stats(3)
        answer = await send(
            served,
            "POST",
            "/v1/embeddings",
            json={"model": "embed-r", "input": [1, 2]},
            headers=served.auth(),
        )
        assert answer.status == 400
        assert answer.json() == {"error": "invalid request body: input must be a string or a list of strings"}
        assert answer.headers["x-zg-attempts"] == "1"
        assert HEX_ID.match(answer.headers["x-request-id"])
        after = await served.stats(3)
        assert after["refused"].get("400", 0) == before["refused"].get("400", 0) + 1
        # The provider did nothing wrong: it is not cooled down, and serves the next request at once.
        fine = await send(
            served,
            "POST",
            "/v1/embeddings",
            json={"model": "embed-r", "input": "cats"},
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
