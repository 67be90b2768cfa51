"""Fault knobs of a simulated provider: what can go wrong, how often, reproducibly under a seed.

Probabilities are drawn per request from one ``random.Random(seed)``, so a run with the same seed and the
same request order fails the same way. Knobs are set at start or at runtime through the admin route.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from router.errors import ConfigError

# One draw decides a request's fate; outcomes are checked in this order, each with its own probability.
_OUTCOMES = (
    "reset_before_headers",
    "error_500",
    "error_502",
    "error_503",
    "rate_limit_storm",
    "malformed_json",
    "drop_mid_stream",
    "stall_body",
)
# Signing faults, drawn apart from the outcomes above (only when one is set, so seeded runs without them
# see the same outcomes as before): a dishonest or broken TEE provider.
_SIGNING = (
    "sign_wrong_key",  # signs with another key, yet names its registered signer as the signing address
    "alter_after_signing",  # signs the true reply, sends an altered one (chat)
    "withhold_signature",  # stores no signature: the lookup answers chat_id_not_found
)
# Drawn per `GET /v1/quote`, also only when set: a quote from another TEE (one naming its own key).
_QUOTE = ("wrong_quote",)
ERROR_BODIES = {
    500: {"error": "Internal Server Error"},
    502: {"error": "Bad Gateway"},
    503: {"error": "Service Unavailable"},
}


@dataclass(frozen=True, slots=True)
class Faults:
    """Knob values. Probabilities are in [0, 1]; delays in seconds; ``down`` refuses connections."""

    latency: float = 0.0
    chunk_delay: float = 0.0
    reset_before_headers: float = 0.0
    error_500: float = 0.0
    error_502: float = 0.0
    error_503: float = 0.0
    rate_limit_storm: float = 0.0
    malformed_json: float = 0.0
    drop_mid_stream: float = 0.0
    stall_body: float = 0.0
    stall_seconds: float = 3600.0
    sign_wrong_key: float = 0.0
    alter_after_signing: float = 0.0
    withhold_signature: float = 0.0
    wrong_quote: float = 0.0
    down: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (*_OUTCOMES, *_SIGNING, *_QUOTE):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"fault {name} is a probability in [0, 1], got {value}")
        for group in (_OUTCOMES, _SIGNING):
            if sum(getattr(self, name) for name in group) > 1.0 + 1e-9:
                raise ConfigError(f"fault probabilities of {', '.join(group)} add up to more than 1")
        if min(self.latency, self.chunk_delay, self.stall_seconds) < 0:
            raise ConfigError("fault delays cannot be negative")

    def updated(self, changes: dict[str, Any]) -> Faults:
        """A copy with ``changes`` applied; unknown knobs or wrong types raise ConfigError."""
        known = {f.name: f.type for f in fields(self)}
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise ConfigError(f"unknown fault knobs: {', '.join(unknown)}; known: {', '.join(known)}")
        checked: dict[str, Any] = {}
        for name, value in changes.items():
            kind = type(getattr(self, name))
            if kind is bool and not isinstance(value, bool):
                raise ConfigError(f"fault {name} takes true or false")
            if kind is not bool and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ConfigError(f"fault {name} takes a number")
            checked[name] = kind(value)
        return replace(self, **checked)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class FaultPlan:
    """Draws each request's outcome from the knobs, reproducibly for a given seed."""

    def __init__(self, faults: Faults | None = None) -> None:
        self.faults = faults or Faults()
        self._random = random.Random(self.faults.seed)  # noqa: S311 - reproducible test faults

    def set(self, faults: Faults) -> None:
        """New knobs; a new seed restarts the sequence of draws."""
        if faults.seed != self.faults.seed:
            self._random = random.Random(faults.seed)  # noqa: S311
        self.faults = faults

    def draw(self) -> str | None:
        """The fault this request suffers (a knob name from the outcome list), or None."""
        return self._pick(_OUTCOMES)

    def draw_signing(self) -> str | None:
        """How this reply's signature goes wrong (a signing knob's name), or None."""
        if not any(getattr(self.faults, name) for name in _SIGNING):
            return None
        return self._pick(_SIGNING)

    def draw_wrong_quote(self) -> bool:
        """Whether this quote is another TEE's (``wrong_quote``)."""
        return bool(self.faults.wrong_quote) and self._pick(_QUOTE) is not None

    def _pick(self, names: tuple[str, ...]) -> str | None:
        roll, threshold = self._random.random(), 0.0
        for name in names:
            threshold += getattr(self.faults, name)
            if roll < threshold:
                return name
        return None
