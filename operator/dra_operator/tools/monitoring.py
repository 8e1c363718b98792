"""What the chart's Prometheus Operator objects are tested with: a pinned promtool and the Prometheus
Operator's own CRDs, both from the Go module proxy (no registry this project may use ships either).

promtool: Prometheus' go.mod has no replace directives, so `go install` builds it without a clone (its Go
module versions spell release 3.16.0 as v0.316.0). The `remove_all_sd` build tag leaves out every
service-discovery plugin: rule checks and rule unit tests need none, and the cloud SDKs they pull in would
double the build. Cached beside helm; DRA_OPERATOR_PROMTOOL names an existing promtool instead.

CRDs: the module github.com/prometheus-operator/prometheus-operator carries the CRDs it installs under
example/prometheus-operator-crd/; `go mod download` fetches it into the module cache, so a test control plane
can serve ServiceMonitor and PrometheusRule and judge the chart's objects of those kinds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from dra_operator.controlplane.build import BuildError, find_go
from dra_operator.tools.gotool import ensure_go_tool, go_build_env, tool_path
from dra_operator.tools.helm import template

PROMETHEUS_MODULE = "github.com/prometheus/prometheus"
PROMETHEUS_VERSION = "v0.316.0"
PROMETHEUS_RELEASE = "3.16.0"  # what v0.316.0 is released as
PROMETHEUS_OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator"
PROMETHEUS_OPERATOR_VERSION = "v0.85.0"  # the newest the module proxy lists here
#: The kinds of the chart's objects, by their CRD file under example/prometheus-operator-crd/.
CHART_KINDS = ("servicemonitors", "prometheusrules")


def promtool_path() -> Path:
    return tool_path("promtool", PROMETHEUS_VERSION)


def ensure_promtool(*, log: Callable[[str], None] | None = None) -> Path:
    """Return a working promtool, building it into the cache the first time (a minute or two on 2 cores)."""
    return ensure_go_tool(
        name="promtool",
        module=PROMETHEUS_MODULE,
        package=f"{PROMETHEUS_MODULE}/cmd/promtool",
        version=PROMETHEUS_VERSION,
        # What `promtool --version` prints, as upstream's release build stamps it.
        ldflags=f"-s -w -X github.com/prometheus/common/version.Version={PROMETHEUS_RELEASE}",
        tags=("remove_all_sd",),
        log=log,
        env_override="DRA_OPERATOR_PROMTOOL",
        probe=("--version",),
    )


#: The values that render the chart's PrometheusRule, with the ServiceMonitor whose labels its alerts select.
RULE_VALUES = {"metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}}


def chart_rule(release: str, namespace: str, helm: Path | None = None) -> dict[str, Any]:
    """The chart's PrometheusRule as `helm template` renders it for this release and namespace."""
    objects = template(release=release, namespace=namespace, values=RULE_VALUES, helm=helm)
    (rule,) = [o for o in objects if o["kind"] == "PrometheusRule"]
    return rule


def run_rule_tests(
    rule: Mapping[str, Any], tests: Mapping[str, Any], work: Path, promtool: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`promtool test rules` of `tests` (a rule test file's content, naming rules.yaml) over `rule`'s groups,
    both written into `work`."""
    (work / "rules.yaml").write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    (work / "rules.test.yaml").write_text(yaml.safe_dump(dict(tests), sort_keys=False))
    return subprocess.run(
        [str(promtool or ensure_promtool()), "test", "rules", "rules.test.yaml"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def prometheus_operator_crds(kinds: tuple[str, ...] = CHART_KINDS) -> list[Path]:
    """The Prometheus Operator's CRD files of `kinds` (plurals), downloaded into the Go module cache once."""
    go, go_env = find_go()
    result = subprocess.run(
        [go, "mod", "download", "-json", f"{PROMETHEUS_OPERATOR_MODULE}@{PROMETHEUS_OPERATOR_VERSION}"],
        env=go_build_env(go_env),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if result.returncode != 0:
        # With -json, go reports a module's error in its JSON (stdout); others go to stderr.
        detail = (result.stderr.strip() or result.stdout.strip())[-2000:]
        raise BuildError(f"go mod download {PROMETHEUS_OPERATOR_MODULE} failed:\n{detail}")
    crds = Path(json.loads(result.stdout)["Dir"]) / "example" / "prometheus-operator-crd"
    return [crds / f"monitoring.coreos.com_{kind}.yaml" for kind in kinds]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dra_operator.tools.monitoring", description=__doc__)
    parser.parse_args(argv)
    print(ensure_promtool(log=lambda line: print(line, file=sys.stderr)))
    for path in prometheus_operator_crds():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
