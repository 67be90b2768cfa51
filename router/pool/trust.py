"""What response verification has shown about one provider (protocol.md §5). Sync, no I/O.

A provider starts ``unverified``. A verified response makes it ``verified``; a failed one makes it
``failed`` at once (and the dispatcher demotes it for a while). A lookup that finds no usable signature
(expired, withheld, never signed) is ``unverifiable``: it is counted, but it neither proves nor disproves
anything, so it leaves the state as it was. A new TEE signer on chain starts the record over.

The record also holds the provider's attestation: what its TEE quote (``GET /v1/quote``) showed when
``router.verify.attestation`` last checked it. ``unchecked`` until the first check; then ``attested``,
``failed`` (the quote names another signer, or its compose hash or body signature is wrong) or
``unavailable`` (no quote: unreachable, or no such route).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class TrustState(enum.Enum):
    UNVERIFIED = "unverified"
    VERIFIED = "verified"
    FAILED = "failed"


class Outcome(enum.Enum):
    """One response's verdict."""

    VERIFIED = "verified"  # signed by the provider's acknowledged TEE signer over the bytes we relayed
    FAILED = "failed"  # signed by someone else, or over other bytes: the provider is not to be trusted
    UNVERIFIABLE = "unverifiable"  # no signature to check (expired, withheld, missing, not a TEE service)


class AttestationState(enum.Enum):
    UNCHECKED = "unchecked"
    ATTESTED = "attested"
    FAILED = "failed"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class Attestation:
    """One check of a provider's quote. ``checked_at`` is a Unix time; ``signer_in_quote`` the address
    its ``report_data`` names (None when it names none); ``checks`` the checks that ran and passed
    (``signer``, ``compose``, ``signature``): a quote without dstack's compose fields or a reply without
    a body signature is attested on fewer of them."""

    state: AttestationState = AttestationState.UNCHECKED
    reason: str | None = None
    checked_at: float | None = None
    signer_in_quote: str | None = None
    checks: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "reason": self.reason,
            "checked_at": self.checked_at,
            "signer_in_quote": self.signer_in_quote,
            "checks": list(self.checks),
        }


@dataclass(slots=True)
class Trust:
    """One provider's record; ``signer`` is the address its responses must be signed by, and
    ``last_checked`` a Unix time."""

    signer: str | None = None
    state: TrustState = TrustState.UNVERIFIED
    verified: int = 0
    failed: int = 0
    unverifiable: int = 0
    last_checked: float | None = None
    last_failure: str | None = None
    attestation: Attestation = Attestation()

    def record(self, outcome: Outcome, now: float, detail: str | None = None) -> None:
        self.last_checked = now
        if outcome is Outcome.VERIFIED:
            self.verified += 1
            self.state = TrustState.VERIFIED
        elif outcome is Outcome.FAILED:
            self.failed += 1
            self.state = TrustState.FAILED
            self.last_failure = detail
        else:
            self.unverifiable += 1

    def new_signer(self, signer: str | None) -> bool:
        """Adopt the signer the chain now names; a different one than before resets the record, the
        attestation too (what the old key signed, or a quote for it, says nothing about the new one).
        True if it did."""
        if signer == self.signer:
            return False
        fresh = Trust(signer=signer)
        for name in Trust.__slots__:
            setattr(self, name, getattr(fresh, name))
        return True

    def as_dict(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "signer": self.signer,
            "verified": self.verified,
            "failed": self.failed,
            "unverifiable": self.unverifiable,
            "last_checked": self.last_checked,
            "last_failure": self.last_failure,
        }
