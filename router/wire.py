"""OpenAI wire shapes: reading a client's request (JSON or a multipart upload) into what a ``Call`` needs, and
the gateway key check. Shared by every face through ``router.core``; no HTTP server here."""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from email.parser import BytesParser
from email.policy import HTTP

from router.errors import InvalidRequest
from router.policy.select import Preferences, parse_preferences
from router.replies import Endpoint, max_output
from router.validate import validate_json, validate_transcription


class Parsed:
    """What the gateway needs from a request body."""

    __slots__ = ("body", "content_type", "max_output", "model", "prefs", "stream", "verify_sync")

    def __init__(
        self,
        model: str,
        body: bytes,
        content_type: str,
        stream: bool,
        prefs: Preferences,
        max_output: int | None = None,
        *,
        verify_sync: bool = False,
    ) -> None:
        self.model = model
        self.body = body
        self.content_type = content_type
        self.stream = stream
        self.prefs = prefs
        self.max_output = max_output
        self.verify_sync = verify_sync


def parse_json_request(endpoint: Endpoint, body: bytes, headers: Mapping[str, str]) -> Parsed:
    """Validate a JSON request; strip our ``provider`` field before it goes to a provider."""
    if not body:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest("the request body is nested too deeply") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("the request body must be a JSON object")
    validate_json(endpoint, payload)
    if "provider" in payload:
        # Our routing field: providers must not see it. Re-encoding only then leaves most bodies untouched.
        prefs = parse_preferences(payload.pop("provider"), headers)
        body = json.dumps(payload).encode()
    else:
        prefs = parse_preferences(None, headers)
    return Parsed(
        payload["model"],
        body,
        "application/json",
        payload.get("stream") is True,
        prefs,
        max_output(endpoint, payload),
        verify_sync=verify_mode(headers),
    )


def parse_multipart_request(body: bytes, content_type: str, headers: Mapping[str, str]) -> Parsed:
    """A transcription upload: the model comes from its form field; the body is passed on unchanged."""
    if not content_type.startswith("multipart/form-data"):
        raise InvalidRequest("audio transcriptions take multipart/form-data (a file and a model)")
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    fields: dict[str, bytes] = {}
    if message.is_multipart():
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if isinstance(name, str):
                payload = part.get_payload(decode=True)
                fields[name] = payload if isinstance(payload, bytes) else b""
    if "file" not in fields:
        raise InvalidRequest("`file` is required: the audio to transcribe", param="file")
    model = fields.get("model", b"").decode("utf-8", "replace").strip()
    if not model:
        raise InvalidRequest("you must provide a model parameter (a non-empty string)", param="model")
    validate_transcription(fields)
    return Parsed(
        model, body, content_type, False, parse_preferences(None, headers), verify_sync=verify_mode(headers)
    )


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


def bearer_matches(header: str | None, keys: tuple[bytes, ...]) -> bool:
    """``Authorization: Bearer <one of keys>``? Compared with every key, so the time taken says nothing
    about which (if any) almost matched. Any header text is safe: aiohttp hands over bytes that are not
    UTF-8 as surrogates, which ``surrogatepass`` encodes to bytes no configured key can contain."""
    scheme, _, token = (header or "").partition(" ")
    given = token.strip().encode("utf-8", "surrogatepass")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key)
    return scheme.lower() == "bearer" and matched
