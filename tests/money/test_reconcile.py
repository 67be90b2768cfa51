"""Reconciliation against the chain: after real traffic and real settlements, what the router believes about
its money is what ``getAccount``/``getLedger`` and the providers' own books say, to the wei."""

from __future__ import annotations

import asyncio
from typing import Any

from router.devnet import DevnetProvider
from router.observability.events import RequestFinished, Settled
from tests.money.support import (
    LEDGER_DEPOSIT,
    MONEY_MODEL,
    WAIT,
    MoneyRouter,
    assert_matches_chain,
    billed_settled,
    billed_unsettled,
    messages,
    settle_all,
)

TOTAL_REQUESTS = 500
SETTLE_EVERY = 100
CONCURRENCY = 20
SEQUENTIAL_STREAMS = 12
CONCURRENT_STREAMS = 30


def fee(provider: DevnetProvider, usage: dict[str, Any]) -> int:
    """What ``provider``'s broker charges for ``usage`` (protocol.md §4.5)."""
    spec = provider.spec
    prompt, completion = int(usage["prompt_tokens"]), int(usage["completion_tokens"])
    return prompt * spec.input_price + completion * spec.output_price


class TestReconcile:
    async def test_500_requests_and_settlements_reconcile_to_the_wei(self, money_router: MoneyRouter) -> None:
        """After 500 requests with settlement cycles between them, each provider's balance in
        ``router.balances()`` equals ``getAccount`` to the wei, and the sum of our per-request costs
        equals what was settled, per provider and in total; the ledger matches ``getLedger`` after a
        resync and covers exactly the sub-accounts' balances."""
        money, devnet = money_router, money_router.devnet
        gate = asyncio.Semaphore(CONCURRENCY)
        replies: list[dict[str, Any]] = []

        async def one(index: int, group: asyncio.TaskGroup) -> None:
            async with gate:
                reply = await money.router.chat(
                    model=MONEY_MODEL, messages=messages(index), max_tokens=4 + index % 13
                )
            replies.append(reply)
            if len(replies) % SETTLE_EVERY == 0 and len(replies) < TOTAL_REQUESTS:
                # A settlement cycle lands while the next requests are in flight, as on a live broker.
                group.create_task(settle_all(devnet))

        async with asyncio.timeout(4 * WAIT), asyncio.TaskGroup() as group:
            for index in range(TOTAL_REQUESTS):
                group.create_task(one(index, group))
        await settle_all(devnet)
        await money.wait_watcher_at(await money.chain.block_number())

        assert len(replies) == TOTAL_REQUESTS
        finished = money.log.of(RequestFinished)
        assert len(finished) == TOTAL_REQUESTS
        assert all(e.status == 200 and e.attempts == 1 for e in finished)
        served = {e.provider for e in finished}
        assert len(served) >= 2, "the traffic should spread over several providers"
        # Each settle cycle after 100, 200, 300 and 400 replies, and the last one, settled something.
        assert len(money.log.of(Settled)) >= 5
        await assert_matches_chain(money)
        views = money.account_views()
        total_spent = sum(int(v["spent"]) for v in views.values())
        total_settled = sum(billed_settled(p, money.user) for p in devnet.providers)
        assert total_spent == total_settled == sum(e.cost for e in finished)

        await money.resync()
        ledger = await money.chain.get_ledger(money.user)
        assert ledger is not None
        view = money.view()["ledger"]
        assert (int(view["available"]), int(view["total"])) == (
            ledger.available_balance,
            ledger.total_balance,
        )
        assert view["funded_providers"] == len(devnet.providers)
        # The resync also asked each provider what is owed: after the last cycle, nothing.
        assert all(v["unsettled"] == "0" for v in money.view()["accounts"])
        balances = [a.balance for a in await money.chain.accounts_of(money.user)]
        assert ledger.total_balance - ledger.available_balance == sum(balances)
        assert ledger.total_balance == LEDGER_DEPOSIT - total_settled

    async def test_streamed_requests_are_costed_as_the_provider_bills_them(
        self, money_router: MoneyRouter
    ) -> None:
        """A streamed reply's cost is its usage chunk priced at the provider that served it, which is
        exactly what that broker bills: one stream at a time, each cost equals the growth of the serving
        provider's bill; many at once, our costs per provider add up to its bill and, once settled, to
        what the chain took."""
        money, devnet = money_router, money_router.devnet
        by_address = {p.address: p for p in devnet.providers}

        async def stream(index: int) -> dict[str, Any]:
            chunks = [
                chunk
                async for chunk in money.router.stream_chat(
                    model=MONEY_MODEL, messages=messages(index), max_tokens=3 + index % 11
                )
            ]
            assert chunks[0]["model"] == MONEY_MODEL
            usages = [chunk["usage"] for chunk in chunks if chunk.get("usage")]
            assert len(usages) == 1
            return dict(usages[0])

        for index in range(SEQUENTIAL_STREAMS):
            before = {p.address: billed_unsettled(p, money.user) for p in devnet.providers}
            async with asyncio.timeout(WAIT):
                usage = await stream(index)
            event = money.log.of(RequestFinished)[-1]
            assert (event.status, event.stream) == (200, True)
            provider = by_address[event.provider]
            assert event.cost == fee(provider, usage) > 0
            after = {p.address: billed_unsettled(p, money.user) for p in devnet.providers}
            assert after == {**before, provider.address: before[provider.address] + event.cost}

        gate = asyncio.Semaphore(CONCURRENCY // 2)

        async def gated(index: int) -> None:
            async with gate:
                await stream(index)

        async with asyncio.timeout(2 * WAIT), asyncio.TaskGroup() as group:
            for index in range(SEQUENTIAL_STREAMS, SEQUENTIAL_STREAMS + CONCURRENT_STREAMS):
                group.create_task(gated(index))

        finished = money.log.of(RequestFinished)
        assert len(finished) == SEQUENTIAL_STREAMS + CONCURRENT_STREAMS
        assert all(e.stream and e.status == 200 for e in finished)
        for provider in devnet.providers:
            ours = money.request_costs(provider, stream=True)
            assert sum(ours) == billed_unsettled(provider, money.user)
            assert int(money.account_views()[provider.address.lower()]["spent"]) == sum(ours)

        await settle_all(devnet)
        await money.wait_watcher_at(await money.chain.block_number())
        await assert_matches_chain(money)
