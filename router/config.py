"""Configuration: frozen dataclasses, checked once, passed down. Nothing here reads the environment except
``load_config``, which only the CLI calls.

Secrets (the wallet key, API keys) are fields with ``repr=False``, so a config printed or logged shows none.
The chain side (web3) is imported only when a network is named: a config of static upstreams never loads it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from router.errors import ConfigError, InvalidRequest
from router.keys import SEVERAL_HINT, check_wallet_keys, wallet_keys
from router.policy.select import Strategy
from router.pool.health import HealthPolicy
from router.pool.limits import ProviderLimits
from router.shared.options import SharedOptions
from router.transport.http import TransportOptions
from router.types import NEURON_PER_0G
from router.verify.verifier import VerifyOptions

if TYPE_CHECKING:
    from router.chain.networks import Network
    from router.devnet.network import Devnet

DEFAULT_PORT = 8080
# Prometheus' registry of default ports gives 9464 to OpenTelemetry exporters; deploy/ uses it too.
DEFAULT_METRICS_PORT = 9464
# The broker's own body cap (protocol.md §4.2): anything larger would be refused there anyway.
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
SERVICE_TYPES = ("chatbot", "embedding", "text-to-image", "speech-to-text", "image-editing")
# Each wallet is a metrics label value and a set of background tasks: keep both bounded.
_T = TypeVar("_T")
# An origin as browsers send it in `Origin`: http(s), a host, perhaps a port; lowercase, nothing after.
_ORIGIN = re.compile(r"https?://[a-z0-9.-]+(?::[0-9]{1,5})?|https?://\[[0-9a-f:.]+\](?::[0-9]{1,5})?")


@dataclass(frozen=True, slots=True)
class StaticUpstream:
    """Any OpenAI-compatible endpoint (0G's hosted Router, say), served beside the chain's providers.

    ``url`` is the base that endpoint paths follow (``https://router-api.0g.ai/v1``).
    """

    name: str
    url: str
    models: tuple[str, ...]
    api_key: str | None = field(default=None, repr=False)
    service_type: str = "chatbot"
    input_price: int = 0
    output_price: int = 0
    verifiability: str = ""
    limits: ProviderLimits = field(
        default_factory=lambda: ProviderLimits(requests_per_minute=6000, burst=100, max_concurrent=100)
    )

    def __post_init__(self) -> None:
        if not self.name or "," in self.name:
            raise ConfigError("an upstream needs a name without commas")
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"upstream {self.name!r}: url must be http(s)")
        if not self.models:
            raise ConfigError(f"upstream {self.name!r}: list the models it serves")
        if self.service_type not in SERVICE_TYPES:
            raise ConfigError(
                f"upstream {self.name!r}: service_type must be one of {', '.join(SERVICE_TYPES)}"
            )


@dataclass(frozen=True, slots=True)
class DispatchOptions:
    """How a request is tried. Times in seconds.

    ``request_timeout`` is the whole request's deadline, queueing included; ``queue_timeout`` caps the
    wait for a slot when every candidate is at its limits. ``rate_margin`` runs our token buckets at this
    fraction of the providers' advertised rate.
    """

    max_attempts: int = 3
    request_timeout: float = 120.0
    queue_timeout: float = 30.0
    strategy: Strategy = Strategy.BALANCED
    rate_margin: float = 0.9
    rate_limit_backoff: float = 2.0
    unfunded_cooldown: float = 60.0
    misconfigured_cooldown: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        if min(self.request_timeout, self.queue_timeout) <= 0:
            raise ConfigError("request_timeout and queue_timeout must be positive")
        if not 0 < self.rate_margin <= 1:
            raise ConfigError("rate_margin must be in (0, 1]")
        if min(self.rate_limit_backoff, self.unfunded_cooldown, self.misconfigured_cooldown) < 0:
            raise ConfigError("rate_limit_backoff and the cooldowns cannot be negative")


@dataclass(frozen=True, slots=True)
class DiscoveryOptions:
    """How the pool is kept fresh. Times in seconds."""

    refresh_interval: float = 60.0
    event_poll_interval: float = 5.0
    probe_interval: float = 2.0
    models_timeout: float = 5.0

    def __post_init__(self) -> None:
        if (
            min(self.refresh_interval, self.event_poll_interval, self.probe_interval, self.models_timeout)
            <= 0
        ):
            raise ConfigError("discovery intervals and timeouts must be positive")


@dataclass(frozen=True, slots=True)
class MoneyOptions:
    """Balances, settlement and auto-funding of the wallet's provider sub-accounts.

    Amounts are in 0G. ``available`` means what a provider would still serve: locked balance minus the
    1 0G minimum, unsettled fees and the reserves of requests in flight. The funder tops a provider up to
    ``fund_to`` when its available balance falls under ``fund_below`` (and opens a sub-account for each
    new provider when ``fund_new_providers``). ``default_max_tokens`` is the completion size reserved for
    a request that names no ``max_tokens``. Times in seconds.
    """

    auto_fund: bool = True
    fund_below: float = 1.0
    fund_to: float = 2.0
    fund_new_providers: bool = True
    funding_retry: float = 60.0
    balance_interval: float = 30.0
    watch_interval: float = 2.0
    default_max_tokens: int = 4096

    def __post_init__(self) -> None:
        numbers = (
            self.fund_below,
            self.fund_to,
            self.funding_retry,
            self.balance_interval,
            self.watch_interval,
        )
        if not all(math.isfinite(n) for n in numbers):
            raise ConfigError("[money] amounts and intervals must be finite numbers")
        if not 0 <= self.fund_below <= self.fund_to:
            raise ConfigError("[money] needs 0 <= fund_below <= fund_to")
        if min(self.funding_retry, self.balance_interval, self.watch_interval) <= 0:
            raise ConfigError("[money] intervals must be positive")
        if self.default_max_tokens < 1:
            raise ConfigError("[money] default_max_tokens must be at least 1")

    @property
    def fund_below_neuron(self) -> int:
        return _neuron(self.fund_below)

    @property
    def fund_to_neuron(self) -> int:
        return _neuron(self.fund_to)


def _neuron(amount_0g: float) -> int:
    # Through the decimal text, so 1.2 0G is exactly 1_200_000_000_000_000_000 neuron.
    return int(Decimal(str(amount_0g)) * NEURON_PER_0G)


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Everything a ``Router`` needs. Chain providers need ``network`` and a wallet key: ``private_key``
    for one wallet, or ``private_keys`` for several (up to ``MAX_WALLETS``, each a different wallet with
    its own ledger and sub-accounts); ``wallet_keys`` gives whichever was set, in order."""

    network: Network | None = None
    private_key: str | None = field(default=None, repr=False)
    private_keys: tuple[str, ...] = field(default=(), repr=False)
    static_upstreams: tuple[StaticUpstream, ...] = ()
    dispatch: DispatchOptions = field(default_factory=DispatchOptions)
    discovery: DiscoveryOptions = field(default_factory=DiscoveryOptions)
    transport: TransportOptions = field(default_factory=TransportOptions)
    health: HealthPolicy = field(default_factory=HealthPolicy)
    money: MoneyOptions = field(default_factory=MoneyOptions)
    verify: VerifyOptions = field(default_factory=VerifyOptions)
    shared: SharedOptions = field(default_factory=SharedOptions)

    def __post_init__(self) -> None:
        if self.network is None and not self.static_upstreams:
            raise ConfigError("nothing to route to: configure a network (and wallet key) or static upstreams")
        if self.private_key and self.private_keys:
            raise ConfigError(
                "give private_key (one wallet) or private_keys (several wallets), not both: "
                "list every wallet, the first one included, in private_keys"
            )
        if self.network is not None and not self.wallet_keys:
            raise ConfigError(
                f"network {self.network.name!r} needs a wallet key to sign session tokens: "
                f"set ZG_ROUTER_PRIVATE_KEY or ZG_ROUTER_PRIVATE_KEY_FILE ({SEVERAL_HINT})"
            )
        check_wallet_keys(self.wallet_keys)
        names = [u.name for u in self.static_upstreams]
        if len(set(names)) != len(names):
            raise ConfigError("static upstream names must be unique")

    @property
    def wallet_keys(self) -> tuple[str, ...]:
        """The wallets' keys in order ; none without a network."""
        if self.network is None:
            return ()
        if self.private_keys:
            return self.private_keys
        return (self.private_key,) if self.private_key else ()

    @classmethod
    def for_devnet(
        cls,
        devnet: Devnet | str | bytes | Mapping[str, Any],
        *,
        wallets: int | None = None,
        **changes: Any,
    ) -> RouterConfig:
        """A router for a local devnet's funded users. ``devnet`` is a running ``Devnet``, the JSON line
        ``zg-router devnet --json`` prints, or the dict that line parses to.

        Sets the devnet network (its RPC URL), every funded user's key as a wallet (``wallets`` keeps the
        first N; one wallet is ``private_key``, several are ``private_keys``), loopback providers allowed
        (``allow_private_targets``), and registry changes and settlements followed within a second or
        so. ``changes`` replace fields as ``dataclasses.replace`` does (a ``private_key`` or
        ``private_keys`` given here replaces the devnet's wallets); a ``transport`` given here replaces
        ours whole, so it refuses the devnet's providers unless it allows private targets too.
        """
        network, keys = _devnet_network(devnet)
        if wallets is not None:
            if isinstance(wallets, bool) or not isinstance(wallets, int) or not 1 <= wallets <= len(keys):
                raise ConfigError(
                    f"RouterConfig.for_devnet: wallets must be 1-{len(keys)} (the devnet's funded users), "
                    f"got {wallets!r}"
                )
            keys = keys[:wallets]
        base: dict[str, Any] = {
            "network": network,
            "transport": TransportOptions(allow_private_targets=True),
            "discovery": DiscoveryOptions(event_poll_interval=1.0, probe_interval=1.0),
            # The simulators settle every few seconds: follow them closely.
            "money": MoneyOptions(balance_interval=5.0, watch_interval=1.0),
        }
        if not {"private_key", "private_keys"} & changes.keys():
            base.update({"private_key": keys[0]} if len(keys) == 1 else {"private_keys": keys})
        try:
            return cls(**{**base, **changes})
        except TypeError as exc:
            raise ConfigError(f"RouterConfig.for_devnet: {exc}") from None


_DEVNET_SOURCE = "a running Devnet, the line `zg-router devnet --json` prints, or the dict it parses to"


def _devnet_network(source: object) -> tuple[Network, tuple[str, ...]]:
    """The network and the funded users' keys a devnet summary describes (see ``Devnet.summary``):
    every key in ``users``, or the one ``user`` of a summary without that list."""
    from router.chain.networks import DEVNET

    if isinstance(source, str | bytes):
        try:
            source = json.loads(source)
        except ValueError:
            raise ConfigError(f"RouterConfig.for_devnet: not JSON; it takes {_DEVNET_SOURCE}") from None
    if not isinstance(source, Mapping):
        from router.devnet.network import Devnet

        if not isinstance(source, Devnet):
            raise ConfigError(f"RouterConfig.for_devnet takes {_DEVNET_SOURCE}, not {type(source).__name__}")
        if not source.rpc_url:
            raise ConfigError("the devnet is not running: use it inside `async with Devnet() as devnet:`")
        source = source.summary()
    rpc_url, chain_id = source.get("rpc_url"), source.get("chain_id")
    ledger, inference = source.get("ledger"), source.get("inference")
    users = source.get("users")
    if isinstance(users, list) and users:
        entries = [(f"users[{index}]", user) for index, user in enumerate(users)]
    else:
        entries = [("user", source.get("user"))]
    keys = [entry.get("private_key") if isinstance(entry, Mapping) else None for _, entry in entries]
    if not (
        isinstance(rpc_url, str)
        and isinstance(chain_id, int)
        and isinstance(ledger, str)
        and isinstance(inference, str)
        and all(isinstance(key, str) for key in keys)
    ):
        expected = (
            ("rpc_url", rpc_url, str),
            ("chain_id", chain_id, int),
            ("ledger", ledger, str),
            ("inference", inference, str),
            *((f"{name}.private_key", key, str) for (name, _), key in zip(entries, keys, strict=True)),
        )
        wrong = ", ".join(name for name, value, kind in expected if not isinstance(value, kind))
        raise ConfigError(
            f"RouterConfig.for_devnet: the devnet summary lacks {wrong}; it takes {_DEVNET_SOURCE}"
        )
    network = dataclasses.replace(
        DEVNET, chain_id=chain_id, rpc_urls=(rpc_url,), ledger=ledger, inference=inference
    )
    return network, tuple(str(key) for key in keys)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The HTTP face. Without API keys it refuses to start unless ``allow_anonymous`` is set.

    Metrics: ``GET /metrics`` (Prometheus) needs no key and shows balances and spend, so it is not on the
    API port: it listens on ``metrics_host:metrics_port``, loopback and 9464 by default (with ``port`` 0,
    any free port, as tests and embedded gateways want). Set ``metrics_host`` to reach it from a private
    network (a container's scraper), never the internet. ``metrics_on_api_port`` serves it on the API port
    instead, to anyone who can reach that port; ``metrics = false`` serves it nowhere.

    Slow and greedy clients: a connection must send a request's headers within ``header_timeout`` seconds
    of opening or of its previous response (so an idle keep-alive connection closes after that long too:
    keep a proxy's upstream idle timeout below it), and a body within ``body_timeout`` seconds (the
    rest of a body the gateway does not read gets as long). A declared body over ``max_body_bytes`` is
    refused (413) before it is sent. Each listening port holds at most ``max_connections`` connections;
    the next ones get a 503 and are closed at once.

    Browser apps: ``cors_origins`` (exact origins such as ``https://app.example``, or ``"*"`` for any)
    may call the API from a web page; other origins get no CORS headers, so browsers refuse them. Empty,
    the default, serves no browser (tools and servers are not affected either way).
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    admin_keys: tuple[str, ...] = field(default=(), repr=False)
    allow_anonymous: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    shutdown_timeout: float = 10.0
    # nginx's keep-alive default: above the 60 s idle timeout of common proxies and load balancers.
    header_timeout: float = 75.0
    body_timeout: float = 60.0
    max_connections: int = 1024
    metrics: bool = True
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    metrics_on_api_port: bool = False
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.api_keys and not self.allow_anonymous:
            raise ConfigError(
                "the gateway needs at least one API key (ZG_ROUTER_API_KEYS or [gateway] api_keys); "
                "set allow_anonymous = true to serve without one"
            )
        if any(len(key) < 16 for key in (*self.api_keys, *self.admin_keys)):
            raise ConfigError("gateway API keys and admin keys must be at least 16 characters")
        if set(self.api_keys) & set(self.admin_keys):
            raise ConfigError("an admin key cannot also be an API key: admin keys move money")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0-65535, got {self.port}")
        if self.metrics_port is not None:
            if not 0 <= self.metrics_port <= 65535:
                raise ConfigError(f"metrics_port must be 0-65535, got {self.metrics_port}")
            if not self.metrics:
                raise ConfigError("metrics_port is set but metrics = false")
            if self.metrics_on_api_port:
                raise ConfigError("metrics_port is set but metrics_on_api_port = true: choose one")
        if self.metrics_on_api_port and not self.metrics:
            raise ConfigError("metrics_on_api_port = true but metrics = false")
        address = self.metrics_address
        if address is not None and address[1] == self.port != 0:
            raise ConfigError(
                "metrics_port must differ from port (set metrics_on_api_port = true to share the port)"
            )
        if self.max_body_bytes < 1024:
            raise ConfigError("max_body_bytes must be at least 1024")
        if self.shutdown_timeout < 0:
            raise ConfigError("shutdown_timeout cannot be negative")
        for name in ("header_timeout", "body_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.max_connections < 1:
            raise ConfigError(f"max_connections must be at least 1, got {self.max_connections}")
        for origin in self.cors_origins:
            if not isinstance(origin, str) or not (origin == "*" or _ORIGIN.fullmatch(origin)):
                raise ConfigError(
                    f"cors_origins: {origin!r} is not an origin as browsers send it: give "
                    'scheme://host[:port] in lowercase, with no path or trailing slash, or "*" for any'
                )

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """Where ``/metrics`` listens on its own, or None (no metrics, or on the API port)."""
        if not self.metrics or self.metrics_on_api_port:
            return None
        if self.metrics_port is not None:
            return self.metrics_host, self.metrics_port
        return self.metrics_host, 0 if self.port == 0 else DEFAULT_METRICS_PORT


# -- loading ---------------------------------------------------------------------------------------

_TOP_KEYS = {
    "network",
    "rpc_urls",
    "private_key_file",
    "wallet_key_files",
    "gateway",
    "dispatch",
    "discovery",
    "transport",
    "health",
    "money",
    "verify",
    "shared",
    "upstreams",
}


def load_config(path: Path | None, env: Mapping[str, str]) -> tuple[RouterConfig, GatewayConfig]:
    """Read the TOML file at ``path`` (if any), then let ``ZG_ROUTER_*`` variables override it.

    Wallet keys never come from the TOML itself, so config files can be shared. One wallet's key comes
    from ``ZG_ROUTER_PRIVATE_KEY``, or a file named by ``ZG_ROUTER_PRIVATE_KEY_FILE`` or
    ``private_key_file``; several wallets' keys from ``ZG_ROUTER_PRIVATE_KEYS`` (comma-separated), or
    files named by ``ZG_ROUTER_WALLET_KEY_FILES`` (separated by ``os.pathsep``) or ``wallet_key_files``.
    The variable wins over the file setting, a key over key files; one-wallet and several-wallet sources
    together are an error.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    _reject_unknown(data, _TOP_KEYS, "the config file")
    network = _network(data, env)
    private_key, private_keys = wallet_keys(data, env) if network is not None else (None, ())
    router = RouterConfig(
        network=network,
        private_key=private_key,
        private_keys=private_keys,
        static_upstreams=tuple(_upstream(u, env) for u in _list(data.get("upstreams", []), "upstreams")),
        dispatch=_section(DispatchOptions, data.get("dispatch", {}), "dispatch"),
        discovery=_section(DiscoveryOptions, data.get("discovery", {}), "discovery"),
        transport=_section(TransportOptions, data.get("transport", {}), "transport"),
        health=_section(HealthPolicy, data.get("health", {}), "health"),
        money=_section(MoneyOptions, data.get("money", {}), "money"),
        verify=_section(VerifyOptions, data.get("verify", {}), "verify"),
        shared=_section(SharedOptions, _shared_table(data, env), "shared"),
    )
    gateway_data = dict(_table(data.get("gateway", {}), "gateway"))
    if "ZG_ROUTER_API_KEYS" in env:
        gateway_data["api_keys"] = [k.strip() for k in env["ZG_ROUTER_API_KEYS"].split(",") if k.strip()]
    if "ZG_ROUTER_ADMIN_KEYS" in env:
        gateway_data["admin_keys"] = [k.strip() for k in env["ZG_ROUTER_ADMIN_KEYS"].split(",") if k.strip()]
    if "ZG_ROUTER_HOST" in env:
        gateway_data["host"] = env["ZG_ROUTER_HOST"]
    if "ZG_ROUTER_PORT" in env:
        gateway_data["port"] = _int(env["ZG_ROUTER_PORT"], "ZG_ROUTER_PORT")
    if "ZG_ROUTER_METRICS_HOST" in env:
        gateway_data["metrics_host"] = env["ZG_ROUTER_METRICS_HOST"]
    if "ZG_ROUTER_METRICS_PORT" in env:
        gateway_data["metrics_port"] = _int(env["ZG_ROUTER_METRICS_PORT"], "ZG_ROUTER_METRICS_PORT")
    if "ZG_ROUTER_CORS_ORIGINS" in env:
        origins = env["ZG_ROUTER_CORS_ORIGINS"].split(",")
        gateway_data["cors_origins"] = [o.strip() for o in origins if o.strip()]
    return router, _section(GatewayConfig, gateway_data, "gateway")


def _shared_table(data: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    shared = dict(_table(data.get("shared", {}), "shared"))
    if env.get("ZG_ROUTER_REDIS_URL"):
        shared["redis_url"] = env["ZG_ROUTER_REDIS_URL"]
    return shared


def _network(data: Mapping[str, Any], env: Mapping[str, str]) -> Network | None:
    name = env.get("ZG_ROUTER_NETWORK", data.get("network"))
    if name is None:
        return None
    from router.chain.networks import network_by_name

    network = network_by_name(str(name))
    urls = env.get("ZG_ROUTER_RPC_URLS")
    # The file's RPC URLs belong to the file's network: another network from the environment drops them.
    same_network = str(name) == str(data.get("network", name))
    rpc_urls = [u.strip() for u in urls.split(",") if u.strip()] if urls else None
    if rpc_urls is None and same_network:
        rpc_urls = data.get("rpc_urls")
    if rpc_urls:
        network = network.with_rpc_urls(*_list(rpc_urls, "rpc_urls"))
    return network


def _upstream(raw: object, env: Mapping[str, str]) -> StaticUpstream:
    table = dict(_table(raw, "upstreams"))
    _reject_unknown(
        table, {*(f.name for f in fields(StaticUpstream)), "api_key_env"} - {"api_key"}, "an upstream"
    )
    if key_env := table.pop("api_key_env", None):
        if key_env not in env:
            raise ConfigError(f"upstream {table.get('name')!r}: environment variable {key_env} is not set")
        table["api_key"] = env[key_env]
    if "models" in table:
        table["models"] = tuple(_list(table["models"], "upstreams.models"))
    if "limits" in table:
        table["limits"] = _section(ProviderLimits, table["limits"], "upstreams.limits")
    try:
        return StaticUpstream(**table)
    except TypeError as exc:
        raise ConfigError(f"upstream: {exc}") from None


_SCALARS: dict[str, tuple[tuple[type, ...], str]] = {
    "bool": ((bool,), "true or false"),
    "int": ((int,), "an integer"),
    "int | None": ((int,), "an integer"),
    "float": ((int, float), "a number"),
    "str": ((str,), "a string"),
}


def _section(cls: type[_T], raw: object, name: str) -> _T:
    table = dict(_table(raw, name))
    known = {f.name: str(f.type) for f in fields(cls)}  # type: ignore[arg-type]
    _reject_unknown(table, set(known), f"[{name}]")
    for key, value in table.items():
        if known[key] not in _SCALARS:
            continue
        types, words = _SCALARS[known[key]]
        # TOML has real booleans and numbers: "false" (a string) must not switch a flag on.
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise ConfigError(f"[{name}] {key} must be {words}, got {value!r}")
    if cls is DispatchOptions and "strategy" in table:
        try:
            table["strategy"] = Strategy.parse(str(table["strategy"]), "dispatch.strategy")
        except InvalidRequest as exc:
            raise ConfigError(f"[dispatch] strategy: {exc.message}") from None
    if cls is GatewayConfig:
        for keys in ("api_keys", "admin_keys", "cors_origins"):
            if keys in table:
                table[keys] = tuple(_list(table[keys], f"gateway.{keys}"))
    try:
        return cls(**table)
    except TypeError as exc:
        raise ConfigError(f"[{name}]: {exc}") from None


def _reject_unknown(table: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) in {where}: {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )


def _table(raw: object, name: str) -> Mapping[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}] must be a table")
    return raw


def _list(raw: object, name: str) -> list[Any]:
    if not isinstance(raw, list):
        raise ConfigError(f"{name} must be a list")
    return raw


def _int(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {text!r}") from None
