"""What a provider's reply means: verdicts by status and broker message, busy 503s, error text, JSON
bodies."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest
from multidict import CIMultiDict

from router.policy.outcome import (
    Verdict,
    busy,
    classify,
    error_message,
    json_object,
    says_json,
)
from router.pool.providers import ProviderKind

CHAIN = ProviderKind.CHAIN
STATIC = ProviderKind.STATIC
# Live brokers wrap their 400s like this (protocol.md §3.3).
PREFIX = "Provider proxy: handle proxied service, validate request: "


def broker(message: str) -> bytes:
    """A broker error body: ``{"error": "<prefix><message>"}`` (protocol.md §3.3, §10.2)."""
    return json.dumps({"error": PREFIX + message}).encode()


def openai_error(message: str, type_: str = "invalid_request_error", code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "code": code}}).encode()


INSUFFICIENT = (
    "insufficient balance: your locked balance is 0.500000 0G, but the required minimum is 1.000000 0G "
    "(breakdown: minimum reserve 1.000000 0G + unsettled fees 0.000000 0G + current request fee "
    "0.000000 0G). Please add more funds with: "
    "0g-compute-cli transfer-fund --provider 0xabc --amount <amount>"
)
CONTEXT_LENGTH = openai_error(
    "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens.",
    code="context_length_exceeded",
)


class TestClassify:
    @pytest.mark.parametrize(
        ("status", "body", "kind", "verdict"),
        [
            # Success, whatever the body.
            pytest.param(200, b'{"id":"chatcmpl-1"}', CHAIN, Verdict.OK, id="200"),
            pytest.param(201, b"", STATIC, Verdict.OK, id="201-static"),
            pytest.param(204, b"", CHAIN, Verdict.OK, id="204"),
            # Redirects are not followed: the provider is not where its entry says (or is hostile).
            pytest.param(301, b"", CHAIN, Verdict.MISCONFIGURED, id="301"),
            pytest.param(302, b"Found", CHAIN, Verdict.MISCONFIGURED, id="302"),
            pytest.param(307, b"307: Temporary Redirect", CHAIN, Verdict.MISCONFIGURED, id="307"),
            pytest.param(308, b"", STATIC, Verdict.MISCONFIGURED, id="308-static"),
            pytest.param(304, b"", CHAIN, Verdict.MISCONFIGURED, id="304"),
            # Rate limits: both 429 shapes of §4.7, the per-IP limiter and the model-mismatch block.
            pytest.param(
                429,
                openai_error(
                    "Rate limit exceeded. Please slow down your request rate (limit: 30 requests/min).",
                    "rate_limit_error",
                ),
                CHAIN,
                Verdict.RATE_LIMITED,
                id="429-rpm-object",
            ),
            pytest.param(
                429,
                openai_error(
                    "Token rate limit exceeded. Please wait 5 seconds (limit: 1000 tokens/min).",
                    "rate_limit_error",
                ),
                CHAIN,
                Verdict.RATE_LIMITED,
                id="429-tpm-object",
            ),
            pytest.param(
                429,
                b'{"error":"Too many concurrent requests. You have 5 active requests (limit: 5). '
                b'Please wait for some to complete."}',
                CHAIN,
                Verdict.RATE_LIMITED,
                id="429-concurrency-string",
            ),
            pytest.param(
                429,
                b'{"error":"Too many requests. Please try again later."}',
                CHAIN,
                Verdict.RATE_LIMITED,
                id="429-per-ip",
            ),
            pytest.param(
                429,
                openai_error("Rate limited", "rate_limit_error", "rate_limit_exceeded"),
                STATIC,
                Verdict.RATE_LIMITED,
                id="429-static",
            ),
            # Busy or broken provider.
            pytest.param(
                503,
                b'{"error":"Server is currently processing too many requests. Please try again later."}',
                CHAIN,
                Verdict.UNHEALTHY,
                id="503-busy",
            ),
            pytest.param(502, b'{"error":"Bad Gateway"}', CHAIN, Verdict.UNHEALTHY, id="502"),
            pytest.param(504, b'{"error":"Gateway Timeout"}', CHAIN, Verdict.UNHEALTHY, id="504"),
            pytest.param(500, b"Internal Server Error", CHAIN, Verdict.UNHEALTHY, id="500-text"),
            pytest.param(
                503,
                openai_error("no provider", "service_unavailable"),
                STATIC,
                Verdict.UNHEALTHY,
                id="503-static",
            ),
            pytest.param(408, b"", CHAIN, Verdict.UNHEALTHY, id="408"),
            # Our credentials at that provider.
            pytest.param(
                401, openai_error("bad key", code="invalid_api_key"), STATIC, Verdict.MISCONFIGURED, id="401"
            ),
            pytest.param(
                401,
                openai_error("revoked", code="api_key_revoked"),
                CHAIN,
                Verdict.MISCONFIGURED,
                id="401-chain",
            ),
            pytest.param(
                403, openai_error("nope", "permission_error"), STATIC, Verdict.MISCONFIGURED, id="403"
            ),
            # A route or model gone from that provider.
            pytest.param(404, b"404 page not found", CHAIN, Verdict.MISCONFIGURED, id="404"),
            pytest.param(410, b"", CHAIN, Verdict.MISCONFIGURED, id="410-model-expired"),
            # Payment.
            pytest.param(
                402,
                openai_error("low", "payment_error", "insufficient_balance"),
                STATIC,
                Verdict.UNFUNDED,
                id="402",
            ),
            # 400 at a chain provider: the broker's message decides (§3.3, §4.2, §4.6, §10.2).
            pytest.param(400, broker(INSUFFICIENT), CHAIN, Verdict.UNFUNDED, id="400-insufficient-balance"),
            pytest.param(
                400,
                json.dumps({"error": INSUFFICIENT}).encode(),
                CHAIN,
                Verdict.UNFUNDED,
                id="400-insufficient-balance-unprefixed",
            ),
            pytest.param(
                400,
                broker("get account from contract, account not exist: execution reverted"),
                CHAIN,
                Verdict.UNFUNDED,
                id="400-account-not-exist",
            ),
            pytest.param(
                400,
                broker(
                    "user not acknowledge the provider, please use acknowledgeProviderSigner function in sdk "
                    "first, it will take effect in 2 minutes"
                ),
                CHAIN,
                Verdict.MISCONFIGURED,
                id="400-user-not-acknowledge",
            ),
            pytest.param(
                400,
                broker("service not acknowledge the tee signer"),
                CHAIN,
                Verdict.MISCONFIGURED,
                id="400-service-not-acknowledge",
            ),
            pytest.param(
                400,
                broker(
                    "missing or invalid Authorization header, "
                    "must be Bearer app-sk-<base64(rawMessage:signature)>"
                ),
                CHAIN,
                Verdict.MISCONFIGURED,
                id="400-missing-authorization",
            ),
            pytest.param(
                400,
                broker("invalid base64 in Authorization header: illegal base64 data at input byte 4"),
                CHAIN,
                Verdict.MISCONFIGURED,
                id="400-invalid-base64",
            ),
            pytest.param(
                400,
                broker("invalid Authorization payload, expect base64(rawMessage:signature)"),
                CHAIN,
                Verdict.MISCONFIGURED,
                id="400-invalid-payload",
            ),
            pytest.param(
                400,
                broker("invalid session token format in Authorization: unexpected end of JSON input"),
                CHAIN,
                Verdict.MISCONFIGURED,
                id="400-session-token-format",
            ),
            pytest.param(
                400,
                broker("session token is for different provider"),
                CHAIN,
                Verdict.MISCONFIGURED,
                id="400-session-token-other-provider",
            ),
            pytest.param(
                400,
                broker("ephemeral token must have an expiration time"),
                CHAIN,
                Verdict.MISCONFIGURED,
                id="400-ephemeral-token-no-expiry",
            ),
            pytest.param(
                400,
                broker("ephemeral token duration cannot exceed 24 hours"),
                CHAIN,
                Verdict.MISCONFIGURED,
                id="400-ephemeral-token-too-long",
            ),
            pytest.param(
                400,
                broker("session token expired"),
                CHAIN,
                Verdict.MISCONFIGURED,
                id="400-session-token-expired",
            ),
            pytest.param(
                400,
                broker("session token has been revoked (generation expired)"),
                CHAIN,
                Verdict.MISCONFIGURED,
                id="400-generation-expired",
            ),
            pytest.param(
                400,
                broker("invalid session token (future generation)"),
                CHAIN,
                Verdict.MISCONFIGURED,
                id="400-future-generation",
            ),
            pytest.param(
                400,
                broker("session token has been revoked"),
                CHAIN,
                Verdict.MISCONFIGURED,
                id="400-token-revoked",
            ),
            pytest.param(
                400,
                broker("invalid signature length"),
                CHAIN,
                Verdict.MISCONFIGURED,
                id="400-invalid-signature-length",
            ),
            pytest.param(
                400,
                broker("signature verification failed: address mismatch"),
                CHAIN,
                Verdict.MISCONFIGURED,
                id="400-signature-mismatch",
            ),
            pytest.param(
                400,
                broker('prepare request: model not supported: requested "gpt-5", accepted: [qwen-2.5-7b]'),
                CHAIN,
                Verdict.MISCONFIGURED,
                id="400-model-not-supported",
            ),
            pytest.param(
                400,
                openai_error("Endpoint not supported for this service"),
                CHAIN,
                Verdict.MISCONFIGURED,
                id="400-endpoint-not-supported-object",
            ),
            # Other 400s are the client's: do not fail over.
            pytest.param(400, CONTEXT_LENGTH, CHAIN, Verdict.CLIENT_ERROR, id="400-context-length"),
            pytest.param(
                400,
                b'{"error":"Request body size exceeds the maximum allowed size of 32MB"}',
                CHAIN,
                Verdict.CLIENT_ERROR,
                id="400-other-string",
            ),
            pytest.param(400, b"bad request", CHAIN, Verdict.CLIENT_ERROR, id="400-non-json"),
            pytest.param(400, b"", CHAIN, Verdict.CLIENT_ERROR, id="400-empty"),
            pytest.param(
                413,
                b'{"error":"Request body size exceeds the maximum allowed size of 32MB"}',
                CHAIN,
                Verdict.CLIENT_ERROR,
                id="413",
            ),
            pytest.param(422, openai_error("bad field"), STATIC, Verdict.CLIENT_ERROR, id="422"),
            # A static upstream's 400 is always the client's, whatever its text says.
            pytest.param(400, CONTEXT_LENGTH, STATIC, Verdict.CLIENT_ERROR, id="400-static-context-length"),
            pytest.param(
                400, broker(INSUFFICIENT), STATIC, Verdict.CLIENT_ERROR, id="400-static-insufficient-balance"
            ),
            pytest.param(
                400,
                openai_error("model not supported"),
                STATIC,
                Verdict.CLIENT_ERROR,
                id="400-static-model-not-supported",
            ),
        ],
    )
    def test_verdict(self, status: int, body: bytes, kind: ProviderKind, verdict: Verdict) -> None:
        """Each status and broker message maps to the verdict protocol.md §4.2 and §10 call for."""
        assert classify(status, body, kind) is verdict

    def test_kind_defaults_to_chain(self) -> None:
        """Without a kind, a 400 is read as a chain provider's: its message decides."""
        assert classify(400, broker(INSUFFICIENT)) is Verdict.UNFUNDED

    def test_matching_ignores_case(self) -> None:
        """Broker messages are matched case-insensitively."""
        assert classify(400, broker("INSUFFICIENT BALANCE")) is Verdict.UNFUNDED

    def test_balance_wins_over_an_auth_word_in_the_same_message(self) -> None:
        """The first rule that matches wins: an insufficient-balance text naming Authorization is unfunded."""
        body = broker("insufficient balance for the Authorization holder")
        assert classify(400, body) is Verdict.UNFUNDED


