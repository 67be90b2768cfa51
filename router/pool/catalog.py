"""The model list the gateway and the library show: per model, who serves it, at what price, how healthy."""

from __future__ import annotations

from typing import Any

from router.pool.capacity import Capacity, LaneView
from router.pool.providers import Lane, Pool, ProviderState


def model_catalog(pool: Pool, now: float) -> list[dict[str, Any]]:
    """OpenAI-style model objects with a zg-router summary and a per-provider detail list.

    Prices are neuron per token (strings: they exceed JSON's safe integers on some providers).
    """
    catalog = []
    for model, providers in pool.by_model().items():
        prompt = [s.info.input_price for s in providers]
        completion = [s.info.output_price for s in providers]
        catalog.append(
            {
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
                "provider_details": [provider_detail(s, now, pool.capacity) for s in providers],
            }
        )
    return catalog


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
    """What the chain says about a provider's TEE and what verifying its responses has shown."""
    info = state.info
    return {
        "verifiability": info.verifiability,
        "registered_signer": info.registered_signer,
        "signer_acknowledged": info.signer_acknowledged,
        "checked_signer": info.tee_signer,
        "trust": state.trust.as_dict(),
    }
