"""Leadership: one replica of a deployment (one ``prefix``) runs every wallet's funder, balance sync and
settlement watcher; the others follow what it publishes.

The leader holds ``P:leader`` = ``"<replica>:<term>"`` with a TTL (``leader_ttl``); the term comes from
``INCR P:leader:term`` in the same script that takes the key, so every term is a fencing token that only
grows. The leader renews every ``leader_ttl / 3`` (compare-and-pexpire). It deposes itself, in its own
view, as soon as a renewal finds the key gone or another's, or when no renewal succeeded for
``leader_ttl - timeout`` (Redis down or slow): that is before its key could have expired for the others,
so two replicas never both believe they lead. ``fence()`` checks (and renews) the key right before each
transaction: a deposed leader's transaction is refused there, so a wallet has one nonce stream.

No module-level Redis import: the funder imports ``Fenced`` from here in every deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import structlog

from router.errors import RouterError
from router.observability.events import LeaderChanged, Observer

if TYPE_CHECKING:
    from router.shared.options import SharedOptions
    from router.shared.store import SharedStore

# Takes the key if it is free, under a new term: KEYS leader, term; ARGV replica, ttl ms. The term, or 0.
_CAMPAIGN = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local term = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. term, 'PX', ARGV[2])
return term
"""
# Renews the key only while it still holds ours: KEYS leader; ARGV "<replica>:<term>", ttl ms. 1 or 0.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
# Deletes the key only while it still holds ours: KEYS leader; ARGV "<replica>:<term>".
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_log = structlog.get_logger("router")


class Fenced(RouterError):
    """This replica may not send a transaction: it is not the leader, or cannot prove it is (Redis
    unreachable)."""


class Leadership:
    """Campaigns for, holds and gives up the leader's lease of ``store``'s deployment.

    While leading it runs ``duties()`` (a task, cancelled the moment it is deposed); on an election
    during ``run()`` it first awaits ``elected()`` (the new leader's fresh view of the chain), inside the
    same task. ``start()`` campaigns once, for a router opening: a winner's ``elected()`` is awaited
    before ``start()`` returns.
    """

    def __init__(
        self,
        store: SharedStore,
        options: SharedOptions,
        *,
        emit: Observer,
        clock: Callable[[], float],
        elected: Callable[[], Awaitable[None]],
        duties: Callable[[], Coroutine[Any, Any, None]],
    ) -> None:
        from router.shared.store import SharedUnavailable

        self._unavailable = SharedUnavailable
        self._store = store
        self._emit = emit
        self._clock = clock
        self._elected = elected
        self._duties = duties
        self._ttl_ms = max(1, int(options.leader_ttl * 1000))
        self._period = options.leader_ttl / 3
        # Past this long without a renewal that Redis confirmed, the others may already have elected.
        self._grace = options.leader_ttl - options.timeout
        self._campaign_script = store.script(_CAMPAIGN)
        self._renew_script = store.script(_RENEW)
        self._release_script = store.script(_RELEASE)
        self._key = store.key("leader")
        self._term_key = store.key("leader", "term")
        self.token = 0
        self._renewed_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._paused_said = False

    @property
    def is_leader(self) -> bool:
        """Leading, in this replica's own view (which ends before the lease could for the others)."""
        return self.token > 0 and self._clock() < self._renewed_at + self._grace

    @property
    def lease(self) -> str | None:
        """``"<replica>:<term>"`` while leading (what ``P:leader`` holds), else None."""
        return self._value if self.is_leader else None

    @property
    def _value(self) -> str:
        return f"{self._store.replica}:{self.token}"

    async def start(self) -> bool:
        """One campaign; on a win the new leader's ``elected()`` runs before this returns. Whether won."""
        if await self._campaign():
            await self._elected()
            return True
        return False

    async def run(self) -> None:
        """Renew while leading, campaign while not, and run ``duties`` exactly while leading."""
        try:
            while True:
                if self.token:
                    await self._hold()
                    if not self.token:
                        await self._stop_duties()
                elif await self._campaign():
                    self._task = asyncio.create_task(self._lead(elect=True))
                await asyncio.sleep(self._pause())
        finally:
            await self._stop_duties()

    async def fence(self) -> None:
        """Raise ``Fenced`` unless ``P:leader`` still holds this replica's term; renews the lease on the
        way, so the transaction that follows has a whole ``leader_ttl`` to go out under it."""
        if not self.is_leader:
            raise Fenced("this replica is not the leader")
        started = self._clock()
        try:
            held = await self._store.call(self._renew)
        except self._unavailable as exc:
            raise Fenced(f"cannot confirm leadership: {exc}") from None
        if not held:
            self._depose("another replica took the lead")
            raise Fenced("this replica is no longer the leader")
        self._renewed_at = max(self._renewed_at, started)

    async def aclose(self) -> None:
        """Stop leading: the duties first, then the lease (compare-and-delete), so that another replica
        takes over at its next campaign rather than after the TTL."""
        await self._stop_duties()
        if not self.token:
            return
        value = self._value
        self._depose("this replica is closing")
        with contextlib.suppress(self._unavailable):
            await self._store.call(lambda: self._release_script(keys=[self._key], args=[value]))

    async def _renew(self) -> Any:
        return await self._renew_script(keys=[self._key], args=[self._value, self._ttl_ms])

    def _pause(self) -> float:
        if not self.token:
            return self._period
        # Wake in time to depose at the deadline even if every renewal in between times out.
        left = self._renewed_at + self._grace - self._clock()
        return max(0.0, min(self._period, left))

    async def _campaign(self) -> bool:
        started = self._clock()
        try:
            term = await self._store.call(
                lambda: self._campaign_script(
                    keys=[self._key, self._term_key], args=[self._store.replica, self._ttl_ms]
                )
            )
        except self._unavailable as exc:
            self._say_paused(f"Redis is unreachable ({exc})")
            return False
        self._paused_said = False
        if not term:
            return False
        self.token, self._renewed_at = int(term), started
        self._emit(LeaderChanged(True, self.token, "elected"))
        _log.info("leading", token=self.token, replica=self._store.replica)
        return True

    async def _hold(self) -> None:
        """One renewal, and what it means: still leading, deposed, or leading on borrowed time."""
        if not self.is_leader:
            self._depose("no renewal reached Redis within the lease")
            self._say_paused("Redis is unreachable or slow")
            return
        task = self._task
        if task is None or (task.done() and not task.cancelled()):
            if task is not None and task.exception() is not None:
                _log.error("leader duties failed; starting them again", exc_info=task.exception())
            # Elected by start() (its elected() has run), or duties that died: (again) at once.
            self._task = asyncio.create_task(self._lead(elect=task is not None))
        started = self._clock()
        try:
            held = await self._store.call(self._renew)
        except self._unavailable:
            # Still leading until the deadline, which the next wake-up (``_pause``) is timed to meet.
            return
        if held:
            self._renewed_at = max(self._renewed_at, started)
        else:
            self._depose("another replica took the lead")

    async def _lead(self, *, elect: bool) -> None:
        if elect:
            await self._elected()
        await self._duties()

    def _depose(self, detail: str) -> None:
        token, self.token = self.token, 0
        if self._task is not None:
            self._task.cancel()
        if token:
            self._emit(LeaderChanged(False, token, detail))
            _log.warning("stopped leading", token=token, detail=detail)

    async def _stop_duties(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # The duties' own failures were reported where they happened; cancellation is what we asked.
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    def _say_paused(self, why: str) -> None:
        if not self._paused_said:
            self._paused_said = True
            _log.warning("funding paused: no leader can be confirmed without Redis", detail=why)
