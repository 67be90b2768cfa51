"""What the deploy/ checks share: where the files are, the validators, and the manifests read as YAML."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CONFIG = DEPLOY / "config.toml"
K8S_FILES = (
    "configmap.yaml",
    "secret.yaml",
    "deployment.yaml",
    "pdb.yaml",
    "service.yaml",
    "servicemonitor.yaml",
    "redis.yaml",
)
# Every object is labelled app.kubernetes.io/component: the gateway's, or the bundled Redis's.
GATEWAY, REDIS = "gateway", "redis"


def tool(name: str, *, venv: bool) -> str:
    """A validator's path: the venv's bin directory for pip-installed ones, else PATH. Missing fails."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) if venv else shutil.which(name)
    if found is None:
        where = f"in {Path(sys.executable).parent} (pip install -e '.[dev]')" if venv else "on PATH"
        pytest.fail(f"{name} is not installed {where}; the deploy checks need it")
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def all_manifests() -> list[dict[str, Any]]:
    return [doc for name in K8S_FILES for doc in yaml_docs(DEPLOY / "k8s" / name)]


def manifest(kind: str, component: str = GATEWAY) -> dict[str, Any]:
    """The one object of ``kind`` that belongs to ``component``."""
    (found,) = [
        doc
        for doc in all_manifests()
        if doc["kind"] == kind and doc["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    return found


def container(kind: str = "Deployment", component: str = GATEWAY) -> dict[str, Any]:
    containers: list[dict[str, Any]] = manifest(kind, component)["spec"]["template"]["spec"]["containers"]
    (only,) = containers
    return only


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Whether a ``matchLabels`` selector (or a Service's) picks objects with ``labels``."""
    return bool(selector) and selector.items() <= labels.items()


def compose_file() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return data
