"""Which providers to try, in which order. Pure and synchronous: the clock and randomness come in.

Per-request preferences follow OpenRouter's ``provider`` object (``order``, ``only``, ``ignore``,
``allow_fallbacks``, ``sort``, ``max_price``) plus ``verified_only``; headers override the body, and the
0G Router's ``X-0G-Provider-*`` headers are understood too (protocol.md §9).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from router.errors import InvalidRequest
from router.pool.providers import ProviderState


class Strategy(enum.Enum):
    BALANCED = "balanced"
    PRICE = "price"
    LATENCY = "latency"
    LEAST_LOADED = "least-loaded"
    RANDOM = "random"

    @classmethod
    def parse(cls, text: str, param: str) -> Strategy:
        name = _SORT_ALIASES.get(text.strip().lower(), text.strip().lower())
        try:
            return cls(name)
        except ValueError:
            choices = ", ".join(s.value for s in cls)
            raise InvalidRequest(f"unknown sort {text!r}; use one of: {choices}", param=param) from None


# OpenRouter's "throughput" is closest to our least-loaded.
_SORT_ALIASES = {"throughput": "least-loaded", "least_loaded": "least-loaded", "weighted-random": "random"}


@dataclass(frozen=True, slots=True)
class Preferences:
    """A request's routing wishes. Provider ids are compared lowercased."""

    order: tuple[str, ...] = ()
    only: frozenset[str] = frozenset()
    ignore: frozenset[str] = frozenset()
    allow_fallbacks: bool = True
    sort: Strategy | None = None
    max_prompt_price: int | None = None
    max_completion_price: int | None = None
    verified_only: bool = False


NO_PREFERENCES = Preferences()


def parse_preferences(body_field: object, headers: Mapping[str, str]) -> Preferences:
    """Preferences from the body's ``provider`` object and the request headers (headers win)."""
    if body_field is None:
        raw: dict[str, Any] = {}
    elif isinstance(body_field, dict):
        raw = dict(body_field)
    else:
        raise InvalidRequest("`provider` must be an object", param="provider")
    pinned = _apply_headers(raw, headers)
    if not raw:
        return NO_PREFERENCES
    unknown = set(raw) - _KNOWN_FIELDS
    if unknown:
        raise InvalidRequest(
            f"unknown field(s) in `provider`: {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(_KNOWN_FIELDS))}",
            param="provider",
        )
    max_price = raw.get("max_price") or {}
    if not isinstance(max_price, dict):
        raise InvalidRequest("`provider.max_price` must be an object", param="provider.max_price")
    sort = raw.get("sort")
    if sort is not None and not isinstance(sort, str):
        raise InvalidRequest("`provider.sort` must be a string", param="provider.sort")
    return Preferences(
        order=tuple(_ids(raw.get("order"), "provider.order")),
        only=frozenset(_ids(raw.get("only"), "provider.only")),
        ignore=frozenset(_ids(raw.get("ignore"), "provider.ignore")),
        allow_fallbacks=_flag(raw.get("allow_fallbacks", not pinned), "provider.allow_fallbacks"),
        sort=Strategy.parse(sort, "provider.sort") if sort else None,
        max_prompt_price=_price(max_price.get("prompt"), "provider.max_price.prompt"),
        max_completion_price=_price(max_price.get("completion"), "provider.max_price.completion"),
        verified_only=_flag(raw.get("verified_only", False), "provider.verified_only"),
    )


_KNOWN_FIELDS = frozenset(
    {"order", "only", "ignore", "allow_fallbacks", "sort", "max_price", "verified_only"}
)


