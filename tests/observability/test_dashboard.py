"""The Grafana dashboard is well formed, and every query on it returns data from a real Prometheus that
scraped a devnet gateway under traffic; the gateway's ``/metrics`` passes ``promtool check metrics``."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.observability.conftest import Live, Prometheus, PrometheusError

DASHBOARD = Path(__file__).parents[2] / "grafana" / "dashboards" / "zg-router.json"
DATASOURCE_UID = "prometheus"
# What Grafana puts in place of its own interval variables, for a query sent straight to Prometheus.
GRAFANA_INTERVALS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}
_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_FAMILY = re.compile(r"^# TYPE (zg_router_\w+) ", re.MULTILINE)
_LABEL_VALUES = re.compile(r"^label_values\(\s*(\w+)\s*,\s*(\w+)\s*\)$")


def load_dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            yield panel, target


def substitute(expr: str, dashboard: dict[str, Any]) -> str:
    """``expr`` as Grafana would send it with every template variable at "All" (its ``allValue``)."""
    values = dict(GRAFANA_INTERVALS)
    for variable in dashboard["templating"]["list"]:
        values[variable["name"]] = variable["allValue"]

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"unknown variable ${name} in {expr}"
        return values[name]

    return _VARIABLE.sub(value, expr)


def test_dashboard_is_well_formed() -> None:
    """Unique panel ids, every panel and target on the ``prometheus`` datasource, every target has a
    query, the template variables query Prometheus, and every variable a query uses is defined."""
    dashboard = load_dashboard()
    assert dashboard["uid"] == "zg-router"
    assert dashboard["schemaVersion"] >= 39
    panels = list(all_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    charts = [p for p in panels if p["type"] != "row"]
    assert len(charts) >= 30
    for panel in charts:
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"{panel['title']} {target.get('refId')}: no expr"
            assert target["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
            substitute(target["expr"], dashboard)  # every variable is known
    cells = [(p["title"], p["gridPos"]) for p in charts]
    for i, (title, a) in enumerate(cells):
        for other, b in cells[i + 1 :]:
            apart = a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"]
            apart = apart or a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"]
            assert apart, f"panels {title!r} and {other!r} overlap"
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"]["uid"] == DATASOURCE_UID
        assert _LABEL_VALUES.match(variable["query"]["query"]), variable["name"]
        assert variable["includeAll"]
        assert variable["allValue"] == ".*"


def test_provisioning_points_at_the_dashboard() -> None:
    """Grafana provisions the datasource under the uid the dashboard uses, and loads dashboards from
    where the compose file mounts ``grafana/dashboards``."""
    provisioning = DASHBOARD.parents[1] / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert (source["uid"], source["type"], source["url"]) == (
        DATASOURCE_UID,
        "prometheus",
        "http://prometheus:9090",
    )
    dashboards = yaml.safe_load((provisioning / "dashboards" / "zg-router.yml").read_text())
    (provider,) = dashboards["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


async def test_metrics_pass_promtool(live: Live) -> None:
    """A live ``/metrics`` scrape (no API key) is valid exposition text with no lint problems."""
    body = await live.scrape()
    assert "zg_router_requests_total" in body
    process = await asyncio.create_subprocess_exec(
        "promtool",
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(body.encode()), timeout=30)
    output = (stdout + stderr).decode()
    assert process.returncode == 0, output
    assert output == ""


async def test_dashboard_shows_every_metric(live: Live) -> None:
    """Every ``zg_router_`` family the gateway exposes is on some panel (``_created`` timestamps aside),
    so a new metric does not go unseen."""
    families = set(_FAMILY.findall(await live.scrape()))
    assert len(families) >= 30
    exprs = " ".join(target["expr"] for _, target in targets(load_dashboard()))
    used = set(re.findall(r"\bzg_router_\w+", exprs))
    missing = sorted(
        f for f in families if not f.endswith("_created") and not any(u.startswith(f) for u in used)
    )
    assert not missing, f"metrics on no dashboard panel: {missing}"


async def test_every_dashboard_query_returns_data(prometheus: Prometheus) -> None:
    """Each panel query (variables at "All", ``$__rate_interval`` as 1m) returns at least one series with
    a number (not NaN), and every label its legend names; each template variable has values."""
    dashboard = load_dashboard()
    failures: list[str] = []
    for panel, target in targets(dashboard):
        expr = substitute(target["expr"], dashboard)
        where = f"[{panel['title']} / {target['refId']}] {expr}"
        try:
            result = await prometheus.samples(expr)
        except PrometheusError as exc:
            failures.append(f"{where}: {exc}")
            continue
        numbers = [s for s in result if not math.isnan(float(s["value"][1]))]
        if not result:
            failures.append(f"{where}: empty result")
        elif not numbers:
            failures.append(f"{where}: only NaN")
        else:
            for label in _LEGEND_LABEL.findall(target.get("legendFormat", "")):
                if not any(label in s["metric"] for s in numbers):
                    failures.append(f"{where}: no series has the legend's label {label!r}")
    for variable in dashboard["templating"]["list"]:
        match = _LABEL_VALUES.match(variable["query"]["query"])
        assert match is not None
        metric, label = match.groups()
        if not await prometheus.samples(f"count by ({label}) ({metric})"):
            failures.append(f"variable ${variable['name']}: {metric} has no {label} values")
    assert not failures, f"{len(failures)} dashboard queries without data:\n" + "\n".join(failures)
