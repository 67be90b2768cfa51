"""Network presets: chain id, default RPC URLs and the contract proxies (protocol.md §1)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from eth_utils.address import is_checksum_address

from router.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Network:
    """Where the 0G contracts live. ``rpc_urls`` are tried in order, failing over on transport errors.

    ``confirmations`` is how many blocks a log must be buried under before the settlement watcher applies
    it (reorg safety); the devnet mines a block per transaction only, so it uses 0.
    """

    name: str
    chain_id: int
    rpc_urls: tuple[str, ...]
    ledger: str
    inference: str
    confirmations: int = 2

    def __post_init__(self) -> None:
        for label, address in (("ledger", self.ledger), ("inference", self.inference)):
            if not is_checksum_address(address):
                raise ConfigError(f"network {self.name!r}: {label} address {address!r} is not checksummed")
        if self.confirmations < 0:
            raise ConfigError(f"network {self.name!r}: confirmations cannot be negative")
        for url in self.rpc_urls:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"network {self.name!r}: RPC URL must be http(s), got {url[:16]!r}")

    def with_rpc_urls(self, *urls: str) -> Network:
        """A copy of this network that talks to ``urls`` instead of the preset ones."""
        if not urls:
            raise ConfigError(f"network {self.name!r}: at least one RPC URL is required")
        return replace(self, rpc_urls=tuple(urls))


MAINNET = Network(
    name="mainnet",
    chain_id=16661,
    rpc_urls=("https://evmrpc.0g.ai",),
    ledger="0x2dE54c845Cd948B72D2e32e39586fe89607074E3",
    inference="0x47340d900bdFec2BD393c626E12ea0656F938d84",
)
TESTNET = Network(
    name="testnet",
    chain_id=16602,
    rpc_urls=("https://evmrpc-testnet.0g.ai",),
    ledger="0xE70830508dAc0A97e6c087c75f402f9Be669E406",
    inference="0xa79F4c8311FF93C06b8CfB403690cc987c93F91E",
)
# The addresses the official SDKs hard-code for chain 31337; `router.devnet` deploys onto exactly these.
DEVNET = Network(
    name="devnet",
    chain_id=31337,
    rpc_urls=("http://127.0.0.1:8545",),
    ledger="0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0",
    inference="0x0165878A594ca255338adfa4d48449f69242Eb8F",
    confirmations=0,
)

NETWORKS: dict[str, Network] = {n.name: n for n in (MAINNET, TESTNET, DEVNET)}


def network_by_name(name: str) -> Network:
    """The preset called ``name``; a ConfigError lists the known ones."""
    try:
        return NETWORKS[name]
    except KeyError:
        raise ConfigError(f"unknown network {name!r}; known: {', '.join(sorted(NETWORKS))}") from None
