"""The simulated provider's per-wallet limits: the broker's token bucket, concurrency cap and 429 bodies;
and the whole limit model driven over HTTP with real session tokens on the devnet."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from router.devnet.simulator.limits import LimitExceeded, RateLimits, WalletLimits
from router.devnet.simulator.server import ProviderSimulator
from tests.support import CHAT, Client, FakeClock, chat_body

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


@asynccontextmanager
async def simulator(client: Client, **changes: Any) -> AsyncIterator[ProviderSimulator]:
    """Another simulator for the client's provider (same address, so the same sub-account) whose spec
    has ``changes``: the session devnet's own providers keep their limits."""
    provider = client.provider
    spec = replace(provider.spec, **changes)
    async with ProviderSimulator(provider.chain, provider.tee_signer, spec, settle_interval=None) as served:
        yield served


async def chat(
    client: Client, served: ProviderSimulator, authorization: str | None = None, **extra: Any
) -> aiohttp.ClientResponse:
    auth = authorization or await client.tokens.authorization(client.provider.address)
    body = chat_body(client.provider, **extra)
    return await client.http.post(served.url + CHAT, json=body, headers={"Authorization": auth})


async def admin(client: Client, served: ProviderSimulator, path: str, body: Any = None) -> Any:
    """GET (or with ``body``, POST) an admin route: its status and JSON."""
    url = served.admin_url + path
    request = client.http.get(url) if body is None else client.http.post(url, json=body)
    async with request as response:
        return response.status, await response.json()


class TestOverHttp:
    @pytest.mark.parametrize("stream", [False, True])
    async def test_a_big_reply_locks_the_wallet_out_with_the_tpm_429(
        self, client: Client, stream: bool
    ) -> None:
        """TPM 60 with a bucket of 30: a 42-token reply (2 prompt + 40 completion, the model made to talk
        until cut; a stream's when it ends) leaves -12, so the next request gets the token 429 saying how
        long to wait."""
        limits = RateLimits(requests_per_minute=600, burst=10, tokens_per_minute=60, token_burst=30)
        async with simulator(client, limits=limits) as served:
            first = await chat(client, served, max_tokens=40, ignore_eos=True, stream=stream)
            await first.read()
            assert first.status == 200
            assert first.headers["x-ratelimit-limit-tokens"] == "60"
            assert first.headers["x-ratelimit-remaining-tokens"] == "30"
            assert first.headers["x-ratelimit-reset-tokens"] == "0s"
            second = await chat(client, served)
            assert second.status == 429
            error = (await second.json())["error"]
            assert error["type"] == "rate_limit_error"
            wait = re.fullmatch(
                r"Token rate limit exceeded\. Please wait (\d+) seconds \(limit: 60 tokens/min\)\.",
                error["message"],
            )
            assert wait is not None, error
            assert 11 <= int(wait[1]) <= 13
            _, stats = await admin(client, served, "/admin/stats")
            wallet = stats["wallets"][client.address.lower()]
            assert wallet["rejections"]["tpm"] == 1
            assert (wallet["served_requests"], wallet["served_tokens"]) == (1, 42)
            assert len(wallet["admitted_at"]) == 1

    async def test_a_global_cap_is_a_503_with_retry_after_that_spends_no_wallet_token(
        self, client: Client
    ) -> None:
        """Global RPM 6 (a bucket of 1, a token every 10 s): the second request is shed with 503 and
        Retry-After; so is one with a bad token (the caps come before the session check); and neither
        took a token from the wallet's own RPM bucket."""
        async with simulator(client, limits=RateLimits(), global_requests_per_minute=6) as served:
            assert (await chat(client, served)).status == 200
            shed = await chat(client, served)
            assert shed.status == 503
            assert 9 <= int(shed.headers["Retry-After"]) <= 10
            assert (await shed.json()) == {
                "error": "Server is at capacity (global limit: 6 requests/min). Please try again later."
            }
            unchecked = await chat(client, served, authorization="Bearer app-sk-bm90IGEgdG9rZW4=")
            assert unchecked.status == 503
            assert served.limits.headers(client.address)["x-ratelimit-remaining-requests"] == "4"
            _, stats = await admin(client, served, "/admin/stats")
            assert stats["wallets"][client.address.lower()]["rejections"]["global_rate"] == 1
            assert stats["global_rejections"] == {"global_concurrency": 0, "global_rate": 2}
            assert stats["refused"]["503"] == 2

    async def test_limits_change_at_runtime_and_models_advertises_them(self, client: Client) -> None:
        async with simulator(client, limits=RateLimits()) as served:
            changes = {"tokens_per_minute": 600, "token_burst": 50, "max_global_concurrent": 7}
            status, view = await admin(client, served, "/admin/limits", changes)
            assert status == 200, view
            assert view == {
                **RateLimits(**{k: v for k, v in changes.items() if k != "max_global_concurrent"}).as_dict(),
                "max_global_concurrent": 7,
                "global_requests_per_minute": 0,
                "global_tokens_per_minute": 0,
            }
            async with client.http.get(served.url + "/v1/models") as response:
                (model,) = (await response.json())["data"]
            assert model["context_length"] == 8192
            assert model["rate_limits"] == {
                "requests_per_minute": 30,
                "burst": 5,
                "max_concurrent_requests": 5,
                "tokens_per_minute": 600,
                "tokens_burst": 50,
                "images_per_minute": 0,
                "images_burst": 0,
            }
            reply = await chat(client, served)
            assert (
                reply.headers["x-ratelimit-limit-tokens"],
                reply.headers["x-ratelimit-remaining-tokens"],
            ) == (
                "600",
                "50",
            )
            assert served.global_limits.max_concurrent == 7

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            ({"nonsense": 1}, "unknown limits: nonsense; known: requests_per_minute, "),
            ({"burst": 0}, "at least 1"),
            ({"token_burst": "lots"}, "whole number or null"),
            ({"max_global_concurrent": 1.5}, "whole number"),
            ([1, 2], "JSON object"),
        ],
    )
    async def test_bad_limits_are_refused_and_change_nothing(
        self, client: Client, body: Any, message: str
    ) -> None:
        async with simulator(client) as served:
            _, before = await admin(client, served, "/admin/limits")
            status, refused = await admin(client, served, "/admin/limits", body)
            assert status == 400
            assert message in refused["error"]
            assert (await admin(client, served, "/admin/limits")) == (200, before)
