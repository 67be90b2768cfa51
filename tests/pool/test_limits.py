"""The per-provider gate: token bucket, concurrency cap and back-off, on a hand-moved event-loop clock."""

from __future__ import annotations

import asyncio
import math

import pytest

from router.errors import ConfigError
from router.pool.limits import Gate, ProviderLimits


class LoopTime:
    """The running loop's ``time``, moved by hand (after aiolimiter's own ``MockLoopTime``)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def loop_time(monkeypatch: pytest.MonkeyPatch) -> LoopTime:
    """Freeze the running loop's clock; aiolimiter reads it. Tests using it never yield to the loop."""
    loop = asyncio.get_running_loop()
    fake = LoopTime(loop.time())
    monkeypatch.setattr(loop, "time", fake)
    return fake


async def take_all(gate: Gate) -> int:
    """Take tokens while the bucket has any; returns how many there were."""
    taken = 0
    while gate.has_token():
        await gate.take()
        taken += 1
    return taken


class TestBucket:
    @pytest.mark.parametrize(("burst", "tokens"), [(1, 1), (2, 1), (3, 2), (10, 9)])
    async def test_a_full_bucket_gives_one_token_less_than_burst_then_none(
        self, loop_time: LoopTime, burst: int, tokens: int
    ) -> None:
        """A fresh gate hands out ``burst - 1`` tokens (at least 1) at once, keeping one for wire time."""
        gate = Gate(ProviderLimits(requests_per_minute=60, burst=burst, max_concurrent=100))
        assert await take_all(gate) == tokens
        assert not gate.has_token()

    async def test_one_token_comes_back_per_interval(self, loop_time: LoopTime) -> None:
        """At 60/min a token returns each second; a part of a second gives none."""
        gate = Gate(ProviderLimits(requests_per_minute=60, burst=3, max_concurrent=100))
        await take_all(gate)
        loop_time.now += 0.9
        assert not gate.has_token()
        loop_time.now += 0.1
        assert await take_all(gate) == 1

    async def test_an_idle_bucket_refills_only_up_to_its_capacity(self, loop_time: LoopTime) -> None:
        """A long idle spell gives back no more than the full bucket (``burst - 1``)."""
        gate = Gate(ProviderLimits(requests_per_minute=60, burst=4, max_concurrent=100))
        await take_all(gate)
        loop_time.now += 3600
        assert await take_all(gate) == 3

    async def test_rate_margin_slows_the_bucket(self, loop_time: LoopTime) -> None:
        """A margin of 0.5 halves the rate: a token every 2 s instead of every 1 s."""
        gate = Gate(ProviderLimits(requests_per_minute=60, burst=1, max_concurrent=100), rate_margin=0.5)
        assert gate.seconds_per_request == pytest.approx(2.0)
        await take_all(gate)
        loop_time.now += 1.5
        assert not gate.has_token()
        loop_time.now += 0.5
        assert gate.has_token()

    async def test_take_does_not_suspend_when_room_and_token_hold(self, loop_time: LoopTime) -> None:
        """``take`` right after ``has_room`` and ``has_token`` finishes on its first step."""
        gate = Gate(ProviderLimits(requests_per_minute=60, burst=3, max_concurrent=5))
        for _ in range(2):
            assert gate.has_room(loop_time.now)
            assert gate.has_token()
            step = gate.take()
            with pytest.raises(StopIteration):
                step.send(None)
        assert gate.in_flight == 2

    async def test_a_banked_token_is_used_before_the_bucket(self, loop_time: LoopTime) -> None:
        """A token ``refill`` took is spent by the next ``take``, without suspending, then it is gone."""
        gate = Gate(ProviderLimits(requests_per_minute=60, burst=1, max_concurrent=5))
        await gate.refill()
        assert not gate.limiter.has_capacity()
        assert gate.has_token()
        step = gate.take()
        with pytest.raises(StopIteration):
            step.send(None)
        assert not gate.has_token()
        assert gate.in_flight == 1

    async def test_tokens_counts_the_headroom_as_it_drains_and_refills(self, loop_time: LoopTime) -> None:
        """``tokens()`` (the metrics' limiter headroom) is what ``take`` could still get, banked included."""
        gate = Gate(ProviderLimits(requests_per_minute=60, burst=4, max_concurrent=100))
        assert gate.tokens() == 3
        await gate.take()
        assert gate.tokens() == 2
        await take_all(gate)
        assert gate.tokens() == 0
        loop_time.now += 1.0
        assert gate.tokens() == 1
        await gate.refill()
        assert gate.tokens() == 1  # the banked token, the bucket itself empty again
        loop_time.now += 3600
        assert gate.tokens() == 4  # a full bucket plus the banked one


