"""Loading the config: TOML plus ZG_ROUTER_* variables, the wallet key's sources, validation and secrets."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from router.chain.networks import DEVNET, MAINNET, TESTNET
from router.config import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_PORT,
    DiscoveryOptions,
    DispatchOptions,
    GatewayConfig,
    RouterConfig,
    StaticUpstream,
    load_config,
)
from router.errors import ConfigError
from router.policy.select import Strategy
from router.pool.health import HealthPolicy
from router.pool.limits import ProviderLimits
from router.transport.http import TransportOptions
from router.verify.verifier import VerifyOptions

WALLET_KEY = "0x" + "ab" * 32
OTHER_KEY = "0x" + "cd" * 32
API_KEY = "gw-key-0123456789abcdef"
UPSTREAM_KEY = "sk-upstream-secret-42"
KEY_VARS = "ZG_ROUTER_PRIVATE_KEY or ZG_ROUTER_PRIVATE_KEY_FILE"

UPSTREAM = """
[[upstreams]]
name = "hosted"
url = "https://router-api.0g.ai/v1"
models = ["m"]
"""
ANONYMOUS = """
[gateway]
allow_anonymous = true
"""


def write(directory: Path, text: str, name: str = "router.toml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """A wallet key file, with the trailing newline editors leave."""
    return write(tmp_path, WALLET_KEY + "\n", "wallet.key")


def full_toml(key_file: Path) -> str:
    return f"""
network = "testnet"
rpc_urls = ["https://rpc-a.example", "https://rpc-b.example"]
private_key_file = "{key_file}"

[gateway]
host = "192.0.2.10"
port = 9000
api_keys = ["{API_KEY}"]
max_body_bytes = 2048
shutdown_timeout = 5.0

[dispatch]
max_attempts = 5
request_timeout = 60.0
queue_timeout = 10.0
strategy = "price"
rate_margin = 0.8
rate_limit_backoff = 1.5
unfunded_cooldown = 30.0
misconfigured_cooldown = 120.0

[discovery]
refresh_interval = 30.0
event_poll_interval = 2.0
probe_interval = 1.0
models_timeout = 3.0

[transport]
connect_timeout = 2.0
stream_idle_timeout = 30.0
allow_private_targets = true

[health]
ewma_alpha = 0.5
failure_threshold = 2
cooldown = 1.0
max_cooldown = 10.0

[[upstreams]]
name = "hosted"
url = "https://router-api.0g.ai/v1"
models = ["a", "b"]
api_key_env = "HOSTED_KEY"
service_type = "chatbot"
input_price = 1
output_price = 2
verifiability = "TeeTLS"
limits = {{ requests_per_minute = 60, burst = 3, max_concurrent = 4 }}

