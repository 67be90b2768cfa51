"""Pricing: the broker's fee rules (tiers, cache tokens, the words fallback) and parsing the price tables."""

from __future__ import annotations

from typing import Any

import pytest

from router.pool.pricing import PriceTier, Pricing, parse_cache_divisor, parse_tiers, reply_charge

# The shape of the [SEED] example in protocol.md §4.5: x4 input and x2 output above 256k prompt tokens.
LONG_CONTEXT = (PriceTier(256_000), PriceTier(0, 4, 1, 2, 1))
PRICING = Pricing(input_price=100, output_price=300)


def chat(content: str | None, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    """A parsed chat completion with ``content`` (and ``usage``, if given)."""
    doc: dict[str, Any] = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
    if usage is not None:
        doc["usage"] = usage
    return doc


class TestPricesFor:
    def test_no_tiers_means_the_base_prices(self) -> None:
        """Without tiers every prompt size pays the listed prices."""
        assert PRICING.prices_for(0) == (100, 300)
        assert PRICING.prices_for(10**9) == (100, 300)

    @pytest.mark.parametrize(
        ("prompt", "expected"), [(0, (100, 300)), (256_000, (100, 300)), (256_001, (400, 600))]
    )
    def test_first_covering_tier_wins_and_the_bound_is_inclusive(
        self, prompt: int, expected: tuple[int, int]
    ) -> None:
        """A tier covers prompts up to and including ``max_input_tokens``; 0 covers everything."""
        assert Pricing(100, 300, LONG_CONTEXT).prices_for(prompt) == expected

    def test_tiers_are_taken_in_order(self) -> None:
        """An unbounded tier listed first shadows every later one (the broker's first-match rule)."""
        pricing = Pricing(100, 300, (PriceTier(0, 2), PriceTier(10, 9)))
        assert pricing.prices_for(5) == (200, 300)

    def test_fractions_round_down_to_whole_neuron(self) -> None:
        """Multiplier/denominator pairs apply as integer maths: 7 * 3 // 2 = 10, 5 * 1 // 3 = 1."""
        pricing = Pricing(7, 5, (PriceTier(0, 3, 2, 1, 3),))
        assert pricing.prices_for(1) == (10, 1)

    def test_a_prompt_beyond_every_bounded_tier_pays_base_prices(self) -> None:
        """With only bounded tiers, a bigger prompt matches none and falls back to the listed prices."""
        pricing = Pricing(100, 300, (PriceTier(1_000, 2, 1, 2, 1),))
        assert pricing.prices_for(1_000) == (200, 600)
        assert pricing.prices_for(1_001) == (100, 300)


class TestFee:
    def test_fee_is_prompt_times_input_plus_completion_times_output(self) -> None:
        """fee = prompt x input + completion x output, exact in integers."""
        assert PRICING.fee(10, 20) == 10 * 100 + 20 * 300
        big = Pricing(input_price=10**12 + 1, output_price=3 * 10**12 + 7)
        assert big.fee(10**6, 10**5) == 10**6 * (10**12 + 1) + 10**5 * (3 * 10**12 + 7)

    def test_tier_prices_apply_to_the_whole_request(self) -> None:
        """A long prompt pays the tier's prices on every token, output included."""
        pricing = Pricing(100, 300, LONG_CONTEXT)
        assert pricing.fee(300_000, 1_000) == 300_000 * 400 + 1_000 * 600

    def test_cached_tokens_pay_input_price_over_the_divisor(self) -> None:
        """With cache billing on, cached prompt tokens cost ``input // divisor`` each."""
        pricing = Pricing(100, 300, cache_divisor=4)
        assert pricing.fee(10, 2, cached_tokens=8) == 2 * 100 + 8 * 25 + 2 * 300

    def test_cached_tokens_are_full_price_when_cache_billing_is_off(self) -> None:
        """Divisor 0 (the default) ignores the cached count."""
        assert PRICING.fee(10, 2, cached_tokens=8) == 10 * 100 + 2 * 300

    def test_cached_count_is_capped_at_the_prompt(self) -> None:
        """More cached tokens than prompt tokens cannot make the prompt cost less than all-cached."""
        pricing = Pricing(100, 300, cache_divisor=4)
        assert pricing.fee(10, 0, cached_tokens=50) == 10 * 25

    def test_cache_discount_uses_the_tier_price(self) -> None:
        """Cached tokens of a long prompt are discounted from the tier's input price."""
        pricing = Pricing(100, 300, LONG_CONTEXT, cache_divisor=4)
        assert pricing.fee(300_000, 0, cached_tokens=100_000) == 200_000 * 400 + 100_000 * 100

    def test_cached_price_rounds_per_token(self) -> None:
        """The per-token cached price is rounded down before multiplying (7 // 4 = 1, not 7/4 x n)."""
        pricing = Pricing(7, 0, cache_divisor=4)
        assert pricing.fee(100, 0, cached_tokens=100) == 100


class TestUsageFee:
    def test_reads_an_openai_usage_object(self) -> None:
        """prompt_tokens, completion_tokens and prompt_tokens_details.cached_tokens are read."""
        pricing = Pricing(100, 300, cache_divisor=4)
        usage = {
            "prompt_tokens": 10,
            "completion_tokens": 3,
            "total_tokens": 13,
            "prompt_tokens_details": {"cached_tokens": 4},
        }
        assert pricing.usage_fee(usage) == 6 * 100 + 4 * 25 + 3 * 300

    @pytest.mark.parametrize("usage", [None, {}])
    def test_no_usage_is_none(self, usage: dict[str, Any] | None) -> None:
        """Missing or empty usage gives None, so the caller falls back (protocol §4.5)."""
        assert PRICING.usage_fee(usage) is None

    @pytest.mark.parametrize(
        "usage",
        [
            {"prompt_tokens": "10", "completion_tokens": 2},
            {"prompt_tokens": 10, "completion_tokens": -1},
            {"prompt_tokens": 1.5, "completion_tokens": 2},
            {"prompt_tokens": True, "completion_tokens": 2},
            {"prompt_tokens": 10, "completion_tokens": None},
        ],
    )
    def test_malformed_counts_give_none(self, usage: dict[str, Any]) -> None:
        """Counts that are not non-negative integers are not trusted (no under- or mis-billing)."""
        assert PRICING.usage_fee(usage) is None

    def test_a_missing_count_is_zero(self) -> None:
        """Usage with only prompt tokens (embeddings) bills the prompt alone."""
        assert PRICING.usage_fee({"prompt_tokens": 7, "total_tokens": 7}) == 700

    @pytest.mark.parametrize("details", [None, [], {"cached_tokens": None}, {"cached_tokens": -3}, "x"])
    def test_bad_cache_details_bill_the_prompt_in_full(self, details: object) -> None:
        """Malformed ``prompt_tokens_details`` never discounts anything."""
        pricing = Pricing(100, 300, cache_divisor=4)
        usage = {"prompt_tokens": 10, "completion_tokens": 0, "prompt_tokens_details": details}
        assert pricing.usage_fee(usage) == 1_000


class TestWordsFee:
    @pytest.mark.parametrize(
        ("text", "words"), [("", 0), ("one", 1), ("  two\twords \n", 2), ("a b\nc  d", 4)]
    )
    def test_counts_whitespace_separated_words_at_the_output_price(self, text: str, words: int) -> None:
        """The broker's no-usage fallback: words of the output x output price."""
        assert PRICING.words_fee(text) == words * 300


class TestReplyCost:
    def test_usage_wins_over_the_text(self) -> None:
        """A reply with usage is billed by usage, whatever its length in words."""
        reply = chat("many words in this reply", {"prompt_tokens": 2, "completion_tokens": 1})
        assert reply_charge(PRICING, reply).cost == 2 * 100 + 1 * 300

    def test_no_usage_falls_back_to_the_words_of_every_choice(self) -> None:
        """Without usage the words of all choices' content are counted."""
        doc = {
            "choices": [
                {"message": {"content": "hello there"}},
                {"message": {"content": "general kenobi !"}},
                {"message": {"content": None}},
                "junk",
            ]
        }
        assert reply_charge(PRICING, doc).cost == 5 * 300

    def test_empty_or_bad_usage_falls_back_to_words(self) -> None:
        """Empty ``{}`` usage is ignored like the broker ignores it; so is a non-object usage."""
        assert reply_charge(PRICING, chat("three short words", {})).cost == 3 * 300
        doc = {"usage": "lots", "choices": [{"message": {"content": "two words"}}]}
        assert reply_charge(PRICING, doc).cost == 2 * 300

    def test_a_transcription_is_billed_by_its_text(self) -> None:
        """Speech-to-text replies carry ``text``: its words are the output."""
        assert reply_charge(PRICING, {"text": "four words of speech"}).cost == 4 * 300

    def test_images_are_billed_per_picture(self) -> None:
        """With ``images=True`` the count of ``data`` entries x output price is the cost."""
        reply = {"created": 1, "data": [{"url": "a"}, {"b64_json": "b"}, {}]}
        assert reply_charge(PRICING, reply, images=True).cost == 3 * 300
        assert reply_charge(PRICING, {"data": "nope"}, images=True).cost is None

    def test_images_flag_ignores_usage(self) -> None:
        """An image reply is priced per picture even if it also carries token usage."""
        reply = {"data": [{}], "usage": {"prompt_tokens": 1000, "completion_tokens": 1000}}
        assert reply_charge(PRICING, reply, images=True).cost == 300

    @pytest.mark.parametrize("doc", [{}, {"choices": "x"}, {"usage": None}, {"data": []}], ids=repr)
    def test_unpriceable_replies_give_none(self, doc: dict[str, object]) -> None:
        """Documents without usage or output text have no known cost."""
        assert reply_charge(PRICING, doc).cost is None

    def test_free_provider_costs_zero_not_none(self) -> None:
        """Price 0 gives a known cost of 0 (billed, free), which is not 'unknown'."""
        assert reply_charge(Pricing(), chat("hi", {"prompt_tokens": 5, "completion_tokens": 5})).cost == 0


class TestParseTiers:
    def test_camel_case_from_chain_additional_info(self) -> None:
        """``additionalInfo.tieredPricing`` (a dict with ``tiers``) in camelCase, numbers as strings too."""
        raw = {
            "tiers": [
                {"maxInputTokens": 256_000},
                {
                    "maxInputTokens": "0",
                    "inputMultiplier": 4,
                    "inputMultiplierDenominator": "1",
                    "outputMultiplier": 2,
                    "outputMultiplierDenominator": 1,
                },
            ]
        }
        assert parse_tiers(raw) == LONG_CONTEXT

    def test_snake_case_list_from_models_endpoint(self) -> None:
        """``/v1/models`` ``pricing.tiered_pricing`` as a bare list in snake_case; defaults fill gaps."""
        raw = [{"max_input_tokens": 1000, "input_multiplier": 3, "input_multiplier_denominator": 2}]
        assert parse_tiers(raw) == (PriceTier(1000, 3, 2, 1, 1),)

    def test_camel_case_wins_when_both_spellings_are_present(self) -> None:
        """The chain's spelling is read first."""
        assert parse_tiers([{"maxInputTokens": 5, "max_input_tokens": 9}]) == (PriceTier(5),)

    @pytest.mark.parametrize("raw", [None, "tiers", 3, {"tiers": "x"}, {"other": []}, []])
    def test_no_usable_table_gives_no_tiers(self, raw: object) -> None:
        """Anything but a list of tier objects (alone or under ``tiers``) means no tiers."""
        assert parse_tiers(raw) == ()

    @pytest.mark.parametrize(
        "bad",
        [
            "not a dict",
            {"maxInputTokens": -1},
            {"maxInputTokens": 1.5},
            {"inputMultiplier": "x"},
            {"inputMultiplierDenominator": 0},
            {"output_multiplier_denominator": 0},
            {"outputMultiplier": True},
            {"inputMultiplier": "-2"},
        ],
    )
    def test_one_malformed_tier_drops_the_whole_table(self, bad: object) -> None:
        """A half-read table could under-price, so any bad tier (or zero denominator) drops all of them."""
        assert parse_tiers([{"maxInputTokens": 10, "inputMultiplier": 2}, bad]) == ()

    def test_zero_multiplier_is_allowed(self) -> None:
        """A free tier (multiplier 0) is a valid price, not a malformed one."""
        assert parse_tiers([{"maxInputTokens": 100, "inputMultiplier": 0}]) == (PriceTier(100, 0),)


class TestParseCacheDivisor:
    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            (True, 4),
            (False, 0),
            (None, 0),
            ("yes", 0),
            (4, 0),
            ({}, 4),
            ({"enabled": True}, 4),
            ({"enabled": False, "divisor": 10}, 0),
            ({"divisor": 10}, 10),
            ({"enabled": True, "divisor": 2}, 2),
            ({"divisor": 0}, 4),
            ({"divisor": -3}, 4),
            ({"divisor": "8"}, 4),
            ({"divisor": 2.5}, 4),
            ({"divisor": True}, 4),
        ],
    )
    def test_table(self, raw: object, expected: int) -> None:
        """Off unless a true flag or an object; the broker's default divisor 4 replaces bad ones."""
        assert parse_cache_divisor(raw) == expected
