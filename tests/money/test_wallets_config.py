"""Several wallets in the config: where their keys come from, what is refused, and that no key ever shows.

Keys never sit in the TOML: one wallet's key comes from ``ZG_ROUTER_PRIVATE_KEY``,
``ZG_ROUTER_PRIVATE_KEY_FILE`` or ``private_key_file``; several wallets' keys from
``ZG_ROUTER_PRIVATE_KEYS``, ``ZG_ROUTER_WALLET_KEY_FILES`` or ``wallet_key_files``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from router.chain.networks import DEVNET
from router.chain.wallet import Wallet
from router.config import RouterConfig, StaticUpstream, load_config
from router.errors import ConfigError
from router.keys import MAX_WALLETS

KEYS = tuple("0x" + f"{index:02x}" * 32 for index in range(1, MAX_WALLETS + 3))
ANONYMOUS = "\n[gateway]\nallow_anonymous = true\n"
NETWORK = {"ZG_ROUTER_NETWORK": "devnet"}
KEY_SHAPE = "is not a 32-byte hex key (64 hex digits, 0x optional)"


def write(directory: Path, text: str, name: str = "router.toml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def key_files(directory: Path, *keys: str) -> list[Path]:
    """One file per key, each with the trailing newline editors leave."""
    return [write(directory, key + "\n", f"wallet-{index}.key") for index, key in enumerate(keys)]


def toml_list(paths: list[Path]) -> str:
    return "[" + ", ".join(f'"{path}"' for path in paths) + "]"


def load(tmp_path: Path, env: dict[str, str], toml: str = 'network = "devnet"\n') -> RouterConfig:
    router, _ = load_config(write(tmp_path, toml + ANONYMOUS), env)
    return router


class TestSources:
    def test_keys_variable_gives_every_wallet_in_order(self, tmp_path: Path) -> None:
        """ZG_ROUTER_PRIVATE_KEYS is comma-separated (spaces and an empty tail ignored): each key is a
        wallet, in order, in ``private_keys``; ``private_key`` stays unset."""
        router = load(tmp_path, {"ZG_ROUTER_PRIVATE_KEYS": f" {KEYS[0]}, {KEYS[1]} ,{KEYS[2]},"})
        assert router.private_keys == KEYS[:3]
        assert router.private_key is None
        assert router.wallet_keys == KEYS[:3]

    def test_key_files_variable_is_split_on_the_path_separator(self, tmp_path: Path) -> None:
        """ZG_ROUTER_WALLET_KEY_FILES names one file per wallet, separated like PATH; each key is read
        stripped of its newline."""
        paths = key_files(tmp_path, KEYS[2], KEYS[0])
        router = load(tmp_path, {"ZG_ROUTER_WALLET_KEY_FILES": os.pathsep.join(map(str, paths))})
        assert router.wallet_keys == (KEYS[2], KEYS[0])

    def test_key_files_from_the_toml(self, tmp_path: Path) -> None:
        """``wallet_key_files`` in the TOML lists the files (the file names them; the keys stay out)."""
        paths = key_files(tmp_path, *KEYS[:3])
        router = load(tmp_path, {}, f'network = "devnet"\nwallet_key_files = {toml_list(paths)}\n')
        assert router.wallet_keys == KEYS[:3]

    def test_the_variable_wins_over_the_toml_files(self, tmp_path: Path) -> None:
        """ZG_ROUTER_WALLET_KEY_FILES replaces ``wallet_key_files``, whose files are then never read."""
        (path,) = key_files(tmp_path, KEYS[4])
        toml = f'network = "devnet"\nwallet_key_files = ["{tmp_path / "missing.key"}"]\n'
        router = load(tmp_path, {"ZG_ROUTER_WALLET_KEY_FILES": str(path)}, toml)
        assert router.wallet_keys == (KEYS[4],)

    def test_keys_win_over_any_key_files(self, tmp_path: Path) -> None:
        """ZG_ROUTER_PRIVATE_KEYS is used before key files from either place, which are not even read."""
        missing = str(tmp_path / "missing.key")
        env = {"ZG_ROUTER_PRIVATE_KEYS": f"{KEYS[0]},{KEYS[1]}", "ZG_ROUTER_WALLET_KEY_FILES": missing}
        router = load(tmp_path, env, f'network = "devnet"\nwallet_key_files = ["{missing}"]\n')
        assert router.wallet_keys == KEYS[:2]

    def test_one_key_in_the_list_is_one_wallet(self, tmp_path: Path) -> None:
        """A list of one is a router of one wallet, whichever field holds it."""
        router = load(tmp_path, {"ZG_ROUTER_PRIVATE_KEYS": KEYS[0]})
        assert (router.private_keys, router.wallet_keys) == ((KEYS[0],), (KEYS[0],))

    def test_the_one_wallet_sources_still_give_private_key(self, tmp_path: Path) -> None:
        """ZG_ROUTER_PRIVATE_KEY keeps filling ``private_key``; ``wallet_keys`` is that one key."""
        router = load(tmp_path, {"ZG_ROUTER_PRIVATE_KEY": KEYS[3]})
        assert (router.private_key, router.private_keys, router.wallet_keys) == (KEYS[3], (), (KEYS[3],))

    def test_no_network_reads_no_wallet_source(self, tmp_path: Path) -> None:
        """Static upstreams only: no wallet, whatever the environment holds (and mixed sources there are
        no error either, since nothing reads them)."""
        upstream = '[[upstreams]]\nname = "hosted"\nurl = "https://router-api.0g.ai/v1"\nmodels = ["m"]\n'
        env = {"ZG_ROUTER_PRIVATE_KEYS": f"{KEYS[0]},{KEYS[1]}", "ZG_ROUTER_PRIVATE_KEY": KEYS[2]}
        router = load(tmp_path, env, upstream)
        assert (router.network, router.private_key, router.private_keys, router.wallet_keys) == (
            None,
            None,
            (),
            (),
        )

    def test_wallet_keys_is_empty_without_a_network(self) -> None:
        """Keys given to a config without a network name no wallet: there is no chain to pay on."""
        hosted = StaticUpstream(name="hosted", url="https://router-api.0g.ai/v1", models=("m",))
        assert RouterConfig(static_upstreams=(hosted,), private_keys=KEYS[:2]).wallet_keys == ()
        assert RouterConfig(network=DEVNET, private_keys=KEYS[:2]).wallet_keys == KEYS[:2]


class TestMixing:
    @pytest.mark.parametrize(
        ("one", "several"),
        [
            ("ZG_ROUTER_PRIVATE_KEY", "ZG_ROUTER_PRIVATE_KEYS"),
            ("ZG_ROUTER_PRIVATE_KEY_FILE", "ZG_ROUTER_PRIVATE_KEYS"),
            ("private_key_file", "ZG_ROUTER_PRIVATE_KEYS"),
            ("ZG_ROUTER_PRIVATE_KEY", "ZG_ROUTER_WALLET_KEY_FILES"),
            ("ZG_ROUTER_PRIVATE_KEY", "wallet_key_files"),
            ("private_key_file", "wallet_key_files"),
        ],
    )
    def test_one_wallet_and_several_wallet_sources_are_refused_together(
        self, tmp_path: Path, one: str, several: str
    ) -> None:
        """A one-wallet source next to a several-wallet source (from the environment or the file, in
        any pairing) is a ConfigError naming both and saying which to keep, before any file is read."""
        (path,) = key_files(tmp_path, KEYS[0])
        values = {
            "ZG_ROUTER_PRIVATE_KEY": KEYS[0],
            "ZG_ROUTER_PRIVATE_KEY_FILE": str(path),
            "ZG_ROUTER_PRIVATE_KEYS": f"{KEYS[1]},{KEYS[2]}",
            "ZG_ROUTER_WALLET_KEY_FILES": str(path),
        }
        env = {name: values[name] for name in (one, several) if name.isupper()}
        toml = 'network = "devnet"\n'
        if one == "private_key_file":
            toml += f'private_key_file = "{tmp_path / "missing.key"}"\n'
        if several == "wallet_key_files":
            toml += f'wallet_key_files = ["{tmp_path / "missing.key"}"]\n'
        with pytest.raises(ConfigError) as caught:
            load(tmp_path, env, toml)
        assert str(caught.value) == (
            f"wallet keys are set both for one wallet ({one}) and for several wallets ({several}): keep "
            f"one kind. For several wallets, drop {one} and list every wallet, the first one included, "
            f"in {several}; for one wallet, drop {several}"
        )

    def test_an_empty_variable_is_no_source(self, tmp_path: Path) -> None:
        """A variable set to nothing (a blank line in an env file) counts as unset, so it mixes with
        nothing: the other kind is used."""
        env = {"ZG_ROUTER_PRIVATE_KEY": "", "ZG_ROUTER_PRIVATE_KEYS": f"{KEYS[0]},{KEYS[1]}"}
        assert load(tmp_path, env).wallet_keys == KEYS[:2]

    def test_router_config_takes_one_field_or_the_other(self) -> None:
        """``private_key`` and ``private_keys`` together are refused: the list must hold every wallet."""
        with pytest.raises(ConfigError) as caught:
            RouterConfig(network=DEVNET, private_key=KEYS[0], private_keys=KEYS[1:3])
        assert str(caught.value) == (
            "give private_key (one wallet) or private_keys (several wallets), not both: list every "
            "wallet, the first one included, in private_keys"
        )

    def test_a_key_in_the_toml_is_refused(self, tmp_path: Path) -> None:
        """Keys never come from the TOML: ``private_keys`` there is an unknown key, the file refused."""
        toml = f'network = "devnet"\nprivate_keys = ["{KEYS[0]}"]\n'
        with pytest.raises(ConfigError, match=r"^unknown key\(s\) in the config file: private_keys; known: "):
            load(tmp_path, {"ZG_ROUTER_PRIVATE_KEY": KEYS[1]}, toml)


class TestValidation:
    @pytest.mark.parametrize(
        "twin",
        [KEYS[1], KEYS[1].upper().replace("0X", "0x"), KEYS[1][2:], f"  {KEYS[1]}\n"],
        ids=["same", "upper-case", "no-0x", "whitespace"],
    )
    def test_the_same_wallet_twice_is_refused_by_its_address(self, twin: str) -> None:
        """A wallet listed twice (the same key in another case, without 0x, or padded) is a ConfigError
        naming the wallet's address, never its key."""
        with pytest.raises(ConfigError) as caught:
            RouterConfig(network=DEVNET, private_keys=(KEYS[0], KEYS[1], twin))
        address = Wallet(KEYS[1]).address
        assert str(caught.value) == f"wallet {address} is configured twice: give each wallet's key once"
        assert KEYS[1][2:] not in str(caught.value).lower()

    def test_at_most_sixteen_wallets(self) -> None:
        """Sixteen wallets are accepted; seventeen are refused (each is a metrics label value)."""
        assert len(RouterConfig(network=DEVNET, private_keys=KEYS[:MAX_WALLETS]).wallet_keys) == 16
        with pytest.raises(ConfigError) as caught:
            RouterConfig(network=DEVNET, private_keys=KEYS[: MAX_WALLETS + 1])
        assert str(caught.value) == "at most 16 wallets can be configured, got 17"

    @pytest.mark.parametrize(
        ("keys", "message"),
        [
            ((KEYS[0], "0x1234"), f"wallet key 2 of 2 {KEY_SHAPE}"),
            (("REPLACE-ME",), f"the wallet key {KEY_SHAPE}"),
            ((KEYS[0], KEYS[1] + "ab"), f"wallet key 2 of 2 {KEY_SHAPE}"),
            (("0x" + "zz" * 32, KEYS[0]), f"wallet key 1 of 2 {KEY_SHAPE}"),
        ],
        ids=["short", "placeholder", "long", "not-hex"],
    )
    def test_each_key_must_be_32_bytes_of_hex(self, keys: tuple[str, ...], message: str) -> None:
        """A key that is not 64 hex digits (0x optional) is refused by its place in the list; the
        message quotes nothing of it."""
        with pytest.raises(ConfigError) as caught:
            RouterConfig(network=DEVNET, private_keys=keys)
        assert str(caught.value) == message

    def test_the_single_key_is_checked_too(self) -> None:
        """``private_key`` gets the same check, and a placeholder is refused at load time."""
        with pytest.raises(ConfigError, match=f"^the wallet key {re.escape(KEY_SHAPE)}$"):
            RouterConfig(network=DEVNET, private_key="REPLACE-ME")
        with pytest.raises(ConfigError, match=f"^ZG_ROUTER_PRIVATE_KEY {re.escape(KEY_SHAPE)}$"):
            load_config(None, {**NETWORK, "ZG_ROUTER_PRIVATE_KEY": "REPLACE-ME"})

    def test_a_bad_key_in_the_variable_is_named_by_its_place(self, tmp_path: Path) -> None:
        """ZG_ROUTER_PRIVATE_KEYS with a malformed second key: the error says which, not what it holds."""
        secret_ish = "0x" + "ab" * 31
        with pytest.raises(ConfigError) as caught:
            load(tmp_path, {"ZG_ROUTER_PRIVATE_KEYS": f"{KEYS[0]},{secret_ish}"})
        assert str(caught.value) == f"key 2 of ZG_ROUTER_PRIVATE_KEYS {KEY_SHAPE}"

    def test_a_bad_key_file_is_named_by_its_path(self, tmp_path: Path) -> None:
        """A key file holding something else (here a placeholder) is named; its content is not shown."""
        good, bad = key_files(tmp_path, KEYS[0], "REPLACE-ME")
        with pytest.raises(ConfigError) as caught:
            load(tmp_path, {"ZG_ROUTER_WALLET_KEY_FILES": f"{good}{os.pathsep}{bad}"})
        assert str(caught.value) == f"the wallet key file {bad} {KEY_SHAPE}"

    def test_an_unreadable_key_file_is_named(self, tmp_path: Path) -> None:
        """A listed file that does not exist is a ConfigError naming it."""
        (good,) = key_files(tmp_path, KEYS[0])
        missing = tmp_path / "gone.key"
        toml = f'network = "devnet"\nwallet_key_files = {toml_list([good, missing])}\n'
        with pytest.raises(ConfigError, match=re.escape(f"cannot read the wallet key file {missing}: ")):
            load(tmp_path, {}, toml)

    @pytest.mark.parametrize(
        ("setting", "message"),
        [
            ("wallet_key_files = []", "wallet_key_files must list the wallets' key files (paths)"),
            ("wallet_key_files = [1, 2]", "wallet_key_files must list the wallets' key files (paths)"),
            ('wallet_key_files = [""]', "wallet_key_files must list the wallets' key files (paths)"),
            (
                'wallet_key_files = "a.key"',
                "wallet_key_files must be a list of the wallets' key files (paths)",
            ),
        ],
    )
    def test_wallet_key_files_must_list_paths(self, tmp_path: Path, setting: str, message: str) -> None:
        """``wallet_key_files`` must be a non-empty list of paths."""
        with pytest.raises(ConfigError) as caught:
            load(tmp_path, {}, f'network = "devnet"\n{setting}\n')
        assert str(caught.value) == message

    def test_a_keys_variable_of_separators_only_holds_no_key(self, tmp_path: Path) -> None:
        """ZG_ROUTER_PRIVATE_KEYS of commas and blanks is an error, not a router without a wallet."""
        with pytest.raises(ConfigError) as caught:
            load(tmp_path, {"ZG_ROUTER_PRIVATE_KEYS": " , ,"})
        assert (
            str(caught.value)
            == "ZG_ROUTER_PRIVATE_KEYS holds no key: list the wallets' keys, comma-separated"
        )

    def test_a_network_without_any_key_names_every_source(self, tmp_path: Path) -> None:
        """No key at all: the error names the one-wallet variables and the several-wallet sources."""
        with pytest.raises(ConfigError) as caught:
            load(tmp_path, {})
        assert str(caught.value) == (
            "a network is configured but no wallet key: set ZG_ROUTER_PRIVATE_KEY or "
            "ZG_ROUTER_PRIVATE_KEY_FILE (several wallets: ZG_ROUTER_PRIVATE_KEYS, "
            "ZG_ROUTER_WALLET_KEY_FILES or wallet_key_files)"
        )


