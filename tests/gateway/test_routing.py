"""Routing preferences end to end: headers and the body's ``provider`` object pick who serves a request."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import openai
import pytest

from tests.gateway.conftest import (
    API_KEY,
    CHAT_MODEL,
    CHAT_PROVIDERS,
    GATEWAY_PROVIDERS,
    Served,
    ServeFactory,
)
from tests.gateway.support import TIMEOUT

MESSAGES: list[Any] = [{"role": "user", "content": "route me"}]
ROUNDS = 10
# Where fallbacks are allowed, stay under the router's own bucket for a provider (burst - 1 = 9 tokens):
# past it, the next request goes to the next candidate rather than waiting, which is by design.
IDLE_ROUNDS = 5
UNKNOWN_ADDRESS = "0x" + "5a" * 20


def address(served: Served, index: int) -> str:
    return served.devnet.providers[index].address


def client(served: Served) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=served.base_url, api_key=API_KEY, max_retries=0, timeout=TIMEOUT)


async def served_by(
    served: Served,
    *,
    rounds: int = ROUNDS,
    headers: dict[str, str] | None = None,
    provider: dict[str, Any] | None = None,
) -> list[str]:
    """``rounds`` sequential chats with these preferences; the x-zg-provider of each reply."""
    extra_body = {"provider": provider} if provider is not None else None
    providers = []
    async with client(served) as sdk:
        for _ in range(rounds):
            raw = await sdk.chat.completions.with_raw_response.create(
                model=CHAT_MODEL, messages=MESSAGES, extra_headers=headers, extra_body=extra_body
            )
            assert raw.parse().choices[0].message.content
            providers.append(raw.headers["x-zg-provider"])
    return providers


async def served_counts(served: Served) -> list[int]:
    """How many requests each chat provider's simulator has served so far."""
    return [(await served.stats(i))["served"] for i in range(CHAT_PROVIDERS)]


class TestPinning:
    @pytest.mark.parametrize("header", ["X-ZG-Provider", "X-0G-Provider-Address"])
    async def test_header_pins_a_provider(self, serve: ServeFactory, header: str) -> None:
        """A provider header pins every request to that provider, and the others see none of them."""
        served = await serve()
        before = await served_counts(served)
        providers = await served_by(served, headers={header: address(served, 1)})
        assert providers == [address(served, 1)] * ROUNDS
        after = await served_counts(served)
        assert [b - a for a, b in zip(before, after, strict=True)] == [0, ROUNDS, 0]

    async def test_header_pin_is_case_insensitive(self, serve: ServeFactory) -> None:
        """A lower-case address pins the same provider as its checksummed form."""
        served = await serve()
        providers = await served_by(served, rounds=3, headers={"X-ZG-Provider": address(served, 2).lower()})
        assert providers == [address(served, 2)] * 3

    async def test_body_order_without_fallbacks_pins_a_provider(self, serve: ServeFactory) -> None:
        """provider.order with allow_fallbacks false sends every request to that provider."""
        served = await serve()
        providers = await served_by(
            served, provider={"order": [address(served, 2)], "allow_fallbacks": False}
        )
        assert providers == [address(served, 2)] * ROUNDS

    async def test_body_order_prefers_its_first_provider(self, serve: ServeFactory) -> None:
        """provider.order (fallbacks allowed) still tries the first listed provider first."""
        served = await serve()
        order = [address(served, 1), address(served, 0)]
        providers = await served_by(served, rounds=IDLE_ROUNDS, provider={"order": order})
        assert providers == [address(served, 1)] * IDLE_ROUNDS

    async def test_pinned_failing_provider_does_not_fall_over(self, serve: ServeFactory) -> None:
        """A pinned provider that fails gives an error; no other provider is tried in its place."""
        served = await serve()
        await served.set_faults(1, error_500=1.0)
        before = await served_counts(served)
        pinned = address(served, 1)
        async with client(served) as sdk:
            with pytest.raises(openai.APIStatusError) as caught:
                await sdk.chat.completions.create(
                    model=CHAT_MODEL, messages=MESSAGES, extra_headers={"X-ZG-Provider": pinned}
                )
        error = caught.value
        assert error.status_code == 502
        assert error.type == "provider_error"
        assert error.response.headers["x-zg-attempts"] == "3"
        assert "x-zg-provider" not in error.response.headers
        assert isinstance(error.body, dict)
        assert error.body["message"].startswith(
            f"every attempt failed (3 over 1 provider(s)); last: {pinned}: 500"
        )
        after = await served_counts(served)
        assert after == before

    async def test_pinned_failing_provider_falls_over_when_allowed(self, serve: ServeFactory) -> None:
        """With X-ZG-Allow-Fallbacks true, a failing pinned provider is tried first, then another serves."""
        served = await serve()
        await served.set_faults(1, error_500=1.0)
        headers = {"X-ZG-Provider": address(served, 1), "X-ZG-Allow-Fallbacks": "true"}
        async with client(served) as sdk:
            raw = await sdk.chat.completions.with_raw_response.create(
                model=CHAT_MODEL, messages=MESSAGES, extra_headers=headers
            )
        assert raw.headers["x-zg-attempts"] == "2"
        assert raw.headers["x-zg-provider"] in {address(served, 0), address(served, 2)}


