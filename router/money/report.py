"""Views of the wallets' money and the pool for the admin API, the CLI and the library. Pure functions.

Amounts are decimal strings of neuron (JSON numbers lose precision past 2**53). Wallets are named by their
checksummed addresses, in config order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from router.pool.accounting import Accounts, FundingState, SubAccount
from router.pool.catalog import provider_view
from router.pool.providers import Pool

ALERT_STATES = (FundingState.LEDGER_LOW, FundingState.PROVIDER_CAP, FundingState.FAILED)


def account_view(account: SubAccount) -> dict[str, Any]:
    return {
        "provider": account.provider,
        "exists": account.exists,
        "acknowledged": account.acknowledged,
        "balance": str(account.balance),
        "pending_refund": str(account.pending_refund),
        "unsettled": str(account.unsettled),
        "unsettled_provider": str(account.provider_unsettled),
        "unsettled_ours": str(account.our_unsettled),
        "reserved": str(account.reserved),
        "reserved_elsewhere": str(account.reserved_elsewhere),
        "available": str(account.available),
        "spent": str(account.spent),
        "settled": str(account.settled),
        "funding": account.funding.value,
        "funding_detail": account.funding_detail or None,
    }


def balance_report(accounts: Accounts, wallet: str, watcher_block: int | None) -> dict[str, Any]:
    """One wallet's ledger, every sub-account it holds, and its funding alerts (each naming the wallet,
    which one may read apart from its report)."""
    subs = sorted(accounts, key=lambda a: a.provider.lower())
    return {
        "wallet": wallet,
        "ledger": {
            "available": str(accounts.ledger_available),
            "total": str(accounts.ledger_total),
            "block": accounts.ledger_block,
            "funded_providers": len(accounts.funded_providers),
        },
        "accounts": [account_view(a) for a in subs],
        "alerts": [
            {"wallet": wallet, "provider": a.provider, "state": a.funding.value, "detail": a.funding_detail}
            for a in subs
            if a.funding in ALERT_STATES
        ],
        "watcher_block": watcher_block,
    }


def providers_report(pool: Pool, wallets: Mapping[str, Accounts], now: float) -> list[dict[str, Any]]:
    """Every provider in the pool: what it serves, its limits, health and lanes, and each wallet's
    balance there (``wallets``: each wallet's address and book)."""
    report = []
    for state in sorted(pool, key=lambda s: s.id.lower()):
        detail = provider_view(state, now, pool.capacity)
        detail["balances"] = provider_balances(state.id, wallets)
        report.append(detail)
    return report


def provider_balances(provider: str, wallets: Mapping[str, Accounts]) -> dict[str, dict[str, Any] | None]:
    """Each wallet's sub-account at ``provider`` by wallet address, None for a wallet without one (and
    for a static upstream, which no wallet pays)."""
    views: dict[str, dict[str, Any] | None] = {}
    for wallet, accounts in wallets.items():
        account = accounts.get(provider)
        views[wallet] = account_view(account) if account is not None else None
    return views
