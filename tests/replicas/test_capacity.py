"""Three replicas on one wallet share each lane's capacity through Redis (issue 15): together they stay
within every provider's per-wallet limits yet use what the lanes allow, a killed replica's slots come
back within the lease TTL, and no cancelled request or stream leaves a lease behind."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp

from router.devnet import Devnet
from tests.lanes.support import (
    assert_no_provider_429,
    counters_at,
    provider_refusals,
    provider_stats,
    wallet_counters,
)
from tests.replicas.conftest import (
    CANCEL_MODEL,
    CANCEL_PROVIDER,
    KILL_LATENCY,
    KILL_MODEL,
    KILL_PROVIDER,
    RATE_MODEL,
    RATE_PROVIDERS,
    REPLICAS,
    StartReplicas,
)
from tests.replicas.support import (
    API_KEY,
    POLL_INTERVAL,
    Outcome,
    RedisServer,
    Replica,
    assert_served_or_ours,
    chat_body,
    closed_loop,
    held_by,
    lane_key,
    most_in_any_window,
    post_chat,
    tally,
    until,
)

# -- 96 clients -----------------------------------------------------------------------------------------
RATE_CLIENTS = 32  # a replica: 96 in all
RATE_SECONDS = 60.0
RATE_MARGIN = 0.97
RATE_QUEUE_TIMEOUT = 45.0
RATE_REQUEST_TIMEOUT = 60.0
LEAST_SHARE = 0.9

# -- a replica killed -----------------------------------------------------------------------------------
KILL_CLIENTS = 8
KILL_LEASE_TTL = 3.0
KILL_REQUEST_TIMEOUT = 20.0
# How long after the TTL the survivors may take to fill the lane again: a heartbeat's rounding and
# their next try.
REFILL_SLACK = 1.5

# -- cancellations --------------------------------------------------------------------------------------
CANCELLED = 200  # of each kind
CANCEL_AT_ONCE = 10
CANCEL_LEASE_TTL = 30.0
# Well within the TTL: a lease still live after this was leaked, not waiting to expire.
CLEARED_WITHIN = 5.0


def admissions(stats: dict[str, Any], wallet: str) -> list[float]:
    return [float(t) for t in wallet_counters(stats, wallet)["admitted_at"]]


async def test_96_clients_on_three_replicas_stay_within_each_lane_and_use_it(
    replicas_devnet: Devnet, start_replicas: StartReplicas, client_http: aiohttp.ClientSession
) -> None:
    """96 closed-loop clients, 32 on each of three replicas, for 60 s on a model of two providers whose
    lanes allow 240 requests a minute (burst 10) and 8 in flight; replies take 1 s, so the request rate
    binds. The replicas share each lane's buckets in Redis at ``rate_margin`` 0.97.

    Neither provider answers a 429, no lane ever has more than 8 in flight (the simulator's
    ``peak_in_flight``), and no 60 s window holds more admissions than the provider's own bucket lets
    through (burst + RPM: a token bucket that starts full admits its burst on top of a minute's refill,
    and that is what the provider enforces). Every request ends within its deadline, in a reply or our
    429 with a Retry-After. The providers served at least 90% of what their lanes allow in the window
    (burst + RPM each)."""
    providers = [replicas_devnet.providers[i] for i in RATE_PROVIDERS]
    dispatch = {
        "rate_margin": RATE_MARGIN,
        "queue_timeout": RATE_QUEUE_TIMEOUT,
        "request_timeout": RATE_REQUEST_TIMEOUT,
    }
    replicas = await start_replicas({"dispatch": dispatch})
    wallet = replicas_devnet.user_wallet.address

    async def send(replica: Replica, index: int) -> Outcome:
        body = chat_body(RATE_MODEL, index)
        return await post_chat(client_http, replica, body, patience=RATE_REQUEST_TIMEOUT + 5)

    stop = asyncio.Event()
    started = asyncio.get_running_loop().time()
    load = asyncio.create_task(
        closed_loop(replicas, RATE_CLIENTS, send, stop, drain=RATE_REQUEST_TIMEOUT + 10)
    )
    window, _ = await counters_at(client_http, providers, started + RATE_SECONDS)
    stop.set()
    outcomes = await load
    final = [await provider_stats(client_http, p) for p in providers]

    served = [wallet_counters(w, wallet)["served_requests"] for w in window]
    allowed = [p.spec.limits.burst + p.spec.limits.requests_per_minute * RATE_SECONDS / 60 for p in providers]
    peaks = [wallet_counters(s, wallet)["peak_in_flight"] for s in final]
    busiest = [most_in_any_window(admissions(s, wallet), 60.0) for s in final]
    by_replica = Counter(o.replica for o in outcomes if o.kind == "ok")
    print(
        f"\n96 clients: served {served} of {allowed} allowed in {RATE_SECONDS:.0f} s "
        f"({sum(served) / sum(allowed):.1%}); most admitted in any 60 s {busiest}; peak in flight {peaks}; "
        f"outcomes {tally(outcomes)}; ok by replica {dict(by_replica)}; provider refusals "
        f"{[provider_refusals(s) for s in final]}"
    )
    assert_served_or_ours(outcomes, RATE_REQUEST_TIMEOUT, allow=("saturated",))
    for provider, stats, peak, most in zip(providers, final, peaks, busiest, strict=True):
        limits = provider.spec.limits
        assert_no_provider_429(stats)
        assert peak <= limits.max_concurrent, (provider.address, peak)
        assert most <= limits.burst + limits.requests_per_minute, (provider.address, most)
    assert sum(served) >= LEAST_SHARE * sum(allowed), (served, allowed)
    assert len(by_replica) == REPLICAS, f"a replica served nothing: {dict(by_replica)}"


async def test_a_killed_replicas_leases_expire_and_the_others_fill_the_lane_again(
    replicas_devnet: Devnet,
    start_replicas: StartReplicas,
    redis_server: RedisServer,
    client_http: aiohttp.ClientSession,
) -> None:
    """8 clients on each of three replicas keep a lane of 6 slots full (1.5 s replies); one replica is
    ``kill -9``ed while the lane is full and it holds some of the lane's leases. Its leases (TTL 3 s)
    expire within the TTL; until then the survivors have the rest of the lane, and right after it they
    have the provider's 6 slots full again, the lane's live leases in Redis tracking what is really in
    flight at the provider. The survivors' clients see no error at all; the provider answers no 429;
    once the load ends no lease is left."""
    provider = replicas_devnet.providers[KILL_PROVIDER]
    cap = provider.spec.limits.max_concurrent
    replicas = await start_replicas(
        {
            "shared": {"lease_ttl": KILL_LEASE_TTL},
            "dispatch": {"queue_timeout": KILL_REQUEST_TIMEOUT - 5, "request_timeout": KILL_REQUEST_TIMEOUT},
        }
    )
    wallet = replicas_devnet.user_wallet.address
    key = lane_key(wallet, provider.address)
    victim = replicas[0]
    loop = asyncio.get_running_loop()

    async def send(replica: Replica, index: int) -> Outcome:
        body = chat_body(KILL_MODEL, index)
        return await post_chat(client_http, replica, body, patience=KILL_REQUEST_TIMEOUT + 5)

    def at_provider() -> int:
        return provider.simulator.limits.in_flight(wallet)

    held_at_kill = 0

    async def victim_holds_some() -> bool:
        nonlocal held_at_kill
        held_at_kill = held_by(await redis_server.live_lease_ids(key), victim)
        return at_provider() == cap and held_at_kill >= 1

    stop = asyncio.Event()
    load = asyncio.create_task(
        closed_loop(replicas, KILL_CLIENTS, send, stop, drain=KILL_REQUEST_TIMEOUT + 10)
    )
    # Past the first round of replies, so that every replica is in its steady state.
    await asyncio.sleep(KILL_LATENCY * 2)
    await until(victim_holds_some, within=30.0, what="the lane full, the victim holding leases of it")
    victim.kill()
    killed = loop.time()
    samples: list[tuple[float, int, int, int]] = []
    while (since := loop.time() - killed) < KILL_LEASE_TTL + REFILL_SLACK + 3:
        ids = await redis_server.live_lease_ids(key)
        samples.append((since, len(ids), held_by(ids, victim), at_provider()))
        await asyncio.sleep(POLL_INTERVAL)
    stop.set()
    outcomes = await load
    cleared = await leases_cleared(redis_server, [at_provider])
    stats = await provider_stats(client_http, provider)

    expired_at = next((s[0] for s in samples if s[2] == 0), None)
    # The victim's requests that reached the provider end there within one reply's time.
    settled = [s for s in samples if s[0] > KILL_LATENCY + 0.3]
    full_at = next((since for since, _, _, there in settled if there == cap), None)
    after_full = [s for s in settled if full_at is not None and s[0] >= full_at]
    gaps = sorted(leases - there for _, leases, _, there in after_full)
    mine = [o for o in outcomes if o.replica != victim.index]
    print(
        f"\nkilled replica: it held {held_at_kill} of {cap} leases, gone {expired_at} s after the kill "
        f"(TTL {KILL_LEASE_TTL} s); lane full again after {full_at} s; live leases - provider in flight "
        f"afterwards {dict(Counter(gaps))}; survivors {tally(mine)}, victim "
        f"{tally([o for o in outcomes if o.replica == victim.index])}; leases cleared in {cleared:.2f} s"
    )
    assert expired_at is not None, f"the victim's leases outlived their TTL: {samples}"
    assert expired_at <= KILL_LEASE_TTL + POLL_INTERVAL * 2, samples
    assert all(s[2] == 0 for s in samples if s[0] >= expired_at), samples
    assert full_at is not None, f"the survivors never filled the lane again: {samples}"
    assert full_at <= expired_at + REFILL_SLACK, samples
    assert gaps[len(gaps) // 2] == 0, f"live leases do not track the provider's in flight: {after_full}"
    assert max(s[1] for s in samples) <= cap, samples
    assert_served_or_ours(mine, KILL_REQUEST_TIMEOUT, allow=())
    assert all(s.kind == "ok" for s in mine)
    assert_no_provider_429(stats)
    assert wallet_counters(stats, wallet)["peak_in_flight"] <= cap


async def leases_cleared(redis_server: RedisServer, in_flight: list[Callable[[], int]]) -> float:
    """Seconds until no lane has a live lease and every ``in_flight`` reader says 0, within
    ``CLEARED_WITHIN``."""
    seen: tuple[dict[str, int], list[int]] = ({}, [])

    async def cleared() -> bool:
        nonlocal seen
        seen = (await redis_server.live_leases(), [read() for read in in_flight])
        return not seen[0] and not any(seen[1])

    try:
        return await until(cleared, within=CLEARED_WITHIN, what="no live lease and nothing in flight")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; left: {seen}") from None


async def test_cancelled_requests_and_streams_leave_no_lease(
    replicas_devnet: Devnet,
    start_replicas: StartReplicas,
    redis_server: RedisServer,
    client_http: aiohttp.ClientSession,
) -> None:
    """200 requests and 200 streams, spread over three replicas, 10 at a time, each abandoned by its
    client: a request 0.1-0.5 s after it was sent (replies take 0.6 s), a stream after its first chunk
    (chunks come 0.1 s apart). Leases live 30 s, so expiry cannot be what clears them: yet within 5 s
    of the last one no lane has a live lease in Redis (``ZCOUNT P:lane:*:leases (now +inf``) and the
    provider has nothing in flight. Leases were really taken meanwhile (seen live during the run), and
    each replica serves a plain request afterwards."""
    provider = replicas_devnet.providers[CANCEL_PROVIDER]
    replicas = await start_replicas({"shared": {"lease_ttl": CANCEL_LEASE_TTL}})
    wallet = replicas_devnet.user_wallet.address
    headers = {"Authorization": f"Bearer {API_KEY}"}
    gate = asyncio.Semaphore(CANCEL_AT_ONCE)
    first_chunks = 0

    async def abandon_request(index: int) -> None:
        replica = replicas[index % REPLICAS]
        body = chat_body(CANCEL_MODEL, index)
        async with gate:
            try:
                async with asyncio.timeout(0.1 + (index % 5) * 0.1):
                    await client_http.post(replica.api + "/chat/completions", json=body, headers=headers)
            except TimeoutError:
                return
        raise AssertionError(f"request {index} was answered before its client gave up")

    async def abandon_stream(index: int) -> None:
        nonlocal first_chunks
        replica = replicas[index % REPLICAS]
        body = chat_body(CANCEL_MODEL, index, stream=True, max_tokens=16)
        async with gate, asyncio.timeout(30):
            response = await client_http.post(replica.api + "/chat/completions", json=body, headers=headers)
            assert response.status == 200, await response.text()
            async for line in response.content:
                if line.startswith(b"data: {"):
                    first_chunks += 1
                    break
            # Drops the connection mid-stream, as a client that goes away does.
            response.close()

    live_seen = 0

    async def watch_leases(done: asyncio.Event) -> None:
        nonlocal live_seen
        while not done.is_set():
            live_seen = max(live_seen, sum((await redis_server.live_leases()).values()))
            await asyncio.sleep(POLL_INTERVAL)

    done = asyncio.Event()
    async with asyncio.TaskGroup() as group:
        watcher = group.create_task(watch_leases(done))
        await asyncio.gather(
            *(abandon_request(i) for i in range(CANCELLED)),
            *(abandon_stream(CANCELLED + i) for i in range(CANCELLED)),
        )
        done.set()
        await watcher

    cleared = await leases_cleared(redis_server, [lambda: provider.simulator.limits.in_flight(wallet)])
    served = [
        await post_chat(client_http, r, chat_body(CANCEL_MODEL, 10_000 + r.index), patience=30)
        for r in replicas
    ]
    stats = await provider_stats(client_http, provider)
    print(
        f"\ncancellations: {CANCELLED} requests and {CANCELLED} streams abandoned ({first_chunks} after a "
        f"chunk); most live leases seen {live_seen}; none left {cleared:.2f} s after the last; provider "
        f"served {wallet_counters(stats, wallet)['served_requests']}"
    )
    assert first_chunks == CANCELLED
    assert live_seen > 0, "no lease was ever seen live: the count reads the wrong keys"
    assert [o.kind for o in served] == ["ok"] * REPLICAS, served
    assert_no_provider_429(stats)