class TestRoom:
    async def test_concurrency_cap_closes_room_and_release_reopens_it(self, loop_time: LoopTime) -> None:
        """With ``max_concurrent=2``, two takes fill the gate; one release frees a slot."""
        gate = Gate(ProviderLimits(requests_per_minute=600, burst=10, max_concurrent=2))
        now = loop_time.now
        await gate.take()
        assert gate.has_room(now)
        await gate.take()
        assert not gate.has_room(now)
        gate.release()
        assert gate.has_room(now)
        assert gate.in_flight == 1

    def test_back_off_blocks_until_the_given_time(self) -> None:
        """After ``back_off(t)`` there is no room before ``t`` and room again at ``t``."""
        gate = Gate(ProviderLimits())
        gate.back_off(1005.0)
        assert not gate.has_room(1004.9)
        assert gate.has_room(1005.0)

    def test_an_earlier_back_off_does_not_shorten_a_later_one(self) -> None:
        """Two 429s: the later ``until`` stands."""
        gate = Gate(ProviderLimits())
        gate.back_off(1010.0)
        gate.back_off(1003.0)
        assert gate.blocked_until == 1010.0
        assert not gate.has_room(1005.0)


class TestReconfigure:
    async def test_new_limits_replace_cap_rate_and_refill_the_bucket(self, loop_time: LoopTime) -> None:
        """Reconfiguring keeps in-flight requests but adopts the new cap, rate and a full new bucket."""
        gate = Gate(ProviderLimits(requests_per_minute=60, burst=3, max_concurrent=2))
        await take_all(gate)
        gate.reconfigure(ProviderLimits(requests_per_minute=120, burst=5, max_concurrent=8), 1.0)
        assert gate.in_flight == 2
        assert gate.max_concurrent == 8
        assert gate.seconds_per_request == pytest.approx(0.5)
        assert await take_all(gate) == 4

    @pytest.mark.parametrize("margin", [0.0, -0.5, 1.01])
    def test_rate_margin_outside_zero_to_one_is_refused(self, margin: float) -> None:
        """``rate_margin`` must lie in (0, 1], at construction and on reconfigure."""
        with pytest.raises(ConfigError):
            Gate(ProviderLimits(), rate_margin=margin)
        gate = Gate(ProviderLimits())
        with pytest.raises(ConfigError):
            gate.reconfigure(ProviderLimits(), margin)

    def test_repr_shows_slots_tokens_and_rate(self) -> None:
        """The repr is one line: in-flight over cap, banked tokens, rate and our bucket's size."""
        gate = Gate(ProviderLimits(requests_per_minute=30, burst=5, max_concurrent=4))
        assert repr(gate) == "<Gate in_flight=0/4 banked=0 rate=30.0/min burst=4>"


class TestProviderLimits:
    @pytest.mark.parametrize(
        "kwargs",
        [
            {"requests_per_minute": 0},
            {"requests_per_minute": -30},
            {"burst": 0},
            {"burst": -1},
            {"max_concurrent": 0},
            {"max_concurrent": -5},
        ],
        ids=lambda kwargs: "{}={}".format(*next(iter(kwargs.items()))),
    )
    def test_non_positive_limits_are_refused(self, kwargs: dict[str, float]) -> None:
        """A zero or negative rate, burst or cap is a configuration error."""
        with pytest.raises(ConfigError):
            ProviderLimits(**kwargs)

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"requests_per_minute": math.nan},
            {"burst": math.nan},
            {"max_concurrent": math.nan},
            {"requests_per_minute": math.inf},
        ],
        ids=["rpm-nan", "burst-nan", "max_concurrent-nan", "rpm-inf"],
    )
    def test_non_finite_limits_are_refused(self, kwargs: dict[str, float]) -> None:
        """NaN (TOML allows ``nan``) or an infinite rate is a configuration error, not a broken gate."""
        with pytest.raises(ConfigError):
            ProviderLimits(**kwargs)

    def test_defaults_are_the_brokers(self) -> None:
        """Without advertised limits a provider gets 30/min, burst 5, 5 at once."""
        assert ProviderLimits() == ProviderLimits(requests_per_minute=30, burst=5, max_concurrent=5)
