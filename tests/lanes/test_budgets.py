"""Token and image budgets end to end (issue 14): under closed-loop load the router keeps every lane inside
its provider's TPM or IPM bucket (no provider 429 at all) and still uses at least 80% of what the
providers allow."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from router.config import DispatchOptions
from router.devnet import Devnet
from tests.lanes.conftest import (
    IMAGE_MODEL,
    IMAGE_PROVIDER,
    IMAGES_PER_MINUTE,
    LONG_MODEL,
    LONG_PROVIDERS,
    TOKENS_PER_MINUTE,
    OpenRouter,
)
from tests.lanes.support import (
    DRAIN_SLACK,
    Outcome,
    assert_no_provider_429,
    assert_ours_or_ok,
    chat_outcome,
    closed_loop,
    counters_at,
    images_outcome,
    long_prompt,
    provider_stats,
    tally,
    wallet_counters,
)

LOAD_SECONDS = 90.0
PROMPT_WORDS = 2000
MAX_TOKENS = 200
CHAT_CLIENTS = 32
IMAGE_CLIENTS = 4
IMAGE_SIZES = (2, 3)
# A queued request gives up after this long with our 429 and its client asks again: the queue stays full.
QUEUE_TIMEOUT = 20.0
REQUEST_TIMEOUT = 30.0
LEAST_SHARE = 0.8


class TestTokenBudget:
    async def test_long_prompts_use_the_tokens_per_minute_without_a_provider_429(
        self, lanes_devnet: Devnet, open_router: OpenRouter, http: aiohttp.ClientSession
    ) -> None:
        """Two providers advertising 3,000 TPM (RPM, burst and concurrency roomy) and 32 closed-loop
        clients sending 2,000-word prompts with ``max_tokens`` 200 for 90 s: no provider refuses any
        wallet anything (every rejection kind of the simulators' counters is 0), and the tokens the
        providers served our wallet within the window are at least 80% of what they allow it.

        Compared, summed over the two providers: the simulators' ``served_tokens`` for our wallet, read
        at the end of the window, against each provider's token bucket size for it (the advertised
        ``tokens_burst``: no explicit burst, so max(TPM // 6, context_length) = 8,192) plus TPM x the
        window's minutes (the window runs from the first request to the reading). Requests still queued
        at the end end in our 429 within the queue timeout; they are counted, not failures."""
        router, _ = await open_router(
            1, DispatchOptions(queue_timeout=QUEUE_TIMEOUT, request_timeout=REQUEST_TIMEOUT)
        )
        wallet = router.wallets[0].address
        providers = [lanes_devnet.providers[i] for i in LONG_PROVIDERS]
        replies: list[dict[str, Any]] = []

        async def ask(index: int) -> Outcome:
            messages = [{"role": "user", "content": long_prompt(PROMPT_WORDS, index)}]
            outcome, reply = await chat_outcome(
                router, model=LONG_MODEL, messages=messages, max_tokens=MAX_TOKENS, ignore_eos=True
            )
            if reply is not None:
                replies.append(reply)
            return outcome

        started = asyncio.get_running_loop().time()
        reading = asyncio.create_task(counters_at(http, providers, started + LOAD_SECONDS))
        outcomes = await closed_loop(CHAT_CLIENTS, LOAD_SECONDS, ask, drain=REQUEST_TIMEOUT + DRAIN_SLACK)
        window_stats, read_at = await reading

        assert_ours_or_ok(outcomes, REQUEST_TIMEOUT)
        assert all(r["usage"]["total_tokens"] == PROMPT_WORDS + MAX_TOKENS for r in replies)
        for provider in providers:
            assert_no_provider_429(await provider_stats(http, provider))
        minutes = (read_at - started) / 60
        allowed = sum(
            p.spec.limits.token_bucket_size(p.spec.context_length) + p.spec.limits.tokens_per_minute * minutes
            for p in providers
        )
        assert all(p.spec.limits.tokens_per_minute == TOKENS_PER_MINUTE for p in providers)
        served = sum(wallet_counters(stats, wallet)["served_tokens"] for stats in window_stats)
        print(
            f"\ntoken budget: served {served} tokens in {minutes:.2f} min ({served / minutes:.0f}/min) of "
            f"{allowed:.0f} allowed ({served / allowed:.1%}); outcomes {dict(tally(outcomes))}"
        )
        assert served >= LEAST_SHARE * allowed, (served, allowed)


class TestImageBudget:
    async def test_images_of_two_and_three_use_the_images_per_minute_without_a_provider_429(
        self, lanes_devnet: Devnet, open_router: OpenRouter, http: aiohttp.ClientSession
    ) -> None:
        """An image provider advertising 4 IPM and closed-loop clients (the openai SDK, in process)
        asking for 2 and 3 images in turn for 90 s: no provider refusal of any kind, and the images it
        served our wallet within the window are at least 80% of what it allows.

        Compared: the simulator's ``served_images`` for our wallet, read at the end of the window,
        against its image bucket size (the advertised ``images_burst``: no explicit burst, so
        max(1, IPM // 6) = 1 image, counted once, at the start) plus IPM x the window's minutes."""
        router, _ = await open_router(
            1, DispatchOptions(queue_timeout=QUEUE_TIMEOUT, request_timeout=REQUEST_TIMEOUT)
        )
        wallet = router.wallets[0].address
        provider = lanes_devnet.providers[IMAGE_PROVIDER]
        returned: list[tuple[int, int]] = []
        sdk = router.openai_client()

        async def ask(index: int) -> Outcome:
            n = IMAGE_SIZES[index % len(IMAGE_SIZES)]
            outcome, images = await images_outcome(router, sdk, model=IMAGE_MODEL, n=n)
            if outcome.kind == "ok":
                returned.append((n, images))
            return outcome

        started = asyncio.get_running_loop().time()
        reading = asyncio.create_task(counters_at(http, [provider], started + LOAD_SECONDS))
        async with sdk:
            outcomes = await closed_loop(
                IMAGE_CLIENTS, LOAD_SECONDS, ask, drain=REQUEST_TIMEOUT + DRAIN_SLACK
            )
        (window_stats,), read_at = await reading

        assert_ours_or_ok(outcomes, REQUEST_TIMEOUT)
        assert returned, "no image request was served"
        assert all(asked == got for asked, got in returned), returned
        assert_no_provider_429(await provider_stats(http, provider))
        limits = provider.spec.limits
        assert limits.images_per_minute == IMAGES_PER_MINUTE
        minutes = (read_at - started) / 60
        allowed = limits.image_bucket_size() + limits.images_per_minute * minutes
        served = wallet_counters(window_stats, wallet)["served_images"]
        print(
            f"\nimage budget: served {served} images in {minutes:.2f} min ({served / minutes:.2f}/min) of "
            f"{allowed:.1f} allowed ({served / allowed:.1%}); outcomes {dict(tally(outcomes))}"
        )
        assert served >= LEAST_SHARE * allowed, (served, allowed)
