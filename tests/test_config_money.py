"""Loading the [money] section and the gateway's admin keys: values, defaults, exact amounts, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.config import GatewayConfig, MoneyOptions, load_config
from router.errors import ConfigError

API_KEY = "gw-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"
OTHER_ADMIN = "admin-key-fedcba9876543210"
UPSTREAM = """
[[upstreams]]
name = "hosted"
url = "https://router-api.0g.ai/v1"
models = ["m"]
"""
GATEWAY = f"""
[gateway]
api_keys = ["{API_KEY}"]
"""


def write(directory: Path, text: str) -> Path:
    path = directory / "router.toml"
    path.write_text(text)
    return path


def load_money(tmp_path: Path, section: str) -> MoneyOptions:
    router, _ = load_config(write(tmp_path, UPSTREAM + GATEWAY + "[money]\n" + section), {})
    return router.money


def load_gateway(tmp_path: Path, gateway: str, env: dict[str, str] | None = None) -> GatewayConfig:
    _, config = load_config(write(tmp_path, UPSTREAM + "[gateway]\n" + gateway), env or {})
    return config


class TestMoneySection:
    def test_every_key_is_read(self, tmp_path: Path) -> None:
        """Each [money] key reaches MoneyOptions; integers are accepted for the float amounts."""
        money = load_money(
            tmp_path,
            """
