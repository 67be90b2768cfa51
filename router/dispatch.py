"""The one request loop, shared by the gateway and the library API.

Per attempt: rank the candidates (pure), take a slot (admission queue), send, classify the reply, record
health, and either return, fail over to the next candidate, or stop. Failover happens only before the
first byte reaches the caller: a plain reply is read whole before it is returned, and a stream is returned
only once its first event has arrived. The slot goes back exactly once on every path, cancellation included.
"""

from __future__ import annotations

import asyncio
import enum
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from router.config import DispatchOptions
from router.errors import (
    AllAttemptsFailed,
    InsufficientFunds,
    InvalidRequest,
    NoProviderAvailable,
    ProviderUnreachable,
    RequestFailed,
    UpstreamRejected,
)
from router.observability.events import AttemptFailed, Observer, RequestFinished
from router.policy.outcome import Verdict, classify, error_message, reset_seconds
from router.policy.select import Preferences, eligible, rank
from router.pool.accounting import Accounts, FundingState, Hold
from router.pool.admission import Admission
from router.pool.pricing import reply_cost
from router.pool.providers import Exclusion, Pool, ProviderInfo, ProviderKind, ProviderState
from router.transport.http import HttpTransport, Upstream
from router.transport.sse import DONE, error_event, is_done, usage_of


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


@dataclass(slots=True)
class Reply:
    """A whole (non-streamed) provider reply."""

    status: int
    body: bytes
    content_type: str
    provider: str
    attempts: int
    cost: int | None
    res_key: str | None


Authorizer = Callable[[ProviderInfo], Awaitable[str]]
# Static upstreams are not our 0G money: their requests hold nothing.
_NO_HOLD = Hold(None, None, 0)


class _Run:
    """One request's progress through its attempts."""

    __slots__ = ("_last", "attempts", "call", "counted", "started", "tried")

    def __init__(self, call: Call, started: float) -> None:
        self.call = call
        self.started = started
        self.attempts = 0
        self.counted = 0
        self.tried: set[str] = set()
        self._last: _FailOver | None = None

    def failed(self, exc: BaseException | None) -> None:
        if isinstance(exc, _FailOver) and exc is not self._last:
            self._last = exc
            self.counted += exc.counts

    def last_failure(self) -> _FailOver:
        assert self._last is not None
        return self._last


class _FailOver(Exception):
    """This attempt failed in a way another attempt may fix."""

    def __init__(self, status: int | None, detail: str, *, counts: bool = True) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.counts = counts


