"""Which providers to try, in which order. Pure and synchronous: the clock and randomness come in.

Per-request preferences follow OpenRouter's ``provider`` object (``order``, ``only``, ``ignore``,
``allow_fallbacks``, ``sort``, ``max_price``) plus ``verified_only``; headers override the body, and the
0G Router's ``X-0G-Provider-*`` headers are understood too (protocol.md §9).
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any

from router.errors import InvalidRequest, clipped
from router.pool.health import BreakerState
from router.pool.providers import ProviderState
from router.pool.trust import AttestationState, TrustState


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
            raise InvalidRequest(
                f"unknown sort {clipped(text)}; use one of: {choices}", param=param
            ) from None


# OpenRouter's "throughput" is closest to our least-loaded.
_SORT_ALIASES = {"throughput": "least-loaded", "least_loaded": "least-loaded", "weighted-random": "random"}


VERIFIED = frozenset({"TeeML", "TeeTLS"})
TEE_ML_ONLY = frozenset({"TeeML"})


@dataclass(frozen=True, slots=True)
class Preferences:
    """A request's routing wishes. Provider ids are compared lowercased; an empty ``verifiability``
    accepts any provider, otherwise only providers whose verifiability is in it. ``verified_only`` keeps
    the providers whose responses we verified (and whose latest check did not fail); with
    ``require_attestation`` (``[verify] require_attestation``, set on the call by the router) only those
    of them whose TEE quote is attested too."""

    order: tuple[str, ...] = ()
    only: frozenset[str] = frozenset()
    ignore: frozenset[str] = frozenset()
    allow_fallbacks: bool = True
    sort: Strategy | None = None
    max_prompt_price: int | None = None
    max_completion_price: int | None = None
    verifiability: frozenset[str] = frozenset()
    verified_only: bool = False
    require_attestation: bool = False


NO_PREFERENCES = Preferences()
_BODY_FIELDS = ("order", "only", "ignore", "allow_fallbacks", "sort", "max_price", "verified_only")


def parse_preferences(body_field: object, headers: Mapping[str, str]) -> Preferences:
    """Preferences from the body's ``provider`` object and the request headers (headers win).

    Pinning providers with a header turns fallbacks off unless fallbacks are asked for, as on the 0G Router.
    """
    values = _from_body(body_field)
    overrides, pinned = _from_headers(headers)
    if not values and not overrides:
        return NO_PREFERENCES
    values.update(overrides)
    if pinned and "allow_fallbacks" not in values:
        values["allow_fallbacks"] = False
    return Preferences(**values)


def _from_body(field: object) -> dict[str, Any]:
    if field is None:
        return {}
    if not isinstance(field, dict):
        raise InvalidRequest("`provider` must be an object", param="provider")
    unknown = set(field) - set(_BODY_FIELDS)
    if unknown:
        raise InvalidRequest(
            f"unknown field(s) in `provider`: {clipped(', '.join(sorted(unknown)), quote=False)}; "
            f"known: {', '.join(_BODY_FIELDS)}",
            param="provider",
        )
    values: dict[str, Any] = {}
    if "order" in field:
        values["order"] = tuple(_ids(field["order"], "provider.order"))
    for name in ("only", "ignore"):
        if name in field:
            values[name] = frozenset(_ids(field[name], f"provider.{name}"))
    if "allow_fallbacks" in field:
        values["allow_fallbacks"] = _flag(field["allow_fallbacks"], "provider.allow_fallbacks")
    if (sort := field.get("sort")) is not None:
        if not isinstance(sort, str):
            raise InvalidRequest("`provider.sort` must be a string", param="provider.sort")
        values["sort"] = Strategy.parse(sort, "provider.sort")
    if (max_price := field.get("max_price")) is not None:
        if not isinstance(max_price, dict):
            raise InvalidRequest("`provider.max_price` must be an object", param="provider.max_price")
        unknown = set(max_price) - {"prompt", "completion"}
        if unknown:
            raise InvalidRequest(
                "`provider.max_price` takes `prompt` and `completion` (neuron per token)",
                param="provider.max_price",
            )
        values["max_prompt_price"] = _price(max_price.get("prompt"), "provider.max_price.prompt")
        values["max_completion_price"] = _price(max_price.get("completion"), "provider.max_price.completion")
    if "verified_only" in field:
        values["verified_only"] = _flag(field["verified_only"], "provider.verified_only")
    return values


def _from_headers(headers: Mapping[str, str]) -> tuple[dict[str, Any], bool]:
    """Validated overrides from the routing headers (errors name the header), and whether they pin."""
    values: dict[str, Any] = {}

    def get(*names: str) -> tuple[str, str] | None:
        for name in names:
            value = headers.get(name)
            if value is not None:
                return name, value
        return None

    pinned = False
    if found := get("X-ZG-Sort", "X-0G-Provider-Sort"):
        values["sort"] = Strategy.parse(found[1], found[0])
    if found := get("X-ZG-Provider", "X-0G-Provider-Address"):
        values["order"] = tuple(_split(found[1]))
        pinned = True
    if found := get("X-ZG-Only"):
        values["only"] = frozenset(_split(found[1]))
    if found := get("X-ZG-Ignore"):
        values["ignore"] = frozenset(_split(found[1]))
    if found := get("X-ZG-Allow-Fallbacks", "X-0G-Provider-Allow-Fallbacks"):
        values["allow_fallbacks"] = _header_flag(*reversed(found))
    if found := get("X-ZG-Max-Price-Prompt"):
        values["max_prompt_price"] = _header_price(*reversed(found))
    if found := get("X-ZG-Max-Price-Completion"):
        values["max_completion_price"] = _header_price(*reversed(found))
    if found := get("X-ZG-Verified-Only"):
        values["verified_only"] = _header_flag(*reversed(found))
    if found := get("X-0G-Provider-Trust-Mode"):
        modes = {"standard": frozenset(), "verified": VERIFIED, "private": TEE_ML_ONLY}
        mode = found[1].strip().lower()
        if mode not in modes:
            raise InvalidRequest(f"{found[0]} must be standard, verified or private", param=found[0])
        values["verifiability"] = modes[mode]
    return values, pinned


def _split(value: str) -> list[str]:
    return [part.strip().lower() for part in value.split(",") if part.strip()]


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


def _header_price(value: str, name: str) -> int:
    try:
        price = int(value)
    except ValueError:
        price = -1
    if price < 0:
        raise InvalidRequest(f"header {name} must be a non-negative integer (neuron per token)", param=name)
    return price


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
        if prefs.verifiability and info.verifiability not in prefs.verifiability:
            continue
        if prefs.verified_only and state.trust.state is not TrustState.VERIFIED:
            continue
        if (
            prefs.verified_only
            and prefs.require_attestation
            and state.trust.attestation.state is not AttestationState.ATTESTED
        ):
            continue
        out.append(state)
    return out


def retry_candidates(
    candidates: Sequence[ProviderState], tried: Set[str], failed: Set[str]
) -> list[ProviderState]:
    """The candidates for a request's next attempt: those it has not tried yet; once it tried them all,
    those that did not fail it (they only rate-limited it, so their queue is the better bet than a
    provider that just failed); failing that, everyone."""
    untried = [s for s in candidates if s.id not in tried]
    if untried:
        return untried
    return [s for s in candidates if s.id not in failed] or list(candidates)


def over_ejection_cap(
    providers: Sequence[ProviderState], now: float, max_percent: float
) -> Sequence[ProviderState]:
    """The breaker-ejected providers to let back so that breakers eject at most ``max_percent`` % of
    ``providers`` (a model's) at once, least bad first: the breaker due to reopen soonest, then the lower
    error rate. Ejected is open, or half-open with its one probe out; a provider excluded for another
    reason (unfunded, misconfigured, untrusted) counts neither way, as letting its breaker go would not
    bring it back. Empty when the cap holds, which costs one pass and no allocation when all are closed.
    """
    ejected = live = 0
    for state in providers:
        if state.excluded and state.excluded_at(now) is not None:
            continue
        live += 1
        if not state.health.admits():
            ejected += 1
    excess = ejected - math.floor(live * max_percent / 100)
    if excess <= 0:
        return ()
    shut = [
        s
        for s in providers
        if s.health.state is BreakerState.OPEN and not (s.excluded and s.excluded_at(now) is not None)
    ]
    shut.sort(key=lambda s: (s.health.retry_in, s.health.error_rate))
    return shut[:excess]


def rank(
    candidates: Sequence[ProviderState],
    prefs: Preferences,
    strategy: Strategy,
    rng: random.Random,
    load: Load,
) -> list[ProviderState]:
    """``candidates`` in the order to try them: the preferred ``order`` first, then by strategy.
    ``load(provider)`` is the share of its concurrency in use (0..1), over its lanes."""
    sort = prefs.sort or strategy
    keyed = _KEYS[sort](candidates, rng, load)
    ranked = [state for _, state in sorted(zip(keyed, candidates, strict=True), key=lambda pair: pair[0])]
    if not prefs.order:
        return ranked
    position = {provider: i for i, provider in enumerate(prefs.order)}
    return sorted(ranked, key=lambda state: position.get(state.info.id.lower(), len(position)))


def _price_of(state: ProviderState) -> int:
    return state.info.input_price + state.info.output_price


Load = Callable[[ProviderState], float]


def _by_price(candidates: Sequence[ProviderState], rng: random.Random, load: Load) -> list[tuple[float, ...]]:
    return [(_price_of(s), load(s), rng.random()) for s in candidates]


def _by_latency(
    candidates: Sequence[ProviderState], rng: random.Random, load: Load
) -> list[tuple[float, ...]]:
    # An unmeasured provider ranks first, so that it gets measured.
    return [(s.health.latency or 0.0, load(s), rng.random()) for s in candidates]


def _by_load(candidates: Sequence[ProviderState], rng: random.Random, load: Load) -> list[tuple[float, ...]]:
    return [(load(s), s.health.error_rate, rng.random()) for s in candidates]


def _weighted_random(
    candidates: Sequence[ProviderState], rng: random.Random, load: Load
) -> list[tuple[float, ...]]:
    # Efraimidis-Spirakis: sorting by -u^(1/w) draws an order without replacement, weight w per provider.
    keys: list[tuple[float, ...]] = []
    for state in candidates:
        weight = max(1e-6, (1.0 - load(state)) * (1.0 - state.health.error_rate))
        keys.append((-(rng.random() ** (1.0 / weight)),))
    return keys


def _balanced(candidates: Sequence[ProviderState], rng: random.Random, load: Load) -> list[tuple[float, ...]]:
    cheapest = min((_price_of(s) for s in candidates), default=0)
    latencies = [s.health.latency for s in candidates if s.health.latency is not None]
    fastest = min(latencies, default=0.0)
    keys: list[tuple[float, ...]] = []
    for state in candidates:
        price = (_price_of(state) + 1) / (cheapest + 1)
        latency = state.health.latency
        speed = 1.0 if latency is None or fastest <= 0 else latency / fastest
        score = 0.4 * price + 0.4 * speed + 1.0 * load(state) + 2.0 * state.health.error_rate
        # A little noise so that equal providers share the load.
        keys.append((score + 0.05 * rng.random(),))
    return keys


_KEYS: dict[Strategy, Callable[[Sequence[ProviderState], random.Random, Load], list[tuple[float, ...]]]] = {
    Strategy.BALANCED: _balanced,
    Strategy.PRICE: _by_price,
    Strategy.LATENCY: _by_latency,
    Strategy.LEAST_LOADED: _by_load,
    Strategy.RANDOM: _weighted_random,
}
