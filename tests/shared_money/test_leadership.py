"""One leader among replicas on one wallet: elected at open, handed over when it closes, fenced when it
loses Redis, and the only one that moves money."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from router.embed.sdk import BASE_URL
from router.money.views import NotLeader
from router.observability.events import Funded, LeaderChanged, Settled, SharedModeChanged
from router.shared.leader import Fenced
from tests.money.support import TcpProxy, settle_all
from tests.shared_money.conftest import FAST_MONEY, Replicas
from tests.shared_money.support import (
    LEADER_TTL,
    SHARED_MODEL,
    SUB_ACCOUNT_FUNDING,
    WAIT,
    rounds,
    shared_options,
)
from tests.support import NEURON

HOST = BASE_URL.removesuffix("/v1")


async def readyz(replica_router: Any) -> dict[str, Any]:
    transport = replica_router.httpx_transport(package="httpx")
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
        answer = await http.get(f"{HOST}/readyz")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def test_one_replica_leads_and_the_follower_serves_from_its_book(replicas: Replicas) -> None:
    """The first replica leads; the second, opening once the leader's book is published, reads no
    chain of its own, and after a round holds the same ledger and sub-accounts as the leader (the
    chain's figures). /readyz tells each one's part."""
    first = await replicas.open()
    await first.book.sync()
    second = await replicas.open()
    assert first.leading
    assert not second.leading
    assert second.services.balances.block == -1  # it never read the chain itself
    await rounds(first, second)
    assert second.chain_view() == first.chain_view()
    for provider in replicas.devnet.providers:
        account = await replicas.chain.get_account(replicas.wallet.address, provider.address)
        assert account is not None
        view = second.accounts()[provider.address.lower()]
        assert int(view["balance"]) == account.balance == SUB_ACCOUNT_FUNDING
        assert view["acknowledged"] is account.acknowledged is True
    leader_view = (await readyz(first.router))["shared"]
    assert leader_view["mode"] == "shared"
    assert leader_view["leader"] is True
    # Counted when it marked itself alive after the other did; the leader counts it on its next mark.
    assert (await readyz(second.router))["shared"] == {"mode": "shared", "replicas": 2, "leader": False}


async def test_closing_the_leader_hands_over_and_the_new_leader_funds(replicas: Replicas) -> None:
    """While the first replica leads (auto-funding off) the second, which would top every provider up,
    funds nothing; once the first closes, the second leads within the leader TTL and tops up each
    provider exactly once, on chain."""
    first = await replicas.open(money=replace(FAST_MONEY, auto_fund=False))
    second = await replicas.open(money=replace(FAST_MONEY, fund_below=4.5, fund_to=6.0))
    assert first.leading
    assert not second.leading
    await rounds(first, second)
    assert second.log.of(Funded) == []
    loop = asyncio.get_running_loop()
    closed_at = loop.time()
    await first.close()
    elected = await second.elected(within=LEADER_TTL)
    assert loop.time() - closed_at < LEADER_TTL
    assert elected.token == 2
    for provider in replicas.devnet.providers:
        address = provider.address.lower()
        await second.log.wait_for(
            lambda e, a=address: isinstance(e, Funded) and e.provider.lower() == a, WAIT
        )
    # Available was 5 - 1 (locked) = 4 0G, under 4.5: topped up by 2 to 6.
    funded = {e.provider.lower(): e.amount for e in second.log.of(Funded)}
    assert funded == {p.address.lower(): 2 * NEURON for p in replicas.devnet.providers}
    for provider in replicas.devnet.providers:
        account = await replicas.chain.get_account(replicas.wallet.address, provider.address)
        assert account is not None
        assert account.balance == SUB_ACCOUNT_FUNDING + 2 * NEURON
    assert first.log.of(Funded) == []


async def test_a_leader_cut_off_from_redis_is_deposed_before_another_leads(replicas: Replicas) -> None:
    """The leader loses Redis: it deposes itself before the lease could expire for the others, then
    the other replica leads under a newer token. The deposed one's fence refuses (cut off, and again
    once Redis is back), an operator's fund there is a 409 ``not_leader``, and nothing is sent."""
    port = urlsplit(replicas.url).port
    async with TcpProxy(f"redis://127.0.0.1:{port}") as proxy:
        proxy_port = urlsplit(proxy.url).port
        loop = asyncio.get_running_loop()
        stamped: list[tuple[float, Any]] = []

        def stamp(event: Any) -> None:
            if isinstance(event, LeaderChanged):
                stamped.append((loop.time(), event))

        cut = await replicas.open(
            shared=shared_options(f"redis://127.0.0.1:{proxy_port}/0"), observers=[stamp]
        )
        other = await replicas.open(observers=[stamp])
        assert cut.leading
        assert not other.leading
        await proxy.pause()
        await cut.log.wait_for(lambda e: isinstance(e, LeaderChanged) and not e.leading, LEADER_TTL * 2)
        elected = await other.elected(within=LEADER_TTL * 3)
        # The last two changes: the cut-off leader's deposition, then the other's election.
        (deposed_at, deposed), (elected_at, _) = stamped[-2:]
        assert not deposed.leading
        assert deposed_at < elected_at
        assert elected.token > deposed.token
        with pytest.raises(Fenced):
            await cut.leadership.fence()
        provider = replicas.devnet.providers[0].address
        with pytest.raises(NotLeader) as refused:
            await cut.router.fund(provider, NEURON)
        assert (refused.value.status, refused.value.code) == (409, "not_leader")
        moves = len(cut.log.of(SharedModeChanged))
        await proxy.resume()
        await cut.log.wait_for(
            lambda e: (
                isinstance(e, SharedModeChanged)
                and e.mode == "shared"
                and len(cut.log.of(SharedModeChanged)) > moves
            ),
            WAIT,
        )
        with pytest.raises(Fenced):
            await cut.leadership.fence()
        assert not cut.leading
        assert other.leading
        assert cut.log.of(Funded) == other.log.of(Funded) == []
        for state in replicas.devnet.providers:
            account = await replicas.chain.get_account(replicas.wallet.address, state.address)
            assert account is not None
            assert account.balance == SUB_ACCOUNT_FUNDING


async def test_a_new_leader_counts_the_settlements_its_predecessor_had_not_read(replicas: Replicas) -> None:
    """The providers settle what both replicas spent while the leader's watcher is not reading (a
    minute apart); the leader closes, and the new one reads the chain from where the shared count
    stops, not from its own newer view: it counts every settlement, so no book owes anything after."""
    first = await replicas.open(money=replace(FAST_MONEY, watch_interval=60.0))
    second = await replicas.open()
    for replica in (first, second):
        await replica.router.chat(model=SHARED_MODEL, messages=[{"role": "user", "content": "hello"}])
    spent = {p: first.costs().get(p, 0) + second.costs().get(p, 0) for p in {*first.costs(), *second.costs()}}
    await settle_all(replicas.devnet)
    await rounds(first, second)
    assert first.log.of(Settled) == []
    await first.close()
    await second.elected(within=LEADER_TTL)
    for address in spent:
        await second.log.wait_for(
            lambda e, p=address: isinstance(e, Settled) and e.provider.lower() == p, WAIT
        )
    await second.book.sync()
    settled = {e.provider.lower(): e.amount for e in second.log.of(Settled)}
    assert settled == spent
    views = second.accounts()
    assert all(views[p]["unsettled_ours"] == "0" for p in spent)