def _apply_headers(raw: dict[str, Any], headers: Mapping[str, str]) -> bool:
    """Fold the routing headers into ``raw``; True if a header pinned providers."""

    def get(*names: str) -> str | None:
        for name in names:
            value = headers.get(name)
            if value is not None:
                return value
        return None

    pinned = False
    if (sort := get("X-ZG-Sort", "X-0G-Provider-Sort")) is not None:
        raw["sort"] = sort
    if (order := get("X-ZG-Provider", "X-0G-Provider-Address")) is not None:
        raw["order"] = _split(order)
        # As with the 0G Router, pinning a provider turns fallbacks off unless asked for.
        pinned = True
    if (only := get("X-ZG-Only")) is not None:
        raw["only"] = _split(only)
    if (ignore := get("X-ZG-Ignore")) is not None:
        raw["ignore"] = _split(ignore)
    if (fallbacks := get("X-ZG-Allow-Fallbacks", "X-0G-Provider-Allow-Fallbacks")) is not None:
        raw["allow_fallbacks"] = _header_flag(fallbacks, "X-ZG-Allow-Fallbacks")
    prompt = get("X-ZG-Max-Price-Prompt")
    completion = get("X-ZG-Max-Price-Completion")
    if prompt is not None or completion is not None:
        raw["max_price"] = {**(raw.get("max_price") or {})}
        if prompt is not None:
            raw["max_price"]["prompt"] = _header_int(prompt, "X-ZG-Max-Price-Prompt")
        if completion is not None:
            raw["max_price"]["completion"] = _header_int(completion, "X-ZG-Max-Price-Completion")
    if (verified := get("X-ZG-Verified-Only")) is not None:
        raw["verified_only"] = _header_flag(verified, "X-ZG-Verified-Only")
    if (trust := get("X-0G-Provider-Trust-Mode")) is not None:
        mode = trust.strip().lower()
        if mode not in ("standard", "verified", "private"):
            raise InvalidRequest(
                "X-0G-Provider-Trust-Mode must be standard, verified or private",
                param="X-0G-Provider-Trust-Mode",
            )
        raw["verified_only"] = mode != "standard"
    return pinned


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _ids(value: object, param: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidRequest(f"`{param}` must be a list of provider ids", param=param)
    return [v.lower() for v in value]


def _flag(value: object, param: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"`{param}` must be true or false", param=param)
    return value


def _header_flag(value: str, name: str) -> bool:
    text = value.strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise InvalidRequest(f"header {name} must be true or false", param=name)


def _header_int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidRequest(f"header {name} must be an integer (neuron per token)", param=name) from None


def _price(value: object, param: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequest(f"`{param}` must be a non-negative integer (neuron per token)", param=param)
    return value


def eligible(candidates: Sequence[ProviderState], prefs: Preferences) -> list[ProviderState]:
    """The candidates the preferences allow, whatever their current health."""
    out = []
    for state in candidates:
        info = state.info
        key = info.id.lower()
        if prefs.only and key not in prefs.only:
            continue
        if key in prefs.ignore:
            continue
        if prefs.order and not prefs.allow_fallbacks and key not in prefs.order:
            continue
        if prefs.max_prompt_price is not None and info.input_price > prefs.max_prompt_price:
            continue
        if prefs.max_completion_price is not None and info.output_price > prefs.max_completion_price:
            continue
        if prefs.verified_only and not info.verifiable:
            continue
        out.append(state)
    return out


def rank(
    candidates: Sequence[ProviderState],
    prefs: Preferences,
    strategy: Strategy,
    rng: random.Random,
) -> list[ProviderState]:
    """``candidates`` in the order to try them: the preferred ``order`` first, then by strategy."""
    sort = prefs.sort or strategy
    keyed = _KEYS[sort](candidates, rng)
    ranked = [state for _, state in sorted(zip(keyed, candidates, strict=True), key=lambda pair: pair[0])]
    if not prefs.order:
        return ranked
    position = {provider: i for i, provider in enumerate(prefs.order)}
    return sorted(ranked, key=lambda state: position.get(state.info.id.lower(), len(position)))


def _price_of(state: ProviderState) -> int:
    return state.info.input_price + state.info.output_price


def _load(state: ProviderState) -> float:
    return state.gate.in_flight / state.gate.max_concurrent


def _by_price(candidates: Sequence[ProviderState], rng: random.Random) -> list[tuple[float, ...]]:
    return [(_price_of(s), _load(s), rng.random()) for s in candidates]


def _by_latency(candidates: Sequence[ProviderState], rng: random.Random) -> list[tuple[float, ...]]:
    # An unmeasured provider ranks first, so that it gets measured.
    return [(s.health.latency or 0.0, _load(s), rng.random()) for s in candidates]


def _by_load(candidates: Sequence[ProviderState], rng: random.Random) -> list[tuple[float, ...]]:
    return [(_load(s), s.health.error_rate, rng.random()) for s in candidates]


def _weighted_random(candidates: Sequence[ProviderState], rng: random.Random) -> list[tuple[float, ...]]:
    # Efraimidis-Spirakis: sorting by -u^(1/w) draws an order without replacement, weight w per provider.
    keys: list[tuple[float, ...]] = []
    for state in candidates:
        weight = max(1e-6, (1.0 - _load(state)) * (1.0 - state.health.error_rate))
        keys.append((-(rng.random() ** (1.0 / weight)),))
    return keys


def _balanced(candidates: Sequence[ProviderState], rng: random.Random) -> list[tuple[float, ...]]:
    cheapest = min((_price_of(s) for s in candidates), default=0)
    latencies = [s.health.latency for s in candidates if s.health.latency is not None]
    fastest = min(latencies, default=0.0)
    keys: list[tuple[float, ...]] = []
    for state in candidates:
        price = (_price_of(state) + 1) / (cheapest + 1)
        latency = state.health.latency
        speed = 1.0 if latency is None or fastest <= 0 else latency / fastest
        score = 0.4 * price + 0.4 * speed + 1.0 * _load(state) + 2.0 * state.health.error_rate
        # A little noise so that equal providers share the load.
        keys.append((score + 0.05 * rng.random(),))
    return keys


_KEYS: dict[Strategy, Callable[[Sequence[ProviderState], random.Random], list[tuple[float, ...]]]] = {
    Strategy.BALANCED: _balanced,
    Strategy.PRICE: _by_price,
    Strategy.LATENCY: _by_latency,
    Strategy.LEAST_LOADED: _by_load,
    Strategy.RANDOM: _weighted_random,
}
