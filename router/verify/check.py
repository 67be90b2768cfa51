"""The verdict on one response's signature (protocol.md §5.3-5.4). Pure: no I/O, no clock.

The provider's broker signs ``sha256(request as forwarded):sha256(response bytes)`` (TeeTLS forwarders add
fields after these two; image replies list one hash per picture). The response half is what we can check
for certain: we hash the exact bytes we relayed. The request half covers the body as the broker prepared
it (model rewritten, ``stream_options`` injected), which a client usually cannot recompute, so a mismatch
there is reported but does not fail the response. The signer must be the provider's acknowledged TEE
signer as the chain names it; the lookup's own ``signing_address`` claim is not trusted.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from router import jsonwire
from router.pool.trust import Outcome


@dataclass(frozen=True, slots=True)
class Finding:
    """A verdict, why, and whether the signed request hash was the one of the body we sent."""

    outcome: Outcome
    detail: str
    request_matched: bool | None = None


def judge(record: object, *, signer: str, request: bytes, response_part: str) -> Finding:
    """Judge ``record`` (the signature lookup's JSON) for a reply whose signed response part should be
    ``response_part`` (``sha256_hex(reply bytes)``, or the picture hashes of an image reply)."""
    if not isinstance(record, dict):
        return Finding(Outcome.UNVERIFIABLE, "the signature lookup answered no JSON object")
    text, signature = record.get("text"), record.get("signature")
    if not isinstance(text, str) or not isinstance(signature, str):
        return Finding(Outcome.UNVERIFIABLE, "the signature record has no text or signature")
    if not response_part:
        return Finding(Outcome.UNVERIFIABLE, "the image reply carries no b64_json pictures to hash")
    fields = text.split(":")
    if len(fields) < 2:
        return Finding(Outcome.FAILED, "the signed text is not request-hash:response-hash")
    # Only chain providers sign: a router of static upstreams never loads eth_account.
    from eth_utils.address import to_checksum_address

    from router.chain.wallet import recover_personal_address

    recovered = recover_personal_address(text, signature)
    if recovered is None:
        return Finding(Outcome.FAILED, "the signature is malformed")
    if recovered.hex() != signer.lower().removeprefix("0x"):
        return Finding(
            Outcome.FAILED,
            f"signed by {to_checksum_address(recovered)}, not the acknowledged TEE signer {signer}",
        )
    request_matched = fields[0] == sha256_hex(request)
    if fields[1] != response_part:
        return Finding(
            Outcome.FAILED,
            f"the signature covers other bytes than the reply relayed (signed {fields[1][:16]}…, "
            f"relayed {response_part[:16]}…)",
            request_matched,
        )
    return Finding(Outcome.VERIFIED, "signed by the TEE signer over the bytes relayed", request_matched)


def signed_response_part(parts: Sequence[bytes], *, images: bool = False) -> str:
    """What the broker signs after the first ``:`` for a reply relayed in ``parts``: the sha256 of its
    bytes, or for an image reply one sha256 per decoded picture, comma-joined (§5.3). An image reply we
    cannot read (pictures as URLs, say) gives "", which ``judge`` calls unverifiable."""
    body = parts[0] if len(parts) == 1 else b"".join(parts)
    if not images:
        return sha256_hex(body)
    try:
        data = jsonwire.loads(body)["data"]
        pictures = [base64.b64decode(item["b64_json"], validate=True) for item in data]
    except (ValueError, KeyError, TypeError):
        return ""
    return ",".join(sha256_hex(picture) for picture in pictures)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
