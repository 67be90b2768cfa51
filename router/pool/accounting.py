"""Our wallet's money at each provider: what the chain holds, what is owed, what is in flight. Sync, no I/O.

Per provider (protocol.md §8):

    available = balance - pending refund - max(provider-reported unsettled, our unsettled)
                - reservations (ours, and other replicas' when they share Redis) - 1 0G minimum locked

A provider refuses a request unless ``balance - pending >= 1 0G + unsettled + request`` (§4.6), so a request
goes only where ``available`` covers its reserve. The chain view comes from reads and logs stamped with
their position in the chain: an older view never overwrites a newer one, which makes applying a log twice,
or a read racing a log, harmless. Our unsettled spend grows with each reply's cost and shrinks as
settlements land.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from router.types import NEURON_PER_0G

MINIMUM_LOCKED = NEURON_PER_0G


class FundingState(enum.Enum):
    """Where the funder stands with a provider (shown by the admin view)."""

    OK = "ok"
    FUNDING = "funding"
    LEDGER_LOW = "ledger_low"  # the ledger cannot cover the top-up: deposit more
    PROVIDER_CAP = "provider_cap"  # the wallet already funds 50 providers of this service
    FAILED = "failed"  # the transaction failed; retried after a back-off
    DRAINING = "draining"  # an operator asked for a refund: never topped up until funded by hand
    OFF = "off"  # auto-funding is disabled


@dataclass(slots=True)
class SubAccount:
    """One (wallet, provider) sub-account as we know it. Amounts in neuron."""

    provider: str
    exists: bool = False
    acknowledged: bool = False
    balance: int = 0
    pending_refund: int = 0
    as_of: tuple[int, int] = (-1, -1)
    provider_unsettled: int = 0
    our_unsettled: int = 0
    reserved: int = 0
    # Other replicas' holds here, as of the last shared sync (``router.shared.book``); 0 alone.
    reserved_elsewhere: int = 0
    spent: int = 0
    settled: int = 0
    funding: FundingState = FundingState.OK
    funding_detail: str = ""

    @property
    def locked(self) -> int:
        return self.balance - self.pending_refund

    @property
    def unsettled(self) -> int:
        return max(self.provider_unsettled, self.our_unsettled)

    @property
    def available(self) -> int:
        """Headroom for new requests; negative when the provider would refuse (or there is no account)."""
        if not self.exists:
            return -MINIMUM_LOCKED
        return self.locked - self.unsettled - self.reserved - self.reserved_elsewhere - MINIMUM_LOCKED


class Hold:
    """A request's reservation at one provider. ``close(cost)`` releases it exactly once and books the
    request's actual cost (None when nothing is known to have been billed)."""

    __slots__ = ("_account", "_book", "_open", "amount")

    def __init__(self, book: Accounts | None, account: SubAccount | None, amount: int) -> None:
        self._book = book
        self._account = account
        self.amount = amount
        self._open = True
        if account is not None:
            account.reserved += amount

    def close(self, cost: int | None) -> None:
        if not self._open:
            return
        self._open = False
        account = self._account
        if account is None or self._book is None:
            return
        account.reserved -= self.amount
        if cost:
            account.spent += cost
            account.our_unsettled += cost
            if account.available < self._book.low_water:
                self._book.on_low()


class Accounts:
    """Every sub-account of one wallet, by provider address (case-insensitive). ``on_low`` is called
    when a request's cost takes a provider's available balance under ``low_water``."""

    def __init__(self, *, low_water: int = 0, on_low: Callable[[], None] = lambda: None) -> None:
        self.low_water = low_water
        self.on_low = on_low
        self._accounts: dict[str, SubAccount] = {}
        self.ledger_available = 0
        self.ledger_total = 0
        self.ledger_block = -1
        self.funded_providers: frozenset[str] = frozenset()

    def __iter__(self) -> Iterator[SubAccount]:
        return iter(self._accounts.values())

    def get(self, provider: str) -> SubAccount | None:
        return self._accounts.get(provider.lower())

    def of(self, provider: str) -> SubAccount:
        """The record of ``provider``, created empty (no account known) on first use."""
        key = provider.lower()
        account = self._accounts.get(key)
        if account is None:
            account = self._accounts[key] = SubAccount(provider)
        return account

    def covers(self, provider: str, amount: int) -> bool:
        account = self._accounts.get(provider.lower())
        return account is not None and account.available >= amount

    def hold(self, provider: str, amount: int) -> Hold:
        return Hold(self, self.of(provider), amount)

    def observe(
        self,
        provider: str,
        *,
        position: tuple[int, int],
        exists: bool,
        balance: int = 0,
        pending_refund: int = 0,
        acknowledged: bool | None = None,
    ) -> bool:
        """Take the chain's view of a sub-account at ``position`` (block, log index; a read sees the end
        of its block); ignored (False) if what we hold is newer."""
        account = self.of(provider)
        if position < account.as_of:
            return False
        account.as_of = position
        account.exists = exists
        account.balance = balance if exists else 0
        account.pending_refund = pending_refund if exists else 0
        if acknowledged is not None or not exists:
            account.acknowledged = bool(acknowledged) and exists
        return True

    def settled(self, provider: str, amount: int) -> None:
        """A settlement took ``amount`` for ``provider``: it is no longer owed."""
        account = self.of(provider)
        account.settled += amount
        account.our_unsettled = max(0, account.our_unsettled - amount)

    def observe_ledger(self, *, block: int, available: int, total: int, providers: frozenset[str]) -> None:
        if block < self.ledger_block:
            return
        self.ledger_block = block
        self.ledger_available = available
        self.ledger_total = total
        self.funded_providers = frozenset(p.lower() for p in providers)
