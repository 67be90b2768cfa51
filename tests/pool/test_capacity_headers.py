"""Lane capacity corrected by the provider's ``x-ratelimit-*`` reply headers (``Lease.observe``), and the
back-off a 429's reset headers ask for (``retry_seconds``), on a hand-moved clock."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from router.pool.capacity import Demand, Lease, MemoryCapacity, retry_seconds
from router.pool.limits import ProviderLimits
from router.pool.providers import Lane
from tests.pool.support import IMAGES, TOKENS, lane_of, refused, roomy, take, view
from tests.support import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def capacity(clock: FakeClock) -> MemoryCapacity:
    return MemoryCapacity(clock=clock)


def drained(capacity: MemoryCapacity, clock: FakeClock, limits: ProviderLimits) -> tuple[Lane, list[Lease]]:
    """A lane whose request bucket has just been emptied, and the leases that emptied it."""
    lane = lane_of(capacity, clock, limits)
    leases = [take(capacity, lane)]
    while (lease := capacity.try_acquire([lane], Demand(), clock.now)) is not None:
        leases.append(lease)
    return lane, leases


class TestObserveLimits:
    def test_a_reported_request_limit_replaces_the_advertised_one(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """Advertised 60/min, reported 120/min: after the correction a request token returns every 0.5 s.
        The broker had 2 before the first of our two requests, so none after the second; the next token
        is 0.5 s away at the reported rate (1 s at the advertised one)."""
        lane, leases = drained(
            capacity, clock, ProviderLimits(requests_per_minute=60, burst=3, max_concurrent=10)
        )
        leases[0].observe({"x-ratelimit-limit-requests": "120", "x-ratelimit-remaining-requests": "2"})
        assert refused(capacity, lane)
        assert capacity.wait(lane, Demand(), clock.now) == pytest.approx(0.5)

    def test_reported_tokens_turn_on_a_token_budget_the_provider_did_not_advertise(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """60000/min reported: a budget of 10000 (a sixth; the default context length is less) from now on."""
        lane = lane_of(capacity, clock, roomy())
        take(capacity, lane, demand=Demand(tokens=500)).observe({"x-ratelimit-limit-tokens": "60000"})
        assert view(capacity, lane).tokens == 10_000
        take(capacity, lane, demand=Demand(tokens=3000))
        assert view(capacity, lane).tokens == 7000

    def test_reported_images_turn_on_an_image_budget(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """60 images a minute reported: a budget of 10 (a sixth) from now on."""
        lane = lane_of(capacity, clock, roomy())
        take(capacity, lane, demand=Demand(images=1)).observe({"x-ratelimit-limit-images": "60"})
        assert view(capacity, lane).images == 10

    def test_the_advertised_limit_reported_back_changes_nothing(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """Headers that agree with what we count by do not start the buckets over."""
        lane, leases = drained(
            capacity, clock, ProviderLimits(requests_per_minute=60, burst=3, max_concurrent=10)
        )
        leases[0].observe({"x-ratelimit-limit-requests": "60"})
        assert refused(capacity, lane)

    def test_a_reported_token_limit_leaves_the_request_level_as_it_was(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """Learning the token limit says nothing about the request bucket: a drained lane stays drained
        (the provider's bucket did not refill because we learned something)."""
        lane, leases = drained(
            capacity, clock, ProviderLimits(requests_per_minute=60, burst=3, max_concurrent=10)
        )
        leases[0].observe({"x-ratelimit-limit-tokens": "60000"})
        assert refused(capacity, lane)
        assert view(capacity, lane).requests < 1

    @pytest.mark.parametrize(
        "value", ["abc", "", "  ", "1e3", "12.5", "0x20", "0", "-5", str(10**9 + 1), "nan", "inf"]
    )
    def test_a_garbage_limit_is_ignored(self, capacity: MemoryCapacity, clock: FakeClock, value: str) -> None:
        """A limit that is no whole number in range (or not positive) changes nothing: no new rate, no budget,
        no refill."""
        lane, leases = drained(
            capacity, clock, ProviderLimits(requests_per_minute=60, burst=3, max_concurrent=10)
        )
        leases[0].observe(
            {
                "x-ratelimit-limit-requests": value,
                "x-ratelimit-limit-tokens": value,
                "x-ratelimit-limit-images": value,
            }
        )
        assert refused(capacity, lane)
        assert capacity.wait(lane, Demand(), clock.now) == pytest.approx(1.0)
        assert (view(capacity, lane).tokens, view(capacity, lane).images) == (None, None)


class TestObserveRemaining:
    """The broker's ``x-ratelimit-remaining-*`` are its levels before it admitted the request (§4.4)."""

    def test_remaining_requests_lower_our_level(self, capacity: MemoryCapacity, clock: FakeClock) -> None:
        """The broker had 3 before this request, so 2 after it: ours (8 of 9) goes down to 2."""
        lane = lane_of(capacity, clock, ProviderLimits(requests_per_minute=60, burst=10, max_concurrent=10))
        lease = take(capacity, lane)
        lease.observe({"x-ratelimit-remaining-requests": "3"})
        assert view(capacity, lane).requests == pytest.approx(2.0)

    def test_requests_sent_after_this_one_are_counted_off(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """6 before the first of three requests: 6 less the three is 3."""
        lane = lane_of(capacity, clock, ProviderLimits(requests_per_minute=60, burst=10, max_concurrent=10))
        first = take(capacity, lane)
        take(capacity, lane)
        take(capacity, lane)
        first.observe({"x-ratelimit-remaining-requests": "6"})
        assert view(capacity, lane).requests == pytest.approx(3.0)

    def test_what_refilled_since_the_request_was_sent_is_counted_on(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """The reply came 1 s after the request at 60/min: one token refilled since the broker's count,
        so 3 - 1 + 1."""
        lane = lane_of(capacity, clock, ProviderLimits(requests_per_minute=60, burst=10, max_concurrent=10))
        lease = take(capacity, lane)
        clock.now += 1.0
        lease.observe({"x-ratelimit-remaining-requests": "3"})
        assert view(capacity, lane).requests == pytest.approx(3.0)

    @pytest.mark.parametrize("value", ["1000", "5000", "abc", "", "2.5", str(10**10)])
    def test_a_remaining_count_never_raises_our_level(
        self, capacity: MemoryCapacity, clock: FakeClock, value: str
    ) -> None:
        """A count at or above ours, or one we cannot read, leaves our levels where they are."""
        lane = lane_of(capacity, clock, ProviderLimits(requests_per_minute=60, burst=10, **TOKENS))
        lease = take(capacity, lane, demand=Demand(tokens=400))
        take(capacity, lane, demand=Demand(tokens=400))
        before = view(capacity, lane)
        lease.observe({"x-ratelimit-remaining-requests": value, "x-ratelimit-remaining-tokens": value})
        assert view(capacity, lane) == before

    def test_remaining_tokens_lower_our_level_less_what_is_in_flight(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """500 before this request, which (post-consume) the broker has not taken yet, nor the other in
        flight: 500 - 200 - 100 = 200."""
        lane = lane_of(capacity, clock, roomy(**TOKENS))
        lease = take(capacity, lane, demand=Demand(tokens=200))
        take(capacity, lane, demand=Demand(tokens=100))
        lease.observe({"x-ratelimit-remaining-tokens": "500"})
        assert view(capacity, lane).tokens == pytest.approx(200.0)

    def test_a_negative_remaining_count_shuts_the_lane(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """The broker's budget can be overdrawn (another client of the wallet); so can ours."""
        lane = lane_of(capacity, clock, roomy(**TOKENS))
        lease = take(capacity, lane, demand=Demand(tokens=200))
        lease.observe({"x-ratelimit-remaining-tokens": "-100"})
        assert view(capacity, lane).tokens == pytest.approx(-300.0)
        assert refused(capacity, lane)

    def test_remaining_images_lower_our_level_less_what_is_in_flight(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """As for tokens: 4 before this request for 2 images, which the broker takes after the reply: 2."""
        lane = lane_of(capacity, clock, roomy(**IMAGES))
        lease = take(capacity, lane, demand=Demand(images=2))
        lease.observe({"x-ratelimit-remaining-images": "4"})
        assert view(capacity, lane).images == pytest.approx(2.0)

    def test_header_names_are_matched_as_aiohttp_hands_them_over(
        self, capacity: MemoryCapacity, clock: FakeClock
    ) -> None:
        """Header names in any case, as aiohttp's case-insensitive mapping has them."""
        lane = lane_of(capacity, clock, ProviderLimits(requests_per_minute=60, burst=10, max_concurrent=10))
        lease = take(capacity, lane)
        lease.observe(CIMultiDict({"X-RateLimit-Remaining-Requests": "3"}))
        assert view(capacity, lane).requests == pytest.approx(2.0)


class TestRetrySeconds:
    @pytest.mark.parametrize(
        ("headers", "seconds"),
        [
            pytest.param({}, None, id="none"),
            pytest.param({"x-ratelimit-reset-requests": "2s"}, 2.0, id="requests"),
            pytest.param(
                {"x-ratelimit-reset-requests": "2s", "x-ratelimit-reset-tokens": "1m30s"}, 90.0, id="largest"
            ),
            pytest.param(
                {"x-ratelimit-reset-images": "250ms", "x-ratelimit-reset-requests": "0.1"}, 0.25, id="images"
            ),
            pytest.param(
                {"x-ratelimit-reset-requests": "soon", "x-ratelimit-reset-tokens": "3s"},
                3.0,
                id="garbage-skipped",
            ),
            pytest.param({"x-ratelimit-reset-tokens": "later"}, None, id="all-garbage"),
            pytest.param({"x-ratelimit-reset-tokens": "99h"}, 3600.0, id="capped"),
        ],
    )
    def test_the_largest_reset_is_when_every_bucket_is_back(
        self, headers: dict[str, str], seconds: float | None
    ) -> None:
        """A 429 may come from any of the buckets it names: the back-off lasts until the last one resets."""
        assert retry_seconds(headers) == (pytest.approx(seconds) if seconds is not None else None)