class TestFilters:
    async def test_ignore_leaves_the_rest(self, serve: ServeFactory) -> None:
        """provider.ignore of two of the three providers always gives the third."""
        served = await serve()
        providers = await served_by(served, provider={"ignore": [address(served, 0), address(served, 1)]})
        assert providers == [address(served, 2)] * ROUNDS

    async def test_ignore_header(self, serve: ServeFactory) -> None:
        """X-ZG-Ignore takes a comma-separated list, like provider.ignore."""
        served = await serve()
        ignored = f"{address(served, 2)}, {address(served, 0)}"
        providers = await served_by(served, rounds=5, headers={"X-ZG-Ignore": ignored})
        assert providers == [address(served, 1)] * 5

    async def test_only_restricts_to_the_listed(self, serve: ServeFactory) -> None:
        """provider.only with two providers never gives the third."""
        served = await serve()
        allowed = {address(served, 0), address(served, 2)}
        providers = await served_by(served, provider={"only": sorted(allowed)})
        assert set(providers) <= allowed

    async def test_max_prompt_price_leaves_the_cheapest(self, serve: ServeFactory) -> None:
        """provider.max_price.prompt below the second price leaves only provider 0."""
        served = await serve()
        providers = await served_by(served, provider={"max_price": {"prompt": 1_500_000_000}})
        assert providers == [address(served, 0)] * ROUNDS

    async def test_max_price_headers(self, serve: ServeFactory) -> None:
        """X-ZG-Max-Price-Completion caps the completion price the same way."""
        served = await serve()
        cap = str(GATEWAY_PROVIDERS[1].output_price)
        providers = await served_by(served, headers={"X-ZG-Max-Price-Completion": cap})
        assert set(providers) <= {address(served, 0), address(served, 1)}

    async def test_max_price_at_a_providers_price_includes_it(self, serve: ServeFactory) -> None:
        """A price cap equal to a provider's price keeps that provider."""
        served = await serve()
        price = GATEWAY_PROVIDERS[1].input_price
        providers = await served_by(
            served, provider={"max_price": {"prompt": price}, "ignore": [address(served, 0)]}
        )
        assert providers == [address(served, 1)] * ROUNDS

    async def test_only_an_unknown_provider_is_503(self, serve: ServeFactory) -> None:
        """provider.only naming no provider of the model is a 503 saying the preferences match none."""
        served = await serve()
        body = {"model": CHAT_MODEL, "messages": MESSAGES, "provider": {"only": [UNKNOWN_ADDRESS]}}
        async with (
            asyncio.timeout(TIMEOUT),
            served.http.post(served.base_url + "/chat/completions", json=body, headers=served.auth()) as r,
        ):
            status, payload, headers = r.status, await r.json(), r.headers
        assert status == 503
        assert payload == {
            "error": {
                "message": "none of the 3 provider(s) of 'model-r' matches the request's provider "
                "preferences",
                "type": "service_unavailable",
                "param": None,
                "code": "no_matching_provider",
            }
        }
        assert headers["x-zg-attempts"] == "0"
        assert headers["x-request-id"]

    async def test_only_an_unknown_provider_through_the_sdk(self, serve: ServeFactory) -> None:
        """The SDK raises InternalServerError (503) with code no_matching_provider."""
        served = await serve()
        async with client(served) as sdk:
            with pytest.raises(openai.InternalServerError) as caught:
                await sdk.chat.completions.create(
                    model=CHAT_MODEL, messages=MESSAGES, extra_headers={"X-ZG-Only": UNKNOWN_ADDRESS}
                )
        assert caught.value.status_code == 503
        assert caught.value.code == "no_matching_provider"

    async def test_price_cap_under_every_provider_is_503(self, serve: ServeFactory) -> None:
        """A price cap no provider meets is a 503 no_matching_provider, not a silent pick."""
        served = await serve()
        async with client(served) as sdk:
            with pytest.raises(openai.InternalServerError) as caught:
                await sdk.chat.completions.create(
                    model=CHAT_MODEL, messages=MESSAGES, extra_body={"provider": {"max_price": {"prompt": 1}}}
                )
        assert caught.value.code == "no_matching_provider"