class Dispatcher:
    """Runs calls against the pool. Built and owned by ``Router``."""

    def __init__(
        self,
        pool: Pool,
        admission: Admission,
        transport: HttpTransport,
        authorize: Authorizer,
        options: DispatchOptions,
        emit: Observer,
        *,
        on_misconfigured: Callable[[ProviderState], None] = lambda _: None,
        accounts: Accounts | None = None,
        on_unfunded: Callable[[ProviderState], None] = lambda _: None,
        default_max_tokens: int = 4096,
        rng: random.Random | None = None,
    ) -> None:
        self._pool = pool
        self._admission = admission
        self._transport = transport
        self._authorize = authorize
        self._options = options
        self._emit = emit
        self._on_misconfigured = on_misconfigured
        self._accounts = accounts
        self._on_unfunded = on_unfunded
        self._default_max_tokens = default_max_tokens
        self._rng = rng or random.Random()  # noqa: S311 - load spreading, not cryptography

    async def dispatch(self, call: Call) -> Reply | StreamReply:
        """Serve ``call``: a ``Reply``, a ``StreamReply`` (for ``call.stream``), or a ``RequestFailed``."""
        started = self._admission.now()
        run = _Run(call, started)
        try:
            candidates = self._candidates(call)
            # Most requests succeed at once: the first attempt runs without the retry machinery.
            try:
                return await self._next_attempt(run, candidates)
            except _FailOver as exc:
                run.failed(exc)
            if not self._budget_left(run):
                raise run.last_failure()
            retrying = AsyncRetrying(
                stop=self._stop(run),
                retry=retry_if_exception_type(_FailOver),
                wait=_no_wait,
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    return await self._next_attempt(run, candidates)
        except _FailOver as exc:
            run.failed(exc)
            error: RequestFailed = AllAttemptsFailed(
                f"every attempt failed ({run.attempts} over {len(run.tried)} provider(s)); "
                f"last: {exc.detail}",
                attempts=run.attempts,
            )
        except RequestFailed as exc:
            exc.attempts = run.attempts
            error = exc
        except asyncio.CancelledError:
            # The caller went away (a client disconnect cancels the gateway's handler).
            self._finish(call, started, 499, None, run.attempts, None, None, error="the caller went away")
            raise
        self._finish(call, started, error.status, None, run.attempts, None, None, error=str(error))
        raise error

    def _stop(self, run: _Run) -> Callable[[RetryCallState], bool]:
        """The tenacity stop condition: count the attempt that just failed, then check the budget."""

        def stop(state: RetryCallState) -> bool:
            run.failed(state.outcome.exception() if state.outcome is not None else None)
            return not self._budget_left(run)

        return stop

    def _budget_left(self, run: _Run) -> bool:
        """Another attempt fits: fewer than ``max_attempts`` counted failures (provider 429s do not count)
        and the deadline not yet passed."""
        return run.counted < self._options.max_attempts and self._admission.now() < run.call.deadline

    async def _next_attempt(self, run: _Run, candidates: list[ProviderState]) -> Reply | StreamReply:
        run.attempts += 1
        fresh = [s for s in candidates if s.id not in run.tried] or candidates
        return await self._attempt(run.call, fresh, run.tried, run.attempts, run.started)

    def _candidates(self, call: Call) -> list[ProviderState]:
        everyone = self._pool.candidates(call.endpoint.service_type, call.model)
        if not everyone:
            if self._pool.knows_model(call.model):
                raise InvalidRequest(
                    f"model {call.model!r} is not served on {call.endpoint.path.removeprefix('/')}",
                    status=404,
                    code="model_not_found",
                    param="model",
                )
            raise InvalidRequest(
                f"model {call.model!r} does not exist; GET /v1/models lists the models on offer",
                status=404,
                code="model_not_found",
                param="model",
            )
        allowed = eligible(everyone, call.prefs)
        if not allowed:
            raise NoProviderAvailable(
                f"none of the {len(everyone)} provider(s) of {call.model!r} matches the request's provider "
                "preferences",
                code="no_matching_provider",
            )
        return allowed

    async def _attempt(
        self, call: Call, candidates: list[ProviderState], tried: set[str], attempt: int, started: float
    ) -> Reply | StreamReply:
        now = self._admission.now()
        ranked = [
            s for s in rank(candidates, call.prefs, self._options.strategy, self._rng) if s.available(now)
        ]
        if not ranked:
            raise NoProviderAvailable(
                f"all {len(candidates)} provider(s) of {call.model!r} are cooling down or excluded; "
                "try again shortly",
                code="no_available_provider",
                headers={"Retry-After": "1"},
            )
        accounts = self._accounts
        reserves: dict[str, int] = {}
        if accounts is not None:
            ranked = self._funded(call, ranked, accounts, reserves)
        queue_deadline = min(call.deadline, now + self._options.queue_timeout)
        state = await self._admission.acquire(ranked, queue_deadline)
        tried.add(state.id)
        reserve = reserves.get(state.id)
        hold = accounts.hold(state.id, reserve) if accounts is not None and reserve is not None else _NO_HOLD
        slot = _Slot(self._admission, state, hold)
        try:
            return await self._exchange(call, state, slot, attempt, started)
        except asyncio.CancelledError:
            if slot.sent and slot.cost is None:
                # The provider bills what it generated even if we stop listening (protocol.md §10):
                # book the reserve, an upper bound, until its own figure says otherwise.
                slot.cost = hold.amount
            raise
        finally:
            slot.release()

    def _funded(
        self, call: Call, ranked: list[ProviderState], accounts: Accounts, reserves: dict[str, int]
    ) -> list[ProviderState]:
        """The chain providers whose available balance covers this call's reserve (static ones always);
        ``reserves`` gets each chain provider's reserve. None covered: 402."""
        prompt_tokens = len(call.body) // 4 + 1
        output = call.max_output if call.max_output is not None else self._default_max_tokens
        covered = []
        for state in ranked:
            info = state.info
            if info.kind is not ProviderKind.CHAIN:
                covered.append(state)
                continue
            if call.endpoint is Endpoint.EMBEDDINGS:
                reserve = info.pricing.fee(prompt_tokens, 0)
            elif call.endpoint is Endpoint.IMAGES:
                reserve = info.pricing.fee(0, call.max_output or 1)
            elif call.endpoint is Endpoint.TRANSCRIPTIONS:
                # Billed by output (or duration), not by the size of the audio upload.
                reserve = info.pricing.fee(0, output)
            else:
                reserve = info.pricing.fee(prompt_tokens, output)
            if accounts.covers(info.id, reserve):
                reserves[info.id] = reserve
                covered.append(state)
        if not covered:
            raise _unfunded(call, ranked, accounts)
        return covered

    async def _exchange(
        self, call: Call, state: ProviderState, slot: _Slot, attempt: int, started: float
    ) -> Reply | StreamReply:
        info = state.info
        sent = self._admission.now()
        try:
            headers = {"Content-Type": call.content_type}
            if authorization := await self._authorize(info):
                headers["Authorization"] = authorization
            slot.sent = True
            upstream = await self._transport.send(
                info,
                call.endpoint.path,
                call.body,
                headers,
                time_left=call.deadline - sent,
                stream=call.stream,
            )
        except ProviderUnreachable as exc:
            raise self._failed(call, state, None, Verdict.UNHEALTHY, str(exc)) from None
        if upstream.status >= 300:
            try:
                body = await upstream.read()
            except ProviderUnreachable as exc:
                raise self._failed(call, state, upstream.status, Verdict.UNHEALTHY, str(exc)) from None
            verdict = classify(upstream.status, body, info.kind)
            if verdict is Verdict.CLIENT_ERROR:
                state.health.record_success()
                ctype = upstream.headers.get("Content-Type", "application/json")
                raise UpstreamRejected(upstream.status, body, ctype, provider=info.id, attempts=attempt)
            if verdict is Verdict.RATE_LIMITED:
                reset = reset_seconds(upstream.headers.get("x-ratelimit-reset-requests"))
                state.gate.back_off(self._admission.now() + (reset or self._options.rate_limit_backoff))
            raise self._failed(call, state, upstream.status, verdict, error_message(body))
        if call.stream:
            return await self._open_stream(call, state, slot, upstream, attempt, started, sent)
        try:
            body = await upstream.read()
        except ProviderUnreachable as exc:
            raise self._failed(call, state, 200, Verdict.UNHEALTHY, str(exc)) from None
        done = self._admission.now()
        state.health.record_success(latency=done - sent)
        cost = reply_cost(info.pricing, body, images=call.endpoint is Endpoint.IMAGES)
        slot.cost = cost
        self._finish(call, started, upstream.status, info.id, attempt, cost, None)
        return Reply(
            status=upstream.status,
            body=body,
            content_type=upstream.headers.get("Content-Type", "application/json"),
            provider=info.id,
            attempts=attempt,
            cost=cost,
            res_key=upstream.headers.get("ZG-Res-Key"),
        )

    async def _open_stream(
        self,
        call: Call,
        state: ProviderState,
        slot: _Slot,
        upstream: Upstream,
        attempt: int,
        started: float,
        sent: float,
    ) -> StreamReply:
        events = upstream.events()
        try:
            first = await anext(events)
        except (ProviderUnreachable, StopAsyncIteration) as exc:
            upstream.close()
            detail = str(exc) if isinstance(exc, ProviderUnreachable) else "stream ended before any event"
            raise self._failed(call, state, 200, Verdict.UNHEALTHY, detail) from None
        except BaseException:
            upstream.close()
            raise
        ttft = self._admission.now() - sent

        def finish(status: int, cost: int | None, error: str | None) -> None:
            self._finish(call, started, status, state.id, attempt, cost, ttft, error=error)

        def broken(detail: str) -> None:
            self._emit(AttemptFailed(call.request_id, state.id, "stream_broken", 200, detail[:300]))

        return StreamReply(
            state,
            slot.hand_over(),
            upstream,
            events,
            first,
            attempts=attempt,
            ttft=ttft,
            finish=finish,
            emit_broken=broken,
            elapsed=lambda: self._admission.now() - sent,
        )

    def _failed(
        self, call: Call, state: ProviderState, status: int | None, verdict: Verdict, detail: str
    ) -> _FailOver:
        """Record what an attempt's failure means for its provider; the signal to try the next one."""
        now = self._admission.now()
        options = self._options
        if verdict is Verdict.UNHEALTHY:
            state.health.record_failure()
        elif verdict is Verdict.UNFUNDED:
            state.health.record_success()
            state.exclude(Exclusion.UNFUNDED, now + options.unfunded_cooldown)
            self._on_unfunded(state)
        elif verdict is Verdict.MISCONFIGURED:
            state.health.record_success()
            state.exclude(Exclusion.MISCONFIGURED, now + options.misconfigured_cooldown)
            self._on_misconfigured(state)
        self._emit(AttemptFailed(call.request_id, state.id, verdict.value, status, detail[:300]))
        return _FailOver(
            status,
            f"{state.id}: {status or 'no reply'} {detail[:200]}",
            counts=verdict is not Verdict.RATE_LIMITED,
        )

    def _finish(
        self,
        call: Call,
        started: float,
        status: int,
        provider: str | None,
        attempts: int,
        cost: int | None,
        ttft: float | None,
        error: str | None = None,
    ) -> None:
        self._emit(
            RequestFinished(
                request_id=call.request_id,
                endpoint=call.endpoint.path,
                model=call.model,
                status=status,
                provider=provider,
                attempts=attempts,
                cost=cost,
                latency=self._admission.now() - started,
                ttft=ttft,
                stream=call.stream,
                error=error,
            )
        )


class _Slot:
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

    def hand_over(self) -> _Slot:
        moved = _Slot(self._admission, self.state, self.hold)
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
        slot: _Slot,
        upstream: Upstream,
        events: AsyncIterator[bytes],
        first: bytes,
        *,
        attempts: int,
        ttft: float,
        finish: Callable[[int, int | None, str | None], None],
        emit_broken: Callable[[str], None],
        elapsed: Callable[[], float],
    ) -> None:
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
        self.usage: dict[str, Any] | None = None
        self.cost: int | None = None
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
        try:
            event: bytes | None = self._first
            saw_done = False
            while event is not None:
                if is_done(event):
                    saw_done = True
                elif (usage := usage_of(event)) is not None:
                    self.usage = usage
                yield event
                event = await anext(self._upstream_events, None)
            if not saw_done:
                yield DONE
            health.record_success(latency=self._elapsed(), ttft=self.ttft)
            self.cost = self._state.info.pricing.usage_fee(self.usage)
            status, error = 200, None
        except ProviderUnreachable as exc:
            status, error = 502, str(exc)
            health.record_failure()
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
        self._slot.cost = self.cost if self.cost is not None else self._slot.hold.amount
        self._slot.release()
        self._finish(status, self.cost, error)


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


def _no_wait(state: RetryCallState) -> float:
    """Fail over at once: the next attempt goes to another provider, or waits in the admission queue."""
    return 0.0


def _unfunded(call: Call, ranked: list[ProviderState], accounts: Accounts) -> InsufficientFunds:
    """The 402 for a call no candidate can pay for, saying why and what helps."""
    states = {a.funding for s in ranked if (a := accounts.get(s.id)) is not None}
    message = (
        f"none of the {len(ranked)} provider(s) of {call.model!r} has the balance to cover this request "
        "(each keeps 1 0G locked plus unsettled fees)"
    )
    if FundingState.FUNDING in states:
        return InsufficientFunds(
            message + "; top-ups are under way, retry in a few seconds",
            code="insufficient_balance",
            headers={"Retry-After": "2"},
        )
    if FundingState.LEDGER_LOW in states:
        message += "; the wallet's ledger is too low to top them up: deposit 0G to the ledger"
    elif FundingState.OFF in states:
        message += "; auto-funding is off: fund them with `zg-router fund`"
    return InsufficientFunds(message, code="insufficient_balance")
