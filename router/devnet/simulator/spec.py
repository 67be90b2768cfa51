"""ProviderSpec: everything that makes one simulated provider what it is, on chain and over HTTP."""

from __future__ import annotations

from dataclasses import dataclass, field

from router.devnet.simulator.faults import Faults
from router.devnet.simulator.limits import RateLimits


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """What a provider registers (model, prices, type, verifiability) and how its broker behaves."""

    model: str = "devnet-model"
    input_price: int = 1_000_000_000
    output_price: int = 2_000_000_000
    service_type: str = "chatbot"
    verifiability: str = "TeeML"
    limits: RateLimits = field(default_factory=RateLimits)
    faults: Faults = field(default_factory=Faults)
    max_global_concurrent: int = 20
