"""The funder end to end on the devnet: top-ups under traffic, a ledger too low to fund a provider, new
providers' first sub-accounts, and an operator's ``fund``/``refund``.

Every test runs a fresh wallet against one module-wide devnet whose chat replies cost a visible share of
0G (``MAX_TOKENS`` completion tokens at 10**15 neuron each, about 0.01 0G), so a few dozen requests use up
a sub-account's headroom. The providers never settle on their own (``settle_interval=None``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from router.chain.client import ChainClient
from router.chain.devtools import set_balance
from router.chain.wallet import Wallet
from router.client import Router
from router.config import DiscoveryOptions, DispatchOptions, MoneyOptions, RouterConfig
from router.devnet import Devnet, DevnetConfig, ProviderSpec
from router.devnet.node_tools import NodeModules
from router.devnet.simulator.limits import RateLimits
from router.errors import InsufficientFunds, RequestFailed
from router.observability.events import AttemptFailed, Funded, FundingFailed, RequestFinished
from router.pool.health import HealthPolicy
from router.transport.http import TransportOptions
from tests.support import NEURON, EventLog

MODEL = "fund-m"
SOLO_MODEL = "solo-m"  # served by one provider only
INPUT_PRICE = 10**12
OUTPUT_PRICE = 10**15  # 0.001 0G per completion token
# Roomy buckets: hundreds of requests in seconds. Concurrency stays at the broker's 5 per wallet.
ROOMY = RateLimits(requests_per_minute=6000, burst=100, max_concurrent=5)
PROVIDERS = (
    ProviderSpec(model=MODEL, input_price=INPUT_PRICE, output_price=OUTPUT_PRICE, limits=ROOMY),
    ProviderSpec(model=MODEL, input_price=INPUT_PRICE, output_price=OUTPUT_PRICE, limits=ROOMY),
    ProviderSpec(model=SOLO_MODEL, input_price=INPUT_PRICE, output_price=OUTPUT_PRICE, limits=ROOMY),
)
CHAT_PROVIDERS = (0, 1)
SOLO = 2
MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": "top me up"}]
MAX_TOKENS = 10
# What the simulator bills one reply: three prompt words and MAX_TOKENS completion tokens.
REQUEST_COST = 3 * INPUT_PRICE + MAX_TOKENS * OUTPUT_PRICE
MINIMUM_LOCKED = NEURON
TIMEOUT = 120.0  # generous: two cores, and other test runs may share them


@pytest.fixture(scope="module")
async def funding_devnet(node_modules: NodeModules) -> AsyncIterator[Devnet]:
    config = DevnetConfig(providers=PROVIDERS, settle_interval=None)
    async with Devnet(config, node_modules) as devnet:
        yield devnet


@dataclass
class Funds:
    """A new wallet with a ledger: its key, address and a chain client to cross-check the contracts."""

    key: str
    address: str
    chain: ChainClient

    async def locked(self, provider: str) -> int | None:
        account = await self.chain.get_account(self.address, provider)
        return account.locked if account is not None else None


async def new_wallet(devnet: Devnet, ledger: int, transfers: dict[int, int]) -> Funds:
    """A wallet with a ``ledger`` deposit and ``transfers`` (provider index: neuron) already moved out."""
    key = "0x" + os.urandom(32).hex()
    wallet = Wallet(key)
    await set_balance(devnet.owner, wallet.address, 100 * NEURON)
    chain = await devnet.open_client(wallet)
    await chain.add_ledger(ledger)
    for index, amount in transfers.items():
        await chain.transfer_fund(devnet.providers[index].address, amount)
    return Funds(key, wallet.address, chain)


def funding_router(devnet: Devnet, funds: Funds, log: EventLog, **money: Any) -> Router:
    """A router for ``funds``' wallet that reports to ``log``, with balance rounds every 0.3 s."""
    config = RouterConfig(
        network=devnet.network,
        private_key=funds.key,
        transport=TransportOptions(allow_private_targets=True, stream_idle_timeout=5.0),
        discovery=DiscoveryOptions(event_poll_interval=0.2, probe_interval=0.1),
        health=HealthPolicy(cooldown=0.3, max_cooldown=1.0),
        dispatch=DispatchOptions(request_timeout=60.0),
        money=MoneyOptions(**{"balance_interval": 0.3, "watch_interval": 0.5, **money}),
    )
    return Router(config, observers=[log])