[[upstreams]]
name = "embedder"
url = "http://embed.example/v1"
models = ["e"]
service_type = "embedding"
"""


class TestFullFile:
    def test_every_section_is_read(self, tmp_path: Path, key_file: Path) -> None:
        """A complete file fills the network, key, gateway, dispatch, discovery and upstreams."""
        router, gateway = load_config(write(tmp_path, full_toml(key_file)), {"HOSTED_KEY": UPSTREAM_KEY})
        assert router.network == TESTNET.with_rpc_urls("https://rpc-a.example", "https://rpc-b.example")
        assert router.private_key == WALLET_KEY
        assert router.dispatch == DispatchOptions(
            max_attempts=5,
            request_timeout=60.0,
            queue_timeout=10.0,
            strategy=Strategy.PRICE,
            rate_margin=0.8,
            rate_limit_backoff=1.5,
            unfunded_cooldown=30.0,
            misconfigured_cooldown=120.0,
        )
        assert router.discovery == DiscoveryOptions(
            refresh_interval=30.0, event_poll_interval=2.0, probe_interval=1.0, models_timeout=3.0
        )
        assert router.static_upstreams == (
            StaticUpstream(
                name="hosted",
                url="https://router-api.0g.ai/v1",
                models=("a", "b"),
                api_key=UPSTREAM_KEY,
                service_type="chatbot",
                input_price=1,
                output_price=2,
                verifiability="TeeTLS",
                limits=ProviderLimits(requests_per_minute=60, burst=3, max_concurrent=4),
            ),
            StaticUpstream(
                name="embedder", url="http://embed.example/v1", models=("e",), service_type="embedding"
            ),
        )
        assert router.transport == TransportOptions(
            connect_timeout=2.0, stream_idle_timeout=30.0, allow_private_targets=True
        )
        assert router.health == HealthPolicy(
            ewma_alpha=0.5, failure_threshold=2, cooldown=1.0, max_cooldown=10.0
        )
        assert gateway == GatewayConfig(
            host="192.0.2.10", port=9000, api_keys=(API_KEY,), max_body_bytes=2048, shutdown_timeout=5.0
        )

    def test_defaults_fill_what_is_left_out(self, tmp_path: Path) -> None:
        """A file with only an upstream and an anonymous gateway gets the documented defaults."""
        router, gateway = load_config(write(tmp_path, UPSTREAM + ANONYMOUS), {})
        assert router.network is None
        assert router.private_key is None
        assert router.dispatch == DispatchOptions()
        assert router.dispatch.strategy is Strategy.BALANCED
        assert router.discovery == DiscoveryOptions()
        assert router.transport == TransportOptions()
        assert router.health == HealthPolicy()
        assert router.static_upstreams[0].limits == ProviderLimits(
            requests_per_minute=6000, burst=100, max_concurrent=100
        )
        assert gateway == GatewayConfig(allow_anonymous=True)
        assert (gateway.host, gateway.port, gateway.max_body_bytes) == (
            "127.0.0.1",
            DEFAULT_PORT,
            DEFAULT_MAX_BODY_BYTES,
        )

    @pytest.mark.parametrize(
        ("name", "network"), [("mainnet", MAINNET), ("testnet", TESTNET), ("devnet", DEVNET)]
    )
    def test_network_presets(self, tmp_path: Path, name: str, network: Any) -> None:
        """Each network name picks its preset, default RPC URLs included."""
        router, _ = load_config(
            write(tmp_path, f'network = "{name}"\n' + ANONYMOUS), {"ZG_ROUTER_PRIVATE_KEY": WALLET_KEY}
        )
        assert router.network == network

    def test_no_file_only_environment(self) -> None:
        """Without a file the environment alone is enough."""
        env = {
            "ZG_ROUTER_NETWORK": "devnet",
            "ZG_ROUTER_PRIVATE_KEY": WALLET_KEY,
            "ZG_ROUTER_API_KEYS": API_KEY,
        }
        router, gateway = load_config(None, env)
        assert (router.network, router.private_key, gateway.api_keys) == (DEVNET, WALLET_KEY, (API_KEY,))


class TestEnvironment:
    @pytest.mark.parametrize(
        ("env", "check"),
        [
            pytest.param(
                {"ZG_ROUTER_NETWORK": "devnet"},
                lambda r, g: (r.network.name, r.network.chain_id) == ("devnet", DEVNET.chain_id),
                id="network",
            ),
            pytest.param(
                {"ZG_ROUTER_RPC_URLS": " http://a.example:1 ,, http://b.example:2 "},
                lambda r, g: r.network.rpc_urls == ("http://a.example:1", "http://b.example:2"),
                id="rpc-urls",
            ),
            pytest.param(
                {"ZG_ROUTER_PRIVATE_KEY": f"  {OTHER_KEY}\n"},
                lambda r, g: r.private_key == OTHER_KEY,
                id="private-key-stripped",
            ),
            pytest.param(
                {"ZG_ROUTER_API_KEYS": "first-key-0123456789, second-key-0123456789 ,"},
                lambda r, g: g.api_keys == ("first-key-0123456789", "second-key-0123456789"),
                id="api-keys",
            ),
            pytest.param({"ZG_ROUTER_HOST": "::"}, lambda r, g: g.host == "::", id="host"),
            pytest.param({"ZG_ROUTER_PORT": "0"}, lambda r, g: g.port == 0, id="port"),
        ],
    )
    def test_variables_override_the_file(
        self, tmp_path: Path, key_file: Path, env: dict[str, str], check: Any
    ) -> None:
        """Each ZG_ROUTER_* variable replaces the file's value."""
        router, gateway = load_config(
            write(tmp_path, full_toml(key_file)), {"HOSTED_KEY": UPSTREAM_KEY, **env}
        )
        assert check(router, gateway)

    def test_key_file_variable_overrides_the_file_setting(self, tmp_path: Path, key_file: Path) -> None:
        """ZG_ROUTER_PRIVATE_KEY_FILE wins over ``private_key_file``."""
        other = write(tmp_path, f"\t{OTHER_KEY}\n\n", "other.key")
        env = {"HOSTED_KEY": UPSTREAM_KEY, "ZG_ROUTER_PRIVATE_KEY_FILE": str(other)}
        router, _ = load_config(write(tmp_path, full_toml(key_file)), env)
        assert router.private_key == OTHER_KEY

    def test_key_variable_wins_over_any_key_file(self, tmp_path: Path, key_file: Path) -> None:
        """ZG_ROUTER_PRIVATE_KEY is used before any key file, which is then not even read."""
        env = {
            "HOSTED_KEY": UPSTREAM_KEY,
            "ZG_ROUTER_PRIVATE_KEY": OTHER_KEY,
            "ZG_ROUTER_PRIVATE_KEY_FILE": str(tmp_path / "missing.key"),
        }
        router, _ = load_config(write(tmp_path, full_toml(key_file)), env)
        assert router.private_key == OTHER_KEY

    def test_key_file_named_in_the_toml(self, tmp_path: Path, key_file: Path) -> None:
        """``private_key_file`` alone supplies the key, stripped of its newline."""
        router, _ = load_config(
            write(tmp_path, f'network = "devnet"\nprivate_key_file = "{key_file}"\n' + ANONYMOUS), {}
        )
        assert router.private_key == WALLET_KEY

    def test_no_network_means_no_key_is_needed_or_read(self, tmp_path: Path) -> None:
        """Static upstreams alone need no wallet key, and a key in the environment is ignored."""
        router, _ = load_config(write(tmp_path, UPSTREAM + ANONYMOUS), {"ZG_ROUTER_PRIVATE_KEY": WALLET_KEY})
        assert router.private_key is None

    def test_bad_port_variable(self, tmp_path: Path, key_file: Path) -> None:
        """A non-numeric ZG_ROUTER_PORT is a ConfigError naming the variable."""
        env = {"HOSTED_KEY": UPSTREAM_KEY, "ZG_ROUTER_PORT": "eighty"}
        with pytest.raises(ConfigError, match="ZG_ROUTER_PORT must be an integer, got 'eighty'"):
            load_config(write(tmp_path, full_toml(key_file)), env)

    def test_empty_api_keys_variable_clears_the_files_keys(self, tmp_path: Path, key_file: Path) -> None:
        """ZG_ROUTER_API_KEYS="" replaces the file's keys with none, so the gateway refuses to start."""
        env = {"HOSTED_KEY": UPSTREAM_KEY, "ZG_ROUTER_API_KEYS": ""}
        with pytest.raises(ConfigError, match="needs at least one API key"):
            load_config(write(tmp_path, full_toml(key_file)), env)


