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

    def test_repr_is_one_line_of_state(self, health: Health) -> None:
        health.record_success(latency=0.0123)
        assert repr(health) == "<Health closed latency=12.3ms error_rate=0.00>"


@pytest.mark.parametrize(
    "kwargs",
    [{"ewma_alpha": 0}, {"failure_threshold": 0}, {"cooldown": 0}, {"cooldown": 10, "max_cooldown": 5}],
)
def test_invalid_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        HealthPolicy(**kwargs)
