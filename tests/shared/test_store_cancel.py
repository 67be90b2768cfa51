"""A cancel that redis-py loses still stops the store's caller.

redis-py can finish a command and hand back its reply (or an error of its own) although the task
awaiting it was cancelled meanwhile. A background loop that goes on after such a lost cancel never
ends, and its router's close waits for it forever; the store raises the cancel at the end of the call
instead. The commands here stand in for redis-py at that moment: each one swallows the cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from router.observability.events import SharedModeChanged
from router.shared.options import SharedOptions
from router.shared.store import SharedStore
from tests.shared.conftest import shared_options
from tests.shared_support import RedisServer
from tests.support import EventLog


@pytest.fixture
def patient(redis_server: RedisServer) -> SharedOptions:
    """A timeout no stalled loop reaches: only the test's cancel may end the call."""
    return shared_options(redis_server, timeout=30.0, lease_ttl=120.0, leader_ttl=120.0, replica_ttl=120.0)


def swallowing(outcome: Callable[[], str]) -> tuple[asyncio.Event, Callable[[], Awaitable[str]]]:
    """A command that waits until cancelled, swallows the cancel, then ends with ``outcome()``."""
    waiting = asyncio.Event()

    async def command() -> str:
        waiting.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        return outcome()

    return waiting, command


async def cancelled_call(
    store: SharedStore, command: Callable[[], Awaitable[str]], waiting: asyncio.Event
) -> None:
    call = asyncio.create_task(store.call(command))
    await waiting.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


async def test_a_reply_that_arrives_after_a_cancel_does_not_keep_the_caller_going(
    patient: SharedOptions,
) -> None:
    async with SharedStore(patient, emit=EventLog()) as store:
        waiting, command = swallowing(lambda: "reply")
        await cancelled_call(store, command, waiting)


async def test_an_error_after_a_cancel_is_the_cancel_and_no_outage(patient: SharedOptions) -> None:
    """The command fails once cancelled: the caller sees the cancel, not ``SharedUnavailable``, and the
    replica stays shared (its caller gave up; Redis did not)."""
    log = EventLog()

    def broken() -> str:
        raise RedisConnectionError("connection closed while cancelling")

    async with SharedStore(patient, emit=log) as store:
        waiting, command = swallowing(broken)
        await cancelled_call(store, command, waiting)
    assert [event.mode for event in log.of(SharedModeChanged)] == ["shared"]
