"""The chain RPC going away mid-traffic: the router serves from what it knows, and its settlement watcher
catches up afterwards without applying any log twice.

The router reaches anvil only through a ``TcpProxy``; the providers' simulated brokers talk to anvil
directly, so they keep billing and settling on chain while the router is cut off.
"""

from __future__ import annotations

import asyncio

from router.chain.logs import FeesSpent
from router.devnet.simulator.faults import Faults
from router.errors import RouterError
from router.money.watcher import MAX_BACKOFF
from router.observability.events import BackgroundError, RequestFinished, Settled, WatcherProgress
from router.observability.metrics import Metrics
from tests.money.support import (
    MONEY_MODEL,
    WAIT,
    MoneyRouter,
    OpenRouter,
    TcpProxy,
    assert_matches_chain,
    billed_settled,
    messages,
    settle_all,
)

OUTAGE = 20.0
# Each provider answers after 0.2 s: that paces the traffic (4 lanes, about 20 requests a second).
LATENCY = 0.2
LANES = 4


def watcher_gauges(metrics: Metrics, wallet: str) -> tuple[float, float]:
    """(watcher_lag_blocks, watcher_stalled_seconds) of ``wallet`` as a scrape would read them now."""
    lag = metrics.registry.get_sample_value("zg_router_watcher_lag_blocks", {"wallet": wallet})
    stalled = metrics.registry.get_sample_value("zg_router_watcher_stalled_seconds", {"wallet": wallet})
    assert lag is not None
    assert stalled is not None
    return lag, stalled


def watcher_errors(money: MoneyRouter) -> list[BackgroundError]:
    return [e for e in money.log.of(BackgroundError) if e.task == "settlement-watcher"]


async def served(money: MoneyRouter, count: int) -> None:
    """Return once ``count`` more requests have finished (from the moment of the call)."""
    target = len(money.log.of(RequestFinished)) + count
    await money.log.wait_for(lambda _: len(money.log.of(RequestFinished)) >= target, within=WAIT)


class TestRpcOutage:
    async def test_a_20_second_rpc_outage_is_served_through_and_caught_up(
        self, rpc_proxy: TcpProxy, open_money_router: OpenRouter
    ) -> None:
        """With the chain RPC unreachable for 20 s while requests flow and providers settle: every request
        is still served (from cached balances and tokens), the watcher reports the failure once and
        applies nothing meanwhile; after the RPC returns it catches up to the head, the balances equal
        ``getAccount`` to the wei, the settled totals equal the providers' exactly, and the number of logs
        it applied equals the distinct money logs in its block range: none was applied twice. Its lag
        gauges tell the outage as it happens: the lag in blocks rises while the head cannot be read, the
        stalled seconds too, and once it has caught up both are exact again (stalled 0)."""
        money = await open_money_router(rpc_url=rpc_proxy.url)
        devnet, router = money.devnet, money.router
        metrics = Metrics(router)
        loop = asyncio.get_running_loop()
        for provider in devnet.providers:
            await provider.simulator.set_faults(Faults(latency=LATENCY))
        served_at: list[float] = []
        failures: list[RouterError] = []
        stop = asyncio.Event()

        async def lane(first: int) -> None:
            index = first
            while not stop.is_set():
                try:
                    # Random order spreads the lanes over every provider (the default prefers the cheapest).
                    await router.chat(
                        model=MONEY_MODEL,
                        messages=messages(index),
                        max_tokens=2 + index % 9,
                        provider={"sort": "random"},
                    )
                except RouterError as exc:
                    failures.append(exc)
                else:
                    served_at.append(loop.time())
                index += LANES

        async with asyncio.TaskGroup() as traffic:
            for first in range(LANES):
                traffic.create_task(lane(first))
            try:
                # Before: a settlement the watcher sees through the proxy.
                await served(money, 20)
                await settle_all(devnet)
                await money.wait_watcher_at(await money.chain.block_number())
                before = money.account_views()
                cursor = money.watcher.cursor

                await rpc_proxy.pause()
                cut = loop.time()
                await money.log.wait_for(
                    lambda e: isinstance(e, BackgroundError) and e.task == "settlement-watcher", within=WAIT
                )
                lag_at_cut = watcher_gauges(metrics, money.user)
                # Settlements the router cannot see yet, between requests it keeps serving.
                await settle_all(devnet)
                await served(money, 40)
                await settle_all(devnet)
                await served(money, 20)
                remaining = OUTAGE - (loop.time() - cut)
                assert remaining > 0, "the outage's own steps took longer than the outage"
                await asyncio.sleep(remaining)  # the outage itself: its length is the scenario

                # Still cut off: what the router shows is what it knew before the outage.
                lag_before_resume = watcher_gauges(metrics, money.user)
                during = money.account_views()
                assert money.watcher.cursor == cursor
                for address, view in during.items():
                    assert (view["balance"], view["settled"]) == (
                        before[address]["balance"],
                        before[address]["settled"],
                    )
                served_during = [t for t in served_at if t >= cut]
                settled_in_outage = sum(billed_settled(p, money.user) for p in devnet.providers) - sum(
                    int(view["settled"]) for view in before.values()
                )
                await rpc_proxy.resume()
                restored = loop.time()
                await served(money, 20)
            finally:
                stop.set()

        assert restored - cut >= OUTAGE
        assert failures == []
        assert len(served_during) >= 60
        assert len(watcher_errors(money)) == 1
        assert [e.wallet for e in watcher_errors(money)] == [money.user]

        await settle_all(devnet)
        head = await money.chain.block_number()
        # The watcher retries with a back-off of up to MAX_BACKOFF s, so it may take that long to look again.
        await money.wait_watcher_at(head, within=WAIT + MAX_BACKOFF)
        assert money.watcher.cursor == head + 1
        assert len(watcher_errors(money)) == 1
        assert lag_before_resume[0] > lag_at_cut[0]
        assert lag_before_resume[1] > lag_at_cut[1] >= 0
        last = money.log.of(WatcherProgress)[-1]
        assert watcher_gauges(metrics, money.user) == (last.head - last.block, 0)

        await assert_matches_chain(money)
        total_spent = sum(int(v["spent"]) for v in money.account_views().values())
        assert total_spent == sum(billed_settled(p, money.user) for p in devnet.providers)

        logs = await money.chain.money_logs(money.user, money.start_block, head)
        distinct = {(log.tx_hash, log.log_index) for log in logs}
        assert len(distinct) == len(logs)
        assert money.watcher.applied_logs == len(distinct)
        # One Settled event per settlement on chain: those made during the outage were reported once.
        spent_logs = [log for log in logs if isinstance(log.event, FeesSpent)]
        assert len(money.log.of(Settled)) == len(spent_logs)
        assert settled_in_outage > 0, "the cycles run while the router was cut off settled nothing"