GLOBAL_CAP = b'{"error":"Server is currently processing too many requests. Please try again later."}'


class TestBusy:
    @pytest.mark.parametrize(
        ("status", "headers", "body", "expected"),
        [
            pytest.param(503, {}, GLOBAL_CAP, True, id="global-concurrency-cap-body"),
            pytest.param(503, {}, b'{"error":"Server is at capacity"}', True, id="global-rate-cap-body"),
            pytest.param(503, {"Retry-After": "2"}, b'{"error":"global rate limit"}', True, id="retry-after"),
            pytest.param(503, CIMultiDict({"retry-after": "1"}), b"", True, id="retry-after-any-case"),
            pytest.param(503, {}, b'{"error":"upstream unavailable"}', False, id="upstream-503"),
            pytest.param(503, {}, b"", False, id="bare-503"),
            pytest.param(502, {"Retry-After": "2"}, GLOBAL_CAP, False, id="other-5xx"),
            pytest.param(429, {"Retry-After": "2"}, GLOBAL_CAP, False, id="429"),
        ],
    )
    def test_only_the_brokers_global_cap_503_is_busy(
        self, status: int, headers: Mapping[str, str], body: bytes, expected: bool
    ) -> None:
        """A 503 is back-pressure when it carries one of the broker's global-cap messages (§4.2, §4.7) or
        a Retry-After (the server says when to come back); any other 503 is ill health."""
        assert busy(status, headers, body) is expected

    def test_classify_alone_calls_a_busy_503_unhealthy(self) -> None:
        """``busy`` is asked first by the dispatcher; ``classify`` knows nothing of the global cap."""
        assert classify(503, GLOBAL_CAP) is Verdict.UNHEALTHY
        assert Verdict.BUSY.value == "busy"


