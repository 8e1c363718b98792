"""The chart's alerting rules: promtool accepts them, and its rule unit tests show each alert firing when it
should and staying quiet when it should not (tests/fixtures/prometheus/alerts.test.yaml); the series they
read are the ones the operator exports; the values that shape them do what they say."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from dra_operator.operator import metrics
from dra_operator.tools.helm import ensure_helm, template
from dra_operator.tools.monitoring import chart_rule, ensure_promtool, run_rule_tests

RULE_TESTS = Path(__file__).parent.parent / "fixtures" / "prometheus" / "alerts.test.yaml"
RELEASE, NAMESPACE = "rel", "gpu-system"  # as the rule tests' series are labelled


@pytest.fixture(scope="module")
def helm() -> Path:
    return ensure_helm()


@pytest.fixture(scope="module")
def promtool() -> Path:
    return ensure_promtool()


def rules(helm: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    objects = template(release=RELEASE, namespace=NAMESPACE, values=values, helm=helm)
    return [o for o in objects if o["kind"] == "PrometheusRule"]


def alerts(rule: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


@pytest.fixture(scope="module")
def rule(helm: Path) -> dict[str, Any]:
    return chart_rule(RELEASE, NAMESPACE, helm)


def promtool_run(promtool: Path, *args: str, cwd: Path) -> str:
    result = subprocess.run(
        [str(promtool), *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_promtool_checks_the_rules_and_passes_their_unit_tests(
    rule: dict[str, Any], promtool: Path, tmp_path: Path
) -> None:
    tested = run_rule_tests(rule, yaml.safe_load(RULE_TESTS.read_text()), tmp_path, promtool)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    checked = promtool_run(promtool, "check", "rules", "--lint-fatal", "rules.yaml", cwd=tmp_path)
    assert f"SUCCESS: {len(alerts(rule))} rules found" in checked


def test_every_alert_is_shown_firing_and_quiet_by_the_rule_tests(rule: dict[str, Any]) -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    fired = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    names = {a["alert"] for a in alerts(rule)}
    assert fired == names and quiet == names


def exported_series() -> set[str]:
    """The series names the operator's registry exports (a labelled metric exports none until used, so the
    names are derived from each family's type)."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    return {
        family.name + suffix
        for family in metrics.REGISTRY.collect()
        for suffix in suffixes.get(family.type, ("",))
    }


def test_the_alerts_read_series_the_operator_exports(rule: dict[str, Any]) -> None:
    read = {name for a in alerts(rule) for name in re.findall(r"\bdra_operator_[a-z_]+", a["expr"])}
    assert read, "the alerts read none of the operator's series"
    assert read <= exported_series(), f"not exported: {sorted(read - exported_series())}"


def test_the_alerts_select_this_releases_series(rule: dict[str, Any]) -> None:
    """Every operator series is matched by the job and namespace a ServiceMonitor of this release gives it,
    so two installations in one Prometheus do not answer for each other."""
    selector = f'{{job="{RELEASE}-dra-operator-metrics", namespace="{NAMESPACE}"}}'
    for alert in alerts(rule):
        for name in re.findall(r"\bdra_operator_[a-z_]+(\{[^}]*\})?", alert["expr"]):
            assert name == selector, alert["alert"]
        assert alert["labels"]["severity"] in {"critical", "warning"}
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]


def test_values_shape_the_rule(helm: Path) -> None:
    assert rules(helm, {}) == [], "off by default"
    names = [a["alert"] for a in alerts(chart_rule(RELEASE, NAMESPACE, helm))]
    values = {
        "metrics": {
            "prometheusRule": {
                "enabled": True,
                "labels": {"release": "prometheus"},
                "alertLabels": {"team": "gpu-platform"},
                "selector": 'job="gpu-operator", namespace="ops"',
                "disabled": [names[0]],
            }
        }
    }
    (shaped,) = rules(helm, values)
    assert shaped["metadata"]["labels"]["release"] == "prometheus"
    kept = alerts(shaped)
    assert [a["alert"] for a in kept] == names[1:]
    for alert in kept:
        assert alert["labels"]["team"] == "gpu-platform"
        for matchers in re.findall(r"\bdra_operator_[a-z_]+\{([^}]*)\}", alert["expr"]):
            assert matchers == 'job="gpu-operator", namespace="ops"'


def test_the_operators_exposition_passes_promtools_lint(promtool: Path) -> None:
    """Names, types and help as Prometheus expects them; no `_created` series beside the counters."""
    text = generate_latest(metrics.REGISTRY).decode()
    assert "# TYPE dra_operator_allocations_total counter" in text
    assert "_created" not in text
    linted = subprocess.run(
        [str(promtool), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr
