"""The simulated provider's per-wallet limits: the broker's token bucket, concurrency cap and 429 bodies."""

from __future__ import annotations

import pytest

from router.devnet.simulator.limits import LimitExceeded, RateLimits, WalletLimits
from tests.support import FakeClock

ALICE = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
BOB = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limits(clock: FakeClock) -> WalletLimits:
    return WalletLimits(RateLimits(), clock=clock)


def admit_and_leave(limits: WalletLimits, user: str) -> None:
    with limits.admit(user):
        pass


class TestRequestsPerMinute:
    def test_a_burst_of_five_then_the_rpm_429(self, limits: WalletLimits) -> None:
        """Five back-to-back requests pass; the sixth gets the object-shaped rate_limit_error body."""
        for _ in range(5):
            admit_and_leave(limits, ALICE)
        with pytest.raises(LimitExceeded) as caught:
            admit_and_leave(limits, ALICE)
        assert caught.value.body == {
            "error": {
                "type": "rate_limit_error",
                "message": "Rate limit exceeded. Please slow down your request rate "
                "(limit: 30 requests/min).",
            }
        }

    def test_the_bucket_refills_at_thirty_per_minute(self, limits: WalletLimits, clock: FakeClock) -> None:
        """Empty bucket: one token after 2 s, not before; a minute refills only up to the burst."""
        for _ in range(5):
            admit_and_leave(limits, ALICE)
        clock.now += 1.9
        with pytest.raises(LimitExceeded):
            admit_and_leave(limits, ALICE)
        clock.now += 0.2
        admit_and_leave(limits, ALICE)
        clock.now += 60
        for _ in range(5):
            admit_and_leave(limits, ALICE)
        with pytest.raises(LimitExceeded):
            admit_and_leave(limits, ALICE)

    def test_wallets_are_limited_separately(self, limits: WalletLimits) -> None:
        for _ in range(5):
            admit_and_leave(limits, ALICE)
        admit_and_leave(limits, BOB)
        admit_and_leave(limits, BOB.lower())

    def test_headers_report_the_level_before_the_request(
        self, limits: WalletLimits, clock: FakeClock
    ) -> None:
        assert limits.headers(ALICE) == {
            "x-ratelimit-limit-requests": "30",
            "x-ratelimit-remaining-requests": "5",
            "x-ratelimit-reset-requests": "0s",
        }
        for _ in range(5):
            admit_and_leave(limits, ALICE)
        assert limits.headers(ALICE)["x-ratelimit-remaining-requests"] == "0"
        assert limits.headers(ALICE)["x-ratelimit-reset-requests"] == "2s"
        clock.now += 1.5
        assert limits.headers(ALICE)["x-ratelimit-reset-requests"] == "1s"


class TestConcurrency:
    def test_the_sixth_concurrent_request_gets_the_string_body(
        self, limits: WalletLimits, clock: FakeClock
    ) -> None:
        """Five held at once pass; the sixth (with RPM tokens to spare) gets the string-shaped 429."""
        limits = WalletLimits(RateLimits(requests_per_minute=600, burst=10), clock=clock)
        held = [limits.admit(ALICE) for _ in range(5)]
        for slot in held:
            slot.__enter__()
        with pytest.raises(LimitExceeded) as caught:
            admit_and_leave(limits, ALICE)
        assert caught.value.body == {
            "error": "Too many concurrent requests. You have 5 active requests (limit: 5). "
            "Please wait for some to complete."
        }
        for slot in held:
            slot.__exit__(None, None, None)
        assert limits.in_flight(ALICE) == 0
        assert limits.peak_in_flight[ALICE.lower()] == 5
        admit_and_leave(limits, ALICE)

    def test_a_failed_request_gives_its_slot_back(self, limits: WalletLimits) -> None:
        with pytest.raises(RuntimeError), limits.admit(ALICE):
            raise RuntimeError("upstream broke")
        assert limits.in_flight(ALICE) == 0

    def test_a_refused_request_still_spent_its_rpm_token(
        self, limits: WalletLimits, clock: FakeClock
    ) -> None:
        """The broker takes the RPM token before the concurrency check refuses (§4.7)."""
        limits = WalletLimits(RateLimits(burst=2, max_concurrent=1), clock=clock)
        with limits.admit(ALICE):
            with pytest.raises(LimitExceeded, match="concurrent"):
                admit_and_leave(limits, ALICE)
            assert limits.headers(ALICE)["x-ratelimit-remaining-requests"] == "0"
