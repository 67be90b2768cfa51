"""The devnet: anvil + the real 0G contracts + registered providers + a funded user."""

from router.devnet.network import (
    USER_KEY_INDEX,
    Devnet,
    DevnetConfig,
    DevnetProvider,
    dev_private_key,
)
from router.devnet.simulator.spec import ProviderSpec

__all__ = [
    "USER_KEY_INDEX",
    "Devnet",
    "DevnetConfig",
    "DevnetProvider",
    "ProviderSpec",
    "dev_private_key",
]
