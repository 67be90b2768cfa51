"""Property-based fuzzing of every route of a live gateway (in a child process) on the devnet.

Hypothesis sends a few thousand requests, derandomized so that every run sends the same ones: valid-looking
OpenAI bodies with fields swapped for JSON values of the wrong type, fields missing, huge strings, deep
nesting and odd Unicode; bodies that are not JSON at all; random methods, paths, ``Content-Type``s and
``Authorization`` headers (none, the right keys, garbage, bytes that are not UTF-8). Each answer must hold:

- no 5xx of ours: 500, 501 and 504 or above never; a 502 only as ``provider_error`` and a 503 only as
  ``service_unavailable`` with a code in ``UNAVAILABLE_CODES`` (a provider failure passed on, never a crash);
- every error (4xx, 5xx) is OpenAI-shaped JSON: exactly ``{"error": {"message", "type", "param", "code"}}``,
  ``message`` and ``type`` strings, the message bounded (user input is quoted cut short);
- an answer within ``REQUEST_BOUND`` seconds, and the connection is answered, not dropped;
- the child gateway is alive after every request, and every line it logs is one JSON object, of bounded
  length (``MAX_LOG_LINE``), and without a secret (the session-wide check reads them all).

Violations are collected rather than raised, so one run reports all of them (grouped by kind, with one
example each) instead of stopping at the first. Afterwards normal traffic is served in full: every request
of a burst of good ones succeeds and every provider's breaker is closed.

Refunds are fuzzed with addresses that are not providers only: a real refund (or one with no ``providers``,
which drains every provider) would take the pool out of service by design.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.fuzz.conftest import ADMIN_KEY, ChildGateway
from tests.gateway.conftest import API_KEY, CHAT_MODEL
from tests.gateway.support import WAV

EXAMPLES = 2400
REQUEST_BOUND = 15.0
MAX_MESSAGE = 1024
# A request line's fields are bounded (user input is cut short), so no line comes near this.
MAX_LOG_LINE = 16_384
GOOD_REQUESTS = 60
# 503s the design gives: no provider can take the request now, or none matches its provider preferences.
UNAVAILABLE_CODES = frozenset(
    {"no_available_provider", "no_matching_provider", "no_verified_provider", "chain_unavailable"}
)
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD")
ERROR_KEYS = {"message", "type", "param", "code"}

# -- strategies ------------------------------------------------------------------------------------------

ODD_TEXT = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "\ud800",
        "\U0001f600" * 50,
        "e\u0301" * 30,
        "\u202eevil",
        "\ufeff",
        "\n\r\t",
        "'; DROP TABLE",
        "%00%ff",
        "../../etc/passwd",
        "A" * 5000,
    ]
)
TEXT = st.one_of(st.text(max_size=40), ODD_TEXT)
# Huge strings and nesting deeper than Python's recursion limit are placeholders that ``encoded`` expands
# in the JSON text: hypothesis never holds (or prints) them whole.
HUGE_TEXT = st.integers(10_000, 300_000).map(lambda n: f"@@huge-{n}@@")
SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)
JSON = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
DEEP = st.integers(50, 100_000).map(lambda depth: f"@@deep-{depth}@@")
_PLACEHOLDER = re.compile(r'"@@(deep|huge)-(\d+)@@"')
VALUE = st.one_of(JSON, DEEP, HUGE_TEXT)


def sometimes(
    good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any], one_in: int = 4
) -> st.SearchStrategy[Any]:
    """``bad`` one time in ``one_in``, else ``good``: mostly valid, so requests get past the first check."""
    return st.integers(1, one_in).flatmap(lambda i: bad if i == 1 else good)


USER_MESSAGE = st.builds(lambda text: {"role": "user", "content": text}, TEXT)
MESSAGE = sometimes(
    USER_MESSAGE,
    st.fixed_dictionaries(
        {"role": sometimes(st.sampled_from(["user", "system", "assistant", "tool", "developer"]), VALUE)},
        optional={
            "content": st.one_of(
                TEXT,
                VALUE,
                st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": TEXT | VALUE}), max_size=3),
            ),
            "name": VALUE,
            "tool_calls": VALUE,
        },
    ),
    one_in=3,
)
CHAT_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "max_tokens": sometimes(st.integers(-5, 40), VALUE, one_in=3),
    "max_completion_tokens": sometimes(st.integers(-5, 40), VALUE, one_in=3),
    "n": sometimes(st.integers(-1, 3), VALUE, one_in=3),
    "temperature": sometimes(st.floats(-1, 3), VALUE, one_in=3),
    "top_p": sometimes(st.floats(-1, 2), VALUE, one_in=3),
    "stream": sometimes(st.booleans(), VALUE, one_in=3),
    "stream_options": sometimes(st.just({"include_usage": True}), VALUE, one_in=3),
    "tools": sometimes(
        st.just([{"type": "function", "function": {"name": "f", "parameters": {}}}]), VALUE, one_in=3
    ),
    "tool_choice": sometimes(st.sampled_from(["auto", "none", "required"]), VALUE, one_in=3),
    "response_format": sometimes(st.just({"type": "json_object"}), VALUE, one_in=3),
    "stop": sometimes(TEXT, VALUE, one_in=3),
    "seed": sometimes(st.integers(), VALUE, one_in=3),
    "user": sometimes(TEXT, VALUE, one_in=3),
    "provider": sometimes(st.just({"sort": "price"}), VALUE, one_in=3),
    "logprobs": VALUE,
    "frequency_penalty": VALUE,
}


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any], extra: dict[str, st.SearchStrategy[Any]]) -> Any:
    """``base`` with some fields dropped, some replaced by random values, and some optional ones added."""
    body = dict(base)
    for name in list(body):
        choice = draw(st.integers(0, 19))
        if choice == 0:
            del body[name]
        elif choice <= 2:
            body[name] = draw(VALUE)
    if extra:
        for name in draw(st.lists(st.sampled_from(sorted(extra)), max_size=4, unique=True)):
            body[name] = draw(extra[name])
    if draw(st.integers(0, 19)) == 0:
        body[draw(TEXT)] = draw(VALUE)
    return body


def chat_body() -> st.SearchStrategy[Any]:
    base = st.builds(
        lambda messages, model: {"model": model, "messages": messages, "max_tokens": 4},
        sometimes(st.lists(MESSAGE, min_size=1, max_size=3), VALUE, one_in=8),
        sometimes(st.just(CHAT_MODEL), TEXT | VALUE, one_in=8),
    )
    return base.flatmap(lambda body: mutated(body, CHAT_FIELDS))


def simple_body(base: dict[str, Any], extra: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    return mutated(base, extra)


EMBEDDING_FIELDS = {"encoding_format": st.sampled_from(["float", "base64"]) | VALUE, "dimensions": VALUE}
IMAGE_FIELDS = {"size": st.sampled_from(["256x256", "1024x1024"]) | VALUE, "response_format": VALUE}


@dataclass(frozen=True)
class Fuzzed:
    """One request to send: method, path, headers, and a JSON body, raw bytes or a multipart form."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: Any = None
    raw: bytes | None = None
    form: tuple[tuple[str, Any], ...] | None = None

    @property
    def route(self) -> str:
        return self.path.split("?")[0][:60]


