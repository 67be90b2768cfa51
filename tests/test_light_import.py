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
# py_ecc's BLS code, which eth_keyfile imports for version-4 keystores (router.lazy_bls defers it).
BLS = ("py_ecc.bls", "py_ecc.bls12_381", "py_ecc.optimized_bls12_381")


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


def test_the_chain_side_loads_without_py_eccs_bls_code() -> None:
    """The router's chain client and devnet (web3 and eth_account included) import none of py_ecc's BLS
    modules, which a bare ``import eth_account`` does import."""
    assert loaded_after("import router.chain.client, router.devnet", *BLS)["loaded"] == []
    assert loaded_after("import eth_account", *BLS)["loaded"] == list(BLS)


def test_the_deferred_bls_code_is_the_real_one_at_first_use() -> None:
    """After the chain side loaded, eth_keyfile still writes a version-4 keystore (whose public key is
    py_ecc's BLS one), and ``py_ecc.bls`` and ``py_ecc.bls12_381`` import as the real modules."""
    code = """
        import router.chain.client
        import eth_keyfile
        from router.lazy_bls import CURVE_ORDER

        keystore = eth_keyfile.create_keyfile_json(bytes(31) + b"\\x07", b"pw", version=4, iterations=2)
        from py_ecc.bls import G2ProofOfPossession
        import py_ecc.bls12_381

        print(keystore["pubkey"] == G2ProofOfPossession.SkToPk(7).hex())
        print(py_ecc.bls12_381.curve_order == CURVE_ORDER, py_ecc.bls12_381.__file__.endswith("__init__.py"))
    """
    assert loaded_after(code)["output"] == ["True", "True True"]