class TestErrorMessage:
    @pytest.mark.parametrize(
        ("body", "message"),
        [
            pytest.param(b'{"error":"Bad Gateway"}', "Bad Gateway", id="string"),
            pytest.param(
                b'{"error":{"type":"rate_limit_error","message":"slow down"}}', "slow down", id="object"
            ),
            pytest.param(
                b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}',
                "slow down",
                id="anthropic-wrapper",
            ),
            pytest.param(b'{"message":"top-level message"}', "top-level message", id="top-level-message"),
            pytest.param(b"upstream exploded", "upstream exploded", id="plain-text"),
            pytest.param(b"", "", id="empty"),
            pytest.param(b'{"error":{"code":5}}', '{"error":{"code":5}}', id="object-without-message"),
            pytest.param(b'{"error":42}', '{"error":42}', id="non-string-error"),
            pytest.param(b'["a","b"]', '["a","b"]', id="json-list"),
            pytest.param(b'"just a string"', '"just a string"', id="json-string"),
            pytest.param(b"\xff\xfe broken", "\ufffd\ufffd broken", id="invalid-utf8"),
        ],
    )
    def test_message_of_body(self, body: bytes, message: str) -> None:
        """The error text is taken from a string or object ``error`` (or ``message``), else the raw body."""
        assert error_message(body) == message

    def test_raw_fallback_is_capped_at_500_bytes(self) -> None:
        """A long non-JSON body is cut to its first 500 bytes."""
        assert error_message(b"x" * 2000) == "x" * 500


