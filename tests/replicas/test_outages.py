"""Redis trouble and a dead leader are never an outage (issue 15): with Redis stopped the replicas count
alone at 1/N of each lane, serve on within every limit and say so, and rejoin when it returns; with the
leader killed another replica takes over funding and watching, no funding need is met twice, and after
a settlement every survivor's books equal the chain to the wei."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from typing import Any

import aiohttp

from router.devnet import Devnet
from router.pool.accounting import MINIMUM_LOCKED
from router.types import NEURON_PER_0G
from tests.lanes.support import assert_no_provider_429, provider_stats, wallet_counters
from tests.replicas.conftest import (
    LEADER_MODEL,
    LEADER_PROVIDER,
    STOP_MODEL,
    STOP_PROVIDER,
    StartReplicas,
)
from tests.replicas.support import (
    POLL_INTERVAL,
    PREFIX,
    Outcome,
    RedisServer,
    Replica,
    admin_balance,
    assert_served_or_ours,
    chat_body,
    closed_loop,
    metric,
    post_chat,
    readyz,
    shared_view,
    tally,
    until,
    wait_for_mode,
    wait_for_one_leader,
)

# -- Redis stopped --------------------------------------------------------------------------------------
STOP_CLIENTS = 4
STOP_SECONDS = 20.0
STOP_LEASE_TTL = 3.0
STOP_REQUEST_TIMEOUT = 15.0
REFUSAL_WATCH_INTERVAL = 0.02
# Every replica says "local" this soon after Redis stops answering, "shared" this soon after it is back.
TO_LOCAL_WITHIN = 5.0
TO_SHARED_WITHIN = 10.0
# What a replica serves alone while Redis is stopped, at least: 2 slots of 0.5 s replies could serve 4 a
# second; this is a quarter of that over the stop (past the first second).
LEAST_SERVED_ALONE = 18

# -- the leader killed ----------------------------------------------------------------------------------
LEADER_CLIENTS = 3
LEADER_TTL = 4.0
LEADER_REQUEST_TIMEOUT = 15.0
FUND_BELOW, FUND_TO = 3.7, 4.0
# Above ``fund_to``, what a sampled balance may show after a top-up: the reserves of the requests in
# flight when it was reckoned (5 of about 0.005 0G), which a top-up covers and the samples leave out.
# A second top-up for the same need would add another 0.3 0G (fund_to - fund_below) or more.
TOP_UP_SLACK = NEURON_PER_0G // 10
FUNDED_WITHIN = 40.0
BOOKS_WITHIN = 30.0
SAMPLE_INTERVAL = 0.25


async def test_redis_stopped_for_20_s_under_load_is_no_outage(
    replicas_devnet: Devnet,
    start_replicas: StartReplicas,
    redis_server: RedisServer,
    client_http: aiohttp.ClientSession,
) -> None:
    """4 clients on each of three replicas on a lane of 6 slots (0.5 s replies); Redis is SIGSTOPped for
    20 s (its connections stay open, nothing answers), then SIGCONTed. Every replica's ``/readyz``
    answers at once throughout and says ``shared.mode == "local"`` within 5 s of the stop and
    ``"shared"`` within 10 s of its return. Every request ends within its deadline, in a reply or our
    429 with a Retry-After: none hangs and none gets a 5xx. Each replica keeps serving alone, and the
    provider sees no 429 and never more than 6 in flight (each replica counts 1/3 of the lane meanwhile,
    and rejoins without overshooting it)."""
    provider = replicas_devnet.providers[STOP_PROVIDER]
    cap = provider.spec.limits.max_concurrent
    replicas = await start_replicas(
        {
            "shared": {"lease_ttl": STOP_LEASE_TTL},
            "dispatch": {"queue_timeout": STOP_REQUEST_TIMEOUT - 5, "request_timeout": STOP_REQUEST_TIMEOUT},
        }
    )
    wallet = replicas_devnet.user_wallet.address
    loop = asyncio.get_running_loop()

    async def send(replica: Replica, index: int) -> Outcome:
        body = chat_body(STOP_MODEL, index)
        return await post_chat(client_http, replica, body, patience=STOP_REQUEST_TIMEOUT + 5)

    # When the provider refused anything (loop time, how many so far), to say which transition did.
    refusals: list[tuple[float, int]] = []

    async def watch_refusals() -> None:
        counters = provider.simulator.limits.counters
        while True:
            wallet_counters = counters().get(wallet.lower())
            count = sum(wallet_counters.rejections.values()) if wallet_counters else 0
            if count > (refusals[-1][1] if refusals else 0):
                refusals.append((loop.time(), count))
            await asyncio.sleep(REFUSAL_WATCH_INTERVAL)

    stop = asyncio.Event()
    outcomes: list[Outcome] = []
    load = asyncio.create_task(
        closed_loop(replicas, STOP_CLIENTS, send, stop, drain=STOP_REQUEST_TIMEOUT + 10)
    )
    watcher = asyncio.create_task(watch_refusals())
    paused = resumed = loop.time()
    try:
        # Load in shared mode first: the lane full, leases live in Redis when it stops.
        await until(
            lambda: provider.simulator.limits.in_flight(wallet) == cap, within=20.0, what="the lane full"
        )
        # What Redis and the replicas say of presence just before the stop.
        now = await redis_server.seconds()
        presence: list[Any] = await redis_server.client.zrange(f"{PREFIX}:replicas", 0, -1, withscores=True)
        presence_ages = sorted(round(now - float(entry[1]), 2) for entry in presence)
        before = [shared_view(await readyz(client_http, r))["replicas"] for r in replicas]
        redis_server.pause()
        paused = loop.time()
        to_local = await wait_for_mode(client_http, replicas, "local", within=TO_LOCAL_WITHIN)
        during = [shared_view(await readyz(client_http, r)) for r in replicas]
        gauges_during = [await metric(client_http, r, "zg_router_shared_mode") for r in replicas]
        await asyncio.sleep(max(0.0, paused + STOP_SECONDS - loop.time()))
        redis_server.resume()
        resumed = loop.time()
        to_shared = await wait_for_mode(client_http, replicas, "shared", within=TO_SHARED_WITHIN)
        gauges_after = [await metric(client_http, r, "zg_router_shared_mode") for r in replicas]
        went_local = [
            await metric(client_http, r, 'zg_router_shared_transitions_total{mode="local"}') for r in replicas
        ]
        # Load in shared mode again, past a reply's time, so that the rejoin is measured too.
        await asyncio.sleep(3.0)
    finally:
        redis_server.resume()
        stop.set()
        outcomes = await load
        watcher.cancel()
    stats = await provider_stats(client_http, provider)
    refused_when = [
        (
            f"{at - paused:+.2f} s from the stop"
            if at < resumed
            else f"{at - resumed:+.2f} s from the return",
            n,
        )
        for at, n in refusals
    ]

    alone = Counter(
        o.replica for o in outcomes if o.kind == "ok" and paused + 1 <= o.started and o.ended <= resumed
    )
    peak = wallet_counters(stats, wallet)["peak_in_flight"]
    print(
        f"\nRedis stopped {resumed - paused:.1f} s: all local after {to_local:.2f} s, all shared "
        f"{to_shared:.2f} s after it came back; served alone by replica {dict(alone)}; outcomes "
        f"{tally(outcomes)}; peak in flight {peak} of {cap}; replicas during the stop {during}; "
        f"provider refusals (when, how many by then) {refused_when}; before the stop Redis had presence "
        f"entries {presence_ages} s old and the replicas counted {before}"
    )
    assert_served_or_ours(outcomes, STOP_REQUEST_TIMEOUT, allow=("saturated",))
    assert all(view["replicas"] == len(replicas) for view in during), during
    assert gauges_during == [0.0] * len(replicas), gauges_during
    assert gauges_after == [1.0] * len(replicas), gauges_after
    assert all(count is not None and count >= 1 for count in went_local), went_local
    for replica in replicas:
        assert alone[replica.index] >= LEAST_SERVED_ALONE, (replica.index, dict(alone))
    assert_no_provider_429(stats)
    assert peak <= cap
    # One log line per transition, each way (whatever the line is called, it names the mode).
    for replica in replicas:
        modes = [line["mode"] for line in replica.lines if line.get("mode") in ("local", "shared")]
        assert modes[-2:] == ["local", "shared"], (replica.index, modes)
        assert all(a != b for a, b in itertools.pairwise(modes)), (replica.index, modes)


def funded_lines(replica: Replica, provider: str) -> list[dict[str, Any]]:
    return [
        line for line in replica.events("funded") if str(line.get("provider", "")).lower() == provider.lower()
    ]


async def wait_funded(replica: Replica, provider: str, *, after: int) -> None:
    """Until ``replica`` has logged more than ``after`` top-ups of ``provider``."""
    await until(
        lambda: len(funded_lines(replica, provider)) > after,
        within=FUNDED_WITHIN,
        what=f"replica {replica.index} funds {provider} (it did {after} times before)",
    )


async def test_the_leader_killed_mid_run_hands_over_funding_without_a_double_top_up(
    replicas_devnet: Devnet, start_replicas: StartReplicas, client_http: aiohttp.ClientSession
) -> None:
    """Three replicas, 3 clients each, on a provider dear enough that the load drives a top-up every
    few seconds (``fund_below`` 3.7 0G, ``fund_to`` 4.0 0G). Exactly one replica's ``/readyz`` says it
    leads; once it has funded once it is ``kill -9``ed, and within ``leader_ttl`` (4 s) exactly one
    survivor says it leads, and it funds the next need.

    Every top-up was sent by the replica leading at the time; the "funded" log lines of all replicas add
    up to the sub-account's growth on chain, one line per step of its balance (sampled every 0.25 s);
    and the available balance (on chain, less 1 0G and the provider's unsettled fees) never passes
    ``fund_to`` by more than the reserves in flight: a second top-up for one need would. The survivors'
    clients see no error. After a settlement of every provider, every sub-account as each survivor's
    ``/admin/balance`` shows it equals ``getAccount`` to the wei."""
    provider = replicas_devnet.providers[LEADER_PROVIDER]
    wallet = replicas_devnet.user_wallet.address
    chain = replicas_devnet.owner
    replicas = await start_replicas(
        {
            "shared": {"leader_ttl": LEADER_TTL, "lease_ttl": LEADER_TTL},
            "money": {"fund_below": FUND_BELOW, "fund_to": FUND_TO},
            "dispatch": {
                "request_timeout": LEADER_REQUEST_TIMEOUT,
                "queue_timeout": LEADER_REQUEST_TIMEOUT - 5,
            },
        }
    )
    loop = asyncio.get_running_loop()
    leader = await wait_for_one_leader(client_http, replicas, within=15.0)
    first = await chain.get_account(wallet, provider.address)
    assert first is not None

    samples: list[tuple[float, int, int]] = []
    sampling = asyncio.Event()

    async def sample() -> None:
        while not sampling.is_set():
            account = await chain.get_account(wallet, provider.address)
            assert account is not None
            unsettled = provider.simulator.billing.unsettled(wallet)
            samples.append((loop.time(), account.balance, account.locked - MINIMUM_LOCKED - unsettled))
            await asyncio.sleep(SAMPLE_INTERVAL)

    async def send(replica: Replica, index: int) -> Outcome:
        body = chat_body(LEADER_MODEL, index)
        return await post_chat(client_http, replica, body, patience=LEADER_REQUEST_TIMEOUT + 5)

    stop = asyncio.Event()
    sampler = asyncio.create_task(sample())
    load = asyncio.create_task(
        closed_loop(replicas, LEADER_CLIENTS, send, stop, drain=LEADER_REQUEST_TIMEOUT + 10)
    )
    try:
        await wait_funded(leader, provider.address, after=0)
        leader.kill()
        survivors = [r for r in replicas if r is not leader]
        successor = await wait_for_one_leader(client_http, survivors, within=LEADER_TTL + 3)
        took_over = loop.time() - (leader.killed_at or 0.0)
        await wait_funded(successor, provider.address, after=len(funded_lines(successor, provider.address)))
    finally:
        stop.set()
        outcomes = await load
        sampling.set()
        await sampler
    last = await chain.get_account(wallet, provider.address)
    assert last is not None

    lines = {r.index: funded_lines(r, provider.address) for r in replicas}
    every = [line for found in lines.values() for line in found]
    steps = sum(1 for (_, before, _), (_, after, _) in itertools.pairwise(samples) if after > before)
    topped = max(available for _, _, available in samples)
    mine = [o for o in outcomes if o.replica != leader.index]
    print(
        f"\nleader killed: replica {successor.index} led {took_over:.2f} s after replica {leader.index} "
        f"died; top-ups by replica { ({i: len(found) for i, found in lines.items()}) }, "
        f"{steps} balance steps on chain, {sum(int(x['amount']) for x in every) / NEURON_PER_0G:.4f} 0G "
        f"in all; most available seen {topped / NEURON_PER_0G:.4f} 0G (fund_to {FUND_TO}); outcomes "
        f"survivors {tally(mine)}"
    )
    assert took_over <= LEADER_TTL + 1.0
    assert all(line["_at"] <= (leader.killed_at or 0.0) for line in lines[leader.index])
    assert all(not found for index, found in lines.items() if index not in (leader.index, successor.index)), (
        lines
    )
    assert all(line["manual"] is False for line in every)
    assert len({line["tx"] for line in every}) == len(every)
    assert sum(int(line["amount"]) for line in every) == last.balance - first.balance
    assert steps == len(every), (steps, len(every))
    assert topped <= max(first.locked - MINIMUM_LOCKED, int(FUND_TO * NEURON_PER_0G)) + TOP_UP_SLACK
    assert_served_or_ours(mine, LEADER_REQUEST_TIMEOUT, allow=())

    owed = provider.simulator.billing.unsettled(wallet)
    await asyncio.gather(*(p.simulator.settle_now() for p in replicas_devnet.providers))
    settled = await chain.get_account(wallet, provider.address)
    assert settled is not None
    # The settlement moved what the load cost, so the books below have something to follow.
    assert owed > 0
    assert settled.balance == last.balance - owed, (owed, last.balance, settled.balance)
    for replica in survivors:
        await assert_books_match_chain(client_http, replicas_devnet, replica)


async def assert_books_match_chain(http: aiohttp.ClientSession, devnet: Devnet, replica: Replica) -> None:
    """Within ``BOOKS_WITHIN``, ``replica``'s ``/admin/balance`` shows every provider's sub-account of
    the wallet as ``getAccount`` has it, to the wei (balance and pending refund)."""
    wallet = devnet.user_wallet.address
    chain: dict[str, tuple[int, int]] = {}
    for provider in devnet.providers:
        account = await devnet.owner.get_account(wallet, provider.address)
        assert account is not None
        chain[provider.address.lower()] = (account.balance, account.pending_refund)
    shown: dict[str, tuple[int, int]] = {}
    try:
        async with asyncio.timeout(BOOKS_WITHIN):
            while shown != chain:
                (report,) = (await admin_balance(http, replica))["wallets"]
                assert report["wallet"].lower() == wallet.lower()
                shown = {
                    view["provider"].lower(): (int(view["balance"]), int(view["pending_refund"]))
                    for view in report["accounts"]
                    if view["provider"].lower() in chain
                }
                if shown != chain:
                    await asyncio.sleep(POLL_INTERVAL * 5)
    except TimeoutError:
        differ = {p: (shown.get(p), c) for p, c in chain.items() if shown.get(p) != c}
        raise AssertionError(f"replica {replica.index}'s books differ from the chain: {differ}") from None
