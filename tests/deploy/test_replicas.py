"""deploy/ for several replicas on one wallet: three gateway pods rolled one at a time under a disruption
budget, the Redis they share (its manifests and the compose service, started here for real with the
arguments they give it), the URL that joins the two, the ``[shared]`` keys the example config documents,
and ``make tools`` installing redis-server. Static apart from the Redis processes and ``make -n``-like
runs of ``make tools``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import socket
import subprocess
import threading
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from router.config import load_config
from router.shared.options import SharedOptions
from tests.deploy.manifests import (
    CONFIG,
    GATEWAY,
    REDIS,
    ROOT,
    all_manifests,
    compose_file,
    container,
    manifest,
    selects,
    tool,
)

ENV = {"ZG_ROUTER_PRIVATE_KEY": "0x" + "11" * 32, "ZG_ROUTER_API_KEYS": "x" * 20}
REDIS_START_TIMEOUT = 10.0  # seconds; redis-server is ready in milliseconds


def pod_labels(kind: str, component: str) -> dict[str, str]:
    labels: dict[str, str] = manifest(kind, component)["spec"]["template"]["metadata"]["labels"]
    return labels


def secret_data() -> dict[str, str]:
    data: dict[str, str] = manifest("Secret")["stringData"]
    return data


def env_of(box: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in box.get("env", [])}


def resolved_env(box: Mapping[str, Any]) -> dict[str, str]:
    """A container's environment as the kubelet gives it: values from the Secret filled in."""
    env: dict[str, str] = {}
    for name, entry in env_of(box).items():
        if "value" in entry:
            env[name] = entry["value"]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            assert ref["name"] == manifest("Secret")["metadata"]["name"]
            if ref["key"] in secret_data():
                env[name] = secret_data()[ref["key"]]
    return env


