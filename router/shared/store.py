"""``SharedStore``: this replica's connection to the Redis its replicas share, and whether it is using it.

Redis trouble is never an outage. Every call is bounded by ``[shared] timeout``; the first one that fails
(an error, a refused or dropped connection, no answer in time) puts the replica in *local* mode, where
nothing touches Redis and its users count by themselves (capacity at 1/N of each lane). A probe every
``PROBE_INTERVAL`` brings it back to *shared* mode as soon as Redis answers. Each move is told once:
a ``SharedModeChanged`` event and the ``on_mode_change`` callbacks. A first connect that fails is no
error either: the store starts in local mode and says so.

While shared, the store marks this replica alive every ``replica_ttl / 3`` and counts the replicas alive
in the last ``replica_ttl`` (``replicas``, N), and relays the pub/sub channels its users subscribed to.
The Redis URL may carry a password: it is never logged, shown or put in an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Literal, Self, TypeVar

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from router.observability.events import Event, SharedModeChanged
from router.shared import lua
from router.shared.options import SharedOptions

T = TypeVar("T")
Mode = Literal["shared", "local"]

# How often a replica in local mode asks whether Redis is back.
PROBE_INTERVAL = 0.5
# Connections to Redis per replica: calls wait (within the timeout) for one rather than open more.
MAX_CONNECTIONS = 32
# How long a pub/sub read waits before looking at new subscriptions.
_LISTEN_POLL = 1.0


class SharedUnavailable(Exception):
    """Redis did not answer in time (or at all): the caller counts locally. Never reaches a client."""


class SharedStore:
    """``async with SharedStore(options, emit=router.emit) as store:`` connects (or starts local); run
    ``store.run()`` in the background for presence, the probe and pub/sub.

    ``replica`` names this replica in Redis (default: host, pid and a random suffix).
    """

    def __init__(
        self,
        options: SharedOptions,
        *,
        emit: Callable[[Event], None] = lambda event: None,
        replica: str | None = None,
    ) -> None:
        if options.redis_url is None:
            raise ValueError("SharedStore needs [shared] redis_url")
        self.options = options
        self.replica = replica or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._emit = emit
        pool = aioredis.BlockingConnectionPool.from_url(
            options.redis_url,
            max_connections=MAX_CONNECTIONS,
            timeout=options.timeout,
            socket_timeout=options.timeout,
            socket_connect_timeout=options.timeout,
            health_check_interval=0,
            decode_responses=True,
        )
        self.redis: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        self._mode: Mode = "local"
        self._started = False
        self._replicas = 1
        self._mode_callbacks: list[Callable[[Mode], None]] = []
        self._channels: dict[str, list[Callable[[str], None]]] = {}
        self._changed = asyncio.Event()
        self._scripts: dict[str, AsyncScript] = {}
        self._presence = self.script(lua.PRESENCE)
        self.subscribe(self.key("replicas", "changed"), self._replicas_changed)
        self._ids = itertools.count()

    def __repr__(self) -> str:
        return f"<SharedStore {self.replica} {self._mode} replicas={self._replicas}>"

    async def __aenter__(self) -> Self:
        try:
            await self._bounded(self._mark_alive)
        except SharedUnavailable as exc:
            self._started = True
            self._emit(SharedModeChanged("local", self._replicas, f"Redis unreachable at start: {exc}"))
        else:
            self._started = True
            self._mode = "shared"
            self._emit(SharedModeChanged("shared", self._replicas, "connected to Redis"))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._mode == "shared":
            # Leaving cleanly: the others stop counting this replica now rather than in replica_ttl.
            with contextlib.suppress(SharedUnavailable):
                await self.call(self._leave)
        await self.redis.aclose()
        await self.redis.connection_pool.disconnect()

    async def _leave(self) -> None:
        await self.redis.zrem(self.key("replicas"), self.replica)
        await self.redis.publish(self.key("replicas", "changed"), self.replica)

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def replicas(self) -> int:
        """The replicas seen alive in the last ``replica_ttl``, this one included (the last count while
        local)."""
        return self._replicas

    def status(self) -> dict[str, object]:
        return {"mode": self._mode, "replicas": self._replicas}

    def key(self, *parts: str) -> str:
        """A Redis key under this deployment's prefix: ``key("lane", lane.key)`` is ``P:lane:<key>``."""
        return ":".join((self.options.prefix, *parts))

    def script(self, source: str) -> AsyncScript:
        """``source`` registered once (EVALSHA, loaded again if Redis lost it)."""
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.redis.register_script(source)
        return script

    def new_id(self) -> str:
        """An id unique across replicas (this replica's name and a counter)."""
        return f"{self.replica}:{next(self._ids)}"

    def on_mode_change(self, callback: Callable[[Mode], None]) -> None:
        """Call ``callback(mode)`` on every move between shared and local mode."""
        self._mode_callbacks.append(callback)

    def subscribe(self, channel: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(message)`` for every message on ``channel`` while shared (at most once each;
        a message sent while this replica could not listen is lost)."""
        self._channels.setdefault(channel, []).append(callback)
        self._changed.set()

    async def call(self, factory: Callable[[], Awaitable[T]]) -> T:
        """``await factory()`` bounded by the timeout. Raises ``SharedUnavailable`` at once while local,
        and when this call fails (which makes the replica local); raises ``CancelledError`` when the
        caller was cancelled during the call, even if redis-py let the command finish."""
        if self._mode == "local":
            raise SharedUnavailable("counting locally")
        return await self._bounded(factory)

    async def _bounded(self, factory: Callable[[], Awaitable[T]]) -> T:
        task = asyncio.current_task()
        asked = task.cancelling() if task is not None else 0
        try:
            async with asyncio.timeout(self.options.timeout):
                result = await factory()
        except (RedisError, OSError, TimeoutError) as exc:
            _honour_cancel(asked)
            detail = _describe(exc, self.options.timeout)
            self._go("local", detail)
            raise SharedUnavailable(detail) from None
        _honour_cancel(asked)
        return result

    def _go(self, mode: Mode, detail: str) -> None:
        if mode == self._mode or not self._started:
            return
        self._mode = mode
        self._changed.set()
        self._emit(SharedModeChanged(mode, self._replicas, detail))
        for callback in self._mode_callbacks:
            callback(mode)

    async def _mark_alive(self) -> None:
        count = await self._presence(
            keys=[self.key("replicas")],
            args=[self.replica, self.options.replica_ttl, self.key("replicas", "changed")],
        )
        self._replicas = max(1, int(count))

    def _replicas_changed(self, replica: str) -> None:
        """Another replica joined or left: count again now (the presence loop wakes)."""
        if replica != self.replica:
            self._changed.set()

    async def run(self) -> None:
        """Presence (and the probe while local) and the pub/sub listener, until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._keep_presence(), name="shared-presence")
            tasks.create_task(self._listen(), name="shared-listener")

    async def _keep_presence(self) -> None:
        while True:
            _honour_cancel()
            self._changed.clear()
            if self._mode == "shared":
                with contextlib.suppress(SharedUnavailable):
                    await self.call(self._mark_alive)
                interval = self.options.replica_ttl / 3
            else:
                with contextlib.suppress(SharedUnavailable):
                    await self._bounded(self._mark_alive)
                    self._go("shared", "Redis answers again")
                interval = PROBE_INTERVAL
            # A move to local mode probes at once rather than after a whole presence interval.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._changed.wait()

    async def _listen(self) -> None:
        while True:
            _honour_cancel()
            if self._mode == "local" or not self._channels:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(PROBE_INTERVAL):
                        await self._changed.wait()
                continue
            try:
                await self._relay()
            except (RedisError, OSError, TimeoutError):
                # The connection broke (Redis restarted, the network): listen again once it answers.
                await asyncio.sleep(PROBE_INTERVAL)

    async def _relay(self) -> None:
        async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
            subscribed: set[str] = set()
            while self._mode == "shared":
                _honour_cancel()
                if len(subscribed) < len(self._channels):
                    fresh = [c for c in self._channels if c not in subscribed]
                    async with asyncio.timeout(self.options.timeout):
                        await pubsub.subscribe(*fresh)
                    subscribed.update(fresh)
                message = await pubsub.get_message(timeout=_LISTEN_POLL)
                if message is not None and message.get("type") == "message":
                    for callback in self._channels.get(str(message["channel"]), ()):
                        callback(str(message["data"]))


def _honour_cancel(asked: int = 0) -> None:
    """Raise if this task was asked to stop more often than the ``asked`` it had before a call: redis-py
    can lose a cancel (a read that times out at the same moment becomes "no message"; a command that
    finishes anyway returns its reply), and a task that goes on after a lost cancel never ends: its
    owner's close then waits forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling() > asked:
        raise asyncio.CancelledError


def _describe(exc: BaseException, timeout: float) -> str:
    """What went wrong, without the URL (it may hold a password): the error's kind and, for a socket
    error, its reason."""
    if isinstance(exc, TimeoutError) and not isinstance(exc, RedisError):
        return f"no answer within {timeout:g} s"
    cause: BaseException | None = exc
    while cause is not None and not (isinstance(cause, OSError) and cause.strerror):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, OSError):
        return f"{type(exc).__name__}: {cause.strerror}"
    return type(exc).__name__
