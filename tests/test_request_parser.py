"""The one request parser (``router.request``): the gateway's bytes and the library's dict become the same
``Request`` through the same checks; the figures admission and the balance reserve read off it; multipart
uploads; and a ``Call`` reading through to its request. No network."""

from __future__ import annotations

import json
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from router.client import Router
from router.config import RouterConfig, StaticUpstream
from router.core import Core
from router.errors import InvalidRequest
from router.policy.select import NO_PREFERENCES, Preferences, Strategy
from router.request import Call, Endpoint, Request, parse_json, parse_multipart, parse_payload

MESSAGES = [{"role": "user", "content": "hi"}]
CHAT: dict[str, Any] = {"model": "m", "messages": MESSAGES}
PAYLOADS: dict[str, tuple[Endpoint, dict[str, Any]]] = {
    "chat": (Endpoint.CHAT, {**CHAT, "max_tokens": 9}),
    "chat-stream": (Endpoint.CHAT, {**CHAT, "stream": True}),
    "chat-provider": (Endpoint.CHAT, {**CHAT, "provider": {"sort": "price", "only": ["0xAbC"]}}),
    "embeddings": (Endpoint.EMBEDDINGS, {"model": "e", "input": ["a", "b"]}),
    "images": (Endpoint.IMAGES, {"model": "i", "prompt": "a cat", "n": 3}),
}
BAD_PROVIDERS: list[Any] = [
    "price",
    ["order"],
    {"sort": "cheapest"},
    {"sort": 5},
    {"order": "0xabc"},
    {"allow_fallbacks": "no"},
    {"max_price": {"prompt": -1}},
    {"max_price": {"total": 1}},
    {"verified_only": 1},
    {"fastest": True},
]
BOUNDARY = "zg-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def encoded(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def form(fields: dict[str, bytes]) -> bytes:
    """A multipart/form-data body holding ``fields`` (``file`` as an upload)."""
    parts = []
    for name, value in fields.items():
        filename = '; filename="a.wav"' if name == "file" else ""
        head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"{filename}\r\n\r\n'
        parts.append(head.encode() + value + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def raised(action: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        action()
    return caught.value


class TestBothPaths:
    @pytest.mark.parametrize("name", PAYLOADS)
    def test_equal_input_gives_equal_requests(self, name: str) -> None:
        """The gateway's bytes and the library's dict of one request parse to equal Requests."""
        endpoint, payload = PAYLOADS[name]
        headers = {"X-ZG-Sort": "latency", "x-zg-verify": "sync"}
        assert parse_json(endpoint, encoded(payload), headers) == parse_payload(endpoint, payload, headers)

    def test_a_body_without_provider_goes_on_as_sent(self) -> None:
        """No ``provider`` field: the client's own bytes go to the provider, not a re-encoding."""
        body = b'{ "model":"m",\n  "messages": [{"role":"user","content":"hi"}] }'
        assert parse_json(Endpoint.CHAT, body, {}).body is body

    def test_the_provider_field_is_stripped_and_read(self) -> None:
        """``provider`` steers routing and never reaches the provider; the rest of the body does."""
        _, payload = PAYLOADS["chat-provider"]
        request = parse_json(Endpoint.CHAT, encoded(payload), {})
        assert json.loads(request.body) == CHAT
        assert request.prefs == Preferences(only=frozenset({"0xabc"}), sort=Strategy.PRICE)

    def test_the_library_payload_is_left_as_given(self) -> None:
        """``parse_payload`` strips ``provider`` from what it sends, not from the caller's dict."""
        payload = {**CHAT, "provider": {"sort": "price"}}
        parse_payload(Endpoint.CHAT, payload)
        assert payload == {**CHAT, "provider": {"sort": "price"}}

    def test_headers_outrank_the_provider_field(self) -> None:
        """A routing header wins over the same wish in the body, on both paths."""
        payload = {**CHAT, "provider": {"sort": "price"}}
        for request in (
            parse_json(Endpoint.CHAT, encoded(payload), {"X-ZG-Sort": "latency"}),
            parse_payload(Endpoint.CHAT, payload, {"X-ZG-Sort": "latency"}),
        ):
            assert request.prefs.sort is Strategy.LATENCY

    @pytest.mark.parametrize("provider", BAD_PROVIDERS, ids=repr)
    def test_a_bad_provider_is_the_same_error_on_both_paths(self, provider: Any) -> None:
        """A wrong ``provider`` value is one InvalidRequest, whichever parser reads it."""
        payload = {**CHAT, "provider": provider}
        wire = raised(lambda: parse_json(Endpoint.CHAT, encoded(payload), {}))
        library = raised(lambda: parse_payload(Endpoint.CHAT, payload))
        assert (library.message, library.param, library.status) == (wire.message, wire.param, wire.status)
        assert wire.param is not None
        assert wire.param.startswith("provider")

    def test_a_wrong_field_is_the_same_error_on_both_paths(self) -> None:
        """The OpenAI field checks run on both paths, before ``provider`` is read."""
        payload = {**CHAT, "temperature": 3, "provider": "price"}
        wire = raised(lambda: parse_json(Endpoint.CHAT, encoded(payload), {}))
        library = raised(lambda: parse_payload(Endpoint.CHAT, payload))
        assert (wire.message, wire.param) == (library.message, library.param)
        assert wire.param == "temperature"

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            (b"", "the request body is empty; send a JSON object"),
            (b"{", "the request body is not valid JSON"),
            (b"[1]", "the request body must be a JSON object"),
            (b"[" * 100_000, "the request body is"),
        ],
    )
    def test_a_body_that_is_no_json_object_is_refused(self, body: bytes, message: str) -> None:
        """Bytes that do not decode to a JSON object are the caller's 400."""
        error = raised(lambda: parse_json(Endpoint.CHAT, body, {}))
        assert error.status == 400
        assert error.message.startswith(message)