async def traffic(
    router: Router, count: int, *, model: str = MODEL, concurrency: int = 4, **params: Any
) -> list[dict[str, Any] | RequestFailed]:
    """``count`` chat requests, ``concurrency`` at a time: each reply, or the error it ended in."""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> dict[str, Any] | RequestFailed:
        async with gate:
            try:
                return await router.chat(model=model, messages=MESSAGES, max_tokens=MAX_TOKENS, **params)
            except RequestFailed as exc:
                return exc

    async with asyncio.timeout(TIMEOUT):
        return await asyncio.gather(*(one() for _ in range(count)))


def succeeded(results: list[dict[str, Any] | RequestFailed]) -> list[dict[str, Any]]:
    return [r for r in results if isinstance(r, dict)]


def failures(results: list[dict[str, Any] | RequestFailed]) -> list[RequestFailed]:
    return [r for r in results if isinstance(r, RequestFailed)]


def refused_400(devnet: Devnet) -> list[int]:
    """Each simulator's count of 400 refusals so far (the balance check refuses with 400)."""
    return [p.simulator.stats.refused.get(400, 0) for p in devnet.providers]


def served(devnet: Devnet) -> list[int]:
    return [p.simulator.stats.served for p in devnet.providers]


def delta(after: list[int], before: list[int]) -> list[int]:
    return [a - b for a, b in zip(after, before, strict=True)]


def wallet_view(router: Router) -> dict[str, Any]:
    """The router's balance view of its one wallet."""
    (report,) = router.balances()["wallets"]
    assert report["wallet"] == router.wallets[0].address
    return dict(report)


def account(router: Router, provider: str) -> dict[str, Any]:
    """``provider``'s entry in the router's balance view."""
    return next(a for a in wallet_view(router)["accounts"] if a["provider"].lower() == provider.lower())


def address(devnet: Devnet, index: int) -> str:
    return devnet.providers[index].address


def unfunded_attempts(log: EventLog) -> list[AttemptFailed]:
    return [e for e in log.of(AttemptFailed) if e.verdict == "unfunded"]


async def chat_error(router: Router, **params: Any) -> RequestFailed:
    """The error one chat request ends in (the test fails if it succeeds)."""
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(RequestFailed) as caught:
            await router.chat(messages=MESSAGES, max_tokens=MAX_TOKENS, **{"model": MODEL, **params})
    return caught.value


