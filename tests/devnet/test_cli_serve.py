"""``zg-router devnet --serve`` and ``zg-router serve`` as a user runs them: processes and the openai SDK."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import aiohttp
import openai

from router.devnet import USER_KEY_INDEX, Devnet, dev_private_key
from router.devnet.node_tools import NodeModules
from tests.devnet.test_cli import read_until, stop, zg_router
from tests.support import assert_port_refuses

API_KEY = "sk-cli-test-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, asyncio.timeout(30), http.get(url) as response:
        return response.status, await response.text()


async def _assert_metrics_apart(metrics_url: str, api_url: str) -> None:
    """``metrics_url`` is on loopback, on its own port, and serves Prometheus text; the API port has no
    /metrics."""
    assert metrics_url.startswith("http://127.0.0.1:"), metrics_url
    assert metrics_url.endswith("/metrics"), metrics_url
    assert metrics_url.rsplit(":", 1)[1] != api_url.rsplit(":", 1)[1]
    status, text = await _get(metrics_url)
    assert status == 200
    assert "zg_router_build_info" in text
    assert (await _get(api_url.removesuffix("/v1") + "/metrics"))[0] == 404


async def _chat(base_url: str, api_key: str, model: str) -> str:
    async with openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0) as client:
        reply = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )
    content = reply.choices[0].message.content
    assert content
    return content


async def test_devnet_serve_json_line_gives_a_working_gateway(node_modules: NodeModules) -> None:
    """The JSON line carries the gateway's URL and key, which the openai SDK uses as is, and the URL of
    its metrics (on loopback, apart from the API); Ctrl-C stops all."""
    async with zg_router(node_modules, "devnet", "--serve", "--json", "--providers", "2") as process:
        assert process.stdout is not None
        summary = json.loads(await read_until(process.stdout, b'"gateway"'))
        gateway = summary["gateway"]
        assert gateway["url"].startswith("http://127.0.0.1:")
        assert gateway["api_key"].startswith("sk-devnet-")
        assert await _chat(gateway["url"], gateway["api_key"], summary["providers"][0]["model"])
        await _assert_metrics_apart(gateway["metrics_url"], gateway["url"])
        await stop(process, group=True)
        assert process.returncode == 0
    await assert_port_refuses(gateway["url"])


async def _bash(script: str) -> str:
    """Run ``script`` as a user's pasted shell input (stopping at the first failing command); its stdout."""
    shell = await asyncio.create_subprocess_exec(
        "bash", "-e", "-c", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        out, err = await shell.communicate()
    assert shell.returncode == 0, f"{script}\n---\n{err.decode(errors='replace')}"
    assert not err, err.decode(errors="replace")
    return out.decode()


def _between(text: str, start: str, end: str) -> str:
    return text[text.index(start) + len(start) : text.index(end)]


async def test_devnet_serve_prints_commands_that_run_when_pasted(node_modules: NodeModules) -> None:
    """The readable output (what ``make demo`` shows) is shell input that runs as printed: the curl
    line and the openai snippet (a heredoc that closes, Python without indentation) each print the
    model's reply, and the balance command shows the user's ledger, all at the gateway's port and key."""
    port = _free_port()
    args = ("devnet", "--serve", "--providers", "1", "--gateway-port", str(port), "--api-key", API_KEY)
    async with zg_router(node_modules, *args) as process:
        assert process.stdout is not None
        text = (await read_until(process.stdout, b"Prometheus metrics")).decode()
        url = f"http://127.0.0.1:{port}/v1"
        tried = _between(text, "paste into a shell:\n", "\nBalances and providers")
        curl, snippet = tried.strip().split("\n\n")
        assert curl.startswith(f"curl -s {url}/chat/completions -H 'Authorization: Bearer {API_KEY}'")
        assert f'OpenAI(base_url="{url}", api_key="{API_KEY}")' in snippet
        assert json.loads(await _bash(curl))["choices"][0]["message"]["content"]
        assert (await _bash(snippet)).strip()
        balance = (
            _between(text, "\nBalances and providers", "\nPrometheus metrics").split(":\n", 1)[1].strip()
        )
        assert balance.startswith(f"ZG_ROUTER_URL=http://127.0.0.1:{port} ZG_ROUTER_ADMIN_KEY=")
        shown = await _bash(balance)
        assert shown.startswith("wallet  0x"), shown
        assert "1 provider(s) funded" in shown
        await stop(process, group=True)


async def test_serve_reads_env_and_toml_and_never_logs_the_key(devnet: Devnet, tmp_path: Path) -> None:
    """``zg-router serve`` on the devnet: config from a TOML file and the environment, answers the SDK,
    names its metrics URL (loopback, ``ZG_ROUTER_METRICS_PORT``), logs a line per request, and its logs
    hold neither the wallet key nor the API key."""
    port, metrics_port = _free_port(), _free_port()
    key_file = tmp_path / "wallet.key"
    key_file.write_text(dev_private_key(USER_KEY_INDEX) + "\n")
    config = tmp_path / "zg-router.toml"
    config.write_text(
        f'network = "devnet"\nrpc_urls = ["{devnet.rpc_url}"]\n\n'
        "[transport]\nallow_private_targets = true\n\n[gateway]\nshutdown_timeout = 1.0\n"
    )
    env = {
        **os.environ,
        "ZG_ROUTER_PRIVATE_KEY_FILE": str(key_file),
        "ZG_ROUTER_API_KEYS": API_KEY,
        "ZG_ROUTER_PORT": str(port),
        "ZG_ROUTER_METRICS_PORT": str(metrics_port),
    }
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("zg-router")),
        "serve",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert process.stderr is not None
        listening = json.loads((await read_until(process.stderr, b"gateway listening")).splitlines()[-1])
        url = f"http://127.0.0.1:{port}/v1"
        assert listening["metrics_url"] == f"http://127.0.0.1:{metrics_port}/metrics"
        assert await _chat(url, API_KEY, devnet.providers[0].spec.model)
        await _assert_metrics_apart(listening["metrics_url"], url)
        logs = await stop(process, group=False)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    # Not a terminal: JSON lines by default.
    lines = [json.loads(line) for line in logs.splitlines() if line.strip()]
    requests = [line for line in lines if line["event"] == "request"]
    assert len(requests) == 1
    assert requests[0]["status"] == 200
    assert requests[0]["provider"] in {p.address for p in devnet.providers}
    secret = dev_private_key(USER_KEY_INDEX)
    for forbidden in (secret, secret.removeprefix("0x"), API_KEY, "app-sk-"):
        assert forbidden.encode() not in logs
