"""Session tokens ("app-sk"): how a wallet authenticates to a provider (protocol.md §3).

A token is ``"app-sk-" + base64(rawJSON + "|" + 0x-signature)``, where the signature is an EIP-191
personal-sign by the user's wallet over ``keccak256(rawJSON)``. Ephemeral tokens use tokenId 255 and live
at most 24 h; persistent ones use ids 0-254 and may never expire. ``generation`` must equal the on-chain
account's generation, which ``revokeAllTokens`` bumps.

Tokens are bearer secrets: ``SessionToken`` never shows the token in its repr, and nothing here logs.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from eth_utils.address import is_hex_address
from eth_utils.crypto import keccak

from router.chain.client import ChainClient
from router.chain.wallet import Wallet
from router.errors import SessionTokenError

EPHEMERAL_TOKEN_ID = 255
MAX_EPHEMERAL_LIFETIME_MS = 24 * 3600 * 1000
# The official SDKs reuse a cached ephemeral token while more than an hour of it remains.
DEFAULT_RENEW_BEFORE_MS = 3600 * 1000


@dataclass(frozen=True, slots=True)
class SessionToken:
    """A minted token. ``authorization`` is the full ``Authorization`` header value."""

    provider: str
    token_id: int
    generation: int
    issued_at_ms: int
    expires_at_ms: int
    authorization: str = field(repr=False)

    def needs_renewal(self, now_ms: int, renew_before_ms: int) -> bool:
        """True once fewer than ``renew_before_ms`` remain (never for a non-expiring token)."""
        return self.expires_at_ms != 0 and self.expires_at_ms - now_ms < renew_before_ms


def mint_session_token(
    wallet: Wallet,
    provider: str,
    *,
    generation: int,
    now_ms: int,
    token_id: int = EPHEMERAL_TOKEN_ID,
    lifetime_ms: int = MAX_EPHEMERAL_LIFETIME_MS,
) -> SessionToken:
    """Sign a token for ``provider``. ``lifetime_ms=0`` makes a never-expiring persistent token."""
    if not 0 <= token_id <= EPHEMERAL_TOKEN_ID:
        raise SessionTokenError(f"token id must be 0-255, got {token_id}")
    if token_id == EPHEMERAL_TOKEN_ID and not 0 < lifetime_ms <= MAX_EPHEMERAL_LIFETIME_MS:
        raise SessionTokenError("an ephemeral token (id 255) must expire within 24 h")
    if lifetime_ms < 0:
        raise SessionTokenError("token lifetime cannot be negative")
    if not is_hex_address(provider):
        # The provider splits the token on "|": a free-form string could corrupt it.
        raise SessionTokenError(f"provider must be a 0x address, got {provider!r}")
    expires_at = now_ms + lifetime_ms if lifetime_ms else 0
    # Key order matches the official SDK byte for byte; the provider hashes whatever bytes it receives.
    raw = json.dumps(
        {
            "address": wallet.address,
            "provider": provider,
            "timestamp": now_ms,
            "expiresAt": expires_at,
            "nonce": secrets.token_hex(16),
            "generation": generation,
            "tokenId": token_id,
        },
        separators=(",", ":"),
    )
    signature = wallet.sign_personal(keccak(text=raw))
    payload = f"{raw}|0x{signature.hex()}"
    token = "app-sk-" + base64.b64encode(payload.encode()).decode("ascii")
    return SessionToken(
        provider=provider,
        token_id=token_id,
        generation=generation,
        issued_at_ms=now_ms,
        expires_at_ms=expires_at,
        authorization=f"Bearer {token}",
    )


class SessionTokens:
    """One ephemeral token per provider for ``chain``'s wallet, minted on demand and renewed early.

    The generation comes from the chain when a token is minted (a missing sub-account means generation 0).
    Concurrent callers for the same provider share one mint.
    """

    def __init__(
        self,
        chain: ChainClient,
        *,
        lifetime_ms: int = MAX_EPHEMERAL_LIFETIME_MS,
        renew_before_ms: int = DEFAULT_RENEW_BEFORE_MS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if chain.wallet is None:
            raise SessionTokenError("session tokens need a ChainClient with a wallet")
        if not 0 < renew_before_ms < lifetime_ms <= MAX_EPHEMERAL_LIFETIME_MS:
            raise SessionTokenError("need 0 < renew_before_ms < lifetime_ms <= 24 h")
        self._chain = chain
        self._wallet = chain.wallet
        self._lifetime_ms = lifetime_ms
        self._renew_before_ms = renew_before_ms
        self._clock = clock
        self._tokens: dict[str, SessionToken] = {}
        self._minting: dict[str, asyncio.Lock] = {}

    async def authorization(self, provider: str) -> str:
        """The ``Authorization`` header value for ``provider``."""
        key = provider.lower()
        token = self._tokens.get(key)
        if token is not None and not token.needs_renewal(self._now_ms(), self._renew_before_ms):
            return token.authorization
        lock = self._minting.setdefault(key, asyncio.Lock())
        async with lock:
            token = self._tokens.get(key)
            if token is None or token.needs_renewal(self._now_ms(), self._renew_before_ms):
                token = await self._mint(provider)
                self._tokens[key] = token
        return token.authorization

    async def persistent(self, provider: str, token_id: int, *, lifetime_ms: int = 0) -> SessionToken:
        """Mint a persistent token (an API key) with id 0-254; ``lifetime_ms=0`` never expires.

        Not cached: each call is a new key. Refuses an id the chain marks revoked, since the provider
        would reject it.
        """
        if not 0 <= token_id < EPHEMERAL_TOKEN_ID:
            raise SessionTokenError(f"a persistent token id must be 0-254, got {token_id}")
        account = await self._chain.get_account(self._wallet.address, provider)
        if account is not None and account.is_token_revoked(token_id):
            raise SessionTokenError(
                f"token id {token_id} is revoked for provider {provider}; use another id, "
                "or revokeAllTokens to start a new generation"
            )
        return mint_session_token(
            self._wallet,
            provider,
            generation=account.generation if account else 0,
            now_ms=self._now_ms(),
            token_id=token_id,
            lifetime_ms=lifetime_ms,
        )

    def invalidate(self, provider: str) -> None:
        """Drop the cached token (after a provider said it was revoked or expired)."""
        self._tokens.pop(provider.lower(), None)

    async def _mint(self, provider: str) -> SessionToken:
        account = await self._chain.get_account(self._wallet.address, provider)
        return mint_session_token(
            self._wallet,
            provider,
            generation=account.generation if account else 0,
            now_ms=self._now_ms(),
            lifetime_ms=self._lifetime_ms,
        )

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)
