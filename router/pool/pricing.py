"""What a provider charges, computed the way its broker bills (protocol.md §4.5). Pure functions.

fee = prompt * input price + completion * output price, in integer neuron. Optional tiered pricing
multiplies both prices by the first tier whose ``max_input_tokens`` covers the prompt (0 = unbounded);
optional cache-token billing charges cached prompt tokens at ``input price // divisor``. A reply with no
usage is billed by the broker's fallback: whitespace-separated words of the output at the output price.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple


class Charge(NamedTuple):
    """What a reply costs (neuron) and the tokens it was billed for; None where the reply does not say."""

    cost: int | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    images: int | None = None

    @property
    def tokens(self) -> int | None:
        """The tokens the reply says it used, as a provider's token budget counts them."""
        prompt, completion = self.prompt_tokens, self.completion_tokens
        if isinstance(prompt, int) and isinstance(completion, int):
            return prompt + completion
        return None


@dataclass(frozen=True, slots=True)
class PriceTier:
    """Prices * ``input_multiplier / input_denominator`` (and the output pair) up to ``max_input_tokens``."""

    max_input_tokens: int
    input_multiplier: int = 1
    input_denominator: int = 1
    output_multiplier: int = 1
    output_denominator: int = 1


@dataclass(frozen=True, slots=True)
class Pricing:
    """A provider's price list for one model. Prices are neuron per token (or per image)."""

    input_price: int = 0
    output_price: int = 0
    tiers: tuple[PriceTier, ...] = ()
    cache_divisor: int = 0

    def prices_for(self, prompt_tokens: int) -> tuple[int, int]:
        """(input, output) price per token for a prompt of ``prompt_tokens``."""
        for tier in self.tiers:
            if tier.max_input_tokens == 0 or prompt_tokens <= tier.max_input_tokens:
                return (
                    self.input_price * tier.input_multiplier // tier.input_denominator,
                    self.output_price * tier.output_multiplier // tier.output_denominator,
                )
        return self.input_price, self.output_price

    def fee(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> int:
        input_price, output_price = self.prices_for(prompt_tokens)
        cached = min(cached_tokens, prompt_tokens) if self.cache_divisor > 0 else 0
        cached_fee = cached * (input_price // self.cache_divisor) if cached else 0
        return (prompt_tokens - cached) * input_price + cached_fee + completion_tokens * output_price

    def usage_fee(self, usage: Mapping[str, Any] | None) -> int | None:
        """The fee for a ``usage`` object (OpenAI's or Anthropic's); None if it carries no token counts."""
        counts = token_counts(usage)
        return self.fee(*counts) if counts is not None else None

    def usage_charge(self, usage: Mapping[str, Any] | None) -> Charge:
        """The fee for a ``usage`` object with its token counts (all None if it has none)."""
        counts = token_counts(usage)
        if counts is None:
            return Charge(None)
        prompt, completion, cached = counts
        return Charge(self.fee(prompt, completion, cached), prompt, completion)

    def words_fee(self, text: str) -> int:
        """The broker's fallback when a reply has no usage: words of the output at the output price."""
        return len(text.split()) * self.output_price


def token_counts(usage: Mapping[str, Any] | None) -> tuple[int, int, int] | None:
    """(prompt, completion, cached prompt) tokens of an OpenAI ``usage`` object (``prompt_tokens``,
    ``completion_tokens``, ``prompt_tokens_details.cached_tokens``) or an Anthropic one (``input_tokens``
    plus the cache reads and writes, which Anthropic counts apart, ``output_tokens``,
    ``cache_read_input_tokens``); None if it carries no valid counts."""
    if not usage:
        return None
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens", 0) if isinstance(details, dict) else 0
    elif "input_tokens" in usage or "output_tokens" in usage:
        read = usage.get("cache_read_input_tokens") or 0
        written = usage.get("cache_creation_input_tokens") or 0
        fresh = usage.get("input_tokens", 0)
        if not (_count(read) and _count(written) and _count(fresh)):
            return None
        prompt, completion, cached = fresh + read + written, usage.get("output_tokens", 0), read
    else:
        return None
    if not _count(prompt) or not _count(completion):
        return None
    return prompt, completion, cached if _count(cached) else 0


def reply_charge(pricing: Pricing, doc: Mapping[str, Any], *, images: bool = False) -> Charge:
    """The charge for a whole JSON reply, parsed: by usage, by picture count for images, and by the words
    of the output when there is no usage."""
    if images:
        data = doc.get("data")
        if not isinstance(data, list):
            return Charge(None)
        return Charge(len(data) * pricing.output_price, images=len(data))
    usage = doc.get("usage")
    charge = pricing.usage_charge(usage if isinstance(usage, dict) else None)
    if charge.cost is not None:
        return charge
    text = _output_text(doc)
    return Charge(pricing.words_fee(text) if text is not None else None)


def _output_text(doc: Mapping[str, Any]) -> str | None:
    """The generated text of a chat completion or a transcription."""
    if isinstance(doc.get("text"), str):
        return str(doc["text"])
    choices = doc.get("choices")
    if not isinstance(choices, list):
        return None
    parts = []
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
    return " ".join(parts)


def parse_tiers(raw: object) -> tuple[PriceTier, ...]:
    """Tiers from ``/v1/models`` ``pricing.tiered_pricing`` or ``additionalInfo.tieredPricing.tiers``.

    Both spellings of each key are read (camelCase on chain, snake_case in JSON APIs); a malformed tier
    drops the whole list, so a half-read table never under-prices.
    """
    if isinstance(raw, dict):
        raw = raw.get("tiers")
    if not isinstance(raw, list):
        return ()
    tiers: list[PriceTier] = []
    for entry in raw:
        if not isinstance(entry, dict):
            return ()
        values = [
            _field(entry, "maxInputTokens", "max_input_tokens", 0, minimum=0),
            _field(entry, "inputMultiplier", "input_multiplier", 1, minimum=0),
            _field(entry, "inputMultiplierDenominator", "input_multiplier_denominator", 1, minimum=1),
            _field(entry, "outputMultiplier", "output_multiplier", 1, minimum=0),
            _field(entry, "outputMultiplierDenominator", "output_multiplier_denominator", 1, minimum=1),
        ]
        if any(value is None for value in values):
            return ()
        tiers.append(PriceTier(*(int(v) for v in values if v is not None)))
    return tuple(tiers)


def parse_cache_divisor(raw: object) -> int:
    """The cache-token divisor from ``cache_token_billing`` / ``cacheTokenBilling``: 0 when off, 4 when
    on without a divisor (the broker's default)."""
    if isinstance(raw, bool):
        return 4 if raw else 0
    if not isinstance(raw, dict):
        return 0
    if raw.get("enabled") is False:
        return 0
    divisor = raw.get("divisor", 4)
    return divisor if _count(divisor) and divisor > 0 else 4


def _field(entry: dict[str, Any], camel: str, snake: str, default: int, *, minimum: int) -> int | None:
    value = entry.get(camel, entry.get(snake, default))
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    return value if _count(value) and value >= minimum else None


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
