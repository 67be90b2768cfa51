"""``WalletServices``: one wallet's money machinery, built once per configured wallet by ``Router``.

Each wallet has its own ledger and sub-accounts on chain, so each gets its own chain client (one
transaction signer, one nonce sequence), session tokens, sub-account book, balance sync, settlement watcher
and funder; all of them run on the router's one event loop. Lanes name their wallet by ``address``.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.chain.client import ChainClient
from router.chain.session import SessionTokens
from router.money.balances import BalanceSync
from router.money.funder import Funder
from router.money.watcher import SettlementWatcher
from router.pool.accounting import Accounts


@dataclass(frozen=True, slots=True)
class WalletServices:
    """One wallet's chain client, tokens, book and background services. ``address`` is checksummed."""

    address: str
    chain: ChainClient
    tokens: SessionTokens
    accounts: Accounts
    balances: BalanceSync
    watcher: SettlementWatcher
    funder: Funder
