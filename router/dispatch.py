"""The one request loop, shared by the gateway and the library API.

Per attempt: rank the candidates (pure), take a slot (admission queue), send, classify the reply, record
health, and either return, fail over to the next candidate, or stop. Failover happens only before the
first byte reaches the caller: a plain reply is read whole before it is returned, and a stream is returned
only once its first event has arrived. The slot goes back exactly once on every path, cancellation included.

One request charges provider health at most once. A request whose attempts fail alike on several
providers (a body every model server chokes on) is evidence against the request, not the providers: left
unbounded, three such requests would open every breaker of a model. So only a request's first unhealthy
failure (5xx, connect error, timeout, broken reply or stream) counts against its provider's health; later
ones fail over, still reported as ``AttemptFailed``, without charging theirs. A pool that is really down
still opens its breakers: every request charges the first provider that failed it.

Breakers eject at most ``max_ejection_percent`` of a model's providers at once (Envoy's outlier-detection
cap): past it, the least bad ejected providers are reprieved to half-open, where one probe at a time may
go, so breakers alone never leave a model without a provider. The cap is checked before each attempt and
kept whenever a request's charge opens a breaker, so no request sees more of its model ejected.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import random
from collections.abc import Awaitable, Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from router.config import DispatchOptions
from router.discovery import ALLOW_PRIVATE_TARGETS
from router.errors import (
    AllAttemptsFailed,
    InsufficientFunds,
    InvalidRequest,
    NoProviderAvailable,
    ProviderUnreachable,
    RequestFailed,
    UpstreamRejected,
    clipped,
)
from router.observability.events import AttemptFailed, Observer, RequestFinished
from router.policy.outcome import Verdict, classify, error_message, json_object, reset_seconds, says_json
from router.policy.select import eligible, over_ejection_cap, rank, retry_candidates
from router.pool.accounting import Accounts, FundingState, Hold
from router.pool.admission import Admission, retry_after
from router.pool.health import MAX_EJECTION_PERCENT
from router.pool.pricing import Charge, reply_charge
from router.pool.providers import Exclusion, Pool, ProviderInfo, ProviderKind, ProviderState
from router.pool.trust import TrustState
from router.replies import Call, Endpoint, Reply, Slot, StreamReply
from router.transport.http import HttpTransport, Upstream
from router.verify.check import Finding
from router.verify.verifier import Verifier

Authorizer = Callable[[ProviderInfo], Awaitable[str]]
# Static upstreams are not our 0G money: their requests hold nothing.
_NO_HOLD = Hold(None, None, 0)
_NO_CHARGE = Charge(None)


class _Run:
    """One request's progress through its attempts."""

    __slots__ = (
        "_charge",
        "_last",
        "attempts",
        "call",
        "charged",
        "counted",
        "failed_at",
        "queued",
        "started",
        "tried",
    )

    def __init__(self, call: Call, started: float, charge: Callable[[Call, ProviderState], None]) -> None:
        self.call = call
        self.started = started
        self.attempts = 0
        self.counted = 0
        self.queued = 0.0  # seconds spent waiting for provider slots, over all attempts
        self.tried: set[str] = set()
        self.failed_at: set[str] = set()  # providers whose failure counted against this request
        self.charged = False  # whether one of its failures was charged to a provider's health
        self._charge = charge
        self._last: _FailOver | None = None

    def failed(self, exc: BaseException | None) -> None:
        if isinstance(exc, _FailOver) and exc is not self._last:
            self._last = exc
            if exc.counts:
                self.counted += 1
                self.failed_at.add(exc.provider)
            if exc.unhealthy is not None:
                self.charge_once(exc.unhealthy)

    def charge_once(self, state: ProviderState) -> None:
        """An unhealthy failure at ``state``: charged to its health if it is the request's first."""
        if not self.charged:
            self.charged = True
            self._charge(self.call, state)

    def last_failure(self) -> _FailOver:
        assert self._last is not None
        return self._last