class TestSecrets:
    def test_no_key_shows_in_the_config(self, tmp_path: Path) -> None:
        """Neither repr() nor str() of a config of several wallets shows any key, with or without 0x."""
        router = load(tmp_path, {"ZG_ROUTER_PRIVATE_KEYS": ",".join(KEYS[:3])})
        shown = f"{router!r} {router}".lower()
        for key in KEYS[:3]:
            assert key[2:] not in shown

    def test_no_error_quotes_a_key(self, tmp_path: Path) -> None:
        """Every refusal above (duplicate, malformed, too many, mixed) quotes no key it was given."""
        refusals = [
            lambda: RouterConfig(network=DEVNET, private_keys=(KEYS[0], KEYS[0])),
            lambda: RouterConfig(network=DEVNET, private_keys=(KEYS[0], KEYS[1][:-2])),
            lambda: RouterConfig(network=DEVNET, private_keys=KEYS),
            lambda: RouterConfig(network=DEVNET, private_key=KEYS[0], private_keys=KEYS[1:3]),
            lambda: load(tmp_path, {"ZG_ROUTER_PRIVATE_KEY": KEYS[0], "ZG_ROUTER_PRIVATE_KEYS": KEYS[1]}),
            lambda: load(tmp_path, {"ZG_ROUTER_PRIVATE_KEYS": f"{KEYS[0]},{KEYS[1][:-2]}"}),
        ]
        for refuse in refusals:
            with pytest.raises(ConfigError) as caught:
                refuse()
            message = str(caught.value).lower()
            assert not any(key[2:-2] in message for key in KEYS), message
