"""The provider pool: refreshes by kind, lookup by (service type, model), and state kept across refreshes."""

from __future__ import annotations

import pytest

from router.pool.limits import ProviderLimits
from router.pool.providers import Exclusion, Pool, ProviderInfo, ProviderKind, ProviderState
from router.pool.trust import Outcome, Trust
from tests.support import FakeClock


def info(
    provider_id: str, *models: str, kind: ProviderKind = ProviderKind.CHAIN, **fields: object
) -> ProviderInfo:
    base = f"http://{provider_id.lower()}.test"
    defaults: dict[str, object] = {"service_type": "chatbot", "input_price": 1, "output_price": 2}
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
def pool(clock: FakeClock) -> Pool:
    return Pool(clock=clock)


def ids(pool: Pool) -> set[str]:
    return {state.id for state in pool}


class TestReplace:
    def test_adds_new_providers(self, pool: Pool) -> None:
        """A first refresh adds every provider, each findable by id in any case."""
        pool.replace(ProviderKind.CHAIN, [info("0xAbC"), info("0xDeF")])
        assert len(pool) == 2
        state = pool.get("0xabc")
        assert state is not None
        assert state.id == "0xAbC"

    def test_drops_providers_of_that_kind_missing_from_the_refresh(self, pool: Pool) -> None:
        """A chain refresh without a provider removes it."""
        pool.replace(ProviderKind.CHAIN, [info("0xa"), info("0xb")])
        pool.replace(ProviderKind.CHAIN, [info("0xb")])
        assert ids(pool) == {"0xb"}
        assert pool.get("0xa") is None

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
        before = pool.get("0xa")
        pool.replace(ProviderKind.CHAIN, [info("0xa", input_price=7)])
        after = pool.get("0xa")
        assert after is before
        assert after is not None
        assert after.info.input_price == 7

    def test_health_gate_and_in_flight_survive_a_refresh(self, pool: Pool) -> None:
        """Same health and gate objects after a refresh; an in-flight slot and failures are still counted."""
        pool.replace(ProviderKind.CHAIN, [info("0xa")])
        state = pool.get("0xa")
        assert state is not None
        health, gate = state.health, state.gate
        gate.in_flight = 2
        health.record_failure()
        pool.replace(ProviderKind.CHAIN, [info("0xa", "model-a", "model-b")])
        assert state.health is health
        assert state.gate is gate
        assert gate.in_flight == 2
        assert health.error_rate > 0

    def test_a_limits_change_reconfigures_the_gate(self, pool: Pool) -> None:
        """New advertised limits reach the existing gate; its in-flight count is kept."""
        pool.replace(ProviderKind.CHAIN, [info("0xa", limits=ProviderLimits(30, 5, 5))])
        state = pool.get("0xa")
        assert state is not None
        state.gate.in_flight = 3
        bucket = state.gate.limiter
        pool.replace(ProviderKind.CHAIN, [info("0xa", limits=ProviderLimits(120, 10, 2))])
        assert state.gate.max_concurrent == 2
        assert state.gate.seconds_per_request == pytest.approx(0.5)
        assert state.gate.limiter is not bucket
        assert state.gate.in_flight == 3

    def test_unchanged_limits_keep_the_bucket(self, pool: Pool) -> None:
        """A refresh with the same limits does not start the bucket over (no free burst)."""
        pool.replace(ProviderKind.CHAIN, [info("0xa", limits=ProviderLimits(30, 5, 5))])
        state = pool.get("0xa")
        assert state is not None
        bucket = state.gate.limiter
        pool.replace(ProviderKind.CHAIN, [info("0xa", input_price=9, limits=ProviderLimits(30, 5, 5))])
        assert state.gate.limiter is bucket

    def test_a_new_tee_signer_resets_trust_and_lifts_its_demotion(self, pool: Pool) -> None:
        """What the old key verified (or failed) says nothing about the new one."""
        pool.replace(ProviderKind.CHAIN, [info("0xa", tee_signer="0xold")])
        state = pool.get("0xa")
        assert state is not None
        assert state.trust.signer == "0xold"
        state.trust.record(Outcome.FAILED, 1.0, "bad")
        state.exclude(Exclusion.UNTRUSTED, until=1e9)
        pool.replace(ProviderKind.CHAIN, [info("0xa", tee_signer="0xold", input_price=5)])
        assert state.trust.failed == 1
        assert state.excluded_at(0.0) is Exclusion.UNTRUSTED
        pool.replace(ProviderKind.CHAIN, [info("0xa", tee_signer="0xnew")])
        assert state.trust == Trust(signer="0xnew")
        assert state.excluded_at(0.0) is None

    def test_rate_margin_reaches_every_gate(self, clock: FakeClock) -> None:
        """A pool with ``rate_margin=0.5`` runs each provider's bucket at half its advertised rate."""
        pool = Pool(clock=clock, rate_margin=0.5)
        pool.replace(ProviderKind.CHAIN, [info("0xa", limits=ProviderLimits(requests_per_minute=60))])
        state = pool.get("0xa")
        assert state is not None
        assert state.gate.seconds_per_request == pytest.approx(2.0)

    def test_health_uses_the_pool_clock(self, pool: Pool, clock: FakeClock) -> None:
        """A cooldown on a pooled provider ends when the pool's clock says so."""
        pool.replace(ProviderKind.CHAIN, [info("0xa")])
        state = pool.get("0xa")
        assert state is not None
        state.health.cool_down(3.0)
        assert not state.available(clock.now)
        clock.now += 3.0
        assert state.available(clock.now)


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
        state = pool.get("0xa")
        assert state is not None
        return state

    def test_an_exclusion_holds_until_its_time(self, state: ProviderState, clock: FakeClock) -> None:
        """Excluded (and unavailable) before ``until``, back at ``until``."""
        state.exclude(Exclusion.UNFUNDED, clock.now + 10)
        assert state.excluded_at(clock.now + 9.9) is Exclusion.UNFUNDED
        assert not state.available(clock.now + 9.9)
        assert state.excluded_at(clock.now + 10) is None
        assert state.available(clock.now + 10)

    def test_a_shorter_exclusion_does_not_cut_a_longer_one(
        self, state: ProviderState, clock: FakeClock
    ) -> None:
        """Excluding again for the same reason keeps the later end."""
        state.exclude(Exclusion.MISCONFIGURED, clock.now + 20)
        state.exclude(Exclusion.MISCONFIGURED, clock.now + 5)
        assert state.excluded_at(clock.now + 15) is Exclusion.MISCONFIGURED

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
