"""Trust warm-up: with ``[verify] verified_only`` on, every request waits for verified providers, so no
request would ever reach an unverified one and verify it. This background task sends each unverified
TEE chat or embedding provider one tiny paid request (one output token) and waits for its verdict; a
provider whose check failed gets another once its demotion is over, and one that could not be checked
(unverifiable, busy, unreachable) another after ``RETRY_AFTER``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from router.errors import RequestFailed
from router.observability.events import BackgroundError, Observer
from router.policy.select import Preferences
from router.pool.providers import Pool, ProviderKind, ProviderState
from router.pool.trust import TrustState
from router.replies import Reply, StreamReply
from router.request import Call, Endpoint, parse_payload
from router.verify.check import Finding

RETRY_AFTER = 60.0
REQUEST_TIMEOUT = 60.0
# The warm-up waits for each verdict, as a client sending this header does.
_SYNC = {"x-zg-verify": "sync"}
# What a warm-up request asks of each kind of provider: the smallest paid request it serves.
_PROBES: dict[str, tuple[Endpoint, dict[str, Any]]] = {
    Endpoint.CHAT.service_type: (
        Endpoint.CHAT,
        {"messages": [{"role": "user", "content": "Reply with OK."}], "max_tokens": 1},
    ),
    Endpoint.EMBEDDINGS.service_type: (Endpoint.EMBEDDINGS, {"input": "ok"}),
}


class TrustWarmup:
    """Verifies providers nobody may use until they are verified. One of the Router's background tasks."""

    def __init__(
        self,
        pool: Pool,
        dispatch: Callable[[Call], Awaitable[Reply | StreamReply]],
        verdict: Callable[[Reply | StreamReply], Awaitable[Finding | None]],
        emit: Observer,
        *,
        clock: Callable[[], float],
        interval: float,
    ) -> None:
        self._pool = pool
        self._dispatch = dispatch
        self._verdict = verdict
        self._emit = emit
        self._clock = clock
        self._interval = interval
        self._next_try: dict[str, float] = {}

    async def run(self) -> None:
        while True:
            due = self.due()
            if due:
                await asyncio.gather(*(self._warm(state) for state in due))
            await asyncio.sleep(self._interval)

    def due(self) -> list[ProviderState]:
        """The TEE providers of a probed kind not verified, not demoted, and not tried too recently."""
        now = self._clock()
        return [
            state
            for state in self._pool
            if state.info.kind is ProviderKind.CHAIN
            and state.info.tee_signer is not None
            and state.info.service_type in _PROBES
            and state.trust.state is not TrustState.VERIFIED
            and state.excluded_at(now) is None
            and now >= self._next_try.get(state.id, 0.0)
        ]

    async def _warm(self, state: ProviderState) -> None:
        self._next_try[state.id] = self._clock() + RETRY_AFTER
        endpoint, payload = _PROBES[state.info.service_type]
        model = state.info.models[0] if state.info.models else ""
        try:
            request = parse_payload(endpoint, {"model": model, **payload}, _SYNC)
            # Built here, not by Router.new_call: pinned to this provider, and without the
            # `verified_only` the router enforces on callers, which would keep it from this provider.
            call = Call(
                request,
                request_id="trust-warmup-" + uuid.uuid4().hex[:12],
                deadline=self._clock() + REQUEST_TIMEOUT,
                prefs=Preferences(order=(state.id.lower(),), allow_fallbacks=False),
            )
            await self._verdict(await self._dispatch(call))
        except RequestFailed as exc:
            self._emit(BackgroundError("trust-warmup", f"{state.id}: {exc}"))
