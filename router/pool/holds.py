"""Balance holds per lane: the ``Holds`` protocol and its in-memory default over each wallet's book.

A request reserves its estimated cost on its lane's sub-account before it is sent, so that concurrent
requests never together spend more than the sub-account holds (design.md invariant 2), and settles the
hold to the actual cost when it ends, exactly once. Static upstreams are not our 0G money: their lanes
hold nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from router.pool.accounting import Accounts, Hold
from router.pool.providers import Lane

# A hold on nothing: what a static upstream's request holds.
NO_HOLD = Hold(None, None, 0)


class Holds(Protocol):
    def covers(self, lane: Lane, amount: int) -> bool:
        """Whether ``lane``'s sub-account has ``amount`` available beyond what it must keep."""
        ...

    def reserve(self, lane: Lane, amount: int) -> Hold:
        """Hold ``amount`` on ``lane``'s sub-account until the hold is closed."""
        ...


class AccountHolds:
    """Holds on the in-process books, one ``Accounts`` per wallet (lowercase address)."""

    def __init__(self, books: Mapping[str, Accounts]) -> None:
        self._books = {wallet.lower(): book for wallet, book in books.items()}

    def covers(self, lane: Lane, amount: int) -> bool:
        if lane.wallet is None:
            return True
        book = self._books.get(lane.wallet)
        # A chain lane of a wallet with no book cannot pay for anything.
        return book is not None and book.covers(lane.provider.id, amount)

    def reserve(self, lane: Lane, amount: int) -> Hold:
        book = self._books.get(lane.wallet) if lane.wallet is not None else None
        return book.hold(lane.provider.id, amount) if book is not None else NO_HOLD