class TestTopUpsUnderTraffic:
    # 1.2 0G locked leaves 0.2 0G of headroom per provider: about 20 requests each.
    START = 1_200_000_000_000_000_000
    HEADROOM = START - MINIMUM_LOCKED
    REQUESTS = 150

    async def test_funder_tops_up_before_any_provider_refuses(self, funding_devnet: Devnet) -> None:
        """With traffic worth several times the starting headroom, the funder keeps the sub-accounts
        above ``fund_below``: it tops them up as the router opens and again as traffic wears them down,
        so every request succeeds, no provider refuses one for its balance, and no attempt is classed
        unfunded."""
        devnet = funding_devnet
        chat = {address(devnet, i) for i in CHAT_PROVIDERS}
        funds = await new_wallet(devnet, 20 * NEURON, dict.fromkeys(range(len(PROVIDERS)), self.START))
        log = EventLog()
        refused = refused_400(devnet)
        # fund_below is the margin that must outlast a top-up's transaction under full traffic: at
        # hundreds of requests a second, 0.2 0G is gone before one transaction lands.
        router = funding_router(devnet, funds, log, auto_fund=True, fund_below=1.0, fund_to=1.5)
        async with router:
            at_open = log.of(Funded)
            assert {f.provider for f in at_open} == {p.address for p in devnet.providers}
            results = await traffic(router, self.REQUESTS)
        assert [str(f) for f in failures(results)] == []
        assert unfunded_attempts(log) == []
        assert refused_400(devnet) == refused
        under_traffic = log.of(Funded)[len(at_open) :]
        assert under_traffic, "the funder never topped up under traffic"
        assert all(not f.manual and f.amount > 0 for f in log.of(Funded))
        assert {f.provider for f in under_traffic} <= chat
        spent = sum(e.cost for e in log.of(RequestFinished) if e.status == 200)
        assert spent > 2 * len(CHAT_PROVIDERS) * self.HEADROOM, "the traffic never outgrew the start"
        # The chain agrees: each chat provider still holds 1 0G plus what it has not settled.
        for index in CHAT_PROVIDERS:
            provider = devnet.providers[index]
            locked = await funds.locked(provider.address)
            assert locked is not None
            assert locked >= MINIMUM_LOCKED + provider.simulator.billing.unsettled(funds.address)

    async def test_without_the_funder_requests_fail_with_402_once_headroom_is_gone(
        self, funding_devnet: Devnet
    ) -> None:
        """The same traffic with auto-funding off uses up the 0.2 0G headroom: the router's own accounting
        then refuses with 402 ``insufficient_balance`` naming auto-funding as off, before any provider
        would refuse, so providers see no insufficient-balance 400."""
        devnet = funding_devnet
        funds = await new_wallet(devnet, 20 * NEURON, dict.fromkeys(range(len(PROVIDERS)), self.START))
        log = EventLog()
        refused = refused_400(devnet)
        async with funding_router(devnet, funds, log, auto_fund=False) as router:
            # One at a time, so that the count served is exact (no reserve of a request in flight
            # turns another away while headroom is left).
            results = await traffic(router, self.REQUESTS, concurrency=1)
            views = [account(router, address(devnet, i)) for i in CHAT_PROVIDERS]
        ok, failed = succeeded(results), failures(results)
        assert log.of(Funded) == []
        assert failed, "the headroom never ran out"
        for error in failed:
            assert isinstance(error, InsufficientFunds), repr(error)
            assert error.status == 402
            assert error.code == "insufficient_balance"
            assert "has the balance to cover this request" in error.message
            assert "auto-funding is off" in error.message
        # Each provider served until its headroom could not cover one more request, and no further.
        per_provider = self.HEADROOM // REQUEST_COST
        assert len(ok) * REQUEST_COST <= len(CHAT_PROVIDERS) * self.HEADROOM
        assert len(ok) == len(CHAT_PROVIDERS) * per_provider
        for view in views:
            assert view["funding"] == "off"
            assert int(view["available"]) < REQUEST_COST
        assert unfunded_attempts(log) == []
        assert refused_400(devnet) == refused


class TestLedgerTooLow:
    async def test_unfundable_provider_is_skipped_and_reported_once(self, funding_devnet: Devnet) -> None:
        """A ledger too low to open a new provider's sub-account: that provider is reported once
        (FundingFailed ledger_low, an alert in the balance view), never tried, and not retried while the
        ledger does not grow; requests are served by the funded provider meanwhile."""
        devnet = funding_devnet
        funded, unfundable = address(devnet, 0), address(devnet, 1)
        # 3 0G ledger, 2.2 0G out to provider 0: 0.8 0G is left, short of a new sub-account's 1 0G.
        funds = await new_wallet(devnet, 3 * NEURON, {0: 2_200_000_000_000_000_000})
        log = EventLog()
        before = served(devnet)
        router = funding_router(devnet, funds, log, fund_below=1.1, fund_to=1.5, fund_new_providers=True)
        async with router:
            failed = {e.provider: e.state for e in log.of(FundingFailed)}
            assert failed == {unfundable: "ledger_low", address(devnet, SOLO): "ledger_low"}
            results = await traffic(router, 30)
            # Provider 0 fell under fund_below: a funder cycle ran (and funded it) after the failure.
            top_up = await log.wait_for(
                lambda e: isinstance(e, Funded) and e.provider == funded and not e.manual, within=TIMEOUT
            )
            assert top_up.amount <= 8 * NEURON // 10
            alerts = {a["provider"].lower(): a for a in wallet_view(router)["alerts"]}
            more = await traffic(router, 10)
        assert [str(f) for f in failures(results + more)] == []
        assert [e for e in log.of(FundingFailed) if e.provider == unfundable] == [
            FundingFailed(funds.address, unfundable, "ledger_low", alerts[unfundable.lower()]["detail"])
        ]
        assert alerts[unfundable.lower()]["wallet"] == funds.address
        assert alerts.keys() == {unfundable.lower(), address(devnet, SOLO).lower()}
        assert alerts[unfundable.lower()]["state"] == "ledger_low"
        assert "deposit more to the ledger" in alerts[unfundable.lower()]["detail"]
        # Skipped, not tried: no attempt failed, the provider served nothing, and has no sub-account.
        assert log.of(AttemptFailed) == []
        assert delta(served(devnet), before) == [40, 0, 0]
        assert {e.provider for e in log.of(RequestFinished)} == {funded}
        assert await funds.locked(unfundable) is None

    async def test_clear_402_when_no_provider_can_serve(self, funding_devnet: Devnet) -> None:
        """Clients get an error only when no provider can serve: a 402 ``insufficient_balance`` that says
        the ledger is too low, for a model only the unfundable provider serves, and for the shared model
        once the funded provider is refunded."""
        devnet = funding_devnet
        funds = await new_wallet(devnet, 3 * NEURON, {0: 2_200_000_000_000_000_000})
        log = EventLog()
        before = served(devnet)
        async with funding_router(devnet, funds, log, fund_below=0.5, fund_to=1.5) as router:
            solo = await chat_error(router, model=SOLO_MODEL)
            assert len(succeeded(await traffic(router, 1))) == 1
            await router.refund([address(devnet, 0)])
            shared = await chat_error(router)
        for error in (solo, shared):
            assert isinstance(error, InsufficientFunds)
            assert error.status == 402
            assert error.code == "insufficient_balance"
            assert "ledger is too low" in error.message
            assert "deposit 0G to the ledger" in error.message
        assert SOLO_MODEL in solo.message
        assert log.of(AttemptFailed) == []
        assert delta(served(devnet), before) == [1, 0, 0]