class TestErrors:
    def test_missing_key_names_both_variables(self, tmp_path: Path) -> None:
        """A network without any key source is a ConfigError naming the two variables."""
        with pytest.raises(ConfigError, match=re.escape(f"no wallet key: set {KEY_VARS}")):
            load_config(write(tmp_path, 'network = "testnet"\n' + ANONYMOUS), {})

    def test_unreadable_key_file(self, tmp_path: Path) -> None:
        """A key file that does not exist is a ConfigError naming the file."""
        missing = tmp_path / "nope.key"
        with pytest.raises(ConfigError, match=re.escape(f"cannot read the wallet key file {missing}")):
            load_config(None, {"ZG_ROUTER_NETWORK": "devnet", "ZG_ROUTER_PRIVATE_KEY_FILE": str(missing)})

    def test_missing_config_file(self, tmp_path: Path) -> None:
        """A config path that does not exist is a ConfigError naming it."""
        missing = tmp_path / "absent.toml"
        with pytest.raises(ConfigError, match=re.escape(f"cannot read config file {missing}")):
            load_config(missing, {})

    @pytest.mark.parametrize(
        "text", ["network = ", "[gateway\nport = 1", "a = 1\na = 2", 'x = "unterminated']
    )
    def test_bad_toml(self, tmp_path: Path, text: str) -> None:
        """A file that is not TOML is a ConfigError saying so."""
        path = write(tmp_path, text)
        with pytest.raises(ConfigError, match=re.escape(f"config file {path} is not valid TOML")):
            load_config(path, {})

    @pytest.mark.parametrize(
        ("text", "where", "key"),
        [
            pytest.param(
                'private_key = "0xab"\n' + UPSTREAM + ANONYMOUS, "the config file", "private_key", id="top"
            ),
            pytest.param(
                UPSTREAM + ANONYMOUS + "[server]\nport = 1\n",
                "the config file",
                "server",
                id="top-table",
            ),
            pytest.param(
                UPSTREAM + ANONYMOUS + 'api_key = "gw-key-0123456789abcdef"\n',
                "[gateway]",
                "api_key",
                id="gateway",
            ),
            pytest.param(
                UPSTREAM + ANONYMOUS + "[dispatch]\nretries = 2\n", "[dispatch]", "retries", id="dispatch"
            ),
            pytest.param(
                UPSTREAM + ANONYMOUS + "[discovery]\ninterval = 2\n",
                "[discovery]",
                "interval",
                id="discovery",
            ),
            pytest.param(
                UPSTREAM + ANONYMOUS + "[transport]\nallow_private = true\n",
                "[transport]",
                "allow_private",
                id="transport",
            ),
            pytest.param(
                UPSTREAM + ANONYMOUS + "[health]\nalpha = 0.5\n",
                "[health]",
                "alpha",
                id="health",
            ),
            pytest.param(
                UPSTREAM + f'api_key = "{UPSTREAM_KEY}"\n' + ANONYMOUS,
                "an upstream",
                "api_key",
                id="upstream",
            ),
            pytest.param(
                UPSTREAM + "[upstreams.limits]\nrpm = 5\n" + ANONYMOUS,
                "[upstreams.limits]",
                "rpm",
                id="upstream-limits",
            ),
        ],
    )
    def test_unknown_keys_are_named(self, tmp_path: Path, text: str, where: str, key: str) -> None:
        """An unknown key at any level is a ConfigError naming the key and where it was found."""
        with pytest.raises(ConfigError, match=re.escape(f"unknown key(s) in {where}: {key}; known: ")):
            load_config(write(tmp_path, text), {})

    def test_unknown_keys_message_lists_the_known_ones(self, tmp_path: Path) -> None:
        """The error lists every unknown key, sorted, and the keys that are known."""
        with pytest.raises(ConfigError) as caught:
            load_config(write(tmp_path, "zeta = 1\nalpha = 2\n" + UPSTREAM), {})
        message = str(caught.value)
        assert message.startswith("unknown key(s) in the config file: alpha, zeta; known: ")
        known = message.split("; known: ")[1].split(", ")
        assert known == sorted(known)
        assert {"network", "rpc_urls", "private_key_file", "gateway", "dispatch", "upstreams"} <= set(known)

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            pytest.param("", "nothing to route to", id="empty"),
            pytest.param(
                'network = "moonnet"\n' + ANONYMOUS,
                "unknown network 'moonnet'; known: devnet, mainnet, testnet",
                id="unknown-network",
            ),
            pytest.param(
                'network = "devnet"\nrpc_urls = "http://x"\n', "rpc_urls must be a list", id="rpc-urls-string"
            ),
            pytest.param(
                'network = "devnet"\nrpc_urls = ["ws://x"]\n', "RPC URL must be http(s)", id="rpc-url-scheme"
            ),
            pytest.param('upstreams = "x"\n', "upstreams must be a list", id="upstreams-not-list"),
            pytest.param("upstreams = [1]\n", "[upstreams] must be a table", id="upstream-not-table"),
            pytest.param("gateway = 5\n" + UPSTREAM, "[gateway] must be a table", id="gateway-not-table"),
            pytest.param(
                'dispatch = "fast"\n' + UPSTREAM, "[dispatch] must be a table", id="dispatch-not-table"
            ),
            pytest.param(
                UPSTREAM + UPSTREAM + ANONYMOUS, "static upstream names must be unique", id="duplicate-names"
            ),
            pytest.param(
                '[[upstreams]]\nurl = "https://x.example"\nmodels = ["m"]\n' + ANONYMOUS,
                "upstream: ",
                id="no-name",
            ),
            pytest.param(
                '[[upstreams]]\nname = "a,b"\nurl = "https://x.example"\nmodels = ["m"]\n',
                "without commas",
                id="comma-name",
            ),
            pytest.param(
                '[[upstreams]]\nname = "u"\nurl = "ftp://x.example"\nmodels = ["m"]\n',
                "upstream 'u': url must be http(s)",
                id="upstream-scheme",
            ),
            pytest.param(
                '[[upstreams]]\nname = "u"\nurl = "https://x.example"\nmodels = []\n',
                "upstream 'u': list the models it serves",
                id="no-models",
            ),
            pytest.param(
                '[[upstreams]]\nname = "u"\nurl = "https://x.example"\nmodels = "m"\n',
                "upstreams.models must be a list",
                id="models-string",
            ),
            pytest.param(
                '[[upstreams]]\nname = "u"\nurl = "https://x.example"\nmodels = ["m"]\n'
                'service_type = "video"\n',
                "service_type must be one of chatbot, embedding, text-to-image, speech-to-text",
                id="service-type",
            ),
            pytest.param(
                UPSTREAM + "limits = { burst = 0 }\n",
                "provider limits must be finite and positive",
                id="limits",
            ),
            pytest.param(
                UPSTREAM + "[gateway]\nport = 70000\nallow_anonymous = true\n",
                "port must be 0-65535",
                id="port-range",
            ),
            pytest.param(
                UPSTREAM + '[gateway]\nport = "8080"\nallow_anonymous = true\n',
                "[gateway] port must be an integer",
                id="port-string",
            ),
            pytest.param(
                UPSTREAM + "[gateway]\nmax_body_bytes = 10\nallow_anonymous = true\n",
                "max_body_bytes must be at least 1024",
                id="max-body",
            ),
            pytest.param(
                UPSTREAM + "[gateway]\nshutdown_timeout = -1\nallow_anonymous = true\n",
                "shutdown_timeout cannot be negative",
                id="shutdown-timeout",
            ),
            pytest.param(
                UPSTREAM + '[gateway]\napi_keys = "one-long-key-0123456789"\n',
                "gateway.api_keys must be a list",
                id="api-keys-string",
            ),
            pytest.param(
                UPSTREAM + ANONYMOUS + '[dispatch]\nmax_attempts = "3"\n',
                "[dispatch] max_attempts must be an integer",
                id="attempts-string",
            ),
        ],
    )
    def test_invalid_configs(self, tmp_path: Path, text: str, message: str) -> None:
        """Each invalid file is refused with a ConfigError saying what is wrong."""
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(write(tmp_path, text), {})

    def test_unknown_strategy_is_a_config_error(self, tmp_path: Path) -> None:
        """A misspelt ``[dispatch] strategy`` is a ConfigError (not a request error) listing the choices."""
        text = UPSTREAM + ANONYMOUS + '[dispatch]\nstrategy = "fastest"\n'
        with pytest.raises(ConfigError, match=re.escape("unknown sort 'fastest'; use one of: balanced")):
            load_config(write(tmp_path, text), {})

    @pytest.mark.parametrize("alias", ["throughput", "least_loaded", "LATENCY"])
    def test_strategy_aliases_are_accepted(self, tmp_path: Path, alias: str) -> None:
        """``[dispatch] strategy`` takes the same names and aliases as a request's sort."""
        router, _ = load_config(
            write(tmp_path, UPSTREAM + ANONYMOUS + f'[dispatch]\nstrategy = "{alias}"\n'), {}
        )
        assert router.dispatch.strategy is Strategy.parse(alias, "x")


