"""Several wallets end to end (issue 14): a router paying with three wallets has a lane per (wallet,
provider), serves about three times what one wallet can at mainnet's limits, never draws a provider 429
or breaks a lane's concurrency cap, and its books equal the chain to the wei after settlement."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp

from router.client import Router
from router.config import DispatchOptions
from router.devnet import Devnet, DevnetProvider
from router.observability.events import RequestFinished, WatcherProgress
from tests.lanes.conftest import (
    ONE_WALLET_MODEL,
    ONE_WALLET_PROVIDER,
    THREE_WALLET_MODEL,
    THREE_WALLET_PROVIDER,
    WALLETS,
    OpenRouter,
)
from tests.lanes.support import (
    DRAIN_SLACK,
    Outcome,
    assert_no_provider_429,
    assert_ours_or_ok,
    chat_outcome,
    closed_loop,
    counters_at,
    provider_stats,
    tally,
    wallet_counters,
)
from tests.support import EventLog

LOAD_SECONDS = 180.0
CLIENTS = 20
QUEUE_TIMEOUT = 15.0
REQUEST_TIMEOUT = 30.0
LEAST_RATIO = 2.7
WATCHER_WAIT = 60.0


async def load(router: Router, model: str) -> list[Outcome]:
    async def ask(index: int) -> Outcome:
        messages = [{"role": "user", "content": f"request {index} on {model}"}]
        outcome, _ = await chat_outcome(router, model=model, messages=messages, max_tokens=4 + index % 9)
        return outcome

    return await closed_loop(CLIENTS, LOAD_SECONDS, ask, drain=REQUEST_TIMEOUT + DRAIN_SLACK)


def caught_up(wallet: str, block: int) -> Callable[[object], bool]:
    """Matches the event that says ``wallet``'s settlement watcher has applied every block to ``block``."""

    def match(event: object) -> bool:
        return (
            isinstance(event, WatcherProgress)
            and event.wallet.lower() == wallet.lower()
            and event.block >= block
        )

    return match


async def assert_books_match_chain(devnet: Devnet, router: Router, log: EventLog) -> None:
    """Once each of ``router``'s watchers has applied every block up to the chain's head, every one of
    its wallets' sub-accounts, as ``router.balances()`` reports it, equals ``getAccount`` to the wei."""
    head = await devnet.owner.block_number()
    for services in router.wallets:
        await log.wait_for(caught_up(services.address, head), within=WATCHER_WAIT)
    reports = router.balances()["wallets"]
    assert [r["wallet"] for r in reports] == [w.address for w in router.wallets]
    for report in reports:
        views = {view["provider"].lower(): view for view in report["accounts"]}
        assert set(views) == {p.address.lower() for p in devnet.providers}, report["wallet"]
        for provider in devnet.providers:
            account = await devnet.owner.get_account(report["wallet"], provider.address)
            assert account is not None
            view = views[provider.address.lower()]
            where = f"wallet {report['wallet']} at {provider.address}"
            assert int(view["balance"]) == account.balance, where
            assert int(view["pending_refund"]) == account.pending_refund, where


def settled(provider: DevnetProvider, wallets: list[str]) -> list[int]:
    """What ``provider`` has settled on chain for each of ``wallets``, once nothing is left unsettled."""
    bills = provider.simulator.billing.bills
    assert all(bills[w.lower()].unsettled == 0 for w in wallets)
    return [bills[w.lower()].settled for w in wallets]


def booked(log: EventLog, provider: DevnetProvider) -> int:
    """The cost a router booked for the requests ``provider`` served it."""
    return sum(e.cost for e in log.of(RequestFinished) if e.provider == provider.address and e.cost)


class TestWallets:
    async def test_three_wallets_serve_three_times_one_within_every_lanes_limits(
        self, lanes_devnet: Devnet, open_router: OpenRouter, http: aiohttp.ClientSession
    ) -> None:
        """Two routers run at once for 3 minutes, each with 20 closed-loop clients on a model served
        by one provider of mainnet's limits (30 RPM, burst 5, 5 in flight per wallet; replies take 8 s,
        so the concurrency cap binds at the start and the RPM after): one router pays with the first
        wallet only, the other with all three. The three-wallet router's provider serves at least 2.7x
        the requests the one-wallet router's serves (the simulators' ``served_requests`` at the end of
        the window), neither provider refuses anything, no lane (wallet) ever has more than 5 in flight
        at its provider (``peak_in_flight``), and after a settlement of every provider each router's
        books of each of its wallets equal ``getAccount`` to the wei."""
        options = DispatchOptions(queue_timeout=QUEUE_TIMEOUT, request_timeout=REQUEST_TIMEOUT)
        one, one_log = await open_router(1, options)
        three, three_log = await open_router(WALLETS, options)
        single = lanes_devnet.providers[ONE_WALLET_PROVIDER]
        shared = lanes_devnet.providers[THREE_WALLET_PROVIDER]
        wallets = [w.address for w in three.wallets]
        assert one.wallets[0].address == wallets[0]

        started = asyncio.get_running_loop().time()
        window = asyncio.create_task(counters_at(http, [single, shared], started + LOAD_SECONDS))
        async with asyncio.TaskGroup() as group:
            one_load = group.create_task(load(one, ONE_WALLET_MODEL))
            three_load = group.create_task(load(three, THREE_WALLET_MODEL))
        (single_window, shared_window), _ = await window

        for outcomes in (one_load.result(), three_load.result()):
            assert_ours_or_ok(outcomes, REQUEST_TIMEOUT)
        served_one = wallet_counters(single_window, wallets[0])["served_requests"]
        served_each = [wallet_counters(shared_window, w)["served_requests"] for w in wallets]
        ratio = sum(served_each) / served_one
        single_stats, shared_stats = await provider_stats(http, single), await provider_stats(http, shared)
        peaks = {
            "one": wallet_counters(single_stats, wallets[0])["peak_in_flight"],
            **{w: wallet_counters(shared_stats, w)["peak_in_flight"] for w in wallets},
        }
        print(
            f"\nwallets: one wallet served {served_one}, three wallets {sum(served_each)} {served_each} "
            f"in {LOAD_SECONDS:.0f} s: {ratio:.2f}x; peak in flight {peaks}; outcomes "
            f"{dict(tally(one_load.result()))} / {dict(tally(three_load.result()))}"
        )
        assert ratio >= LEAST_RATIO, (served_one, served_each)
        assert_no_provider_429(single_stats)
        assert_no_provider_429(shared_stats)
        limit = shared.spec.limits.max_concurrent
        assert single.spec.limits.max_concurrent == limit
        assert max(peaks.values()) <= limit, peaks
        assert limit in peaks.values(), f"no lane reached its concurrency cap: {peaks}"
        for log in (one_log, three_log):
            assert {e.status for e in log.of(RequestFinished)} <= {200, 429}

        await asyncio.gather(*(provider.simulator.settle_now() for provider in lanes_devnet.providers))
        await assert_books_match_chain(lanes_devnet, one, one_log)
        await assert_books_match_chain(lanes_devnet, three, three_log)
        # What each router booked for its requests is what the provider settled, wallet by wallet.
        settled_one = settled(single, wallets[:1])
        assert settled_one == [booked(one_log, single)]
        assert settled_one[0] > 0
        settled_three = settled(shared, wallets)
        assert sum(settled_three) == booked(three_log, shared)
        assert min(settled_three) > 0
