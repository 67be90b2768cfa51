"""The verifier: a background task owned by ``Router`` that checks responses after they were delivered.

Dispatch hands it each completed response it sampled (``check``, never blocking: a full queue drops the
job and counts it; hashing is the workers' job, off the request's path). Workers fetch the provider's
signature record (protocol.md §5.2), asking again while it is not yet stored (the broker stores it after
the last byte), judge it (``check.judge``), record the verdict in the provider's trust record, demote a
provider whose response failed, and keep the verdict for lookup by chat id. A caller that asked for a
synchronous verdict awaits it (``wait``).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import quote

from cachetools import TTLCache

from router.errors import ConfigError, ProviderUnreachable
from router.observability.events import Observer, Verified
from router.pool.providers import Exclusion, ProviderKind, ProviderState
from router.pool.trust import Outcome
from router.transport.base import ProviderTransport
from router.verify.check import Finding, judge, signed_response_part

# Verdicts kept for `zg-router verify <chat-id>`: as long as brokers keep signatures (20 min), and at
# most this many (about 11 MB, measured), so memory stays flat: past it the oldest go first.
VERDICT_TTL = 20 * 60
MAX_VERDICTS = 10_000


class _Kept(NamedTuple):
    """A verdict kept for lookup: a tuple, since thousands are held."""

    chat_id: str
    provider: str
    request_id: str
    finding: Finding
    checked_at: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "chat_id": self.chat_id,
            "provider": self.provider,
            "request_id": self.request_id,
            "outcome": self.finding.outcome.value,
            "detail": self.finding.detail,
            "request_hash_matched": self.finding.request_matched,
            "checked_at": self.checked_at,
        }


@dataclass(frozen=True, slots=True)
class VerifyOptions:
    """``[verify]``: how much to verify and what a failure costs the provider."""

    # Share of TEE providers' responses checked; at 0 only those a caller asks to verify synchronously.
    sample_rate: float = 1.0
    verified_only: bool = False  # route only to providers whose recent responses verified
    # With verified_only (set here or per request): also only providers whose TEE quote is attested
    # (router.verify.attestation). Off, a failing attestation is shown and not acted on.
    require_attestation: bool = False
    demote_for: float = 600.0  # seconds a provider is skipped after a failed verification
    retry_for: float = 10.0  # seconds to keep asking for a signature the broker has not stored yet
    lookup_timeout: float = 5.0  # one signature lookup
    queue_size: int = 1000
    workers: int = 4

    def __post_init__(self) -> None:
        numbers = (self.sample_rate, self.demote_for, self.retry_for, self.lookup_timeout)
        if not all(math.isfinite(n) for n in numbers):
            raise ConfigError("[verify] rates and durations must be finite numbers")
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ConfigError(f"verify sample_rate must be in [0, 1], got {self.sample_rate}")
        if min(self.demote_for, self.retry_for) < 0 or self.lookup_timeout <= 0:
            raise ConfigError("verify durations cannot be negative (lookup_timeout must be positive)")
        if self.queue_size < 1 or self.workers < 1:
            raise ConfigError("verify queue_size and workers must be at least 1")


def _future() -> asyncio.Future[Finding]:
    return asyncio.get_running_loop().create_future()


def _settled(finding: Finding) -> asyncio.Future[Finding]:
    future = _future()
    future.set_result(finding)
    return future


_STOPPED = Finding(Outcome.UNVERIFIABLE, "the router stopped before this response was checked")


def _answer(job: Job, finding: Finding) -> None:
    if not job.verdict.done():
        job.verdict.set_result(finding)


@dataclass(slots=True)
class Job:
    """One delivered response to check: what we sent, the bytes we relayed (in the parts they came in),
    and where it came from. Hashing waits for a worker: nothing of it runs on the request's path."""

    chat_id: str
    state: ProviderState
    request: bytes
    response: Sequence[bytes]
    request_id: str
    images: bool = False
    verdict: asyncio.Future[Finding] = field(default_factory=_future)