class TestGateway:
    def test_keys_are_required(self, tmp_path: Path) -> None:
        """Without API keys the gateway refuses to start and says how to fix it."""
        with pytest.raises(ConfigError, match=re.escape("ZG_ROUTER_API_KEYS or [gateway] api_keys")):
            load_config(write(tmp_path, UPSTREAM), {})

    def test_anonymous_must_be_asked_for(self, tmp_path: Path) -> None:
        """``allow_anonymous = true`` lets the gateway start without keys."""
        _, gateway = load_config(write(tmp_path, UPSTREAM + ANONYMOUS), {})
        assert (gateway.api_keys, gateway.allow_anonymous) == ((), True)

    @pytest.mark.parametrize("value", ['"false"', '"no"', "0", '""'])
    def test_anonymous_takes_only_a_boolean(self, tmp_path: Path, value: str) -> None:
        """A non-boolean ``allow_anonymous`` (the string "false", say) never opens a keyless gateway."""
        with pytest.raises(ConfigError):
            load_config(write(tmp_path, UPSTREAM + f"[gateway]\nallow_anonymous = {value}\n"), {})

    @pytest.mark.parametrize(
        ("text", "env"),
        [
            pytest.param(UPSTREAM + '[gateway]\napi_keys = ["short"]\n', {}, id="file"),
            pytest.param(UPSTREAM, {"ZG_ROUTER_API_KEYS": f"{API_KEY},fifteen-chars-x"}, id="environment"),
        ],
    )
    def test_short_keys_are_refused(self, tmp_path: Path, text: str, env: dict[str, str]) -> None:
        """Every gateway API key must have at least 16 characters."""
        with pytest.raises(ConfigError, match="at least 16 characters"):
            load_config(write(tmp_path, text), env)

    def test_a_sixteen_character_key_is_enough(self, tmp_path: Path) -> None:
        """Exactly 16 characters is accepted."""
        _, gateway = load_config(write(tmp_path, UPSTREAM), {"ZG_ROUTER_API_KEYS": "x" * 16})
        assert gateway.api_keys == ("x" * 16,)


