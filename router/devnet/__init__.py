"""The devnet: anvil + the real 0G contracts + registered providers + a funded user."""

from router.devnet.network import (
    USER_KEY_INDEX,
    Devnet,
    DevnetConfig,
    DevnetProvider,
    ProviderSpec,
    dev_private_key,
)

__all__ = [
    "USER_KEY_INDEX",
    "Devnet",
    "DevnetConfig",
    "DevnetProvider",
    "ProviderSpec",
    "dev_private_key",
]
