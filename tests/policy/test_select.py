"""Which providers a request may use and in which order: filters and ranking strategies."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from router.policy.select import (
    NO_PREFERENCES,
    Strategy,
    eligible,
    over_ejection_cap,
    rank,
    retry_candidates,
)
from router.pool.capacity import NO_DEMAND, Lease, MemoryCapacity
from router.pool.health import Health
from router.pool.limits import ProviderLimits
from router.pool.providers import Exclusion, ProviderInfo, ProviderKind, ProviderState
from router.pool.trust import Outcome
from tests.policy.support import headers, parse
from tests.support import FakeClock

SEEDS = range(200)


class Fleet:
    """Providers shaped by hand for ranking, their lanes counted by a real ``MemoryCapacity``: a provider
    built with ``in_flight=n`` holds n leases, and ``load`` is what the dispatcher ranks by, the mean load
    of a provider's lanes."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.capacity = MemoryCapacity(clock=self.clock)
        self.leases: list[Lease] = []

    def __call__(
        self,
        provider_id: str,
        *,
        prices: tuple[int, int] = (1, 1),
        verifiability: str = "TeeML",
        in_flight: int = 0,
        max_concurrent: int = 5,
        latency: float | None = None,
        failures: int = 0,
        wallets: Sequence[str | None] = (None,),
    ) -> ProviderState:
        limits = ProviderLimits(requests_per_minute=6000, burst=100, max_concurrent=max_concurrent)
        info = ProviderInfo(
            id=provider_id,
            kind=ProviderKind.CHAIN,
            base_url=f"http://{provider_id}/v1/proxy",
            probe_url=f"http://{provider_id}/v1/models",
            service_type="chatbot",
            models=("m",),
            input_price=prices[0],
            output_price=prices[1],
            verifiability=verifiability,
            limits=limits,
        )
        state = ProviderState(info, Health(clock=self.clock), wallets)
        for lane in state.lanes:
            self.capacity.configure(lane, limits)
        self.fill(state, in_flight)
        if latency is not None:
            state.health.record_success(latency=latency)
        for _ in range(failures):
            state.health.record_failure()
        return state

    def fill(self, state: ProviderState, requests: int) -> None:
        """Take ``requests`` leases on the provider's lanes, first lane first."""
        for _ in range(requests):
            lease = self.capacity.try_acquire(state.lanes, NO_DEMAND, self.clock())
            assert lease is not None
            self.leases.append(lease)

    def shrink(self, state: ProviderState, max_concurrent: int) -> None:
        """New limits with a lower cap: what is in flight may now be more than the cap."""
        for lane in state.lanes:
            self.capacity.configure(
                lane, ProviderLimits(requests_per_minute=6000, burst=100, max_concurrent=max_concurrent)
            )

    def load(self, state: ProviderState) -> float:
        return sum(self.capacity.load(lane) for lane in state.lanes) / len(state.lanes)


@pytest.fixture
def fleet() -> Fleet:
    return Fleet()


