"""How a simulated provider checks an ``app-sk`` session token: the broker's steps, order and messages.

protocol.md §3.3: header shape, base64 and JSON, provider match, ephemeral rules, expiry, revocation
against the on-chain account (read through a cache: 10 min when found, 30 s when absent, like the
broker's), then the EIP-191 signature. The first failure wins and becomes a 400 with its message.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cachetools import TTLCache
from eth_account import Account as EthAccount
from eth_account.messages import encode_defunct
from eth_utils.crypto import keccak

from router.chain.session import EPHEMERAL_TOKEN_ID, MAX_EPHEMERAL_LIFETIME_MS
from router.types import Account

_PREFIX = "Bearer app-sk-"
_SIGNATURE = re.compile(r"0x[0-9a-fA-F]{130}")
FOUND_ACCOUNT_TTL = 600.0
ABSENT_ACCOUNT_TTL = 30.0
# Verified tokens are remembered so that a busy simulator does not recover a signature per request.
_VERIFIED_TTL = 300.0
_MAX_VERIFIED = 10_000

AccountReader = Callable[[str], Awaitable[Account | None]]


class SessionRejected(Exception):
    """The token fails a check; ``str()`` is the broker's message for it."""


@dataclass(frozen=True, slots=True)
class _Token:
    raw: str
    signature: str
    address: str
    provider: str
    timestamp: int
    expires_at: int
    generation: int
    token_id: int


class SessionValidator:
    """Validates session tokens addressed to ``provider``; ``read_account(user)`` reads the chain."""

    def __init__(
        self,
        provider: str,
        read_account: AccountReader,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._provider = provider.lower()
        self._read_account = read_account
        self._clock = clock
        self._accounts: dict[str, tuple[float, Account | None]] = {}
        self._verified: TTLCache[str, bool] = TTLCache(maxsize=_MAX_VERIFIED, ttl=_VERIFIED_TTL, timer=clock)

    async def validate(self, authorization: str | None) -> str:
        """The user address the token speaks for; raises SessionRejected with the broker's message."""
        token = _parse(authorization or "")
        if token.provider.lower() != self._provider:
            raise SessionRejected("session token is for different provider")
        if token.token_id == EPHEMERAL_TOKEN_ID:
            if token.expires_at == 0:
                raise SessionRejected("ephemeral token must have an expiration time")
            if token.expires_at - token.timestamp > MAX_EPHEMERAL_LIFETIME_MS:
                raise SessionRejected("ephemeral token duration cannot exceed 24 hours")
        now = self._clock()
        if token.expires_at > 0 and int(now) > token.expires_at // 1000:
            raise SessionRejected("session token expired")
        _check_revocation(token, await self._account(token.address, now))
        self._verify_signature(authorization or "", token)
        return token.address

    def forget_account(self, user: str) -> None:
        """Drop the cached account of ``user`` (the broker's cache has no such hook; tests do)."""
        self._accounts.pop(user.lower(), None)

    async def _account(self, user: str, now: float) -> Account | None:
        key = user.lower()
        cached = self._accounts.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        account = await self._read_account(user)
        ttl = FOUND_ACCOUNT_TTL if account is not None else ABSENT_ACCOUNT_TTL
        self._accounts[key] = (now + ttl, account)
        return account

    def _verify_signature(self, authorization: str, token: _Token) -> None:
        if authorization in self._verified:
            return
        # The broker's hex parser insists on the 0x prefix; 65 bytes is r‖s‖v.
        if not _SIGNATURE.fullmatch(token.signature):
            raise SessionRejected("signature verification failed: invalid signature format")
        try:
            signer = EthAccount.recover_message(
                encode_defunct(primitive=keccak(text=token.raw)), signature=token.signature
            )
        except ValueError:
            raise SessionRejected("signature verification failed: invalid signature") from None
        if signer.lower() != token.address.lower():
            raise SessionRejected("signature verification failed: address mismatch")
        self._verified[authorization] = True


def _parse(authorization: str) -> _Token:
    if not authorization.startswith(_PREFIX):
        raise SessionRejected(
            "missing or invalid Authorization header, must be Bearer app-sk-<base64(rawMessage:signature)>"
        )
    try:
        payload = base64.b64decode(authorization[len(_PREFIX) :], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise SessionRejected("invalid base64 in session token") from None
    raw, bar, signature = payload.partition("|")
    if not bar:
        raise SessionRejected("invalid Authorization payload, expected rawMessage|signature")
    try:
        fields = json.loads(raw)
        return _Token(
            raw=raw,
            signature=signature,
            address=str(fields["address"]),
            provider=str(fields["provider"]),
            timestamp=int(fields["timestamp"]),
            expires_at=int(fields["expiresAt"]),
            # Tokens of the old five-key format read as persistent id 0, generation 0 (§3.2).
            generation=int(fields.get("generation", 0)),
            token_id=int(fields.get("tokenId", 0)),
        )
    except (ValueError, KeyError, TypeError):
        raise SessionRejected("invalid session token format") from None


def _check_revocation(token: _Token, account: Account | None) -> None:
    if account is None:
        return
    if token.generation < account.generation:
        raise SessionRejected("session token has been revoked (generation expired)")
    if token.generation > account.generation:
        raise SessionRejected("invalid session token (future generation)")
    if token.token_id != EPHEMERAL_TOKEN_ID and account.is_token_revoked(token.token_id):
        raise SessionRejected("session token has been revoked")
