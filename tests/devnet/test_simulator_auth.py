"""The simulated provider's session check: the broker's order and messages (protocol.md §3.3)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from eth_utils.crypto import keccak

from router.chain.session import mint_session_token
from router.chain.wallet import Wallet
from router.devnet import USER_KEY_INDEX, Devnet, dev_private_key
from router.devnet.node_tools import NodeModules
from router.devnet.simulator.auth import ABSENT_ACCOUNT_TTL, SessionRejected, SessionValidator
from router.types import Account
from tests.support import FakeClock, run_node

PROVIDER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
OTHER_PROVIDER = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"
NOW = 1_800_000_000.0
USER = Wallet("0x" + "31" * 32)


class FakeChain:
    """Accounts by user; counts reads so cache behaviour is visible."""

    def __init__(self) -> None:
        self.accounts: dict[str, Account] = {}
        self.reads = 0

    async def read(self, user: str) -> Account | None:
        self.reads += 1
        return self.accounts.get(user.lower())

    def set_account(self, *, generation: int = 0, revoked_bitmap: int = 0) -> None:
        self.accounts[USER.address.lower()] = Account(
            user=USER.address,
            provider=PROVIDER,
            nonce=0,
            balance=10**18,
            pending_refund=0,
            refunds=(),
            additional_info="",
            acknowledged=True,
            generation=generation,
            revoked_bitmap=revoked_bitmap,
        )


@pytest.fixture
def chain() -> FakeChain:
    return FakeChain()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def validator(chain: FakeChain, clock: FakeClock) -> SessionValidator:
    return SessionValidator(PROVIDER, chain.read, clock=clock)


def token(**overrides: Any) -> str:
    """A real token of ``USER`` for ``PROVIDER`` (ephemeral, 1 h), minted by our own minting code."""
    params: dict[str, Any] = {"generation": 0, "now_ms": int(NOW * 1000), "lifetime_ms": 3600_000}
    return mint_session_token(USER, PROVIDER, **{**params, **overrides}).authorization


def hand_signed(fields: dict[str, Any], signer: Wallet = USER) -> str:
    """A token over arbitrary JSON fields, signed the way the SDK signs."""
    raw = json.dumps(fields, separators=(",", ":"))
    signature = "0x" + signer.sign_personal(keccak(text=raw)).hex()
    return "Bearer app-sk-" + base64.b64encode(f"{raw}|{signature}".encode()).decode()


def fields(**overrides: Any) -> dict[str, Any]:
    now_ms = int(NOW * 1000)
    base = {
        "address": USER.address,
        "provider": PROVIDER,
        "timestamp": now_ms,
        "expiresAt": now_ms + 3600_000,
        "nonce": "n",
        "generation": 0,
        "tokenId": 255,
    }
    return {**base, **overrides}


class TestAccepted:
    async def test_a_fresh_token_names_its_user(self, validator: SessionValidator) -> None:
        assert await validator.validate(token()) == USER.address

    async def test_a_token_without_an_account_passes_the_revocation_step(
        self, validator: SessionValidator, chain: FakeChain
    ) -> None:
        """No on-chain account yet: revocation cannot apply, so the token is accepted (§3.3 step 6)."""
        assert chain.accounts == {}
        assert await validator.validate(token()) == USER.address

    async def test_an_old_five_key_token_reads_as_persistent_id_0(
        self, validator: SessionValidator, chain: FakeChain
    ) -> None:
        """Tokens from the deprecated SDK carry no generation or tokenId: id 0, generation 0."""
        legacy = {k: v for k, v in fields().items() if k not in ("generation", "tokenId")}
        chain.set_account()
        assert await validator.validate(hand_signed(legacy)) == USER.address
        chain.set_account(revoked_bitmap=1)
        validator.forget_account(USER.address)
        with pytest.raises(SessionRejected, match=r"^session token has been revoked$"):
            await validator.validate(hand_signed(legacy))


class TestRejected:
    @pytest.mark.parametrize(
        ("header", "message"),
        [
            (None, "missing or invalid Authorization header"),
            ("Bearer sk-123", "missing or invalid Authorization header"),
            ("Bearer app-sk-!!!notbase64", "invalid base64"),
            ("Bearer app-sk-" + base64.b64encode(b"no separator").decode(), "invalid Authorization payload"),
            ("Bearer app-sk-" + base64.b64encode(b"{not json|0x00").decode(), "invalid session token format"),
        ],
    )
    async def test_malformed_headers(
        self, validator: SessionValidator, header: str | None, message: str
    ) -> None:
        with pytest.raises(SessionRejected, match=message):
            await validator.validate(header)

    async def test_a_token_for_another_provider(self, validator: SessionValidator) -> None:
        other = mint_session_token(USER, OTHER_PROVIDER, generation=0, now_ms=int(NOW * 1000))
        with pytest.raises(SessionRejected, match="session token is for different provider"):
            await validator.validate(other.authorization)

    async def test_ephemeral_rules(self, validator: SessionValidator) -> None:
        """Id 255 must expire, and within 24 h of its timestamp."""
        with pytest.raises(SessionRejected, match="must have an expiration time"):
            await validator.validate(hand_signed(fields(expiresAt=0)))
        too_long = fields(expiresAt=fields()["timestamp"] + 24 * 3600_000 + 1)
        with pytest.raises(SessionRejected, match="cannot exceed 24 hours"):
            await validator.validate(hand_signed(too_long))

    async def test_expiry_is_checked_in_whole_seconds(
        self, validator: SessionValidator, clock: FakeClock
    ) -> None:
        """Valid through its expiry second; refused in the next one."""
        header = token(lifetime_ms=10_000)
        clock.now = NOW + 10.9
        assert await validator.validate(header) == USER.address
        clock.now = NOW + 11.0
        with pytest.raises(SessionRejected, match=r"^session token expired$"):
            await validator.validate(header)

    async def test_generation_must_match_the_chain(
        self, validator: SessionValidator, chain: FakeChain
    ) -> None:
        chain.set_account(generation=1)
        with pytest.raises(SessionRejected, match=r"revoked \(generation expired\)"):
            await validator.validate(token(generation=0))
        with pytest.raises(SessionRejected, match=r"future generation"):
            await validator.validate(token(generation=2))
        assert await validator.validate(token(generation=1)) == USER.address

    async def test_a_revoked_persistent_id_is_refused(
        self, validator: SessionValidator, chain: FakeChain
    ) -> None:
        """Bit 3 set: persistent id 3 is refused; id 4 and ephemeral tokens are not."""
        chain.set_account(revoked_bitmap=1 << 3)
        with pytest.raises(SessionRejected, match=r"^session token has been revoked$"):
            await validator.validate(token(token_id=3, lifetime_ms=0))
        assert await validator.validate(token(token_id=4, lifetime_ms=0)) == USER.address
        assert await validator.validate(token()) == USER.address

    async def test_a_signature_by_someone_else(self, validator: SessionValidator) -> None:
        """The JSON claims USER, but another key signed it."""
        forged = hand_signed(fields(), signer=Wallet("0x" + "77" * 32))
        with pytest.raises(SessionRejected, match="address mismatch"):
            await validator.validate(forged)

    async def test_a_signature_without_0x_is_refused(self, validator: SessionValidator) -> None:
        raw = json.dumps(fields(), separators=(",", ":"))
        signature = USER.sign_personal(keccak(text=raw)).hex()
        header = "Bearer app-sk-" + base64.b64encode(f"{raw}|{signature}".encode()).decode()
        with pytest.raises(SessionRejected, match="invalid signature format"):
            await validator.validate(header)


class TestAccountCache:
    async def test_a_found_account_is_read_once_in_ten_minutes(
        self, validator: SessionValidator, chain: FakeChain, clock: FakeClock
    ) -> None:
        """A revocation made on chain is only seen after the cache entry expires, as with the broker."""
        chain.set_account(generation=0)
        await validator.validate(token(lifetime_ms=24 * 3600_000))
        chain.set_account(generation=1)
        clock.now = NOW + 599
        await validator.validate(token(lifetime_ms=24 * 3600_000))
        assert chain.reads == 1
        clock.now = NOW + 601
        with pytest.raises(SessionRejected, match="generation expired"):
            await validator.validate(token(lifetime_ms=24 * 3600_000))
        assert chain.reads == 2

    async def test_an_absent_account_is_remembered_for_thirty_seconds(
        self, validator: SessionValidator, chain: FakeChain, clock: FakeClock
    ) -> None:
        await validator.validate(token())
        chain.set_account(generation=1)
        clock.now = NOW + ABSENT_ACCOUNT_TTL - 1
        assert await validator.validate(token()) == USER.address
        clock.now = NOW + ABSENT_ACCOUNT_TTL + 1
        with pytest.raises(SessionRejected, match="generation expired"):
            await validator.validate(token())
        assert chain.reads == 2


class TestAgainstTheDevnet:
    async def test_accepts_the_official_sdk_token_and_sees_revocation(
        self, fresh_devnet: Devnet, node_modules: NodeModules
    ) -> None:
        """The SDK's getRequestHeaders token passes; after revokeAllTokens on chain it is refused."""
        provider = fresh_devnet.providers[0].address
        user = fresh_devnet.user_wallet.address

        async def read_account(address: str) -> Account | None:
            return await fresh_devnet.user.get_account(address, provider)

        headers = await run_node(
            node_modules,
            "sdk_client.js",
            "request-headers",
            fresh_devnet.rpc_url,
            dev_private_key(USER_KEY_INDEX),
            provider,
        )
        validator = SessionValidator(provider, read_account)
        assert await validator.validate(headers["Authorization"]) == user
        await fresh_devnet.user.revoke_all_tokens(provider)
        validator.forget_account(user)
        with pytest.raises(SessionRejected, match="generation expired"):
            await validator.validate(headers["Authorization"])
