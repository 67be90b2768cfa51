"""Which providers a request may use and in which order: preferences, filters and ranking strategies."""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest
from multidict import CIMultiDict

from router.errors import InvalidRequest
from router.policy.select import (
    NO_PREFERENCES,
    TEE_ML_ONLY,
    VERIFIED,
    Preferences,
    Strategy,
    eligible,
    parse_preferences,
    rank,
)
from router.pool.health import Health
from router.pool.limits import Gate, ProviderLimits
from router.pool.providers import ProviderInfo, ProviderKind, ProviderState
from tests.support import FakeClock

SEEDS = range(200)


def provider(
    provider_id: str,
    *,
    prices: tuple[int, int] = (1, 1),
    verifiability: str = "TeeML",
    in_flight: int = 0,
    max_concurrent: int = 5,
    latency: float | None = None,
    failures: int = 0,
) -> ProviderState:
    """A provider state shaped by hand: prices, load, one latency sample and some failures."""
    limits = ProviderLimits(max_concurrent=max_concurrent)
    info = ProviderInfo(
        id=provider_id,
        kind=ProviderKind.CHAIN,
        base_url=f"http://{provider_id}/v1/proxy",
        probe_url=f"http://{provider_id}/v1/models",
        service_type="chatbot",
        models=("m",),
        input_price=prices[0],
        output_price=prices[1],
        verifiability=verifiability,
        limits=limits,
    )
    state = ProviderState(info, Health(clock=FakeClock()), Gate(limits))
    state.gate.in_flight = in_flight
    if latency is not None:
        state.health.record_success(latency=latency)
    for _ in range(failures):
        state.health.record_failure()
    return state


