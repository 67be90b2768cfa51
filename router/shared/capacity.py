"""``RedisCapacity``: the ``Capacity`` of ``router/pool/capacity.py`` counted in Redis, so that every
replica on a wallet shares each lane's buckets, concurrency, back-offs and hold-offs.

What it promises is ``MemoryCapacity``'s, decision for decision (the scripts in ``router/shared/lua.py``
do its arithmetic); how it keeps them across replicas:

- ``acquire`` is one script call for all candidate lanes. What the script saw of each lane it examined
  (leases in flight, the wait, the levels) is kept (``router/shared/seen.py``), so the synchronous
  ``wait``, ``load`` and ``view`` answer without Redis. A wait that only a release can end becomes a
  short poll (``POLL``): another replica's release arrives by pub/sub and wakes the queue; the poll
  covers a lost message.
- ``release`` stays synchronous (it runs under cancellation): the lease is closed and the queue woken at
  once, and the release goes to Redis in the background, batched with others (one script call for the
  releases at hand, one for the replies' levels). Header corrections,
  back-offs and hold-offs go the same way, the latter two mirrored here at once. A lease lives
  ``lease_ttl`` in Redis unless ``run()`` renews it, so a crashed replica's slots come back.
- While the store is local (Redis unreachable or slow) every call goes to the ``LocalFallback`` of
  ``router/shared/fallback.py``: 1/N of each lane (N: the replicas last seen alive), its buckets empty at
  first, its leases in flight counted, and a settling while the others' requests from before end. On
  rejoin the leases it holds open are adopted into Redis in one call, which lowers
  the shared buckets to its own levels, so that the shared count includes them; it keeps counting alone
  for ``REJOIN_GRACE`` (until every replica has adopted its own) and adopts again what it took
  meanwhile. A release Redis could not take waits for the rejoin (an expired lease releases as a no-op).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple

from router.pool.capacity import Demand, LaneView, Lease, corrected_limits, header_int
from router.pool.limits import ProviderLimits
from router.pool.providers import Lane
from router.shared import lua
from router.shared.fallback import LaneCount, LocalFallback
from router.shared.seen import SeenLane, seen_lanes, seen_view
from router.shared.store import Mode, SharedStore, SharedUnavailable

# The longest a lane waits for a release before it is asked again (pub/sub normally wakes it first).
POLL = 0.2
# How long a replica back in Redis keeps counting alone: every replica probes Redis every 0.5 s and adopts
# its leases when it answers, so after this the shared count holds what all of them have in flight.
REJOIN_GRACE = 1.0
# Releases kept for a Redis that comes back; past this many the oldest have expired anyway.
MAX_RETAINED = 10_000


class _Release(NamedTuple):
    lane: Lane
    id: str
    tokens: int | None
    images: int | None


class _Observation(NamedTuple):
    """A reply's rate-limit levels, for its lane's shared buckets (``lua.OBSERVE``)."""

    key: str
    args: list[str | int]


class _SharedLease:
    """A lease counted in Redis (``shared``) or, taken while local, by the local fallback (``local``)
    until it is adopted. ``seq``/``sent`` are its admission's sequence number and Redis time."""

    __slots__ = (
        "_capacity",
        "id",
        "images",
        "lane",
        "local",
        "open",
        "sent",
        "seq",
        "shared",
        "started",
        "tokens",
    )

    def __init__(
        self,
        capacity: RedisCapacity,
        lane: Lane,
        lease_id: str,
        demand: tuple[int, int],
        *,
        local: Lease | None = None,
        seq: int = 0,
        sent: float = 0.0,
    ) -> None:
        self._capacity = capacity
        self.lane = lane
        self.id = lease_id
        self.tokens, self.images = demand
        self.local = local
        self.shared = local is None
        self.seq = seq
        self.sent = sent
        self.open = True
        self.started = capacity.clock()

    def __repr__(self) -> str:
        where = "shared" if self.shared else "local"
        return f"<SharedLease {self.id} {self.lane.key} {where}{'' if self.open else ' released'}>"

    def observe(self, headers: Mapping[str, str]) -> None:
        self._capacity._observe(self, headers)

    def release(self, tokens: int | None = None, images: int | None = None) -> None:
        self._capacity._release(self, tokens, images)