class _FailOver(Exception):
    """This attempt failed in a way another attempt may fix."""

    def __init__(
        self,
        provider: str,
        status: int | None,
        detail: str,
        *,
        counts: bool,
        unhealthy: ProviderState | None = None,
    ) -> None:
        super().__init__(detail)
        self.provider = provider
        self.status = status
        self.detail = detail
        self.counts = counts
        self.unhealthy = unhealthy  # the provider it counts against, if the failure says it is unhealthy


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
        verifier: Verifier | None = None,
        rng: random.Random | None = None,
        max_ejection_percent: float = MAX_EJECTION_PERCENT,
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
        self._verifier = verifier
        self._rng = rng or random.Random()  # noqa: S311 - load spreading, not cryptography
        self._max_ejection_percent = max_ejection_percent

    async def dispatch(self, call: Call) -> Reply | StreamReply:
        """Serve ``call``: a ``Reply``, a ``StreamReply`` (for ``call.stream``), or a ``RequestFailed``."""
        started = self._admission.now()
        run = _Run(call, started, self._charge)
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
            self._finish(run, 499, None, error="the caller went away")
            raise
        self._finish(run, error.status, None, error=str(error))
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
        call = run.call
        now = self._admission.now()
        self._cap_ejections(call, now)
        # Which of them may go now is decided before what this request already tried: a failover whose
        # untried providers are all ejected goes back to one that is not, rather than ending in a 503.
        available = [s for s in candidates if s.available(now)]
        if not available:
            retry = retry_after(candidates, now)
            raise NoProviderAvailable(
                f"all {len(candidates)} provider(s) of {clipped(call.model)} are cooling down or excluded; "
                f"try again in {retry} s",
                code="no_available_provider",
                headers={"Retry-After": str(retry)},
            )
        run.attempts += 1
        return await self._attempt(run, retry_candidates(available, run.tried, run.failed_at), now)

    def _candidates(self, call: Call) -> list[ProviderState]:
        everyone = self._pool.candidates(call.endpoint.service_type, call.model)
        if not everyone:
            if refused := self._pool.refused(call.endpoint.service_type, call.model):
                raise NoProviderAvailable(
                    f"{refused} provider(s) of model {clipped(call.model)} were refused by the URL guard: "
                    f"their registry URLs are loopback or private addresses; {ALLOW_PRIVATE_TARGETS}",
                    code="providers_refused",
                )
            if self._pool.knows_model(call.model):
                raise InvalidRequest(
                    f"model {clipped(call.model)} is not served on {call.endpoint.path.removeprefix('/')}",
                    status=404,
                    code="model_not_found",
                    param="model",
                )
            raise InvalidRequest(
                f"model {clipped(call.model)} does not exist; GET /v1/models lists the models on offer",
                status=404,
                code="model_not_found",
                param="model",
            )
        allowed = eligible(everyone, call.prefs)
        if (
            not allowed
            and call.prefs.verified_only
            and eligible(everyone, dataclasses.replace(call.prefs, verified_only=False))
        ):
            raise _none_verified(call, everyone)
        if not allowed:
            raise NoProviderAvailable(
                f"none of the {len(everyone)} provider(s) of {clipped(call.model)} matches the request's "
                "provider preferences",
                code="no_matching_provider",
            )
        return allowed

    async def _attempt(self, run: _Run, candidates: list[ProviderState], now: float) -> Reply | StreamReply:
        call = run.call
        ranked = rank(candidates, call.prefs, self._options.strategy, self._rng)
        accounts = self._accounts
        reserves: dict[str, int] = {}
        if accounts is not None:
            ranked = self._funded(call, ranked, accounts, reserves)
        queue_deadline = min(call.deadline, now + self._options.queue_timeout)
        try:
            state = await self._admission.acquire(ranked, queue_deadline)
        finally:
            run.queued += self._admission.now() - now
        run.tried.add(state.id)
        reserve = reserves.get(state.id)
        hold = accounts.hold(state.id, reserve) if accounts is not None and reserve is not None else _NO_HOLD
        slot = Slot(self._admission, state, hold)
        try:
            return await self._exchange(run, state, slot)
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

    async def _exchange(self, run: _Run, state: ProviderState, slot: Slot) -> Reply | StreamReply:
        call, info = run.call, state.info
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
                body = _without_key(await upstream.read(), info.api_key)
            except ProviderUnreachable as exc:
                raise self._failed(call, state, upstream.status, Verdict.UNHEALTHY, str(exc)) from None
            verdict = classify(upstream.status, body, info.kind)
            if verdict is Verdict.CLIENT_ERROR:
                state.health.record_success()
                ctype = upstream.headers.get("Content-Type", "application/json")
                raise UpstreamRejected(upstream.status, body, ctype, provider=info.id, attempts=run.attempts)
            if verdict is Verdict.RATE_LIMITED:
                reset = reset_seconds(upstream.headers.get("x-ratelimit-reset-requests"))
                state.gate.back_off(self._admission.now() + (reset or self._options.rate_limit_backoff))
            raise self._failed(call, state, upstream.status, verdict, error_message(body))
        if call.stream:
            return await self._open_stream(run, state, slot, upstream, sent)
        try:
            body = await upstream.read()
        except ProviderUnreachable as exc:
            # A 2xx is billed for what was generated even if its body never arrives whole (protocol.md
            # §10): book the reserve, an upper bound, until the provider's own figure says otherwise.
            slot.cost = slot.hold.amount
            raise self._failed(call, state, upstream.status, Verdict.UNHEALTHY, str(exc)) from None
        content_type = upstream.headers.get("Content-Type", "application/json")
        images = call.endpoint is Endpoint.IMAGES
        if call.endpoint is Endpoint.TRANSCRIPTIONS and not says_json(content_type):
            # response_format text, srt or vtt: text the provider bills by its own count.
            charge = _NO_CHARGE
        else:
            doc = json_object(body)
            if doc is None:
                slot.cost = slot.hold.amount
                detail = "reply body is not a JSON object (truncated or malformed)"
                raise self._failed(call, state, upstream.status, Verdict.UNHEALTHY, detail)
            charge = reply_charge(info.pricing, doc, images=images)
        state.health.record_success(latency=self._admission.now() - sent)
        slot.cost = charge.cost
        self._finish(run, upstream.status, info.id, charge)
        res_key = upstream.headers.get("ZG-Res-Key")
        return Reply(
            status=upstream.status,
            body=body,
            content_type=content_type,
            provider=info.id,
            attempts=run.attempts,
            cost=charge.cost,
            res_key=res_key,
            verifiability=info.verifiability,
            verification=self._check_later(call, state, res_key, body, images=images),
        )

    def _check_later(
        self, call: Call, state: ProviderState, res_key: str | None, body: bytes, *, images: bool
    ) -> asyncio.Future[Finding] | None:
        """The TEE verdict to come on a whole reply, when it is to be checked."""
        verifier = self._verifier
        if verifier is None or not verifier.wants(state, forced=call.verify_sync):
            return None
        return verifier.check(state, res_key, call.body, (body,), request_id=call.request_id, images=images)

    async def _open_stream(
        self, run: _Run, state: ProviderState, slot: Slot, upstream: Upstream, sent: float
    ) -> StreamReply:
        call = run.call
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

        def finish(status: int, charge: Charge, error: str | None) -> None:
            self._finish(run, status, state.id, charge, ttft=ttft, error=error)

        def broken(detail: str) -> None:
            run.charge_once(state)
            self._emit(AttemptFailed(call.request_id, state.id, "stream_broken", 200, detail[:300]))

        verifier = self._verifier
        verify = wait = None
        if verifier is not None and verifier.wants(state, forced=call.verify_sync):
            res_key = upstream.headers.get("ZG-Res-Key")
            verify = functools.partial(verifier.check, state, res_key, call.body, request_id=call.request_id)
            wait = verifier.wait if call.verify_sync else None

        return StreamReply(
            state,
            slot.hand_over(),
            upstream,
            events,
            first,
            attempts=run.attempts,
            ttft=ttft,
            finish=finish,
            emit_broken=broken,
            elapsed=lambda: self._admission.now() - sent,
            verify=verify,
            wait=wait,
        )

    def _failed(
        self, call: Call, state: ProviderState, status: int | None, verdict: Verdict, detail: str
    ) -> _FailOver:
        """Record what an attempt's failure means for its provider; the signal to try the next one. An
        unhealthy verdict is charged to health by the request's run, once per request."""
        now = self._admission.now()
        options = self._options
        if verdict is Verdict.UNFUNDED:
            state.health.record_success()
            state.exclude(Exclusion.UNFUNDED, now + options.unfunded_cooldown)
            self._on_unfunded(state)
        elif verdict is Verdict.MISCONFIGURED:
            state.health.record_success()
            state.exclude(Exclusion.MISCONFIGURED, now + options.misconfigured_cooldown)
            self._on_misconfigured(state)
        self._emit(AttemptFailed(call.request_id, state.id, verdict.value, status, detail[:300]))
        return _FailOver(
            state.id,
            status,
            f"{state.id}: {status or 'no reply'} {detail[:200]}",
            counts=verdict is not Verdict.RATE_LIMITED,
            unhealthy=state if verdict is Verdict.UNHEALTHY else None,
        )

    def _charge(self, call: Call, state: ProviderState) -> None:
        """Count a request's (first) unhealthy failure against ``state``; keep the ejection cap if that
        opened its breaker."""
        state.health.record_failure()
        if not state.health.admits():
            self._cap_ejections(call, self._admission.now())

    def _cap_ejections(self, call: Call, now: float) -> None:
        """Reprieve the breakers that eject more than the cap allows of ``call``'s model's providers."""
        everyone = self._pool.candidates(call.endpoint.service_type, call.model)
        reprieved = over_ejection_cap(everyone, now, self._max_ejection_percent)
        for state in reprieved:
            state.health.reprieve()
        if reprieved:
            self._admission.wake()

    def _finish(
        self,
        run: _Run,
        status: int,
        provider: str | None,
        charge: Charge = _NO_CHARGE,
        *,
        ttft: float | None = None,
        error: str | None = None,
    ) -> None:
        call = run.call
        self._emit(
            RequestFinished(
                request_id=call.request_id,
                endpoint=call.endpoint.path,
                model=call.model,
                status=status,
                provider=provider,
                attempts=run.attempts,
                cost=charge.cost,
                latency=self._admission.now() - run.started,
                ttft=ttft,
                stream=call.stream,
                error=error,
                queued=run.queued,
                prompt_tokens=charge.prompt_tokens,
                completion_tokens=charge.completion_tokens,
            )
        )