class TestUpstreamKeys:
    def test_api_key_comes_from_the_named_variable(self, tmp_path: Path) -> None:
        """``api_key_env`` names the variable holding the upstream's key."""
        text = UPSTREAM + 'api_key_env = "HOSTED_KEY"\n' + ANONYMOUS
        router, _ = load_config(write(tmp_path, text), {"HOSTED_KEY": UPSTREAM_KEY})
        assert router.static_upstreams[0].api_key == UPSTREAM_KEY

    def test_no_api_key_env_means_no_key(self, tmp_path: Path) -> None:
        """An upstream without ``api_key_env`` is called without a key."""
        router, _ = load_config(write(tmp_path, UPSTREAM + ANONYMOUS), {"HOSTED_KEY": UPSTREAM_KEY})
        assert router.static_upstreams[0].api_key is None

    def test_missing_variable_is_named(self, tmp_path: Path) -> None:
        """An unset ``api_key_env`` variable is a ConfigError naming the upstream and the variable."""
        text = UPSTREAM + 'api_key_env = "HOSTED_KEY"\n' + ANONYMOUS
        with pytest.raises(
            ConfigError, match=re.escape("upstream 'hosted': environment variable HOSTED_KEY is not set")
        ):
            load_config(write(tmp_path, text), {"OTHER": "x"})


