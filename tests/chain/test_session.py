"""Session tokens ("app-sk", protocol.md §3): wire format, the official SDK's tokens, the cache."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils.crypto import keccak

from router.chain.client import ChainClient
from router.chain.session import (
    DEFAULT_RENEW_BEFORE_MS,
    EPHEMERAL_TOKEN_ID,
    MAX_EPHEMERAL_LIFETIME_MS,
    SessionToken,
    SessionTokens,
    mint_session_token,
)
from router.chain.wallet import Wallet
from router.devnet import USER_KEY_INDEX, Devnet, dev_private_key
from router.devnet.node_tools import NodeModules
from router.errors import SessionTokenError
from tests.support import FakeClock, run_node

TOKEN_KEYS = ["address", "provider", "timestamp", "expiresAt", "nonce", "generation", "tokenId"]
BEARER = "Bearer app-sk-"
DAY_MS = 24 * 3600 * 1000
NOW_MS = 1_700_000_000_000
PROVIDER = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
STANDARD_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
SIGNATURE = re.compile(r"0x[0-9a-fA-F]{130}")


@dataclass(frozen=True)
class Decoded:
    """An Authorization header taken apart, with every format rule of protocol.md §3.1 already checked."""

    text: str  # the base64 part: the bearer secret itself
    raw: str
    fields: dict[str, Any]
    signature: str

    @property
    def signer(self) -> str:
        return str(
            Account.recover_message(encode_defunct(primitive=keccak(text=self.raw)), signature=self.signature)
        )

    @property
    def v(self) -> int:
        return int(self.signature[-2:], 16)


def decode(authorization: str) -> Decoded:
    assert authorization.startswith(BEARER), authorization[:20]
    text = authorization.removeprefix(BEARER)
    assert STANDARD_BASE64.fullmatch(text), "not standard, padded base64"
    payload = base64.b64decode(text, validate=True).decode("utf-8")
    raw, bar, signature = payload.rpartition("|")
    assert bar == "|", "no '|' between the JSON and the signature"
    assert SIGNATURE.fullmatch(signature), signature
    fields = json.loads(raw)
    return Decoded(text=text, raw=raw, fields=fields, signature=signature)


def count_account_reads(monkeypatch: pytest.MonkeyPatch, chain: ChainClient) -> list[str]:
    """Record the provider of every ``get_account`` call made through ``chain`` (one per mint)."""
    calls: list[str] = []
    original: Callable[[str, str], Awaitable[Any]] = chain.get_account

    async def counting(user: str, provider: str) -> Any:
        calls.append(provider)
        return await original(user, provider)

    monkeypatch.setattr(chain, "get_account", counting)
    return calls


@pytest.fixture(scope="module")
def wallet() -> Wallet:
    return Wallet(dev_private_key(USER_KEY_INDEX))


def mint(wallet: Wallet, **overrides: Any) -> SessionToken:
    return mint_session_token(wallet, PROVIDER, **{"generation": 0, "now_ms": NOW_MS, **overrides})


class TestTokenFormat:
    def test_token_is_app_sk_base64_of_json_bar_signature(self, wallet: Wallet) -> None:
        """The header is "Bearer app-sk-" + standard base64 of rawJSON + "|" + 0x and 130 hex chars."""
        token = mint(wallet)
        decoded = decode(token.authorization)
        payload = base64.b64decode(decoded.text).decode()
        assert payload == f"{decoded.raw}|{decoded.signature}"
        assert base64.b64encode(payload.encode()).decode() == decoded.text

    def test_json_has_exactly_the_sdk_keys_in_order_compactly(self, wallet: Wallet) -> None:
        """rawJSON holds address, provider, timestamp, expiresAt, nonce, generation, tokenId; no spaces."""
        decoded = decode(mint(wallet, generation=7).authorization)
        assert list(decoded.fields) == TOKEN_KEYS
        assert " " not in decoded.raw
        assert decoded.raw == json.dumps(decoded.fields, separators=(",", ":"))
        assert decoded.fields["address"] == wallet.address
        assert decoded.fields["provider"] == PROVIDER
        assert decoded.fields["timestamp"] == NOW_MS
        assert decoded.fields["generation"] == 7
        assert isinstance(decoded.fields["nonce"], str)
        assert decoded.fields["nonce"]

    def test_signature_recovers_to_the_wallet_with_v_27_or_28(self, wallet: Wallet) -> None:
        """The signature is an EIP-191 personal-sign of keccak(rawJSON) by the wallet; v is 27 or 28."""
        for _ in range(4):  # v depends on the signature; a few mints make both values likely
            decoded = decode(mint(wallet).authorization)
            assert decoded.signer == wallet.address
            assert decoded.v in (27, 28)

    def test_ephemeral_token_is_id_255_and_lives_exactly_its_lifetime(self, wallet: Wallet) -> None:
        """An ephemeral token has tokenId 255 and expiresAt - timestamp == lifetime_ms."""
        token = mint(wallet, lifetime_ms=600_000, generation=2)
        fields = decode(token.authorization).fields
        assert fields["tokenId"] == EPHEMERAL_TOKEN_ID == 255
        assert fields["expiresAt"] - fields["timestamp"] == 600_000
        assert (token.token_id, token.generation, token.provider) == (255, 2, PROVIDER)
        assert (token.issued_at_ms, token.expires_at_ms) == (NOW_MS, NOW_MS + 600_000)

    def test_default_lifetime_is_24_hours(self, wallet: Wallet) -> None:
        """Without lifetime_ms an ephemeral token lives the maximum, 24 h."""
        fields = decode(mint(wallet).authorization).fields
        assert fields["expiresAt"] - fields["timestamp"] == MAX_EPHEMERAL_LIFETIME_MS == DAY_MS

    def test_persistent_token_with_lifetime_0_never_expires(self, wallet: Wallet) -> None:
        """A persistent token (id 0-254) with lifetime_ms=0 carries expiresAt 0."""
        token = mint(wallet, token_id=3, lifetime_ms=0)
        fields = decode(token.authorization).fields
        assert (fields["tokenId"], fields["expiresAt"]) == (3, 0)
        assert token.expires_at_ms == 0
        assert not token.needs_renewal(NOW_MS + 10 * DAY_MS, DEFAULT_RENEW_BEFORE_MS)

    def test_two_mints_differ_in_nonce(self, wallet: Wallet) -> None:
        """Two tokens minted with identical inputs still get different nonces (and so different texts)."""
        first, second = (decode(mint(wallet).authorization) for _ in range(2))
        assert first.fields["nonce"] != second.fields["nonce"]
        assert first.text != second.text

    def test_repr_and_str_never_show_the_token(self, wallet: Wallet) -> None:
        """repr(token) and str(token) contain neither the base64 token text nor the signature."""
        token = mint(wallet)
        decoded = decode(token.authorization)
        for shown in (repr(token), str(token), f"{token}", f"{[token]}"):
            assert decoded.text not in shown
            assert decoded.text[:16] not in shown
            assert decoded.signature[2:] not in shown
            assert "app-sk" not in shown


class TestTokenRules:
    @pytest.mark.parametrize("lifetime_ms", [MAX_EPHEMERAL_LIFETIME_MS + 1, 0, -1])
    def test_ephemeral_lifetime_must_be_within_24_hours(self, wallet: Wallet, lifetime_ms: int) -> None:
        """Token id 255 with a lifetime over 24 h, 0, or negative is refused."""
        with pytest.raises(SessionTokenError, match="24 h"):
            mint(wallet, lifetime_ms=lifetime_ms)

    @pytest.mark.parametrize("token_id", [256, -1, 1000])
    def test_token_id_must_be_0_to_255(self, wallet: Wallet, token_id: int) -> None:
        """A token id outside 0-255 is refused."""
        with pytest.raises(SessionTokenError, match="0-255"):
            mint(wallet, token_id=token_id)

    def test_persistent_lifetime_cannot_be_negative(self, wallet: Wallet) -> None:
        """A persistent token with a negative lifetime is refused rather than born expired."""
        with pytest.raises(SessionTokenError, match="negative"):
            mint(wallet, token_id=0, lifetime_ms=-1)

    @pytest.mark.parametrize(
        "provider", ["provider-1", "0x123", "0x5FbDB2315678afecb367f032d93F642f64180aa3|x"]
    )
    def test_provider_must_be_an_address(self, wallet: Wallet, provider: str) -> None:
        """A provider that is not an address is refused: a "|" in it would corrupt the token."""
        with pytest.raises(SessionTokenError, match="must be a 0x address"):
            mint_session_token(wallet, provider, generation=0, now_ms=NOW_MS)

    def test_limits_are_inclusive(self, wallet: Wallet) -> None:
        """Exactly 24 h is a valid ephemeral lifetime; ids 0 and 254 are valid persistent ids."""
        assert mint(wallet, lifetime_ms=MAX_EPHEMERAL_LIFETIME_MS).expires_at_ms == NOW_MS + DAY_MS
        assert decode(mint(wallet, token_id=0, lifetime_ms=0).authorization).fields["tokenId"] == 0
        assert decode(mint(wallet, token_id=254, lifetime_ms=0).authorization).fields["tokenId"] == 254


class TestAgainstOfficialSdk:
    async def sdk_and_ours(self, devnet: Devnet, node_modules: NodeModules) -> tuple[Decoded, Decoded]:
        provider = devnet.providers[0].address
        headers = await run_node(
            node_modules,
            "sdk_client.js",
            "request-headers",
            devnet.rpc_url,
            dev_private_key(USER_KEY_INDEX),
            provider,
        )
        assert set(headers) == {"Authorization"}
        ours = await SessionTokens(devnet.user).authorization(provider)
        return decode(headers["Authorization"]), decode(ours)

    def assert_same_shape(self, sdk: Decoded, ours: Decoded, devnet: Devnet) -> None:
        user = devnet.user_wallet.address
        assert list(sdk.fields) == list(ours.fields) == TOKEN_KEYS
        assert {k: type(v) for k, v in sdk.fields.items()} == {k: type(v) for k, v in ours.fields.items()}
        assert sdk.fields["address"] == ours.fields["address"] == user
        assert sdk.fields["provider"].lower() == ours.fields["provider"].lower()
        assert sdk.fields["provider"].lower() == devnet.providers[0].address.lower()
        assert sdk.fields["tokenId"] == ours.fields["tokenId"] == 255
        sdk_lifetime = sdk.fields["expiresAt"] - sdk.fields["timestamp"]
        our_lifetime = ours.fields["expiresAt"] - ours.fields["timestamp"]
        assert sdk_lifetime == our_lifetime == DAY_MS
        assert sdk.signer == ours.signer == user
        assert sdk.v in (27, 28)
        assert " " not in sdk.raw

    async def test_our_token_matches_the_sdk_token(
        self, fresh_devnet: Devnet, node_modules: NodeModules
    ) -> None:
        """Same keys, order, value types, address, provider, tokenId 255, 24 h and generation 0 as the SDK."""
        sdk, ours = await self.sdk_and_ours(fresh_devnet, node_modules)
        self.assert_same_shape(sdk, ours, fresh_devnet)
        assert sdk.fields["generation"] == ours.fields["generation"] == 0

    async def test_generation_matches_the_sdk_after_revoke_all(
        self, fresh_devnet: Devnet, node_modules: NodeModules
    ) -> None:
        """After revokeAllTokens both the SDK and we put the bumped on-chain generation (1) in the token."""
        await fresh_devnet.user.revoke_all_tokens(fresh_devnet.providers[0].address)
        sdk, ours = await self.sdk_and_ours(fresh_devnet, node_modules)
        self.assert_same_shape(sdk, ours, fresh_devnet)
        assert sdk.fields["generation"] == ours.fields["generation"] == 1


class TestSessionTokensCache:
    async def test_second_call_returns_the_cached_token(
        self, devnet: Devnet, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A second call for the same provider returns the same Authorization without touching the chain."""
        reads = count_account_reads(monkeypatch, devnet.user)
        tokens = SessionTokens(devnet.user, clock=FakeClock(NOW_MS / 1000))
        provider = devnet.providers[0].address
        first = await tokens.authorization(provider)
        assert await tokens.authorization(provider) == first
        assert await tokens.authorization(provider.lower()) == first
        assert len(reads) == 1
        fields = decode(first).fields
        assert (fields["timestamp"], fields["expiresAt"]) == (NOW_MS, NOW_MS + DAY_MS)
        assert fields["generation"] == 0

    async def test_concurrent_callers_share_one_mint(
        self, devnet: Devnet, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Five concurrent calls for one provider get one token from one mint."""
        reads = count_account_reads(monkeypatch, devnet.user)
        tokens = SessionTokens(devnet.user, clock=FakeClock(NOW_MS / 1000))
        provider = devnet.providers[1].address
        results = await asyncio.gather(*(tokens.authorization(provider) for _ in range(5)))
        assert len(set(results)) == 1
        assert len(reads) == 1

    async def test_token_is_renewed_once_less_than_renew_before_remains(self, devnet: Devnet) -> None:
        """The token is reused up to exactly expiry - renew_before; one second later a new one is minted."""
        start = NOW_MS // 1000
        clock = FakeClock(start)
        tokens = SessionTokens(devnet.user, clock=clock)
        provider = devnet.providers[0].address
        first = await tokens.authorization(provider)
        renew_at = start + (DAY_MS - DEFAULT_RENEW_BEFORE_MS) // 1000
        clock.now = renew_at
        assert await tokens.authorization(provider) == first
        clock.now = renew_at + 1
        second = await tokens.authorization(provider)
        assert second != first
        fields = decode(second).fields
        assert fields["timestamp"] == (renew_at + 1) * 1000
        assert fields["expiresAt"] == (renew_at + 1) * 1000 + DAY_MS
        assert await tokens.authorization(provider) == second

    async def test_custom_lifetime_and_renewal(self, devnet: Devnet) -> None:
        """lifetime_ms and renew_before_ms set the token's lifetime and the renewal point."""
        clock = FakeClock(NOW_MS // 1000)
        tokens = SessionTokens(devnet.user, lifetime_ms=600_000, renew_before_ms=60_000, clock=clock)
        provider = devnet.providers[0].address
        first = await tokens.authorization(provider)
        fields = decode(first).fields
        assert fields["expiresAt"] - fields["timestamp"] == 600_000
        clock.now += 540
        assert await tokens.authorization(provider) == first
        clock.now += 1
        assert await tokens.authorization(provider) != first

    async def test_each_provider_gets_its_own_token(self, devnet: Devnet) -> None:
        """Different providers get different tokens, each naming its own provider."""
        tokens = SessionTokens(devnet.user, clock=FakeClock(NOW_MS / 1000))
        providers = [p.address for p in devnet.providers]
        headers = await asyncio.gather(*(tokens.authorization(p) for p in providers))
        assert len(set(headers)) == len(providers)
        for provider, header in zip(providers, headers, strict=True):
            decoded = decode(header)
            assert decoded.fields["provider"] == provider
            assert decoded.signer == devnet.user_wallet.address
        assert [await tokens.authorization(p) for p in providers] == headers

    async def test_default_clock_is_the_wall_clock(self, devnet: Devnet) -> None:
        """Without clock= the token is stamped with the current wall-clock time in milliseconds."""
        before = int(time.time() * 1000)
        header = await SessionTokens(devnet.user).authorization(devnet.providers[0].address)
        after = int(time.time() * 1000)
        fields = decode(header).fields
        assert before <= fields["timestamp"] <= after
        assert fields["expiresAt"] == fields["timestamp"] + DAY_MS

    async def test_a_provider_without_an_account_gets_generation_0(self, devnet: Devnet) -> None:
        """A provider the wallet has no sub-account with still gets a token, with generation 0."""
        stranger = "0x000000000000000000000000000000000000dEaD"
        assert await devnet.user.get_account(devnet.user_wallet.address, stranger) is None
        tokens = SessionTokens(devnet.user, clock=FakeClock(NOW_MS / 1000))
        fields = decode(await tokens.authorization(stranger)).fields
        assert (fields["generation"], fields["tokenId"], fields["provider"]) == (0, 255, stranger)

    async def test_revoke_all_then_invalidate_mints_generation_1(self, fresh_devnet: Devnet) -> None:
        """After revokeAllTokens the cached token stays until invalidate(); the next has generation 1."""
        tokens = SessionTokens(fresh_devnet.user, clock=FakeClock(NOW_MS / 1000))
        provider, other = fresh_devnet.providers[0].address, fresh_devnet.providers[1].address
        old = await tokens.authorization(provider)
        other_old = await tokens.authorization(other)
        assert decode(old).fields["generation"] == 0
        await fresh_devnet.user.revoke_all_tokens(provider)
        assert await tokens.authorization(provider) == old  # the cache cannot know until told
        assert provider != provider.lower()  # checksummed: invalidate must not depend on case
        tokens.invalidate(provider)
        new = await tokens.authorization(provider.lower())
        assert new != old
        assert decode(new).fields["generation"] == 1
        assert await tokens.authorization(other) == other_old  # invalidate touches one provider only


class TestPersistentTokens:
    async def test_persistent_token_has_its_id_and_never_expires(self, devnet: Devnet) -> None:
        """persistent(provider, 3) mints tokenId 3 with expiresAt 0, and a new key on every call."""
        tokens = SessionTokens(devnet.user, clock=FakeClock(NOW_MS / 1000))
        provider = devnet.providers[0].address
        key = await tokens.persistent(provider, 3)
        fields = decode(key.authorization).fields
        assert (fields["tokenId"], fields["expiresAt"], fields["generation"]) == (3, 0, 0)
        assert (key.token_id, key.expires_at_ms, key.issued_at_ms) == (3, 0, NOW_MS)
        assert decode(key.authorization).signer == devnet.user_wallet.address
        again = await tokens.persistent(provider, 3)
        assert again.authorization != key.authorization
        assert await tokens.authorization(provider) not in (key.authorization, again.authorization)

    async def test_persistent_token_with_a_lifetime_expires(self, devnet: Devnet) -> None:
        """persistent(..., lifetime_ms=N) sets expiresAt to timestamp + N, even beyond 24 h."""
        tokens = SessionTokens(devnet.user, clock=FakeClock(NOW_MS / 1000))
        key = await tokens.persistent(devnet.providers[0].address, 0, lifetime_ms=30 * DAY_MS)
        fields = decode(key.authorization).fields
        assert (fields["tokenId"], fields["expiresAt"]) == (0, NOW_MS + 30 * DAY_MS)

    async def test_revoked_id_is_refused_and_others_still_work(self, fresh_devnet: Devnet) -> None:
        """After revokeToken(provider, 3), persistent(provider, 3) raises "revoked" while id 4 still mints."""
        tokens = SessionTokens(fresh_devnet.user, clock=FakeClock(NOW_MS / 1000))
        provider = fresh_devnet.providers[0].address
        await tokens.persistent(provider, 3)
        await fresh_devnet.user.revoke_token(provider, 3)
        with pytest.raises(SessionTokenError, match="revoked"):
            await tokens.persistent(provider, 3)
        fields = decode((await tokens.persistent(provider, 4)).authorization).fields
        assert (fields["tokenId"], fields["generation"]) == (4, 0)
        other = fresh_devnet.providers[1].address
        assert decode((await tokens.persistent(other, 3)).authorization).fields["tokenId"] == 3

    async def test_revoke_all_clears_revoked_ids_in_a_new_generation(self, fresh_devnet: Devnet) -> None:
        """After revokeToken then revokeAllTokens, id 3 can be minted again, with generation 1."""
        tokens = SessionTokens(fresh_devnet.user, clock=FakeClock(NOW_MS / 1000))
        provider = fresh_devnet.providers[0].address
        await fresh_devnet.user.revoke_token(provider, 3)
        await fresh_devnet.user.revoke_all_tokens(provider)
        fields = decode((await tokens.persistent(provider, 3)).authorization).fields
        assert (fields["tokenId"], fields["generation"]) == (3, 1)

    @pytest.mark.parametrize("token_id", [255, 256, -1])
    async def test_persistent_id_must_be_0_to_254(self, devnet: Devnet, token_id: int) -> None:
        """persistent() refuses id 255 (reserved for ephemeral tokens) and ids outside 0-254."""
        tokens = SessionTokens(devnet.user)
        with pytest.raises(SessionTokenError, match="0-254"):
            await tokens.persistent(devnet.providers[0].address, token_id)


class TestSessionTokensConstruction:
    async def test_needs_a_wallet(self, devnet: Devnet) -> None:
        """SessionTokens over a read-only ChainClient (no wallet) is refused."""
        read_only = await devnet.open_client()
        assert read_only.wallet is None
        with pytest.raises(SessionTokenError, match="wallet"):
            SessionTokens(read_only)

    @pytest.mark.parametrize(
        ("lifetime_ms", "renew_before_ms"),
        [
            (MAX_EPHEMERAL_LIFETIME_MS + 1, DEFAULT_RENEW_BEFORE_MS),
            (0, DEFAULT_RENEW_BEFORE_MS),
            (-1, DEFAULT_RENEW_BEFORE_MS),
            (MAX_EPHEMERAL_LIFETIME_MS, 0),
            (MAX_EPHEMERAL_LIFETIME_MS, -1),
            (600_000, 600_000),
            (600_000, 600_001),
        ],
    )
    def test_rejects_invalid_lifetime_or_renewal(
        self, devnet: Devnet, lifetime_ms: int, renew_before_ms: int
    ) -> None:
        """Anything but 0 < renew_before_ms < lifetime_ms <= 24 h is refused."""
        with pytest.raises(SessionTokenError, match="renew_before_ms"):
            SessionTokens(devnet.user, lifetime_ms=lifetime_ms, renew_before_ms=renew_before_ms)

    def test_accepts_the_edges(self, devnet: Devnet) -> None:
        """A 24 h lifetime with renew_before one millisecond short of it is accepted."""
        SessionTokens(devnet.user, lifetime_ms=MAX_EPHEMERAL_LIFETIME_MS, renew_before_ms=DAY_MS - 1)
        SessionTokens(devnet.user, lifetime_ms=2, renew_before_ms=1)
