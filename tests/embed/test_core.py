"""The face-neutral core's mapping, without a network: routes, gateway keys, request ids and errors
are decided here once for every face (the aiohttp gateway and the in-process transports)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from multidict import CIMultiDict

from router.client import Router
from router.config import RouterConfig, StaticUpstream
from router.core import Core, failure, request_id
from router.errors import Saturated, UpstreamRejected

KEY = "sk-core-0123456789abcdef"


class Incoming:
    """A request as a face hands it over: headers looked up case-insensitively, as aiohttp's are."""

    def __init__(self, method: str, path: str, body: bytes = b"", **headers: str) -> None:
        self.method = method
        self.path = path
        self.headers = CIMultiDict(headers)
        self._body = body

    async def read(self) -> bytes:
        return self._body


def core(**options: Any) -> Core:
    upstream = StaticUpstream(name="up", url="http://127.0.0.1:9/v1", models=("m",))
    return Core(Router(RouterConfig(static_upstreams=(upstream,))), **options)


def error_of(body: bytes) -> dict[str, Any]:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return dict(error)


async def test_a_missing_or_wrong_key_is_a_401_before_anything_else() -> None:
    """With gateway keys set, a request without one, or with another, is refused with its own code."""
    guarded = core(api_keys=(KEY,))
    missing = await guarded.handle(Incoming("POST", "/v1/chat/completions", b"{}"))
    wrong = await guarded.handle(Incoming("GET", "/v1/models", Authorization="Bearer sk-other"))
    assert (missing.status, error_of(missing.body)["code"]) == (401, "missing_api_key")
    assert (wrong.status, error_of(wrong.body)["code"]) == (401, "invalid_api_key")
    assert missing.headers["Content-Type"].startswith("application/json")


async def test_without_keys_no_key_is_asked_for() -> None:
    """The in-process core has no keys: a request's own errors come first (here, a body that is not
    JSON), not a 401."""
    answer = await core().handle(Incoming("POST", "/v1/embeddings", b"not json"))
    assert answer.status == 400
    assert error_of(answer.body)["message"].startswith("the request body is not valid JSON")


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/chat/completions", 405, "method_not_allowed"),
        ("POST", "/v1/models", 405, "method_not_allowed"),
        ("POST", "/admin/balance", 405, "method_not_allowed"),
        ("DELETE", "/admin/verify/abc", 405, "method_not_allowed"),
        ("GET", "/v2/models", 404, "not_found"),
    ],
)
async def test_wrong_methods_on_known_paths_are_405_and_the_rest_404(
    method: str, path: str, status: int, code: str
) -> None:
    """A path the core or its face serves, with another method, is a 405; any other path a 404."""
    answer = await core(face_paths=("/admin/balance",), face_prefixes=("/admin/verify/",)).handle(
        Incoming(method, path)
    )
    assert (answer.status, error_of(answer.body)["code"]) == (status, code)
    assert answer.headers["x-request-id"]


@pytest.mark.parametrize(("given", "kept"), [("trace-1:a.b", True), ("bad id", False), ("x" * 129, False)])
def test_request_ids_are_the_callers_only_when_sane(given: str, kept: bool) -> None:
    """A short id of plain characters is echoed; anything else is replaced by a fresh hex id."""
    rid = request_id(CIMultiDict({"x-request-id": given}))
    assert (rid == given) is kept
    assert kept or len(rid) == 32


def test_a_failure_carries_its_retry_after_and_receipts() -> None:
    """A 429 keeps the error's Retry-After and gains the request id and the attempt count."""
    answer = failure(Saturated("every provider is busy", headers={"Retry-After": "3"}, attempts=2), "rid-1")
    assert answer.status == 429
    assert {k: answer.headers[k] for k in ("Retry-After", "x-request-id", "x-zg-attempts")} == {
        "Retry-After": "3",
        "x-request-id": "rid-1",
        "x-zg-attempts": "2",
    }
    assert error_of(answer.body) == {
        "message": "every provider is busy",
        "type": "rate_limit_error",
        "param": None,
        "code": None,
    }


def test_a_providers_rejection_passes_through_unchanged() -> None:
    """A provider's own client error keeps its status, body and content type."""
    rejected = UpstreamRejected(
        400, b'{"error": "context"}', "application/json", provider="0xabc", attempts=1
    )
    answer = failure(rejected, "rid-2")
    assert (answer.status, answer.body, answer.headers["Content-Type"]) == (
        400,
        b'{"error": "context"}',
        "application/json",
    )