class TestNewProviders:
    async def test_funder_opens_sub_accounts_for_new_providers_at_start(self, funding_devnet: Devnet) -> None:
        """With ``fund_new_providers`` a wallet with only a ledger gets a sub-account at every provider
        before the router opens: fund_to of headroom plus the 1 0G minimum, acknowledged, ready to serve."""
        devnet = funding_devnet
        funds = await new_wallet(devnet, 10 * NEURON, {})
        log = EventLog()
        async with funding_router(devnet, funds, log, fund_below=0.5, fund_to=1.0) as router:
            opened = {e.provider: e.amount for e in log.of(Funded)}
            assert opened == {p.address: 2 * NEURON for p in devnet.providers}
            for provider in devnet.providers:
                view = account(router, provider.address)
                assert view["exists"]
                assert view["acknowledged"]
                assert int(view["available"]) == NEURON
                assert view["funding"] == "ok"
            assert wallet_view(router)["ledger"]["available"] == str(4 * NEURON)
            results = await traffic(router, 4) + await traffic(router, 2, model=SOLO_MODEL)
        assert [str(f) for f in failures(results)] == []
        for provider in devnet.providers:
            chain_account = await funds.chain.get_account(funds.address, provider.address)
            assert chain_account is not None
            assert chain_account.acknowledged
            assert chain_account.balance == 2 * NEURON

    async def test_new_providers_are_skipped_without_fund_new_providers(self, funding_devnet: Devnet) -> None:
        """Without ``fund_new_providers`` a provider with no sub-account gets none: it is skipped (never
        tried), requests go to the funded one, and a model only it serves gets a 402."""
        devnet = funding_devnet
        funds = await new_wallet(devnet, 10 * NEURON, {0: 2 * NEURON})
        log = EventLog()
        before = served(devnet)
        router = funding_router(devnet, funds, log, fund_below=0.5, fund_to=1.0, fund_new_providers=False)
        async with router:
            results = await traffic(router, 20)
            solo = await chat_error(router, model=SOLO_MODEL)
            views = [account(router, address(devnet, i)) for i in (1, SOLO)]
        assert [str(f) for f in failures(results)] == []
        assert isinstance(solo, InsufficientFunds)
        assert solo.code == "insufficient_balance"
        assert log.of(Funded) == []
        assert log.of(FundingFailed) == []
        assert log.of(AttemptFailed) == []
        assert delta(served(devnet), before) == [20, 0, 0]
        for view in views:
            assert not view["exists"]
            assert view["funding"] == "ok"
        for index in (1, SOLO):
            assert await funds.locked(address(devnet, index)) is None


