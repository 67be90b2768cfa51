"""The model list and the provider list the gateway and the library show: per model, who serves it, at
what price, how healthy; per provider, what it serves, its limits, health, trust and attestation."""

from __future__ import annotations

from typing import Any

from router.pool.capacity import Capacity, LaneView
from router.pool.providers import Lane, Pool, ProviderState


def model_catalog(pool: Pool, now: float) -> list[dict[str, Any]]:
    """OpenAI-style model objects with a zg-router summary and a per-provider detail list.

    Prices are neuron per token (strings: they exceed JSON's safe integers on some providers).
    """
    return [_model(model, providers, now, pool.capacity) for model, providers in pool.by_model().items()]


def model_entry(pool: Pool, model: str, now: float) -> dict[str, Any] | None:
    """The one object of ``model_catalog`` for ``model`` (matched case-insensitively, as requests are
    routed), or None for a model nobody serves."""
    if not pool.knows_model(model):
        return None
    wanted = model.lower()
    for known, providers in pool.by_model().items():
        if known.lower() == wanted:
            return _model(known, providers, now, pool.capacity)
    return None


def _model(model: str, providers: list[ProviderState], now: float, capacity: Capacity) -> dict[str, Any]:
    prompt = [s.info.input_price for s in providers]
    completion = [s.info.output_price for s in providers]
    return {
        "id": model,
        "object": "model",
        "created": 0,
        "owned_by": "0g-compute",
        "service_types": sorted({s.info.service_type for s in providers}),
        "providers": len(providers),
        "available": sum(1 for s in providers if s.available(now)),
        "pricing": {
            "prompt": {"min": str(min(prompt)), "max": str(max(prompt))},
            "completion": {"min": str(min(completion)), "max": str(max(completion))},
        },
        "tee": any(s.info.verifiable for s in providers),
        "provider_details": [provider_detail(s, now, capacity) for s in providers],
    }


def provider_catalog(
    pool: Pool, now: float, *, model: str | None = None, service_type: str | None = None
) -> list[dict[str, Any]]:
    """``provider_view`` of every provider, by address; only those serving ``model`` (case-insensitive)
    and of ``service_type``, when given."""
    states = sorted(pool, key=lambda s: s.id.lower())
    if model is not None:
        wanted = model.lower()
        states = [s for s in states if any(m.lower() == wanted for m in s.info.models)]
    if service_type is not None:
        states = [s for s in states if s.info.service_type == service_type]
    return [provider_view(s, now, pool.capacity) for s in states]


def provider_view(state: ProviderState, now: float, capacity: Capacity) -> dict[str, Any]:
    """One provider as the provider list (and the admin report, which adds balances) shows it: its
    ``provider_detail`` with the models it serves and its ``attestation`` (our trust verdict on it
    included)."""
    view = provider_detail(state, now, capacity)
    view["models"] = list(state.info.models)
    view["attestation"] = attestation(state)
    return view


def provider_detail(state: ProviderState, now: float, capacity: Capacity) -> dict[str, Any]:
    """One provider as the model list and the admin view show it, with each of its lanes."""
    info, health, limits = state.info, state.health, state.info.limits
    excluded = state.excluded_at(now)
    lanes = [lane_detail(lane, capacity.view(lane, now), now) for lane in state.lanes]
    return {
        "id": info.id,
        "kind": info.kind.value,
        "service_type": info.service_type,
        "pricing": {"prompt": str(info.input_price), "completion": str(info.output_price)},
        "verifiability": info.verifiability,
        "limits": {
            "requests_per_minute": limits.requests_per_minute,
            "burst": limits.burst,
            "max_concurrent": limits.max_concurrent,
            "tokens_per_minute": limits.tokens_per_minute or None,
            "images_per_minute": limits.images_per_minute or None,
        },
        "health": {
            "breaker": health.state.value,
            "latency_ms": None if health.latency is None else round(health.latency * 1000, 2),
            "ttft_ms": None if health.ttft is None else round(health.ttft * 1000, 2),
            "error_rate": round(health.error_rate, 4),
        },
        "in_flight": sum(lane["in_flight"] for lane in lanes),
        "excluded": excluded.value if excluded else None,
        "lanes": lanes,
    }


def lane_detail(lane: Lane, view: LaneView, now: float) -> dict[str, Any]:
    """One (wallet, provider) lane: what its capacity holds now and whether it is left out."""
    excluded = lane.excluded_at(now)
    return {
        "wallet": lane.wallet,
        "in_flight": view.in_flight,
        "max_concurrent": view.max_concurrent,
        "requests_left": round(view.requests, 2),
        "tokens_left": None if view.tokens is None else round(view.tokens),
        "images_left": None if view.images is None else round(view.images, 2),
        "blocked_for": round(view.blocked_for, 3),
        "excluded": excluded.value if excluded else None,
    }


def attestation(state: ProviderState) -> dict[str, Any]:
    """What the chain says about a provider's TEE, what verifying its responses has shown, and what its
    TEE quote showed (``quote``: state, reason, checked_at, signer_in_quote, checks)."""
    info = state.info
    return {
        "verifiability": info.verifiability,
        "registered_signer": info.registered_signer,
        "signer_acknowledged": info.signer_acknowledged,
        "checked_signer": info.tee_signer,
        "trust": state.trust.as_dict(),
        "quote": state.trust.attestation.as_dict(),
    }
