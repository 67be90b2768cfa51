"""Request bodies of the billed routes: bytes in, a payload dict or an error message out. No I/O."""

from __future__ import annotations

import base64
import binascii
import email.policy
import json
from email import message_from_bytes
from typing import Any

Payload = dict[str, Any]
MAX_IMAGES = 10
# Images one edit may take (OpenAI's limit for gpt-image models).
MAX_INPUT_IMAGES = 16


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


def image_edits(body: bytes, content_type: str) -> Payload | str:
    """An edit in either shape the broker takes: multipart (``image`` once or more, or ``image[]`` as the
    openai SDK names several; ``mask``; text fields such as ``prompt``, ``model``, ``n``) or JSON whose
    ``image`` or ``images`` (and ``mask``) are base64 strings or data URLs. The payload holds the decoded
    ``images`` (and ``mask``, or None)."""
    if content_type.startswith("multipart/form-data"):
        parts = _form(body, content_type)
        if isinstance(parts, str):
            return parts
        payload: Payload = {name: data.decode(errors="replace") for name, data, file in parts if not file}
        images = [data for name, data, _ in parts if name in ("image", "image[]")]
        mask = next((data for name, data, _ in parts if name == "mask"), None)
        n: Any = payload.get("n", "1")
        n = int(n) if n.isdigit() else n
    else:
        decoded = _json(body)
        if isinstance(decoded, str):
            return decoded
        payload = decoded
        given = payload.get("images", payload.get("image"))
        encoded = [given] if isinstance(given, str) else [] if given is None else given
        if not isinstance(encoded, list) or not all(isinstance(item, str) for item in encoded):
            return "invalid request body: image must be a base64 string or a list of them"
        given_mask = payload.get("mask")
        if given_mask is not None and not isinstance(given_mask, str):
            return "invalid request body: mask must be a base64 string"
        decoded_images = [_base64(item) for item in (*encoded, *([given_mask] if given_mask else ()))]
        if None in decoded_images:
            return "invalid request body: an image is neither base64 nor a base64 data URL"
        images = [item for item in decoded_images if item is not None]
        mask = images.pop() if given_mask else None
        n = payload.get("n", 1)
    if not images or not all(images) or len(images) > MAX_INPUT_IMAGES:
        return f"invalid request body: 1-{MAX_INPUT_IMAGES} non-empty images are required"
    if not isinstance(payload.get("prompt"), str) or not payload["prompt"]:
        return "invalid request body: prompt is required"
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_IMAGES:
        return f"invalid request body: n must be 1-{MAX_IMAGES}"
    return {**payload, "images": images, "mask": mask, "n": n}


def transcription(body: bytes, content_type: str) -> Payload | str:
    """A multipart/form-data upload with a ``file`` part; other parts become text fields."""
    parts = _form(body, content_type)
    if isinstance(parts, str):
        return parts
    fields: Payload = {name: data if file else data.decode(errors="replace") for name, data, file in parts}
    if not isinstance(fields.get("file"), bytes) or not fields["file"]:
        return "invalid request body: a non-empty file part is required"
    return fields


def _form(body: bytes, content_type: str) -> list[tuple[str, bytes, bool]] | str:
    """A multipart/form-data body's parts in order: (name, bytes, whether it is a file upload)."""
    if not content_type.startswith("multipart/form-data"):
        return "invalid request body: expected multipart/form-data"
    header = b"Content-Type: " + content_type.encode() + b"\r\n\r\n"
    message = message_from_bytes(header + body, policy=email.policy.HTTP)
    parts = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(data, bytes):
            parts.append((name, data, part.get_filename() is not None))
    return parts


def _base64(text: str) -> bytes | None:
    """The bytes of a base64 string or a base64 data URL (``data:image/png;base64,...``), or None."""
    if text.startswith("data:"):
        meta, _, text = text.partition(",")
        if not meta.endswith(";base64"):
            return None
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        return None


def _json(body: bytes) -> Payload | str:
    try:
        payload = json.loads(body)
    except ValueError:
        return "invalid request body: not JSON"
    if not isinstance(payload, dict):
        return "invalid request body: expected a JSON object"
    return payload
