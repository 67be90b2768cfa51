"""The one request loop, shared by the gateway and the library API.

Per attempt: rank the candidate providers (pure), lay out their lanes (one per paying wallet), take a lease
on one (admission queue, the lane's capacity) and a balance hold, send, classify the reply, and either
return, fail over to another lane, or stop. Failover happens only before the first byte reaches the
caller: a plain reply is read whole before it is returned, and a stream is returned only once its first
event has arrived. Every attempt is an ``Attempt`` (``router.attempt``), which records its outcome exactly
once on every path, cancellation included.

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

from router.attempt import NO_CHARGE, Attempt, FailOver, Outcomes, Run
from router.config import DispatchOptions
from router.discovery import ALLOW_PRIVATE_TARGETS
from router.errors import (
    AllAttemptsFailed,
    InsufficientFunds,
    InvalidRequest,
    NoProviderAvailable,
    ProviderUnreachable,
    RequestFailed,
    Saturated,
    UpstreamRejected,
    clipped,
)
from router.observability.events import Observer
from router.policy.outcome import Verdict, busy, classify, error_message, json_object, says_json
from router.policy.select import eligible, over_ejection_cap, rank, retry_candidates
from router.pool.accounting import Accounts, FundingState
from router.pool.admission import Admission
from router.pool.capacity import Demand
from router.pool.health import MAX_EJECTION_PERCENT
from router.pool.holds import NO_HOLD, Holds
from router.pool.pricing import reply_charge
from router.pool.providers import Lane, Pool, ProviderKind, ProviderState
from router.pool.trust import TrustState
from router.replies import Reply, StreamReply
from router.request import Call, Endpoint
from router.transport.base import ProviderTransport, Upstream
from router.verify.attestation import attestation_shortfall
from router.verify.check import Finding
from router.verify.verifier import Verifier

Authorizer = Callable[[Lane], Awaitable[str]]
# The least time left for which an attempt is started: what a provider needs at the very least to answer.
MIN_ATTEMPT_SECONDS = 0.05


class Dispatcher:
    """Runs calls against the pool. Built and owned by ``Router``."""

    def __init__(
        self,
        pool: Pool,
        admission: Admission,
        transport: ProviderTransport,
        authorize: Authorizer,
        options: DispatchOptions,
        emit: Observer,
        *,
        holds: Holds | None = None,
        books: Callable[[str], Accounts | None] = lambda _: None,
        on_misconfigured: Callable[[Lane], None] = lambda _: None,
        on_unfunded: Callable[[Lane], None] = lambda _: None,
        default_max_tokens: int = 4096,
        verifier: Verifier | None = None,
        rng: random.Random | None = None,
        max_ejection_percent: float = MAX_EJECTION_PERCENT,
    ) -> None:
        """``holds`` reserves balance on chain lanes (None: nothing is held, as without a wallet);
        ``books(wallet)`` is that wallet's sub-accounts, for the 402's explanation."""
        self._pool = pool
        self._admission = admission
        self._capacity = admission.capacity
        self._transport = transport
        self._authorize = authorize
        self._options = options
        self._holds = holds
        self._books = books
        self._default_max_tokens = default_max_tokens
        self._verifier = verifier
        self._rng = rng or random.Random()  # noqa: S311 - load spreading, not cryptography
        self._max_ejection_percent = max_ejection_percent
        self._outcomes = Outcomes(
            admission.capacity,
            options,
            emit,
            admission.now,
            on_unfunded=on_unfunded,
            on_misconfigured=on_misconfigured,
        )

    async def dispatch(self, call: Call) -> Reply | StreamReply:
        """Serve ``call``: a ``Reply``, a ``StreamReply`` (for ``call.stream``), or a ``RequestFailed``."""
        run = Run(call, self._outcomes, self._charge)
        try:
            candidates = self._candidates(call)
            # Most requests succeed at once: the first attempt runs without the retry machinery.
            try:
                return await self._next_attempt(run, candidates)
            except FailOver as exc:
                run.failed(exc)
            if not self._budget_left(run):
                raise run.last_failure()
            retrying = AsyncRetrying(
                stop=self._stop(run),
                retry=retry_if_exception_type(FailOver),
                wait=_no_wait,
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    return await self._next_attempt(run, candidates)
        except FailOver as exc:
            run.failed(exc)
            error: RequestFailed = self._gave_up(run, exc)
        except RequestFailed as exc:
            exc.attempts = run.attempts
            error = exc
        except asyncio.CancelledError:
            # The caller went away (a client disconnect cancels the gateway's handler).
            run.finish(499, None, error="the caller went away")
            raise
        run.finish(error.status, None, error=str(error))
        raise error

    def _gave_up(self, run: Run, last: FailOver) -> RequestFailed:
        """The error of a request whose attempts ran out. When the last one only found its provider at
        a limit or busy (a 429, a global-cap 503) and the deadline ended the tries, it is our 429 with a
        ``Retry-After``, as for a request that queued to its deadline: no provider failed it."""
        if not last.counts:
            call = run.call
            everyone = self._pool.candidates(call.endpoint.service_type, call.model)
            retry = self._admission.retry_after(
                [lane for s in everyone for lane in s.lanes], self._admission.now()
            )
            return Saturated(
                "every provider for this request is at its rate limit or busy until past its deadline; "
                f"try again in {retry} s (last: {last.detail})",
                headers={"Retry-After": str(retry)},
                attempts=run.attempts,
            )
        return AllAttemptsFailed(
            f"every attempt failed ({run.attempts} over {len(run.tried)} provider(s)); last: {last.detail}",
            attempts=run.attempts,
        )

    def _stop(self, run: Run) -> Callable[[RetryCallState], bool]:
        """The tenacity stop condition: count the attempt that just failed, then check the budget."""

        def stop(state: RetryCallState) -> bool:
            run.failed(state.outcome.exception() if state.outcome is not None else None)
            return not self._budget_left(run)

        return stop

    def _budget_left(self, run: Run) -> bool:
        """Another attempt fits: fewer than ``max_attempts`` counted failures (provider 429s and global-cap
        503s do not count) and the deadline not yet passed."""
        return run.counted < self._options.max_attempts and self._admission.now() < run.call.deadline

    async def _next_attempt(self, run: Run, candidates: list[ProviderState]) -> Reply | StreamReply:
        call = run.call
        now = self._admission.now()
        self._cap_ejections(call, now)
        # Which of them may go now is decided before what this request already tried: a failover whose
        # untried providers are all ejected goes back to one that is not, rather than ending in a 503.
        available = [s for s in candidates if any(lane.available(now) for lane in s.lanes)]
        if not available:
            retry = self._admission.retry_after([lane for s in candidates for lane in s.lanes], now)
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

    def _demand(self, call: Call) -> Demand:
        """What admission reserves against the lane's token and image budgets."""
        endpoint = call.endpoint
        if endpoint.makes_images:
            return Demand(images=call.images)
        if endpoint is Endpoint.EMBEDDINGS:
            return Demand(tokens=call.prompt_estimate)
        output = call.max_output if call.max_output is not None else self._default_max_tokens
        return Demand(tokens=call.prompt_estimate + output)

    async def _attempt(self, run: Run, candidates: list[ProviderState], now: float) -> Reply | StreamReply:
        call = run.call
        if call.deadline - now < MIN_ATTEMPT_SECONDS:
            # Too late for any provider to answer: an attempt now would only end in a timeout charged to
            # a provider for the request's own deadline.
            lanes = [lane for state in candidates for lane in state.lanes]
            retry = self._admission.retry_after(lanes, now)
            raise Saturated(
                f"no provider could take this request before its deadline; try again in {retry} s",
                headers={"Retry-After": str(retry)},
            )
        ranked = rank(candidates, call.prefs, self._options.strategy, self._rng, self._provider_load)
        lanes = self._lanes(ranked)
        holds = self._holds
        reserves: dict[Lane, int] = {}
        if holds is not None:
            lanes = self._funded(call, lanes, holds, reserves)
        queue_deadline = min(call.deadline - MIN_ATTEMPT_SECONDS, now + self._options.queue_timeout)
        try:
            lease = await self._admission.acquire(lanes, queue_deadline, self._demand(call))
        finally:
            run.queued += self._admission.now() - now
        lane = lease.lane
        run.tried.add(lane.provider.id)
        reserve = reserves.get(lane)
        hold = holds.reserve(lane, reserve) if holds is not None and reserve is not None else NO_HOLD
        attempt = Attempt(run, lease, hold)
        try:
            return await self._exchange(attempt)
        except BaseException:
            # A failure has ended the attempt already (ending is idempotent); this is for the caller going
            # away (cancellation) and for bugs of ours: the lane and the hold always come back.
            attempt.abandoned()
            raise

    def _lanes(self, ranked: list[ProviderState]) -> list[Lane]:
        """Each ranked provider's lanes, the least loaded wallet first."""
        lanes: list[Lane] = []
        capacity = self._capacity
        for state in ranked:
            if len(state.lanes) == 1:
                lanes.append(state.lanes[0])
            else:
                lanes.extend(sorted(state.lanes, key=capacity.load))
        return lanes

    def _provider_load(self, state: ProviderState) -> float:
        """The share of a provider's concurrency in use, over all its lanes."""
        load = self._capacity.load
        return sum(load(lane) for lane in state.lanes) / len(state.lanes)

    def _funded(self, call: Call, lanes: list[Lane], holds: Holds, reserves: dict[Lane, int]) -> list[Lane]:
        """The chain lanes whose sub-account covers this call's reserve (static ones always);
        ``reserves`` gets each chain lane's reserve. None covered: 402."""
        output = call.max_output if call.max_output is not None else self._default_max_tokens
        covered = []
        for lane in lanes:
            info = lane.provider.info
            if info.kind is not ProviderKind.CHAIN:
                covered.append(lane)
                continue
            if call.endpoint is Endpoint.EMBEDDINGS:
                reserve = info.pricing.fee(call.prompt_estimate, 0)
            elif call.endpoint.makes_images:
                reserve = info.pricing.fee(0, call.images)
            elif call.endpoint is Endpoint.TRANSCRIPTIONS:
                # Billed by output (or duration), not by the size of the audio upload.
                reserve = info.pricing.fee(0, output)
            else:
                reserve = info.pricing.fee(call.prompt_estimate, output)
            if holds.covers(lane, reserve):
                reserves[lane] = reserve
                covered.append(lane)
        if not covered:
            raise _unfunded(call, lanes, self._books)
        return covered

    async def _exchange(self, attempt: Attempt) -> Reply | StreamReply:
        run, lane = attempt.run, attempt.lane
        call, info = run.call, lane.provider.info
        try:
            headers = {"Content-Type": call.content_type}
            if authorization := await self._authorize(lane):
                headers["Authorization"] = authorization
            attempt.send()
            upstream = await self._transport.send(
                info,
                call.endpoint.path,
                call.body,
                headers,
                time_left=call.deadline - attempt.sent_at,
                stream=call.stream,
            )
        except ProviderUnreachable as exc:
            raise attempt.failed(Verdict.UNHEALTHY, None, str(exc)) from None
        attempt.observe(upstream.headers)
        if upstream.status >= 300:
            try:
                body = _without_key(await upstream.read(), info.api_key)
            except ProviderUnreachable as exc:
                raise attempt.failed(Verdict.UNHEALTHY, upstream.status, str(exc)) from None
            if busy(upstream.status, upstream.headers, body):
                verdict = Verdict.BUSY
            else:
                verdict = classify(upstream.status, body, info.kind)
            if verdict is Verdict.CLIENT_ERROR:
                attempt.rejected()
                ctype = upstream.headers.get("Content-Type", "application/json")
                raise UpstreamRejected(upstream.status, body, ctype, provider=info.id, attempts=run.attempts)
            raise attempt.failed(verdict, upstream.status, error_message(body), upstream.headers)
        if call.stream:
            return await self._open_stream(attempt, upstream)
        try:
            body = await upstream.read()
        except ProviderUnreachable as exc:
            # A 2xx is billed for what was generated even if its body never arrives whole (protocol.md §10).
            raise attempt.failed(Verdict.UNHEALTHY, upstream.status, str(exc), billed=True) from None
        content_type = upstream.headers.get("Content-Type", "application/json")
        images = call.endpoint.makes_images
        if call.endpoint is Endpoint.TRANSCRIPTIONS and not says_json(content_type):
            # response_format text, srt or vtt: text the provider bills by its own count.
            charge = NO_CHARGE
        else:
            doc = json_object(body)
            if doc is None:
                detail = "reply body is not a JSON object (truncated or malformed)"
                raise attempt.failed(Verdict.UNHEALTHY, upstream.status, detail, billed=True)
            charge = reply_charge(info.pricing, doc, images=images)
        attempt.succeeded(upstream.status, charge)
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
            verification=self._check_later(call, lane.provider, res_key, body, images=images),
        )

    def _check_later(
        self, call: Call, state: ProviderState, res_key: str | None, body: bytes, *, images: bool
    ) -> asyncio.Future[Finding] | None:
        """The TEE verdict to come on a whole reply, when it is to be checked."""
        verifier = self._verifier
        if verifier is None or not verifier.wants(state, forced=call.verify_sync):
            return None
        return verifier.check(state, res_key, call.body, (body,), request_id=call.request_id, images=images)

    async def _open_stream(self, attempt: Attempt, upstream: Upstream) -> StreamReply:
        call, state = attempt.run.call, attempt.provider
        events = upstream.events()
        try:
            # The idle timeout bounds each wait for an event; the first must also come within the
            # request's deadline, which may be the sooner.
            async with asyncio.timeout_at(call.deadline):
                first = await anext(events)
        except (ProviderUnreachable, StopAsyncIteration, TimeoutError) as exc:
            upstream.close()
            if isinstance(exc, ProviderUnreachable):
                detail = str(exc)
            elif isinstance(exc, TimeoutError):
                detail = "timed out: no stream event before the request's deadline"
            else:
                detail = "stream ended before any event"
            raise attempt.failed(Verdict.UNHEALTHY, 200, detail, billed=True) from None
        except BaseException:
            upstream.close()
            raise
        verifier = self._verifier
        verify = wait = None
        if verifier is not None and verifier.wants(state, forced=call.verify_sync):
            res_key = upstream.headers.get("ZG-Res-Key")
            verify = functools.partial(verifier.check, state, res_key, call.body, request_id=call.request_id)
            wait = verifier.wait if call.verify_sync else None
        return StreamReply(attempt, upstream, events, first, ttft=attempt.elapsed(), verify=verify, wait=wait)

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
    if call.prefs.require_attestation and (why := attestation_shortfall(everyone, call.model)):
        return NoProviderAvailable(f"verified_only: {why}", code="no_attested_provider")
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


def _unfunded(call: Call, lanes: list[Lane], books: Callable[[str], Accounts | None]) -> InsufficientFunds:
    """The 402 for a call no lane can pay for, saying why and what helps."""
    states = set()
    for lane in lanes:
        book = books(lane.wallet) if lane.wallet is not None else None
        account = book.get(lane.provider.id) if book is not None else None
        if account is not None:
            states.add(account.funding)
    providers = len({lane.provider.id for lane in lanes})
    message = (
        f"none of the {providers} provider(s) of {call.model!r} has the balance to cover this request "
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
