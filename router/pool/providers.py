"""The provider pool: who can serve what, at which price and limits, and how each is doing. Sync, no I/O.

Discovery hands the pool complete ``ProviderInfo`` snapshots; the pool keeps one ``ProviderState`` per
provider across refreshes, so health, lanes and exclusions survive a refresh that only changed a price.
Each provider has one ``Lane`` per wallet that can pay it (one for a static upstream): the unit that
capacity, admission and balance holds count by, because the broker counts every limit per wallet.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from router.pool.health import BreakerState, Health, HealthPolicy
from router.pool.limits import ProviderLimits
from router.pool.pricing import PriceTier, Pricing
from router.pool.trust import Trust

if TYPE_CHECKING:
    from router.pool.capacity import Capacity


class ProviderKind(enum.Enum):
    CHAIN = "chain"  # discovered on chain, authenticated with our wallet's session tokens
    STATIC = "static"  # an OpenAI-compatible URL + API key from config


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    """What discovery (or config) says about one provider. Replaced wholesale on every refresh.

    ``base_url`` is where endpoint paths go (``…/v1/proxy`` for chain providers); ``probe_url`` is a free
    route that shows the provider is up (its model list). ``models`` are the ids
    it serves, as advertised; matching is case-insensitive. Prices are neuron per token; ``pricing`` adds
    the tiers and cache-token discount the broker bills by.
    """

    id: str
    kind: ProviderKind
    base_url: str
    probe_url: str
    service_type: str
    models: tuple[str, ...]
    input_price: int = 0
    output_price: int = 0
    verifiability: str = ""
    # The acknowledged address its TEE signs responses with (protocol.md §5.4); None when it signs none.
    tee_signer: str | None = None
    # What the chain says, for the attestation view: the registered signer and the user's acknowledgement.
    registered_signer: str | None = None
    signer_acknowledged: bool = False
    limits: ProviderLimits = field(default_factory=ProviderLimits)
    # The request formats its model serves, lowercased: "anthropic" means its /messages takes Anthropic's
    # Messages API as is. From the /v1/models entry's ``supported_formats`` (our reading; the broker's
    # field is unconfirmed), so every provider serves "openai" and the Messages route translates for it.
    formats: tuple[str, ...] = ("openai",)
    api_key: str | None = field(default=None, repr=False)
    price_tiers: tuple[PriceTier, ...] = ()
    cache_divisor: int = 0
    pricing: Pricing = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Built once per refresh, not per request.
        pricing = Pricing(self.input_price, self.output_price, self.price_tiers, self.cache_divisor)
        object.__setattr__(self, "pricing", pricing)

    @property
    def verifiable(self) -> bool:
        return self.verifiability in ("TeeML", "TeeTLS")


class Exclusion(enum.Enum):
    """Why a provider is left out for a while, besides its breaker."""

    UNFUNDED = "unfunded"  # it said our sub-account's balance is too low
    MISCONFIGURED = "misconfigured"  # auth, acknowledgement or model problem at that provider
    UNTRUSTED = "untrusted"  # one of its responses failed TEE verification


class Lane:
    """One (wallet, provider) pair. ``wallet`` is the paying wallet's lowercase address (None for a
    static upstream, which our wallets do not pay). Exclusions here are the wallet's own at that provider
    (its sub-account is short, its session token refused); the provider's are on ``provider``."""

    __slots__ = ("excluded", "key", "provider", "wallet")

    def __init__(self, provider: ProviderState, wallet: str | None) -> None:
        self.provider = provider
        self.wallet = wallet
        self.key = f"{wallet or 'static'}/{provider.id.lower()}"
        self.excluded: dict[Exclusion, float] = {}

    def __repr__(self) -> str:
        return f"<Lane {self.key}>"

    def exclude(self, reason: Exclusion, until: float) -> None:
        self.excluded[reason] = max(until, self.excluded.get(reason, until))

    def excluded_at(self, now: float) -> Exclusion | None:
        for reason, until in self.excluded.items():
            if now < until:
                return reason
        return self.provider.excluded_at(now)

    def available(self, now: float) -> bool:
        """Neither the lane nor its provider excluded, and the provider's breaker lets a request through
        (limits aside)."""
        if self.excluded and self.excluded_at(now) is not None:
            return False
        return self.provider.available(now)


class ProviderState:
    """One provider's live record: its info, health, trust, exclusions and lanes."""

    __slots__ = ("excluded", "health", "info", "lanes", "trust")

    def __init__(self, info: ProviderInfo, health: Health, wallets: Sequence[str | None]) -> None:
        self.info = info
        self.health = health
        self.excluded: dict[Exclusion, float] = {}
        self.trust = Trust(signer=info.tee_signer)
        self.lanes = tuple(Lane(self, wallet) for wallet in wallets)

    def __repr__(self) -> str:
        return f"<Provider {self.info.id} {self.health!r} lanes={len(self.lanes)}>"

    @property
    def id(self) -> str:
        return self.info.id

    def lane(self, wallet: str | None) -> Lane | None:
        """The lane of ``wallet`` (any case) at this provider, if it has one."""
        key = wallet.lower() if wallet is not None else None
        for lane in self.lanes:
            if lane.wallet == key:
                return lane
        return None

    def exclude(self, reason: Exclusion, until: float) -> None:
        self.excluded[reason] = max(until, self.excluded.get(reason, until))

    def excluded_at(self, now: float) -> Exclusion | None:
        for reason, until in self.excluded.items():
            if now < until:
                return reason
        return None

    def available(self, now: float) -> bool:
        """Not excluded and its breaker lets a request through (limits aside)."""
        return (not self.excluded or self.excluded_at(now) is None) and self.health.admits()


