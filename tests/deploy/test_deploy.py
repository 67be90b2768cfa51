"""deploy/: the Dockerfile lints clean and says what platforms rely on, the Kubernetes manifests, compose file
and Prometheus config validate against their schemas and agree with each other, and the example config
loads with the values the image and the manifests assume. No Docker engine needed: all of it is static.
"""

from __future__ import annotations

import fnmatch
import json
import shlex
from pathlib import Path
from typing import Any, NamedTuple

import kubernetes_validate
import pytest
import yaml

from router.config import load_config
from router.errors import ConfigError
from tests.deploy.manifests import (
    CONFIG,
    DEPLOY,
    K8S_FILES,
    ROOT,
    compose_file,
    container,
    manifest,
    run,
    tool,
    yaml_docs,
)

DOCKERFILE = DEPLOY / "Dockerfile"
KUBERNETES_VERSION = "1.30"
API_PORT, METRICS_PORT = 8080, 9464
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - the container listens on its own network namespace
ENV = {"ZG_ROUTER_PRIVATE_KEY": "0x" + "11" * 32, "ZG_ROUTER_API_KEYS": "x" * 20}
BROKEN = {  # a file each validator must refuse, so a clean answer means something
    "Dockerfile": "FROM python:3.11\nRUN pip install requests\n",
    "compose": "services:\n  router:\n    image: x\n    no_such_key: 1\n",
    "prometheus": "global:\n  scrape_interval: soon\n",
}


class Instruction(NamedTuple):
    keyword: str
    value: str


def dockerfile_stages(text: str) -> list[list[Instruction]]:
    """Instructions per stage, continuation lines joined, comments dropped, ``${ARG}`` in FROM resolved."""
    instructions: list[Instruction] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, value = (pending + stripped).partition(" ")
        pending = ""
        instructions.append(Instruction(keyword.upper(), value.strip()))
    global_args: dict[str, str] = {}
    stages: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "ARG" and not stages:
            name, _, default = ins.value.partition("=")
            global_args[name] = default
        elif ins.keyword == "FROM":
            image = ins.value
            for name, default in global_args.items():
                image = image.replace("${" + name + "}", default)
            stages.append([Instruction("FROM", image)])
        elif stages:
            stages[-1].append(ins)
    return stages


def values(stage: list[Instruction], keyword: str) -> list[str]:
    return [ins.value for ins in stage if ins.keyword == keyword]


def image_env(stage: list[Instruction]) -> dict[str, str]:
    pairs = (token.partition("=") for value in values(stage, "ENV") for token in shlex.split(value))
    return {name: value for name, _, value in pairs}


