"""What a request is and what it gets back: ``Call``, ``Reply`` and ``StreamReply``, and the slot a reply
holds until it is done. The dispatch loop (``router.dispatch``) makes them; the gateway and the library
API consume them.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from router.errors import ProviderUnreachable
from router.policy.select import Preferences
from router.pool.accounting import Hold
from router.pool.admission import Admission
from router.pool.pricing import Charge
from router.pool.providers import ProviderState
from router.transport.http import Upstream
from router.transport.sse import DONE, error_event, is_done
from router.verify.check import Finding


class Endpoint(enum.Enum):
    """An OpenAI route we serve: its path under the provider base URL and the 0G service type behind it."""

    CHAT = ("/chat/completions", "chatbot")
    EMBEDDINGS = ("/embeddings", "embedding")
    IMAGES = ("/images/generations", "text-to-image")
    TRANSCRIPTIONS = ("/audio/transcriptions", "speech-to-text")

    def __init__(self, path: str, service_type: str) -> None:
        self.path = path
        self.service_type = service_type


@dataclass(slots=True)
class Call:
    """One request, parsed once. ``body`` is what goes to the provider; ``deadline`` is in clock time;
    ``max_output`` is the most output it asks for (``max_tokens``, or the image count), if it says."""

    endpoint: Endpoint
    model: str
    body: bytes
    content_type: str
    stream: bool
    prefs: Preferences
    request_id: str
    deadline: float
    max_output: int | None = None
    verify_sync: bool = False  # the caller waits for the TEE verdict (x-zg-verify: sync)


@dataclass(slots=True)
class Reply:
    """A whole (non-streamed) provider reply."""

    status: int
    body: bytes
    content_type: str
    provider: str
    attempts: int
    cost: int | None
    res_key: str | None  # the provider's chat id (ZG-Res-Key): where its signature is looked up
    verifiability: str = ""
    verification: asyncio.Future[Finding] | None = None  # the TEE verdict to come, if it is checked


class Slot:
    """A taken admission slot and the request's balance hold, released exactly once (or handed over to a
    stream, which releases them). ``cost`` is booked against the hold on release."""

    __slots__ = ("_admission", "_held", "cost", "hold", "sent", "state")

    def __init__(self, admission: Admission, state: ProviderState, hold: Hold) -> None:
        self._admission = admission
        self.state = state
        self.hold = hold
        self.cost: int | None = None
        self.sent = False
        self._held = True

    def hand_over(self) -> Slot:
        moved = Slot(self._admission, self.state, self.hold)
        self._held = False
        return moved

    def release(self) -> None:
        if self._held:
            self._held = False
            self.hold.close(self.cost)
            # A probe that never reported (cancelled) must not keep the breaker half-open forever.
            self.state.health.abandon()
            self._admission.release(self.state)


class StreamReply:
    """A stream whose first event has arrived. Iterate ``events()`` to the end, or ``aclose()`` it.

    After the first byte there is no failover: a provider failure ends the stream with an OpenAI-shaped
    error event and ``[DONE]``, never a hang or a silent cut. The slot is released when the stream ends,
    fails, or is closed early (status 499: the caller went away).
    """

    def __init__(
        self,
        state: ProviderState,
        slot: Slot,
        upstream: Upstream,
        events: AsyncIterator[bytes],
        first: bytes,
        *,
        attempts: int,
        ttft: float,
        finish: Callable[[int, Charge, str | None], None],
        emit_broken: Callable[[str], None],
        elapsed: Callable[[], float],
        verify: Callable[[Sequence[bytes]], asyncio.Future[Finding]] | None = None,
        wait: Callable[[asyncio.Future[Finding]], Awaitable[Finding]] | None = None,
    ) -> None:
        """``emit_broken`` hears a provider failure mid-stream: it reports it and charges it to the
        provider's health (once per request, as the dispatcher charges failures). ``verify`` (when this
        stream is checked) takes the relayed upstream bytes once the stream ended well; ``wait`` (when the
        caller asked for a synchronous verdict) awaits that verdict, which then precedes ``[DONE]`` as an
        SSE comment."""
        self._state = state
        self._slot = slot
        self._upstream = upstream
        self._upstream_events = events
        self._first = first
        self._finish = finish
        self._emit_broken = emit_broken
        self._elapsed = elapsed
        self._finished = False
        self.provider = state.id
        self.attempts = attempts
        self.ttft = ttft
        self.res_key = upstream.headers.get("ZG-Res-Key")
        self.verifiability = state.info.verifiability
        self.verification: asyncio.Future[Finding] | None = None
        self._verify = verify
        self._wait = wait
        self.usage: dict[str, Any] | None = None
        self.charge = Charge(None)
        self._iterator = self._run()

    def events(self) -> AsyncGenerator[bytes]:
        """Whole SSE events, ending with ``[DONE]``."""
        return self._iterator

    async def aclose(self) -> None:
        """Stop early: drop the upstream connection and free the slot."""
        await self._iterator.aclose()
        self._end(499, "the caller closed the stream")

    async def _run(self) -> AsyncGenerator[bytes]:
        health = self._state.health
        status: int = 499
        error: str | None = "the caller closed the stream"
        # The upstream's bytes as relayed, for the verifier: kept by reference, hashed by its workers.
        relayed: list[bytes] | None = [] if self._verify is not None else None
        try:
            event: bytes | None = self._first
            # The upstream's [DONE] (and any whitespace after it) is held back, so that a synchronous
            # verdict can go before it; anything else after it flushes it, keeping the upstream's order.
            held: bytes | None = None
            saw_done = False
            while event is not None:
                if relayed is not None:
                    relayed.append(event)
                if held is not None and not event.strip():
                    held += event
                elif is_done(event):
                    if held is not None:
                        yield held
                    held, saw_done = event, True
                else:
                    if held is not None:
                        yield held
                        held = None
                    yield event
                event = await anext(self._upstream_events, None)
            health.record_success(latency=self._elapsed(), ttft=self.ttft)
            # The upstream read each event's usage as it checked the event: no second parse here.
            self.usage = self._upstream.usage
            self.charge = self._state.info.pricing.usage_charge(self.usage)
            status, error = 200, None
            if self._verify is not None and relayed is not None:
                self.verification = self._verify(relayed)
                if self._wait is not None:
                    # The provider is done: its slot and balance hold go back before the wait.
                    self._end(status, error)
                    yield verdict_comment(await self._wait(self.verification))
            if held is not None:
                yield held
            elif not saw_done:
                yield DONE
        except ProviderUnreachable as exc:
            status, error = 502, str(exc)
            self._emit_broken(error)
            yield error_event(f"the provider failed mid-stream: {exc}", "stream_interrupted")
            yield DONE
        finally:
            self._end(status, error)

    def _end(self, status: int, error: str | None) -> None:
        if self._finished:
            return
        self._finished = True
        self._upstream.close()
        # A stream cut short (or without usage) is still billed for what was generated: book the
        # reserve, an upper bound, until the provider's own unsettled figure says otherwise.
        cost = self.charge.cost
        self._slot.cost = cost if cost is not None else self._slot.hold.amount
        self._slot.release()
        self._finish(status, self.charge, error)


def verdict_comment(finding: Finding) -> bytes:
    """A stream's synchronous verdict: an SSE comment line, which clients that do not look skip."""
    return f": x-zg-verify: {finding.outcome.value}\n\n".encode()


def max_output(endpoint: Endpoint, payload: Mapping[str, Any]) -> int | None:
    """The most output a request asks for: ``max_completion_tokens``/``max_tokens``, or the image count.

    Used to reserve balance while the request is in flight; a value the provider will reject anyway
    (not a positive integer) counts as unsaid.
    """
    keys = ("n",) if endpoint is Endpoint.IMAGES else ("max_completion_tokens", "max_tokens")
    for key in keys:
        value = payload.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