class Pool:
    """Every known provider, indexed by (service type, model). Mutations are synchronous."""

    def __init__(
        self,
        health_policy: HealthPolicy | None = None,
        *,
        clock: Callable[[], float],
        capacity: Capacity,
        wallets: Sequence[str] = (),
        on_breaker: Callable[[str, BreakerState], None] | None = None,
    ) -> None:
        """Chain providers get a lane per wallet in ``wallets`` (addresses, any case); ``capacity``
        counts every lane. ``on_breaker(provider_id, state)`` hears every breaker opening and closing."""
        self._on_breaker = on_breaker
        self._health_policy = health_policy or HealthPolicy()
        self._clock = clock
        self.capacity = capacity
        self._wallets = tuple(wallet.lower() for wallet in wallets)
        self._providers: dict[str, ProviderState] = {}
        self._index: dict[tuple[str, str], list[ProviderState]] = {}
        self._by_model: dict[str, list[ProviderState]] = {}
        self._models: dict[str, str] = {}
        self._refused: Counter[tuple[str, str]] = Counter()

    def __len__(self) -> int:
        return len(self._providers)

    def __iter__(self) -> Iterator[ProviderState]:
        return iter(list(self._providers.values()))

    @property
    def wallets(self) -> tuple[str, ...]:
        """The wallets (lowercase addresses) that get a lane at every chain provider."""
        return self._wallets

    def get(self, provider_id: str) -> ProviderState | None:
        return self._providers.get(provider_id.lower())

    def replace(self, kind: ProviderKind, infos: Iterable[ProviderInfo]) -> None:
        """Make ``infos`` the providers of ``kind``: add new ones, update known ones, drop the rest.

        A dropped provider's in-flight requests keep their state object and finish normally.
        """
        fresh = {info.id.lower(): info for info in infos}
        for key, state in list(self._providers.items()):
            if state.info.kind is kind and key not in fresh:
                del self._providers[key]
                for lane in state.lanes:
                    self.capacity.forget(lane)
        wallets: Sequence[str | None] = self._wallets if kind is ProviderKind.CHAIN else (None,)
        for key, info in fresh.items():
            known = self._providers.get(key)
            if known is None:
                health = Health(self._health_policy, self._clock, self._breaker_hook(info.id))
                state = self._providers[key] = ProviderState(info, health, wallets)
                for lane in state.lanes:
                    self.capacity.configure(lane, info.limits)
            else:
                if info.limits != known.info.limits:
                    for lane in known.lanes:
                        self.capacity.configure(lane, info.limits)
                if known.trust.new_signer(info.tee_signer):
                    # What the old key verified says nothing of the new one, nor does a failure under it.
                    known.excluded.pop(Exclusion.UNTRUSTED, None)
                known.info = info
        self._reindex()

    def _breaker_hook(self, provider: str) -> Callable[[BreakerState], None] | None:
        hook = self._on_breaker
        if hook is None:
            return None
        return lambda state: hook(provider, state)

    def candidates(self, service_type: str, model: str) -> list[ProviderState]:
        """Providers of ``service_type`` that serve ``model`` (case-insensitive); may be empty."""
        return self._index.get((service_type, model.lower()), [])

    def knows_model(self, model: str) -> bool:
        return model.lower() in self._models

    def set_refused(self, refused: Iterable[tuple[str, str]]) -> None:
        """The (service type, model) of every chain provider the URL guard refused for a loopback or
        private address, replaced on each refresh. They serve nothing: this only lets a request for their
        model be told why it has no provider."""
        self._refused = Counter((service_type, model.lower()) for service_type, model in refused)

    def refused(self, service_type: str, model: str) -> int:
        """How many providers of ``service_type`` serving ``model`` the URL guard refused."""
        return self._refused[(service_type, model.lower())]

    def by_model(self) -> dict[str, list[ProviderState]]:
        """Every model id (as first advertised) with the providers serving it, over all service types."""
        return {self._models[key]: states for key, states in sorted(self._by_model.items())}

    def _reindex(self) -> None:
        index: dict[tuple[str, str], list[ProviderState]] = {}
        by_model: dict[str, list[ProviderState]] = {}
        models: dict[str, str] = {}
        for state in self._providers.values():
            for model in state.info.models:
                key = model.lower()
                index.setdefault((state.info.service_type, key), []).append(state)
                by_model.setdefault(key, []).append(state)
                models.setdefault(key, model)
        self._index = index
        self._by_model = by_model
        self._models = models
