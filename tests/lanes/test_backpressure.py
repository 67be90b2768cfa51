"""A provider's global concurrency cap end to end (issue 14): another wallet keeps its slots full, and our
router takes its 503s as back-pressure, not ill health: it fails over or queues, opens no breaker, and ends
every request within its deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from router.chain.session import SessionTokens
from router.client import Router
from router.config import DispatchOptions
from router.devnet import Devnet, DevnetProvider
from router.observability.events import AttemptFailed, RequestFinished
from router.policy.select import Strategy
from tests.lanes.conftest import (
    GLOBAL_CAP,
    PAIR_CAPPED,
    PAIR_MODEL,
    PAIR_OPEN,
    SOLO_CAPPED,
    SOLO_MODEL,
    OpenRouter,
)
from tests.lanes.support import (
    DRAIN_SLACK,
    Outcome,
    assert_breakers_closed,
    assert_no_provider_429,
    assert_ours_or_ok,
    chat_outcome,
    closed_loop,
    opened_breakers,
    provider_refusals,
    provider_stats,
    tally,
    wallet_counters,
)
from tests.support import Client, EventLog, chat_body

CLIENTS = 4
LOAD_SECONDS = 8.0
REQUEST_TIMEOUT = 4.0
# More holders than slots: whichever holder is refused proves the slots are full, and retries.
HOLDERS = GLOBAL_CAP + 2
HOLDER_PACE = 0.25
MESSAGES = [{"role": "user", "content": "hello there"}]


@asynccontextmanager
async def saturated(
    devnet: Devnet, provider: DevnetProvider, http: aiohttp.ClientSession
) -> AsyncIterator[None]:
    """``provider``'s global slots kept full for the block by the devnet's second user, straight to the
    provider with its own session token. Its replies are slow (the provider's latency fault outlasts the
    block), so every slot stays taken; a holder the cap refuses asks again at a steady pace. Returns once a
    refusal has shown the slots to be full."""
    user = devnet.users[1]
    holder = Client(provider, user, SessionTokens(user), http)
    full = asyncio.Event()

    async def hold() -> None:
        while True:
            async with await holder.chat(chat_body(provider)) as response:
                await response.read()
            assert response.status in (200, 503), response.status
            if response.status == 503:
                full.set()
                await asyncio.sleep(HOLDER_PACE)

    async with asyncio.TaskGroup() as group:
        holders = [group.create_task(hold()) for _ in range(HOLDERS)]
        try:
            async with asyncio.timeout(30):
                await full.wait()
            yield
        finally:
            for task in holders:
                task.cancel()


async def our_load(router: Router, model: str) -> list[Outcome]:
    async def ask(index: int) -> Outcome:
        outcome, _ = await chat_outcome(router, model=model, messages=MESSAGES)
        return outcome

    return await closed_loop(CLIENTS, LOAD_SECONDS, ask, drain=REQUEST_TIMEOUT + DRAIN_SLACK)


def busy_attempts(log: EventLog, provider: DevnetProvider) -> list[AttemptFailed]:
    failed = [e for e in log.of(AttemptFailed) if e.provider == provider.address]
    assert {e.verdict for e in failed} <= {"busy"}, failed
    return failed


class TestGlobalCap:
    async def test_a_saturated_provider_is_failed_over_to_its_uncapped_peer(
        self, lanes_devnet: Devnet, open_router: OpenRouter, http: aiohttp.ClientSession
    ) -> None:
        """The cheaper provider of a model has a global cap of 3, held full by another wallet; the
        pricier one has none. A price-ranked router keeps trying the cheap one (each 503 holds it off
        for its Retry-After) and fails over at once: every request succeeds at the uncapped provider
        within its deadline, no breaker opens, and no provider says 429."""
        capped, open_peer = lanes_devnet.providers[PAIR_CAPPED], lanes_devnet.providers[PAIR_OPEN]
        router, log = await open_router(
            1,
            DispatchOptions(
                request_timeout=REQUEST_TIMEOUT, queue_timeout=REQUEST_TIMEOUT, strategy=Strategy.PRICE
            ),
        )
        wallet = router.wallets[0].address
        async with saturated(lanes_devnet, capped, http):
            outcomes = await our_load(router, PAIR_MODEL)

        assert_ours_or_ok(outcomes, REQUEST_TIMEOUT)
        assert tally(outcomes) == {"ok": len(outcomes)}, tally(outcomes)
        finished = log.of(RequestFinished)
        assert {e.provider for e in finished} == {open_peer.address}
        assert busy_attempts(log, capped), "the capped provider was never tried"
        assert opened_breakers(log.events) == []
        assert_breakers_closed(router)
        capped_stats = await provider_stats(http, capped)
        ours = wallet_counters(capped_stats, wallet)["rejections"]
        assert ours["global_concurrency"] >= 1
        assert {kind: n for kind, n in ours.items() if n and kind != "global_concurrency"} == {}
        assert "429" not in capped_stats["refused"]
        assert_no_provider_429(await provider_stats(http, open_peer))
        print(
            f"\nglobal cap, failover: outcomes {dict(tally(outcomes))}, our 503s {ours['global_concurrency']}"
        )

    async def test_a_saturated_sole_provider_queues_requests_until_their_deadline(
        self, lanes_devnet: Devnet, open_router: OpenRouter, http: aiohttp.ClientSession
    ) -> None:
        """The only provider of a model has a global cap of 3, held full by another wallet. The router
        holds it off after each 503 for its Retry-After and queues the request meanwhile: every request
        ends within its deadline in our own 429 (or 503) with a Retry-After, no breaker opens, the
        provider answers our wallet no 429, and its 503s come at most one round of our lane's
        concurrency per second (the hold-off), not as fast as the router can send."""
        capped = lanes_devnet.providers[SOLO_CAPPED]
        router, log = await open_router(
            1, DispatchOptions(request_timeout=REQUEST_TIMEOUT, queue_timeout=REQUEST_TIMEOUT)
        )
        wallet = router.wallets[0].address
        loop = asyncio.get_running_loop()
        async with saturated(lanes_devnet, capped, http):
            started = loop.time()
            outcomes = await our_load(router, SOLO_MODEL)
            seconds = loop.time() - started

        assert_ours_or_ok(outcomes, REQUEST_TIMEOUT)
        assert tally(outcomes)["ok"] == 0, "a request got through a full global cap"
        assert busy_attempts(log, capped)
        assert opened_breakers(log.events) == []
        assert_breakers_closed(router)
        capped_stats = await provider_stats(http, capped)
        ours = wallet_counters(capped_stats, wallet)["rejections"]
        assert {kind: n for kind, n in ours.items() if n} == {
            "global_concurrency": ours["global_concurrency"]
        }
        lane_concurrency = capped.spec.limits.max_concurrent
        assert 1 <= ours["global_concurrency"] <= lane_concurrency * (seconds + 1), (ours, seconds)
        assert "429" not in capped_stats["refused"]
        assert set(provider_refusals(capped_stats)) <= {
            wallet.lower(),
            lanes_devnet.user_wallets[1].address.lower(),
        }
        print(f"\nglobal cap, queue: outcomes {dict(tally(outcomes))}, our 503s {ours['global_concurrency']}")
