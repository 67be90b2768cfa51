"""The logs that move a wallet's money, decoded into plain values (protocol.md §2.5, §6.6).

One ``eth_getLogs`` over both contracts, filtered on the wallet as the first indexed topic, returns every
settlement, transfer, refund request and account deletion that touched it. Web3 types stay in here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from web3.contract.async_contract import AsyncContract

# Settlement statuses of TEESettlementResult (protocol.md §6.4).
SETTLEMENT_SUCCESS = 0
SETTLEMENT_PARTIAL = 1


@dataclass(frozen=True, slots=True)
class BalanceChanged:
    """``BalanceUpdated``: the sub-account's new balance and pending refund (absolute, not deltas)."""

    provider: str
    balance: int
    pending_refund: int


@dataclass(frozen=True, slots=True)
class FeesSpent:
    """``FundSpent``: a settlement took ``amount`` from the ledger (the provider is in the same tx)."""

    amount: int


@dataclass(frozen=True, slots=True)
class SettlementResult:
    """``TEESettlementResult``: the outcome of one settlement entry; the log does not name the provider."""

    status: int
    unsettled: int


@dataclass(frozen=True, slots=True)
class RefundQueued:
    """``RefundRequested``: pending refunds changed; re-read the account."""

    provider: str


@dataclass(frozen=True, slots=True)
class AccountClosed:
    """``AccountDeleted``: the sub-account is gone (its money went back to the ledger)."""

    provider: str


MoneyEvent = BalanceChanged | FeesSpent | SettlementResult | RefundQueued | AccountClosed


@dataclass(frozen=True, slots=True)
class MoneyLog:
    """One decoded log with where it sits in the chain; ``(tx_hash, log_index)`` identifies it."""

    block: int
    tx_hash: str
    log_index: int
    event: MoneyEvent


class MoneyLogDecoder:
    """Filters and decodes the money logs of ``inference`` and ``ledger`` for one wallet."""

    def __init__(self, inference: AsyncContract, ledger: AsyncContract) -> None:
        events, ledger_events = inference.events, ledger.events
        self._decoders = {
            _topic(events.BalanceUpdated.topic): (events.BalanceUpdated, _balance_changed),
            _topic(events.TEESettlementResult.topic): (events.TEESettlementResult, _settlement_result),
            _topic(events.RefundRequested.topic): (events.RefundRequested, _refund_queued),
            _topic(events.AccountDeleted.topic): (events.AccountDeleted, _account_closed),
            _topic(ledger_events.FundSpent.topic): (ledger_events.FundSpent, _fees_spent),
        }
        self.addresses = [inference.address, ledger.address]

    def filter(self, user: str, from_block: int, to_block: int) -> dict[str, Any]:
        """The ``eth_getLogs`` filter: any of our events, with ``user`` as the first indexed field."""
        user_topic = "0x" + "0" * 24 + user.lower().removeprefix("0x")
        return {
            "address": self.addresses,
            "fromBlock": from_block,
            "toBlock": to_block,
            "topics": [list(self._decoders), user_topic],
        }

    def decode(self, raw: Any) -> MoneyLog | None:
        """A ``MoneyLog``, or None for a log this decoder does not know (a node that ignores the filter)."""
        topics = raw.get("topics") or []
        entry = self._decoders.get(_topic(topics[0])) if topics else None
        if entry is None:
            return None
        event, build = entry
        args = event.process_log(raw)["args"]
        tx_hash = raw["transactionHash"]
        return MoneyLog(
            block=int(raw["blockNumber"]),
            tx_hash=tx_hash if isinstance(tx_hash, str) else "0x" + bytes(tx_hash).hex(),
            log_index=int(raw["logIndex"]),
            event=build(args),
        )


def _topic(value: Any) -> str:
    text = value if isinstance(value, str) else "0x" + bytes(value).hex()
    return text.lower() if text.startswith("0x") else "0x" + text.lower()


def _balance_changed(args: Any) -> MoneyEvent:
    return BalanceChanged(str(args["provider"]), int(args["amount"]), int(args["pendingRefund"]))


def _fees_spent(args: Any) -> MoneyEvent:
    return FeesSpent(int(args["amount"]))


def _settlement_result(args: Any) -> MoneyEvent:
    return SettlementResult(int(args["status"]), int(args["unsettledAmount"]))


def _refund_queued(args: Any) -> MoneyEvent:
    return RefundQueued(str(args["provider"]))


def _account_closed(args: Any) -> MoneyEvent:
    return AccountClosed(str(args["provider"]))