def kubelet_expand(argument: str, env: Mapping[str, str]) -> str:
    """``$(NAME)`` in a container's args, replaced as Kubernetes does it."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env[m.group(1)], argument)


def redis_url() -> SplitResult:
    return urlsplit(secret_data()["redis-url"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def redis_server(command: list[str]) -> Iterator[int]:
    """``command`` (a manifest's redis-server and its arguments) run on a free loopback port, until it
    says it is ready; killed on the way out. A server that never says so is killed after a bound."""
    port = free_port()
    argv = [tool("redis-server", venv=False), *command[1:], "--port", str(port), "--bind", "127.0.0.1"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(REDIS_START_TIMEOUT, process.kill)
    watchdog.start()
    try:
        assert process.stdout is not None
        output = []
        for line in process.stdout:
            output.append(line)
            if "Ready to accept connections" in line:
                break
        else:
            pytest.fail("redis-server did not start:\n" + "".join(output))
        watchdog.cancel()
        yield port
    finally:
        watchdog.cancel()
        process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def redis_config(client: redis.Redis, *names: str) -> dict[str, str]:
    return {name: str(client.config_get(name)[name]) for name in names}


# -- the gateway's Deployment and its disruption budget --------------------------------------------------


def test_three_replicas_roll_one_at_a_time() -> None:
    spec = manifest("Deployment")["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    strategies = [
        doc["spec"].get("strategy", doc["spec"].get("updateStrategy", {})).get("type")
        for doc in all_manifests()
        if doc["kind"] in {"Deployment", "StatefulSet"}
    ]
    assert "Recreate" not in strategies, "shared state makes a rolling update safe; Recreate is an outage"
    # The image's shutdown drain and the preStop pause both fit in the grace period.
    pod = spec["template"]["spec"]
    pause = int(container()["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain = load_config(CONFIG, ENV)[1].shutdown_timeout
    assert pause + drain < pod["terminationGracePeriodSeconds"]


def test_the_disruption_budget_keeps_two_gateway_pods() -> None:
    budget = manifest("PodDisruptionBudget")["spec"]
    assert budget["minAvailable"] == 2
    assert budget["minAvailable"] < manifest("Deployment")["spec"]["replicas"], "a drain could never proceed"
    selector = budget["selector"]["matchLabels"]
    assert selects(selector, pod_labels("Deployment", GATEWAY))
    assert not selects(selector, pod_labels("StatefulSet", REDIS)), "the budget would count Redis's pod"


def test_liveness_never_waits_on_redis_or_the_chain() -> None:
    """/healthz answers from the process alone; a check that reached Redis would restart every replica
    at once when Redis goes."""
    for probe in ("startupProbe", "livenessProbe"):
        handlers = container()[probe].keys() & {"httpGet", "exec", "tcpSocket", "grpc"}
        assert handlers == {"httpGet"}
        assert container()[probe]["httpGet"]["path"] == "/healthz"
    assert container()["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_every_replica_signs_with_the_one_wallet_secret() -> None:
    pod = manifest("Deployment")["spec"]["template"]["spec"]
    secrets = [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v]
    assert secrets == [manifest("Secret")["metadata"]["name"]]


# -- the Redis the replicas share -----------------------------------------------------------------------


def test_the_replicas_take_the_redis_url_from_the_secret() -> None:
    entry = env_of(container())["ZG_ROUTER_REDIS_URL"]
    assert entry["valueFrom"]["secretKeyRef"] == {
        "name": manifest("Secret")["metadata"]["name"],
        "key": "redis-url",
    }, "required (not optional), from the gateway's Secret"
    assert "redis_url" not in tomllib.loads(CONFIG.read_text()).get("shared", {}), "the URL holds a password"
    alone, _ = load_config(CONFIG, ENV)
    assert not alone.shared.enabled
    url = resolved_env(container())["ZG_ROUTER_REDIS_URL"]
    shared, _ = load_config(CONFIG, {**ENV, "ZG_ROUTER_REDIS_URL": url})
    assert shared.shared.enabled
    assert shared.shared.redis_url == secret_data()["redis-url"]
    assert "REPLACE-ME" not in repr(shared.shared), "the URL's password must not show"


def test_the_secrets_url_names_the_bundled_redis() -> None:
    service, stateful = manifest("Service", REDIS), manifest("StatefulSet", REDIS)
    url = redis_url()
    assert url.scheme == "redis"
    assert url.hostname == service["metadata"]["name"]
    (port,) = service["spec"]["ports"]
    assert url.port == port["port"]
    assert url.password == secret_data()["redis-password"], "the URL's password is not the one Redis requires"
    assert service["spec"]["clusterIP"] == "None", "headless: the name is the Redis pod's own address"
    assert stateful["spec"]["serviceName"] == service["metadata"]["name"]
    assert selects(service["spec"]["selector"], pod_labels("StatefulSet", REDIS))
    assert not selects(service["spec"]["selector"], pod_labels("Deployment", GATEWAY))
    assert not selects(manifest("Service")["spec"]["selector"], pod_labels("StatefulSet", REDIS))
    (redis_port,) = container("StatefulSet", REDIS)["ports"]
    assert (redis_port["name"], redis_port["containerPort"]) == (port["targetPort"], 6379)


def test_the_bundled_redis_is_one_bounded_pod_with_nothing_on_disk() -> None:
    spec = manifest("StatefulSet", REDIS)["spec"]
    assert spec["replicas"] == 1, "two Redis pods would split the shared state"
    assert "volumeClaimTemplates" not in spec, "the chain is the truth: Redis persists nothing"
    box = container("StatefulSet", REDIS)
    assert box["image"].startswith("redis:7")
    assert {"cpu", "memory"} <= box["resources"]["requests"].keys()
    assert "memory" in box["resources"]["limits"]
    assert box["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    for entry in env_of(box).values():
        assert entry["valueFrom"]["secretKeyRef"]["key"] in secret_data()


def test_the_bundled_redis_runs_as_its_manifest_says() -> None:
    """The StatefulSet's own command, password filled in as the kubelet does: a Redis that requires the
    Secret's password, writes nothing to disk and refuses writes rather than evict, and a readiness probe
    that passes with the password only."""
    box = container("StatefulSet", REDIS)
    env = resolved_env(box)
    command = [kubelet_expand(part, env) for part in [*box["command"], *box["args"]]]
    with redis_server(command) as port:
        local = redis_url()._replace(netloc=f":{redis_url().password}@127.0.0.1:{port}").geturl()
        with redis.Redis.from_url(local) as client:
            assert client.ping() is True
            config = redis_config(client, "save", "appendonly", "maxmemory-policy", "maxmemory")
            assert config == {
                "save": "",
                "appendonly": "no",
                "maxmemory-policy": "noeviction",
                "maxmemory": str(96 * 1024 * 1024),
            }
        # No retries: redis-py's default retries the refusal for seconds.
        anonymous = redis.Redis(port=port, retry=Retry(NoBackoff(), retries=0))
        with anonymous, pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        *shell, script = box["readinessProbe"]["exec"]["command"]
        probe = [*shell, script.replace("redis-cli", f"redis-cli -p {port}")]
        base = {"PATH": os.environ["PATH"]}
        for auth, passes in ((env["REDISCLI_AUTH"], True), ("wrong-password", False), (None, False)):
            probe_env = base if auth is None else {**base, "REDISCLI_AUTH": auth}
            result = subprocess.run(probe, env=probe_env, capture_output=True, timeout=10, check=False)
            assert (result.returncode == 0) is passes, (auth, result)


# -- docker compose --------------------------------------------------------------------------------------


def test_compose_starts_redis_before_the_router() -> None:
    services = compose_file()["services"]
    router, store = services["router"], services["redis"]
    assert store["image"] == "redis:7-alpine"
    assert router["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert store["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "ports" not in store, "Redis has no password in compose: publish it to no one"
    url = urlsplit(router["environment"]["ZG_ROUTER_REDIS_URL"])
    assert (url.scheme, url.hostname, url.path) == ("redis", "redis", "/0")
    assert str(url.port) in store["expose"]
    options, _ = load_config(CONFIG, {**ENV, "ZG_ROUTER_REDIS_URL": url.geturl()})
    assert options.shared.enabled


def test_compose_redis_runs_as_its_command_says() -> None:
    store = compose_file()["services"]["redis"]
    with redis_server(store["command"]) as port:
        with redis.Redis(port=port) as client:
            assert redis_config(client, "save", "appendonly", "maxmemory-policy") == {
                "save": "",
                "appendonly": "no",
                "maxmemory-policy": "noeviction",
            }
        _, cli, *command = store["healthcheck"]["test"]
        check = [cli, "-p", str(port), *command]
        result = subprocess.run(check, capture_output=True, text=True, timeout=10, check=False)
        assert (result.returncode, result.stdout.strip()) == (0, "PONG")


# -- the example config's [shared] section ---------------------------------------------------------------


def test_the_example_config_documents_every_shared_option_with_its_default() -> None:
    section = CONFIG.read_text().split("\n[shared]", 1)[1]
    assert "\n[" not in section, "[shared] should be the config's last table"
    documented = dict(re.findall(r"^# (\w+) = (\S+)\s+#", section, flags=re.MULTILINE))
    values = tomllib.loads("\n".join(f"{name} = {value}" for name, value in documented.items()))
    assert values.keys() == {f.name for f in dataclasses.fields(SharedOptions)}
    defaults = SharedOptions()
    for name, value in values.items():
        if name != "redis_url":
            assert value == getattr(defaults, name), f"[shared] {name}: the comment says {value}"
    compose_url = compose_file()["services"]["router"]["environment"]["ZG_ROUTER_REDIS_URL"]
    assert values["redis_url"] == compose_url
    SharedOptions(**values)  # the documented values are valid together


# -- make tools -------------------------------------------------------------------------------------------

TOOL_COMMANDS = ("prometheus", "promtool", "redis-server")


@pytest.mark.parametrize("missing", [*TOOL_COMMANDS, None])
def test_make_tools_installs_the_packages_when_any_command_is_missing(
    missing: str | None, tmp_path: Path
) -> None:
    for name in TOOL_COMMANDS:
        if name != missing:
            (tmp_path / name).symlink_to(tool(name, venv=False))
    result = subprocess.run(
        [tool("make", venv=False), "--no-print-directory", "tools", "SUDO=echo"],
        cwd=ROOT,
        env={"PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    if missing is None:
        assert result.stdout == ""
    else:
        install = result.stdout.splitlines()[-1].split()
        assert install[-2:] == ["prometheus", "redis-server"]
        assert "install" in install
