"""``RouterConfig.for_devnet``: a router for a local devnet's user from a ``Devnet``, its JSON line or that
line's dict, and ``Devnet()`` with no arguments at all."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from router import Devnet, DispatchOptions, Router, RouterConfig
from router.chain.networks import DEVNET
from router.devnet import USER_KEY_INDEX, dev_private_key
from router.errors import ConfigError

USER_KEY = dev_private_key(USER_KEY_INDEX)
LINE = json.dumps(
    {
        "rpc_url": "http://127.0.0.1:9545",
        "chain_id": 31337,
        "ledger": DEVNET.ledger,
        "inference": DEVNET.inference,
        "user": {"address": "0x70997970C51812dc3A010C7d01b50e20d17dc79C", "private_key": USER_KEY},
        "providers": [],
    }
)


USERS = tuple(dev_private_key(USER_KEY_INDEX + 10 + index) for index in range(3))
SEVERAL = {
    **json.loads(LINE),
    "users": [{"address": "0x" + f"{index:040x}", "private_key": key} for index, key in enumerate(USERS)],
}


@pytest.fixture(scope="module")
async def default_devnet() -> AsyncIterator[Devnet]:
    async with Devnet() as devnet:
        yield devnet


@pytest.mark.parametrize("source", [LINE, LINE.encode(), json.loads(LINE)], ids=["str", "bytes", "dict"])
def test_the_json_line_or_its_dict_gives_the_devnet_network_key_and_private_targets(source: Any) -> None:
    """The line ``zg-router devnet --json`` prints, as text or parsed, names everything a router needs:
    the devnet network at its RPC URL, the user's key, and loopback providers allowed."""
    config = RouterConfig.for_devnet(source)
    assert config.network == DEVNET.with_rpc_urls("http://127.0.0.1:9545")
    assert config.private_key == USER_KEY
    assert config.transport.allow_private_targets is True
    assert config.static_upstreams == ()


class TestSeveralUsers:
    def test_every_user_of_the_summary_is_a_wallet(self) -> None:
        """A summary with a ``users`` list gives a wallet per user, in its order (``user`` is ignored)."""
        config = RouterConfig.for_devnet(SEVERAL)
        assert (config.private_key, config.private_keys) == (None, USERS)
        assert config.wallet_keys == USERS

    @pytest.mark.parametrize(("wallets", "keys"), [(1, USERS[:1]), (2, USERS[:2]), (3, USERS)])
    def test_wallets_keeps_the_first_n(self, wallets: int, keys: tuple[str, ...]) -> None:
        """``wallets=N`` keeps the first N users; one wallet is the one-wallet ``private_key``."""
        config = RouterConfig.for_devnet(SEVERAL, wallets=wallets)
        assert config.wallet_keys == keys
        assert config.private_key == (keys[0] if wallets == 1 else None)

    @pytest.mark.parametrize("wallets", [0, 4, -1, True])
    def test_wallets_beyond_the_users_is_a_config_error(self, wallets: int) -> None:
        """``wallets`` must be 1 to the number of users the devnet funded."""
        with pytest.raises(ConfigError) as caught:
            RouterConfig.for_devnet(SEVERAL, wallets=wallets)
        assert str(caught.value) == (
            f"RouterConfig.for_devnet: wallets must be 1-3 (the devnet's funded users), got {wallets!r}"
        )

    def test_a_summary_without_users_has_its_one_user(self) -> None:
        """An older summary (``user`` only) is one wallet; ``wallets=1`` is all it can keep."""
        assert RouterConfig.for_devnet(LINE, wallets=1).wallet_keys == (USER_KEY,)
        with pytest.raises(ConfigError, match="wallets must be 1-1"):
            RouterConfig.for_devnet(LINE, wallets=2)

    @pytest.mark.parametrize(
        "change", [{"private_key": USERS[2]}, {"private_keys": (USERS[2], USERS[0])}], ids=["one", "several"]
    )
    def test_a_key_given_as_a_change_replaces_the_devnets_wallets(self, change: dict[str, Any]) -> None:
        """``private_key=`` or ``private_keys=`` among the changes replaces every devnet wallet (no
        "both given" error from the devnet's own keys)."""
        config = RouterConfig.for_devnet(SEVERAL, **change)
        assert config.wallet_keys == tuple(change.get("private_keys", (change.get("private_key"),)))

    def test_a_user_without_a_key_is_named(self) -> None:
        """A ``users`` entry without a key is named by its place in the list."""
        broken = {**SEVERAL, "users": [SEVERAL["users"][0], {"address": "0x" + "00" * 20}]}
        with pytest.raises(ConfigError) as caught:
            RouterConfig.for_devnet(broken)
        assert str(caught.value) == (
            "RouterConfig.for_devnet: the devnet summary lacks users[1].private_key; it takes a running "
            "Devnet, the line `zg-router devnet --json` prints, or the dict it parses to"
        )