class TestFigures:
    @pytest.mark.parametrize("name", PAYLOADS)
    def test_prompt_estimate_is_a_quarter_of_the_body(self, name: str) -> None:
        """A JSON request's input is estimated at four bytes of body per token, plus one."""
        endpoint, payload = PAYLOADS[name]
        request = parse_payload(endpoint, payload)
        assert request.prompt_estimate == len(request.body) // 4 + 1

    def test_prompt_estimate_counts_the_body_as_sent(self) -> None:
        """The estimate is of the bytes that go to the provider: the client's own, padding and all."""
        body = encoded(CHAT).ljust(400)
        assert parse_json(Endpoint.CHAT, body, {}).prompt_estimate == 101

    @pytest.mark.parametrize(
        ("endpoint", "payload", "images"),
        [
            (Endpoint.IMAGES, {"model": "i", "prompt": "a cat", "n": 4}, 4),
            (Endpoint.IMAGES, {"model": "i", "prompt": "a cat"}, 1),
            (Endpoint.IMAGES, {"model": "i", "prompt": "a cat", "n": None}, 1),
            (Endpoint.CHAT, {**CHAT, "n": 4}, 0),
            (Endpoint.EMBEDDINGS, {"model": "e", "input": "x"}, 0),
        ],
    )
    def test_images_counts_what_an_image_request_asks_for(
        self, endpoint: Endpoint, payload: dict[str, Any], images: int
    ) -> None:
        """An image request asks for ``n`` images (one unless it says); other requests for none."""
        assert parse_payload(endpoint, payload).images == images

    @pytest.mark.parametrize(
        ("endpoint", "payload", "most"),
        [
            (Endpoint.CHAT, {**CHAT, "max_tokens": 7}, 7),
            (Endpoint.CHAT, {**CHAT, "max_tokens": 7, "max_completion_tokens": 5}, 5),
            (Endpoint.CHAT, {**CHAT, "max_tokens": None}, None),
            (Endpoint.CHAT, CHAT, None),
            (Endpoint.IMAGES, {"model": "i", "prompt": "a cat", "n": 2, "max_tokens": 9}, 2),
            (Endpoint.EMBEDDINGS, {"model": "e", "input": "x"}, None),
        ],
    )
    def test_max_output_is_the_most_output_asked_for(
        self, endpoint: Endpoint, payload: dict[str, Any], most: int | None
    ) -> None:
        """``max_completion_tokens`` over ``max_tokens``; an image request's count; None when unsaid."""
        assert parse_payload(endpoint, payload).max_output == most

    def test_stream_is_true_only_when_asked(self) -> None:
        """``stream: true`` streams; absent, false or null does not."""
        assert parse_payload(Endpoint.CHAT, {**CHAT, "stream": True}).stream
        for value in (False, None):
            assert not parse_payload(Endpoint.CHAT, {**CHAT, "stream": value}).stream
        assert not parse_payload(Endpoint.CHAT, CHAT).stream

    @pytest.mark.parametrize(
        ("mode", "sync"), [(None, False), ("async", False), ("sync", True), (" SYNC ", True)]
    )
    def test_verify_sync_follows_the_header(self, mode: str | None, sync: bool) -> None:
        """``x-zg-verify: sync`` asks to wait for the verdict; anything but sync or async is a 400."""
        headers = {} if mode is None else {"x-zg-verify": mode}
        assert parse_payload(Endpoint.CHAT, CHAT, headers).verify_sync is sync

    def test_an_unknown_verify_mode_is_refused(self) -> None:
        """A verify mode other than sync or async names its header."""
        error = raised(lambda: parse_payload(Endpoint.CHAT, CHAT, {"x-zg-verify": "later"}))
        assert error.param == "x-zg-verify"

    def test_the_body_stays_out_of_the_repr(self) -> None:
        """A Request in a log line shows its routing, never the caller's prompt."""
        request = parse_payload(
            Endpoint.CHAT, {"model": "m", "messages": [{"role": "user", "content": "secret"}]}
        )
        assert "secret" not in repr(request)
        assert "model='m'" in repr(request)