class TestSecrets:
    def test_keys_never_appear_in_repr(self, tmp_path: Path, key_file: Path) -> None:
        """The wallet key, gateway keys and upstream keys are absent from repr() and str() of every config."""
        router, gateway = load_config(write(tmp_path, full_toml(key_file)), {"HOSTED_KEY": UPSTREAM_KEY})
        assert (router.private_key, gateway.api_keys, router.static_upstreams[0].api_key) == (
            WALLET_KEY,
            (API_KEY,),
            UPSTREAM_KEY,
        )
        shown = " ".join(
            [repr(router), str(router), repr(gateway), str(gateway), *map(repr, router.static_upstreams)]
        )
        for secret in (WALLET_KEY, WALLET_KEY[2:], API_KEY, UPSTREAM_KEY):
            assert secret not in shown

    def test_config_errors_do_not_echo_keys(self, tmp_path: Path) -> None:
        """A too-short gateway key is refused without quoting it."""
        with pytest.raises(ConfigError) as caught:
            load_config(write(tmp_path, UPSTREAM), {"ZG_ROUTER_API_KEYS": "tiny-secret"})
        assert "tiny-secret" not in str(caught.value)


class TestOptionValidation:
    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"max_attempts": 0}, "max_attempts must be at least 1"),
            ({"request_timeout": 0}, "request_timeout and queue_timeout must be positive"),
            ({"queue_timeout": -1.0}, "request_timeout and queue_timeout must be positive"),
            ({"rate_margin": 0}, "rate_margin must be in (0, 1]"),
            ({"rate_margin": 1.01}, "rate_margin must be in (0, 1]"),
        ],
    )
    def test_dispatch_options(self, kwargs: dict[str, Any], message: str) -> None:
        """DispatchOptions refuses attempts below 1, non-positive timeouts and a margin outside (0, 1]."""
        with pytest.raises(ConfigError, match=re.escape(message)):
            DispatchOptions(**kwargs)

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"refresh_interval": 0},
            {"event_poll_interval": -1},
            {"probe_interval": 0.0},
            {"models_timeout": 0},
        ],
    )
    def test_discovery_options(self, kwargs: dict[str, float]) -> None:
        """DiscoveryOptions refuses any non-positive interval or timeout."""
        with pytest.raises(ConfigError, match="discovery intervals and timeouts must be positive"):
            DiscoveryOptions(**kwargs)

    def test_edges_are_accepted(self) -> None:
        """One attempt and a margin of exactly 1 are valid."""
        assert DispatchOptions(max_attempts=1, rate_margin=1.0).rate_margin == 1.0

    @pytest.mark.parametrize(
        ("section", "message"),
        [
            ("[dispatch]\nmax_attempts = 0\n", "max_attempts must be at least 1"),
            ("[dispatch]\nrate_margin = 2.0\n", "rate_margin must be in (0, 1]"),
            ("[discovery]\nprobe_interval = 0\n", "discovery intervals and timeouts must be positive"),
            ("[health]\ncooldown = 0\n", "need 0 < cooldown <= max_cooldown"),
        ],
    )
    def test_validation_applies_to_the_file(self, tmp_path: Path, section: str, message: str) -> None:
        """The same checks run on values read from the file."""
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(write(tmp_path, UPSTREAM + ANONYMOUS + section), {})

    def test_router_config_needs_something_to_route_to(self) -> None:
        """RouterConfig without a network or upstreams is refused."""
        with pytest.raises(ConfigError, match="nothing to route to"):
            RouterConfig()

    def test_router_config_network_needs_a_key(self) -> None:
        """RouterConfig with a network but no key names the key variables."""
        with pytest.raises(
            ConfigError,
            match=re.escape(f"network 'devnet' needs a wallet key to sign session tokens: set {KEY_VARS}"),
        ):
            RouterConfig(network=DEVNET)


