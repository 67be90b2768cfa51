"""The zg-router exception tree. Every error a caller can see is one of these.

    RouterError
    ├── ConfigError            bad or missing configuration; raised before anything starts
    ├── ChainError             anything on the chain side
    │   ├── ChainUnavailable   no RPC URL answered after retries and failover
    │   ├── ContractRevert     a call or transaction reverted; carries the decoded error
    │   └── TransactionFailed  a transaction was sent but did not succeed (dropped, timed out, reverted
    │                          without a reason we can decode)
    ├── SessionTokenError      a session token cannot be minted (revoked id, unacknowledged account, ...)
    └── DevnetError            the local devnet could not start or was used wrongly

Lower-layer exceptions (web3, aiohttp) are translated at the boundary of the layer that owns them and
never escape it.
"""

from __future__ import annotations

from collections.abc import Sequence


class RouterError(Exception):
    """Root of every error raised by zg-router."""


class ConfigError(RouterError):
    """The configuration is invalid or incomplete."""


class ChainError(RouterError):
    """A chain read or write failed."""


class ChainUnavailable(ChainError):
    """Every configured RPC URL failed with a transport error, after retries."""


class ContractRevert(ChainError):
    """A contract call or transaction reverted.

    ``name`` is the custom error's name (``"MinimumDepositRequired"``), ``"Error"`` for a string revert,
    ``"Panic"`` for a Solidity panic, or ``"Unknown"`` when the revert data matched nothing we know.
    ``error_args`` are the decoded arguments, ``function`` the contract function that reverted.
    """

    def __init__(self, function: str, name: str, args: Sequence[object], raw: str = "") -> None:
        self.function = function
        self.name = name
        self.error_args = tuple(args)
        self.raw = raw
        rendered = ", ".join(_render_arg(a) for a in self.error_args)
        super().__init__(f"{function} reverted with {name}({rendered})")


class TransactionFailed(ChainError):
    """A transaction was sent but did not succeed."""


class SessionTokenError(RouterError):
    """A session token could not be minted for a provider."""


class DevnetError(RouterError):
    """The local devnet failed to start or was misused."""


def _render_arg(value: object) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, str):
        return repr(value)
    return str(value)