class TestMultipart:
    def test_an_upload_passes_on_unchanged(self) -> None:
        """A transcription's model comes from its form; its body and content type go on as they came."""
        body = form({"file": b"RIFF\x00\x00", "model": b" whisper ", "response_format": b"json"})
        request = parse_multipart(body, MULTIPART, {"x-zg-verify": "sync", "X-ZG-Sort": "price"})
        assert request == Request(
            endpoint=Endpoint.TRANSCRIPTIONS,
            model="whisper",
            body=body,
            content_type=MULTIPART,
            stream=False,
            prefs=Preferences(sort=Strategy.PRICE),
            max_output=None,
            verify_sync=True,
            prompt_estimate=0,
            images=0,
        )

    @pytest.mark.parametrize(
        ("fields", "content_type", "param"),
        [
            ({"model": b"w"}, MULTIPART, "file"),
            ({"file": b"RIFF"}, MULTIPART, "model"),
            ({"file": b"RIFF", "model": b"  "}, MULTIPART, "model"),
            ({"file": b"RIFF", "model": b"w", "temperature": b"2"}, MULTIPART, "temperature"),
            ({"file": b"RIFF", "model": b"w"}, "application/json", None),
        ],
    )
    def test_a_wrong_upload_is_refused(
        self, fields: dict[str, bytes], content_type: str, param: str | None
    ) -> None:
        """A missing file or model, a wrong field, or a body that is no form: a 400 naming the field."""
        error = raised(lambda: parse_multipart(form(fields), content_type, {}))
        assert (error.status, error.param) == (400, param)


class TestCall:
    def test_a_call_reads_through_to_its_request(self) -> None:
        """The dispatch loop reads a Call's request fields as its own; ``prefs`` is the Call's."""
        request = parse_payload(
            Endpoint.IMAGES, {"model": "i", "prompt": "a cat", "n": 2}, {"x-zg-verify": "sync"}
        )
        enforced = Preferences(verified_only=True)
        call = Call(request, "rid", 12.5, enforced)
        seen = [
            call.endpoint,
            call.model,
            call.body,
            call.content_type,
            call.stream,
            call.max_output,
            call.verify_sync,
            call.prompt_estimate,
            call.images,
        ]
        assert seen == [
            request.endpoint,
            request.model,
            request.body,
            request.content_type,
            request.stream,
            request.max_output,
            request.verify_sync,
            request.prompt_estimate,
            request.images,
        ]
        assert (call.request_id, call.deadline, call.prefs) == ("rid", 12.5, enforced)
        assert request.prefs is NO_PREFERENCES


class _Posted:
    """A face's request, as ``Core`` reads it."""

    def __init__(self, path: str, body: bytes) -> None:
        self.method = "POST"
        self.path = path
        self.headers = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))
        self._body = body

    async def read(self) -> bytes:
        return self._body


class TestGatewayAndLibrary:
    """The gateway's route and ``Router.chat`` refuse a bad request alike, before any provider is asked
    (the router is never opened: nothing is dispatched)."""

    @pytest.fixture
    def router(self) -> Router:
        upstream = StaticUpstream("local", "http://127.0.0.1:9/v1", ("m",))
        return Router(RouterConfig(static_upstreams=(upstream,)))

    @pytest.mark.parametrize("provider", BAD_PROVIDERS, ids=repr)
    async def test_a_bad_provider_is_refused_alike(self, router: Router, provider: Any) -> None:
        """``router.chat(provider=...)`` raises the InvalidRequest the gateway renders as its 400."""
        response = await Core(router).handle(
            _Posted("/v1/chat/completions", encoded({**CHAT, "provider": provider}))
        )
        with pytest.raises(InvalidRequest) as caught:
            await router.chat(model="m", messages=MESSAGES, provider=provider)
        assert response.status == caught.value.status == 400
        error = json.loads(response.body)["error"]
        assert (error["message"], error["param"]) == (caught.value.message, caught.value.param)

    async def test_chat_refuses_to_stream(self, router: Router) -> None:
        """``chat()`` promises a whole completion: ``stream=True`` there points at ``stream_chat()``."""
        with pytest.raises(InvalidRequest, match="stream_chat") as caught:
            await router.chat(model="m", messages=MESSAGES, stream=True)
        assert caught.value.param == "stream"