class RedisCapacity:
    """Lane capacity shared through ``store``'s Redis. Run ``run()`` in the background (lease
    heartbeat); ``aclose()`` sends what is still pending, within a bound."""

    def __init__(self, store: SharedStore, *, clock: Callable[[], float], rate_margin: float = 1.0) -> None:
        self._local = LocalFallback(
            clock=clock, rate_margin=rate_margin, unknown_for=store.options.lease_ttl, replicas=store.replicas
        )
        self.clock = clock
        self.margin = rate_margin
        self.on_change: Callable[[], None] = lambda: None
        self._store = store
        self._limits: dict[Lane, ProviderLimits] = {}
        self._seen: dict[Lane, SeenLane] = {}
        self._blocked: dict[Lane, float] = {}
        self._held: dict[str, float] = {}
        self._open: dict[str, _SharedLease] = {}
        self._alone: set[_SharedLease] = set()
        self._outbox: list[_Release | _Observation | Callable[[], Awaitable[object]]] = []
        self._retained: list[_Release] = []
        self._flusher: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[Any]] = set()
        self._rejoining = False
        self._shared_since = 0.0
        self._acquire = store.script(lua.ACQUIRE)
        self._release_script = store.script(lua.RELEASE)
        self._observe_script = store.script(lua.OBSERVE)
        self._back_off = store.script(lua.BACK_OFF)
        self._hold_off = store.script(lua.HOLD_OFF)
        self._renew = store.script(lua.RENEW)
        self._adopt = store.script(lua.ADOPT)
        self._channel = store.key("released")
        store.on_mode_change(self._mode_changed)
        store.subscribe(self._channel, self._released)

    def __repr__(self) -> str:
        return (
            f"<RedisCapacity {self.mode} lanes={len(self._limits)} shared={len(self._open)} "
            f"local={len(self._alone)} pending={len(self._outbox)}>"
        )

    @property
    def mode(self) -> Mode:
        """Where admissions are counted now: ``shared`` (Redis) or ``local`` (1/N here)."""
        return "shared" if self._store.mode == "shared" and not self._rejoining else "local"

    # -- the Capacity protocol --------------------------------------------------------------------

    def configure(self, lane: Lane, limits: ProviderLimits) -> None:
        if self._limits.get(lane) == limits:
            return
        self._limits[lane] = limits
        self._local.configure(lane, limits)

    def forget(self, lane: Lane) -> None:
        self._limits.pop(lane, None)
        self._seen.pop(lane, None)
        self._blocked.pop(lane, None)
        self._local.forget(lane)

    async def acquire(self, lanes: Sequence[Lane], demand: Demand, now: float) -> Lease | None:
        if self.mode == "local":
            return self._acquire_alone(lanes, demand, now)
        counted = [lane for lane in lanes if lane in self._limits and not self._mirrored(lane, now)]
        if not counted:
            return None
        lease_id = self._store.new_id()
        keys: list[str] = []
        args: list[str | int | float] = [
            lease_id,
            self._store.options.lease_ttl,
            demand.tokens,
            demand.images,
        ]
        for lane in counted:
            keys += (self._lane_key(lane), self._leases_key(lane), self._provider_key(lane.provider.id))
            args += self._limit_args(self._limits[lane])
        call = asyncio.ensure_future(self._store.call(lambda: self._acquire(keys=keys, args=args)))
        try:
            reply = await asyncio.shield(call)
        except SharedUnavailable:
            # A slow Redis may still run the script: the lease it would admit is released on rejoin.
            self._retain([_Release(lane, lease_id, None, None) for lane in counted])
            return self._acquire_alone(lanes, demand, now)
        except asyncio.CancelledError:
            # Our caller gave up while Redis decided: a lease it admitted goes back when the answer comes.
            self._calls.add(call)
            call.add_done_callback(partial(self._orphaned, counted, lease_id))
            raise
        return self._admitted(counted, demand, now, lease_id, reply)

    def wait(self, lane: Lane, demand: Demand, now: float) -> float | None:
        if self.mode == "local":
            return self._local.wait(lane, demand, now)
        if lane not in self._limits:
            return None
        mirrored = max(self._blocked.get(lane, 0.0), self._held.get(lane.provider.id, 0.0)) - now
        seen = self._seen.get(lane)
        wait = POLL if seen is None or seen.wait is None else max(0.0, seen.wait - (now - seen.at))
        return max(wait, mirrored)

    def back_off(self, lane: Lane, until: float) -> None:
        if lane not in self._limits:
            return
        self._blocked[lane] = max(self._blocked.get(lane, 0.0), until)
        self._local.back_off(lane, until)
        seconds = until - self.clock()
        if seconds > 0 and self._store.mode == "shared":
            keys = [self._lane_key(lane)]
            self._enqueue(lambda: self._back_off(keys=keys, args=[seconds]))

    def hold_off(self, provider: str, until: float) -> None:
        now = self.clock()
        for ended in [p for p, end in self._held.items() if end <= now]:
            del self._held[ended]
        self._held[provider] = max(self._held.get(provider, 0.0), until)
        self._local.hold_off(provider, until)
        if until > now and self._store.mode == "shared":
            keys = [self._provider_key(provider)]
            self._enqueue(lambda: self._hold_off(keys=keys, args=[until - now]))

    def load(self, lane: Lane) -> float:
        if self.mode == "local":
            return self._local.load(lane)
        limits = self._limits.get(lane)
        if limits is None:
            return 1.0
        return self._in_flight(lane) / limits.max_concurrent

    def view(self, lane: Lane, now: float) -> LaneView:
        if self.mode == "local":
            return self._local.view(lane, now)
        limits = self._limits.get(lane)
        if limits is None:
            return LaneView(0, 0, 0.0, 0.0, None, None, 0.0)
        mirrored = max(self._blocked.get(lane, 0.0), self._held.get(lane.provider.id, 0.0)) - now
        return seen_view(
            self._seen.get(lane), limits, self.margin, now, in_flight=self._in_flight(lane), mirrored=mirrored
        )

    # -- background -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Renew this replica's shared leases every ``lease_ttl / 3``, until cancelled."""
        interval = self._store.options.lease_ttl / 3
        while True:
            await asyncio.sleep(interval)
            if self.mode == "shared" and self._open:
                with contextlib.suppress(SharedUnavailable):
                    await self._renew_leases()

    async def flush(self) -> None:
        """Wait until what is pending (releases, corrections, an adoption) has gone to Redis or been
        given up, at most a few timeouts; what is still out then is cancelled."""
        pending = {task for task in (self._flusher, *self._calls) if task is not None and not task.done()}
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=4 * self._store.options.timeout)
        for task in late:
            task.cancel()
        for task in late:
            with contextlib.suppress(asyncio.CancelledError, SharedUnavailable):
                await task

    async def aclose(self) -> None:
        """Send what is pending before the store closes (``flush``)."""
        await self.flush()

    # -- leases -----------------------------------------------------------------------------------

    def _admitted(
        self, counted: list[Lane], demand: Demand, now: float, lease_id: str, reply: list[str]
    ) -> Lease | None:
        admitted, seq, redis_now = int(reply[0]), int(reply[1]), float(reply[2])
        # The script stops at the lane it admits on: the lanes after it were not looked at.
        for lane, seen in zip(counted, seen_lanes(reply[3:], now), strict=False):
            self._seen[lane] = seen
        if not admitted:
            return None
        lane = counted[admitted - 1]
        lease = _SharedLease(self, lane, lease_id, self._estimates(lane, demand), seq=seq, sent=redis_now)
        self._open[lease_id] = lease
        return lease

    def _acquire_alone(self, lanes: Sequence[Lane], demand: Demand, now: float) -> Lease | None:
        local = self._local.try_acquire(lanes, demand, now)
        if local is None:
            return None
        lane = local.lane
        lease = _SharedLease(self, lane, self._store.new_id(), self._estimates(lane, demand), local=local)
        self._alone.add(lease)
        return lease

    def _estimates(self, lane: Lane, demand: Demand) -> tuple[int, int]:
        """What a lease on ``lane`` reserves: the demand, where the lane counts it."""
        limits = self._limits.get(lane)
        if limits is None:
            return 0, 0
        return (
            demand.tokens if limits.tokens_per_minute else 0,
            demand.images if limits.images_per_minute else 0,
        )

    def _orphaned(self, counted: list[Lane], lease_id: str, call: asyncio.Task[Any]) -> None:
        self._calls.discard(call)
        if call.cancelled() or call.exception() is not None:
            return
        admitted = int(call.result()[0])
        if admitted:
            self._send_release(_Release(counted[admitted - 1], lease_id, None, None))

    def _release(self, lease: _SharedLease, tokens: int | None, images: int | None) -> None:
        if not lease.open:
            return
        lease.open = False
        self._local.finished(lease.lane, self.clock() - lease.started)
        if lease.local is not None:
            lease.local.release(tokens, images)
        if lease.shared:
            self._open.pop(lease.id, None)
            seen = self._seen.get(lease.lane)
            if seen is not None:
                seen.in_flight = max(0, seen.in_flight - 1)
            self._send_release(_Release(lease.lane, lease.id, tokens, images))
        else:
            self._alone.discard(lease)
        self.on_change()

    def _observe(self, lease: _SharedLease, headers: Mapping[str, str]) -> None:
        lane = lease.lane
        limits = self._limits.get(lane)
        if limits is None:
            return
        corrected = corrected_limits(limits, headers)
        if corrected != limits:
            self._limits[lane] = corrected
            self._local.configure(lane, corrected)
        # The remaining counts are the wallet's whole levels: they correct the shared buckets only.
        remaining = [
            header_int(headers.get(f"x-ratelimit-remaining-{n}")) for n in ("requests", "tokens", "images")
        ]
        if not lease.shared or self._store.mode != "shared" or all(r is None for r in remaining):
            return
        args = [
            *self._limit_args(corrected),
            lease.seq,
            repr(lease.sent),
            *("" if r is None else r for r in remaining),
        ]
        self._enqueue(_Observation(self._lane_key(lane), args))

    def _send_release(self, release: _Release) -> None:
        if self._store.mode == "shared":
            self._enqueue(release)
        else:
            self._retain([release])

    def _retain(self, releases: list[_Release]) -> None:
        self._retained += releases
        del self._retained[:-MAX_RETAINED]

    # -- talking to Redis in the background -------------------------------------------------------

    def _enqueue(self, item: _Release | _Observation | Callable[[], Awaitable[object]]) -> None:
        self._outbox.append(item)
        self._start_flusher()

    def _start_flusher(self) -> None:
        if self._flusher is not None and not self._flusher.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop, no Redis: what is pending waits for the next call from one
        self._flusher = loop.create_task(self._flush(), name="shared-capacity-flush")

    async def _flush(self) -> None:
        """Send what is pending until nothing is: one script call for all releases at hand, one for
        all replies' levels, then the back-offs and hold-offs in order."""
        while True:
            while self._rejoining and self._store.mode == "shared":
                try:
                    await self._rejoin()
                except SharedUnavailable:
                    break
            if not self._outbox:
                return
            items, self._outbox = self._outbox, []
            releases = [item for item in items if isinstance(item, _Release)]
            if releases:
                try:
                    await self._send_releases(releases)
                except SharedUnavailable:
                    self._retain(releases)
            observations = [item for item in items if isinstance(item, _Observation)]
            if observations:
                with contextlib.suppress(SharedUnavailable):
                    await self._send_observations(observations)
            for item in items:
                if not isinstance(item, _Release | _Observation):
                    with contextlib.suppress(SharedUnavailable):
                        await self._store.call(item)

    async def _send_observations(self, observations: list[_Observation]) -> None:
        keys = [observation.key for observation in observations]
        args = [arg for observation in observations for arg in observation.args]
        await self._store.call(lambda: self._observe_script(keys=keys, args=args))

    async def _send_releases(self, releases: list[_Release]) -> None:
        keys: list[str] = []
        args: list[str | int] = [self._channel]
        for release in releases:
            keys += (self._lane_key(release.lane), self._leases_key(release.lane))
            args += (
                release.id,
                release.lane.key,
                "" if release.tokens is None else release.tokens,
                "" if release.images is None else release.images,
            )
        counts = await self._store.call(lambda: self._release_script(keys=keys, args=args))
        for release, count in zip(releases, counts, strict=True):
            self._saw_in_flight(release.lane, int(count))

    async def _renew_leases(self) -> None:
        by_lane: dict[Lane, list[str]] = {}
        for lease in self._open.values():
            by_lane.setdefault(lease.lane, []).append(lease.id)
        lanes = list(by_lane)
        args: list[str | float | int] = [self._store.options.lease_ttl]
        for lane in lanes:
            args += [len(by_lane[lane]), *by_lane[lane]]
        keys = [self._leases_key(lane) for lane in lanes]
        counts = await self._store.call(lambda: self._renew(keys=keys, args=args))
        for lane, count in zip(lanes, counts, strict=True):
            self._saw_in_flight(lane, int(count))

    def _mode_changed(self, mode: Mode) -> None:
        if mode == "shared":
            self._rejoining = True
            self._shared_since = self.clock()
            self._start_flusher()
        else:
            self._count_alone()
        # Either way the queue should look again: the other side may admit what this one refused.
        self.on_change()

    def _count_alone(self) -> None:
        """From now this replica counts alone (``LocalFallback.go_alone``), what it has in flight
        against its share."""
        own: dict[Lane, int] = {}
        for lease in self._open.values():
            if lease.open and lease.local is None:
                own[lease.lane] = own.get(lease.lane, 0) + 1
        counts = {}
        for lane in self._limits:
            seen = self._seen.get(lane)
            counts[lane] = LaneCount(None if seen is None else seen.in_flight, own.get(lane, 0))
        self._local.go_alone(self._store.replicas, counts)
        now = self.clock()
        for lease in self._open.values():
            if lease.open and lease.local is None:
                lease.local = self._local.carry(lease.lane, now)

    async def _rejoin(self) -> None:
        """Back in Redis: send the releases it missed, then have it count every lease this replica holds
        open, its buckets' levels alone, and (after ``REJOIN_GRACE``) what it took meanwhile; only then
        count in Redis again."""
        retained, self._retained = self._retained, []
        try:
            if retained:
                await self._send_releases(retained)
        except SharedUnavailable:
            self._retain(retained)
            raise
        now = self.clock()
        held: dict[Lane, list[_SharedLease]] = {}
        for lease in (*self._open.values(), *self._alone):
            held.setdefault(lease.lane, []).append(lease)
        keys: list[str] = []
        args: list[str | int | float] = [self._store.options.lease_ttl]
        lanes: list[Lane] = []
        for lane, limits in self._limits.items():
            used = self._local.used(lane, now)
            leases = held.get(lane, [])
            if not leases and not any(used):
                continue
            lanes.append(lane)
            keys += (self._lane_key(lane), self._leases_key(lane))
            args += [*self._limit_args(limits), *self._local.levels(lane, now), len(leases)]
            for lease in leases:
                args += [lease.id, lease.tokens, lease.images, 0 if lease.shared else 1]
        alone, self._alone = self._alone, set()
        # Counted in Redis from here: a release while the call is out goes there (after it).
        for lease in alone:
            lease.shared = True
            self._open[lease.id] = lease
        try:
            reply = await self._store.call(lambda: self._adopt(keys=keys, args=args)) if lanes else ["0"]
        except SharedUnavailable:
            for lease in alone:
                lease.shared = False
                self._open.pop(lease.id, None)
                if lease.open:
                    self._alone.add(lease)
            raise
        redis_now = float(reply[0])
        for i, lane in enumerate(lanes):
            seq, count = int(reply[1 + 2 * i]), int(reply[2 + 2 * i])
            for lease in held.get(lane, []):
                if lease in alone:
                    lease.seq, lease.sent = seq, redis_now
            self._saw_in_flight(lane, count)
        # Every replica rejoins within a probe interval of Redis's return, adopting what it holds: until
        # all have, Redis misses some of what is in flight, so this one counts alone a while longer and
        # adopts again what it took meanwhile.
        grace = self._shared_since + REJOIN_GRACE - self.clock()
        if grace > 0:
            await asyncio.sleep(grace)
            return
        # What the local fallback used is in Redis now: it starts afresh for the next time alone.
        self._local.start_afresh()
        for lease in self._open.values():
            lease.local = None
        # Leases taken alone while the call was out are adopted in another round.
        self._rejoining = bool(self._alone)
        self.on_change()

    def _released(self, message: str) -> None:
        self.on_change()

    # -- helpers ----------------------------------------------------------------------------------

    def _mirrored(self, lane: Lane, now: float) -> bool:
        """Backed off or held off as this replica already knows (Redis may not have it yet)."""
        return now < self._blocked.get(lane, 0.0) or now < self._held.get(lane.provider.id, 0.0)

    def _in_flight(self, lane: Lane) -> int:
        seen = self._seen.get(lane)
        if seen is not None:
            return seen.in_flight
        return sum(1 for lease in self._open.values() if lease.lane is lane)

    def _saw_in_flight(self, lane: Lane, count: int) -> None:
        seen = self._seen.get(lane)
        if seen is not None:
            seen.in_flight = count

    def _limit_args(self, limits: ProviderLimits) -> list[str | int]:
        margin = self.margin
        return [
            repr(limits.requests_per_minute * margin),
            max(1, limits.burst - 1),
            limits.max_concurrent,
            repr(limits.tokens_per_minute * margin) if limits.tokens_per_minute else "0",
            limits.tokens_capacity,
            repr(limits.images_per_minute * margin) if limits.images_per_minute else "0",
            limits.images_capacity,
        ]

    def _lane_key(self, lane: Lane) -> str:
        return self._store.key("lane", lane.key)

    def _leases_key(self, lane: Lane) -> str:
        return self._store.key("lane", lane.key, "leases")

    def _provider_key(self, provider: str) -> str:
        return self._store.key("provider", provider.lower())
