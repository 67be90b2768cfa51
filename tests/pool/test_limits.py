"""The broker's limit model as data (``ProviderLimits``), the overdrawable bucket we count with, and the
rate-limit reset times providers send."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest

from router.errors import ConfigError
from router.pool.limits import MAX_RESET_SECONDS, Bucket, ProviderLimits, reset_seconds

T0 = 1000.0


class TestBucket:
    def test_a_new_bucket_starts_full(self) -> None:
        """Level equals size at the start, before any time has passed."""
        bucket = Bucket(60, 5, T0)
        assert bucket.level(T0) == 5.0
        assert bucket.size == 5.0

    def test_it_refills_at_per_minute_over_sixty_per_second(self) -> None:
        """At 120/min two tokens a second come back, pro rata for parts of a second."""
        bucket = Bucket(120, 10, T0)
        bucket.take(10, T0)
        assert bucket.level(T0) == 0.0
        assert bucket.level(T0 + 0.25) == pytest.approx(0.5)
        assert bucket.level(T0 + 2.0) == pytest.approx(4.0)

    def test_it_never_holds_more_than_its_size(self) -> None:
        """A long idle spell refills to the size and no further; giving back is capped too."""
        bucket = Bucket(60, 3, T0)
        bucket.take(2, T0)
        assert bucket.level(T0 + 3600) == 3.0
        bucket.take(-50, T0 + 3600)
        assert bucket.level(T0 + 3600) == 3.0

    def test_take_may_overdraw_below_zero_and_the_debt_refills_first(self) -> None:
        """Post-consume: taking more than the level leaves it negative; it is above zero only once the
        debt has refilled (3 tokens at 1/s: just after 3 s)."""
        bucket = Bucket(60, 5, T0)
        bucket.take(8, T0)
        assert bucket.level(T0) == -3.0
        assert bucket.level(T0 + 2.0) == pytest.approx(-1.0)
        assert bucket.level(T0 + 3.5) == pytest.approx(0.5)

    def test_a_negative_take_gives_back(self) -> None:
        """A reservation reconciled to a smaller actual figure returns the difference."""
        bucket = Bucket(60, 10, T0)
        bucket.take(8, T0)
        bucket.take(-5, T0)
        assert bucket.level(T0) == 7.0

    @pytest.mark.parametrize(
        ("taken", "target", "seconds"),
        [
            pytest.param(0, 5, 0.0, id="full-already"),
            pytest.param(2, 3, 0.0, id="exactly-there"),
            pytest.param(5, 1, 0.5, id="one-token"),
            pytest.param(5, 5, 2.5, id="to-full"),
            pytest.param(9, 1, 2.5, id="out-of-debt"),
            pytest.param(0, 5.5, math.inf, id="above-size"),
        ],
    )
    def test_seconds_until_a_level(self, taken: float, target: float, seconds: float) -> None:
        """How long the bucket (size 5, 2 a second) needs to reach ``target``: 0 when there, inf above
        its size."""
        bucket = Bucket(120, 5, T0)
        bucket.take(taken, T0)
        assert bucket.seconds_until(target, T0) == pytest.approx(seconds)

    def test_lower_to_lowers_and_never_raises(self) -> None:
        """``lower_to`` a level under ours takes it (below zero too); above ours it does nothing."""
        bucket = Bucket(60, 10, T0)
        bucket.lower_to(4, T0)
        assert bucket.level(T0) == 4.0
        bucket.lower_to(9, T0)
        assert bucket.level(T0) == 4.0
        bucket.lower_to(-2, T0)
        assert bucket.level(T0) == -2.0
        assert bucket.level(T0 + 1.0) == pytest.approx(-1.0), "it refills from the lowered level"

    def test_an_earlier_time_does_not_roll_the_level_back(self) -> None:
        """A reading at a time before the last one sees the level as it is, not a refill in reverse."""
        bucket = Bucket(60, 10, T0)
        bucket.take(10, T0)
        assert bucket.level(T0 + 2.0) == pytest.approx(2.0)
        assert bucket.level(T0 + 1.0) == pytest.approx(2.0)

    def test_repr_shows_level_size_and_rate(self) -> None:
        """The repr is one line: level over size, and the rate per minute."""
        bucket = Bucket(30, 4, T0)
        bucket.take(1.5, T0)
        assert repr(bucket) == "<Bucket 2.5/4 at 30/min>"


class TestProviderLimits:
    def test_defaults_are_the_brokers(self) -> None:
        """Without advertised limits: 30/min, burst 5, 5 at once, no token or image budget (§4.7)."""
        limits = ProviderLimits()
        assert (limits.requests_per_minute, limits.burst, limits.max_concurrent) == (30, 5, 5)
        assert (limits.tokens_per_minute, limits.images_per_minute) == (0, 0)
        assert (limits.tokens_capacity, limits.images_capacity) == (0, 0)

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"requests_per_minute": 0},
            {"requests_per_minute": -30},
            {"requests_per_minute": math.nan},
            {"requests_per_minute": math.inf},
            {"burst": 0},
            {"burst": -1},
            {"burst": 2.0},
            {"burst": True},
            {"max_concurrent": 0},
            {"max_concurrent": math.nan},
        ],
        ids=lambda kwargs: "{}={}".format(*next(iter(kwargs.items()))),
    )
    def test_bad_request_limits_are_refused(self, kwargs: dict[str, Any]) -> None:
        """A rate that is not finite and positive, or a burst or cap that is not an integer >= 1."""
        with pytest.raises(ConfigError, match="finite and positive"):
            ProviderLimits(**kwargs)

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"tokens_per_minute": -1},
            {"tokens_per_minute": 1.5},
            {"token_burst": -1},
            {"images_per_minute": -10},
            {"image_burst": math.nan},
            {"images_per_minute": False},
            {"context_length": 0},
        ],
        ids=lambda kwargs: "{}={}".format(*next(iter(kwargs.items()))),
    )
    def test_bad_token_and_image_limits_are_refused(self, kwargs: dict[str, Any]) -> None:
        """Token and image counts are integers >= 0 (0: not limited); a context length is >= 1."""
        with pytest.raises(ConfigError, match="integers >= 0"):
            ProviderLimits(**kwargs)

    @pytest.mark.parametrize(
        ("tpm", "burst", "context", "capacity"),
        [
            pytest.param(0, 0, 8192, 0, id="not-limited"),
            pytest.param(0, 500, 8192, 0, id="burst-without-rate"),
            pytest.param(60_000, 0, 8192, 10_000, id="sixth-of-tpm"),
            pytest.param(6_000, 0, 8192, 8192, id="context-length"),
            pytest.param(6_000, 0, 1000, 1000, id="equal"),
            pytest.param(60_000, 2_500, 8192, 2_500, id="advertised-burst"),
        ],
    )
    def test_token_capacity_is_the_larger_of_a_sixth_of_tpm_and_the_context(
        self, tpm: int, burst: int, context: int, capacity: int
    ) -> None:
        """The broker's default token burst is max(TPM // 6, context_length); an advertised one wins."""
        limits = ProviderLimits(tokens_per_minute=tpm, token_burst=burst, context_length=context)
        assert limits.tokens_capacity == capacity

    @pytest.mark.parametrize(
        ("ipm", "burst", "capacity"),
        [
            pytest.param(0, 0, 0, id="not-limited"),
            pytest.param(60, 0, 10, id="sixth-of-ipm"),
            pytest.param(5, 0, 1, id="at-least-one"),
            pytest.param(13, 0, 2, id="floored"),
            pytest.param(60, 3, 3, id="advertised-burst"),
        ],
    )
    def test_image_capacity_is_a_sixth_of_ipm_at_least_one(self, ipm: int, burst: int, capacity: int) -> None:
        """The broker's default image burst is max(1, IPM // 6); an advertised one wins."""
        assert ProviderLimits(images_per_minute=ipm, image_burst=burst).images_capacity == capacity


