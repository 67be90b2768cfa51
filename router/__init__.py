"""zg-router: one fast, reliable OpenAI-compatible endpoint over the 0G Compute Network.

    from router import Router, RouterConfig, network_by_name

    config = RouterConfig(network=network_by_name("testnet"), private_key=key)
    async with Router(config) as router:
        reply = await router.chat(model="...", messages=[{"role": "user", "content": "hi"}])

These names are the public API; the subpackages are internal. Names load on first use, so that importing
``router`` (say, for ``zg-router --help``) does not pull in web3 or aiohttp, and reads nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from router import lazy_bls

# Before anything here imports eth_account: its keystore module's BLS imports cost 0.35 s of every start.
lazy_bls.install()

_EXPORTS = {
    "AllAttemptsFailed": "router.errors",
    "ChainError": "router.errors",
    "ConfigError": "router.errors",
    "Devnet": "router.devnet.network",
    "DevnetConfig": "router.devnet.network",
    "DiscoveryOptions": "router.config",
    "DispatchOptions": "router.config",
    "Endpoint": "router.endpoints",
    "FakeReply": "router.transport.fake",
    "FakeRequest": "router.transport.fake",
    "FakeTransport": "router.transport.fake",
    "Gateway": "router.server.app",
    "GatewayConfig": "router.config",
    "HealthPolicy": "router.pool.health",
    "InsufficientFunds": "router.errors",
    "InvalidRequest": "router.errors",
    "MoneyOptions": "router.config",
    "Network": "router.chain.networks",
    "NoProviderAvailable": "router.errors",
    "ProviderTransport": "router.transport.base",
    "Request": "router.request",
    "RequestFailed": "router.errors",
    "Router": "router.client",
    "RouterConfig": "router.config",
    "RouterError": "router.errors",
    "Saturated": "router.errors",
    "StaticUpstream": "router.config",
    "Strategy": "router.policy.select",
    "TransportOptions": "router.transport.http",
    "Unauthorized": "router.errors",
    "UpstreamRejected": "router.errors",
    "VerifyOptions": "router.verify.verifier",
    "load_config": "router.config",
    "network_by_name": "router.chain.networks",
    "parse_payload": "router.request",
}

__all__ = [
    "AllAttemptsFailed",
    "ChainError",
    "ConfigError",
    "Devnet",
    "DevnetConfig",
    "DiscoveryOptions",
    "DispatchOptions",
    "Endpoint",
    "FakeReply",
    "FakeRequest",
    "FakeTransport",
    "Gateway",
    "GatewayConfig",
    "HealthPolicy",
    "InsufficientFunds",
    "InvalidRequest",
    "MoneyOptions",
    "Network",
    "NoProviderAvailable",
    "ProviderTransport",
    "Request",
    "RequestFailed",
    "Router",
    "RouterConfig",
    "RouterError",
    "Saturated",
    "StaticUpstream",
    "Strategy",
    "TransportOptions",
    "Unauthorized",
    "UpstreamRejected",
    "VerifyOptions",
    "load_config",
    "network_by_name",
    "parse_payload",
]

if TYPE_CHECKING:
    from router.chain.networks import Network, network_by_name
    from router.client import Router
    from router.config import (
        DiscoveryOptions,
        DispatchOptions,
        GatewayConfig,
        MoneyOptions,
        RouterConfig,
        StaticUpstream,
        load_config,
    )
    from router.devnet.network import Devnet, DevnetConfig
    from router.endpoints import Endpoint
    from router.errors import (
        AllAttemptsFailed,
        ChainError,
        ConfigError,
        InsufficientFunds,
        InvalidRequest,
        NoProviderAvailable,
        RequestFailed,
        RouterError,
        Saturated,
        Unauthorized,
        UpstreamRejected,
    )
    from router.policy.select import Strategy
    from router.pool.health import HealthPolicy
    from router.request import Request, parse_payload
    from router.server.app import Gateway
    from router.transport.base import ProviderTransport
    from router.transport.fake import FakeReply, FakeRequest, FakeTransport
    from router.transport.http import TransportOptions
    from router.verify.verifier import VerifyOptions


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'router' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
