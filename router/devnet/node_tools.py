"""The Node-side parts of the devnet: the anvil binary and the contract artifacts, from ``node_modules``.

``make setup`` installs them from the lockfile (``package.json`` pins the versions). The bytecode comes
from the official SDK's typechain factories, which ``require("ethers")``, so we let Node load them once
and hand us JSON.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from router.chain.devtools import ContractArtifacts
from router.errors import DevnetError

SDK_PACKAGE = "@0gfoundation/0g-compute-ts-sdk"
_FACTORIES = {
    "LedgerManager": "lib.commonjs/ledger/contract/typechain/factories/LedgerManager__factory.js",
    "InferenceServing": "lib.commonjs/inference/contract/typechain/factories/InferenceServing__factory.js",
}
_EXTRACT_JS = """
const [sdk, factories] = [process.argv[1], JSON.parse(process.argv[2])];
const out = {};
for (const [name, file] of Object.entries(factories)) {
  const factory = require(require("path").join(sdk, file))[name + "__factory"];
  out[name] = {abi: factory.abi, bytecode: factory.bytecode};
}
process.stdout.write(JSON.stringify(out));
"""
_ENV_VAR = "ZG_ROUTER_NODE_MODULES"


@dataclass(frozen=True, slots=True)
class NodeModules:
    """A ``node_modules`` directory holding the devnet's npm packages."""

    root: Path

    @property
    def sdk(self) -> Path:
        return self.root / SDK_PACKAGE

    @property
    def cli(self) -> Path:
        """The official ``0g-compute-cli`` entry point."""
        return self.sdk / "cli.commonjs" / "cli" / "index.js"

    @property
    def anvil(self) -> Path:
        """The native anvil binary (not the Node wrapper, which orphans anvil when killed)."""
        arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
        machine = arch.get(platform.machine().lower(), platform.machine().lower())
        binary = self.root / "@foundry-rs" / f"anvil-linux-{machine}" / "bin" / "anvil"
        if not binary.is_file():
            raise DevnetError(f"anvil binary not found at {binary}; run `make setup` in the repository")
        return binary


def find_node_modules() -> NodeModules:
    """``$ZG_ROUTER_NODE_MODULES``, else the ``node_modules`` beside this checkout, else in the cwd."""
    candidates = []
    if env := os.environ.get(_ENV_VAR):
        candidates.append(Path(env))
    candidates += [
        Path(__file__).resolve().parents[2] / "node_modules",
        Path.cwd() / "node_modules",
    ]
    for path in candidates:
        if (path / SDK_PACKAGE / "package.json").is_file():
            return NodeModules(path)
    raise DevnetError(
        "the devnet needs the npm packages in package.json: run `make setup` in the zg-router "
        f"repository, or point {_ENV_VAR} at a node_modules directory holding {SDK_PACKAGE}"
    )


@cache
def sdk_contracts(modules: NodeModules) -> dict[str, dict[str, object]]:
    """``{"LedgerManager": {"abi": [...], "bytecode": "0x..."}, "InferenceServing": ...}``."""
    try:
        done = subprocess.run(
            ["node", "-e", _EXTRACT_JS, str(modules.sdk), json.dumps(_FACTORIES)],
            capture_output=True,
            check=True,
            text=True,
            timeout=60,
            # Its own session: a Ctrl-C at the terminal is ours to handle, not a reason for node to die.
            start_new_session=True,
        )
    except FileNotFoundError:
        raise DevnetError("`node` is not on PATH; the devnet needs Node.js >= 20") from None
    except subprocess.CalledProcessError as exc:
        raise DevnetError(f"reading the SDK contract artifacts failed: {exc.stderr.strip()}") from None
    contracts: dict[str, dict[str, object]] = json.loads(done.stdout)
    return contracts


@cache
def contract_artifacts(modules: NodeModules) -> ContractArtifacts:
    """Creation bytecode for the devnet deploy: 0G implementations + OpenZeppelin 4.8.3 proxies."""
    sdk = sdk_contracts(modules)
    oz = modules.root / "@openzeppelin" / "contracts" / "build" / "contracts"
    try:
        beacon = json.loads((oz / "UpgradeableBeacon.json").read_text())["bytecode"]
        proxy = json.loads((oz / "BeaconProxy.json").read_text())["bytecode"]
    except OSError as exc:
        raise DevnetError(f"OpenZeppelin proxy artifacts missing ({exc}); run `make setup`") from None
    return ContractArtifacts(
        ledger_bytecode=_hex(sdk["LedgerManager"]["bytecode"]),
        inference_bytecode=_hex(sdk["InferenceServing"]["bytecode"]),
        beacon_bytecode=_hex(beacon),
        beacon_proxy_bytecode=_hex(proxy),
    )


def _hex(value: object) -> bytes:
    text = str(value)
    return bytes.fromhex(text[2:] if text.startswith("0x") else text)
