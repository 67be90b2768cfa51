"""Provider attestation, as the official CLI's ``inference verify`` does it (protocol.md §5.6).

A provider's broker serves its TEE quote at ``GET /v1/quote`` (free, outside ``/v1/proxy``): dstack's
quote document as JSON. Its ``report_data`` names the key the TEE holds (the legacy layout, which we ask
for: the ASCII ``0x…`` address, NUL-padded, base64); that must be the TEE signer the chain registered for
the provider. Where the document carries dstack's ``tcb_info`` and ``event_log``, the compose file the
TEE runs must hash to the ``compose-hash`` event it measured. Where the reply carries
``ZG-Quote-Signature`` (EIP-191 over keccak256 of the body), it must recover to that signer.

What this does not do, as the SDK does not: verify the quote's own DCAP signature chain and
measurements (dstack-verifier) or the images (sigstore). "Attested" says that the provider presents a
quote for its registered key that is consistent with itself, not that Intel vouches for it.

The ``Attestor`` runs beside discovery, never on a request's path: discovery hands it the pool after each
refresh, and it checks new providers and those whose signer or URL changed, asks again with back-off
when there was no quote, and re-checks everyone every ``RECHECK_AFTER``. Results go into each provider's
trust record. Routing acts on them only where ``[verify] require_attestation`` asks
(``policy.select.eligible``): a failing attestation alone is shown, not acted on, because the quote
layout is our reading of the broker (``legacy=false`` and cryptopilot quotes are not covered).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from router.errors import ProviderUnreachable, clipped
from router.pool.providers import ProviderInfo, ProviderKind, ProviderState
from router.pool.trust import Attestation, AttestationState, TrustState
from router.transport.base import ProviderTransport

# The legacy layout names the signer in ASCII; brokers that predate the parameter ignore it.
QUOTE_ROUTE = "/v1/quote?legacy=true"
SIGNATURE_HEADER = "ZG-Quote-Signature"
RETRY_FIRST = 30.0  # seconds until a provider that gave no quote is asked again; doubles per miss
RETRY_MAX = 1800.0
# A quote is fixed for the life of a TEE instance; an upgrade that keeps the key changes the compose.
RECHECK_AFTER = 6 * 3600.0
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_SHOWN_IN_503 = 3  # providers named in the 503's message, at most


class QuoteReply(NamedTuple):
    """What a provider answered on its quote route: the parsed document and, where the transport gives
    them, the exact body bytes and the ``ZG-Quote-Signature`` header over them."""

    document: Any
    body: bytes | None = None
    signature: str | None = None


class _Refused(Exception):
    """A check the quote fails, and why (the attestation's reason)."""


def judge_quote(reply: QuoteReply, signer: str | None, now: float) -> Attestation:
    """The attestation a quote earns against ``signer`` (the chain's ``teeSignerAddress``), checked at
    ``now`` (a Unix time). Pure: no I/O, no clock."""
    found = _Findings()
    try:
        _check(reply, signer, found)
    except _Refused as refused:
        return Attestation(AttestationState.FAILED, str(refused), now, found.signer, tuple(found.checks))
    passed = "passed: " + ", ".join(found.checks)
    return Attestation(AttestationState.ATTESTED, passed, now, found.signer, tuple(found.checks))


@dataclass(slots=True)
class _Findings:
    """What the checks found so far: the signer the quote names, and the checks it passed."""

    signer: str | None = None
    checks: list[str] = field(default_factory=list)


def _check(reply: QuoteReply, signer: str | None, found: _Findings) -> None:
    """Every check in turn, into ``found``; the first that fails raises ``_Refused``."""
    document = _document(reply.document)
    found.signer = named = _signer_in(document)
    if signer is None:
        raise _Refused("the chain registers no TEE signer to compare the quote with")
    if named.lower() != signer.lower():
        raise _Refused(f"the quote names signer {named}, not the registered TEE signer {signer}")
    found.checks.append("signer")
    if reply.signature is not None and reply.body is not None:
        signed_by = quote_signer(reply.body, reply.signature)
        if signed_by is None:
            raise _Refused(f"the {SIGNATURE_HEADER} header is not a valid signature")
        if signed_by.lower() != signer.lower():
            raise _Refused(f"the quote body is signed by {signed_by}, not the TEE signer {signer}")
        found.checks.append("signature")
    if _compose_checked(document):
        found.checks.append("compose")


def _document(value: Any) -> dict[str, Any]:
    """The quote document; a body that is the document JSON-encoded once more is taken too."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise _Refused("the quote is a string that holds no JSON") from None
    if not isinstance(value, dict):
        raise _Refused("the quote is not a JSON object")
    return value


def _signer_in(document: dict[str, Any]) -> str:
    """The address ``report_data`` names: base64, decoded, NULs stripped (the legacy layout)."""
    encoded = document.get("report_data")
    if not isinstance(encoded, str) or not encoded:
        raise _Refused("the quote has no report_data")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise _Refused("the quote's report_data is not base64") from None
    text = raw.replace(b"\x00", b"").decode("ascii", errors="replace").strip()
    if not _ADDRESS.fullmatch(text):
        raise _Refused(
            f"the quote's report_data names no signer address (not the legacy layout): {clipped(text, 60)}"
        )
    return text


def _compose_checked(document: dict[str, Any]) -> bool:
    """Whether the compose check ran (it runs where the document has both ``tcb_info`` and
    ``event_log``, as in the SDK); raises ``_Refused`` where it fails."""
    tcb, events = document.get("tcb_info"), document.get("event_log")
    if not tcb or not events:
        return False
    tcb = _embedded(tcb, "tcb_info")
    events = _embedded(events, "event_log")
    compose = tcb.get("app_compose") if isinstance(tcb, dict) else None
    if not isinstance(compose, str):
        raise _Refused("the quote's tcb_info has no app_compose")
    if not isinstance(events, list):
        raise _Refused("the quote's event_log is not a list of events")
    measured = next(
        (e.get("event_payload") for e in events if isinstance(e, dict) and e.get("event") == "compose-hash"),
        None,
    )
    if not isinstance(measured, str):
        raise _Refused("the quote's event_log has no compose-hash event")
    computed = hashlib.sha256(compose.encode()).hexdigest()
    if measured.lower().removeprefix("0x") != computed:
        raise _Refused(
            f"the compose file hashes to {computed[:16]}…, but the TEE measured {clipped(measured, 20)}"
        )
    return True


def _embedded(value: Any, name: str) -> Any:
    """A field dstack sends as a JSON string (or, from other producers, as the value itself)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        raise _Refused(f"the quote's {name} is not JSON") from None


def quote_signer(body: bytes, signature: str) -> str | None:
    """The address whose EIP-191 signature over keccak256(``body``) ``signature`` (hex, 65 bytes) is;
    None when it is malformed. Go's signer writes v as 0/1, ours as 27/28: both are taken."""
    try:
        raw = bytearray(bytes.fromhex(signature.strip().removeprefix("0x")))
    except ValueError:
        return None
    if len(raw) != 65 or raw[64] not in (0, 1, 27, 28):
        return None
    if raw[64] < 27:
        raw[64] += 27
    # Only chain providers have quotes: a router of static upstreams never loads eth_account.
    from eth_account import Account
    from eth_account.messages import encode_defunct
    from eth_keys.exceptions import BadSignature
    from eth_utils.crypto import keccak

    try:
        return str(Account.recover_message(encode_defunct(primitive=keccak(body)), signature=bytes(raw)))
    except (ValueError, TypeError, IndexError, BadSignature):
        return None


def quote_url(info: ProviderInfo) -> str:
    """Where a chain provider serves its quote: its root (``base_url`` without ``/v1/proxy``)."""
    return info.base_url.removesuffix("/v1/proxy") + QUOTE_ROUTE


@dataclass(slots=True)
class _Turn:
    """When a provider's quote is next checked, and for which signers and URL (``key``)."""

    state: ProviderState
    key: tuple[str, str, str]
    at: float
    delay: float = RETRY_FIRST  # the wait after the next check that gets no quote


def _key(info: ProviderInfo) -> tuple[str, str, str]:
    return ((info.registered_signer or "").lower(), (info.tee_signer or "").lower(), info.base_url)


class Attestor:
    """Checks chain providers' quotes. ``watch`` after each refresh; ``run()`` in the background."""

    def __init__(
        self,
        transport: ProviderTransport,
        *,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._transport = transport
        self._timeout = timeout
        self._clock = clock
        self._turns: dict[str, _Turn] = {}
        self._wake = asyncio.Event()

    def watch(self, states: Iterable[ProviderState]) -> None:
        """Take the pool as it is now: new chain providers, and those whose signer or URL changed, are
        due at once (a changed one is unchecked until then); dropped ones are forgotten. Never waits."""
        now = self._clock()
        seen: set[str] = set()
        changed = False
        for state in states:
            if state.info.kind is not ProviderKind.CHAIN:
                continue
            seen.add(state.id)
            key = _key(state.info)
            turn = self._turns.get(state.id)
            if turn is not None and turn.state is state and turn.key == key:
                continue
            if turn is not None and turn.state is state:
                # A pass for the old signer or URL must not stand for the new one.
                state.trust.attestation = Attestation()
            self._turns[state.id] = _Turn(state, key, now)
            changed = True
        for gone in self._turns.keys() - seen:
            del self._turns[gone]
        if changed:
            self._wake.set()

    async def attest_due(self) -> int:
        """Check every provider whose turn has come, together; how many were checked."""
        now = self._clock()
        due = [turn for turn in self._turns.values() if turn.at <= now]
        await asyncio.gather(*(self._attest(turn) for turn in due))
        return len(due)

    def next_in(self) -> float | None:
        """Seconds until the next provider's turn (0 if one is due); None when none is known."""
        if not self._turns:
            return None
        return max(0.0, min(turn.at for turn in self._turns.values()) - self._clock())

    async def run(self) -> None:
        while True:
            # Cleared before the round: a watch() during it wakes the next wait at once.
            self._wake.clear()
            await self.attest_due()
            try:
                async with asyncio.timeout(self.next_in()):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _attest(self, turn: _Turn) -> None:
        info = turn.state.info
        try:
            result = judge_quote(await self._fetch(info), info.registered_signer, time.time())
        except ProviderUnreachable as exc:
            detail = str(exc).removeprefix(f"provider {info.id}: ")
            result = Attestation(AttestationState.UNAVAILABLE, f"no quote ({detail})", time.time())
        if self._turns.get(info.id) is not turn:
            return  # dropped, or its signer changed while we asked: this answer is about the old one
        trust = turn.state.trust
        if result.state is AttestationState.UNAVAILABLE:
            # A recheck that gets no answer keeps the verdict it would have renewed: the key it was
            # about is unchanged.
            if trust.attestation.state not in (AttestationState.ATTESTED, AttestationState.FAILED):
                trust.attestation = result
            turn.at = self._clock() + turn.delay
            turn.delay = min(turn.delay * 2, RETRY_MAX)
        else:
            trust.attestation = result
            turn.at = self._clock() + RECHECK_AFTER
            turn.delay = RETRY_FIRST

    async def _fetch(self, info: ProviderInfo) -> QuoteReply:
        headers, body = await self._transport.get(
            info.kind, info.id, quote_url(info), headers={}, time_left=self._timeout
        )
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            document = None
        return QuoteReply(document, body, headers.get(SIGNATURE_HEADER))


def attestation_shortfall(everyone: Sequence[ProviderState], model: str) -> str | None:
    """Why a verified-only call that requires attestation has no provider, when attestation is the
    reason: some providers of ``model`` have verified responses, and none of them passes attestation.
    None otherwise (none verified yet, or a verified one attested and other preferences excluded it)."""
    verified = [s for s in everyone if s.trust.state is TrustState.VERIFIED]
    if not verified or any(s.trust.attestation.state is AttestationState.ATTESTED for s in verified):
        return None
    shown = "; ".join(
        f"{s.id} {s.trust.attestation.state.value}"
        + (f" ({s.trust.attestation.reason})" if s.trust.attestation.reason else "")
        for s in verified[:_SHOWN_IN_503]
    )
    more = f"; and {len(verified) - _SHOWN_IN_503} more" if len(verified) > _SHOWN_IN_503 else ""
    return (
        f"{len(verified)} of the {len(everyone)} provider(s) of {clipped(model)} have verified responses, "
        f"but none of them passes attestation, which [verify] require_attestation asks for: {shown}{more}"
    )