# A quarter of the requests carry one of these (a key for the other API among them); the others the
# right key for their route.
AUTH = st.sampled_from(
    [
        None,
        f"Bearer {API_KEY}",
        f"Bearer {ADMIN_KEY}",
        "Bearer",
        "Bearer ",
        f"Basic {API_KEY}",
        f"bearer  {API_KEY} ",
        "Bearer \xff\xfe",
        "Bearer \u00e9",
        "Bearer " + "k" * 10_000,
    ]
) | TEXT.map(lambda t: "Bearer " + t)
CONTENT_TYPE = st.sampled_from(
    [
        None,
        "application/json",
        "application/json",
        "application/json; charset=latin-1",
        "text/plain",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "application/x-www-form-urlencoded",
        "application/json; charset=utf-8; boundary=x",
        "*/*",
        "",
    ]
)
EXTRA_HEADERS = st.lists(
    st.tuples(
        st.sampled_from(["Accept", "Accept-Encoding", "X-Request-Id", "X-Zg-Provider", "Expect", "Origin"]),
        TEXT,
    ),
    max_size=3,
)
ROUTES = (
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/images/generations",
    "/v1/audio/transcriptions",
    "/v1/models",
    "/healthz",
    "/readyz",
    "/metrics",
    "/admin/balance",
    "/admin/providers",
    "/admin/fund",
    "/admin/refund",
)
STRANGER = "0x" + "ab" * 20
UNKNOWN_PATH = st.one_of(
    st.sampled_from(["/", "/v1", "/v1/", "/v1/completions", "/admin", "/admin/", "/v2/chat/completions"]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/-_.~%", max_size=60).map(lambda t: "/" + t),
    st.sampled_from(["/v1/chat/completions/../../admin/balance", "/%2e%2e/admin", "//admin/balance"]),
)


@st.composite
def body_for(draw: st.DrawFn, route: str, providers: tuple[str, ...]) -> dict[str, Any]:
    """What a request to ``route`` carries: a JSON body, raw bytes, or a multipart form."""
    kind = draw(st.integers(0, 19))
    if kind == 0:
        return {
            "raw": draw(
                st.binary(max_size=200) | st.sampled_from([b"{", b'{"model": ', b"\xff\xfe", b"null"])
            )
        }
    if kind == 1:
        return {"body": draw(VALUE)}
    if route == "/v1/chat/completions":
        return {"body": draw(chat_body())}
    if route == "/v1/embeddings":
        base = {"model": "embed-r", "input": draw(TEXT | st.lists(TEXT, max_size=3) | VALUE)}
        return {"body": draw(simple_body(base, EMBEDDING_FIELDS))}
    if route == "/v1/images/generations":
        base = {"model": "image-r", "prompt": draw(TEXT | VALUE), "n": 1}
        return {"body": draw(simple_body(base, IMAGE_FIELDS))}
    if route == "/v1/audio/transcriptions":
        fields = [("model", draw(st.just("whisper-r") | TEXT))]
        if draw(st.booleans()):
            fields.append(("file", draw(st.just(WAV) | st.binary(max_size=100))))
        fields += draw(
            st.lists(st.tuples(st.sampled_from(["language", "prompt", "model", "x"]), TEXT), max_size=2)
        )
        return {"form": tuple(fields)}
    if route == "/admin/fund":
        provider = draw(st.sampled_from(providers) | st.just(STRANGER) | TEXT | VALUE)
        amount = draw(
            st.sampled_from(["0.000001", "1e3", "1_000", "\u0661", "10000000000", "-1", "NaN"])
            | st.decimals(allow_nan=False, allow_infinity=False).map(str)
            | VALUE
        )
        return {"body": draw(mutated({"provider": provider, "amount": amount}, {}))}
    if route == "/admin/refund":
        # Always a non-null ``providers``, never a real provider: see the module docstring.
        garbage = st.lists(st.just(STRANGER) | TEXT | VALUE, max_size=3) | st.just(STRANGER) | VALUE
        return {"body": {"providers": draw(garbage.filter(lambda v: v is not None and v != []))}}
    return {"body": draw(VALUE)} if draw(st.booleans()) else {}


@st.composite
def requests(draw: st.DrawFn, providers: tuple[str, ...]) -> Fuzzed:
    pick = draw(st.integers(0, 19))
    if pick < 17:
        route = draw(st.sampled_from(ROUTES + ROUTES[:4] * 2 + ROUTES[:1] * 3))
    elif pick < 18:
        route = "/admin/verify/" + draw(
            st.text(alphabet="abcdef0123456789-", max_size=80) | st.just("x" * 4000)
        )
    else:
        route = draw(UNKNOWN_PATH)
    post = route in (
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/images/generations",
        "/v1/audio/transcriptions",
        "/admin/fund",
        "/admin/refund",
    )
    method = (
        "POST"
        if post and draw(st.integers(0, 5))
        else "GET"
        if draw(st.integers(0, 3))
        else draw(st.sampled_from(METHODS))
    )
    if route == "/admin/refund" and method == "POST":
        payload = draw(body_for(route, providers))
        if "raw" in payload and payload["raw"].strip() in (b"", b"{}"):
            payload = {"raw": b"{"}
    else:
        payload = draw(body_for(route, providers))
    headers: list[tuple[str, str]] = []
    right = f"Bearer {ADMIN_KEY if route.startswith('/admin') else API_KEY}"
    auth = draw(sometimes(st.just(right), AUTH, one_in=4))
    if auth is not None:
        headers.append(("Authorization", auth))
    content_type = draw(CONTENT_TYPE)
    if content_type is not None and "form" not in payload:
        headers.append(("Content-Type", content_type))
    headers += draw(EXTRA_HEADERS)
    if draw(st.integers(0, 9)) == 0:
        route += "?" + draw(st.text(alphabet="abc=&%20x", max_size=30))
    return Fuzzed(method, route, tuple(headers), payload.get("body"), payload.get("raw"), payload.get("form"))


# -- the checks ------------------------------------------------------------------------------------------


class Findings:
    """Violations by kind, with the first example of each and a count."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self.statuses: Counter[tuple[str, int, str]] = Counter()

    def add(self, kind: str, request: Fuzzed, detail: str) -> None:
        self.counts[kind] += 1
        if kind not in self.examples:
            shown = {
                "method": request.method,
                "path": request.path[:100],
                "headers": [(k, v[:60]) for k, v in request.headers],
                "body": (json.dumps(request.body)[:300] if request.body is not None else None),
                "raw": repr(request.raw[:100]) if request.raw is not None else None,
                "form": repr(request.form)[:200] if request.form is not None else None,
            }
            self.examples[kind] = f"{json.dumps(shown)}\n      -> {detail[:400]}"

    def report(self) -> str:
        return "\n".join(
            f"  [{self.counts[kind]}x] {kind}\n      {self.examples[kind]}" for kind in sorted(self.counts)
        )


def error_code(text: str) -> str:
    """The ``code`` of an error body, for the tally of answers ("-" for anything else)."""
    try:
        return str(json.loads(text)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "-"


def error_problem(status: int, content_type: str, text: str) -> str | None:
    """Why an error answer is not an OpenAI-shaped JSON error, or None if it is one."""
    if not content_type.startswith("application/json"):
        return f"not JSON ({content_type or 'no Content-Type'})"
    try:
        body = json.loads(text)
    except ValueError:
        return "a body that does not parse as JSON"
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(body, dict) or body.keys() != {"error"} or not isinstance(error, dict):
        return 'not {"error": {...}}'
    if error.keys() != ERROR_KEYS:
        return f"error keys {sorted(error)}"
    if not isinstance(error["message"], str) or not isinstance(error["type"], str):
        return "message or type not a string"
    if not all(error[k] is None or isinstance(error[k], str) for k in ("param", "code")):
        return "param or code neither a string nor null"
    if len(error["message"]) > MAX_MESSAGE:
        return "with a message over MAX_MESSAGE characters"
    return None


def server_error_problem(status: int, text: str) -> str | None:
    """Why a 5xx is ours (a crash, or not a provider failure passed on), or None if it is allowed."""
    if status not in (502, 503):
        return f"{status}"
    try:
        error = json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
        return f"{status} without an error body"
    if status == 502 and error.get("type") != "provider_error":
        return f"502 of type {error.get('type')!r}"
    if status == 503 and (
        error.get("type") != "service_unavailable" or error.get("code") not in UNAVAILABLE_CODES
    ):
        return f"503 {error.get('type')!r}/{error.get('code')!r}"
    return None


def _expanded(match: re.Match[str]) -> str:
    size = int(match[2])
    return "[" * size + "]" * size if match[1] == "deep" else '"' + "x" * size + '"'


def encoded(body: Any) -> bytes:
    text = json.dumps(body, ensure_ascii=False)
    text = _PLACEHOLDER.sub(_expanded, text)
    return text.encode("utf-8", "surrogatepass")


async def send(http: aiohttp.ClientSession, child: ChildGateway, request: Fuzzed, findings: Findings) -> None:
    """Send ``request`` and record what is wrong with the answer (a client-side refusal to send is not
    the gateway's doing, and is skipped)."""
    kwargs: dict[str, Any] = {"headers": list(request.headers)}
    if request.form is not None:
        form = aiohttp.FormData(default_to_multipart=True)
        for name, value in request.form:
            if isinstance(value, bytes):
                form.add_field(name, value, filename="a.wav", content_type="audio/wav")
            else:
                form.add_field(name, value)
        kwargs["data"] = form
    elif request.raw is not None:
        kwargs["data"] = request.raw
    elif request.body is not None:
        # A file-like body: aiohttp warns (an error here) about sending megabytes of bytes directly.
        kwargs["data"] = io.BytesIO(encoded(request.body))
    try:
        async with (
            asyncio.timeout(REQUEST_BOUND),
            http.request(request.method, child.url + request.path, **kwargs) as response,
        ):
            status, content_type = response.status, response.headers.get("Content-Type", "")
            text = await response.text(errors="replace")
    except TimeoutError:
        findings.add("no answer within the bound", request, f"{REQUEST_BOUND} s")
        return
    except (ValueError, TypeError, UnicodeError, aiohttp.InvalidURL):
        return  # aiohttp would not send it (a header it refuses to encode, say)
    except aiohttp.ClientOSError as exc:
        # The gateway answered (a 413 or 417) and closed before taking a body it refuses: by design.
        if "Can not write request body" not in str(exc):
            findings.add("connection dropped", request, repr(exc))
        return
    except aiohttp.ClientError as exc:
        findings.add("connection dropped", request, repr(exc))
        return
    findings.statuses[(request.route if request.route in ROUTES else "other", status, error_code(text))] += 1
    if "Traceback" in text:
        findings.add("a traceback in the answer", request, text)
    if status >= 500 and (problem := server_error_problem(status, text)) is not None:
        findings.add(f"5xx of ours: {problem} on {request.route}", request, text)
    if status >= 400 and request.method != "HEAD" and (problem := error_problem(status, content_type, text)):
        findings.add(f"{status} error {problem}", request, text)


# -- the test --------------------------------------------------------------------------------------------


@pytest.fixture
async def fuzz_http() -> Any:
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=8, force_close=False), auto_decompress=True
    ) as http:
        yield http


