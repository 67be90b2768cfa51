"""The money operations behind ``Router.balances``/``fund``/``refund``: which configured wallet a call
names, the balance report of every wallet, and who may move money (with replicas sharing Redis, only the
leader: a follower's transaction would start a second nonce stream for the wallet).

Functions of the router's ``WalletServices``, in config order; nothing here holds state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from router.errors import ConfigError, InvalidRequest, clipped, provider_not_found
from router.money.report import balance_report
from router.shared.leader import Fenced, Leadership
from router.types import TxResult

if TYPE_CHECKING:
    from router.money.wallets import WalletServices

Wallets = Sequence["WalletServices"]

NOT_LEADER = "this replica is not the leader; send it to the leader (GET /readyz shows `shared.leader`)"


class NotLeader(InvalidRequest):
    """A fund or refund asked of a replica that is not the leader (409, ``not_leader``)."""

    def __init__(self) -> None:
        super().__init__(NOT_LEADER, status=409, code="not_leader")


def balances(wallets: Wallets) -> dict[str, Any]:
    """``{"wallets": [...]}``: each wallet's ledger, sub-accounts and funding alerts."""
    return {
        "wallets": [balance_report(w.accounts, w.address, w.watcher_block) for w in money_wallets(wallets)]
    }


async def fund(
    wallets: Wallets, leadership: Leadership | None, provider: str, amount: int, wallet: str | None
) -> TxResult:
    services = named_wallet(wallets, wallet, "fund from")
    if not 0 < amount < 2**256:
        raise InvalidRequest(f"cannot fund {amount} neuron: the amount must be positive", param="amount")
    _as_leader(leadership)
    try:
        return await services.funder.fund(provider, amount)
    except Fenced:
        # Leadership was lost before the transaction could go out: nothing was sent.
        raise NotLeader() from None


async def refund(
    wallets: Wallets,
    leadership: Leadership | None,
    providers: Sequence[str] | None,
    wallet: str | None,
) -> dict[str, list[TxResult]]:
    targets = (named_wallet(wallets, wallet, "refund"),) if wallet is not None else money_wallets(wallets)
    if providers is not None and wallet is None:
        unknown = [p for p in providers if not any(w.funder.known(p) for w in targets)]
        if unknown:
            raise provider_not_found(unknown, "providers")
    _as_leader(leadership)
    results: dict[str, list[TxResult]] = {}
    for services in targets:
        held = {a.provider.lower(): a.provider for a in services.accounts if a.exists}
        if providers is None:
            picked = list(held.values())
        elif wallet is not None:
            picked = list(providers)
        else:
            picked = [p for p in providers if p.lower() in held]
        try:
            results[services.address] = await services.funder.drain(picked) if picked else []
        except Fenced:
            raise NotLeader() from None
    return results


def _as_leader(leadership: Leadership | None) -> None:
    """Raise ``NotLeader`` on a follower: only the leader sends transactions."""
    if leadership is not None and not leadership.is_leader:
        raise NotLeader()


def money_wallets(wallets: Wallets) -> Wallets:
    if not wallets:
        raise ConfigError("this router has no wallet: money needs a network and a private key")
    return wallets


def named_wallet(wallets: Wallets, wallet: str | None, action: str) -> WalletServices:
    """The configured wallet ``wallet`` names (any case), or the only one when it is None."""
    configured = money_wallets(wallets)
    addresses = ", ".join(w.address for w in configured)
    if wallet is None:
        if len(configured) == 1:
            return configured[0]
        raise InvalidRequest(
            f"this router has {len(configured)} wallets: name the one to {action} in `wallet` ({addresses})",
            param="wallet",
        )
    found = wallet_of(configured, wallet)
    if found is None:
        raise InvalidRequest(
            f"{clipped(wallet, 42, quote=False)} is not a wallet of this router; it has {addresses}",
            status=404,
            code="wallet_not_found",
            param="wallet",
        )
    return found


def wallet_of(wallets: Wallets, address: str) -> WalletServices | None:
    """The services of the configured wallet at ``address`` (any case)."""
    key = address.lower()
    return next((w for w in wallets if w.address.lower() == key), None)
