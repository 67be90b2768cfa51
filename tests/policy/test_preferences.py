"""Parsing what a request asks for: sort names, the body's ``provider`` object and the X-ZG-* headers.

The OpenRouter-style body fields and both header families (X-ZG-* and X-0G-Provider-*) land in
Preferences; anything malformed is a 400 naming the field or header at fault.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from multidict import CIMultiDict

from router.errors import InvalidRequest
from router.policy.select import NO_PREFERENCES, TEE_ML_ONLY, VERIFIED, Preferences, Strategy
from tests.policy.support import headers, parse


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
            pytest.param({"verified_only": True}, Preferences(verified_only=True), id="verified-only"),
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
            pytest.param(headers(X_ZG_Verified_Only="1"), Preferences(verified_only=True), id="verified-1"),
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
                Preferences(verified_only=True),
                id="trust-mode",
            ),
            pytest.param(
                {"verified_only": False},
                headers(X_ZG_Verified_Only="true"),
                Preferences(verified_only=True),
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
