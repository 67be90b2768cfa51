"""The simulated provider's whole limit model on a fake clock: TPM/IPM (post-consume), per-address
overrides, the KV budget, the provider-wide caps, the headers, the order of checks, the counters; and
the ``zg-router devnet`` flags that set them."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from typing import Any

import pytest

from router.cli import _parser
from router.devnet import ProviderSpec
from router.devnet.command import devnet_config
from router.devnet.simulator.limits import (
    ADMISSION_HISTORY,
    BUSY,
    GlobalLimits,
    LimitExceeded,
    ProviderBusy,
    RateLimits,
    WalletLimits,
)
from router.errors import ConfigError
from tests.support import FakeClock

ALICE = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
BOB = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
# Roomy RPM and concurrency, so only the dimension under test refuses.
ROOMY = RateLimits(requests_per_minute=6000, burst=1000, max_concurrent=100)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def serve(limits: WalletLimits, user: str, *, tokens: int = 0, images: int = 0, kv_tokens: int = 1) -> None:
    """One request of ``user`` that produces ``tokens`` and ``images``."""
    with limits.admit(user, kv_tokens=kv_tokens) as usage:
        usage.tokens, usage.images, usage.served = tokens, images, True


def refusal(limits: WalletLimits, user: str, *, kv_tokens: int = 1) -> LimitExceeded:
    with pytest.raises(LimitExceeded) as caught:
        serve(limits, user, kv_tokens=kv_tokens)
    return caught.value


def tpm(clock: FakeClock, service_type: str = "chatbot", **limits: int) -> WalletLimits:
    """TPM 600 (10 tokens a second), bucket 100, unless ``limits`` say otherwise."""
    chosen = {"tokens_per_minute": 600, "token_burst": 100, **limits}
    return WalletLimits(RateLimits(**{**ROOMY.as_dict(), **chosen}), service_type=service_type, clock=clock)


class TestTokensPerMinute:
    def test_a_big_reply_drives_the_bucket_negative_and_locks_the_wallet_out_until_it_refills(
        self, clock: FakeClock
    ) -> None:
        """100 in the bucket, 250 used: -150, refused (with the broker's body) until the level is above
        0 again, 15 s later at 10 tokens a second."""
        limits = tpm(clock)
        serve(limits, ALICE, tokens=250)
        refused = refusal(limits, ALICE)
        assert refused.kind == "tpm"
        assert refused.body == {
            "error": {
                "type": "rate_limit_error",
                "message": "Token rate limit exceeded. Please wait 16 seconds (limit: 600 tokens/min).",
            }
        }
        clock.now += 15
        assert "Please wait 1 seconds" in refusal(limits, ALICE).body["error"]["message"]
        clock.now += 0.1
        serve(limits, ALICE, tokens=1)

    def test_any_positive_level_admits_a_request_of_any_size(self, clock: FakeClock) -> None:
        """Admission reads the level only; the size of the reply is unknown until it is done."""
        limits = tpm(clock)
        serve(limits, ALICE, tokens=99)
        serve(limits, ALICE, tokens=5000)
        assert refusal(limits, ALICE).kind == "tpm"
        assert limits.headers(ALICE)["x-ratelimit-reset-tokens"] == "500s"

    def test_a_cancelled_request_is_debited_what_it_produced(self, clock: FakeClock) -> None:
        limits = tpm(clock)

        def cancelled_after_producing() -> None:
            with limits.admit(ALICE) as usage:
                usage.tokens = 130
                raise asyncio.CancelledError

        with pytest.raises(asyncio.CancelledError):
            cancelled_after_producing()
        assert refusal(limits, ALICE).kind == "tpm"
        assert limits.counters()[ALICE.lower()].served_tokens == 130

    def test_the_default_burst_is_a_sixth_of_the_rate_or_the_context_length(self) -> None:
        assert RateLimits(tokens_per_minute=60_000).token_bucket_size(8192) == 10_000
        assert RateLimits(tokens_per_minute=60_000).token_bucket_size(32_768) == 32_768
        assert RateLimits(tokens_per_minute=60_000, token_burst=500).token_bucket_size(32_768) == 500
        assert RateLimits(images_per_minute=10).image_bucket_size() == 1
        assert RateLimits(images_per_minute=60).image_bucket_size() == 10
        assert RateLimits(images_per_minute=60, image_burst=3).image_bucket_size() == 3

    def test_the_default_burst_follows_the_providers_context_length(self, clock: FakeClock) -> None:
        limits = WalletLimits(RateLimits(tokens_per_minute=60_000), context_length=32_768, clock=clock)
        assert limits.headers(ALICE)["x-ratelimit-remaining-tokens"] == "32768"

    @pytest.mark.parametrize("service_type", ["chatbot", "embedding", "speech-to-text"])
    def test_tpm_holds_for_token_services(self, clock: FakeClock, service_type: str) -> None:
        limits = tpm(clock, service_type)
        serve(limits, ALICE, tokens=101)
        assert refusal(limits, ALICE).kind == "tpm"

    @pytest.mark.parametrize("service_type", ["text-to-image", "image-editing"])
    def test_tpm_does_not_hold_for_image_services(self, clock: FakeClock, service_type: str) -> None:
        limits = tpm(clock, service_type)
        serve(limits, ALICE, tokens=101)
        serve(limits, ALICE)
        assert "x-ratelimit-limit-tokens" not in limits.headers(ALICE)


class TestImagesPerMinute:
    @pytest.mark.parametrize("service_type", ["text-to-image", "image-editing"])
    def test_images_are_post_consumed_with_the_image_body(self, clock: FakeClock, service_type: str) -> None:
        """IPM 6: a bucket of 1 image, one every 10 s; three images leave it at -2, 21 s from a slot."""
        limits = WalletLimits(
            RateLimits(**{**ROOMY.as_dict(), "images_per_minute": 6}),
            service_type=service_type,
            clock=clock,
        )
        serve(limits, ALICE, images=3)
        refused = refusal(limits, ALICE)
        assert refused.kind == "ipm"
        assert refused.body["error"] == {
            "type": "rate_limit_error",
            "message": "Image rate limit exceeded. Please wait 21 seconds (limit: 6 images/min).",
        }
        clock.now += 20.5
        serve(limits, ALICE, images=1)

    def test_ipm_does_not_hold_for_a_chatbot(self, clock: FakeClock) -> None:
        limits = WalletLimits(RateLimits(**{**ROOMY.as_dict(), "images_per_minute": 6}), clock=clock)
        serve(limits, ALICE, images=5)
        serve(limits, ALICE)
        assert not any(name.endswith("-images") for name in limits.headers(ALICE))


class TestOverrides:
    def test_an_address_in_any_case_gets_its_override_and_others_the_defaults(self, clock: FakeClock) -> None:
        roomy = RateLimits(**{**ROOMY.as_dict(), "tokens_per_minute": 6000, "token_burst": 1000})
        spec = ProviderSpec(limits=tpm(clock).limits, overrides={ALICE: roomy})
        assert set(spec.overrides) == {ALICE.lower()}
        limits = WalletLimits(spec.limits, overrides=spec.overrides, clock=clock)
        serve(limits, ALICE.upper().replace("0X", "0x"), tokens=500)
        serve(limits, ALICE, tokens=1)
        assert limits.headers(ALICE)["x-ratelimit-limit-tokens"] == "6000"
        serve(limits, BOB, tokens=500)
        assert refusal(limits, BOB).kind == "tpm"
        assert limits.headers(BOB)["x-ratelimit-limit-tokens"] == "600"

    def test_an_override_replaces_every_limit_of_its_wallet(self, clock: FakeClock) -> None:
        limits = WalletLimits(
            RateLimits(), overrides={ALICE: RateLimits(requests_per_minute=60, burst=2)}, clock=clock
        )
        serve(limits, ALICE)
        serve(limits, ALICE)
        refused = refusal(limits, ALICE)
        assert refused.kind == "rpm"
        assert "(limit: 60 requests/min)" in refused.body["error"]["message"]


class TestKvBudget:
    def test_tokens_in_flight_are_capped_and_given_back(self, clock: FakeClock) -> None:
        limits = WalletLimits(RateLimits(**{**ROOMY.as_dict(), "kv_token_budget": 100}), clock=clock)
        with limits.admit(ALICE, kv_tokens=60):
            refused = refusal(limits, ALICE, kv_tokens=50)
            assert refused.kind == "kv_budget"
            assert refused.body == {
                "error": {
                    "type": "rate_limit_error",
                    "code": "token_budget_exceeded",
                    "message": "Server is at capacity: this request's context does not fit in the "
                    "remaining KV cache budget. Please retry shortly.",
                },
                "used_tokens": 60,
                "budget_tokens": 100,
                "requested_tokens": 50,
            }
            serve(limits, ALICE, kv_tokens=40)
            serve(limits, BOB, kv_tokens=100)
        assert limits.kv_in_use(ALICE) == 0
        serve(limits, ALICE, kv_tokens=100)

    def test_a_request_heavier_than_the_budget_runs_alone(self, clock: FakeClock) -> None:
        limits = WalletLimits(RateLimits(**{**ROOMY.as_dict(), "kv_token_budget": 100}), clock=clock)
        with limits.admit(ALICE, kv_tokens=5000):
            assert limits.kv_in_use(ALICE) == 100
            assert refusal(limits, ALICE, kv_tokens=1).kind == "kv_budget"
        serve(limits, ALICE, kv_tokens=5000)

    def test_no_budget_no_limit(self, clock: FakeClock) -> None:
        limits = WalletLimits(ROOMY, clock=clock)
        with limits.admit(ALICE, kv_tokens=10**9):
            serve(limits, ALICE, kv_tokens=10**9)


class TestGlobalLimits:
    def test_the_concurrency_cap_is_a_503_with_retry_after_1(self, clock: FakeClock) -> None:
        caps = GlobalLimits(max_concurrent=2, clock=clock)
        with caps.enter(), caps.enter():
            with pytest.raises(ProviderBusy) as caught, caps.enter():
                pass
            assert (caught.value.body, caught.value.kind) == ({"error": BUSY}, "global_concurrency")
            assert caught.value.retry_after == 1
        with caps.enter():
            assert (caps.in_flight, caps.peak_in_flight) == (1, 2)
        assert caps.rejections == {"global_concurrency": 1, "global_rate": 0}

    def test_global_rpm_waits_for_its_next_token(self, clock: FakeClock) -> None:
        """6 a minute: a bucket of 1, a token every 10 s; Retry-After counts down to it."""
        caps = GlobalLimits(requests_per_minute=6, clock=clock)
        with caps.enter():
            pass
        with pytest.raises(ProviderBusy) as caught, caps.enter():
            pass
        assert caught.value.body == {
            "error": "Server is at capacity (global limit: 6 requests/min). Please try again later."
        }
        assert (caught.value.kind, caught.value.retry_after) == ("global_rate", 10)
        clock.now += 9.5
        with pytest.raises(ProviderBusy) as again, caps.enter():
            pass
        assert again.value.retry_after == 1
        clock.now += 0.6
        with caps.enter():
            pass

    def test_global_tpm_is_post_consumed(self, clock: FakeClock) -> None:
        """600 a minute: a bucket of 100; 160 used leaves -60, 7 s from a positive level."""
        caps = GlobalLimits(tokens_per_minute=600, clock=clock)
        with caps.enter() as usage:
            usage.tokens = 160
        with pytest.raises(ProviderBusy) as caught, caps.enter():
            pass
        assert caught.value.retry_after == 7
        assert "(global limit: 600 tokens/min)" in caught.value.body["error"]
        clock.now += 6.1
        with caps.enter():
            pass

    def test_global_tpm_does_not_hold_for_image_services(self, clock: FakeClock) -> None:
        caps = GlobalLimits(tokens_per_minute=600, service_type="text-to-image", clock=clock)
        for _ in range(3):
            with caps.enter() as usage:
                usage.tokens = 1000


class TestHeaders:
    def test_token_headers_show_the_level_before_the_request_clamped_at_0(self, clock: FakeClock) -> None:
        limits = tpm(clock)
        assert limits.headers(ALICE) == {
            "x-ratelimit-limit-requests": "6000",
            "x-ratelimit-remaining-requests": "1000",
            "x-ratelimit-reset-requests": "0s",
            "x-ratelimit-limit-tokens": "600",
            "x-ratelimit-remaining-tokens": "100",
            "x-ratelimit-reset-tokens": "0s",
        }
        serve(limits, ALICE, tokens=30)
        clock.now += 0.05
        assert limits.headers(ALICE)["x-ratelimit-remaining-tokens"] == "70"
        serve(limits, ALICE, tokens=220)
        headers = limits.headers(ALICE)
        assert headers["x-ratelimit-remaining-tokens"] == "0"
        assert headers["x-ratelimit-reset-tokens"] == "15s"

    def test_image_services_report_images(self, clock: FakeClock) -> None:
        limits = WalletLimits(RateLimits(images_per_minute=60), service_type="text-to-image", clock=clock)
        serve(limits, ALICE, images=4)
        headers = limits.headers(ALICE)
        assert (headers["x-ratelimit-limit-images"], headers["x-ratelimit-remaining-images"]) == ("60", "6")
        assert not any(name.endswith("-tokens") for name in headers)

    def test_without_tpm_or_ipm_only_the_request_headers(self, clock: FakeClock) -> None:
        assert set(WalletLimits(clock=clock).headers(ALICE)) == {
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        }


class TestOrderOfChecks:
    def test_rpm_comes_before_tpm(self, clock: FakeClock) -> None:
        limits = tpm(clock, requests_per_minute=60, burst=1)
        serve(limits, ALICE, tokens=1000)
        assert refusal(limits, ALICE).kind == "rpm"

    def test_tpm_comes_before_concurrency_and_its_refusal_still_takes_the_rpm_token(
        self, clock: FakeClock
    ) -> None:
        """One request held, another's reply locks the tokens out, the cap drops to 1: both would
        refuse, TPM speaks first, and the refused request spent an RPM token."""
        limits = tpm(clock, requests_per_minute=60, burst=4, max_concurrent=2)
        with limits.admit(ALICE):
            serve(limits, ALICE, tokens=1000)
            limits.reconfigure(replace(limits.limits, max_concurrent=1))
            assert limits.headers(ALICE)["x-ratelimit-remaining-requests"] == "2"
            assert refusal(limits, ALICE).kind == "tpm"
            assert limits.headers(ALICE)["x-ratelimit-remaining-requests"] == "1"

    def test_concurrency_comes_before_the_kv_budget(self, clock: FakeClock) -> None:
        limits = WalletLimits(
            RateLimits(**{**ROOMY.as_dict(), "max_concurrent": 1, "kv_token_budget": 10}), clock=clock
        )
        with limits.admit(ALICE, kv_tokens=10):
            assert refusal(limits, ALICE, kv_tokens=10).kind == "concurrency"

    def test_a_kv_refusal_still_took_its_rpm_token(self, clock: FakeClock) -> None:
        limits = WalletLimits(RateLimits(burst=3, kv_token_budget=10), clock=clock)
        with limits.admit(ALICE, kv_tokens=10):
            assert refusal(limits, ALICE, kv_tokens=1).kind == "kv_budget"
            assert limits.headers(ALICE)["x-ratelimit-remaining-requests"] == "1"


class TestCounters:
    def test_rejections_served_units_and_peaks_per_wallet(self, clock: FakeClock) -> None:
        limits = tpm(clock, max_concurrent=2)
        with limits.admit(ALICE), limits.admit(ALICE):
            assert refusal(limits, ALICE).kind == "concurrency"
        serve(limits, ALICE, tokens=150, images=2)
        assert refusal(limits, ALICE).kind == "tpm"
        limits.count_rejection(ALICE, "global_rate")
        counters = limits.counters()[ALICE.lower()].as_dict()
        assert counters["rejections"] == {
            "rpm": 0,
            "tpm": 1,
            "ipm": 0,
            "concurrency": 1,
            "kv_budget": 0,
            "global_concurrency": 0,
            "global_rate": 1,
        }
        assert (counters["served_requests"], counters["served_tokens"], counters["served_images"]) == (
            1,
            150,
            2,
        )
        assert (counters["in_flight"], counters["peak_in_flight"]) == (0, 2)
        assert counters["admitted_at"] == [clock.now] * 3
        assert limits.peak_in_flight == {ALICE.lower(): 2}

    def test_admission_times_keep_the_last_ten_thousand(self, clock: FakeClock) -> None:
        limits = WalletLimits(RateLimits(requests_per_minute=60_000_000, burst=10**6), clock=clock)
        for _ in range(ADMISSION_HISTORY + 5):
            clock.now += 0.001
            serve(limits, ALICE)
        admitted = limits.counters()[ALICE.lower()].admitted_at
        assert len(admitted) == ADMISSION_HISTORY
        assert admitted[-1] == clock.now
        assert admitted[0] == pytest.approx(clock.now - 0.001 * (ADMISSION_HISTORY - 1))


class TestReconfiguring:
    def test_new_limits_keep_the_levels_and_a_switched_on_dimension_starts_full(
        self, clock: FakeClock
    ) -> None:
        limits = WalletLimits(RateLimits(burst=5), clock=clock)
        for _ in range(4):
            serve(limits, ALICE)
        limits.reconfigure(RateLimits(burst=3, tokens_per_minute=600, token_burst=50))
        headers = limits.headers(ALICE)
        assert headers["x-ratelimit-remaining-requests"] == "1"
        assert headers["x-ratelimit-remaining-tokens"] == "50"
        limits.reconfigure(RateLimits(burst=10))
        assert limits.headers(ALICE)["x-ratelimit-remaining-requests"] == "1"
        assert "x-ratelimit-remaining-tokens" not in limits.headers(ALICE)

    def test_updated_checks_names_and_types(self) -> None:
        assert RateLimits().updated({"token_burst": None, "tokens_per_minute": 5}).tokens_per_minute == 5
        with pytest.raises(ConfigError, match="unknown rate limits: nonsense"):
            RateLimits().updated({"nonsense": 1})
        with pytest.raises(ConfigError, match="takes a whole number"):
            RateLimits().updated({"burst": 2.5})
        with pytest.raises(ConfigError, match="takes a whole number"):
            RateLimits().updated({"tokens_per_minute": True})

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"requests_per_minute": 0}, "at least 1"),
            ({"max_concurrent": 0}, "at least 1"),
            ({"tokens_per_minute": -1}, "0 \\(off\\) or more"),
            ({"token_burst": 0}, "at least 1 or null"),
        ],
    )
    def test_impossible_limits_are_refused(self, kwargs: dict[str, int], message: str) -> None:
        with pytest.raises(ConfigError, match=message):
            RateLimits(**kwargs)

    @pytest.mark.parametrize(
        "kwargs",
        [{"max_global_concurrent": 0}, {"global_tokens_per_minute": -1}, {"context_length": 0}],
    )
    def test_impossible_provider_caps_are_refused(self, kwargs: dict[str, Any]) -> None:
        with pytest.raises(ConfigError, match=re.escape(next(iter(kwargs)))):
            ProviderSpec(**kwargs)


class TestDevnetFlags:
    def test_limit_flags_set_every_providers_limits(self) -> None:
        flags = "--providers 2 --rpm 90 --burst 7 --max-concurrent 3 --tpm 6000 --ipm 6 --global-concurrent 9"
        config = devnet_config(_parser().parse_args(["devnet", *flags.split()]))
        expected = RateLimits(
            requests_per_minute=90, burst=7, max_concurrent=3, tokens_per_minute=6000, images_per_minute=6
        )
        assert [(s.limits, s.max_global_concurrent) for s in config.providers] == [(expected, 9)] * 2

    def test_without_flags_the_specs_defaults(self) -> None:
        config = devnet_config(_parser().parse_args(["devnet"]))
        assert {(s.limits, s.max_global_concurrent) for s in config.providers} == {
            (RateLimits(), ProviderSpec().max_global_concurrent)
        }

    def test_help_names_the_units_and_the_true_defaults(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit):
            _parser().parse_args(["devnet", "--help"])
        text = " ".join(capsys.readouterr().out.split())
        default = RateLimits()
        for flag, words in (
            ("--rpm", f"requests per minute per wallet (default {default.requests_per_minute})"),
            ("--burst", f"back to back (default {default.burst})"),
            ("--max-concurrent", f"in flight (default {default.max_concurrent})"),
            ("--tpm", "tokens per minute per wallet; 0 = off (default)"),
            ("--ipm", "images per minute per wallet; 0 = off (default)"),
            ("--global-concurrent", f"together (default {ProviderSpec().max_global_concurrent})"),
        ):
            assert f"{flag} N every provider's limit: " in text
            assert words in text

    @pytest.mark.parametrize("flag", ["--rpm", "--burst", "--max-concurrent", "--global-concurrent"])
    def test_a_zero_where_zero_means_nothing_is_a_usage_error(self, flag: str) -> None:
        with pytest.raises(SystemExit):
            _parser().parse_args(["devnet", flag, "0"])
