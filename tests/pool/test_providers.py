"""The provider pool: refreshes by kind, lookup by (service type, model), lanes per wallet, and state kept
across refreshes."""

from __future__ import annotations

from typing import Any

import pytest

from router.pool.capacity import Demand, MemoryCapacity
from router.pool.limits import ProviderLimits
from router.pool.providers import Exclusion, Pool, ProviderInfo, ProviderKind, ProviderState
from router.pool.trust import Outcome, Trust
from tests.pool.support import W1, W2, take
from tests.support import FakeClock


def info(
    provider_id: str, *models: str, kind: ProviderKind = ProviderKind.CHAIN, **fields: Any
) -> ProviderInfo:
    base = f"http://{provider_id.lower()}.test"
    defaults: dict[str, Any] = {"service_type": "chatbot", "input_price": 1, "output_price": 2}
    return ProviderInfo(
        id=provider_id,
        kind=kind,
        base_url=base + "/v1/proxy",
        probe_url=base + "/v1/models",
        models=models or ("model-a",),
        **{**defaults, **fields},
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def capacity(clock: FakeClock) -> MemoryCapacity:
    return MemoryCapacity(clock=clock)


@pytest.fixture
def pool(clock: FakeClock, capacity: MemoryCapacity) -> Pool:
    return Pool(clock=clock, capacity=capacity, wallets=(W1.upper(), W2))


def ids(pool: Pool) -> set[str]:
    return {state.id for state in pool}


def only(pool: Pool, provider_id: str) -> ProviderState:
    state = pool.get(provider_id)
    assert state is not None
    return state


class TestReplace:
    def test_adds_new_providers(self, pool: Pool) -> None:
        """A first refresh adds every provider, each findable by id in any case."""
        pool.replace(ProviderKind.CHAIN, [info("0xAbC"), info("0xDeF")])
        assert len(pool) == 2
        assert only(pool, "0xabc").id == "0xAbC"

    def test_drops_providers_of_that_kind_missing_from_the_refresh(self, pool: Pool) -> None:
        """A chain refresh without a provider removes it."""
        pool.replace(ProviderKind.CHAIN, [info("0xa"), info("0xb")])
        pool.replace(ProviderKind.CHAIN, [info("0xb")])
        assert ids(pool) == {"0xb"}
        assert pool.get("0xa") is None

    def test_a_dropped_providers_lanes_are_forgotten_and_its_leases_still_release(
        self, pool: Pool, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """A provider gone from the refresh has its lanes forgotten by the capacity; a request still in flight
        there releases normally."""
        pool.replace(ProviderKind.CHAIN, [info("0xa")])
        lanes = only(pool, "0xa").lanes
        lease = take(capacity, *lanes)
        pool.replace(ProviderKind.CHAIN, [])
        assert capacity.try_acquire(lanes, Demand(), clock.now) is None
        assert [capacity.wait(lane, Demand(), clock.now) for lane in lanes] == [None, None]
        lease.release()

    def test_static_providers_survive_a_chain_refresh(self, pool: Pool) -> None:
        """Replacing the chain providers leaves static upstreams alone, and the other way round."""
        pool.replace(ProviderKind.STATIC, [info("openai", kind=ProviderKind.STATIC)])
        pool.replace(ProviderKind.CHAIN, [info("0xa")])
        pool.replace(ProviderKind.CHAIN, [])
        assert ids(pool) == {"openai"}
        pool.replace(ProviderKind.CHAIN, [info("0xb")])
        pool.replace(ProviderKind.STATIC, [])
        assert ids(pool) == {"0xb"}

    def test_updates_a_known_provider_in_place(self, pool: Pool) -> None:
        """A refresh with a new price swaps the info but keeps the provider's state object."""
        pool.replace(ProviderKind.CHAIN, [info("0xa", input_price=1)])
        before = only(pool, "0xa")
        pool.replace(ProviderKind.CHAIN, [info("0xa", input_price=7)])
        assert only(pool, "0xa") is before
        assert before.info.input_price == 7

    def test_health_lanes_and_leases_survive_a_refresh(self, pool: Pool, capacity: MemoryCapacity) -> None:
        """Same health and lane objects after a refresh; a lease in flight and failures are still counted."""
        pool.replace(ProviderKind.CHAIN, [info("0xa")])
        state = only(pool, "0xa")
        health, lanes = state.health, state.lanes
        take(capacity, lanes[1])
        health.record_failure()
        pool.replace(ProviderKind.CHAIN, [info("0xa", "model-a", "model-b")])
        assert state.health is health
        assert state.lanes is lanes
        assert capacity.view(lanes[1], capacity.clock()).in_flight == 1
        assert health.error_rate > 0

    def test_a_limits_change_reaches_every_lane_and_keeps_what_is_in_flight(
        self, pool: Pool, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """New advertised limits reconfigure both wallets' lanes; the lease on the first is still counted."""
        pool.replace(ProviderKind.CHAIN, [info("0xa", limits=ProviderLimits(30, 5, 5))])
        lanes = only(pool, "0xa").lanes
        take(capacity, lanes[0])
        pool.replace(ProviderKind.CHAIN, [info("0xa", limits=ProviderLimits(120, 10, 2))])
        views = [capacity.view(lane, clock.now) for lane in lanes]
        assert [(v.in_flight, v.max_concurrent, v.request_capacity) for v in views] == [
            (1, 2, 9.0),
            (0, 2, 9.0),
        ]

    def test_unchanged_limits_keep_the_buckets(
        self, pool: Pool, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """A refresh with the same limits does not start the lanes' buckets over (no free burst)."""
        pool.replace(ProviderKind.CHAIN, [info("0xa", limits=ProviderLimits(30, 2, 5))])
        lanes = only(pool, "0xa").lanes
        take(capacity, *lanes)
        take(capacity, *lanes)
        pool.replace(ProviderKind.CHAIN, [info("0xa", input_price=9, limits=ProviderLimits(30, 2, 5))])
        assert capacity.try_acquire(lanes, Demand(), clock.now) is None

    def test_a_new_tee_signer_resets_trust_and_lifts_its_demotion(self, pool: Pool) -> None:
        """What the old key verified (or failed) says nothing about the new one."""
        pool.replace(ProviderKind.CHAIN, [info("0xa", tee_signer="0xold")])
        state = only(pool, "0xa")
        assert state.trust.signer == "0xold"
        state.trust.record(Outcome.FAILED, 1.0, "bad")
        state.exclude(Exclusion.UNTRUSTED, until=1e9)
        pool.replace(ProviderKind.CHAIN, [info("0xa", tee_signer="0xold", input_price=5)])
        assert state.trust.failed == 1
        assert state.excluded_at(0.0) is Exclusion.UNTRUSTED
        pool.replace(ProviderKind.CHAIN, [info("0xa", tee_signer="0xnew")])
        assert state.trust == Trust(signer="0xnew")
        assert state.excluded_at(0.0) is None

    def test_health_uses_the_pool_clock(self, pool: Pool, clock: FakeClock) -> None:
        """A cooldown on a pooled provider ends when the pool's clock says so."""
        pool.replace(ProviderKind.CHAIN, [info("0xa")])
        state = only(pool, "0xa")
        state.health.cool_down(3.0)
        assert not state.available(clock.now)
        clock.now += 3.0
        assert state.available(clock.now)

    def test_on_breaker_hears_the_provider_and_the_state(
        self, clock: FakeClock, capacity: MemoryCapacity
    ) -> None:
        """The pool's breaker hook hears which provider's breaker moved, and where to."""
        heard: list[tuple[str, str]] = []
        pool = Pool(clock=clock, capacity=capacity, on_breaker=lambda p, s: heard.append((p, s.value)))
        pool.replace(ProviderKind.STATIC, [info("up", kind=ProviderKind.STATIC)])
        only(pool, "up").health.cool_down(1.0)
        assert heard == [("up", "open")]


class TestLanes:
    def test_a_chain_provider_has_a_lane_per_wallet_in_lowercase(self, pool: Pool) -> None:
        """One lane per pool wallet, keyed ``wallet/provider`` in lowercase, each pointing back at the
        provider."""
        pool.replace(ProviderKind.CHAIN, [info("0xAbC")])
        state = only(pool, "0xabc")
        assert pool.wallets == (W1, W2)
        assert [lane.wallet for lane in state.lanes] == [W1, W2]
        assert [lane.key for lane in state.lanes] == [f"{W1}/0xabc", f"{W2}/0xabc"]
        assert all(lane.provider is state for lane in state.lanes)
        assert repr(state.lanes[0]) == f"<Lane {W1}/0xabc>"

    def test_a_static_provider_has_one_lane_without_a_wallet(self, pool: Pool) -> None:
        """A static upstream is paid by no wallet of ours: one lane, keyed ``static/<id>``."""
        pool.replace(ProviderKind.STATIC, [info("OpenAI", kind=ProviderKind.STATIC)])
        (lane,) = only(pool, "openai").lanes
        assert (lane.wallet, lane.key) == (None, "static/openai")

    def test_lane_finds_a_wallets_lane_in_any_case(self, pool: Pool) -> None:
        """``lane(wallet)`` matches the address in any case; an unknown wallet (or none, at a chain provider)
        has none."""
        pool.replace(ProviderKind.CHAIN, [info("0xa")])
        state = only(pool, "0xa")
        assert state.lane(W2.upper()) is state.lanes[1]
        assert state.lane("0x" + "cc" * 20) is None
        assert state.lane(None) is None

    def test_every_lane_is_counted_by_the_capacity(
        self, pool: Pool, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """Each lane admits on its own: two wallets at a provider with a cap of 1 take two requests."""
        pool.replace(ProviderKind.CHAIN, [info("0xa", limits=ProviderLimits(max_concurrent=1))])
        lanes = only(pool, "0xa").lanes
        assert {take(capacity, *lanes).lane, take(capacity, *lanes).lane} == set(lanes)
        assert capacity.try_acquire(lanes, Demand(), clock.now) is None

    def test_a_lane_exclusion_leaves_the_other_wallets_lane_available(
        self, pool: Pool, clock: FakeClock
    ) -> None:
        """One wallet's sub-account ran short there: only its lane is out, until the time given."""
        pool.replace(ProviderKind.CHAIN, [info("0xa")])
        one, two = only(pool, "0xa").lanes
        one.exclude(Exclusion.UNFUNDED, clock.now + 10)
        assert (one.available(clock.now), two.available(clock.now)) == (False, True)
        assert one.excluded_at(clock.now) is Exclusion.UNFUNDED
        assert one.available(clock.now + 10)

    def test_a_provider_exclusion_or_open_breaker_takes_out_every_lane(
        self, pool: Pool, clock: FakeClock
    ) -> None:
        """What is the provider's (an exclusion, its breaker) closes all its lanes; only an exclusion is
        reported as one."""
        pool.replace(ProviderKind.CHAIN, [info("0xa"), info("0xb")])
        a, b = only(pool, "0xa"), only(pool, "0xb")
        a.exclude(Exclusion.UNTRUSTED, clock.now + 10)
        b.health.cool_down(5.0)
        assert [lane.available(clock.now) for lane in (*a.lanes, *b.lanes)] == [False] * 4
        assert [lane.excluded_at(clock.now) for lane in a.lanes] == [Exclusion.UNTRUSTED] * 2
        assert b.lanes[0].excluded_at(clock.now) is None, "a breaker is not an exclusion"

    def test_a_lane_exclusion_survives_a_refresh(self, pool: Pool, clock: FakeClock) -> None:
        """Lanes live on the provider's state, so a price-only refresh keeps a lane's exclusion."""
        pool.replace(ProviderKind.CHAIN, [info("0xa")])
        lane = only(pool, "0xa").lanes[0]
        lane.exclude(Exclusion.MISCONFIGURED, clock.now + 60)
        pool.replace(ProviderKind.CHAIN, [info("0xa", input_price=5)])
        assert only(pool, "0xa").lanes[0] is lane
        assert lane.excluded_at(clock.now) is Exclusion.MISCONFIGURED


class TestLookup:
    @pytest.fixture
    def filled(self, pool: Pool) -> Pool:
        pool.replace(
            ProviderKind.CHAIN,
            [
                info("0xa", "Qwen/Qwen2.5-7B"),
                info("0xb", "qwen/qwen2.5-7b", "other"),
                info("0xc", "Qwen/Qwen2.5-7B", service_type="text-to-image"),
            ],
        )
        return pool

    def test_candidates_match_the_model_case_insensitively(self, filled: Pool) -> None:
        """Any spelling of the model finds both chatbot providers, in pool order."""
        for spelling in ("Qwen/Qwen2.5-7B", "QWEN/QWEN2.5-7B", "qwen/qwen2.5-7b"):
            assert [s.id for s in filled.candidates("chatbot", spelling)] == ["0xa", "0xb"]

    def test_candidates_are_filtered_by_service_type(self, filled: Pool) -> None:
        """The same model under another service type is a different set of providers."""
        assert [s.id for s in filled.candidates("text-to-image", "qwen/qwen2.5-7b")] == ["0xc"]
        assert filled.candidates("speech-to-text", "qwen/qwen2.5-7b") == []

    def test_unknown_model_has_no_candidates(self, filled: Pool) -> None:
        """A model nobody serves gives an empty list, not an error."""
        assert filled.candidates("chatbot", "missing") == []
        assert not filled.knows_model("missing")

    def test_knows_model_and_by_model_use_the_first_spelling(self, filled: Pool) -> None:
        """Models are known in any case and listed once each (first spelling), sorted caselessly."""
        assert filled.knows_model("QWEN/qwen2.5-7B")
        grouped = filled.by_model()
        assert list(grouped) == ["other", "Qwen/Qwen2.5-7B"]
        assert all(grouped[model] for model in grouped)

    def test_a_refresh_reindexes_models(self, filled: Pool) -> None:
        """After a provider drops a model, lookups stop finding it there."""
        filled.replace(ProviderKind.CHAIN, [info("0xb", "other")])
        assert filled.candidates("chatbot", "qwen/qwen2.5-7b") == []
        assert not filled.knows_model("qwen/qwen2.5-7b")
        assert [s.id for s in filled.candidates("chatbot", "OTHER")] == ["0xb"]


class TestExclusions:
    @pytest.fixture
    def state(self, pool: Pool) -> ProviderState:
        pool.replace(ProviderKind.CHAIN, [info("0xa")])
        return only(pool, "0xa")

    def test_an_exclusion_holds_until_its_time(self, state: ProviderState, clock: FakeClock) -> None:
        """Excluded (and unavailable) before ``until``, back at ``until``."""
        state.exclude(Exclusion.UNFUNDED, clock.now + 10)
        assert state.excluded_at(clock.now + 9.5) is Exclusion.UNFUNDED
        assert not state.available(clock.now + 9.5)
        assert state.excluded_at(clock.now + 10) is None
        assert state.available(clock.now + 10)

    def test_a_shorter_exclusion_does_not_cut_a_longer_one(
        self, state: ProviderState, clock: FakeClock
    ) -> None:
        """Excluding again for the same reason keeps the later end, on a provider and on a lane alike."""
        state.exclude(Exclusion.MISCONFIGURED, clock.now + 20)
        state.exclude(Exclusion.MISCONFIGURED, clock.now + 5)
        lane = state.lanes[0]
        lane.exclude(Exclusion.UNFUNDED, clock.now + 30)
        lane.exclude(Exclusion.UNFUNDED, clock.now + 5)
        assert state.excluded_at(clock.now + 15) is Exclusion.MISCONFIGURED
        assert lane.excluded_at(clock.now + 25) is Exclusion.UNFUNDED

    def test_each_reason_expires_on_its_own(self, state: ProviderState, clock: FakeClock) -> None:
        """Two reasons: the provider stays out until the later one ends, naming the one still in force."""
        state.exclude(Exclusion.UNFUNDED, clock.now + 5)
        state.exclude(Exclusion.MISCONFIGURED, clock.now + 8)
        assert state.excluded_at(clock.now + 6) is Exclusion.MISCONFIGURED
        assert state.available(clock.now + 8)

    def test_an_excluded_provider_survives_a_refresh_still_excluded(
        self, pool: Pool, state: ProviderState, clock: FakeClock
    ) -> None:
        """Exclusions live on the state, so a price-only refresh does not lift them."""
        state.exclude(Exclusion.UNFUNDED, clock.now + 60)
        pool.replace(ProviderKind.CHAIN, [info("0xa", input_price=5)])
        assert pool.get("0xa") is state
        assert state.excluded_at(clock.now) is Exclusion.UNFUNDED
