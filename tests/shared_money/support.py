"""Helpers for the shared-money tests: the devnet's shape, short TTLs, and one replica's handle."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from router.client import Router
from router.devnet import ProviderSpec
from router.devnet.simulator.limits import RateLimits
from router.money.wallets import WalletServices
from router.observability.events import LeaderChanged, RequestFinished
from router.shared.book import SharedBook
from router.shared.leader import Leadership
from router.shared.options import SharedOptions
from tests.support import NEURON

SHARED_MODEL = "shared-m"
ROOMY = RateLimits(requests_per_minute=12_000, burst=100, max_concurrent=10)
# High prices, so each request's fee is large and distinct per provider (neuron per token).
SHARED_PROVIDERS = (
    ProviderSpec(model=SHARED_MODEL, input_price=10**12, output_price=10**13, limits=ROOMY),
    ProviderSpec(model=SHARED_MODEL, input_price=2 * 10**12, output_price=3 * 10**13, limits=ROOMY),
)
LEDGER_DEPOSIT = 30 * NEURON
SUB_ACCOUNT_FUNDING = 5 * NEURON
LEADER_TTL = 2.0
SYNC_INTERVAL = 0.1
# Generous bounds for what the chain does: two cores, shared with other test runs.
WAIT = 60.0

# The chain's view of a sub-account, which every replica's book must agree on.
CHAIN_FIELDS = ("exists", "acknowledged", "balance", "pending_refund", "unsettled_provider", "funding")


def shared_options(url: str, **changes: Any) -> SharedOptions:
    """Short TTLs and a fast book round, so that a test sees hand-overs in seconds."""
    base: dict[str, Any] = {
        "redis_url": url,
        "lease_ttl": LEADER_TTL,
        "leader_ttl": LEADER_TTL,
        "replica_ttl": LEADER_TTL,
        "sync_interval": SYNC_INTERVAL,
    }
    return SharedOptions(**{**base, **changes})


@dataclass
class Replica:
    """One open router of the deployment and the log of its events."""

    router: Router
    log: Any  # tests.support.EventLog
    stack: AsyncExitStack

    async def close(self) -> None:
        await self.stack.aclose()

    @property
    def services(self) -> WalletServices:
        (services,) = self.router.wallets
        return services

    @property
    def book(self) -> SharedBook:
        assert self.services.book is not None
        return self.services.book

    @property
    def leadership(self) -> Leadership:
        assert self.router.leadership is not None
        return self.router.leadership

    @property
    def leading(self) -> bool:
        status = self.router.shared_status()
        assert status is not None
        return bool(status["leader"])

    def accounts(self) -> dict[str, dict[str, Any]]:
        """``balances()``'s sub-accounts by lower-case provider address."""
        (report,) = self.router.balances()["wallets"]
        return {view["provider"].lower(): view for view in report["accounts"]}

    def chain_view(self) -> dict[str, Any]:
        """The ledger and each sub-account's chain fields, as this replica's book has them."""
        (report,) = self.router.balances()["wallets"]
        accounts = {p: {f: view[f] for f in CHAIN_FIELDS} for p, view in self.accounts().items()}
        return {"ledger": report["ledger"], "accounts": accounts}

    def costs(self) -> dict[str, int]:
        """What this replica's requests cost, per lower-case provider address."""
        totals: dict[str, int] = {}
        for event in self.log.of(RequestFinished):
            assert event.status == 200, event
            assert event.cost is not None, event
            totals[event.provider.lower()] = totals.get(event.provider.lower(), 0) + event.cost
        return totals

    async def elected(self, within: float) -> LeaderChanged:
        event: LeaderChanged = await self.log.wait_for(
            lambda e: isinstance(e, LeaderChanged) and e.leading, within=within
        )
        return event


async def rounds(*replicas: Replica) -> None:
    """One shared-book round of each replica, in order (the earlier ones' writes are in the later
    ones' reads), then one more of the first, so that it reads the others' writes too."""
    for replica in (*replicas, replicas[0]):
        await replica.book.sync()
