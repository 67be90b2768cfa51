"""Wallet keys: where the configuration reads them from (environment, key files) and the shape they must
have. Never from the TOML itself, so config files can be shared. Messages name a key by its place or its
wallet's address, never by the key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from router.errors import ConfigError

# A bounded metric label: one series per configured wallet.
MAX_WALLETS = 16
_WALLET_KEY = re.compile(r"(?:0x)?[0-9a-fA-F]{64}")
_KEY_SHAPE = "a 32-byte hex key (64 hex digits, 0x optional)"
SEVERAL_HINT = "several wallets: ZG_ROUTER_PRIVATE_KEYS, ZG_ROUTER_WALLET_KEY_FILES or wallet_key_files"


def check_wallet_keys(keys: tuple[str, ...]) -> None:
    """At most ``MAX_WALLETS`` keys, each of the right shape, no wallet twice. Messages name a wallet by
    its place or its address, never by its key."""
    if len(keys) > MAX_WALLETS:
        raise ConfigError(f"at most {MAX_WALLETS} wallets can be configured, got {len(keys)}")
    seen: set[str] = set()
    for index, key in enumerate(keys, 1):
        _check_key(key, f"wallet key {index} of {len(keys)}" if len(keys) > 1 else "the wallet key")
        bare = key.strip().lower().removeprefix("0x")
        if bare in seen:
            from router.chain.wallet import Wallet  # web3's side: only a network has keys

            raise ConfigError(
                f"wallet {Wallet(key).address} is configured twice: give each wallet's key once"
            )
        seen.add(bare)


def _check_key(key: str, where: str) -> None:
    if not _WALLET_KEY.fullmatch(key.strip()):
        raise ConfigError(f"{where} is not {_KEY_SHAPE}")


_ONE_WALLET = ("ZG_ROUTER_PRIVATE_KEY", "ZG_ROUTER_PRIVATE_KEY_FILE", "private_key_file")
_SEVERAL_WALLETS = ("ZG_ROUTER_PRIVATE_KEYS", "ZG_ROUTER_WALLET_KEY_FILES", "wallet_key_files")


def wallet_keys(data: Mapping[str, Any], env: Mapping[str, str]) -> tuple[str | None, tuple[str, ...]]:
    """(private_key, private_keys) from whichever family of sources is set; both families: an error."""

    def named(sources: tuple[str, ...]) -> list[str]:
        return [name for name in sources if env.get(name) or (name.islower() and name in data)]

    one, several = named(_ONE_WALLET), named(_SEVERAL_WALLETS)
    if one and several:
        raise ConfigError(
            f"wallet keys are set both for one wallet ({', '.join(one)}) and for several wallets "
            f"({', '.join(several)}): keep one kind. For several wallets, drop {' and '.join(one)} and "
            f"list every wallet, the first one included, in {several[0]}; for one wallet, drop "
            f"{' and '.join(several)}"
        )
    if several:
        return None, _several_keys(data, env)
    return _private_key(data, env), ()


def _private_key(data: Mapping[str, Any], env: Mapping[str, str]) -> str:
    if key := env.get("ZG_ROUTER_PRIVATE_KEY"):
        key = key.strip()
        _check_key(key, "ZG_ROUTER_PRIVATE_KEY")
        return key
    key_file = env.get("ZG_ROUTER_PRIVATE_KEY_FILE", data.get("private_key_file"))
    if not key_file:
        raise ConfigError(
            "a network is configured but no wallet key: "
            f"set ZG_ROUTER_PRIVATE_KEY or ZG_ROUTER_PRIVATE_KEY_FILE ({SEVERAL_HINT})"
        )
    return _key_file(key_file)


def _several_keys(data: Mapping[str, Any], env: Mapping[str, str]) -> tuple[str, ...]:
    if text := env.get("ZG_ROUTER_PRIVATE_KEYS"):
        keys = [k.strip() for k in text.split(",") if k.strip()]
        for index, key in enumerate(keys, 1):
            _check_key(key, f"key {index} of ZG_ROUTER_PRIVATE_KEYS")
        if not keys:
            raise ConfigError("ZG_ROUTER_PRIVATE_KEYS holds no key: list the wallets' keys, comma-separated")
        return tuple(keys)
    if text := env.get("ZG_ROUTER_WALLET_KEY_FILES"):
        paths: list[object] = [p for p in text.split(os.pathsep) if p.strip()]
        where = "ZG_ROUTER_WALLET_KEY_FILES"
    else:
        listed = data["wallet_key_files"]
        if not isinstance(listed, list):
            raise ConfigError("wallet_key_files must be a list of the wallets' key files (paths)")
        paths = listed
        where = "wallet_key_files"
    if not paths or not all(isinstance(p, str) and p for p in paths):
        raise ConfigError(f"{where} must list the wallets' key files (paths)")
    return tuple(_key_file(path) for path in paths)


def _key_file(path: object) -> str:
    try:
        key = Path(str(path)).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the wallet key file {path}: {exc.strerror}") from None
    _check_key(key, f"the wallet key file {path}")
    return key