def _without_key(body: bytes, api_key: str | None) -> bytes:
    """An upstream's error body with our key for it blanked: a careless upstream that echoes the key in an
    error must not hand it to our caller (in a passed-through 4xx or the 502's message) or to the logs."""
    if api_key and (key := api_key.encode()) in body:
        return body.replace(key, b"[redacted]")
    return body


def _no_wait(state: RetryCallState) -> float:
    """Fail over at once: the next attempt goes to another provider, or waits in the admission queue."""
    return 0.0


def _none_verified(call: Call, everyone: list[ProviderState]) -> NoProviderAvailable:
    """The 503 for a verified-only call that no provider can take, saying why."""
    verified = sum(state.trust.state is TrustState.VERIFIED for state in everyone)
    if verified:
        why = (
            f"{verified} of the {len(everyone)} provider(s) of {call.model!r} have verified responses, but "
            "none of them matches the request's other provider preferences"
        )
    else:
        why = (
            f"none of the {len(everyone)} provider(s) of {call.model!r} has verified responses yet; "
            "verification checks responses as traffic flows, so send traffic that allows unverified "
            "providers first (or set [verify] verified_only, whose warm-up verifies them)"
        )
    return NoProviderAvailable(f"verified_only: {why}", code="no_verified_provider")


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