def test_keyword_changes_replace_fields() -> None:
    """Keyword arguments replace fields as ``dataclasses.replace`` does; the rest stays the devnet's."""
    config = RouterConfig.for_devnet(LINE, dispatch=DispatchOptions(max_attempts=1))
    assert config.dispatch.max_attempts == 1
    assert config.transport.allow_private_targets is True
    unknown = r"^RouterConfig.for_devnet: .*unexpected keyword argument 'colour'"
    with pytest.raises(ConfigError, match=unknown):
        RouterConfig.for_devnet(LINE, colour="blue")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        pytest.param(
            42,
            "RouterConfig.for_devnet takes a running Devnet, the line `zg-router devnet --json` prints, "
            "or the dict it parses to, not int",
            id="int",
        ),
        pytest.param(
            "rpc_url=http://127.0.0.1:8545",
            "RouterConfig.for_devnet: not JSON; it takes a running Devnet, the line `zg-router devnet "
            "--json` prints, or the dict it parses to",
            id="not-json",
        ),
        pytest.param(
            {**json.loads(LINE), "user": {"address": "0x70997970C51812dc3A010C7d01b50e20d17dc79C"}},
            "RouterConfig.for_devnet: the devnet summary lacks user.private_key; it takes a running "
            "Devnet, the line `zg-router devnet --json` prints, or the dict it parses to",
            id="no-key",
        ),
        pytest.param(
            {"rpc_url": "http://127.0.0.1:8545", "chain_id": "31337"},
            "RouterConfig.for_devnet: the devnet summary lacks chain_id, ledger, inference, "
            "user.private_key; it takes a running Devnet, the line `zg-router devnet --json` prints, or "
            "the dict it parses to",
            id="partial",
        ),
        pytest.param(
            Devnet(),
            "the devnet is not running: use it inside `async with Devnet() as devnet:`",
            id="devnet-not-started",
        ),
    ],
)
def test_anything_else_is_a_config_error_saying_what_it_takes(source: object, message: str) -> None:
    """A source that is none of those, or lacks a field, is a ConfigError naming what is missing."""
    with pytest.raises(ConfigError) as caught:
        RouterConfig.for_devnet(source)  # type: ignore[arg-type]
    assert str(caught.value) == message


async def test_a_router_for_a_default_devnet_serves_a_chat(default_devnet: Devnet) -> None:
    """``Devnet()`` needs no arguments (its node_modules are found), and a router built by
    ``RouterConfig.for_devnet(devnet)`` serves a chat on it with nothing else set."""
    async with Router(RouterConfig.for_devnet(default_devnet)) as router:
        reply = await router.chat(
            model=default_devnet.providers[0].spec.model, messages=[{"role": "user", "content": "hi"}]
        )
    assert reply["choices"][0]["message"]["content"]


async def test_the_devnet_summary_is_what_for_devnet_reads(default_devnet: Devnet) -> None:
    """The summary as JSON text (what ``--json`` prints) gives the same config as the Devnet itself."""
    from_line = RouterConfig.for_devnet(json.dumps(default_devnet.summary()))
    assert from_line == RouterConfig.for_devnet(default_devnet)
    assert from_line.network == default_devnet.network