class TestJsonObject:
    @pytest.mark.parametrize(
        ("body", "parsed"),
        [
            pytest.param(
                b'{"id":"chatcmpl-1","choices":[]}', {"id": "chatcmpl-1", "choices": []}, id="object"
            ),
            pytest.param(b" {}\n", {}, id="empty-object"),
            pytest.param(b'{"id":"chatcmpl-1","choi', None, id="truncated"),
            pytest.param(b"", None, id="empty"),
            pytest.param(b"<html>busy</html>", None, id="html"),
            pytest.param(b"[1, 2]", None, id="list"),
            pytest.param(b'"text"', None, id="string"),
            pytest.param(b"null", None, id="null"),
            pytest.param(b"\xff\xfe", None, id="not-utf8"),
            pytest.param(b"[" * 100_000 + b"]" * 100_000, None, id="nested-too-deeply"),
        ],
    )
    def test_only_a_json_object_parses(self, body: bytes, parsed: dict[str, object] | None) -> None:
        """A body is a reply document only when it is a whole JSON object; anything else is None."""
        assert json_object(body) == parsed


class TestSaysJson:
    @pytest.mark.parametrize(
        ("content_type", "json"),
        [
            ("application/json", True),
            ("application/json; charset=utf-8", True),
            (" Application/JSON ;charset=utf-8", True),
            ("text/plain; charset=utf-8", False),
            ("text/vtt", False),
            ("application/jsonl", False),
            ("", False),
        ],
    )
    def test_content_types(self, content_type: str, json: bool) -> None:
        """Only application/json, whatever its case and parameters, says the body is JSON."""
        assert says_json(content_type) is json