NOW = datetime(2026, 12, 2, 10, 0, 0, tzinfo=UTC)


class TestResetSeconds:
    @pytest.mark.parametrize(
        ("value", "seconds"),
        [
            ("2s", 2.0),
            ("0s", 0.0),
            ("1.5s", 1.5),
            ("1m30s", 90.0),
            ("1m", 60.0),
            ("1m30.5s", 90.5),
            ("250ms", 0.25),
            ("1h", 3600.0),
            ("0h59m0s", 3540.0),
            ("0h2m3s4ms", 123.004),
            ("2h0m0s", MAX_RESET_SECONDS),
            ("99999", MAX_RESET_SECONDS),
            ("3", 3.0),
            ("0.25", 0.25),
            (" 2s ", 2.0),
            ("-5", 0.0),
            ("", None),
            (None, None),
            ("garbage", None),
            ("s", None),
            ("ms", None),
            ("1d", None),
        ],
    )
    def test_parses_durations(self, value: str | None, seconds: float | None) -> None:
        """``x-ratelimit-reset-*`` values in Go duration or bare-seconds form (the broker's OpenAI routes);
        anything else that is no time either is None."""
        result = reset_seconds(value, now=NOW)
        if seconds is None:
            assert result is None
        else:
            assert result == pytest.approx(seconds)

    @pytest.mark.parametrize(
        ("value", "seconds"),
        [
            ("2026-12-02T10:00:05Z", 5.0),
            ("2026-12-02T10:00:05.5+00:00", 5.5),
            ("2026-12-02T11:00:05+01:00", 5.0),
            ("2026-12-02T10:00:05", 5.0),  # no zone: UTC
            ("2026-12-02T09:59:00Z", 0.0),  # already past
            ("2027-01-01T00:00:00Z", MAX_RESET_SECONDS),
            ("2026-13-45T00:00:00Z", None),
        ],
    )
    def test_parses_times_from_now(self, value: str, seconds: float | None) -> None:
        """The broker's Anthropic routes send an RFC 3339 time: seconds from ``now`` to it, capped."""
        result = reset_seconds(value, now=NOW)
        if seconds is None:
            assert result is None
        else:
            assert result == pytest.approx(seconds)

    def test_a_time_is_measured_from_the_wall_clock_by_default(self) -> None:
        """Without ``now`` a time long past is 0 s away and one far ahead is capped."""
        assert reset_seconds("2000-01-01T00:00:00Z") == 0.0
        assert reset_seconds("2999-01-01T00:00:00Z") == MAX_RESET_SECONDS

    @pytest.mark.parametrize("value", ["inf", "Infinity", "1e999", "nan"])
    def test_refuses_non_finite_values(self, value: str) -> None:
        """A provider's "inf" is not a duration: it must not become an endless back-off."""
        assert reset_seconds(value) is None
