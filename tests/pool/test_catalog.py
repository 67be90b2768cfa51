"""The model catalog: one entry per model across providers, with price ranges, TEE and live detail."""

from __future__ import annotations

from typing import Any

import pytest

from router.pool.capacity import Demand, LaneView, MemoryCapacity
from router.pool.catalog import lane_detail, model_catalog, provider_detail
from router.pool.limits import ProviderLimits
from router.pool.providers import Exclusion, Pool, ProviderInfo, ProviderKind
from tests.pool.support import W1, W2, take
from tests.support import FakeClock

BIG = 10**30  # beyond JSON's safe integers: prices travel as strings


def info(provider_id: str, models: tuple[str, ...], prices: tuple[int, int], **fields: Any) -> ProviderInfo:
    kind = fields.pop("kind", ProviderKind.CHAIN)
    return ProviderInfo(
        id=provider_id,
        kind=kind,
        base_url=f"http://{provider_id}.test/v1/proxy",
        probe_url=f"http://{provider_id}.test/v1/models",
        service_type=fields.pop("service_type", "chatbot"),
        models=models,
        input_price=prices[0],
        output_price=prices[1],
        **fields,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def capacity(clock: FakeClock) -> MemoryCapacity:
    return MemoryCapacity(clock=clock)


@pytest.fixture
def pool(clock: FakeClock, capacity: MemoryCapacity) -> Pool:
    pool = Pool(clock=clock, capacity=capacity, wallets=(W1, W2))
    pool.replace(
        ProviderKind.CHAIN,
        [
            info("0xa", ("Qwen-7B",), (3, 9), verifiability="TeeML"),
            info("0xb", ("qwen-7b", "llama-8b"), (1, BIG), limits=ProviderLimits(60, 4, 2)),
        ],
    )
    pool.replace(ProviderKind.STATIC, [info("openai", ("QWEN-7B",), (5, 5), kind=ProviderKind.STATIC)])
    return pool


def entry(catalog: list[dict[str, Any]], model_id: str) -> dict[str, Any]:
    (found,) = [e for e in catalog if e["id"] == model_id]
    return found


def detail(item: dict[str, Any], provider_id: str) -> dict[str, Any]:
    (found,) = [d for d in item["provider_details"] if d["id"] == provider_id]
    return found


class TestSummary:
    def test_one_entry_per_model_whatever_its_case(self, pool: Pool, clock: FakeClock) -> None:
        """Three spellings of one model make one entry, named as first advertised; sorted by id."""
        catalog = model_catalog(pool, clock.now)
        assert [e["id"] for e in catalog] == ["llama-8b", "Qwen-7B"]
        assert entry(catalog, "Qwen-7B")["providers"] == 3
        assert entry(catalog, "llama-8b")["providers"] == 1

    def test_openai_model_fields(self, pool: Pool, clock: FakeClock) -> None:
        """Each entry is an OpenAI model object plus the service types offering it."""
        item = entry(model_catalog(pool, clock.now), "llama-8b")
        assert {k: item[k] for k in ("object", "created", "owned_by")} == {
            "object": "model",
            "created": 0,
            "owned_by": "0g-compute",
        }
        assert item["service_types"] == ["chatbot"]

    def test_price_ranges_are_min_and_max_strings(self, pool: Pool, clock: FakeClock) -> None:
        """Prompt and completion prices span the serving providers, as decimal strings."""
        item = entry(model_catalog(pool, clock.now), "Qwen-7B")
        assert item["pricing"] == {
            "prompt": {"min": "1", "max": "5"},
            "completion": {"min": "5", "max": str(BIG)},
        }

    def test_tee_is_set_when_any_provider_is_verifiable(self, pool: Pool, clock: FakeClock) -> None:
        """One TeeML provider makes the model TEE-capable; a model with none is not."""
        catalog = model_catalog(pool, clock.now)
        assert entry(catalog, "Qwen-7B")["tee"] is True
        assert entry(catalog, "llama-8b")["tee"] is False

    def test_available_counts_providers_not_cooling_down_or_excluded(
        self, pool: Pool, clock: FakeClock
    ) -> None:
        """An open breaker and an exclusion each take one provider out of ``available``, until they end."""
        a, b = pool.get("0xa"), pool.get("0xb")
        assert a is not None
        assert b is not None
        a.health.cool_down(10.0)
        b.exclude(Exclusion.UNFUNDED, clock.now + 20.0)
        assert entry(model_catalog(pool, clock.now), "Qwen-7B")["available"] == 1
        assert entry(model_catalog(pool, clock.now), "llama-8b")["available"] == 0
        clock.now += 20.0
        assert entry(model_catalog(pool, clock.now), "Qwen-7B")["available"] == 3

    def test_an_empty_pool_has_an_empty_catalog(self, clock: FakeClock) -> None:
        """No providers, no models."""
        assert model_catalog(Pool(clock=clock, capacity=MemoryCapacity(clock=clock)), clock.now) == []


FRESH_STATIC_LANE = {
    "wallet": None,
    "in_flight": 0,
    "max_concurrent": 5,
    "requests_left": 4.0,
    "tokens_left": None,
    "images_left": None,
    "blocked_for": 0.0,
    "excluded": None,
}


class TestProviderDetails:
    def test_static_detail_of_a_fresh_provider(self, pool: Pool, clock: FakeClock) -> None:
        """Kind, prices, limits, a closed breaker with no timings yet, nothing in flight, not excluded, and
        its one lane with a full bucket (burst 5 less the one we keep)."""
        item = entry(model_catalog(pool, clock.now), "Qwen-7B")
        assert detail(item, "openai") == {
            "id": "openai",
            "kind": "static",
            "service_type": "chatbot",
            "pricing": {"prompt": "5", "completion": "5"},
            "verifiability": "",
            "limits": {
                "requests_per_minute": 30,
                "burst": 5,
                "max_concurrent": 5,
                "tokens_per_minute": None,
                "images_per_minute": None,
            },
            "health": {"breaker": "closed", "latency_ms": None, "ttft_ms": None, "error_rate": 0.0},
            "in_flight": 0,
            "excluded": None,
            "lanes": [FRESH_STATIC_LANE],
        }

    def test_detail_shows_live_health_lanes_and_exclusion(
        self, pool: Pool, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """The breaker state string, timings in ms, the exclusion's reason, and per lane what is in flight
        (summed for the provider), what is left and what is blocked."""
        b = pool.get("0xb")
        assert b is not None
        one, two = b.lanes
        b.health.record_success(latency=0.1234, ttft=0.0456)
        b.health.cool_down(5.0)
        take(capacity, one)
        take(capacity, one)
        take(capacity, two)
        capacity.back_off(two, clock.now + 1.5)
        b.exclude(Exclusion.MISCONFIGURED, clock.now + 1.0)
        found = detail(entry(model_catalog(pool, clock.now), "llama-8b"), "0xb")
        assert found["kind"] == "chain"
        assert found["limits"] == {
            "requests_per_minute": 60,
            "burst": 4,
            "max_concurrent": 2,
            "tokens_per_minute": None,
            "images_per_minute": None,
        }
        assert found["health"]["breaker"] == "open"
        assert found["health"]["latency_ms"] == pytest.approx(123.4)
        assert found["health"]["ttft_ms"] == pytest.approx(45.6)
        assert (found["in_flight"], found["excluded"]) == (3, "misconfigured")
        assert [(lane["wallet"], lane["in_flight"], lane["requests_left"]) for lane in found["lanes"]] == [
            (W1, 2, 1.0),
            (W2, 1, 2.0),
        ]
        assert [lane["blocked_for"] for lane in found["lanes"]] == [0.0, 1.5]
        assert [lane["excluded"] for lane in found["lanes"]] == ["misconfigured"] * 2

    def test_a_lane_exclusion_shows_on_that_lane_only(self, pool: Pool, clock: FakeClock) -> None:
        """One wallet unfunded at a provider: its lane says so; the provider and the other lane do not."""
        b = pool.get("0xb")
        assert b is not None
        b.lanes[1].exclude(Exclusion.UNFUNDED, clock.now + 60)
        found = detail(entry(model_catalog(pool, clock.now), "llama-8b"), "0xb")
        assert found["excluded"] is None
        assert [lane["excluded"] for lane in found["lanes"]] == [None, "unfunded"]

    def test_a_hold_off_blocks_every_lane_of_the_provider(
        self, pool: Pool, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """A global-cap 503 shows as blocked time on each of the provider's lanes."""
        capacity.hold_off("0xb", clock.now + 2.25)
        b = pool.get("0xb")
        assert b is not None
        lanes = provider_detail(b, clock.now, capacity)["lanes"]
        assert [lane["blocked_for"] for lane in lanes] == [2.25, 2.25]

    def test_half_open_breaker_is_reported_by_its_value(self, pool: Pool, clock: FakeClock) -> None:
        """After the cooldown the breaker reads ``half_open``; the exclusion has lapsed."""
        b = pool.get("0xb")
        assert b is not None
        b.health.cool_down(5.0)
        b.exclude(Exclusion.UNFUNDED, clock.now + 1.0)
        clock.now += 5.0
        found = detail(entry(model_catalog(pool, clock.now), "llama-8b"), "0xb")
        assert (found["health"]["breaker"], found["excluded"]) == ("half_open", None)


class TestLaneDetail:
    def test_token_and_image_levels_are_rounded(self, clock: FakeClock) -> None:
        """Tokens to whole numbers, images and requests to two places, the block to milliseconds."""
        pool = Pool(clock=clock, capacity=MemoryCapacity(clock=clock))
        view = LaneView(
            in_flight=1,
            max_concurrent=3,
            requests=2.345,
            request_capacity=4,
            tokens=-120.6,
            images=0.456,
            blocked_for=1.23456,
        )
        pool.replace(ProviderKind.STATIC, [info("up", ("m",), (1, 1), kind=ProviderKind.STATIC)])
        state = pool.get("up")
        assert state is not None
        assert lane_detail(state.lanes[0], view, clock.now) == {
            "wallet": None,
            "in_flight": 1,
            "max_concurrent": 3,
            "requests_left": 2.35,
            "tokens_left": -121,
            "images_left": 0.46,
            "blocked_for": 1.235,
            "excluded": None,
        }

    def test_a_token_budget_shows_what_is_left_of_it(self, clock: FakeClock) -> None:
        """A provider that counts tokens shows its TPM in the limits and the level on each lane."""
        capacity = MemoryCapacity(clock=clock)
        pool = Pool(clock=clock, capacity=capacity, wallets=(W1,))
        limits = ProviderLimits(tokens_per_minute=60_000)
        pool.replace(ProviderKind.CHAIN, [info("0xt", ("m",), (1, 1), limits=limits)])
        state = pool.get("0xt")
        assert state is not None
        take(capacity, *state.lanes, demand=Demand(tokens=2500))
        found = provider_detail(state, clock.now, capacity)
        assert found["limits"]["tokens_per_minute"] == 60_000
        assert [lane["tokens_left"] for lane in found["lanes"]] == [7500]