def seeded(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311 - reproducible draws, not cryptography


def headers(**pairs: str) -> CIMultiDict[str]:
    """Request headers as aiohttp hands them over: case-insensitive. ``X_ZG_Sort`` is ``X-ZG-Sort``."""
    return CIMultiDict((name.replace("_", "-"), value) for name, value in pairs.items())


def parse(body: object = None, hdrs: Mapping[str, str] | None = None) -> Preferences:
    return parse_preferences(body, hdrs if hdrs is not None else CIMultiDict())


def ids(states: list[ProviderState]) -> list[str]:
    return [state.id for state in states]


class TestStrategyParse:
    @pytest.mark.parametrize(
        ("text", "strategy"),
        [
            ("balanced", Strategy.BALANCED),
            ("price", Strategy.PRICE),
            ("latency", Strategy.LATENCY),
            ("least-loaded", Strategy.LEAST_LOADED),
            ("random", Strategy.RANDOM),
            ("throughput", Strategy.LEAST_LOADED),
            ("least_loaded", Strategy.LEAST_LOADED),
            ("weighted-random", Strategy.RANDOM),
            ("  PRICE ", Strategy.PRICE),
            ("Throughput", Strategy.LEAST_LOADED),
        ],
    )
    def test_names_and_aliases(self, text: str, strategy: Strategy) -> None:
        """Strategy names and OpenRouter-style aliases parse, ignoring case and surrounding blanks."""
        assert Strategy.parse(text, "sort") is strategy

    def test_unknown_name_lists_the_choices_under_the_given_param(self) -> None:
        """An unknown sort is an InvalidRequest naming the param and every valid choice."""
        with pytest.raises(InvalidRequest) as caught:
            Strategy.parse("fastest", "dispatch.strategy")
        assert caught.value.param == "dispatch.strategy"
        assert caught.value.status == 400
        assert caught.value.message == (
            "unknown sort 'fastest'; use one of: balanced, price, latency, least-loaded, random"
        )


class TestParseBody:
    @pytest.mark.parametrize("body", [None, {}])
    def test_nothing_asked_means_no_preferences(self, body: object) -> None:
        """No ``provider`` object (or an empty one) and no headers give the shared empty preferences."""
        assert parse(body) is NO_PREFERENCES

    @pytest.mark.parametrize(
        ("body", "expected"),
        [
            pytest.param(
                {"order": ["0xAAA", "0xBbb"]}, Preferences(order=("0xaaa", "0xbbb")), id="order-lowercased"
            ),
            pytest.param({"only": ["0xAAA"]}, Preferences(only=frozenset({"0xaaa"})), id="only"),
            pytest.param({"ignore": ["0xCCC"]}, Preferences(ignore=frozenset({"0xccc"})), id="ignore"),
            pytest.param({"allow_fallbacks": False}, Preferences(allow_fallbacks=False), id="no-fallbacks"),
            pytest.param({"sort": "price"}, Preferences(sort=Strategy.PRICE), id="sort"),
            pytest.param({"sort": "throughput"}, Preferences(sort=Strategy.LEAST_LOADED), id="sort-alias"),
            pytest.param(
                {"max_price": {"prompt": 5, "completion": 7}},
                Preferences(max_prompt_price=5, max_completion_price=7),
                id="max-price",
            ),
            pytest.param({"max_price": {"prompt": 0}}, Preferences(max_prompt_price=0), id="max-price-zero"),
            pytest.param({"verified_only": True}, Preferences(verifiability=VERIFIED), id="verified-only"),
            pytest.param(
                {"order": None, "only": None, "sort": None, "max_price": None},
                Preferences(),
                id="nulls-are-defaults",
            ),
        ],
    )
    def test_fields(self, body: dict[str, Any], expected: Preferences) -> None:
        """Each OpenRouter ``provider`` field lands in Preferences; ids are lowercased."""
        assert parse(body) == expected

    def test_body_order_keeps_fallbacks_on(self) -> None:
        """As on OpenRouter, ``order`` in the body only reorders: other providers stay as fallbacks."""
        assert parse({"order": ["0xaaa"]}).allow_fallbacks is True

    @pytest.mark.parametrize(
        ("body", "param", "message"),
        [
            pytest.param("0xaaa", "provider", "`provider` must be an object", id="not-an-object"),
            pytest.param(["0xaaa"], "provider", "`provider` must be an object", id="list"),
            pytest.param(
                {"sortt": "price", "zzz": 1},
                "provider",
                "unknown field(s) in `provider`: sortt, zzz; known: order, only, ignore, allow_fallbacks, "
                "sort, max_price, verified_only",
                id="unknown-fields",
            ),
            pytest.param(
                {"max_price": 5},
                "provider.max_price",
                "`provider.max_price` must be an object",
                id="max-price-number",
            ),
            pytest.param(
                {"max_price": 0},
                "provider.max_price",
                "`provider.max_price` must be an object",
                id="max-price-zero-number",
            ),
            pytest.param({"sort": 3}, "provider.sort", "`provider.sort` must be a string", id="sort-number"),
            pytest.param(
                {"sort": "fastest"},
                "provider.sort",
                "unknown sort 'fastest'; use one of: balanced, price, latency, least-loaded, random",
                id="sort-unknown",
            ),
            pytest.param(
                {"order": "0xaaa"},
                "provider.order",
                "`provider.order` must be a list of provider ids",
                id="order-string",
            ),
            pytest.param(
                {"only": ["0xaaa", ""]},
                "provider.only",
                "`provider.only` must be a list of provider ids",
                id="only-empty-id",
            ),
            pytest.param(
                {"ignore": [1]},
                "provider.ignore",
                "`provider.ignore` must be a list of provider ids",
                id="ignore-number",
            ),
            pytest.param(
                {"allow_fallbacks": "no"},
                "provider.allow_fallbacks",
                "`provider.allow_fallbacks` must be true or false",
                id="fallbacks-string",
            ),
            pytest.param(
                {"verified_only": 1},
                "provider.verified_only",
                "`provider.verified_only` must be true or false",
                id="verified-number",
            ),
            pytest.param(
                {"max_price": {"prompt": -1}},
                "provider.max_price.prompt",
                "`provider.max_price.prompt` must be a non-negative integer (neuron per token)",
                id="prompt-negative",
            ),
            pytest.param(
                {"max_price": {"completion": 1.5}},
                "provider.max_price.completion",
                "`provider.max_price.completion` must be a non-negative integer (neuron per token)",
                id="completion-float",
            ),
            pytest.param(
                {"max_price": {"prompt": True}},
                "provider.max_price.prompt",
                "`provider.max_price.prompt` must be a non-negative integer (neuron per token)",
                id="prompt-bool",
            ),
        ],
    )
    def test_invalid_body(self, body: object, param: str, message: str) -> None:
        """A malformed ``provider`` object is a 400 naming the offending field."""
        with pytest.raises(InvalidRequest, match=re.escape(message)) as caught:
            parse(body)
        assert (caught.value.status, caught.value.param) == (400, param)


class TestParseHeaders:
    @pytest.mark.parametrize(
        ("hdrs", "expected"),
        [
            pytest.param(headers(X_ZG_Sort="latency"), Preferences(sort=Strategy.LATENCY), id="zg-sort"),
            pytest.param(headers(x_0g_provider_sort="price"), Preferences(sort=Strategy.PRICE), id="0g-sort"),
            pytest.param(
                headers(X_ZG_Provider="0xAAA, 0xbbb"),
                Preferences(order=("0xaaa", "0xbbb"), allow_fallbacks=False),
                id="zg-pin",
            ),
            pytest.param(
                headers(X_0G_Provider_Address="0xAAA"),
                Preferences(order=("0xaaa",), allow_fallbacks=False),
                id="0g-pin",
            ),
            pytest.param(
                headers(X_ZG_Provider="0xaaa", X_ZG_Allow_Fallbacks="true"),
                Preferences(order=("0xaaa",)),
                id="zg-pin-with-fallbacks",
            ),
            pytest.param(
                headers(X_0G_Provider_Address="0xaaa", X_0G_Provider_Allow_Fallbacks="yes"),
                Preferences(order=("0xaaa",)),
                id="0g-pin-with-fallbacks",
            ),
            pytest.param(
                headers(X_ZG_Only="0xAAA,,0xbbb , "),
                Preferences(only=frozenset({"0xaaa", "0xbbb"})),
                id="only-blank-parts-dropped",
            ),
            pytest.param(headers(X_ZG_Ignore="0xCCC"), Preferences(ignore=frozenset({"0xccc"})), id="ignore"),
            pytest.param(
                headers(X_ZG_Allow_Fallbacks="0"), Preferences(allow_fallbacks=False), id="fallbacks-0"
            ),
            pytest.param(
                headers(X_ZG_Allow_Fallbacks="No"), Preferences(allow_fallbacks=False), id="fallbacks-no"
            ),
            pytest.param(
                headers(X_ZG_Max_Price_Prompt="10"), Preferences(max_prompt_price=10), id="max-prompt"
            ),
            pytest.param(
                headers(X_ZG_Max_Price_Completion="20"),
                Preferences(max_completion_price=20),
                id="max-completion",
            ),
            pytest.param(
                headers(X_ZG_Verified_Only="1"), Preferences(verifiability=VERIFIED), id="verified-1"
            ),
            pytest.param(headers(X_ZG_Verified_Only="false"), Preferences(), id="verified-false"),
            pytest.param(headers(X_0G_Provider_Trust_Mode="standard"), Preferences(), id="trust-standard"),
            pytest.param(
                headers(X_0G_Provider_Trust_Mode="verified"),
                Preferences(verifiability=VERIFIED),
                id="trust-verified",
            ),
            pytest.param(
                headers(X_0G_Provider_Trust_Mode=" PRIVATE "),
                Preferences(verifiability=TEE_ML_ONLY),
                id="trust-private",
            ),
        ],
    )
    def test_headers(self, hdrs: CIMultiDict[str], expected: Preferences) -> None:
        """Each X-ZG-* and X-0G-Provider-* header sets its preference."""
        assert parse(None, hdrs) == expected

    @pytest.mark.parametrize(
        ("body", "hdrs", "expected"),
        [
            pytest.param(
                {"sort": "price"}, headers(X_ZG_Sort="latency"), Preferences(sort=Strategy.LATENCY), id="sort"
            ),
            pytest.param(
                {"order": ["0xaaa"]},
                headers(X_ZG_Provider="0xbbb"),
                Preferences(order=("0xbbb",), allow_fallbacks=False),
                id="order",
            ),
            pytest.param(
                {"only": ["0xaaa"]},
                headers(X_ZG_Only="0xbbb"),
                Preferences(only=frozenset({"0xbbb"})),
                id="only",
            ),
            pytest.param(
                {"ignore": ["0xaaa"]},
                headers(X_ZG_Ignore="0xbbb"),
                Preferences(ignore=frozenset({"0xbbb"})),
                id="ignore",
            ),
            pytest.param(
                {"allow_fallbacks": False},
                headers(X_ZG_Allow_Fallbacks="true"),
                Preferences(),
                id="fallbacks",
            ),
            pytest.param(
                {"max_price": {"prompt": 5, "completion": 7}},
                headers(X_ZG_Max_Price_Prompt="3"),
                Preferences(max_prompt_price=3, max_completion_price=7),
                id="max-price-merged",
            ),
            pytest.param(
                {"verified_only": True},
                headers(X_0G_Provider_Trust_Mode="standard"),
                Preferences(),
                id="trust-mode",
            ),
            pytest.param(
                {"verified_only": False},
                headers(X_ZG_Verified_Only="true"),
                Preferences(verifiability=VERIFIED),
                id="verified-only",
            ),
        ],
    )
    def test_headers_win_over_the_body(
        self, body: dict[str, Any], hdrs: CIMultiDict[str], expected: Preferences
    ) -> None:
        """A header overrides the same body field; ``max_price`` merges prompt and completion."""
        assert parse(body, hdrs) == expected

    def test_zg_headers_win_over_0g_headers(self) -> None:
        """When both spellings are sent, the X-ZG-* header is used."""
        hdrs = headers(
            X_ZG_Sort="price",
            X_0G_Provider_Sort="latency",
            X_ZG_Provider="0xaaa",
            X_0G_Provider_Address="0xbbb",
            X_ZG_Allow_Fallbacks="true",
            X_0G_Provider_Allow_Fallbacks="false",
        )
        assert parse(None, hdrs) == Preferences(order=("0xaaa",), sort=Strategy.PRICE)

    def test_an_explicit_body_fallback_survives_a_header_pin(self) -> None:
        """A header pin only changes the default: ``allow_fallbacks: true`` in the body still holds."""
        prefs = parse({"allow_fallbacks": True}, headers(X_ZG_Provider="0xaaa"))
        assert prefs == Preferences(order=("0xaaa",), allow_fallbacks=True)

    def test_header_fallbacks_off_applies_to_a_body_order(self) -> None:
        """X-ZG-Allow-Fallbacks: false turns a body ``order`` into a pin."""
        prefs = parse({"order": ["0xaaa"]}, headers(X_ZG_Allow_Fallbacks="false"))
        assert prefs == Preferences(order=("0xaaa",), allow_fallbacks=False)

    @pytest.mark.parametrize(
        ("hdrs", "param", "message"),
        [
            pytest.param(
                headers(X_ZG_Allow_Fallbacks="maybe"),
                "X-ZG-Allow-Fallbacks",
                "header X-ZG-Allow-Fallbacks must be true or false",
                id="zg-fallbacks",
            ),
            pytest.param(
                headers(X_0G_Provider_Allow_Fallbacks="maybe"),
                "X-0G-Provider-Allow-Fallbacks",
                "header X-0G-Provider-Allow-Fallbacks must be true or false",
                id="0g-fallbacks",
            ),
            pytest.param(
                headers(X_ZG_Verified_Only="sure"),
                "X-ZG-Verified-Only",
                "header X-ZG-Verified-Only must be true or false",
                id="verified-only",
            ),
            pytest.param(
                headers(X_ZG_Max_Price_Prompt="cheap"),
                "X-ZG-Max-Price-Prompt",
                "header X-ZG-Max-Price-Prompt must be a non-negative integer (neuron per token)",
                id="prompt-text",
            ),
            pytest.param(
                headers(X_ZG_Max_Price_Completion="1.5"),
                "X-ZG-Max-Price-Completion",
                "header X-ZG-Max-Price-Completion must be a non-negative integer (neuron per token)",
                id="completion-float",
            ),
            pytest.param(
                headers(X_ZG_Max_Price_Prompt="-1"),
                "X-ZG-Max-Price-Prompt",
                "X-ZG-Max-Price-Prompt",
                id="prompt-negative",
            ),
            pytest.param(
                headers(X_0G_Provider_Trust_Mode="paranoid"),
                "X-0G-Provider-Trust-Mode",
                "X-0G-Provider-Trust-Mode must be standard, verified or private",
                id="trust-mode",
            ),
            pytest.param(headers(X_ZG_Sort="fastest"), "X-ZG-Sort", "unknown sort 'fastest'", id="zg-sort"),
            pytest.param(
                headers(X_0G_Provider_Sort="fastest"),
                "X-0G-Provider-Sort",
                "unknown sort 'fastest'",
                id="0g-sort",
            ),
        ],
    )
    def test_a_bad_header_is_reported_under_its_own_name(
        self, hdrs: CIMultiDict[str], param: str, message: str
    ) -> None:
        """A bad header value is a 400 whose ``param`` (and text) name the header the client sent."""
        with pytest.raises(InvalidRequest, match=re.escape(message)) as caught:
            parse(None, hdrs)
        assert (caught.value.status, caught.value.param) == (400, param)


@pytest.fixture
def trio() -> list[ProviderState]:
    """Three providers: a TeeML and cheap, b TeeTLS and mid-priced, c unverified and dear."""
    return [
        provider("0xAAA", prices=(1, 1), verifiability="TeeML"),
        provider("0xBBB", prices=(5, 5), verifiability="TeeTLS"),
        provider("0xCCC", prices=(10, 2), verifiability=""),
    ]


class TestEligible:
    @pytest.mark.parametrize(
        ("body", "expected"),
        [
            pytest.param(None, ["0xAAA", "0xBBB", "0xCCC"], id="no-preferences"),
            pytest.param({"only": ["0xaaa", "0xCCC"]}, ["0xAAA", "0xCCC"], id="only-any-case"),
            pytest.param({"ignore": ["0xbbb"]}, ["0xAAA", "0xCCC"], id="ignore"),
            pytest.param(
                {"only": ["0xaaa", "0xbbb"], "ignore": ["0xaaa"]}, ["0xBBB"], id="ignore-beats-only"
            ),
            pytest.param({"order": ["0xccc"]}, ["0xAAA", "0xBBB", "0xCCC"], id="order-with-fallbacks"),
            pytest.param(
                {"order": ["0xccc", "0xbbb"], "allow_fallbacks": False}, ["0xBBB", "0xCCC"], id="pinned"
            ),
            pytest.param({"max_price": {"prompt": 5}}, ["0xAAA", "0xBBB"], id="max-prompt"),
            pytest.param({"max_price": {"completion": 2}}, ["0xAAA", "0xCCC"], id="max-completion"),
            pytest.param({"max_price": {"prompt": 5, "completion": 2}}, ["0xAAA"], id="max-both"),
            pytest.param({"max_price": {"prompt": 0}}, [], id="max-prompt-zero"),
            pytest.param({"verified_only": True}, ["0xAAA", "0xBBB"], id="verified-only"),
            pytest.param({"only": ["0xddd"]}, [], id="only-unknown"),
        ],
    )
    def test_filters(
        self, trio: list[ProviderState], body: dict[str, Any] | None, expected: list[str]
    ) -> None:
        """only, ignore, pins without fallbacks, price caps and verified_only filter; input order is kept."""
        assert ids(eligible(trio, parse(body))) == expected

    def test_health_does_not_matter(self, trio: list[ProviderState]) -> None:
        """A loaded, failing provider is still eligible: availability is decided elsewhere."""
        trio[0].gate.in_flight = trio[0].gate.max_concurrent
        for _ in range(5):
            trio[0].health.record_failure()
        assert ids(eligible(trio, NO_PREFERENCES)) == ["0xAAA", "0xBBB", "0xCCC"]

    def test_a_header_pin_leaves_only_the_pinned_provider(self, trio: list[ProviderState]) -> None:
        """X-0G-Provider-Address pins: without fallbacks only that provider remains."""
        prefs = parse(None, headers(X_0G_Provider_Address="0xbbb"))
        assert ids(eligible(trio, prefs)) == ["0xBBB"]

    @pytest.mark.parametrize(
        ("mode", "expected"),
        [
            ("standard", ["0xAAA", "0xBBB", "0xCCC"]),
            ("verified", ["0xAAA", "0xBBB"]),
            ("private", ["0xAAA"]),
        ],
    )
    def test_trust_modes(self, trio: list[ProviderState], mode: str, expected: list[str]) -> None:
        """Trust mode verified admits TeeML and TeeTLS; private admits TeeML only (protocol.md §9)."""
        prefs = parse(None, headers(X_0G_Provider_Trust_Mode=mode))
        assert ids(eligible(trio, prefs)) == expected


class TestRankDeterministic:
    def test_price_orders_by_input_plus_output(self) -> None:
        """Cheapest total first: (1+2) < (2+2) < (5+1), although the last has the lowest output price."""
        states = [provider("a", prices=(5, 1)), provider("b", prices=(1, 2)), provider("c", prices=(2, 2))]
        for seed in SEEDS:
            assert ids(rank(states, NO_PREFERENCES, Strategy.PRICE, seeded(seed))) == ["b", "c", "a"]

    def test_price_ties_go_to_the_less_loaded(self) -> None:
        """Between equal prices the idler provider ranks first."""
        states = [provider("busy", in_flight=3), provider("idle", in_flight=1)]
        for seed in SEEDS:
            assert ids(rank(states, NO_PREFERENCES, Strategy.PRICE, seeded(seed))) == ["idle", "busy"]

    def test_latency_puts_unmeasured_first_then_fastest(self) -> None:
        """A provider with no latency sample ranks first (to get measured), then the fastest."""
        states = [provider("slow", latency=0.3), provider("new"), provider("fast", latency=0.1)]
        for seed in SEEDS:
            ranked = rank(states, NO_PREFERENCES, Strategy.LATENCY, seeded(seed))
            assert ids(ranked) == ["new", "fast", "slow"]

    def test_least_loaded_uses_the_share_of_slots_in_use(self) -> None:
        """Load is in_flight / max_concurrent: 3/10 < 2/5 < 1/2, whatever the absolute counts."""
        states = [
            provider("two-of-five", in_flight=2, max_concurrent=5),
            provider("one-of-two", in_flight=1, max_concurrent=2),
            provider("three-of-ten", in_flight=3, max_concurrent=10),
        ]
        for seed in SEEDS:
            ranked = rank(states, NO_PREFERENCES, Strategy.LEAST_LOADED, seeded(seed))
            assert ids(ranked) == ["three-of-ten", "two-of-five", "one-of-two"]

    def test_least_loaded_ties_go_to_the_lower_error_rate(self) -> None:
        """Between equal loads the provider that fails less ranks first."""
        states = [provider("flaky", failures=1), provider("steady")]
        for seed in SEEDS:
            ranked = rank(states, NO_PREFERENCES, Strategy.LEAST_LOADED, seeded(seed))
            assert ids(ranked) == ["steady", "flaky"]

    def test_no_candidates_rank_to_nothing(self) -> None:
        """Every strategy ranks an empty list to an empty list."""
        for strategy in Strategy:
            assert rank([], NO_PREFERENCES, strategy, seeded(0)) == []

    def test_the_request_sort_overrides_the_configured_strategy(self) -> None:
        """``provider.sort`` replaces the router's default strategy for that request."""
        states = [provider("dear-fast", prices=(9, 9), latency=0.1), provider("cheap-slow", latency=0.9)]
        prefs = parse({"sort": "price"})
        assert ids(rank(states, prefs, Strategy.LATENCY, seeded(0))) == ["cheap-slow", "dear-fast"]

    @pytest.mark.parametrize("strategy", list(Strategy))
    def test_order_puts_listed_providers_first_in_the_given_order(self, strategy: Strategy) -> None:
        """Listed providers come first in the listed order (any case), the rest after by strategy."""
        states = [
            provider("0xA", prices=(1, 1), latency=0.1),
            provider("0xB", prices=(2, 2), latency=0.2),
            provider("0xC", prices=(3, 3), latency=0.3),
            provider("0xD", prices=(4, 4), latency=0.4),
        ]
        prefs = parse({"order": ["0xd", "0xB"]})
        for seed in SEEDS:
            ranked = ids(rank(states, prefs, strategy, seeded(seed)))
            assert ranked[:2] == ["0xD", "0xB"]
            assert sorted(ranked[2:]) == ["0xA", "0xC"]
            if strategy is Strategy.PRICE:
                assert ranked[2:] == ["0xA", "0xC"]

    def test_rank_leaves_its_input_alone(self) -> None:
        """Ranking returns a new list and does not reorder the candidates given."""
        states = [provider("b", prices=(2, 2)), provider("a")]
        ranked = rank(states, NO_PREFERENCES, Strategy.PRICE, seeded(0))
        assert ids(states) == ["b", "a"]
        assert ids(ranked) == ["a", "b"]


class TestRankWeightedRandom:
    def test_same_seed_same_order(self) -> None:
        """The draw depends only on the random.Random given: equal seeds give equal orders."""
        states = [provider(f"p{i}", in_flight=i % 3) for i in range(6)]
        for seed in SEEDS:
            first = ids(rank(states, NO_PREFERENCES, Strategy.RANDOM, seeded(seed)))
            second = ids(rank(states, NO_PREFERENCES, Strategy.RANDOM, seeded(seed)))
            assert first == second

    def test_a_full_provider_ranks_last_while_others_have_room(self) -> None:
        """A provider with every slot taken weighs 1e-6: in 200 seeded draws it never precedes a free one."""
        # With weights 1 and 1e-6, one draw puts it ahead of a free provider with odds of about 1e-6, so a
        # pass is no accident; the seeds are fixed, so the outcome never changes from run to run.
        states = [provider("free-1"), provider("full", in_flight=5), provider("free-2", in_flight=1)]
        for seed in SEEDS:
            assert ids(rank(states, NO_PREFERENCES, Strategy.RANDOM, seeded(seed)))[-1] == "full"

    def test_over_full_provider_still_ranks_last(self) -> None:
        """More in flight than slots (after limits shrank) clamps the weight rather than inverting it."""
        states = [provider("over", in_flight=7), provider("free")]
        for seed in SEEDS:
            assert ids(rank(states, NO_PREFERENCES, Strategy.RANDOM, seeded(seed))) == ["free", "over"]

    def test_first_place_follows_the_weights(self) -> None:
        """Weights 1 (idle) and 0.5 (half loaded): the idle one comes first in about 2/3 of 2000 draws."""
        states = [provider("idle", max_concurrent=4), provider("half", in_flight=2, max_concurrent=4)]
        firsts = Counter(
            rank(states, NO_PREFERENCES, Strategy.RANDOM, seeded(seed))[0].id for seed in range(2000)
        )
        # 2/3 +- 0.06 is more than five standard deviations (0.0105) each side.
        assert 0.60 < firsts["idle"] / 2000 < 0.73

    def test_error_rate_lowers_the_weight(self) -> None:
        """A provider failing most of the time is drawn first far less often than a healthy one."""
        states = [provider("healthy"), provider("failing", failures=20)]
        # 20 failures at alpha 0.2: error rate 1 - 0.8**20 = 0.988, weight 0.0115, so the healthy one is first
        # with odds 1/1.0115 = 0.989: about 1977 of 2000 draws, with a standard deviation under 5.
        firsts = Counter(
            rank(states, NO_PREFERENCES, Strategy.RANDOM, seeded(seed))[0].id for seed in range(2000)
        )
        assert firsts["healthy"] > 1940


class TestRankBalanced:
    def test_prefers_cheap_fast_and_idle(self) -> None:
        """The cheap, fast, idle provider beats a dearer-and-slower one and an equally good busy one."""
        states = [
            provider("dear-slow", prices=(2, 2), latency=0.2),
            provider("busy", prices=(1, 1), latency=0.1, in_flight=4),
            provider("best", prices=(1, 1), latency=0.1),
        ]
        for seed in SEEDS:
            assert ids(rank(states, NO_PREFERENCES, Strategy.BALANCED, seeded(seed)))[0] == "best"

    def test_avoids_a_high_error_rate(self) -> None:
        """Of two otherwise equal providers, the one that has been failing ranks last."""
        states = [provider("failing", latency=0.1, failures=2), provider("healthy", latency=0.1)]
        for seed in SEEDS:
            ranked = rank(states, NO_PREFERENCES, Strategy.BALANCED, seeded(seed))
            assert ids(ranked) == ["healthy", "failing"]

    def test_unmeasured_counts_as_fast(self) -> None:
        """A provider without a latency sample is not penalised against a measured slow one."""
        states = [provider("slow", latency=0.5), provider("fast", latency=0.1), provider("new")]
        for seed in SEEDS:
            ranked = ids(rank(states, NO_PREFERENCES, Strategy.BALANCED, seeded(seed)))
            assert ranked[-1] == "slow"

    def test_equal_providers_share_first_place(self) -> None:
        """Noise breaks ties, so each of two identical providers is sometimes first."""
        states = [provider("one", latency=0.1), provider("two", latency=0.1)]
        firsts = Counter(rank(states, NO_PREFERENCES, Strategy.BALANCED, seeded(s))[0].id for s in SEEDS)
        assert set(firsts) == {"one", "two"}
        assert min(firsts.values()) > 50
