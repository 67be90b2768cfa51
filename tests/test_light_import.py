"""Light import: the web3 stack (web3, eth_account, and ``router.chain``, which imports them) loads only
when a network is configured. Each check runs in a fresh interpreter, whose ``sys.modules`` it reads."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

CHAIN_SIDE = ("web3", "eth_account", "router.chain")
# Sharing state between replicas: redis-py loads only with a Redis URL configured.
SHARED_SIDE = ("redis", "router.shared.store")
# The gateway's metrics: a router used as a library does not need them.
GATEWAY_ONLY = ("prometheus_client",)


def loaded_after(code: str, *modules: str) -> dict[str, object]:
    """Run ``code`` in a new interpreter; which of ``modules`` it loaded, and what it printed last."""
    probe = f"\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {list(modules)!r}}}))\n"
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code) + probe],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    *output, last = done.stdout.splitlines()
    return {"loaded": [m for m, present in json.loads(last).items() if present], "output": output}


def test_the_public_names_load_no_chain_side() -> None:
    """``import router`` and ``from router import Router, RouterConfig`` (and the option classes) load
    neither web3 nor eth_account, nor the gateway's prometheus_client, nor redis-py."""
    code = """
        import router
        from router import Router, RouterConfig, StaticUpstream, TransportOptions, DispatchOptions
    """
    assert loaded_after(code, *CHAIN_SIDE, *GATEWAY_ONLY, *SHARED_SIDE)["loaded"] == []


def test_a_router_of_static_upstreams_serves_without_the_chain_side() -> None:
    """A router with only static upstreams opens, serves a chat from a real HTTP upstream on loopback
    and closes without ever importing web3 or eth_account."""
    code = """
        import asyncio
        from aiohttp import web
        from router import Router, RouterConfig, StaticUpstream

        async def chat(request):
            await request.read()
            choice = {"index": 0, "message": {"role": "assistant", "content": "static hello"}}
            return web.json_response({"object": "chat.completion", "choices": [choice]})

        async def main():
            app = web.Application()
            app.router.add_post("/v1/chat/completions", chat)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
            try:
                config = RouterConfig(static_upstreams=(StaticUpstream(name="up", url=url, models=("m",)),))
                async with Router(config) as router:
                    reply = await router.chat(model="m", messages=[{"role": "user", "content": "hi"}])
                    print(reply["choices"][0]["message"]["content"])
            finally:
                await runner.cleanup()

        asyncio.run(main())
    """
    result = loaded_after(code, *CHAIN_SIDE, *GATEWAY_ONLY, *SHARED_SIDE)
    assert result == {"loaded": [], "output": ["static hello"]}


def test_zg_router_version_prints_the_installed_version_without_the_chain_side() -> None:
    """``zg-router --version`` prints the distribution's version (exit 0) and imports no web3."""
    done = subprocess.run(
        [str(Path(sys.executable).with_name("zg-router")), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    from importlib.metadata import version

    assert (done.returncode, done.stdout, done.stderr) == (0, f"zg-router {version('zg-router')}\n", "")
    code = """
        from router.cli import main
        try:
            main(["--version"])
        except SystemExit as exit:
            assert exit.code == 0
    """
    assert loaded_after(code, *CHAIN_SIDE)["loaded"] == []