@pytest.fixture(scope="module")
def final_stage() -> list[Instruction]:
    stages = dockerfile_stages(DOCKERFILE.read_text())
    assert len(stages) >= 2, "the Dockerfile should build the wheel in a stage of its own"
    return stages[-1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return compose_file()


# -- the validators themselves ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_validators_refuse_a_broken_file(kind: str, tmp_path: Path) -> None:
    path = tmp_path / kind
    path.write_text(BROKEN[kind])
    result = {
        "Dockerfile": lambda: run(tool("hadolint", venv=True), str(path)),
        "compose": lambda: run(
            tool("check-jsonschema", venv=True), "--builtin-schema", "vendor.compose-spec", str(path)
        ),
        "prometheus": lambda: run(tool("promtool", venv=False), "check", "config", str(path)),
    }[kind]()
    assert result.returncode != 0, result.stdout + result.stderr


# -- Dockerfile ---------------------------------------------------------------------------------------


def test_hadolint_is_clean() -> None:
    result = run(tool("hadolint", venv=True), str(DOCKERFILE))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_image_runs_the_gateway_as_a_numeric_non_root_user(final_stage: list[Instruction]) -> None:
    assert final_stage[0].value.startswith("python:3.11-slim-"), "pin the slim base's Debian release"
    *_, user = values(final_stage, "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), f"USER {user}: Kubernetes' runAsNonRoot needs a numeric UID"
    assert int(uid) != 0
    assert gid.isdigit(), f"USER {user}: give the group numerically too"
    assert int(gid) != 0
    assert [json.loads(v) for v in values(final_stage, "ENTRYPOINT")] == [["zg-router"]]
    assert [json.loads(v) for v in values(final_stage, "CMD")] == [["serve"]]
    ports = {p.split("/")[0] for v in values(final_stage, "EXPOSE") for p in v.split()}
    assert ports == {str(API_PORT), str(METRICS_PORT)}
    (healthcheck,) = values(final_stage, "HEALTHCHECK")
    assert "urllib" in healthcheck, "slim has no curl"
    assert f"http://127.0.0.1:{API_PORT}/healthz" in healthcheck
    env = image_env(final_stage)
    assert env["ZG_ROUTER_HOST"] == ALL_INTERFACES
    # A container's loopback is its own: the scraper reaches /metrics over the container network.
    assert env["ZG_ROUTER_METRICS_HOST"] == ALL_INTERFACES
    assert env["ZG_ROUTER_CONFIG"] == "/etc/zg-router/config.toml"
    assert env["ZG_ROUTER_LOG_FORMAT"] == "json"
    assert env["PYTHONUNBUFFERED"] == "1"


def test_the_build_context_keeps_what_the_image_copies_and_drops_secrets() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(fnmatch.fnmatch(p, pat.removeprefix("**/")) for p in prefixes for pat in patterns)

    stages = dockerfile_stages(DOCKERFILE.read_text())
    copied = [
        source
        for stage in stages
        for value in values(stage, "COPY")
        if not value.startswith("--from")
        for source in value.split()[:-1]
    ]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
        assert not ignored(source), f"COPY {source}: .dockerignore drops it from the build context"
    unwanted_paths = (
        ".git",
        ".venv",
        "node_modules",
        "deploy/secrets/wallet.key",
        "deploy/secrets/router.env",
    )
    for unwanted in unwanted_paths:
        assert ignored(unwanted), f"{unwanted} would be sent to the Docker daemon"


# -- Kubernetes -----------------------------------------------------------------------------------------


def test_the_manifests_are_the_ones_tested() -> None:
    assert sorted(p.name for p in (DEPLOY / "k8s").iterdir()) == sorted(K8S_FILES)


@pytest.mark.parametrize("name", [n for n in K8S_FILES if n != "servicemonitor.yaml"])
def test_manifest_validates_strictly(name: str) -> None:
    docs = yaml_docs(DEPLOY / "k8s" / name)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        # Strict means strict: the same object with a misspelt field is refused.
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate({**doc, "metdata": {}}, KUBERNETES_VERSION, strict=True)


def test_the_servicemonitor_scrapes_the_services_metrics_port() -> None:
    monitor, service = manifest("ServiceMonitor"), manifest("Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) <= {"apiVersion", "kind", "metadata", "spec"}
    labels: dict[str, str] = service["metadata"]["labels"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector
    assert selector.items() <= labels.items(), "the selector does not match the Service's labels"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == ("metrics", "/metrics", "15s")


def test_deployment_and_service_agree_on_ports_and_probes(final_stage: list[Instruction]) -> None:
    deployment, service = manifest("Deployment"), manifest("Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container_ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert container_ports == {"http": API_PORT, "metrics": METRICS_PORT}
    service_ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert service_ports == {name: (port, name) for name, port in container_ports.items()}
    exposed = {int(p) for v in values(final_stage, "EXPOSE") for p in v.split()}
    assert set(container_ports.values()) == exposed
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert container()[probe]["httpGet"] == {"path": path, "port": "http"}


def test_deployment_is_locked_down(final_stage: list[Instruction]) -> None:
    spec = manifest("Deployment")["spec"]
    pod = spec["template"]["spec"]["securityContext"]
    image_uid = int(values(final_stage, "USER")[-1].partition(":")[0])
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == image_uid != 0
    box = container()["securityContext"]
    assert box["readOnlyRootFilesystem"] is True
    assert box["allowPrivilegeEscalation"] is False
    assert box["capabilities"]["drop"] == ["ALL"]
    limits = container()["resources"]["limits"]
    assert limits["memory"] == "256Mi"


def test_deployment_mounts_the_config_and_the_secret_it_names(final_stage: list[Instruction]) -> None:
    configmap, secret = manifest("ConfigMap"), manifest("Secret")
    assert configmap["data"]["config.toml"] == CONFIG.read_text(), "k8s/configmap.yaml drifted from config"
    pod = manifest("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container()["volumeMounts"]}
    env = {e["name"]: e for e in container()["env"]}
    config_path = Path(env["ZG_ROUTER_CONFIG"]["value"])
    assert str(config_path) == image_env(final_stage)["ZG_ROUTER_CONFIG"]
    assert mounts[str(config_path.parent)]["configMap"]["name"] == configmap["metadata"]["name"]
    assert config_path.name in configmap["data"]
    key_path = Path(env["ZG_ROUTER_PRIVATE_KEY_FILE"]["value"])
    wallet = mounts[str(key_path.parent)]["secret"]
    assert wallet["secretName"] == secret["metadata"]["name"]
    (item,) = [i for i in wallet["items"] if i["path"] == key_path.name]
    assert item["key"] in secret["stringData"]
    refs = [e["valueFrom"]["secretKeyRef"] for e in env.values() if "valueFrom" in e]
    assert "secretKeyRef" in env["ZG_ROUTER_API_KEYS"]["valueFrom"]
    for ref in refs:
        assert ref["name"] == secret["metadata"]["name"]
        assert ref.get("optional") or ref["key"] in secret["stringData"], f"Secret has no {ref['key']}"


def test_placeholder_secrets_fail_closed() -> None:
    """An unedited example Secret or env file must stop the router, not serve under a published key."""
    api_keys = manifest("Secret")["stringData"]["api-keys"]
    env_file = (DEPLOY / "secrets" / "router.env.example").read_text()
    (example,) = [line.split("=", 1)[1] for line in env_file.splitlines() if line.startswith("ZG_ROUTER_")]
    for placeholder in (api_keys, example):
        with pytest.raises(ConfigError, match="at least 16 characters"):
            load_config(CONFIG, {**ENV, "ZG_ROUTER_API_KEYS": placeholder})


# -- docker compose and Prometheus ------------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec() -> None:
    result = run(
        tool("check-jsonschema", venv=True),
        "--builtin-schema",
        "vendor.compose-spec",
        str(DEPLOY / "docker-compose.yml"),
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_file_compose_mounts_exists(compose: dict[str, Any]) -> None:
    sources = [
        volume.split(":")[0]
        for service in compose["services"].values()
        for volume in service.get("volumes", [])
        if volume.startswith((".", "/"))
    ]
    assert sources
    missing = [s for s in sources if not (DEPLOY / s).exists()]
    assert not missing, f"docker-compose.yml mounts what is not in the repository: {missing}"
    build = compose["services"]["router"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


def test_compose_secrets_stay_out_of_git_and_have_examples(compose: dict[str, Any]) -> None:
    router = compose["services"]["router"]
    files = [s["file"] for s in compose["secrets"].values()] + list(router["env_file"])
    for name in files:
        path = (DEPLOY / name).resolve()
        assert path.parent == DEPLOY / "secrets", f"{name}: keep secrets in deploy/secrets/"
        assert path.with_name(path.name + ".example").is_file(), f"{name}: ship an example beside it"
    ignore = (DEPLOY / "secrets" / ".gitignore").read_text().splitlines()
    assert [line for line in ignore if not line.startswith("#")] == ["*", "!.gitignore", "!*.example"]
    (secret,) = router["secrets"]
    assert router["environment"]["ZG_ROUTER_PRIVATE_KEY_FILE"] == f"/run/secrets/{secret}"


def test_compose_wires_the_router_to_prometheus_and_grafana(
    compose: dict[str, Any], final_stage: list[Instruction]
) -> None:
    services = compose["services"]
    targets = {v.split(":")[0]: v.split(":")[1] for s in services.values() for v in s.get("volumes", [])}
    assert targets["./config.toml"] == image_env(final_stage)["ZG_ROUTER_CONFIG"]
    assert f"--config.file={targets['./prometheus.yml']}" in services["prometheus"]["command"]
    assert targets["../grafana/provisioning"] == "/etc/grafana/provisioning"
    assert targets["../grafana/dashboards"] == "/var/lib/grafana/dashboards"
    assert "/healthz" in " ".join(services["router"]["healthcheck"]["test"])
    for name in ("prometheus", "grafana"):
        repository, _, tag = services[name]["image"].partition(":")
        assert tag not in {"", "latest"}, f"pin {repository}'s tag"
    prometheus: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert prometheus["global"]["scrape_interval"] == "15s"
    (job,) = prometheus["scrape_configs"]
    assert job["job_name"] == "zg-router"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"] == [{"targets": [f"router:{METRICS_PORT}"]}]


def test_promtool_accepts_the_prometheus_config() -> None:
    result = run(tool("promtool", venv=False), "check", "config", str(DEPLOY / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


# -- the example config --------------------------------------------------------------------------------


def test_example_config_loads_with_the_addresses_the_deployment_uses() -> None:
    router, gateway = load_config(CONFIG, ENV)
    assert router.network is not None
    assert router.network.name == "testnet"
    assert (gateway.host, gateway.port, gateway.metrics_port) == (ALL_INTERFACES, API_PORT, METRICS_PORT)
    assert gateway.metrics_address == (ALL_INTERFACES, METRICS_PORT)
    assert {p["name"]: p["containerPort"] for p in container()["ports"]} == {
        "http": gateway.port,
        "metrics": gateway.metrics_port,
    }


def test_example_config_loads_the_way_the_container_does(
    tmp_path: Path, final_stage: list[Instruction]
) -> None:
    """The image's environment plus a key file, as the Secret and the compose secret provide it."""
    key_file = tmp_path / "wallet.key"
    key_file.write_text(ENV["ZG_ROUTER_PRIVATE_KEY"] + "\n")
    env = {
        **image_env(final_stage),
        "ZG_ROUTER_PRIVATE_KEY_FILE": str(key_file),
        "ZG_ROUTER_API_KEYS": ENV["ZG_ROUTER_API_KEYS"],
    }
    router, gateway = load_config(CONFIG, env)
    assert router.private_key == ENV["ZG_ROUTER_PRIVATE_KEY"]
    assert gateway.api_keys == (ENV["ZG_ROUTER_API_KEYS"],)
    assert gateway.host == ALL_INTERFACES
