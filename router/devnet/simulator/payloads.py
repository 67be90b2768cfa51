"""Request bodies of the billed routes: bytes in, a payload dict or an error message out. No I/O."""

from __future__ import annotations

import email.policy
import json
from email import message_from_bytes
from typing import Any

Payload = dict[str, Any]
MAX_IMAGES = 10


def chat(body: bytes, content_type: str) -> Payload | str:
    payload = _json(body)
    if isinstance(payload, str):
        return payload
    if not isinstance(payload.get("messages"), list) or not payload["messages"]:
        return "invalid request body: messages is required"
    return payload


def embeddings(body: bytes, content_type: str) -> Payload | str:
    payload = _json(body)
    if isinstance(payload, str):
        return payload
    given = payload.get("input")
    if isinstance(given, str):
        given = [given]
    if not isinstance(given, list) or not given or not all(isinstance(i, str) for i in given):
        return "invalid request body: input must be a string or a list of strings"
    return {**payload, "input": given}


def images(body: bytes, content_type: str) -> Payload | str:
    payload = _json(body)
    if isinstance(payload, str):
        return payload
    if not isinstance(payload.get("prompt"), str) or not payload["prompt"]:
        return "invalid request body: prompt is required"
    n = payload.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_IMAGES:
        return f"invalid request body: n must be 1-{MAX_IMAGES}"
    return {**payload, "n": n}


def transcription(body: bytes, content_type: str) -> Payload | str:
    """A multipart/form-data upload with a ``file`` part; other parts become text fields."""
    if not content_type.startswith("multipart/form-data"):
        return "invalid request body: expected multipart/form-data"
    header = b"Content-Type: " + content_type.encode() + b"\r\n\r\n"
    message = message_from_bytes(header + body, policy=email.policy.HTTP)
    fields: Payload = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(data, bytes):
            continue
        fields[name] = data if part.get_filename() is not None else data.decode(errors="replace")
    if not isinstance(fields.get("file"), bytes) or not fields["file"]:
        return "invalid request body: a non-empty file part is required"
    return fields


def _json(body: bytes) -> Payload | str:
    try:
        payload = json.loads(body)
    except ValueError:
        return "invalid request body: not JSON"
    if not isinstance(payload, dict):
        return "invalid request body: expected a JSON object"
    return payload
