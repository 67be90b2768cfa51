"""The catalog routes: ``GET /v1/providers`` (every provider's prices, limits, health, trust and
attestation, filtered by ``model`` and ``service_type``) and ``GET /v1/models/{id}`` (OpenAI's retrieve;
ids may hold ``/``), through the gateway on the devnet or over static upstreams, and in-process.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import httpx2
import openai
import pytest
from multidict import CIMultiDict

from router.client import Router
from router.config import GatewayConfig, RouterConfig, StaticUpstream
from router.core import Core
from router.server.app import Gateway
from tests.conftest import watch_text
from tests.gateway.conftest import API_KEY, CHAT_MODEL, CHAT_PROVIDERS, GATEWAY_PROVIDERS, ServeFactory
from tests.gateway.support import MESSAGES, TIMEOUT, Answer, assert_error, send

PROVIDERS = "/v1/providers"
SLASHED = "Qwen/Qwen2.5-7B-Instruct"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def ids(answer: Answer) -> list[str]:
    assert answer.status == 200, answer.text
    body = answer.json()
    assert body["object"] == "list"
    return [provider["id"].lower() for provider in body["data"]]


class TestProviders:
    async def test_every_provider_with_what_it_serves_and_how_it_fares(self, serve: ServeFactory) -> None:
        """Each provider once, by address: its models, service type, prices, advertised limits, health,
        verifiability, and its attestation with our trust verdict."""
        served = await serve()
        answer = await send(served, "GET", PROVIDERS, headers=served.auth())
        addresses = sorted(p.address.lower() for p in served.devnet.providers)
        assert ids(answer) == addresses
        by_id = {p["id"].lower(): p for p in answer.json()["data"]}
        first = by_id[served.devnet.providers[0].address.lower()]
        spec = GATEWAY_PROVIDERS[0]
        assert first["models"] == [CHAT_MODEL]
        assert first["service_type"] == "chatbot"
        assert first["kind"] == "chain"
        assert first["pricing"] == {"prompt": str(spec.input_price), "completion": str(spec.output_price)}
        assert first["verifiability"] == "TeeML"
        assert first["limits"]["requests_per_minute"] == spec.limits.requests_per_minute
        assert first["limits"]["max_concurrent"] == spec.limits.max_concurrent
        assert set(first["health"]) == {"breaker", "latency_ms", "ttft_ms", "error_rate"}
        assert first["health"]["breaker"] == "closed"
        attestation = first["attestation"]
        assert attestation["registered_signer"]
        assert attestation["trust"]["state"] == "unverified"
        assert "balances" not in first  # the admin report's: not for every API key holder

    async def test_a_verified_response_shows_in_the_list(self, serve: ServeFactory) -> None:
        """The list is live: after a response of provider 0 verifies, its trust record says so, with
        latency measured."""
        served = await serve()
        provider = served.devnet.providers[0].address
        headers = {**served.auth(), "X-ZG-Provider": provider, "x-zg-verify": "sync"}
        chat = await send(
            served,
            "POST",
            "/v1/chat/completions",
            json={"model": CHAT_MODEL, "messages": MESSAGES},
            headers=headers,
        )
        assert chat.headers["x-zg-verify"] == "verified", chat.text
        answer = await send(served, "GET", PROVIDERS, params={"model": CHAT_MODEL}, headers=served.auth())
        (entry,) = [p for p in answer.json()["data"] if p["id"].lower() == provider.lower()]
        assert entry["attestation"]["trust"]["state"] == "verified"
        assert entry["attestation"]["trust"]["verified"] == 1
        assert entry["health"]["latency_ms"] > 0

    @pytest.mark.parametrize(
        ("query", "indexes"),
        [
            ({"model": CHAT_MODEL}, range(CHAT_PROVIDERS)),
            ({"model": CHAT_MODEL.upper()}, range(CHAT_PROVIDERS)),
            ({"service_type": "embedding"}, [3]),
            ({"service_type": "text-to-image", "model": "image-r"}, [4]),
            ({"service_type": "embedding", "model": CHAT_MODEL}, []),
            ({"model": "no-such-model"}, []),
        ],
        ids=["model", "model-any-case", "service-type", "both", "none-match", "unknown-model"],
    )
    async def test_filters(self, serve: ServeFactory, query: dict[str, str], indexes: Any) -> None:
        """``model`` (any case, as requests are routed) and ``service_type`` narrow the list; together,
        to providers matching both."""
        served = await serve()
        answer = await send(served, "GET", PROVIDERS, params=query, headers=served.auth())
        assert ids(answer) == sorted(served.devnet.providers[i].address.lower() for i in indexes)

    @pytest.mark.parametrize(
        ("query", "param", "message"),
        [
            (
                "sort=price",
                "sort",
                "unknown query parameter 'sort' on /v1/providers; the filters are model, service_type",
            ),
            (
                "service_type=video",
                "service_type",
                "`service_type` must be one of chatbot, embedding, text-to-image, image-editing, "
                "speech-to-text, not 'video'",
            ),
            ("model=", "model", "`model` must be a non-empty model id"),
            ("model=%20", "model", "`model` must be a non-empty model id"),
        ],
        ids=["unknown", "service-type", "empty-model", "blank-model"],
    )
    async def test_a_wrong_query_is_a_400(
        self, serve: ServeFactory, query: str, param: str, message: str
    ) -> None:
        """A misspelt filter would list every provider as if it matched: it is refused, naming it."""
        served = await serve()
        answer = await send(served, "GET", f"{PROVIDERS}?{query}", headers=served.auth())
        assert_error(answer, 400, "invalid_request_error", message, param=param)

    async def test_the_list_needs_the_gateway_key(self, serve: ServeFactory) -> None:
        served = await serve()
        answer = await send(served, "GET", PROVIDERS)
        assert_error(
            answer,
            401,
            "authentication_error",
            "missing API key: send `Authorization: Bearer <key>`",
            code="missing_api_key",
        )


# -- over static upstreams: model ids with a slash, and the in-process faces ---------------------------

UPSTREAMS = (
    StaticUpstream(name="qwen", url="http://127.0.0.1:9/v1", models=(SLASHED, "plain")),
    StaticUpstream(
        name="embedder", url="http://127.0.0.1:9/v1", models=("embed-s",), service_type="embedding"
    ),
)


class StaticGateway:
    def __init__(self, router: Router, url: str, http: aiohttp.ClientSession) -> None:
        self.router, self.url, self.http = router, url, http

    async def get(self, path: str, headers: Mapping[str, str] = AUTH, method: str = "GET") -> Answer:
        async with asyncio.timeout(TIMEOUT), self.http.request(method, self.url + path, headers=headers) as r:
            text = await r.text()
        watch_text(text, f"the response to {method} {path}")
        return Answer(r.status, r.headers, text)

    def sdk(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=API_KEY, max_retries=0, timeout=TIMEOUT)


@pytest.fixture
async def static() -> AsyncIterator[StaticGateway]:
    gateway_config = GatewayConfig(port=0, api_keys=(API_KEY,), shutdown_timeout=0.5)
    async with (
        Router(RouterConfig(static_upstreams=UPSTREAMS)) as router,
        Gateway(router, gateway_config) as gateway,
        aiohttp.ClientSession() as http,
    ):
        yield StaticGateway(router, gateway.url, http)


class TestModelRetrieve:
    async def test_the_sdk_retrieves_a_model_whose_id_holds_a_slash(self, static: StaticGateway) -> None:
        """``models.retrieve`` sends the id percent-encoded: the object is the one the list holds."""
        async with static.sdk() as client:
            model = await client.models.retrieve(SLASHED)
            listed = [m for m in (await client.models.list()).data if m.id == SLASHED]
        assert model.id == SLASHED
        assert model.object == "model"
        assert model.model_dump() == listed[0].model_dump()

    async def test_an_id_in_another_case_finds_the_model_as_requests_do(self, static: StaticGateway) -> None:
        answer = await static.get("/v1/models/" + SLASHED.lower())
        assert answer.status == 200, answer.text
        assert answer.json()["id"] == SLASHED
        assert answer.json()["provider_details"][0]["id"] == "qwen"

    async def test_an_unknown_model_is_the_sdks_not_found(self, static: StaticGateway) -> None:
        async with static.sdk() as client:
            with pytest.raises(openai.NotFoundError) as caught:
                await client.models.retrieve("org/no-such-model")
        assert caught.value.body == {
            "message": "model 'org/no-such-model' does not exist; GET /v1/models lists the models on offer",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }

    @pytest.mark.parametrize(
        ("method", "path", "status", "code"),
        [
            ("GET", "/v1/models/", 404, "model_not_found"),
            ("POST", "/v1/models/plain", 405, "method_not_allowed"),
            ("DELETE", f"/v1/models/{SLASHED}", 405, "method_not_allowed"),
        ],
    )
    async def test_other_requests_under_the_route(
        self, static: StaticGateway, method: str, path: str, status: int, code: str
    ) -> None:
        answer = await static.get(path, method=method)
        assert answer.status == status, answer.text
        assert answer.json()["error"]["code"] == code

    async def test_retrieve_needs_the_gateway_key(self, static: StaticGateway) -> None:
        answer = await static.get("/v1/models/plain", headers={})
        assert answer.status == 401
        assert answer.json()["error"]["code"] == "missing_api_key"


class Incoming:
    """A request as a face hands it to the core."""

    def __init__(self, path: str, query: Mapping[str, str] | None = None) -> None:
        self.method = "GET"
        self.path = path
        self.query = dict(query or {})
        self.headers = CIMultiDict[str]()

    async def read(self) -> bytes:
        return b""


class TestInProcess:
    async def test_the_core_serves_both_routes_without_a_face(self) -> None:
        """Face-neutral: the same list, filters and retrieve for any face (the in-process ones included)."""
        async with Router(RouterConfig(static_upstreams=UPSTREAMS)) as router:
            core = Core(router)
            listed = await core.handle(Incoming(PROVIDERS, {"service_type": "embedding"}))
            wrong = await core.handle(Incoming(PROVIDERS, {"order": "price"}))
            model = await core.handle(Incoming("/v1/models/" + SLASHED))
        assert listed.status == 200
        assert [p["id"] for p in json.loads(listed.body)["data"]] == ["embedder"]
        assert (wrong.status, json.loads(wrong.body)["error"]["param"]) == (400, "order")
        assert json.loads(model.body)["id"] == SLASHED

    async def test_the_openai_client_in_process_retrieves_a_model(self) -> None:
        async with (
            Router(RouterConfig(static_upstreams=UPSTREAMS)) as router,
            router.openai_client() as client,
        ):
            model = await client.models.retrieve(SLASHED)
        assert model.id == SLASHED

    async def test_the_httpx_transport_filters_providers_in_process(self) -> None:
        async with Router(RouterConfig(static_upstreams=UPSTREAMS)) as router:
            transport = router.httpx_transport()
            async with httpx2.AsyncClient(transport=transport, base_url="http://zg-router/v1") as http:
                answer = await http.get("/providers", params={"model": "EMBED-S"})
        assert answer.status_code == 200, answer.text
        assert [p["id"] for p in answer.json()["data"]] == ["embedder"]
