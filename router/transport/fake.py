"""``FakeTransport``: a ``ProviderTransport`` that answers from a script instead of the network. It ships in
the package for our tests and for yours: a ``Router`` runs on it unchanged, with no socket and no devnet.

    from router.transport.fake import FakeReply, FakeTransport

    fake = FakeTransport.scripted({"a": [FakeReply.busy(retry_after=30)], "b": [FakeReply.chat("hi")]})
    upstreams = tuple(StaticUpstream(name, f"http://{name}.test/v1", ("m",)) for name in "ab")
    async with Router(RouterConfig(static_upstreams=upstreams), transport=fake) as router:
        answer = await router.chat(model="m", messages=[{"role": "user", "content": "hello"}])
    assert answer["choices"][0]["message"]["content"] == "hi"
    assert fake.requests[-1].provider == "b"   # a (if tried first) was busy: the router failed over
    fake.assert_all_closed()                   # every reply handed out was closed exactly once

A script is either a queue of replies per provider (``FakeTransport.scripted``) or any function of the
request, sync or async (``FakeTransport(lambda request: FakeReply.chat(request.json()["model"]))``).

Replies behave as ``HttpTransport``'s do, errors included: anything that is not an HTTP reply (``error``,
a wait past the request's ``time_left``, a stall past the idle timeout, a connection dropped by
``break_after``) raises ``ProviderUnreachable`` with the message the aiohttp transport gives; a stream is cut
into events by the real ``SSEFramer`` and each event checked by the real ``usage_of``, so a malformed event
fails and the usage is tracked exactly as on the network. Waits run on the event loop's own clock.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from multidict import CIMultiDict, CIMultiDictProxy

from router.errors import ProviderUnreachable
from router.pool.providers import ProviderInfo, ProviderKind
from router.transport.http import TransportOptions
from router.transport.sse import DONE, MalformedEvent, SSEFramer, usage_of

# What HttpTransport says when the connection drops in the middle of a body (aiohttp's payload error).
DROPPED = "connection failed (ClientPayloadError)"
REFUSED = "cannot connect ([Errno 111] Connect call failed)"
# The broker's global-concurrency refusal (protocol.md §4.2, step 2).
BUSY_MESSAGE = "Server is currently processing too many requests. Please try again later."

Event = bytes | str | Mapping[str, Any]
RateLimit = Literal[
    "requests", "requests_legacy", "tokens", "images", "concurrency", "token_budget", "ip", "invalid_model"
]


@dataclass(frozen=True, slots=True)
class FakeRequest:
    """One request the fake received. ``method`` is ``POST`` (``send``: ``info`` is the provider's entry)
    or ``GET`` (``get_json``: the probe, model list and signature routes; ``info`` is None)."""

    method: str
    provider: str
    kind: ProviderKind
    url: str
    path: str
    body: bytes
    # Authorization among them: kept out of the repr, as every secret is.
    headers: Mapping[str, str] = field(repr=False)
    stream: bool
    time_left: float
    info: ProviderInfo | None = field(default=None, repr=False)

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class FakeReply:
    """What a provider answers. The constructors below give the broker's common replies; any field can be
    changed with ``dataclasses.replace``.

    ``body`` is bytes as they are, or any other value as its JSON. ``events`` makes the reply a stream:
    each item goes out as one chunk, a mapping as ``data: <its JSON>``, a string as ``data: <it>``, bytes
    as they are (to send a comment, half an event or broken framing); ``[DONE]`` follows unless ``done`` is
    False. ``Content-Type`` defaults to ``text/event-stream`` for a stream and ``application/json``
    otherwise; header names are case-insensitive, as aiohttp's are.

    Timing, on the loop's clock: ``delay`` before the headers (counted against the request's
    ``time_left``, so ``math.inf`` is a provider that never answers); ``event_delay`` before each chunk.
    Faults: ``error`` raises ``ProviderUnreachable(error)`` instead of the headers (a refused connection);
    ``stall_after=N`` sends N chunks and then nothing, until the idle timeout (or, for a plain reply, the
    request's deadline) gives up; ``break_after=N`` sends N chunks and drops the connection. Chunks are
    counted as sent: a plain body is one chunk, a stream's usage chunk and ``[DONE]`` are one each.
    """

    status: int = 200
    body: Any = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    events: Sequence[Event] | None = None
    done: bool = True
    delay: float = 0.0
    event_delay: float = 0.0
    stall_after: int | None = None
    break_after: int | None = None
    error: str | None = None

    def wire(self) -> list[bytes]:
        """The chunks this reply sends after its headers."""
        if self.events is None:
            body = self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()
            return [body] if body else []
        chunks = [_frame(event) for event in self.events]
        if self.done:
            chunks.append(DONE)
        return [chunk for chunk in chunks if chunk]

    def header_map(self) -> CIMultiDictProxy[str]:
        """The reply's headers as the router sees them: case-insensitive, with a default Content-Type."""
        headers = CIMultiDict(self.headers)
        if "Content-Type" not in headers:
            stream = self.events is not None
            headers["Content-Type"] = "text/event-stream" if stream else "application/json"
        return CIMultiDictProxy(headers)

    # -- the common replies --------------------------------------------------------------------------

    @classmethod
    def chat(
        cls,
        text: str = "Hello!",
        *,
        model: str = "fake-model",
        usage: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> FakeReply:
        """A chat completion answering ``text``; ``usage`` defaults to 10 prompt tokens and one completion
        token per word."""
        body = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": dict(usage) if usage is not None else _usage(text),
        }
        return cls(body=body, headers=dict(headers or {}))

    @classmethod
    def stream(
        cls,
        pieces: Sequence[str] = ("Hello", "!"),
        *,
        model: str = "fake-model",
        usage: Mapping[str, Any] | None = None,
        done: bool = True,
        event_delay: float = 0.0,
        stall_after: int | None = None,
        break_after: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> FakeReply:
        """A streamed chat completion: one chunk per piece, then the usage chunk the broker asks for
        (``stream_options.include_usage``, protocol.md §4.3; ``usage`` defaults as in ``chat``), then
        ``[DONE]``."""

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        events: list[Event] = [
            chunk({"content": piece}, "stop" if i == len(pieces) - 1 else None)
            for i, piece in enumerate(pieces)
        ]
        final = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model}
        events.append(
            {**final, "choices": [], "usage": dict(usage) if usage is not None else _usage(" ".join(pieces))}
        )
        return cls(
            events=events,
            done=done,
            event_delay=event_delay,
            stall_after=stall_after,
            break_after=break_after,
            headers=dict(headers or {}),
        )

    @classmethod
    def rate_limited(
        cls, kind: RateLimit = "requests", *, limit: int = 30, reset: str | None = "2s"
    ) -> FakeReply:
        """A 429 with the broker's body for ``kind`` (protocol.md §4.2, §4.7): ``requests`` (RPM),
        ``requests_legacy`` (the older builds' string), ``tokens`` (TPM), ``images`` (IPM),
        ``concurrency``, ``token_budget`` (the KV-cache budget), ``ip`` (the per-IP limiter) or
        ``invalid_model`` (the hour-long block after five wrong-model requests). ``limit`` goes in the
        message and ``x-ratelimit-limit-requests``; ``reset`` in ``x-ratelimit-reset-requests`` (None: no
        rate-limit headers)."""
        error = _rate_limit_errors(limit)[kind]
        headers = {}
        if reset is not None:
            headers = {
                "x-ratelimit-limit-requests": str(limit),
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": reset,
            }
        return cls(status=429, body={"error": error}, headers=headers)

    @classmethod
    def busy(cls, retry_after: int | None = 1) -> FakeReply:
        """The broker's 503 past its global caps (protocol.md §4.2 step 2, §4.7), with ``Retry-After``
        in whole seconds (None: without it, as older builds send it)."""
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        return cls(status=503, body={"error": BUSY_MESSAGE}, headers=headers)

    @classmethod
    def unfunded(cls, locked: str = "1.000000", unsettled: str = "0.200000") -> FakeReply:
        """The broker's 400 when our sub-account cannot cover the request (protocol.md §4.6)."""
        required = f"{1 + float(unsettled):.6f}"
        message = (
            f"insufficient balance: your locked balance is {locked} 0G, but the required minimum is "
            f"{required} 0G (breakdown: minimum reserve 1.000000 0G + unsettled fees {unsettled} 0G + "
            "current request fee 0.000000 0G). Please add more funds with: 0g-compute-cli transfer-fund "
            "--provider <addr> --amount <amount>"
        )
        return cls(status=400, body={"error": message})

    @classmethod
    def http_error(
        cls, status: int, message: str | None = None, *, headers: Mapping[str, str] | None = None
    ) -> FakeReply:
        """An error reply ``{"error": message}``; the message defaults to the status text, which is what
        the broker sends for a 5xx (``502 {"error": "Bad Gateway"}``, ``504 {"error": "Gateway
        Timeout"}``)."""
        text = message if message is not None else HTTPStatus(status).phrase
        return cls(status=status, body={"error": text}, headers=dict(headers or {}))

    @classmethod
    def redirect(cls, location: str, status: int = 307) -> FakeReply:
        """A redirect (which the router never follows)."""
        return cls(status=status, body=b"", headers={"Location": location})

    @classmethod
    def unreachable(cls, detail: str = REFUSED, *, delay: float = 0.0) -> FakeReply:
        """No reply at all: ``send`` raises ``ProviderUnreachable(detail)`` (a refused connection by
        default) after ``delay``."""
        return cls(error=detail, delay=delay)

    @classmethod
    def models(cls, *ids: str) -> FakeReply:
        """A ``/v1/models`` list of ``ids``."""
        data = [{"id": model, "object": "model", "created": 0, "owned_by": "fake"} for model in ids]
        return cls(body={"object": "list", "data": data})


def _rate_limit_errors(limit: int) -> dict[str, Any]:
    """The ``error`` value of each 429 body the broker sends (protocol.md §4.2, §4.7)."""
    rpm = f"Rate limit exceeded. Please slow down your request rate (limit: {limit} requests/min)."
    busy = f"You have {limit} active requests (limit: {limit}). Please wait for some to complete."
    return {
        "requests": {"type": "rate_limit_error", "message": rpm},
        "requests_legacy": rpm,
        "tokens": {
            "type": "rate_limit_error",
            "message": f"Token rate limit exceeded. Please wait 2 seconds (limit: {limit} tokens/min).",
        },
        "images": {
            "type": "rate_limit_error",
            "message": f"Image rate limit exceeded. Please wait 2 seconds (limit: {limit} images/min).",
        },
        "concurrency": f"Too many concurrent requests. {busy}",
        "token_budget": {
            "type": "rate_limit_error",
            "code": "token_budget_exceeded",
            "message": "Token budget exceeded. Please wait for some requests to complete.",
        },
        "ip": "Too many requests. Please try again later.",
        "invalid_model": "Rate limit exceeded: too many invalid model requests. Please try again in 59m59s",
    }


def _frame(event: Event) -> bytes:
    if isinstance(event, bytes):
        return event
    data = event if isinstance(event, str) else json.dumps(event)
    return f"data: {data}\n\n".encode()


def _usage(text: str) -> dict[str, int]:
    completion = max(1, len(text.split()))
    return {"prompt_tokens": 10, "completion_tokens": completion, "total_tokens": 10 + completion}


def _headers(headers: Mapping[str, str]) -> CIMultiDictProxy[str]:
    """A request's headers as recorded: a copy, looked up case-insensitively."""
    return CIMultiDictProxy(CIMultiDict(headers))


async def _pause(seconds: float) -> None:
    if math.isinf(seconds):
        await asyncio.Event().wait()
    elif seconds > 0:
        await asyncio.sleep(seconds)


Responder = Callable[[FakeRequest], FakeReply | Awaitable[FakeReply]]


class ScriptExhausted(LookupError):
    """A scripted ``FakeTransport`` got a request its script has no reply left for."""


class FakeUpstream:
    """A fake reply whose headers have arrived (the ``Upstream`` protocol). ``closes`` counts how often it
    was closed or read to the end: exactly once is right."""

    __slots__ = (
        "_deadline",
        "_framer",
        "_headers",
        "_idle",
        "_reply",
        "_sent",
        "_wire",
        "closes",
        "request",
        "usage",
    )

    def __init__(self, request: FakeRequest, reply: FakeReply, idle: float, deadline: float | None) -> None:
        self.request = request
        self._reply = reply
        self._headers = reply.header_map()
        self._wire = reply.wire()
        self._idle = idle
        self._deadline = deadline  # a plain reply's body is bounded by the request's deadline too
        self._framer = SSEFramer()
        self._sent = 0
        self.closes = 0
        self.usage: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"<FakeUpstream {self.request.provider} {self.status} sent={self._sent} closes={self.closes}>"

    @property
    def status(self) -> int:
        return self._reply.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._headers

    async def read(self) -> bytes:
        """The whole body; closes the reply (also when the read fails or is cancelled)."""
        try:
            parts = []
            while chunk := await self._next():
                parts.append(chunk)
            return b"".join(parts)
        finally:
            self.closes += 1

    async def events(self) -> AsyncIterator[bytes]:
        """Whole SSE events, each checked as ``HttpTransport``'s are."""
        provider = self.request.provider
        while True:
            chunk = await self._next()
            if not chunk:
                tail = self._framer.pending
                if tail.strip():
                    raise ProviderUnreachable(provider, "stream ended in the middle of an event")
                if tail:
                    yield tail
                return
            for event in self._framer.feed(chunk):
                try:
                    usage = usage_of(event)
                except MalformedEvent as exc:
                    raise ProviderUnreachable(provider, f"sent a malformed stream event ({exc})") from None
                if usage is not None:
                    self.usage = usage
                yield event

    def close(self) -> None:
        self.closes += 1

    async def _next(self) -> bytes:
        """The next chunk (b"" at the end), paced and broken as the reply says."""
        reply, index, provider = self._reply, self._sent, self.request.provider
        stalled = reply.stall_after is not None and index >= reply.stall_after
        if not stalled:
            if reply.break_after is not None and index >= reply.break_after:
                raise ProviderUnreachable(provider, DROPPED)
            if index >= len(self._wire):
                return b""
        bound = self._idle
        if self._deadline is not None:
            bound = min(bound, self._deadline - asyncio.get_running_loop().time())
        try:
            async with asyncio.timeout(bound):
                await _pause(math.inf if stalled else reply.event_delay)
        except TimeoutError:
            raise ProviderUnreachable(provider, "timed out") from None
        self._sent += 1
        return self._wire[index]


class FakeTransport:
    """A ``ProviderTransport`` whose providers are ``responder``: it gets each ``send`` as a
    ``FakeRequest`` and returns (or awaits to) a ``FakeReply``. ``on_get`` answers ``get_json`` the same
    way; by default each provider lists the models ``models`` gives it (provider id -> model ids), so the
    prober's free calls answer. ``options`` supplies the idle timeouts, as ``HttpTransport``'s do.

    For assertions: ``requests`` (every ``send``, in order), ``gets`` (every ``get_json``), ``upstreams``
    (every reply handed out), ``open_upstreams`` and ``assert_all_closed()``; ``await
    wait_sent(n)`` returns once ``n`` requests were sent, to act while they are in flight.
    """

    def __init__(
        self,
        responder: Responder,
        *,
        on_get: Responder | None = None,
        models: Mapping[str, Sequence[str]] | None = None,
        options: TransportOptions | None = None,
    ) -> None:
        self.options = options or TransportOptions()
        self._responder = responder
        self._on_get = on_get or self._models_doc
        self._models = {provider.lower(): tuple(ids) for provider, ids in (models or {}).items()}
        self.requests: list[FakeRequest] = []
        self.gets: list[FakeRequest] = []
        self.upstreams: list[FakeUpstream] = []
        self._arrival = asyncio.Event()
        self._open = False

    @classmethod
    def scripted(
        cls,
        script: Mapping[str, Iterable[FakeReply]],
        *,
        default: FakeReply | None = None,
        on_get: Responder | None = None,
        models: Mapping[str, Sequence[str]] | None = None,
        options: TransportOptions | None = None,
    ) -> FakeTransport:
        """Each provider (by id, case-insensitive) answers with its replies in order, then ``default``
        for ever; with no reply left and no default, ``send`` raises ``ScriptExhausted``."""
        queues = {provider.lower(): deque(replies) for provider, replies in script.items()}

        def next_reply(request: FakeRequest) -> FakeReply:
            queue = queues.get(request.provider.lower())
            if queue:
                return queue.popleft()
            if default is not None:
                return default
            raise ScriptExhausted(f"the script has no reply left for provider {request.provider}")

        return cls(next_reply, on_get=on_get, models=models, options=options)

    def __repr__(self) -> str:
        return (
            f"<FakeTransport requests={len(self.requests)} gets={len(self.gets)} "
            f"open_upstreams={len(self.open_upstreams)}>"
        )

    async def __aenter__(self) -> Self:
        self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open = False

    @property
    def open_upstreams(self) -> list[FakeUpstream]:
        """Replies handed out and not yet closed (nor read to the end)."""
        return [upstream for upstream in self.upstreams if not upstream.closes]

    def assert_all_closed(self) -> None:
        """Every reply handed out was closed (or read to the end) exactly once."""
        wrong = [upstream for upstream in self.upstreams if upstream.closes != 1]
        if wrong:
            raise AssertionError(f"replies not closed exactly once: {wrong}")

    async def wait_sent(self, count: int) -> None:
        """Return once ``count`` requests have been sent (counting all since the fake was made)."""
        while len(self.requests) < count:
            await self._arrival.wait()

    async def send(
        self,
        provider: ProviderInfo,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        time_left: float,
        stream: bool,
    ) -> FakeUpstream:
        """The responder's reply to a POST of ``body`` to ``provider.base_url + path``, once its headers
        are in (after its ``delay``, at most ``time_left`` seconds)."""
        self._check_open()
        started = asyncio.get_running_loop().time()
        request = FakeRequest(
            "POST",
            provider.id,
            provider.kind,
            provider.base_url + path,
            path,
            body,
            _headers(headers),
            stream,
            time_left,
            provider,
        )
        self.requests.append(request)
        self._arrival.set()
        self._arrival = asyncio.Event()
        reply = await self._headers_of(request, self._responder)
        opts = self.options
        idle = opts.stream_idle_timeout if stream else opts.body_idle_timeout
        upstream = FakeUpstream(request, reply, idle, None if stream else started + time_left)
        self.upstreams.append(upstream)
        return upstream

    async def get_json(
        self, kind: ProviderKind, provider: str, url: str, *, headers: Mapping[str, str], time_left: float
    ) -> Any:
        """``on_get``'s reply, parsed; non-2xx or non-JSON raises ``ProviderUnreachable``."""
        _, body = await self.get(kind, provider, url, headers=headers, time_left=time_left)
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise ProviderUnreachable(provider, f"{url} did not answer JSON") from None

    async def get(
        self, kind: ProviderKind, provider: str, url: str, *, headers: Mapping[str, str], time_left: float
    ) -> tuple[Mapping[str, str], bytes]:
        """``on_get``'s reply: its headers and body; non-2xx raises ``ProviderUnreachable``."""
        self._check_open()
        request = FakeRequest(
            "GET", provider, kind, url, urlsplit(url).path, b"", _headers(headers), False, time_left
        )
        self.gets.append(request)
        started = asyncio.get_running_loop().time()
        reply = await self._headers_of(request, self._on_get)
        if reply.status >= 300:
            raise ProviderUnreachable(provider, f"{url} answered {reply.status}")
        upstream = FakeUpstream(request, reply, time_left, started + time_left)
        return upstream.headers, await upstream.read()

    async def _headers_of(self, request: FakeRequest, responder: Responder) -> FakeReply:
        """The responder's reply after its delay, bounded by the request's time left."""
        if request.time_left <= 0:
            raise ProviderUnreachable(request.provider, "timed out")
        try:
            async with asyncio.timeout(request.time_left):
                answer = responder(request)
                reply = answer if isinstance(answer, FakeReply) else await answer
                await _pause(reply.delay)
        except TimeoutError:
            raise ProviderUnreachable(request.provider, "timed out") from None
        if reply.error is not None:
            raise ProviderUnreachable(request.provider, reply.error)
        return reply

    def _models_doc(self, request: FakeRequest) -> FakeReply:
        return FakeReply.models(*self._models.get(request.provider.lower(), ()))

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError("use the FakeTransport inside `async with` (a Router enters it itself)")