class Verifier:
    """Checks delivered responses; ``run()`` is one of the Router's background tasks."""

    def __init__(
        self,
        transport: ProviderTransport,
        options: VerifyOptions,
        emit: Observer,
        *,
        clock: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self._transport = transport
        self._options = options
        self._emit = emit
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - sampling, not cryptography
        self._queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=options.queue_size)
        self._verdicts: TTLCache[str, _Kept] = TTLCache(MAX_VERDICTS, VERDICT_TTL, timer=time.monotonic)
        self.dropped = 0

    def wants(self, state: ProviderState, *, forced: bool = False) -> bool:
        """Whether to check a response of ``state``: ``forced`` (a caller asked for a synchronous
        verdict), or a TEE provider with a signer and this response sampled."""
        if forced:
            return True
        if state.info.kind is not ProviderKind.CHAIN or state.info.tee_signer is None:
            return False
        rate = self._options.sample_rate
        return rate >= 1.0 or (rate > 0.0 and self._rng.random() < rate)

    def check(
        self,
        state: ProviderState,
        chat_id: str | None,
        request: bytes,
        response: Sequence[bytes],
        *,
        request_id: str,
        images: bool = False,
    ) -> asyncio.Future[Finding]:
        """Queue a check of one delivered response (never waits); its verdict arrives in the future.
        A response that cannot be checked gets its ``unverifiable`` verdict at once."""
        if state.info.tee_signer is None:
            why = f"{state.id} has no acknowledged TEE signer on chain"
            if state.info.kind is not ProviderKind.CHAIN:
                why = f"{state.id} is a static upstream: nothing signs its responses"
            return self._unverifiable(state, chat_id or "", request_id, why)
        if not chat_id:
            return self._unverifiable(state, "", request_id, "the provider sent no ZG-Res-Key to look up")
        job = Job(chat_id, state, request, response, request_id, images)
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.dropped += 1
            return self._unverifiable(state, chat_id, request_id, "the verification queue was full")
        return job.verdict

    async def wait(self, verdict: asyncio.Future[Finding]) -> Finding:
        """A verdict for a caller who waits for it: bounded by the time a check can take."""
        limit = self._options.retry_for + self._options.lookup_timeout + 5.0
        try:
            return await asyncio.wait_for(asyncio.shield(verdict), timeout=limit)
        except TimeoutError:
            return Finding(Outcome.UNVERIFIABLE, f"no verdict within {limit:g}s (the queue is backed up)")

    def _unverifiable(
        self, state: ProviderState, chat_id: str, request_id: str, why: str
    ) -> asyncio.Future[Finding]:
        self._emit(Verified(request_id, state.id, chat_id, Outcome.UNVERIFIABLE.value, why))
        return _settled(Finding(Outcome.UNVERIFIABLE, why))

    def lookup(self, chat_id: str) -> dict[str, Any] | None:
        """A past verdict by the provider's chat id (ZG-Res-Key), while it is kept."""
        kept = self._verdicts.get(chat_id.lower())
        return kept.as_dict() if kept is not None else None

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as workers:
                for _ in range(self._options.workers):
                    workers.create_task(self._work())
        finally:
            # Stopping: whoever waits for a queued verdict gets an answer instead of a timeout.
            while not self._queue.empty():
                _answer(self._queue.get_nowait(), _STOPPED)

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                finding = await self._check(job)
            except asyncio.CancelledError:
                _answer(job, _STOPPED)
                raise
            except Exception as exc:
                finding = Finding(Outcome.UNVERIFIABLE, f"verification failed to run: {type(exc).__name__}")
            self._settle(job, finding)

    async def _check(self, job: Job) -> Finding:
        info = job.state.info
        assert info.tee_signer is not None
        model = info.models[0] if info.models else ""
        url = f"{info.base_url}/signature/{quote(job.chat_id, safe='')}?model={quote(model, safe='')}"
        give_up = self._clock() + self._options.retry_for
        delay, last = 0.1, "no answer"
        while True:
            try:
                record = await self._transport.get_json(
                    info.kind, info.id, url, headers={}, time_left=self._options.lookup_timeout
                )
            except ProviderUnreachable as exc:
                last = str(exc)
            else:
                part = signed_response_part(job.response, images=job.images)
                return judge(record, signer=info.tee_signer, request=job.request, response_part=part)
            remaining = give_up - self._clock()
            if remaining <= 0:
                return Finding(Outcome.UNVERIFIABLE, f"no signature for this response ({last})")
            # The last lookup falls on the deadline itself: a signature stored just before it counts.
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 2.0)

    def _settle(self, job: Job, finding: Finding) -> None:
        state = job.state
        state.trust.record(finding.outcome, time.time(), finding.detail)
        if finding.outcome is Outcome.FAILED:
            state.exclude(Exclusion.UNTRUSTED, self._clock() + self._options.demote_for)
        kept = _Kept(job.chat_id, state.id, job.request_id, finding, state.trust.last_checked)
        self._verdicts[job.chat_id.lower()] = kept
        _answer(job, finding)
        self._emit(Verified(job.request_id, state.id, job.chat_id, finding.outcome.value, finding.detail))
