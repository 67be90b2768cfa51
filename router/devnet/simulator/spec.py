"""ProviderSpec: everything that makes one simulated provider what it is, on chain and over HTTP."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from router.devnet.simulator.faults import Faults
from router.devnet.simulator.limits import DEFAULT_CONTEXT_LENGTH, RateLimits
from router.errors import ConfigError

# The service types a simulated provider serves (the routes of each: ``server.py``).
SERVICE_TYPES = ("chatbot", "embedding", "text-to-image", "image-editing", "speech-to-text")


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """What a provider registers (model, prices, type, verifiability) and how its broker behaves.

    ``limits`` hold for every wallet but those in ``overrides`` (address, any case → that wallet's whole
    limits), as the broker's ``perUserOverrides``. The provider-wide caps count every wallet together:
    ``max_global_concurrent`` requests at once, and ``global_requests_per_minute`` and
    ``global_tokens_per_minute`` (0 = off). ``context_length`` is what ``/v1/models`` advertises and what
    the default TPM burst is at least. ``anthropic`` (chatbot only): the model also serves Anthropic's
    Messages API natively, at ``/v1/proxy/messages``, and ``/v1/models`` lists ``"anthropic"`` among its
    ``supported_formats``.
    """

    model: str = "devnet-model"
    input_price: int = 1_000_000_000
    output_price: int = 2_000_000_000
    service_type: str = "chatbot"
    verifiability: str = "TeeML"
    context_length: int = DEFAULT_CONTEXT_LENGTH
    limits: RateLimits = field(default_factory=RateLimits)
    overrides: Mapping[str, RateLimits] = field(default_factory=dict, hash=False)
    faults: Faults = field(default_factory=Faults)
    max_global_concurrent: int = 20
    global_requests_per_minute: int = 0
    global_tokens_per_minute: int = 0
    anthropic: bool = False

    def __post_init__(self) -> None:
        if self.service_type not in SERVICE_TYPES:
            raise ConfigError(
                f"unknown service type {self.service_type!r}; a simulated provider is one of "
                + ", ".join(SERVICE_TYPES)
            )
        if self.anthropic and self.service_type != "chatbot":
            raise ConfigError(f"only a chatbot serves the Anthropic format, not a {self.service_type}")
        if self.context_length < 1:
            raise ConfigError(f"context_length must be at least 1, got {self.context_length}")
        if self.max_global_concurrent < 1:
            raise ConfigError(f"max_global_concurrent must be at least 1, got {self.max_global_concurrent}")
        for name in ("global_requests_per_minute", "global_tokens_per_minute"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 (off) or more, got {getattr(self, name)}")
        # Addresses are matched lowercased, as the broker normalises its override keys.
        overrides = MappingProxyType({address.lower(): limits for address, limits in self.overrides.items()})
        object.__setattr__(self, "overrides", overrides)
