"""``[shared]``: where several replicas of one deployment keep what they share (capacity, holds, money,
leadership). No Redis URL means one replica counting in memory, the default."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from router.errors import ConfigError

_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True, slots=True)
class SharedOptions:
    """How replicas share state through Redis (7 or later). Times in seconds.

    ``redis_url`` (``redis://``, ``rediss://`` or ``unix://``; it may carry a password, so it is never
    shown) turns sharing on; ``ZG_ROUTER_REDIS_URL`` sets it too. Every Redis call is bounded by
    ``timeout``: past it the replica counts locally, at 1/N of each lane (N: the replicas seen alive in
    the last ``replica_ttl``), until Redis answers again. A replica's leases on lanes live ``lease_ttl``
    unless it renews them (so a crashed replica's slots come back within that); the leader's lease lives
    ``leader_ttl``. Followers take the leader's balances every ``sync_interval``. ``prefix`` starts every
    key, so that several deployments can share one Redis.
    """

    redis_url: str | None = field(default=None, repr=False)
    timeout: float = 0.25
    lease_ttl: float = 10.0
    leader_ttl: float = 10.0
    replica_ttl: float = 5.0
    sync_interval: float = 0.5
    prefix: str = "zg-router"

    def __post_init__(self) -> None:
        if self.redis_url is not None:
            scheme = urlsplit(self.redis_url).scheme
            if scheme not in _SCHEMES:
                raise ConfigError(
                    f"[shared] redis_url must be a redis://, rediss:// or unix:// URL, not {scheme or 'none'}://"
                )
        times = (self.timeout, self.lease_ttl, self.leader_ttl, self.replica_ttl, self.sync_interval)
        if not all(math.isfinite(t) and t > 0 for t in times):
            raise ConfigError("[shared] timeout, TTLs and sync_interval must be positive and finite")
        if self.timeout * 4 > min(self.lease_ttl, self.leader_ttl):
            raise ConfigError("[shared] timeout must be well under the TTLs (at most a quarter of each)")
        if not self.prefix or any(c.isspace() for c in self.prefix):
            raise ConfigError("[shared] prefix must be a non-empty word")

    @property
    def enabled(self) -> bool:
        return self.redis_url is not None
