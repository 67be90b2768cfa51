"""``zg-router devnet``: run a devnet until interrupted, printing how to reach it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import secrets
import shlex
import signal
import sys
from dataclasses import replace
from pathlib import Path

from router.client import Router
from router.config import GatewayConfig, RouterConfig
from router.devnet.network import Devnet, DevnetConfig, dev_private_key
from router.devnet.simulator.spec import ProviderSpec
from router.observability.logging import configure_logging
from router.server.app import Gateway
from router.server.command import serve

# ``devnet`` flag -> the RateLimits field it sets for every provider (None: the spec's default).
_LIMIT_FLAGS = {
    "rpm": "requests_per_minute",
    "burst": "burst",
    "max_concurrent": "max_concurrent",
    "tpm": "tokens_per_minute",
    "ipm": "images_per_minute",
}


def devnet_config(args: argparse.Namespace) -> DevnetConfig:
    """The DevnetConfig the ``devnet`` flags describe."""
    default = ProviderSpec()
    models = itertools.cycle(args.models or [default.model])
    service_types = itertools.cycle(args.service_types or [default.service_type])
    inputs = itertools.cycle(args.input_price or [default.input_price])
    outputs = itertools.cycle(args.output_price or [default.output_price])
    given = {field: getattr(args, flag) for flag, field in _LIMIT_FLAGS.items()}
    limits = replace(default.limits, **{k: v for k, v in given.items() if v is not None})
    global_concurrent = args.global_concurrent
    if global_concurrent is None:
        global_concurrent = default.max_global_concurrent
    specs = tuple(
        ProviderSpec(
            model=next(models),
            service_type=next(service_types),
            input_price=next(inputs),
            output_price=next(outputs),
            limits=limits,
            max_global_concurrent=global_concurrent,
        )
        for _ in range(args.providers)
    )
    return DevnetConfig(providers=specs, port=args.port, wallets=args.wallets)


async def run_devnet(args: argparse.Namespace) -> int:
    if args.serve:
        return await _run_devnet_gateway(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Devnet(devnet_config(args)) as devnet:
        summary = devnet.summary()
        if args.json:
            print(json.dumps(summary), flush=True)
        else:
            _print_readable(summary, devnet.ready_seconds)
        await stop.wait()
    print("devnet stopped", file=sys.stderr)
    return 0


async def _run_devnet_gateway(args: argparse.Namespace) -> int:
    api_key = args.api_key or "sk-devnet-" + secrets.token_hex(16)
    admin_key = args.admin_key or "zg-admin-devnet-" + secrets.token_hex(16)
    config = devnet_config(args)
    user_keys = [dev_private_key(index) for index in config.user_key_indexes()]
    # With --json, stdout carries the machine-readable line: the logs on stderr are JSON too.
    configure_logging(
        args.log_level,
        format=args.log_format or ("json" if args.json else "auto"),
        secrets=[*user_keys, api_key, admin_key],
    )
    # Metrics on a free port, named in the output: two devnets on one machine must not collide.
    gateway_config = GatewayConfig(
        host="127.0.0.1",
        port=args.gateway_port,
        api_keys=(api_key,),
        admin_keys=(admin_key,),
        metrics_port=0,
    )
    async with Devnet(config) as devnet:
        summary = devnet.summary()

        def announce(router: Router, gateway: Gateway) -> None:
            summary["gateway"] = {
                "url": gateway.url + "/v1",
                "metrics_url": gateway.metrics_url,
                "api_key": api_key,
                "admin_key": admin_key,
            }
            if args.json:
                print(json.dumps(summary), flush=True)
            else:
                _print_readable(summary, devnet.ready_seconds)
                # The examples chat: with the first chat model, if any provider serves one.
                chat = next(
                    (p.spec.model for p in devnet.providers if p.spec.service_type == "chatbot"), None
                )
                print(_try_it(gateway.url, api_key, admin_key, chat, gateway.metrics_url), flush=True)

        # for_devnet reads the summary's "users": the gateway spends from every funded wallet.
        await serve(RouterConfig.for_devnet(devnet), gateway_config, announce=announce)
    print("devnet stopped", file=sys.stderr)
    return 0


def _try_it(base: str, api_key: str, admin_key: str, model: str | None, metrics_url: str | None) -> str:
    """How to reach the gateway: commands that run as printed when pasted into a shell (unindented, so
    the heredoc closes and Python sees no indentation; every value quoted for its language). The chat
    examples need a chat ``model``: without one, only the admin and metrics lines."""
    url = base + "/v1"
    return f"""{_chat_examples(url, api_key, model) if model else ""}
Balances and providers (admin key {admin_key}):

ZG_ROUTER_URL={shlex.quote(base)} ZG_ROUTER_ADMIN_KEY={shlex.quote(admin_key)} {_command("zg-router")} balance

Prometheus metrics (no key, loopback only): {metrics_url}
"""


def _chat_examples(url: str, api_key: str, model: str) -> str:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello!"}]})
    messages = '[{"role": "user", "content": "Hello!"}]'
    return f"""
Try it (Ctrl-C stops the gateway and the devnet); paste into a shell:

curl -s {shlex.quote(url + "/chat/completions")} -H {shlex.quote("Authorization: Bearer " + api_key)} \\
  -H "Content-Type: application/json" -d {shlex.quote(body)}

{_command("python")} - <<'EOF'
from openai import OpenAI
client = OpenAI(base_url={json.dumps(url)}, api_key={json.dumps(api_key)})
reply = client.chat.completions.create(model={json.dumps(model)}, messages={messages})
print(reply.choices[0].message.content)
EOF
"""


def _command(name: str) -> str:
    """``name`` from this interpreter's bin directory (the venv's), relative to the working directory
    when it is under it (``.venv/bin/python``), quoted for a shell."""
    path = Path(sys.executable).with_name(name)
    with contextlib.suppress(ValueError):
        path = path.relative_to(Path.cwd())
    return shlex.quote(str(path))


def _print_readable(summary: dict[str, object], ready_seconds: float) -> None:
    user, users = summary["user"], summary["users"]
    assert isinstance(user, dict)
    assert isinstance(users, list)
    lines = [
        f"0G devnet ready in {ready_seconds:.2f} s (Ctrl-C to stop)",
        f"  RPC            {summary['rpc_url']}  (chain id {summary['chain_id']})",
        f"  LedgerManager  {summary['ledger']}",
        f"  Inference      {summary['inference']}",
        f"  user           {user['address']}",
        f"  user key       {user['private_key']}  (anvil dev key: for this devnet only)",
    ]
    if len(users) > 1:
        lines.append("  more users (address, key):")
        lines += [f"    {u['address']}  {u['private_key']}" for u in users[1:]]
    lines.append("  providers:")
    providers = summary["providers"]
    assert isinstance(providers, list)
    lines += [
        f"    {p['address']}  {p['service_type']:<14} {p['model']:<20} {p['url']}  (admin {p['admin_url']})"
        for p in providers
    ]
    print("\n".join(lines), flush=True)