class TestSorting:
    async def test_sort_by_price_picks_the_cheapest_when_idle(self, serve: ServeFactory) -> None:
        """provider.sort price sends sequential (idle) requests to the cheapest provider."""
        served = await serve()
        providers = await served_by(served, rounds=IDLE_ROUNDS, provider={"sort": "price"})
        assert providers == [address(served, 0)] * IDLE_ROUNDS

    @pytest.mark.parametrize("header", ["X-ZG-Sort", "X-0G-Provider-Sort"])
    async def test_sort_header(self, serve: ServeFactory, header: str) -> None:
        """The sort headers work like provider.sort."""
        served = await serve()
        providers = await served_by(served, rounds=IDLE_ROUNDS, headers={header: "price"})
        assert providers == [address(served, 0)] * IDLE_ROUNDS

    async def test_header_overrides_body(self, serve: ServeFactory) -> None:
        """A header wins over the body's field of the same meaning."""
        served = await serve()
        providers = await served_by(
            served,
            rounds=5,
            headers={"X-ZG-Provider": address(served, 2)},
            provider={"order": [address(served, 0)], "allow_fallbacks": False},
        )
        assert providers == [address(served, 2)] * 5

    async def test_order_beats_sort(self, serve: ServeFactory) -> None:
        """provider.order comes before the sort: the priciest provider first when listed first."""
        served = await serve()
        providers = await served_by(
            served, rounds=IDLE_ROUNDS, provider={"order": [address(served, 2)], "sort": "price"}
        )
        assert providers == [address(served, 2)] * IDLE_ROUNDS

    async def test_default_spreads_over_providers(self, serve: ServeFactory) -> None:
        """Without preferences every reply still comes from one of the model's providers."""
        served = await serve()
        providers = await served_by(served)
        assert set(providers) <= {address(served, i) for i in range(CHAT_PROVIDERS)}


class TestHealthEndpoints:
    async def test_healthz(self, serve: ServeFactory) -> None:
        """/healthz answers 200 ok without a key."""
        served = await serve()
        async with asyncio.timeout(TIMEOUT), served.http.get(served.url + "/healthz") as r:
            assert (r.status, await r.json()) == (200, {"status": "ok"})

    async def test_readyz_counts_providers(self, serve: ServeFactory) -> None:
        """/readyz answers 200 ready with the pool's provider counts, without a key."""
        served = await serve()
        async with asyncio.timeout(TIMEOUT), served.http.get(served.url + "/readyz") as r:
            status, body = r.status, await r.json()
        total = len(GATEWAY_PROVIDERS)
        assert (status, body) == (200, {"status": "ready", "providers": total, "available": total})


VOLATILE_DETAILS = ("health", "in_flight", "excluded", "lanes")


def stable(catalog: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The catalog without fields that change from one moment to the next (health and load)."""
    out = copy.deepcopy(catalog)
    for model in out:
        model.pop("available")
        for detail in model["provider_details"]:
            for key in VOLATILE_DETAILS:
                detail.pop(key)
    return out


class TestCatalog:
    async def test_library_models_equal_the_gateways(self, serve: ServeFactory) -> None:
        """router.models() in-process equals the gateway's /v1/models data, health fields aside."""
        served = await serve()
        async with client(served) as sdk:
            await sdk.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        async with (
            asyncio.timeout(TIMEOUT),
            served.http.get(served.base_url + "/models", headers=served.auth()) as r,
        ):
            assert r.status == 200
            listing = await r.json()
        assert listing["object"] == "list"
        library = served.router.models()
        assert stable(listing["data"]) == stable(library)
        assert [m["id"] for m in library] == ["embed-r", "image-r", CHAT_MODEL, "whisper-r"]
        for model in listing["data"]:
            for detail in model["provider_details"]:
                assert set(detail["health"]) == {"breaker", "latency_ms", "ttft_ms", "error_rate"}
