"""The TEE quote a simulated broker serves at ``GET /v1/quote`` (protocol.md §4.1, §5.6).

The layout is the broker's: dstack's quote document (``quote``, ``event_log``, ``report_data``,
``vm_config``, ``tcb_info``) as one JSON text, with ``report_data`` the base64 of the signer's ASCII address
padded with NULs to 64 bytes (the legacy layout), ``tcb_info.app_compose`` the compose file and a
``compose-hash`` event carrying its sha256, and a ``ZG-Quote-Signature`` header: the signer's EIP-191
signature over keccak256 of the body. The ``quote`` itself is simulated: no TDX hardware signs it.
"""

from __future__ import annotations

import base64
import hashlib
import json

from eth_utils.crypto import keccak

from router.chain.wallet import Wallet

SIGNATURE_HEADER = "ZG-Quote-Signature"
_REPORT_DATA_BYTES = 64
# dstack's runtime event type, as its event logs carry it.
_DSTACK_RUNTIME_EVENT = 0x08000001
_APP_COMPOSE = json.dumps(
    {
        "manifest_version": 2,
        "name": "zg-devnet-broker",
        "runner": "docker-compose",
        "docker_compose_file": "services:\n  broker:\n    image: zg-router/devnet-simulator\n",
    }
)


def quote_reply(signer: Wallet) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a quote naming ``signer`` and signed by it."""
    report_data = signer.address.encode().ljust(_REPORT_DATA_BYTES, b"\x00")
    compose_hash = hashlib.sha256(_APP_COMPOSE.encode()).hexdigest()
    events = [
        _event("app-id", hashlib.sha256(signer.address.encode()).hexdigest()[:40]),
        _event("compose-hash", compose_hash),
    ]
    document = {
        "quote": hashlib.sha512(b"simulated TDX quote " + report_data).hexdigest(),
        "event_log": json.dumps(events),
        "report_data": base64.b64encode(report_data).decode(),
        "vm_config": json.dumps({"num_gpus": 0, "image": "zg-router-devnet"}),
        "tcb_info": json.dumps({"app_compose": _APP_COMPOSE, "compose_hash": compose_hash}),
    }
    body = json.dumps(document).encode()
    signature = "0x" + signer.sign_personal(keccak(body)).hex()
    return body, {SIGNATURE_HEADER: signature}


def _event(name: str, payload: str) -> dict[str, object]:
    digest = hashlib.sha384(f"{name}:{payload}".encode()).hexdigest()
    return {
        "imr": 3,
        "event_type": _DSTACK_RUNTIME_EVENT,
        "digest": digest,
        "event": name,
        "event_payload": payload,
    }
