"""One parser per request: a client's JSON body, the library's payload dict or a multipart upload becomes a
``Request`` through the same checks, and a ``Request`` in flight is a ``Call``.

    request = parse_body(Endpoint.CHAT, body, headers)       # the gateway: bytes off the wire
    request = parse_payload(Endpoint.CHAT, {"model": ..., "messages": [...]})   # the library
    call = router.new_call(request)                          # its id, deadline and enforced preferences

``parse_body`` takes a form where the route does (transcriptions; image edits sent as multipart) and JSON
otherwise. Both JSON parsers run ``parse_payload``'s checks, ``provider`` (our routing field) included, so
a request the gateway refuses the library refuses with the same ``InvalidRequest``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from types import MappingProxyType
from typing import Any

from router import jsonwire
from router.endpoints import Endpoint
from router.errors import InvalidRequest
from router.policy.select import Preferences, parse_preferences
from router.validate import validate_image_edit, validate_json, validate_transcription

__all__ = [
    "Call",
    "Endpoint",
    "Request",
    "parse_body",
    "parse_json",
    "parse_multipart",
    "parse_payload",
    "verify_mode",
]

_JSON = "application/json"
_MULTIPART = "multipart/form-data"
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Request:
    """A request, parsed and checked once.

    ``body`` is what goes to the provider (our ``provider`` field stripped). ``max_output`` is the most
    output it asks for (``max_tokens``, or the image count), if it says; ``verify_sync`` that the caller
    waits for the TEE verdict (``x-zg-verify: sync``). ``prompt_estimate`` is the tokens its input is
    likely to count and ``images`` the images it asks for, for the balance reserve and admission budgets.
    """

    endpoint: Endpoint
    model: str
    body: bytes = field(repr=False)  # the caller's prompt: never in a log line
    content_type: str
    stream: bool
    prefs: Preferences
    max_output: int | None
    verify_sync: bool
    prompt_estimate: int
    images: int


def new_request_id() -> str:
    """A fresh request id for a ``Call``: 32 random hex digits, as ``uuid4().hex`` gave, at a fifth of
    its cost (every request without a usable ``X-Request-Id`` gets one)."""
    return os.urandom(16).hex()


@dataclass(frozen=True, slots=True)
class Call:
    """A request in flight: its id, its ``deadline`` (clock time), and the ``prefs`` routing obeys (the
    request's, with what the router enforces, such as ``[verify] verified_only``, applied)."""

    request: Request
    request_id: str
    deadline: float
    prefs: Preferences

    @property
    def endpoint(self) -> Endpoint:
        return self.request.endpoint

    @property
    def model(self) -> str:
        return self.request.model

    @property
    def body(self) -> bytes:
        return self.request.body

    @property
    def content_type(self) -> str:
        return self.request.content_type

    @property
    def stream(self) -> bool:
        return self.request.stream

    @property
    def max_output(self) -> int | None:
        return self.request.max_output

    @property
    def verify_sync(self) -> bool:
        return self.request.verify_sync

    @property
    def prompt_estimate(self) -> int:
        return self.request.prompt_estimate

    @property
    def images(self) -> int:
        return self.request.images


def parse_body(endpoint: Endpoint, body: bytes, headers: Mapping[str, str]) -> Request:
    """A request off the wire, parsed as its route and its Content-Type say: a transcription is always a
    form, an image edit a form when it is sent as one, anything else JSON."""
    content_type = headers.get("Content-Type", "")
    if endpoint is Endpoint.TRANSCRIPTIONS or (endpoint in _FORMS and content_type.startswith(_MULTIPART)):
        return parse_multipart(body, content_type, headers, endpoint=endpoint)
    return parse_json(endpoint, body, headers)


def parse_json(endpoint: Endpoint, body: bytes, headers: Mapping[str, str]) -> Request:
    """A JSON request off the wire: decoded, then checked as ``parse_payload`` checks it. Raises
    ``InvalidRequest`` (400) for a body that is not a JSON object or a request that is wrong."""
    return _checked(endpoint, json_body(body), headers, body)


def json_body(body: bytes) -> dict[str, Any]:
    """A client's body decoded as a JSON object, or ``InvalidRequest`` (400) saying what it is not."""
    if not body:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        payload = jsonwire.loads(body)
    except ValueError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest("the request body is nested too deeply") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return payload


def parse_payload(
    endpoint: Endpoint, payload: Mapping[str, Any], headers: Mapping[str, str] = _NO_HEADERS
) -> Request:
    """A JSON request given as a dict (the library's): checked, then encoded once. ``payload`` is not
    changed. Raises ``InvalidRequest`` naming the field (or header) that is wrong."""
    return _checked(endpoint, payload, headers, None)


def _checked(
    endpoint: Endpoint, payload: Mapping[str, Any], headers: Mapping[str, str], body: bytes | None
) -> Request:
    """Both JSON parsers' one path. ``body`` is ``payload`` as the client encoded it, if it came encoded."""
    validate_json(endpoint, payload)
    if "provider" in payload:
        # Our routing field: providers must not see it. Re-encoding only then leaves most bodies untouched.
        prefs = parse_preferences(payload["provider"], headers)
        payload = {name: value for name, value in payload.items() if name != "provider"}
        body = None
    else:
        prefs = parse_preferences(None, headers)
    if body is None:
        body = json.dumps(payload).encode()
    most = _max_output(endpoint, payload)
    return Request(
        endpoint=endpoint,
        model=payload["model"],
        body=body,
        content_type=_JSON,
        stream=payload.get("stream") is True,
        prefs=prefs,
        max_output=most,
        verify_sync=verify_mode(headers),
        # About four bytes of JSON per token: a rough figure that needs no tokenizer.
        prompt_estimate=len(body) // 4 + 1,
        images=(most or 1) if endpoint.makes_images else 0,
    )


def parse_multipart(
    body: bytes,
    content_type: str,
    headers: Mapping[str, str],
    *,
    endpoint: Endpoint = Endpoint.TRANSCRIPTIONS,
) -> Request:
    """An upload (a transcription's audio, an image edit's pictures): the model comes from its form
    field; the body is passed on unchanged. Raises ``InvalidRequest`` for a body that is not multipart, or
    a missing or wrong field."""
    form = _FORMS[endpoint]
    if not content_type.startswith(_MULTIPART):
        raise InvalidRequest(form.shape)
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    fields: dict[str, bytes] = {}
    files = 0
    if message.is_multipart():
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if isinstance(name, str):
                payload = part.get_payload(decode=True)
                fields[name] = value = payload if isinstance(payload, bytes) else b""
                if name in form.files:
                    # A provider would refuse an empty upload, or fail on it (charged to its health).
                    if not value:
                        raise InvalidRequest(f"`{name}` is an empty file", param=form.files[0])
                    files += 1
    if not files:
        raise InvalidRequest(f"`{form.files[0]}` is required: {form.what}", param=form.files[0])
    model = fields.get("model", b"").decode("utf-8", "replace").strip()
    if not model:
        raise InvalidRequest("you must provide a model parameter (a non-empty string)", param="model")
    form.validate(fields)
    count = int(fields["n"]) if endpoint.makes_images and "n" in fields else None
    return Request(
        endpoint=endpoint,
        model=model,
        body=body,
        content_type=content_type,
        stream=False,
        prefs=parse_preferences(None, headers),
        max_output=count,
        verify_sync=verify_mode(headers),
        # Billed by output (or duration, or per image), not by the size of the upload.
        prompt_estimate=0,
        images=(count or 1) if endpoint.makes_images else 0,
    )


@dataclass(frozen=True, slots=True)
class _Form:
    """What a route's form must hold: the field names its files may come under (the first is the one
    errors name), what they are, and the check of its other fields."""

    files: tuple[str, ...]
    what: str
    shape: str
    validate: Callable[[Mapping[str, bytes]], None]


_FORMS: dict[Endpoint, _Form] = {
    Endpoint.TRANSCRIPTIONS: _Form(
        ("file",),
        "the audio to transcribe",
        "audio transcriptions take multipart/form-data (a file and a model)",
        validate_transcription,
    ),
    # `image[]` is how the OpenAI SDKs name the parts of several images.
    Endpoint.IMAGE_EDITS: _Form(
        ("image", "image[]"),
        "the image to edit (one file, or several)",
        "image edits take multipart/form-data (an image, a prompt and a model) or JSON",
        validate_image_edit,
    ),
}


def verify_mode(headers: Mapping[str, str]) -> bool:
    """Whether the request asks to wait for its TEE verdict: ``x-zg-verify: sync`` (``async``, the
    default, returns at once and verifies after)."""
    mode = headers.get("x-zg-verify")
    if mode is None:
        return False
    mode = mode.strip().lower()
    if mode not in ("sync", "async"):
        raise InvalidRequest("header x-zg-verify must be sync or async", param="x-zg-verify")
    return mode == "sync"


def _max_output(endpoint: Endpoint, payload: Mapping[str, Any]) -> int | None:
    """The most output a request asks for: ``max_completion_tokens``/``max_tokens``, or the image count.

    Used to reserve balance while the request is in flight; a value the provider will reject anyway
    (not a positive integer) counts as unsaid.
    """
    keys = ("n",) if endpoint.makes_images else ("max_completion_tokens", "max_tokens")
    for key in keys:
        value = payload.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