async def test_fuzzed_requests_get_proper_answers_and_hurt_no_one(
    child_gateway: ChildGateway, fuzz_http: aiohttp.ClientSession
) -> None:
    """A few thousand mutated requests over every route, then normal traffic: see the module docstring
    for what each answer must be. The child gateway stays alive throughout, every line it logs is a JSON
    object, and afterwards every one of ``GOOD_REQUESTS`` good requests is served with every breaker
    closed."""
    findings = Findings()
    loop = asyncio.get_running_loop()

    # Hypothesis drives a plain function in a worker thread; each request runs on this loop, where the
    # devnet's providers live, and is collected rather than raised (nothing to shrink, all reported).
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(request=requests(child_gateway.providers))
    def one(request: Fuzzed) -> None:
        if child_gateway.process.returncode is not None:
            return
        sent = asyncio.run_coroutine_threadsafe(send(fuzz_http, child_gateway, request, findings), loop)
        try:
            sent.result(REQUEST_BOUND + 5)
        except concurrent.futures.TimeoutError:
            # Not even cancelled in time by its own bound: the client is stuck too; leave it behind.
            sent.cancel()
            findings.add("no answer within the bound, and the request would not cancel", request, "")
        if child_gateway.process.returncode is not None:
            findings.add("the gateway died", request, f"exit status {child_gateway.process.returncode}")

    await asyncio.to_thread(one)

    assert child_gateway.process.returncode is None, "\n".join(child_gateway.log[-30:])
    await served_in_full(fuzz_http, child_gateway, findings)
    for line in child_gateway.log:
        try:
            parsed = json.loads(line)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            findings.counts["a log line that is not one JSON object"] += 1
            findings.examples.setdefault("a log line that is not one JSON object", line[:400])
        if len(line) > MAX_LOG_LINE:
            findings.counts["a log line over MAX_LOG_LINE characters"] += 1
            findings.examples.setdefault("a log line over MAX_LOG_LINE characters", line[:400])
    statuses = ", ".join(f"{r} {s} {c}: {n}" for (r, s, c), n in sorted(findings.statuses.items()))
    assert not findings.counts, f"fuzzing found:\n{findings.report()}\nanswers seen: {statuses}"


