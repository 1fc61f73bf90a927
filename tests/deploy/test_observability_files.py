"""The shipped observability files: alert rules pass `promtool check rules` and their unit tests
(`promtool test rules`), every alert has a test, dashboards are well-formed Grafana JSON, and
the Helm chart ships the one copy there is (deploy/observability links to the chart's files/).

Whether every query names a metric the platform exports is checked against the running
platform: tests/test_observability_end_to_end.py."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "deploy" / "observability"
CHART = ROOT / "deploy" / "helm" / "c3"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)"
)
DASHBOARDS = ("c3-fleet", "c3-tenant", "c3-proxy", "c3-provisioning", "c3-billing-pipeline")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=OBSERVABILITY, capture_output=True, text=True, timeout=120
    )


@needs_promtool
def test_alert_rules_are_valid() -> None:
    result = promtool("check", "rules", "alerts.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_alert_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", "alerts.test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load((OBSERVABILITY / "alerts.yaml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


def test_every_alert_is_unit_tested_and_says_what_to_do() -> None:
    tests = yaml.safe_load((OBSERVABILITY / "alerts.test.yaml").read_text())
    firing = {
        case["alertname"]
        for test in tests["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    names = {rule["alert"] for rule in alert_rules()}
    assert {
        "C3TenantHomeserverDown",
        "C3ProvisioningFailing",
        "C3UsageConsumerLagging",
        "C3ProxyHigh5xxRatio",
        "C3ReconcileStalled",
    } <= names
    assert names <= firing, f"alerts no unit test sees firing: {names - firing}"
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule


def dashboard(name: str) -> dict[str, Any]:
    return json.loads((OBSERVABILITY / "dashboards" / f"{name}.json").read_text())


def test_dashboards_are_grafana_dashboards() -> None:
    found = sorted(p.stem for p in (OBSERVABILITY / "dashboards").glob("*.json"))
    assert found == sorted(DASHBOARDS)
    uids = set()
    for name in DASHBOARDS:
        board = dashboard(name)
        assert board["uid"] == name and len(board["uid"]) <= 40
        uids.add(board["uid"])
        assert board["title"].startswith("C3 / ")
        variables = {v["name"] for v in board["templating"]["list"]}
        assert "datasource" in variables
        panel_ids = [panel["id"] for panel in board["panels"]]
        assert len(panel_ids) == len(set(panel_ids)), name
        for panel in board["panels"]:
            assert panel["title"] and panel["targets"], (name, panel)
            assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}"
                assert target["expr"].strip()
                if "$tenant" in target["expr"]:
                    assert "tenant" in variables, (name, target["expr"])
    assert len(uids) == len(DASHBOARDS)


def test_the_chart_ships_the_one_copy() -> None:
    """No second copy to drift: deploy/observability is the chart's files/observability."""
    assert OBSERVABILITY.is_symlink()
    assert OBSERVABILITY.resolve() == (CHART / "files" / "observability").resolve()
    templates = {
        path.name: path.read_text() for path in (CHART / "templates").glob("observability-*.yaml")
    }
    assert set(templates) == {
        "observability-dashboards.yaml",
        "observability-prometheusrule.yaml",
        "observability-scrape.yaml",
    }
    assert (
        '.Files.Glob "files/observability/dashboards/*.json"'
        in templates["observability-dashboards.yaml"]
    )
    assert (
        '.Files.Get "files/observability/alerts.yaml"'
        in templates["observability-prometheusrule.yaml"]
    )
    # Grafana's sidecar finds dashboards by this label.
    values = yaml.safe_load((CHART / "values.yaml").read_text())["observability"]
    assert (values["dashboards"]["label"], values["dashboards"]["labelValue"]) == (
        "grafana_dashboard",
        "1",
    )


def test_everything_is_off_by_default_and_matches_the_chart_schema() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["observability"]
    assert not any(
        block["enabled"]
        for block in values.values()
        if isinstance(block, dict) and "enabled" in block
    )
    assert {"dashboards", "prometheusRule", "scrape"} <= set(values)
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["observability"]
    assert schema["additionalProperties"] is False
    jsonschema.validate(values, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**values, "scrape": {**values["scrape"], "proxyPort": 0}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**values, "scrape": {**values["scrape"], "unknown": 1}}, schema)
