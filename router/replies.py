"""What a request gets back: ``Reply`` (whole) and ``StreamReply``, which carries its attempt until the
stream ends. The dispatch loop (``router.dispatch``) makes them; the gateway and the library API consume
them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from router.attempt import NO_CHARGE, Attempt
from router.errors import ProviderUnreachable
from router.pool.pricing import Charge
from router.transport.base import Upstream
from router.transport.sse import DONE, error_event, is_done
from router.verify.check import Finding


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


class StreamReply:
    """A stream whose first event has arrived. Iterate ``events()`` to the end, or ``aclose()`` it.

    After the first byte there is no failover: a provider failure ends the stream with an OpenAI-shaped
    error event and ``[DONE]``, never a hang or a silent cut. The stream's attempt ends when the stream
    ends, fails, or is closed early (status 499: the caller went away), and records the outcome.
    """

    def __init__(
        self,
        attempt: Attempt,
        upstream: Upstream,
        events: AsyncIterator[bytes],
        first: bytes,
        *,
        ttft: float,
        verify: Callable[[Sequence[bytes]], asyncio.Future[Finding]] | None = None,
        wait: Callable[[asyncio.Future[Finding]], Awaitable[Finding]] | None = None,
    ) -> None:
        """``verify`` (when this stream is checked) takes the relayed upstream bytes once the stream
        ended well; ``wait`` (when the caller asked for a synchronous verdict) awaits that verdict, which
        then precedes ``[DONE]`` as an SSE comment."""
        self._attempt = attempt
        self._upstream = upstream
        self._upstream_events = events
        self._first = first
        state = attempt.provider
        self.provider = state.id
        self.attempts = attempt.run.attempts
        self.ttft = ttft
        self.res_key = upstream.headers.get("ZG-Res-Key")
        self.verifiability = state.info.verifiability
        self.verification: asyncio.Future[Finding] | None = None
        self._verify = verify
        self._wait = wait
        self.usage: dict[str, Any] | None = None
        self.charge = NO_CHARGE
        self._iterator = self._run()

    def events(self) -> AsyncGenerator[bytes]:
        """Whole SSE events, ending with ``[DONE]``."""
        return self._iterator

    async def aclose(self) -> None:
        """Stop early: drop the upstream connection and end the attempt."""
        await self._iterator.aclose()
        self._closed_early()

    async def _run(self) -> AsyncGenerator[bytes]:
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
            # The upstream read each event's usage as it checked the event: no second parse here.
            self.usage = self._upstream.usage
            self.charge = self._attempt.provider.info.pricing.usage_charge(self.usage)
            self._upstream.close()
            # The provider is done: its lane and balance hold go back before any wait for the verdict.
            self._attempt.succeeded(200, self.charge, ttft=self.ttft)
            if self._verify is not None and relayed is not None:
                self.verification = self._verify(relayed)
                if self._wait is not None:
                    yield verdict_comment(await self._wait(self.verification))
            if held is not None:
                yield held
            elif not saw_done:
                yield DONE
        except ProviderUnreachable as exc:
            self._upstream.close()
            detail = str(exc)
            self._attempt.broke(detail, self._upstream_charge())
            self._attempt.run.finish(502, self.provider, self.charge, ttft=self.ttft, error=detail)
            yield error_event(f"the provider failed mid-stream: {exc}", "stream_interrupted")
            yield DONE
        finally:
            self._closed_early()

    def _upstream_charge(self) -> Charge:
        """What a stream cut short is billed by: the usage it reported so far, if any."""
        self.usage = self._upstream.usage
        self.charge = self._attempt.provider.info.pricing.usage_charge(self.usage)
        return self.charge

    def _closed_early(self) -> None:
        """The caller stopped reading (or the generator was dropped) before the attempt ended."""
        attempt = self._attempt
        if attempt.ended:
            return
        self._upstream.close()
        attempt.abandoned(self._upstream_charge())
        attempt.run.finish(
            499, self.provider, self.charge, ttft=self.ttft, error="the caller closed the stream"
        )


def verdict_comment(finding: Finding) -> bytes:
    """A stream's synchronous verdict: an SSE comment line, which clients that do not look skip."""
    return f": x-zg-verify: {finding.outcome.value}\n\n".encode()