class TestOperatorFundingAndRefunds:
    HALF = NEURON // 2

    async def test_fund_moves_money_and_the_balance_view_shows_it(self, funding_devnet: Devnet) -> None:
        """``router.fund`` moves the amount from the ledger to the sub-account at once: the chain, the
        balance view and a manual Funded event agree."""
        devnet = funding_devnet
        provider = address(devnet, 0)
        funds = await new_wallet(devnet, 10 * NEURON, dict.fromkeys(range(len(PROVIDERS)), 2 * NEURON))
        log = EventLog()
        async with funding_router(devnet, funds, log, fund_below=0.5, fund_to=1.0) as router:
            before_ledger = int(wallet_view(router)["ledger"]["available"])
            before = account(router, provider)
            result = await asyncio.wait_for(router.fund(provider, self.HALF), TIMEOUT)
            after_ledger = int(wallet_view(router)["ledger"]["available"])
            after = account(router, provider)
        assert log.of(Funded) == [Funded(funds.address, provider, self.HALF, result.tx_hash, manual=True)]
        assert int(after["balance"]) - int(before["balance"]) == self.HALF
        assert int(after["available"]) - int(before["available"]) == self.HALF
        assert before_ledger - after_ledger == self.HALF
        assert await funds.locked(provider) == 2 * NEURON + self.HALF
        ledger = await funds.chain.get_ledger(funds.address)
        assert ledger is not None
        assert ledger.available_balance == after_ledger

    async def test_refund_drains_a_provider_until_funded_by_hand(self, funding_devnet: Devnet) -> None:
        """``router.refund`` queues the provider's whole balance: it leaves routing at once (no request
        reaches it, a request pinned to it gets a 402) and the funder leaves it alone (``draining``) even
        while it tops others up; ``router.fund`` by hand ends the drain, and the funder looks after it
        again."""
        devnet = funding_devnet
        drained, other = address(devnet, 0), address(devnet, 1)
        funds = await new_wallet(devnet, 10 * NEURON, dict.fromkeys(range(len(PROVIDERS)), 2 * NEURON))
        log = EventLog()
        before = served(devnet)
        async with funding_router(devnet, funds, log, fund_below=0.9, fund_to=1.5) as router:
            refunds = await asyncio.wait_for(router.refund([drained]), TIMEOUT)
            assert list(refunds) == [funds.address]
            [refund] = refunds[funds.address]
            assert refund.tx_hash
            drained_view = account(router, drained)
            assert drained_view["funding"] == "draining"
            assert drained_view["pending_refund"] == drained_view["balance"] == str(2 * NEURON)
            assert int(drained_view["available"]) < 0
            assert await funds.locked(drained) == 0

            # 20 requests take the other provider under fund_below: a funder cycle tops it up, not this one.
            results = await traffic(router, 20)
            await log.wait_for(
                lambda e: isinstance(e, Funded) and e.provider == other and not e.manual, within=TIMEOUT
            )
            pinned = await chat_error(router, provider={"only": [drained]})
            assert account(router, drained)["funding"] == "draining"
            assert [e.provider for e in log.of(Funded)] == [other]

            # By hand: the transfer cancels queued refunds first (protocol.md §7.2), so 0.5 0G of
            # headroom comes back, under fund_below, and the funder tops the provider up from there.
            await asyncio.wait_for(router.fund(drained, 3 * self.HALF), TIMEOUT)
            assert account(router, drained)["funding"] != "draining"
            auto = await log.wait_for(
                lambda e: isinstance(e, Funded) and e.provider == drained and not e.manual, within=TIMEOUT
            )
            # Topped up to fund_to from what the manual transfer left, not from the view before it.
            refilled = account(router, drained)
            reply = await asyncio.wait_for(
                router.chat(
                    model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS, provider={"only": [drained]}
                ),
                TIMEOUT,
            )
        assert [str(f) for f in failures(results)] == []
        assert isinstance(pinned, InsufficientFunds)
        assert pinned.status == 402
        assert (auto.amount, refilled["available"]) == (NEURON, str(3 * self.HALF)), "over fund_to"
        assert reply["object"] == "chat.completion"
        assert log.of(AttemptFailed) == []
        assert delta(served(devnet), before) == [1, 20, 0]
        chain_account = await funds.chain.get_account(funds.address, drained)
        assert chain_account is not None
        assert chain_account.pending_refund == 0