auto_fund = false
fund_below = 1.5
fund_to = 4
fund_new_providers = false
funding_retry = 120.0
balance_interval = 10
watch_interval = 0.5
default_max_tokens = 2048
""",
        )
        assert money == MoneyOptions(
            auto_fund=False,
            fund_below=1.5,
            fund_to=4,
            fund_new_providers=False,
            funding_retry=120.0,
            balance_interval=10,
            watch_interval=0.5,
            default_max_tokens=2048,
        )
        assert money.fund_to_neuron == 4 * 10**18

    def test_defaults_without_a_section(self, tmp_path: Path) -> None:
        """No [money]: auto-funding on, top up under 1 0G to 2 0G, new providers funded."""
        router, _ = load_config(write(tmp_path, UPSTREAM + GATEWAY), {})
        money = router.money
        assert money == MoneyOptions()
        assert (money.auto_fund, money.fund_new_providers) == (True, True)
        assert (money.fund_below_neuron, money.fund_to_neuron) == (10**18, 2 * 10**18)
        assert (money.funding_retry, money.balance_interval, money.watch_interval) == (60.0, 30.0, 2.0)
        assert money.default_max_tokens == 4096

    def test_an_empty_section_is_the_defaults(self, tmp_path: Path) -> None:
        """``[money]`` with no keys changes nothing."""
        assert load_money(tmp_path, "") == MoneyOptions()

    @pytest.mark.parametrize(
        ("value", "neuron"),
        [
            ("1.2", 1_200_000_000_000_000_000),
            ("0.1", 100_000_000_000_000_000),
            ("1.1", 1_100_000_000_000_000_000),
            ("1.15", 1_150_000_000_000_000_000),
            ("1e-18", 1),
            ("0.000000000000000007", 7),
            ("3", 3_000_000_000_000_000_000),
            ("0", 0),
        ],
    )
    def test_amounts_convert_exactly(self, tmp_path: Path, value: str, neuron: int) -> None:
        """0G amounts become neuron through their decimal text, exactly: 1.1 is 1_100_000_000_000_000_000,
        not the float product 1.1 * 10**18 (1100000000000000128)."""
        money = load_money(tmp_path, f"fund_below = {value}\nfund_to = 5\n")
        assert money.fund_below_neuron == neuron

    def test_fund_to_converts_exactly(self, tmp_path: Path) -> None:
        """fund_to goes through the same exact conversion (2.3 * 10**18 as floats is 2299999999999999744)."""
        assert int(2.3 * 10**18) != 2_300_000_000_000_000_000
        assert load_money(tmp_path, "fund_to = 2.3\n").fund_to_neuron == 2_300_000_000_000_000_000

    @pytest.mark.parametrize(
        ("section", "message"),
        [
            ("fund_below = 3.0\nfund_to = 2.0\n", "[money] needs 0 <= fund_below <= fund_to"),
            ("fund_below = -0.5\n", "[money] needs 0 <= fund_below <= fund_to"),
            ("fund_to = 0.5\n", "[money] needs 0 <= fund_below <= fund_to"),
            ("funding_retry = 0\n", "[money] intervals must be positive"),
            ("balance_interval = -1.0\n", "[money] intervals must be positive"),
            ("watch_interval = 0.0\n", "[money] intervals must be positive"),
            ("default_max_tokens = 0\n", "[money] default_max_tokens must be at least 1"),
            ('auto_fund = "false"\n', "[money] auto_fund must be true or false, got 'false'"),
            ("fund_new_providers = 1\n", "[money] fund_new_providers must be true or false, got 1"),
            ('fund_below = "1.0"\n', "[money] fund_below must be a number, got '1.0'"),
            ("fund_to = true\n", "[money] fund_to must be a number, got True"),
            ("default_max_tokens = 10.5\n", "[money] default_max_tokens must be an integer, got 10.5"),
            ("default_max_tokens = true\n", "[money] default_max_tokens must be an integer, got True"),
            ('funding_retry = "60"\n', "[money] funding_retry must be a number, got '60'"),
            ("fund_too = 2.0\n", "unknown key(s) in [money]: fund_too; known: auto_fund, balance_interval"),
        ],
    )
    def test_invalid_values_are_refused(self, tmp_path: Path, section: str, message: str) -> None:
        """Bad [money] values stop loading with a ConfigError naming the key and the rule."""
        with pytest.raises(ConfigError) as caught:
            load_money(tmp_path, section)
        assert message in str(caught.value)

    def test_edges_are_accepted(self, tmp_path: Path) -> None:
        """fund_below may be 0 or equal to fund_to; one token is a valid default_max_tokens."""
        money = load_money(tmp_path, "fund_below = 0\nfund_to = 0\ndefault_max_tokens = 1\n")
        assert (money.fund_below_neuron, money.fund_to_neuron, money.default_max_tokens) == (0, 0, 1)
        assert load_money(tmp_path, "fund_below = 2.5\nfund_to = 2.5\n").fund_below == 2.5

    def test_money_must_be_a_table(self, tmp_path: Path) -> None:
        """``money = 1`` is not a section."""
        with pytest.raises(ConfigError, match=r"\[money\] must be a table"):
            load_config(write(tmp_path, "money = 1\n" + UPSTREAM + GATEWAY), {})

    @pytest.mark.parametrize(
        "section",
        [
            "fund_to = inf\n",
            "fund_below = inf\nfund_to = inf\n",
            "fund_below = nan\n",
            "funding_retry = nan\n",
            "watch_interval = nan\n",
        ],
    )
    def test_non_finite_numbers_are_refused(self, tmp_path: Path, section: str) -> None:
        """TOML allows inf and nan; neither is an amount or an interval. Accepted, ``fund_to = inf`` crashes
        the funder (OverflowError converting it to neuron) and ``funding_retry = nan`` disables the
        back-off (``now < nan`` is never true)."""
        with pytest.raises(ConfigError, match=r"\[money\]"):
            load_money(tmp_path, section)


class TestAdminKeys:
    def test_admin_keys_from_the_file(self, tmp_path: Path) -> None:
        """``[gateway] admin_keys`` is read as a tuple beside the API keys."""
        gateway = load_gateway(
            tmp_path, f'api_keys = ["{API_KEY}"]\nadmin_keys = ["{ADMIN_KEY}", "{OTHER_ADMIN}"]\n'
        )
        assert gateway.admin_keys == (ADMIN_KEY, OTHER_ADMIN)
        assert gateway.api_keys == (API_KEY,)

    def test_no_admin_keys_by_default(self, tmp_path: Path) -> None:
        """Without admin keys the admin API has no key that opens it."""
        assert load_gateway(tmp_path, f'api_keys = ["{API_KEY}"]\n').admin_keys == ()

    def test_variable_overrides_the_file(self, tmp_path: Path) -> None:
        """ZG_ROUTER_ADMIN_KEYS replaces the file's list; entries are comma-separated and trimmed."""
        env = {"ZG_ROUTER_ADMIN_KEYS": f" {OTHER_ADMIN} ,, {ADMIN_KEY}2 ,"}
        gateway = load_gateway(tmp_path, f'api_keys = ["{API_KEY}"]\nadmin_keys = ["{ADMIN_KEY}"]\n', env)
        assert gateway.admin_keys == (OTHER_ADMIN, ADMIN_KEY + "2")

    def test_empty_variable_clears_the_files_keys(self, tmp_path: Path) -> None:
        """An empty ZG_ROUTER_ADMIN_KEYS turns the admin keys off."""
        env = {"ZG_ROUTER_ADMIN_KEYS": ""}
        gateway = load_gateway(tmp_path, f'api_keys = ["{API_KEY}"]\nadmin_keys = ["{ADMIN_KEY}"]\n', env)
        assert gateway.admin_keys == ()

    def test_variable_alone_without_a_file(self) -> None:
        """Admin keys can come from the environment only."""
        env = {"ZG_ROUTER_API_KEYS": API_KEY, "ZG_ROUTER_ADMIN_KEYS": ADMIN_KEY}
        _, gateway = load_config(
            None, {**env, "ZG_ROUTER_NETWORK": "devnet", "ZG_ROUTER_PRIVATE_KEY": "0x" + "ab" * 32}
        )
        assert gateway.admin_keys == (ADMIN_KEY,)

    @pytest.mark.parametrize(
        ("gateway", "env"),
        [
            (f'api_keys = ["{API_KEY}"]\nadmin_keys = ["x" ]\n', {}),
            (f'api_keys = ["{API_KEY}"]\nadmin_keys = ["{ADMIN_KEY}", "fifteen-chars!!"]\n', {}),
            (f'api_keys = ["{API_KEY}"]\n', {"ZG_ROUTER_ADMIN_KEYS": "short"}),
        ],
    )
    def test_short_admin_keys_are_refused(self, tmp_path: Path, gateway: str, env: dict[str, str]) -> None:
        """Every admin key needs at least 16 characters, from the file or the environment."""
        with pytest.raises(ConfigError) as caught:
            load_gateway(tmp_path, gateway, env)
        assert "gateway API keys and admin keys must be at least 16 characters" in str(caught.value)
        assert "short" not in str(caught.value)

    def test_sixteen_characters_are_enough(self, tmp_path: Path) -> None:
        """The bound is inclusive: a 16-character admin key is accepted."""
        gateway = load_gateway(tmp_path, f'api_keys = ["{API_KEY}"]\nadmin_keys = ["{"a" * 16}"]\n')
        assert gateway.admin_keys == ("a" * 16,)

    @pytest.mark.parametrize(
        ("gateway", "env"),
        [
            (f'api_keys = ["{API_KEY}"]\nadmin_keys = ["{API_KEY}"]\n', {}),
            (f'api_keys = ["{API_KEY}"]\nadmin_keys = ["{ADMIN_KEY}"]\n', {"ZG_ROUTER_API_KEYS": ADMIN_KEY}),
            (f'api_keys = ["{API_KEY}"]\n', {"ZG_ROUTER_ADMIN_KEYS": f"{ADMIN_KEY},{API_KEY}"}),
        ],
    )
    def test_a_key_cannot_be_both(self, tmp_path: Path, gateway: str, env: dict[str, str]) -> None:
        """An admin key that is also an API key is refused, wherever either list came from."""
        with pytest.raises(ConfigError) as caught:
            load_gateway(tmp_path, gateway, env)
        assert "an admin key cannot also be an API key: admin keys move money" in str(caught.value)
        assert API_KEY not in str(caught.value)
        assert ADMIN_KEY not in str(caught.value)

    def test_admin_keys_must_be_a_list(self, tmp_path: Path) -> None:
        """A bare string is not silently split into characters or accepted as one key."""
        with pytest.raises(ConfigError, match=r"gateway\.admin_keys must be a list"):
            load_gateway(tmp_path, f'api_keys = ["{API_KEY}"]\nadmin_keys = "{ADMIN_KEY}"\n')

    def test_admin_keys_do_not_replace_api_keys(self, tmp_path: Path) -> None:
        """Admin keys alone do not let the gateway serve: it still needs an API key (or anonymous)."""
        with pytest.raises(ConfigError, match="the gateway needs at least one API key"):
            load_gateway(tmp_path, f'admin_keys = ["{ADMIN_KEY}"]\n')
        gateway = load_gateway(tmp_path, f'allow_anonymous = true\nadmin_keys = ["{ADMIN_KEY}"]\n')
        assert (gateway.api_keys, gateway.admin_keys) == ((), (ADMIN_KEY,))

    def test_admin_keys_never_appear_in_repr(self, tmp_path: Path) -> None:
        """Admin keys move money: a printed or logged config shows none of them."""
        gateway = load_gateway(tmp_path, f'api_keys = ["{API_KEY}"]\nadmin_keys = ["{ADMIN_KEY}"]\n')
        assert ADMIN_KEY not in repr(gateway)
        assert "admin_keys" not in repr(gateway)