async def served_in_full(http: aiohttp.ClientSession, child: ChildGateway, findings: Findings) -> None:
    """``GOOD_REQUESTS`` good chat requests (five at a time) all succeed, then one of each other kind, and
    every provider's breaker is closed."""
    chat = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    auth = {"Authorization": f"Bearer {API_KEY}"}
    good = Fuzzed("POST", "/v1/chat/completions", tuple(auth.items()), chat)
    gate = asyncio.Semaphore(5)

    async def one(body: dict[str, Any], path: str) -> int:
        async with (
            gate,
            asyncio.timeout(REQUEST_BOUND),
            http.post(child.url + path, json=body, headers=auth) as r,
        ):
            await r.read()
            return r.status

    statuses = await asyncio.gather(*(one(chat, "/v1/chat/completions") for _ in range(GOOD_REQUESTS)))
    statuses += [
        await one({"model": "embed-r", "input": "hi"}, "/v1/embeddings"),
        await one({"model": "image-r", "prompt": "a cat", "n": 1}, "/v1/images/generations"),
    ]
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("model", "whisper-r")
    form.add_field("file", WAV, filename="a.wav", content_type="audio/wav")
    async with (
        asyncio.timeout(REQUEST_BOUND),
        http.post(child.url + "/v1/audio/transcriptions", data=form, headers=auth) as r,
    ):
        statuses.append(r.status)
    failed = Counter(s for s in statuses if s != 200)
    if failed:
        findings.add("good traffic refused after the fuzzing", good, f"statuses {dict(failed)}")
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with asyncio.timeout(REQUEST_BOUND), http.get(child.url + "/admin/providers", headers=admin) as r:
        providers = (await r.json())["providers"]
    breakers = {p["id"]: p["health"]["breaker"] for p in providers}
    if set(breakers.values()) != {"closed"}:
        findings.add("breakers not closed after the fuzzing", good, json.dumps(breakers))
