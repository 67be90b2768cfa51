"""One caller must never eject the pool: a request charges provider health at most once, breakers eject
at most ``max_ejection_percent`` of a model's providers, healed providers come back with no traffic, and
the 503 for an ejected model says when to come back.

The simulators' fault knobs make every provider fail alike; the router's own pool state and events are
the witness of what it concluded.
"""

from __future__ import annotations

import math
from typing import Any

from router.observability.events import AttemptFailed, BreakerChanged
from router.pool.health import BreakerState, HealthPolicy
from router.pool.providers import ProviderState
from tests.gateway.conftest import CHAT_MODEL, CHAT_PROVIDERS, Served, ServeFactory
from tests.gateway.support import CHAT, MESSAGES, assert_error, send
from tests.support import EventLog

# Cooldowns far longer than any test: a breaker that opens stays open unless something lets it back.
SLOW_TO_COOL = HealthPolicy(cooldown=30.0, max_cooldown=60.0)
BODY = {"model": CHAT_MODEL, "messages": MESSAGES}
BOUND = 60  # requests: enough to open every breaker many times over


def chat_pool(served: Served) -> list[ProviderState]:
    return list(served.router.pool.candidates("chatbot", CHAT_MODEL))


def in_order(served: Served) -> dict[str, Any]:
    """A body that tries the chat providers in devnet order (fallbacks allowed)."""
    order = [served.devnet.providers[i].address for i in range(CHAT_PROVIDERS)]
    return {**BODY, "provider": {"order": order}}


async def fail_everywhere(served: Served, **knobs: Any) -> None:
    for index in range(CHAT_PROVIDERS):
        await served.set_faults(index, **knobs)


def charged(served: Served) -> list[bool]:
    """Per chat provider in devnet order: whether any failure was charged to its health."""
    pool = served.router.pool
    states = [pool.get(served.devnet.providers[i].address) for i in range(CHAT_PROVIDERS)]
    return [state is not None and state.health.error_rate > 0 for state in states]


class TestOneRequestChargesOnce:
    async def test_a_request_failing_on_every_provider_charges_only_the_first(
        self, serve: ServeFactory
    ) -> None:
        """Every provider answers 500: the request fails over three times (three AttemptFailed), but only
        the first provider's health is charged; the others' failures are the request's."""
        served = await serve()
        log = EventLog()
        served.router.subscribe(log)
        await fail_everywhere(served, error_500=1.0)
        answer = await send(served, "POST", CHAT, json=in_order(served), headers=served.auth())
        assert answer.status == 502, answer.text
        assert [e.verdict for e in log.of(AttemptFailed)] == ["unhealthy"] * CHAT_PROVIDERS
        assert charged(served) == [True, False, False]

    async def test_a_stream_broken_after_a_failover_is_not_charged_again(self, serve: ServeFactory) -> None:
        """Provider 0 answers 500, then provider 1's stream breaks after its first event: the caller gets
        the stream_interrupted event, and only provider 0 was charged for the request."""
        served = await serve()
        await served.set_faults(0, error_500=1.0)
        await served.set_faults(1, drop_mid_stream=1.0)
        body = {**in_order(served), "stream": True}
        answer = await send(served, "POST", CHAT, json=body, headers=served.auth())
        assert answer.status == 200, answer.text
        assert answer.headers["x-zg-provider"] == served.devnet.providers[1].address
        assert "stream_interrupted" in answer.text
        assert charged(served) == [True, False, False]


class TestEjectionCap:
    async def test_requests_failing_everywhere_eject_at_most_the_capped_share(
        self, serve: ServeFactory
    ) -> None:
        """Sixty requests that every provider fails never make the model look empty (each is a 502 after
        real attempts, never a 503), and leave at most floor(3 * 50 %) = 1 provider ejected, though the
        cooldowns are 30 s. Once the faults clear, the next request is served at the first attempt."""
        served = await serve(health=SLOW_TO_COOL)
        log = EventLog()
        served.router.subscribe(log)
        await fail_everywhere(served, error_500=1.0)
        for _ in range(BOUND):
            answer = await send(served, "POST", CHAT, json=BODY, headers=served.auth())
            assert answer.status == 502, answer.text
        assert log.of(BreakerChanged), "the failures opened no breaker"
        assert sum(not state.health.admits() for state in chat_pool(served)) <= 1
        await fail_everywhere(served, error_500=0.0)
        answer = await send(served, "POST", CHAT, json=BODY, headers=served.auth())
        assert answer.status == 200, answer.text
        assert answer.headers["x-zg-attempts"] == "1"


class TestRecovery:
    async def test_after_an_outage_every_breaker_closes_with_no_traffic(self, serve: ServeFactory) -> None:
        """Every provider refuses connections until all breakers are open (the cap is off); once they
        are back, the free probes close every breaker with no client request sent meanwhile."""
        served = await serve(health=HealthPolicy(cooldown=0.3, max_cooldown=1.0, max_ejection_percent=100.0))
        log = EventLog()
        served.router.subscribe(log)
        pool = chat_pool(served)
        await fail_everywhere(served, down=True)
        for _ in range(BOUND):
            if all(state.health.state is not BreakerState.CLOSED for state in pool):
                break
            await send(served, "POST", CHAT, json=BODY, headers=served.auth())
        assert all(state.health.state is not BreakerState.CLOSED for state in pool)
        served_before = [(await served.stats(i))["served"] for i in range(CHAT_PROVIDERS)]
        await fail_everywhere(served, down=False)
        # Each breaker reopens within max_cooldown (1 s) and is probed every 0.1 s: 10 s is ample.
        await log.wait_for(lambda _: all(s.health.state is BreakerState.CLOSED for s in pool), within=10)
        assert [(await served.stats(i))["served"] for i in range(CHAT_PROVIDERS)] == served_before


class TestRetryAfter:
    async def test_the_503_retry_after_is_the_earliest_breaker_reopening(self, serve: ServeFactory) -> None:
        """With every breaker open (cooldown 20 s, cap off), the 503 no_available_provider says to come
        back when the first of them reopens, in whole seconds rounded up, and so does its message."""
        served = await serve(
            health=HealthPolicy(cooldown=20.0, max_cooldown=40.0, max_ejection_percent=100.0)
        )
        pool = chat_pool(served)
        await fail_everywhere(served, down=True)
        for _ in range(BOUND):
            if all(state.health.state is BreakerState.OPEN for state in pool):
                break
            await send(served, "POST", CHAT, json=BODY, headers=served.auth())
        assert all(state.health.state is BreakerState.OPEN for state in pool)
        # The soonest reopening, read just before and just after: the answer's figure lies between.
        upper = math.ceil(min(state.health.retry_in for state in pool))
        answer = await send(served, "POST", CHAT, json=BODY, headers=served.auth())
        lower = math.ceil(min(state.health.retry_in for state in pool))
        retry = int(answer.headers["Retry-After"])
        assert lower <= retry <= upper
        assert retry > 1
        assert_error(
            answer,
            503,
            "service_unavailable",
            f"all {CHAT_PROVIDERS} provider(s) of {CHAT_MODEL!r} are cooling down or excluded; "
            f"try again in {retry} s",
            code="no_available_provider",
        )
