"""The ``zg-router`` command line.

Only the standard library is imported at module level: a command imports what it needs (web3 takes about a
second to import) when it runs, so ``--help`` is instant and a Ctrl-C during start-up exits cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import sys
from collections.abc import Callable, Sequence

from router.errors import RouterError

DEFAULT_DEVNET_PROVIDERS = 3
MAX_DEVNET_PROVIDERS = 50
MAX_DEVNET_WALLETS = 10
# What a simulated provider can be: router.devnet.simulator.spec.SERVICE_TYPES, spelled out here because
# importing it loads the devnet (web3); a test keeps the two the same.
DEVNET_SERVICE_TYPES = ("chatbot", "embedding", "text-to-image", "image-editing", "speech-to-text")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``zg-router`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return int(runner.run(args.run(args)))
    except RouterError as exc:
        print(f"zg-router: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop (a dependency wherever it is built, all but Windows): it halves the loop's own
    share of the gateway's CPU per request. None, asyncio's default loop, on Windows."""
    if sys.platform == "win32":
        return None
    import uvloop

    return uvloop.new_event_loop


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zg-router", description="An OpenAI-compatible router for the 0G Compute Network."
    )
    parser.add_argument("--version", action="version", version=f"zg-router {_version()}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    devnet = commands.add_parser(
        "devnet",
        help="run a local chain with the real 0G contracts and registered providers",
        description="Start anvil, deploy the 0G contracts at the SDKs' devnet addresses, register "
        "providers and fund its users; run until interrupted (Ctrl-C), then clean up.",
    )
    devnet.add_argument(
        "--providers", type=_provider_count, default=DEFAULT_DEVNET_PROVIDERS, help="how many (1-50)"
    )
    devnet.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="NAME",
        help="model id; repeat to give providers different models (cycled). Default: devnet-model",
    )
    devnet.add_argument(
        "--service-type",
        action="append",
        dest="service_types",
        choices=DEVNET_SERVICE_TYPES,
        metavar="TYPE",
        help="what a provider serves: " + ", ".join(DEVNET_SERVICE_TYPES) + "; repeat to vary it across "
        "providers (cycled, as --model is). Default: chatbot",
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
        "--wallets",
        type=_wallet_count,
        default=1,
        metavar="N",
        help=f"how many funded users (1-{MAX_DEVNET_WALLETS}), each with a ledger and a sub-account at "
        "every provider; the gateway of --serve spends from all of them (default 1)",
    )
    for flag, kind, what in (
        ("--rpm", _positive_int, "requests per minute per wallet (default 30)"),
        ("--burst", _positive_int, "requests a wallet may send back to back (default 5)"),
        ("--max-concurrent", _positive_int, "requests a wallet may have in flight (default 5)"),
        ("--tpm", _non_negative_int, "tokens per minute per wallet; 0 = off (default)"),
        ("--ipm", _non_negative_int, "images per minute per wallet; 0 = off (default)"),
        ("--global-concurrent", _positive_int, "requests in flight, all wallets together (default 20)"),
    ):
        devnet.add_argument(flag, type=kind, metavar="N", help=f"every provider's limit: {what}")
    devnet.add_argument(
        "--port", type=_non_negative_int, default=0, help="anvil's port (default: any free port)"
    )
    devnet.add_argument("--json", action="store_true", help="print one JSON line once ready (and log JSON)")
    devnet.add_argument(
        "--serve",
        action="store_true",
        help="also run the OpenAI-compatible gateway over the devnet's providers",
    )
    devnet.add_argument(
        "--gateway-port",
        type=_port,
        default=0,
        help="the gateway's port with --serve (default: any free port)",
    )
    devnet.add_argument(
        "--api-key", help="the gateway's API key with --serve (default: a random one, printed)"
    )
    devnet.add_argument(
        "--admin-key", help="the gateway's admin key with --serve (default: a random one, printed)"
    )
    _logging_flags(devnet)
    devnet.set_defaults(run=_run_devnet)

    serve = commands.add_parser(
        "serve",
        help="run the OpenAI-compatible gateway over a 0G network",
        description="Serve the gateway. Configuration: a TOML file (--config or ZG_ROUTER_CONFIG), then "
        "ZG_ROUTER_* variables: ZG_ROUTER_NETWORK, ZG_ROUTER_RPC_URLS, one wallet's key in "
        "ZG_ROUTER_PRIVATE_KEY or ZG_ROUTER_PRIVATE_KEY_FILE, or several wallets' in ZG_ROUTER_PRIVATE_KEYS "
        "(comma-separated) or ZG_ROUTER_WALLET_KEY_FILES (paths separated by ':'), ZG_ROUTER_API_KEYS, "
        "ZG_ROUTER_ADMIN_KEYS, ZG_ROUTER_HOST, "
        "ZG_ROUTER_PORT, ZG_ROUTER_METRICS_HOST, ZG_ROUTER_METRICS_PORT, ZG_ROUTER_LOG_FORMAT.",
    )
    serve.add_argument("--config", metavar="PATH", help="TOML config file")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="listen port (default 8080)")
    _logging_flags(serve)
    serve.set_defaults(run=_run_serve)

    for name, summary in (
        ("balance", "each wallet's ledger and provider sub-accounts (balance, available, unsettled)"),
        ("providers", "the pool: models, limits, health and our balance at each provider"),
        ("fund", "move 0G from a wallet's ledger to its sub-account at a provider"),
        ("refund", "queue refunds of provider sub-accounts (and stop funding them)"),
        ("verify", "the TEE verdict on a past response, by its chat id (the x-zg-chat-id header)"),
    ):
        admin = commands.add_parser(
            name,
            help=summary,
            description=f"{summary[0].upper()}{summary[1:]}, through a running gateway's admin API. "
            "Set ZG_ROUTER_URL (default http://127.0.0.1:8080) and ZG_ROUTER_ADMIN_KEY.",
        )
        admin.add_argument("--url", help="the gateway's base URL (default: $ZG_ROUTER_URL or 127.0.0.1:8080)")
        admin.add_argument("--admin-key", help="an admin key (prefer $ZG_ROUTER_ADMIN_KEY: ps shows flags)")
        admin.add_argument("--json", action="store_true", help="print the API's JSON answer")
        if name == "fund":
            admin.add_argument("--provider", required=True, help="the provider's address")
            admin.add_argument("--amount", required=True, help="how much 0G, such as 1.5")
            admin.add_argument(
                "--wallet",
                metavar="ADDRESS",
                help="the wallet that pays (needed when the gateway has several)",
            )
        if name == "verify":
            admin.add_argument("chat_id", metavar="CHAT-ID", help="the response's x-zg-chat-id")
        if name == "refund":
            admin.add_argument(
                "--provider",
                action="append",
                dest="providers",
                metavar="ADDRESS",
                help="a provider to refund; repeat for more (default: every funded provider)",
            )
            admin.add_argument(
                "--wallet",
                metavar="ADDRESS",
                help="refund this wallet's sub-accounts only (default: every wallet's)",
            )
        admin.set_defaults(run=_run_admin, command=name, wallet=None)
    return parser


def _version() -> str:
    """The installed distribution's version (a source tree that was never installed has none)."""
    try:
        return importlib.metadata.version("zg-router")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _logging_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error"), help="default: info"
    )
    parser.add_argument(
        "--log-format",
        choices=("auto", "json", "console", "logfmt"),
        default=os.environ.get("ZG_ROUTER_LOG_FORMAT"),
        help="json (machines), console (people), logfmt; default: $ZG_ROUTER_LOG_FORMAT, else console on "
        "a terminal and json otherwise",
    )


async def _run_serve(args: argparse.Namespace) -> int:
    from router.server.command import run_serve

    return await run_serve(args)


async def _run_admin(args: argparse.Namespace) -> int:
    from router.server.admin_command import run_admin

    return await run_admin(args)


async def _run_devnet(args: argparse.Namespace) -> int:
    from router.devnet.command import run_devnet

    return await run_devnet(args)


def _provider_count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_DEVNET_PROVIDERS:
        raise argparse.ArgumentTypeError(f"must be 1-{MAX_DEVNET_PROVIDERS}, got {value}")
    return value


def _wallet_count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_DEVNET_WALLETS:
        raise argparse.ArgumentTypeError(f"must be 1-{MAX_DEVNET_WALLETS}, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0-65535, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value