def seeded(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311 - reproducible draws, not cryptography


def ids(states: list[ProviderState]) -> list[str]:
    return [state.id for state in states]


@pytest.fixture
def trio(fleet: Fleet) -> list[ProviderState]:
    """Three providers: a TeeML and cheap, b TeeTLS and mid-priced, c unverified and dear."""
    return [
        fleet("0xAAA", prices=(1, 1), verifiability="TeeML"),
        fleet("0xBBB", prices=(5, 5), verifiability="TeeTLS"),
        fleet("0xCCC", prices=(10, 2), verifiability=""),
    ]


class TestEligible:
    @pytest.mark.parametrize(
        ("body", "expected"),
        [
            pytest.param(None, ["0xAAA", "0xBBB", "0xCCC"], id="no-preferences"),
            pytest.param({"only": ["0xaaa", "0xCCC"]}, ["0xAAA", "0xCCC"], id="only-any-case"),
            pytest.param({"ignore": ["0xbbb"]}, ["0xAAA", "0xCCC"], id="ignore"),
            pytest.param(
                {"only": ["0xaaa", "0xbbb"], "ignore": ["0xaaa"]}, ["0xBBB"], id="ignore-beats-only"
            ),
            pytest.param({"order": ["0xccc"]}, ["0xAAA", "0xBBB", "0xCCC"], id="order-with-fallbacks"),
            pytest.param(
                {"order": ["0xccc", "0xbbb"], "allow_fallbacks": False}, ["0xBBB", "0xCCC"], id="pinned"
            ),
            pytest.param({"max_price": {"prompt": 5}}, ["0xAAA", "0xBBB"], id="max-prompt"),
            pytest.param({"max_price": {"completion": 2}}, ["0xAAA", "0xCCC"], id="max-completion"),
            pytest.param({"max_price": {"prompt": 5, "completion": 2}}, ["0xAAA"], id="max-both"),
            pytest.param({"max_price": {"prompt": 0}}, [], id="max-prompt-zero"),
            pytest.param({"verified_only": True}, [], id="verified-only-none-verified-yet"),
            pytest.param({"only": ["0xddd"]}, [], id="only-unknown"),
        ],
    )
    def test_filters(
        self, trio: list[ProviderState], body: dict[str, Any] | None, expected: list[str]
    ) -> None:
        """only, ignore, pins without fallbacks, price caps and verified_only filter; input order is kept."""
        assert ids(eligible(trio, parse(body))) == expected

    def test_verified_only_keeps_providers_whose_latest_check_verified(
        self, trio: list[ProviderState]
    ) -> None:
        """A verified response admits a provider; a later failed one takes it out again, whatever it
        claims on chain (0xAAA says TeeML but failed)."""
        aaa, bbb, ccc = trio
        for state in (aaa, bbb):
            state.trust.record(Outcome.VERIFIED, 1.0)
        aaa.trust.record(Outcome.FAILED, 2.0, "signed by someone else")
        ccc.trust.record(Outcome.UNVERIFIABLE, 2.0)
        assert ids(eligible(trio, parse({"verified_only": True}))) == ["0xBBB"]

    def test_health_does_not_matter(self, trio: list[ProviderState], fleet: Fleet) -> None:
        """A full, failing provider is still eligible: availability is decided elsewhere."""
        fleet.fill(trio[0], 5)
        assert fleet.load(trio[0]) == 1.0
        for _ in range(5):
            trio[0].health.record_failure()
        assert ids(eligible(trio, NO_PREFERENCES)) == ["0xAAA", "0xBBB", "0xCCC"]

    def test_a_header_pin_leaves_only_the_pinned_provider(self, trio: list[ProviderState]) -> None:
        """X-0G-Provider-Address pins: without fallbacks only that provider remains."""
        prefs = parse(None, headers(X_0G_Provider_Address="0xbbb"))
        assert ids(eligible(trio, prefs)) == ["0xBBB"]

    @pytest.mark.parametrize(
        ("mode", "expected"),
        [
            ("standard", ["0xAAA", "0xBBB", "0xCCC"]),
            ("verified", ["0xAAA", "0xBBB"]),
            ("private", ["0xAAA"]),
        ],
    )
    def test_trust_modes(self, trio: list[ProviderState], mode: str, expected: list[str]) -> None:
        """Trust mode verified admits TeeML and TeeTLS; private admits TeeML only (protocol.md §9)."""
        prefs = parse(None, headers(X_0G_Provider_Trust_Mode=mode))
        assert ids(eligible(trio, prefs)) == expected


class TestRetryCandidates:
    def test_untried_providers_come_first(self, trio: list[ProviderState]) -> None:
        assert ids(retry_candidates(trio, {"0xAAA"}, {"0xAAA"})) == ["0xBBB", "0xCCC"]

    def test_once_all_were_tried_those_that_only_rate_limited_it_are_next(
        self, trio: list[ProviderState]
    ) -> None:
        """A and B failed this request; C only answered 429: its queue beats another try of a failure."""
        assert ids(retry_candidates(trio, {"0xAAA", "0xBBB", "0xCCC"}, {"0xAAA", "0xBBB"})) == ["0xCCC"]

    def test_when_every_provider_failed_it_everyone_is_a_candidate_again(
        self, trio: list[ProviderState]
    ) -> None:
        everyone = set(ids(trio))
        assert ids(retry_candidates(trio, everyone, everyone)) == ids(trio)


def on_one_clock(clock: FakeClock, *cooldowns: float | None) -> list[ProviderState]:
    """Providers p0, p1, ... sharing ``clock``; each given a cooldown has its breaker open that long."""
    fleet = Fleet()
    states = []
    for index, cooldown in enumerate(cooldowns):
        state = fleet(f"p{index}")
        state.health = Health(clock=clock)
        if cooldown is not None:
            state.health.cool_down(cooldown)
        states.append(state)
    return states


class TestEjectionCap:
    """``over_ejection_cap``: which breaker-ejected providers to let back so that breakers eject at most
    the given share of a model's providers."""

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.mark.parametrize("cooldowns", [(None,) * 4, (5.0, None, None, None), (5.0, 6.0, None, None)])
    def test_within_the_cap_nothing_is_reprieved(
        self, clock: FakeClock, cooldowns: tuple[float | None, ...]
    ) -> None:
        assert ids(list(over_ejection_cap(on_one_clock(clock, *cooldowns), clock(), 50.0))) == []

    @pytest.mark.parametrize(("percent", "expected"), [(50.0, ["p1"]), (25.0, ["p1", "p2"])])
    def test_past_the_cap_the_breakers_reopening_soonest_are_reprieved(
        self, clock: FakeClock, percent: float, expected: list[str]
    ) -> None:
        """Three of four open: a 50 % cap leaves two ejected, a 25 % cap one; the soonest go back."""
        states = on_one_clock(clock, 9.0, 3.0, 6.0, None)
        assert ids(list(over_ejection_cap(states, clock(), percent))) == expected

    def test_equal_reopenings_go_to_the_lower_error_rate(self, clock: FakeClock) -> None:
        states = on_one_clock(clock, 5.0, 5.0)
        states[0].health.record_failure()
        assert ids(list(over_ejection_cap(states, clock(), 50.0))) == ["p1"]

    def test_a_lone_provider_is_never_ejected_by_its_breaker_below_100_percent(
        self, clock: FakeClock
    ) -> None:
        states = on_one_clock(clock, 5.0)
        assert ids(list(over_ejection_cap(states, clock(), 99.0))) == ["p0"]
        assert ids(list(over_ejection_cap(states, clock(), 100.0))) == []

    def test_a_cap_of_0_reprieves_every_open_breaker(self, clock: FakeClock) -> None:
        states = on_one_clock(clock, 7.0, None, 2.0)
        assert ids(list(over_ejection_cap(states, clock(), 0.0))) == ["p2", "p0"]

    def test_a_probe_out_counts_as_ejected_but_is_not_reprieved(self, clock: FakeClock) -> None:
        """p0 is half-open with its one probe out: ejected for now, yet nothing to reprieve; p1 goes."""
        states = on_one_clock(clock, 1.0, 5.0)
        clock.now += 1.0
        states[0].health.begin()
        assert ids(list(over_ejection_cap(states, clock(), 50.0))) == ["p1"]

    def test_excluded_providers_count_neither_way(self, clock: FakeClock) -> None:
        """p0 and p1 are unfunded: of the other two, one may be ejected. With both open, p3 goes back,
        not p0, whose breaker reopens sooner but whose exclusion would keep it out anyway."""
        states = on_one_clock(clock, 1.0, 1.0, 5.0, None)
        for state in states[:2]:
            state.exclude(Exclusion.UNFUNDED, clock() + 60.0)
        assert ids(list(over_ejection_cap(states, clock(), 50.0))) == []
        states[3].health.cool_down(4.0)
        assert ids(list(over_ejection_cap(states, clock(), 50.0))) == ["p3"]

    def test_a_lapsed_exclusion_counts_again(self, clock: FakeClock) -> None:
        states = on_one_clock(clock, 5.0, 5.0)
        states[0].exclude(Exclusion.MISCONFIGURED, clock() - 1.0)
        assert ids(list(over_ejection_cap(states, clock(), 50.0))) == ["p0"]


class TestRankDeterministic:
    def test_price_orders_by_input_plus_output(self, fleet: Fleet) -> None:
        """Cheapest total first: (1+2) < (2+2) < (5+1), although the last has the lowest output price."""
        states = [fleet("a", prices=(5, 1)), fleet("b", prices=(1, 2)), fleet("c", prices=(2, 2))]
        for seed in SEEDS:
            assert ids(rank(states, NO_PREFERENCES, Strategy.PRICE, seeded(seed), fleet.load)) == [
                "b",
                "c",
                "a",
            ]

    def test_price_ties_go_to_the_less_loaded(self, fleet: Fleet) -> None:
        """Between equal prices the idler provider ranks first."""
        states = [fleet("busy", in_flight=3), fleet("idle", in_flight=1)]
        for seed in SEEDS:
            assert ids(rank(states, NO_PREFERENCES, Strategy.PRICE, seeded(seed), fleet.load)) == [
                "idle",
                "busy",
            ]

    def test_latency_puts_unmeasured_first_then_fastest(self, fleet: Fleet) -> None:
        """A provider with no latency sample ranks first (to get measured), then the fastest."""
        states = [fleet("slow", latency=0.3), fleet("new"), fleet("fast", latency=0.1)]
        for seed in SEEDS:
            ranked = rank(states, NO_PREFERENCES, Strategy.LATENCY, seeded(seed), fleet.load)
            assert ids(ranked) == ["new", "fast", "slow"]

    def test_least_loaded_uses_the_share_of_slots_in_use(self, fleet: Fleet) -> None:
        """Load is in_flight / max_concurrent: 3/10 < 2/5 < 1/2, whatever the absolute counts."""
        states = [
            fleet("two-of-five", in_flight=2, max_concurrent=5),
            fleet("one-of-two", in_flight=1, max_concurrent=2),
            fleet("three-of-ten", in_flight=3, max_concurrent=10),
        ]
        for seed in SEEDS:
            ranked = rank(states, NO_PREFERENCES, Strategy.LEAST_LOADED, seeded(seed), fleet.load)
            assert ids(ranked) == ["three-of-ten", "two-of-five", "one-of-two"]

    def test_least_loaded_ties_go_to_the_lower_error_rate(self, fleet: Fleet) -> None:
        """Between equal loads the provider that fails less ranks first."""
        states = [fleet("flaky", failures=1), fleet("steady")]
        for seed in SEEDS:
            ranked = rank(states, NO_PREFERENCES, Strategy.LEAST_LOADED, seeded(seed), fleet.load)
            assert ids(ranked) == ["steady", "flaky"]

    def test_no_candidates_rank_to_nothing(self, fleet: Fleet) -> None:
        """Every strategy ranks an empty list to an empty list."""
        for strategy in Strategy:
            assert rank([], NO_PREFERENCES, strategy, seeded(0), fleet.load) == []

    def test_the_request_sort_overrides_the_configured_strategy(self, fleet: Fleet) -> None:
        """``provider.sort`` replaces the router's default strategy for that request."""
        states = [fleet("dear-fast", prices=(9, 9), latency=0.1), fleet("cheap-slow", latency=0.9)]
        prefs = parse({"sort": "price"})
        assert ids(rank(states, prefs, Strategy.LATENCY, seeded(0), fleet.load)) == [
            "cheap-slow",
            "dear-fast",
        ]

    @pytest.mark.parametrize("strategy", list(Strategy))
    def test_order_puts_listed_providers_first_in_the_given_order(
        self, fleet: Fleet, strategy: Strategy
    ) -> None:
        """Listed providers come first in the listed order (any case), the rest after by strategy."""
        states = [
            fleet("0xA", prices=(1, 1), latency=0.1),
            fleet("0xB", prices=(2, 2), latency=0.2),
            fleet("0xC", prices=(3, 3), latency=0.3),
            fleet("0xD", prices=(4, 4), latency=0.4),
        ]
        prefs = parse({"order": ["0xd", "0xB"]})
        for seed in SEEDS:
            ranked = ids(rank(states, prefs, strategy, seeded(seed), fleet.load))
            assert ranked[:2] == ["0xD", "0xB"]
            assert sorted(ranked[2:]) == ["0xA", "0xC"]
            if strategy is Strategy.PRICE:
                assert ranked[2:] == ["0xA", "0xC"]

    def test_load_is_the_function_given(self, fleet: Fleet) -> None:
        """Rank reads load only through ``load``: whatever it says orders the least-loaded strategy."""
        states = [fleet("a", in_flight=4), fleet("b"), fleet("c", in_flight=2)]
        said = {"a": 0.1, "b": 0.9, "c": 0.5}
        for seed in SEEDS:
            ranked = rank(states, NO_PREFERENCES, Strategy.LEAST_LOADED, seeded(seed), lambda s: said[s.id])
            assert ids(ranked) == ["a", "c", "b"]

    def test_a_second_wallet_halves_a_providers_load(self, fleet: Fleet) -> None:
        """Two requests on a provider with a cap of 2: full with one wallet, half loaded with two (the
        mean of its lanes' loads), so it ranks before a provider at 3 of 5."""
        one_wallet = fleet("one-wallet", in_flight=2, max_concurrent=2)
        two_wallets = fleet("two-wallets", in_flight=2, max_concurrent=2, wallets=("0xw1", "0xw2"))
        three_of_five = fleet("three-of-five", in_flight=3)
        assert (fleet.load(one_wallet), fleet.load(two_wallets)) == (1.0, 0.5)
        states = [one_wallet, three_of_five, two_wallets]
        for seed in SEEDS:
            ranked = rank(states, NO_PREFERENCES, Strategy.LEAST_LOADED, seeded(seed), fleet.load)
            assert ids(ranked) == ["two-wallets", "three-of-five", "one-wallet"]

    def test_rank_leaves_its_input_alone(self, fleet: Fleet) -> None:
        """Ranking returns a new list and does not reorder the candidates given."""
        states = [fleet("b", prices=(2, 2)), fleet("a")]
        ranked = rank(states, NO_PREFERENCES, Strategy.PRICE, seeded(0), fleet.load)
        assert ids(states) == ["b", "a"]
        assert ids(ranked) == ["a", "b"]


class TestRankWeightedRandom:
    def test_same_seed_same_order(self, fleet: Fleet) -> None:
        """The draw depends only on the random.Random given: equal seeds give equal orders."""
        states = [fleet(f"p{i}", in_flight=i % 3) for i in range(6)]
        for seed in SEEDS:
            first = ids(rank(states, NO_PREFERENCES, Strategy.RANDOM, seeded(seed), fleet.load))
            second = ids(rank(states, NO_PREFERENCES, Strategy.RANDOM, seeded(seed), fleet.load))
            assert first == second

    def test_a_full_provider_ranks_last_while_others_have_room(self, fleet: Fleet) -> None:
        """A provider with every slot taken weighs 1e-6: in 200 seeded draws it never precedes a free one."""
        # With weights 1 and 1e-6, one draw puts it ahead of a free provider with odds of about 1e-6, so a
        # pass is no accident; the seeds are fixed, so the outcome never changes from run to run.
        states = [fleet("free-1"), fleet("full", in_flight=5), fleet("free-2", in_flight=1)]
        for seed in SEEDS:
            assert ids(rank(states, NO_PREFERENCES, Strategy.RANDOM, seeded(seed), fleet.load))[-1] == "full"

    def test_over_full_provider_still_ranks_last(self, fleet: Fleet) -> None:
        """More in flight than slots (after limits shrank) clamps the weight rather than inverting it."""
        over = fleet("over", in_flight=5)
        fleet.shrink(over, 3)
        assert fleet.load(over) > 1
        states = [over, fleet("free")]
        for seed in SEEDS:
            assert ids(rank(states, NO_PREFERENCES, Strategy.RANDOM, seeded(seed), fleet.load)) == [
                "free",
                "over",
            ]

    def test_first_place_follows_the_weights(self, fleet: Fleet) -> None:
        """Weights 1 (idle) and 0.5 (half loaded): the idle one comes first in about 2/3 of 2000 draws."""
        states = [fleet("idle", max_concurrent=4), fleet("half", in_flight=2, max_concurrent=4)]
        firsts = Counter(
            rank(states, NO_PREFERENCES, Strategy.RANDOM, seeded(seed), fleet.load)[0].id
            for seed in range(2000)
        )
        # 2/3 +- 0.06 is more than five standard deviations (0.0105) each side.
        assert 0.60 < firsts["idle"] / 2000 < 0.73

    def test_error_rate_lowers_the_weight(self, fleet: Fleet) -> None:
        """A provider failing most of the time is drawn first far less often than a healthy one."""
        states = [fleet("healthy"), fleet("failing", failures=20)]
        # 20 failures at alpha 0.2: error rate 1 - 0.8**20 = 0.988, weight 0.0115, so the healthy one is first
        # with odds 1/1.0115 = 0.989: about 1977 of 2000 draws, with a standard deviation under 5.
        firsts = Counter(
            rank(states, NO_PREFERENCES, Strategy.RANDOM, seeded(seed), fleet.load)[0].id
            for seed in range(2000)
        )
        assert firsts["healthy"] > 1940


class TestRankBalanced:
    def test_prefers_cheap_fast_and_idle(self, fleet: Fleet) -> None:
        """The cheap, fast, idle provider beats a dearer-and-slower one and an equally good busy one."""
        states = [
            fleet("dear-slow", prices=(2, 2), latency=0.2),
            fleet("busy", prices=(1, 1), latency=0.1, in_flight=4),
            fleet("best", prices=(1, 1), latency=0.1),
        ]
        for seed in SEEDS:
            assert ids(rank(states, NO_PREFERENCES, Strategy.BALANCED, seeded(seed), fleet.load))[0] == "best"

    def test_avoids_a_high_error_rate(self, fleet: Fleet) -> None:
        """Of two otherwise equal providers, the one that has been failing ranks last."""
        states = [fleet("failing", latency=0.1, failures=2), fleet("healthy", latency=0.1)]
        for seed in SEEDS:
            ranked = rank(states, NO_PREFERENCES, Strategy.BALANCED, seeded(seed), fleet.load)
            assert ids(ranked) == ["healthy", "failing"]

    def test_unmeasured_counts_as_fast(self, fleet: Fleet) -> None:
        """A provider without a latency sample is not penalised against a measured slow one."""
        states = [fleet("slow", latency=0.5), fleet("fast", latency=0.1), fleet("new")]
        for seed in SEEDS:
            ranked = ids(rank(states, NO_PREFERENCES, Strategy.BALANCED, seeded(seed), fleet.load))
            assert ranked[-1] == "slow"

    def test_equal_providers_share_first_place(self, fleet: Fleet) -> None:
        """Noise breaks ties, so each of two identical providers is sometimes first."""
        states = [fleet("one", latency=0.1), fleet("two", latency=0.1)]
        firsts = Counter(
            rank(states, NO_PREFERENCES, Strategy.BALANCED, seeded(s), fleet.load)[0].id for s in SEEDS
        )
        assert set(firsts) == {"one", "two"}
        assert min(firsts.values()) > 50
