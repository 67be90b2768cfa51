"""Dispatch on the shipped ``FakeTransport``: a real ``Router`` (pool, admission, health, dispatch loop)
whose providers are scripted replies. No devnet, no socket; waits run on the loop's own clock.

Three static upstreams serve ``MODEL`` and rank a, b, c by price, so a test knows which provider each
attempt reaches. ``solo`` alone serves ``SOLO_MODEL``, one request at a time: a slot that leaks there
blocks the next request, which is how the cancellation tests see a leak.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest

from router.client import Router
from router.config import DiscoveryOptions, DispatchOptions, RouterConfig, StaticUpstream
from router.observability.events import AttemptFailed, Event, RequestFinished
from router.policy.select import Strategy
from router.pool.health import HealthPolicy
from router.pool.limits import ProviderLimits
from router.request import Call, Endpoint, parse_payload
from router.transport.fake import FakeReply, FakeRequest, FakeTransport
from router.transport.http import TransportOptions

MODEL = "m"
SOLO_MODEL = "solo-m"
CHAIN = ("a", "b", "c")  # the providers of MODEL, cheapest first: the order attempts go in
UPSTREAM_KEY = "sk-upstream-" + "0123456789abcdef" * 2
MESSAGES = [{"role": "user", "content": "hello"}]
# Roomy request buckets: these tests are about outcomes, not rates.
ROOMY = ProviderLimits(requests_per_minute=6000, burst=100, max_concurrent=20)
UPSTREAMS = (
    *(
        StaticUpstream(
            name,
            f"http://{name}.test/v1",
            (MODEL,),
            api_key=UPSTREAM_KEY,
            input_price=price,
            output_price=price,
            limits=ROOMY,
        )
        for price, name in enumerate(CHAIN, start=1)
    ),
    StaticUpstream(
        "solo",
        "http://solo.test/v1",
        (SOLO_MODEL,),
        limits=ProviderLimits(requests_per_minute=6000, burst=100, max_concurrent=1),
    ),
)
# Idle timeouts short enough that a stall costs a test a fraction of a second.
QUICK = TransportOptions(stream_idle_timeout=0.2, body_idle_timeout=0.2)
# Breakers open only after many failures in a row: a test that charges health sees the error rate move.
PATIENT = HealthPolicy(failure_threshold=10, cooldown=30.0, max_cooldown=60.0)


def chat_call(
    router: Router, *, stream: bool = False, model: str = MODEL, timeout: float | None = None
) -> Call:
    """A chat call for ``model``: the one place these tests build calls."""
    payload: dict[str, Any] = {"model": model, "messages": MESSAGES}
    if stream:
        payload["stream"] = True
    return router.new_call(parse_payload(Endpoint.CHAT, payload), timeout=timeout)


def fake_of(responders: dict[str, FakeReply], *, options: TransportOptions = QUICK) -> FakeTransport:
    """A fake whose providers each answer one reply, every time (``chat`` by default)."""
    fallback = FakeReply.chat("fine")

    def respond(request: FakeRequest) -> FakeReply:
        return responders.get(request.provider, fallback)

    return FakeTransport(respond, options=options)


@dataclass
class Routed:
    """An open router on a fake transport, and what it reported."""

    router: Router
    fake: FakeTransport
    events: list[Event] = field(default_factory=list)

    def provider(self, provider: str) -> dict[str, Any]:
        """The provider as ``router.providers()`` shows it."""
        (view,) = [p for p in self.router.providers() if p["id"] == provider]
        return view

    def error_rate(self, provider: str) -> float:
        return float(self.provider(provider)["health"]["error_rate"])

    def in_flight(self, provider: str) -> int:
        return int(self.provider(provider)["in_flight"])

    def lane(self, provider: str) -> dict[str, Any]:
        """The provider's one lane (a static upstream has no wallets: one lane)."""
        (lane,) = self.provider(provider)["lanes"]
        return dict(lane)

    def excluded(self, provider: str) -> str | None:
        """Why the provider, or its lane, is left out (None: it is not)."""
        excluded = self.provider(provider)["excluded"] or self.lane(provider)["excluded"]
        return str(excluded) if excluded is not None else None

    def blocked_for(self, provider: str) -> float:
        """Seconds the lane is still backed off (a 429) or its provider held off (a busy 503)."""
        return float(self.lane(provider)["blocked_for"])

    def tried(self) -> list[str]:
        """The providers the fake received requests at, in order."""
        return [request.provider for request in self.fake.requests]

    def failures(self) -> list[AttemptFailed]:
        return [e for e in self.events if isinstance(e, AttemptFailed)]

    def finished(self) -> list[RequestFinished]:
        return [e for e in self.events if isinstance(e, RequestFinished)]


Serve = Callable[..., Awaitable[Routed]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """``await serve(fake, **dispatch_options)``: an open router over ``UPSTREAMS`` on ``fake``
    (``health=`` replaces ``PATIENT``, ``discovery=`` the default probe cadence). On teardown the router
    closes, and every reply the fake handed out must have been closed exactly once."""
    opened: list[Routed] = []
    async with AsyncExitStack() as stack:

        async def start(
            fake: FakeTransport,
            *,
            health: HealthPolicy = PATIENT,
            discovery: DiscoveryOptions | None = None,
            **dispatch: Any,
        ) -> Routed:
            options = DispatchOptions(**{"strategy": Strategy.PRICE, "request_timeout": 10.0, **dispatch})
            config = RouterConfig(
                static_upstreams=UPSTREAMS,
                dispatch=options,
                health=health,
                discovery=discovery or DiscoveryOptions(),
            )
            routed = Routed(Router(config, transport=fake), fake)
            routed.router.subscribe(routed.events.append)
            await stack.enter_async_context(routed.router)
            opened.append(routed)
            return routed

        yield start
    for routed in opened:
        routed.fake.assert_all_closed()
