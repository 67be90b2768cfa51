"""Every outcome class of a provider's reply (protocol.md §4.2, ``router.policy.outcome``), through the real
dispatch loop on the fake transport: what the caller gets, which provider served, what each failure costs
the provider (health, back-off, exclusion) and what the router reports.

Providers are static upstreams ranked a, b, c. A static upstream is not a 0G broker, so the broker's 400
texts (insufficient balance, session token, model not supported) are the client's there and pass through;
their failover at chain providers needs a chain lane (a wallet and its session tokens), which only a
network gives: that is the devnet tests' part.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from router.config import DiscoveryOptions
from router.errors import AllAttemptsFailed, Saturated, UpstreamRejected
from router.observability.events import BreakerChanged
from router.pool.health import HealthPolicy
from router.replies import Reply
from router.transport.fake import FakeReply, FakeRequest, FakeTransport, RateLimit
from tests.dispatch.conftest import CHAIN, QUICK, UPSTREAM_KEY, Routed, Serve, chat_call, fake_of

# One failure opens a breaker, for a short cooldown; the prober looks often. (The ejection cap is off, so
# that it does not reprieve the one open breaker of the model.)
EJECT_AT_ONCE = HealthPolicy(failure_threshold=1, cooldown=0.05, max_cooldown=0.2, max_ejection_percent=100)
PROBE_OFTEN = DiscoveryOptions(probe_interval=0.02)
BOUND = 3.0
FAILOVER_429S: list[RateLimit] = [
    "requests",
    "requests_legacy",
    "tokens",
    "concurrency",
    "token_budget",
    "ip",
]


async def plain(routed: Routed, *, deadline: float | None = None) -> Reply:
    """A plain chat call through dispatch (``deadline``: its timeout in seconds)."""
    reply = await routed.router.dispatch(chat_call(routed.router, timeout=deadline))
    assert isinstance(reply, Reply)
    return reply


def assert_untouched(routed: Routed, *providers: str) -> None:
    """No health charge, nothing in flight, no exclusion at ``providers``."""
    for provider in providers:
        assert routed.error_rate(provider) == 0.0, provider
        assert routed.in_flight(provider) == 0, provider
        assert routed.excluded(provider) is None, provider
        assert routed.provider(provider)["health"]["breaker"] == "closed", provider


class TestSuccess:
    async def test_the_first_provider_serves_and_is_credited(self, serve: Serve) -> None:
        """A 200 from the cheapest provider: its body, content type and receipts come back as they are;
        the request went with the upstream's key, and the router reports one finished request."""
        routed = await serve(fake_of({"a": FakeReply.chat("hi there", headers={"ZG-Res-Key": "res-1"})}))
        reply = await plain(routed)
        assert (reply.status, reply.provider, reply.attempts, reply.res_key) == (200, "a", 1, "res-1")
        assert reply.content_type == "application/json"
        assert json.loads(reply.body)["choices"][0]["message"]["content"] == "hi there"
        (request,) = routed.fake.requests
        assert (request.provider, request.path, request.stream) == ("a", "/chat/completions", False)
        assert request.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert request.json() == {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
        assert routed.provider("a")["health"]["latency_ms"] is not None
        assert_untouched(routed, *CHAIN)
        (finished,) = routed.finished()
        assert (finished.status, finished.provider, finished.attempts, finished.error) == (200, "a", 1, None)
        assert (finished.prompt_tokens, finished.completion_tokens) == (10, 2)
        assert routed.failures() == []

    async def test_the_library_chat_returns_the_completion(self, serve: Serve) -> None:
        routed = await serve(fake_of({"a": FakeReply.chat("library")}))
        answer = await routed.router.chat(model="m", messages=[{"role": "user", "content": "hi"}])
        assert answer["choices"][0]["message"]["content"] == "library"
        assert routed.tried() == ["a"]


class TestRateLimited:
    @pytest.mark.parametrize("kind", FAILOVER_429S)
    async def test_a_429_fails_over_without_a_health_charge_and_backs_the_lane_off(
        self, serve: Serve, kind: RateLimit
    ) -> None:
        """Every 429 body the broker sends: the next provider serves, the limited one keeps its health
        and is left alone for the reset its header gives (the next request goes straight to b)."""
        routed = await serve(fake_of({"a": FakeReply.rate_limited(kind, reset="30s")}))
        first = await plain(routed)
        second = await plain(routed)
        assert (first.provider, first.attempts, second.provider, second.attempts) == ("b", 2, "b", 1)
        assert routed.tried() == ["a", "b", "b"]
        assert_untouched(routed, *CHAIN)
        assert 25 < routed.blocked_for("a") <= 30
        assert routed.blocked_for("b") == 0.0
        (failure,) = routed.failures()
        assert (failure.provider, failure.verdict, failure.status) == ("a", "rate_limited", 429)

    async def test_429s_do_not_use_up_the_attempt_budget(self, serve: Serve) -> None:
        """With one attempt allowed, two rate-limited providers still leave the third its try."""
        limited = FakeReply.rate_limited(reset="30s")
        routed = await serve(fake_of({"a": limited, "b": limited}), max_attempts=1)
        reply = await plain(routed)
        assert (reply.provider, reply.attempts) == ("c", 3)

    async def test_every_provider_rate_limited_is_our_429_at_the_deadline_not_theirs(
        self, serve: Serve
    ) -> None:
        """A provider's 429 never reaches the caller: with every lane backed off past the deadline, the
        request waits its time out and gets the router's own 429, with a Retry-After."""
        limited = FakeReply.rate_limited(reset="30s")
        routed = await serve(fake_of(dict.fromkeys(CHAIN, limited)))
        with pytest.raises(Saturated) as caught:
            await plain(routed, deadline=0.3)
        assert caught.value.status == 429
        assert "Retry-After" in caught.value.headers
        assert routed.tried() == list(CHAIN)
        assert_untouched(routed, *CHAIN)

    async def test_the_invalid_model_block_excludes_the_provider_as_misconfigured(self, serve: Serve) -> None:
        """Five wrong-model requests block the wallet there for an hour: no retry there helps."""
        routed = await serve(fake_of({"a": FakeReply.rate_limited("invalid_model")}))
        reply = await plain(routed)
        assert reply.provider == "b"
        assert routed.excluded("a") == "misconfigured"
        assert routed.error_rate("a") == 0.0
        assert routed.failures()[0].verdict == "misconfigured"


class TestBusy:
    """The broker's global cap (503 with Retry-After, or its "too many requests" body) is back-pressure:
    the provider is full, not ill. Issue 14: no breaker charge, the provider is held off, fail over."""

    @pytest.mark.parametrize(
        "reply",
        [FakeReply.busy(retry_after=30), FakeReply.busy(retry_after=None)],
        ids=["retry-after", "body-only"],
    )
    async def test_a_global_cap_503_fails_over_without_a_health_charge(
        self, serve: Serve, reply: FakeReply
    ) -> None:
        routed = await serve(fake_of({"a": reply}))
        first = await plain(routed)
        assert (first.provider, first.attempts) == ("b", 2)
        assert_untouched(routed, *CHAIN)
        (failure,) = routed.failures()
        assert (failure.provider, failure.status) == ("a", 503)
        assert failure.verdict != "unhealthy"

    async def test_a_busy_provider_is_left_alone_for_its_retry_after(self, serve: Serve) -> None:
        routed = await serve(fake_of({"a": FakeReply.busy(retry_after=30)}))
        await plain(routed)
        second = await plain(routed)
        assert (second.provider, second.attempts) == ("b", 1)
        assert routed.tried() == ["a", "b", "b"]
        assert 25 < routed.blocked_for("a") <= 30

    async def test_busy_503s_do_not_use_up_the_attempt_budget(self, serve: Serve) -> None:
        busy = FakeReply.busy(retry_after=30)
        routed = await serve(fake_of({"a": busy, "b": busy}), max_attempts=1)
        reply = await plain(routed)
        assert (reply.provider, reply.attempts) == ("c", 3)

    async def test_a_plain_503_is_still_ill_health(self, serve: Serve) -> None:
        """A 503 that is neither the global cap's body nor carries a Retry-After counts against health."""
        routed = await serve(fake_of({"a": FakeReply.http_error(503)}))
        reply = await plain(routed)
        assert reply.provider == "b"
        assert routed.error_rate("a") > 0
        assert routed.failures()[0].verdict == "unhealthy"


class TestUnhealthy:
    @pytest.mark.parametrize("status", [500, 502, 504, 408])
    async def test_a_server_error_fails_over_and_charges_the_provider_once(
        self, serve: Serve, status: int
    ) -> None:
        routed = await serve(fake_of({"a": FakeReply.http_error(status)}))
        reply = await plain(routed)
        assert (reply.provider, reply.attempts) == ("b", 2)
        assert routed.error_rate("a") == pytest.approx(0.2)  # one failure at the EWMA's alpha
        assert_untouched(routed, "b", "c")
        (failure,) = routed.failures()
        assert (failure.provider, failure.verdict, failure.status) == ("a", "unhealthy", status)

    async def test_a_request_failing_everywhere_charges_only_its_first_provider(self, serve: Serve) -> None:
        """Failures alike at every provider are evidence against the request: one charge per request.
        The caller gets a 502 naming the attempts and the last failure."""
        routed = await serve(fake_of(dict.fromkeys(CHAIN, FakeReply.http_error(502))))
        with pytest.raises(AllAttemptsFailed) as caught:
            await plain(routed)
        error = caught.value
        assert (error.status, error.attempts) == (502, 3)
        assert error.message == "every attempt failed (3 over 3 provider(s)); last: c: 502 Bad Gateway"
        assert routed.tried() == list(CHAIN)
        assert routed.error_rate("a") == pytest.approx(0.2)
        assert (routed.error_rate("b"), routed.error_rate("c")) == (0.0, 0.0)
        assert [f.provider for f in routed.failures()] == list(CHAIN)
        (finished,) = routed.finished()
        assert (finished.status, finished.provider) == (502, None)

    async def test_a_refused_connection_fails_over_and_charges_the_provider(self, serve: Serve) -> None:
        routed = await serve(fake_of({"a": FakeReply.unreachable()}))
        reply = await plain(routed)
        assert reply.provider == "b"
        assert routed.error_rate("a") == pytest.approx(0.2)
        (failure,) = routed.failures()
        assert (failure.verdict, failure.status) == ("unhealthy", None)
        assert failure.detail.startswith("provider a: cannot connect (")

    @pytest.mark.parametrize(
        "reply",
        [
            FakeReply(body=b"<html>upstream error</html>", headers={"Content-Type": "text/html"}),
            FakeReply(body=b'{"choices": [{"index": 0,'),
            FakeReply(body=b"[1, 2, 3]"),
        ],
        ids=["html", "truncated-json", "json-array"],
    )
    async def test_a_2xx_that_is_not_a_json_object_fails_over_as_ill_health(
        self, serve: Serve, reply: FakeReply
    ) -> None:
        """A 200 whose body the client could not parse is the provider's failure, never the client's."""
        routed = await serve(fake_of({"a": reply}))
        served = await plain(routed)
        assert served.provider == "b"
        assert json.loads(served.body)["choices"][0]["message"]["content"] == "fine"
        assert routed.error_rate("a") == pytest.approx(0.2)
        assert "not a JSON object" in routed.failures()[0].detail

    async def test_a_2xx_body_cut_off_fails_over(self, serve: Serve) -> None:
        routed = await serve(fake_of({"a": FakeReply(body={"id": "x"}, break_after=0)}))
        served = await plain(routed)
        assert served.provider == "b"
        assert routed.error_rate("a") == pytest.approx(0.2)
        assert "ClientPayloadError" in routed.failures()[0].detail


class TestProbes:
    """An ejected provider comes back through the prober's free ``GET`` (the fake's ``get_json``), with no
    paid request spent on it; a probe that fails keeps it out."""

    async def test_an_answered_probe_closes_the_breaker(self, serve: Serve) -> None:
        probed = asyncio.Event()

        def on_get(request: FakeRequest) -> FakeReply:
            if request.provider == "a":
                probed.set()
            return FakeReply.models("m")

        fake = FakeTransport(
            lambda r: FakeReply.http_error(502) if r.provider == "a" else FakeReply.chat(),
            on_get=on_get,
            options=QUICK,
        )
        routed = await serve(fake, health=EJECT_AT_ONCE, discovery=PROBE_OFTEN)
        closed = asyncio.Event()
        routed.router.subscribe(
            lambda e: closed.set() if e == BreakerChanged("a", "closed") else None,
        )
        assert (await plain(routed)).provider == "b"
        assert routed.provider("a")["health"]["breaker"] == "open"
        async with asyncio.timeout(BOUND):
            await probed.wait()
            await closed.wait()
        (probe, *_) = [g for g in routed.fake.gets if g.provider == "a"]
        assert (probe.method, probe.url) == ("GET", "http://a.test/v1/models")
        assert probe.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert routed.provider("a")["health"]["breaker"] == "closed"
        assert routed.tried() == ["a", "b"]  # no paid request went to a meanwhile

    async def test_a_failed_probe_keeps_the_provider_out(self, serve: Serve) -> None:
        probes = 0
        reprobed = asyncio.Event()

        def on_get(request: FakeRequest) -> FakeReply:
            nonlocal probes
            if request.provider == "a":
                probes += 1
                if probes == 2:
                    reprobed.set()
            return FakeReply.http_error(503)

        fake = FakeTransport(
            lambda r: FakeReply.http_error(502) if r.provider == "a" else FakeReply.chat(),
            on_get=on_get,
            options=QUICK,
        )
        routed = await serve(fake, health=EJECT_AT_ONCE, discovery=PROBE_OFTEN)
        await plain(routed)
        async with asyncio.timeout(BOUND):
            await reprobed.wait()
        assert routed.provider("a")["health"]["breaker"] != "closed"
        assert routed.tried() == ["a", "b"]


class TestMisconfigured:
    @pytest.mark.parametrize("status", [401, 403, 404, 410])
    async def test_our_credentials_or_a_stale_route_exclude_the_provider_and_fail_over(
        self, serve: Serve, status: int
    ) -> None:
        """401/403 are our credentials, 404/410 a route or model it no longer serves: not the client's,
        not ill health. The provider is left out for a while; the next request skips it."""
        routed = await serve(fake_of({"a": FakeReply.http_error(status, "nope")}))
        first = await plain(routed)
        second = await plain(routed)
        assert (first.provider, second.provider) == ("b", "b")
        assert routed.tried() == ["a", "b", "b"]
        assert routed.excluded("a") == "misconfigured"
        assert routed.error_rate("a") == 0.0
        assert routed.failures()[0].verdict == "misconfigured"

    @pytest.mark.parametrize("status", [301, 302, 307, 308])
    async def test_a_redirect_is_not_followed_and_excludes_the_provider(
        self, serve: Serve, status: int
    ) -> None:
        routed = await serve(fake_of({"a": FakeReply.redirect("http://elsewhere.test/v1/chat", status)}))
        reply = await plain(routed)
        assert reply.provider == "b"
        assert all("elsewhere" not in request.url for request in routed.fake.requests)
        assert routed.excluded("a") == "misconfigured"

    async def test_a_402_excludes_the_provider_as_unfunded_and_fails_over(self, serve: Serve) -> None:
        routed = await serve(fake_of({"a": FakeReply.http_error(402, "payment required")}))
        reply = await plain(routed)
        assert reply.provider == "b"
        assert routed.excluded("a") == "unfunded"
        assert routed.error_rate("a") == 0.0


class TestClientErrors:
    @pytest.mark.parametrize(
        "reply",
        [
            FakeReply.http_error(400, "This model's maximum context length is 8192 tokens"),
            FakeReply.http_error(413, "Request body size exceeds the maximum allowed size of 32MB"),
            FakeReply.http_error(422, "messages: field required"),
            # A static upstream is no 0G broker: the broker's texts are the client's there too.
            FakeReply.unfunded(),
            FakeReply.http_error(400, "invalid session token"),
        ],
        ids=["context-length", "too-large", "unprocessable", "balance-text", "token-text"],
    )
    async def test_the_clients_error_passes_through_without_failover_or_charge(
        self, serve: Serve, reply: FakeReply
    ) -> None:
        routed = await serve(fake_of({"a": reply}))
        with pytest.raises(UpstreamRejected) as caught:
            await plain(routed)
        error = caught.value
        assert (error.status, error.provider, error.attempts) == (reply.status, "a", 1)
        assert error.body == b"".join(reply.wire())
        assert error.content_type == "application/json"
        assert routed.tried() == ["a"]
        assert_untouched(routed, *CHAIN)

    async def test_an_upstream_echoing_our_key_has_it_blanked(self, serve: Serve) -> None:
        """A careless upstream that quotes our API key in its error must not hand it to the caller."""
        routed = await serve(fake_of({"a": FakeReply.http_error(400, f"bad key {UPSTREAM_KEY} for model")}))
        with pytest.raises(UpstreamRejected) as caught:
            await plain(routed)
        assert UPSTREAM_KEY.encode() not in caught.value.body
        assert json.loads(caught.value.body) == {"error": "bad key [redacted] for model"}


class TestAttemptBudget:
    async def test_the_budget_stops_the_failover_and_names_what_happened(self, serve: Serve) -> None:
        routed = await serve(fake_of(dict.fromkeys(CHAIN, FakeReply.http_error(502))), max_attempts=2)
        with pytest.raises(AllAttemptsFailed) as caught:
            await plain(routed)
        assert caught.value.attempts == 2
        assert caught.value.message == "every attempt failed (2 over 2 provider(s)); last: b: 502 Bad Gateway"
        assert routed.tried() == ["a", "b"]

    async def test_a_flaky_provider_retried_once_everything_else_failed(self, serve: Serve) -> None:
        """With a budget larger than the pool, the failover goes back to a provider that failed."""
        replies = {"a": [FakeReply.http_error(500), FakeReply.chat("second time")]}
        fake = FakeTransport.scripted(
            {**replies, "b": [FakeReply.http_error(502)], "c": [FakeReply.http_error(504)]},
            options=QUICK,
        )
        routed = await serve(fake, max_attempts=4)
        reply = await plain(routed)
        assert (reply.provider, reply.attempts) == ("a", 4)
        assert routed.tried() == ["a", "b", "c", "a"]
