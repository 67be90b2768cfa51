"""Money shared by replicas on one wallet: what each spends is owed in every book, holds on one narrow
what the others may spend, and after settlement every book is the chain's."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from urllib.parse import urlsplit

from router.observability.events import Funded, Settled, SharedModeChanged
from tests.money.support import TcpProxy, messages, settle_all
from tests.shared_money.conftest import FAST_MONEY, Replicas
from tests.shared_money.support import (
    LEADER_TTL,
    SHARED_MODEL,
    SUB_ACCOUNT_FUNDING,
    SYNC_INTERVAL,
    WAIT,
    Replica,
    rounds,
    shared_options,
)
from tests.support import NEURON

# Far less than the leader's balance interval: only the follower's wake-up can fund in time.
WAKE_WAIT = 20.0


async def chats(replica: Replica, count: int) -> None:
    for index in range(count):
        await replica.router.chat(model=SHARED_MODEL, messages=messages(index))


def total_costs(*replicas: Replica) -> dict[str, int]:
    totals: dict[str, int] = {}
    for replica in replicas:
        for provider, cost in replica.costs().items():
            totals[provider] = totals.get(provider, 0) + cost
    return totals


async def test_what_either_replica_spends_is_owed_in_both_books(replicas: Replicas) -> None:
    """Requests through the leader and through the follower: after a round each, both books owe each
    provider the sum of both replicas' costs there, while each keeps only its own spend."""
    first = await replicas.open()
    second = await replicas.open()
    await asyncio.gather(chats(first, 4), chats(second, 4))
    await rounds(first, second)
    owed = total_costs(first, second)
    assert owed
    assert all(cost > 0 for cost in owed.values())
    for replica in (first, second):
        views = replica.accounts()
        assert {p: int(views[p]["unsettled_ours"]) for p in owed} == owed
        assert {p: int(views[p]["spent"]) for p in replica.costs()} == replica.costs()


async def test_totals_past_64_bits_add_up_exactly(replicas: Replicas) -> None:
    """Running totals beyond what Redis's HINCRBY holds (2**63 neuron, about 9.2 0G) still add up to
    the neuron, across both of the counter's fields and the carry between them."""
    first = await replicas.open()
    second = await replicas.open()
    provider = replicas.devnet.providers[0].address
    large = 2**70 + 10**12 - 1
    for replica in (first, second):
        replica.services.accounts.of(provider).spent += large
    await rounds(first, second)
    for replica in (first, second):
        assert int(replica.accounts()[provider.lower()]["unsettled_ours"]) == 2 * large


async def test_a_hold_on_one_replica_narrows_what_the_other_covers(replicas: Replicas) -> None:
    """A 1 0G hold on the leader takes 1 0G off what the follower may spend there (its ``covers``
    answers accordingly) until the hold is closed."""
    first = await replicas.open()
    second = await replicas.open()
    provider = replicas.devnet.providers[0].address
    await rounds(first, second)
    book = second.services.accounts
    before = book.of(provider).available
    assert before == SUB_ACCOUNT_FUNDING - NEURON  # the contract keeps 1 0G locked
    hold = first.services.accounts.hold(provider, NEURON)
    await rounds(first, second)
    assert book.of(provider).reserved_elsewhere == NEURON
    assert book.of(provider).available == before - NEURON
    assert book.covers(provider, before - NEURON)
    assert not book.covers(provider, before - NEURON + 1)
    assert second.accounts()[provider.lower()]["reserved_elsewhere"] == str(NEURON)
    hold.close(None)
    await rounds(first, second)
    assert book.of(provider).reserved_elsewhere == 0
    assert book.covers(provider, before)


async def test_after_settlement_every_book_is_the_chains(replicas: Replicas) -> None:
    """Both replicas spend, the providers settle: once the leader's watcher has applied the
    settlements, every sub-account in both books has the chain's balance and owes nothing."""
    first = await replicas.open()
    second = await replicas.open()
    await asyncio.gather(chats(first, 3), chats(second, 3))
    spent = total_costs(first, second)
    await settle_all(replicas.devnet)
    for address in spent:
        await first.log.wait_for(
            lambda e, p=address: isinstance(e, Settled) and e.provider.lower() == p, WAIT
        )
    await rounds(first, second)
    for provider in replicas.devnet.providers:
        account = await replicas.chain.get_account(replicas.wallet.address, provider.address)
        assert account is not None
        assert account.balance == SUB_ACCOUNT_FUNDING - spent.get(provider.address.lower(), 0)
        for replica in (first, second):
            view = replica.accounts()[provider.address.lower()]
            assert int(view["balance"]) == account.balance
            assert int(view["pending_refund"]) == account.pending_refund == 0
            assert view["unsettled_ours"] == "0"