class TestVerifySection:
    def test_every_key_is_read(self, tmp_path: Path) -> None:
        """Each [verify] key lands in RouterConfig.verify."""
        section = """
[verify]
sample_rate = 0.25
verified_only = true
demote_for = 30.0
retry_for = 2.5
lookup_timeout = 1.5
queue_size = 50
workers = 2
"""
        router, _ = load_config(write(tmp_path, UPSTREAM + ANONYMOUS + section), {})
        assert router.verify == VerifyOptions(
            sample_rate=0.25,
            verified_only=True,
            demote_for=30.0,
            retry_for=2.5,
            lookup_timeout=1.5,
            queue_size=50,
            workers=2,
        )

    def test_defaults_and_whole_numbers(self, tmp_path: Path) -> None:
        """Without the section every response of a TEE provider is checked and none is required; a float
        key takes a whole number."""
        router, _ = load_config(write(tmp_path, UPSTREAM + ANONYMOUS), {})
        assert router.verify == VerifyOptions()
        assert (router.verify.sample_rate, router.verify.verified_only) == (1.0, False)
        section = "[verify]\nsample_rate = 0\ndemote_for = 0\n"
        router, _ = load_config(write(tmp_path, UPSTREAM + ANONYMOUS + section), {})
        assert (router.verify.sample_rate, router.verify.demote_for) == (0, 0)

    @pytest.mark.parametrize(
        ("line", "message"),
        [
            ('verified_only = "yes"', "[verify] verified_only must be true or false, got 'yes'"),
            ("verified_only = 1", "[verify] verified_only must be true or false, got 1"),
            ('sample_rate = "0.5"', "[verify] sample_rate must be a number, got '0.5'"),
            ("demote_for = true", "[verify] demote_for must be a number, got True"),
            ("workers = 2.5", "[verify] workers must be an integer, got 2.5"),
            ("queue_size = true", "[verify] queue_size must be an integer, got True"),
        ],
    )
    def test_wrong_types_are_named(self, tmp_path: Path, line: str, message: str) -> None:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(write(tmp_path, UPSTREAM + ANONYMOUS + f"[verify]\n{line}\n"), {})

    @pytest.mark.parametrize(
        ("line", "message"),
        [
            ("sample_rate = 1.5", "verify sample_rate must be in [0, 1], got 1.5"),
            ("sample_rate = -0.1", "verify sample_rate must be in [0, 1], got -0.1"),
            ("sample_rate = nan", "[verify] rates and durations must be finite numbers"),
            ("retry_for = inf", "[verify] rates and durations must be finite numbers"),
            ("demote_for = -1", "verify durations cannot be negative"),
            ("lookup_timeout = 0", "lookup_timeout must be positive"),
            ("workers = 0", "verify queue_size and workers must be at least 1"),
            ("queue_size = 0", "verify queue_size and workers must be at least 1"),
        ],
    )
    def test_values_out_of_range(self, tmp_path: Path, line: str, message: str) -> None:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(write(tmp_path, UPSTREAM + ANONYMOUS + f"[verify]\n{line}\n"), {})

    def test_unknown_keys_are_named_with_the_known_ones(self, tmp_path: Path) -> None:
        known = (
            "demote_for, lookup_timeout, queue_size, require_attestation, retry_for, sample_rate, "
            "verified_only, workers"
        )
        with pytest.raises(
            ConfigError, match=re.escape(f"unknown key(s) in [verify]: rate, sync; known: {known}")
        ):
            load_config(write(tmp_path, UPSTREAM + ANONYMOUS + "[verify]\nsync = true\nrate = 1\n"), {})

    def test_the_section_must_be_a_table(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match=re.escape("[verify] must be a table")):
            load_config(write(tmp_path, "verify = true\n" + UPSTREAM + ANONYMOUS), {})
