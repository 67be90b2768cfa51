"""Provider health: EWMAs and the circuit breaker's transitions, on a hand-moved clock."""

from __future__ import annotations

import pytest

from router.errors import ConfigError
from router.pool.health import BreakerState, Health, HealthPolicy
from tests.support import FakeClock

POLICY = HealthPolicy(ewma_alpha=0.5, failure_threshold=3, cooldown=5.0, max_cooldown=12.0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def health(clock: FakeClock) -> Health:
    return Health(POLICY, clock)


def fail(health: Health, times: int) -> None:
    for _ in range(times):
        health.record_failure()


class TestAverages:
    def test_first_sample_sets_then_ewma_moves_halfway(self, health: Health) -> None:
        health.record_success(latency=0.100, ttft=0.020)
        assert (health.latency, health.ttft) == (0.100, 0.020)
        health.record_success(latency=0.300, ttft=0.040)
        assert health.latency == pytest.approx(0.200)
        assert health.ttft == pytest.approx(0.030)

    def test_error_rate_rises_on_failures_and_decays_on_successes(self, health: Health) -> None:
        health.record_failure()
        assert health.error_rate == pytest.approx(0.5)
        health.record_success()
        assert health.error_rate == pytest.approx(0.25)


class TestBreaker:
    def test_opens_after_the_threshold_of_failures_in_a_row(self, health: Health) -> None:
        """Two failures, a success, two failures: still closed. A third in a row opens it."""
        fail(health, 2)
        health.record_success()
        fail(health, 2)
        assert health.state is BreakerState.CLOSED
        health.record_failure()
        assert health.state is BreakerState.OPEN
        assert not health.admits()
        assert health.retry_in == pytest.approx(5.0)

    def test_half_open_after_cooldown_admits_one_probe(self, health: Health, clock: FakeClock) -> None:
        fail(health, 3)
        clock.now += 5.0
        assert health.state is BreakerState.HALF_OPEN
        assert health.admits()
        health.begin()
        assert not health.admits()

    def test_a_successful_probe_closes_and_resets_the_cooldown(
        self, health: Health, clock: FakeClock
    ) -> None:
        fail(health, 3)
        clock.now += 5.0
        health.begin()
        health.record_failure()
        clock.now += 10.0
        health.begin()
        health.record_success(latency=0.05)
        assert health.state is BreakerState.CLOSED
        fail(health, 3)
        assert health.retry_in == pytest.approx(5.0)

    def test_a_failed_probe_reopens_with_doubled_capped_cooldown(
        self, health: Health, clock: FakeClock
    ) -> None:
        """5 s, then 10 s, then 12 s (the cap), each after a failed probe."""
        fail(health, 3)
        waits = []
        for _ in range(3):
            clock.now += health.retry_in
            assert health.state is BreakerState.HALF_OPEN
            health.begin()
            health.record_failure()
            waits.append(health.retry_in)
        assert waits == [pytest.approx(10.0), pytest.approx(12.0), pytest.approx(12.0)]

    def test_cool_down_opens_for_at_least_the_given_time(self, health: Health, clock: FakeClock) -> None:
        health.cool_down(2.0)
        assert health.state is BreakerState.OPEN
        health.cool_down(1.0)
        assert health.retry_in == pytest.approx(2.0)
        clock.now += 2.0
        assert health.state is BreakerState.HALF_OPEN

    def test_reprieve_lets_a_probe_through_before_the_cooldown_ends(
        self, health: Health, clock: FakeClock
    ) -> None:
        """A reprieved breaker is half-open at once, one probe at a time; the cooldown it had is kept, so
        a failed probe re-opens it for twice as long."""
        fail(health, 3)
        clock.now += 1.0
        health.reprieve()
        assert (health.state, health.retry_in) == (BreakerState.HALF_OPEN, 0.0)
        health.begin()
        assert not health.admits()
        health.record_failure()
        assert health.retry_in == pytest.approx(10.0)

    def test_reprieve_leaves_a_closed_breaker_closed(self, health: Health) -> None:
        health.reprieve()
        assert health.state is BreakerState.CLOSED

    def test_repr_is_one_line_of_state(self, health: Health) -> None:
        health.record_success(latency=0.0123)
        assert repr(health) == "<Health closed latency=12.3ms error_rate=0.00>"


class TestProbation:
    """A free probe that answers closes a half-open breaker, on probation: the provider serves real
    traffic again at once, but a provider that only answers probes is caught by its first paid failure."""

    @pytest.fixture
    def probed(self, health: Health, clock: FakeClock) -> Health:
        """Opened by three failures, half-open after its 5 s cooldown, then answered a free probe."""
        fail(health, 3)
        clock.now += 5.0
        health.begin()
        health.reachable()
        return health

    def test_an_answered_probe_closes_a_half_open_breaker(self, probed: Health) -> None:
        assert probed.state is BreakerState.CLOSED
        assert probed.admits()

    def test_the_breaker_hook_hears_the_closing(self, clock: FakeClock) -> None:
        heard: list[BreakerState] = []
        health = Health(POLICY, clock, heard.append)
        fail(health, 3)
        clock.now += 5.0
        health.begin()
        health.reachable()
        assert heard == [BreakerState.OPEN, BreakerState.CLOSED]

    def test_the_first_failure_on_probation_reopens_with_the_cooldown_doubled(
        self, probed: Health, clock: FakeClock
    ) -> None:
        """One failure, not three, re-opens it: 10 s, then 12 s (the cap) after the next probation."""
        probed.record_failure()
        assert probed.state is BreakerState.OPEN
        assert probed.retry_in == pytest.approx(10.0)
        clock.now += 10.0
        probed.begin()
        probed.reachable()
        probed.record_failure()
        assert probed.retry_in == pytest.approx(12.0)

    def test_a_real_success_ends_probation_and_resets_the_cooldown(self, probed: Health) -> None:
        probed.record_success(latency=0.05)
        fail(probed, 2)
        assert probed.state is BreakerState.CLOSED
        probed.record_failure()
        assert probed.retry_in == pytest.approx(5.0)

    def test_an_answer_does_not_close_a_breaker_a_real_failure_reopened(
        self, health: Health, clock: FakeClock
    ) -> None:
        """A request in flight failed while the probe was out: the free answer does not outweigh it."""
        fail(health, 3)
        clock.now += 5.0
        health.begin()
        health.record_failure()
        health.reachable()
        assert health.state is BreakerState.OPEN

    def test_an_answer_leaves_a_closed_breaker_off_probation(self, health: Health) -> None:
        health.reachable()
        fail(health, 2)
        assert health.state is BreakerState.CLOSED


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ewma_alpha": 0},
        {"failure_threshold": 0},
        {"cooldown": 0},
        {"cooldown": 10, "max_cooldown": 5},
        {"max_ejection_percent": -1},
        {"max_ejection_percent": 100.5},
    ],
)
def test_invalid_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        HealthPolicy(**kwargs)


@pytest.mark.parametrize("percent", [0.0, 50.0, 100.0])
def test_the_ejection_cap_takes_any_share_from_0_to_100(percent: float) -> None:
    assert HealthPolicy(max_ejection_percent=percent).max_ejection_percent == percent
