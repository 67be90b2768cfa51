"""What the lane acceptance tests share: closed-loop clients, their outcomes, and the simulators' counters."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import openai

from router.client import Router
from router.devnet import DevnetProvider
from router.errors import NoProviderAvailable, RequestFailed, Saturated
from router.observability.events import BreakerChanged

# What a closed-loop client may get besides a reply: our own refusals, each with a Retry-After.
OURS = ("saturated", "unavailable")
# How long after its deadline a request may end: the loop's scheduling, not the router's.
DEADLINE_SLACK = 0.5
# Headroom over a load's window for its last requests to end (each is bounded by its own timeout).
DRAIN_SLACK = 30.0
_WORDS = ("network", "router", "provider", "wallet", "lane", "budget", "token", "settles", "answers", "fees")


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one request ended: ``kind`` is ``ok``, one of ``OURS``, or ``error`` (anything else)."""

    kind: str
    elapsed: float
    retry_after: str | None = None
    detail: str = ""


def long_prompt(words: int, seed: int = 0) -> str:
    """A prompt of exactly ``words`` whitespace-separated words (what the simulator counts as tokens)."""
    cycle = itertools.cycle(_WORDS[seed % len(_WORDS) :] + _WORDS[: seed % len(_WORDS)])
    return " ".join(itertools.islice(cycle, words))


async def chat_outcome(router: Router, **params: Any) -> tuple[Outcome, dict[str, Any] | None]:
    """One ``router.chat`` call's outcome (and its reply, when there is one)."""
    started = router.now()
    try:
        reply = await router.chat(**params)
    except (Saturated, NoProviderAvailable) as exc:
        kind = "saturated" if isinstance(exc, Saturated) else "unavailable"
        return Outcome(kind, router.now() - started, exc.headers.get("Retry-After"), exc.message), None
    except RequestFailed as exc:
        detail = f"{type(exc).__name__} {exc.status}: {exc}"
        return Outcome("error", router.now() - started, None, detail), None
    return Outcome("ok", router.now() - started), reply


async def images_outcome(
    router: Router, sdk: openai.AsyncOpenAI, *, model: str, n: int
) -> tuple[Outcome, int]:
    """One image request through the openai SDK: its outcome and the number of images it returned."""
    started = router.now()
    try:
        result = await sdk.images.generate(model=model, prompt="a lane of traffic at dusk", n=n)
    except openai.APIStatusError as exc:
        kind = {429: "saturated", 503: "unavailable"}.get(exc.status_code, "error")
        detail = f"{exc.status_code}: {exc.message}"
        return Outcome(kind, router.now() - started, exc.response.headers.get("Retry-After"), detail), 0
    return Outcome("ok", router.now() - started), len(result.data or [])


async def closed_loop(
    clients: int, seconds: float, send: Callable[[int], Awaitable[Outcome]], *, drain: float
) -> list[Outcome]:
    """``clients`` concurrent clients, each sending (``send(sequence number)``), waiting for the answer,
    and sending again until ``seconds`` have passed; returns every outcome once the last request ended.
    ``drain`` bounds how long the requests in flight at the end may take."""
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    sequence = itertools.count()
    outcomes: list[Outcome] = []

    async def client() -> None:
        while loop.time() < until:
            outcomes.append(await send(next(sequence)))

    async with asyncio.timeout(seconds + drain), asyncio.TaskGroup() as group:
        for _ in range(clients):
            group.create_task(client())
    return outcomes


def tally(outcomes: list[Outcome]) -> Counter[str]:
    return Counter(outcome.kind for outcome in outcomes)


def assert_ours_or_ok(outcomes: list[Outcome], timeout: float) -> None:
    """Every request ended within its deadline, in a reply or in our own 429/503 with a Retry-After."""
    errors = [o for o in outcomes if o.kind not in ("ok", *OURS)]
    assert not errors, f"{len(errors)} request(s) ended otherwise, e.g. {errors[:3]}"
    late = [o for o in outcomes if o.elapsed > timeout + DEADLINE_SLACK]
    assert not late, f"{len(late)} request(s) outlived their {timeout} s deadline, e.g. {late[:3]}"
    unhinted = [o for o in outcomes if o.kind in OURS and not _whole_seconds(o.retry_after)]
    assert not unhinted, f"{len(unhinted)} refusal(s) without a usable Retry-After, e.g. {unhinted[:3]}"


def _whole_seconds(value: str | None) -> bool:
    return value is not None and value.isdigit() and int(value) >= 1


async def provider_stats(http: aiohttp.ClientSession, provider: DevnetProvider) -> dict[str, Any]:
    """The simulator's own counters (its ``/admin/stats`` route)."""
    async with asyncio.timeout(10), http.get(provider.simulator.admin_url + "/admin/stats") as response:
        assert response.status == 200
        return dict(await response.json())


async def counters_at(
    http: aiohttp.ClientSession, providers: list[DevnetProvider], at: float
) -> tuple[list[dict[str, Any]], float]:
    """The providers' counters at loop time ``at`` (the end of a measured window), and the loop time
    they were read at."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, at - loop.time()))
    read_at = loop.time()
    return [await provider_stats(http, provider) for provider in providers], read_at


def wallet_counters(stats: dict[str, Any], address: str) -> dict[str, Any]:
    """One wallet's counters in a stats snapshot; the provider must have seen the wallet."""
    wallets: dict[str, Any] = stats["wallets"]
    counters = wallets.get(address.lower())
    assert counters is not None, f"the provider never saw wallet {address}"
    return dict(counters)


def provider_refusals(stats: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Every refusal the provider counted, by wallet and kind (429 kinds and provider-wide 503 kinds),
    leaving out the zeros."""
    found = {}
    for wallet, counters in stats["wallets"].items():
        kinds = {kind: count for kind, count in counters["rejections"].items() if count}
        if kinds:
            found[wallet] = kinds
    return found


def assert_no_provider_429(stats: dict[str, Any]) -> None:
    """The provider answered no 429 to anyone: no per-wallet refusal of any kind, none by status."""
    assert provider_refusals(stats) == {}
    assert "429" not in stats["refused"], stats["refused"]


def opened_breakers(events: list[Any]) -> list[BreakerChanged]:
    return [e for e in events if isinstance(e, BreakerChanged) and e.state == "open"]


def assert_breakers_closed(router: Router) -> None:
    """``router.providers()`` shows every provider's breaker closed."""
    states = {p["id"]: p["health"]["breaker"] for p in router.providers()}
    assert set(states.values()) == {"closed"}, states
