"""The ``zg-router`` command line."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import sys
from collections.abc import Sequence

from router.devnet import USER_KEY_INDEX, Devnet, DevnetConfig, ProviderSpec, dev_private_key
from router.errors import RouterError

DEFAULT_DEVNET_PROVIDERS = 3


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``zg-router`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(asyncio.run(args.run(args)))
    except RouterError as exc:
        print(f"zg-router: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zg-router", description="An OpenAI-compatible router for the 0G Compute Network."
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    devnet = commands.add_parser(
        "devnet",
        help="run a local chain with the real 0G contracts and registered providers",
        description="Start anvil, deploy the 0G contracts at the SDKs' devnet addresses, register "
        "providers and fund a user; run until interrupted (Ctrl-C), then clean up.",
    )
    devnet.add_argument(
        "--providers", type=_positive_int, default=DEFAULT_DEVNET_PROVIDERS, help="how many (1-50)"
    )
    devnet.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="NAME",
        help="model id; repeat to give providers different models (cycled). Default: devnet-model",
    )
    devnet.add_argument(
        "--input-price",
        action="append",
        type=_non_negative_int,
        metavar="NEURON",
        help="price per prompt token in neuron; repeat to vary per provider (cycled)",
    )
    devnet.add_argument(
        "--output-price",
        action="append",
        type=_non_negative_int,
        metavar="NEURON",
        help="price per completion token in neuron; repeat to vary per provider (cycled)",
    )
    devnet.add_argument(
        "--port", type=_non_negative_int, default=0, help="anvil's port (default: any free port)"
    )
    devnet.add_argument("--json", action="store_true", help="print one JSON line once ready")
    devnet.set_defaults(run=_run_devnet)
    return parser


def devnet_config(args: argparse.Namespace) -> DevnetConfig:
    """The DevnetConfig the ``devnet`` flags describe."""
    default = ProviderSpec()
    models = itertools.cycle(args.models or [default.model])
    inputs = itertools.cycle(args.input_price or [default.input_price])
    outputs = itertools.cycle(args.output_price or [default.output_price])
    specs = tuple(
        ProviderSpec(model=next(models), input_price=next(inputs), output_price=next(outputs))
        for _ in range(args.providers)
    )
    return DevnetConfig(providers=specs, port=args.port)


def devnet_summary(devnet: Devnet) -> dict[str, object]:
    """What a client needs to use the devnet. The user key is anvil's public dev key #1."""
    return {
        "rpc_url": devnet.rpc_url,
        "chain_id": devnet.network.chain_id,
        "ledger": devnet.network.ledger,
        "inference": devnet.network.inference,
        "user": {
            "address": devnet.user_wallet.address,
            "private_key": dev_private_key(USER_KEY_INDEX),
        },
        "providers": [{"address": p.address, "url": p.url, "model": p.spec.model} for p in devnet.providers],
    }


async def _run_devnet(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Devnet(devnet_config(args)) as devnet:
        summary = devnet_summary(devnet)
        if args.json:
            print(json.dumps(summary), flush=True)
        else:
            _print_readable(summary, devnet.ready_seconds)
        await stop.wait()
    print("devnet stopped", file=sys.stderr)
    return 0


def _print_readable(summary: dict[str, object], ready_seconds: float) -> None:
    user = summary["user"]
    assert isinstance(user, dict)
    lines = [
        f"0G devnet ready in {ready_seconds:.2f} s (Ctrl-C to stop)",
        f"  RPC            {summary['rpc_url']}  (chain id {summary['chain_id']})",
        f"  LedgerManager  {summary['ledger']}",
        f"  Inference      {summary['inference']}",
        f"  user           {user['address']}",
        f"  user key       {user['private_key']}  (anvil dev key: for this devnet only)",
        "  providers:",
    ]
    providers = summary["providers"]
    assert isinstance(providers, list)
    lines += [f"    {p['address']}  {p['model']:<20} {p['url']}" for p in providers]
    print("\n".join(lines), flush=True)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value