async def test_spend_while_redis_is_away_reaches_the_others_when_it_returns(replicas: Replicas) -> None:
    """The follower loses Redis and serves on: what it spends meanwhile is not lost but sent, all of
    it, by its first round once Redis answers again."""
    port = urlsplit(replicas.url).port
    async with TcpProxy(f"redis://127.0.0.1:{port}") as proxy:
        leader = await replicas.open()
        cut = await replicas.open(shared=shared_options(f"redis://127.0.0.1:{urlsplit(proxy.url).port}/0"))
        assert leader.leading
        assert not cut.leading
        await proxy.pause()
        await chats(cut, 3)
        assert cut.router.shared_status() == {"mode": "local", "replicas": 2, "leader": False}
        await leader.book.sync()
        spent = cut.costs()
        assert spent
        assert all(int(leader.accounts()[p]["unsettled_ours"]) == 0 for p in spent)
        moves = len(cut.log.of(SharedModeChanged))
        await proxy.resume()
        await cut.log.wait_for(
            lambda e: isinstance(e, SharedModeChanged) and len(cut.log.of(SharedModeChanged)) > moves, WAIT
        )
        await rounds(cut, leader)
        assert {p: int(leader.accounts()[p]["unsettled_ours"]) for p in spent} == spent


async def test_a_cut_off_replicas_hold_stops_narrowing_the_others_after_the_replica_ttl(
    replicas: Replicas,
) -> None:
    """A replica with a 1 0G hold open stops reaching Redis, as a crashed one would: its hold still
    narrows the leader's book at first, and no longer once ``replica_ttl`` has passed without a round
    of its; its own book keeps the hold."""
    port = urlsplit(replicas.url).port
    async with TcpProxy(f"redis://127.0.0.1:{port}") as proxy:
        leader = await replicas.open()
        cut = await replicas.open(shared=shared_options(f"redis://127.0.0.1:{urlsplit(proxy.url).port}/0"))
        provider = replicas.devnet.providers[0].address
        hold = cut.services.accounts.hold(provider, NEURON)
        await rounds(cut, leader)
        book = leader.services.accounts
        assert book.of(provider).reserved_elsewhere == NEURON
        await proxy.pause()
        loop = asyncio.get_running_loop()
        paused_at = loop.time()
        await leader.book.sync()
        assert book.of(provider).reserved_elsewhere == NEURON
        async with asyncio.timeout(WAIT):
            while book.of(provider).reserved_elsewhere:
                await leader.book.sync()
                await asyncio.sleep(0.05)
        # The hold's key lives replica_ttl from the cut replica's last round, just before the pause.
        assert loop.time() - paused_at >= LEADER_TTL - 2 * SYNC_INTERVAL
        assert cut.services.accounts.of(provider).reserved == NEURON
        hold.close(None)


async def test_a_followers_low_balance_wakes_the_leaders_funder(replicas: Replicas) -> None:
    """A request on the follower takes a sub-account under ``fund_below``: the follower has the leader
    told (``P:wake:funder``), and the leader, whose own balance rounds are minutes apart, tops it up at
    once by what that request cost and the 2 0G to ``fund_to``."""
    money = replace(FAST_MONEY, balance_interval=300.0, fund_below=4.0, fund_to=6.0)
    leader = await replicas.open(money=money)
    follower = await replicas.open(money=money)
    assert leader.leading
    assert leader.log.of(Funded) == []
    await chats(follower, 1)
    ((provider, cost),) = follower.costs().items()
    funded = await leader.log.wait_for(lambda e: isinstance(e, Funded), WAKE_WAIT)
    assert (funded.provider.lower(), funded.amount) == (provider, 2 * NEURON + cost)
    assert follower.log.of(Funded) == []


async def test_an_estimate_above_the_providers_bill_is_set_right_at_a_quiet_moment(
    replicas: Replicas,
) -> None:
    """The follower booked more than the provider billed (as a cut-short request books its whole
    reserve): every book owes it, until the leader reads the provider's own figure while nothing is in
    flight anywhere; from the next rounds on, every book owes just what the provider says."""
    leader = await replicas.open()
    follower = await replicas.open()
    provider = replicas.devnet.providers[0].address
    await chats(follower, 1)
    billed = follower.costs()
    follower.services.accounts.of(provider).spent += NEURON // 10
    await rounds(follower, leader)
    overestimate = billed.get(provider.lower(), 0) + NEURON // 10
    assert int(leader.accounts()[provider.lower()]["unsettled_ours"]) == overestimate
    await leader.services.balances.sync()
    await rounds(leader, follower)
    for replica in (leader, follower):
        views = replica.accounts()
        assert int(views[provider.lower()]["unsettled_ours"]) == billed.get(provider.lower(), 0)
        assert int(views[provider.lower()]["unsettled_provider"]) == billed.get(provider.lower(), 0)
