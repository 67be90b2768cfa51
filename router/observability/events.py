"""What the core reports. ``pool``, ``policy`` and ``transport`` never log or count themselves: the dispatch
loop and background tasks emit these events, and observers subscribed on the ``Router`` turn them into logs
or metrics. Events carry no secrets: provider ids are public addresses or configured upstream names, and
money events name their ``wallet`` by its (checksummed) address, one of the router's configured wallets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AttemptFailed:
    """One attempt at one provider did not produce the reply; ``verdict`` says what dispatch did next."""

    request_id: str
    provider: str
    verdict: str
    status: int | None
    detail: str


@dataclass(frozen=True, slots=True)
class RequestFinished:
    """A request ended. ``status`` is what the caller got; ``provider`` is None if no attempt answered;
    ``queued`` is the time it waited for provider slots; token counts are None when the reply has none."""

    request_id: str
    endpoint: str
    model: str
    status: int
    provider: str | None
    attempts: int
    cost: int | None
    latency: float
    ttft: float | None
    stream: bool
    error: str | None = None
    queued: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class PoolRefreshed:
    """Discovery replaced the chain providers: ``providers`` usable, ``skipped`` refused (and why)."""

    providers: int
    skipped: dict[str, str]


@dataclass(frozen=True, slots=True)
class BreakerChanged:
    """A provider's circuit breaker moved to ``state`` (``closed``, ``open``, ``half_open``)."""

    provider: str
    state: str


# The ``task`` of every BackgroundError the router emits.
BACKGROUND_TASKS = (
    "discovery",
    "session-token",
    "balance-sync",
    "unsettled-fee",
    "settlement-watcher",
    "trust-warmup",
)


@dataclass(frozen=True, slots=True)
class BackgroundError:
    """A background task (one of ``BACKGROUND_TASKS``) failed one round; it tries again on its next tick.
    ``wallet`` names the wallet whose money task it is (balance sync, fee reads, the watcher), else None."""

    task: str
    detail: str
    wallet: str | None = None


@dataclass(frozen=True, slots=True)
class RpcFailed:
    """A JSON-RPC call to ``endpoint`` (scheme://host:port, nothing secret) failed; the client retries it,
    on the next endpoint if there is one."""

    endpoint: str
    detail: str


@dataclass(frozen=True, slots=True)
class Verified:
    """A response from ``provider`` was checked against its TEE signature: ``outcome`` is ``verified``,
    ``failed`` (the provider is demoted) or ``unverifiable`` (no signature to check)."""

    request_id: str
    provider: str
    chat_id: str
    outcome: str
    detail: str


@dataclass(frozen=True, slots=True)
class Funded:
    """The funder (or an operator) moved ``amount`` neuron from ``wallet``'s ledger into its sub-account
    at ``provider``."""

    wallet: str
    provider: str
    amount: int
    tx_hash: str
    manual: bool = False


@dataclass(frozen=True, slots=True)
class FundingFailed:
    """``wallet`` could not fund its sub-account at ``provider``; ``state`` is ``ledger_low``,
    ``provider_cap`` or ``failed``."""

    wallet: str
    provider: str
    state: str
    detail: str


@dataclass(frozen=True, slots=True)
class Settled:
    """A settlement of ``wallet``'s fees at ``provider`` landed on chain (seen by its watcher)."""

    wallet: str
    provider: str
    amount: int
    block: int


@dataclass(frozen=True, slots=True)
class SettlementRejected:
    """A provider's settlement for ``wallet`` failed on chain (status 2-5): nothing was charged."""

    wallet: str
    status: int
    amount: int
    block: int


@dataclass(frozen=True, slots=True)
class WatcherProgress:
    """``wallet``'s settlement watcher has applied every money log up to ``block``; the chain head is at
    ``head``."""

    wallet: str
    block: int
    head: int


@dataclass(frozen=True, slots=True)
class SharedModeChanged:
    """This replica's capacity went ``mode``: ``shared`` (counted in Redis with the other replicas) or
    ``local`` (Redis unreachable or slow: counting 1/N of each lane, N = ``replicas``). ``detail`` says
    why; it never holds the Redis URL."""

    mode: str
    replicas: int
    detail: str


@dataclass(frozen=True, slots=True)
class LeaderChanged:
    """This replica became the leader (``leading``; it runs every wallet's funder, balance sync and
    settlement watcher) or stopped being it. ``token`` is its fencing token (the term it leads in)."""

    leading: bool
    token: int
    detail: str


Event = (
    AttemptFailed
    | RequestFinished
    | PoolRefreshed
    | BreakerChanged
    | BackgroundError
    | RpcFailed
    | Verified
    | Funded
    | FundingFailed
    | Settled
    | SettlementRejected
    | WatcherProgress
    | SharedModeChanged
    | LeaderChanged
)
Observer = Callable[[Event], None]
