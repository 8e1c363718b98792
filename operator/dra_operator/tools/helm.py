"""A pinned helm binary for the chart tests: built once from Go modules, cached under ~/.cache/dra-operator/.

Why built: no registry this project may use ships a real helm binary (PyPI's "helm*" packages are unrelated
or wrappers that download at run time), while the Go module proxy serves helm's source and helm's go.mod has
no replace directives, so `go install helm.sh/helm/v3/cmd/helm@<version>` works without a clone.
Set DRA_OPERATOR_HELM to an existing helm to skip the build. Building and caching are those of
dra_operator.tools.gotool, shared with the other tools built from Go modules.
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from dra_operator.tools.gotool import ensure_go_tool, tool_path

HELM_MODULE = "helm.sh/helm/v3"
# v3.22.0 is served by the module proxy but not approved for this project; v3.21.4 is the newest approved.
HELM_VERSION = "v3.21.4"
# Helm's own Makefile stamps the Kubernetes version it is built against (client-go v0.X.Y gives 1.X) into
# the default .Capabilities.KubeVersion that `helm template` and `helm lint` use when no cluster is asked.
# `go install` skips that Makefile, and then helm claims Kubernetes 1.20: our chart's `kubeVersion: >=1.30`
# would refuse to render and the deprecation lint would judge APIs against 1.20. helm v3.21.4's go.mod
# requires k8s.io/client-go v0.36.2 (`go mod download -json helm.sh/helm/v3@v3.21.4`, then read GoMod),
# hence 1.36; update both together when HELM_VERSION moves.
HELM_KUBE_MAJOR = "1"
HELM_KUBE_MINOR = "36"


def helm_path(version: str = HELM_VERSION) -> Path:
    return tool_path("helm", version)


def _ldflags(version: str) -> str:
    flags = [
        "-s",
        "-w",
        f"-X {HELM_MODULE}/internal/version.version={version}",
        f"-X {HELM_MODULE}/internal/version.gitTreeState=clean",
    ]
    for pkg in ("pkg/lint/rules", "pkg/chartutil"):
        flags.append(f"-X {HELM_MODULE}/{pkg}.k8sVersionMajor={HELM_KUBE_MAJOR}")
        flags.append(f"-X {HELM_MODULE}/{pkg}.k8sVersionMinor={HELM_KUBE_MINOR}")
    return " ".join(flags)


def ensure_helm(version: str = HELM_VERSION, *, log: Callable[[str], None] | None = None) -> Path:
    """Return a working helm, building it with `go install` into the cache the first time (a few minutes)."""
    return ensure_go_tool(
        name="helm",
        module=HELM_MODULE,
        package=f"{HELM_MODULE}/cmd/helm",
        version=version,
        ldflags=_ldflags(version),
        log=log,
        env_override="DRA_OPERATOR_HELM",
        probe=("version", "--short"),
    )


def chart_dir() -> Path:
    """charts/dra-operator of this checkout (the chart is not part of the installed package)."""
    return Path(__file__).resolve().parents[3] / "charts" / "dra-operator"


def template(
    *,
    release: str = "dra-operator",
    namespace: str = "dra-system",
    values_files: Sequence[Path] = (),
    values: Mapping[str, Any] | None = None,
    set_values: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    chart: Path | None = None,
    helm: Path | None = None,
) -> list[dict[str, Any]]:
    """`helm template` the chart with --include-crds and return its objects; raises HelmError on failure.

    `values` is one more values document (after `values_files`, so it wins); `set_values` go to --set-string.
    """
    args = ["template", release, str(chart or chart_dir()), "--namespace", namespace, "--include-crds"]
    with tempfile.TemporaryDirectory() as scratch:
        for path in values_files:
            args += ["--values", str(path)]
        if values is not None:
            values_path = Path(scratch) / "values.yaml"
            values_path.write_text(yaml.safe_dump(dict(values)))
            args += ["--values", str(values_path)]
        for key, value in (set_values or {}).items():
            args += ["--set-string", f"{key}={value}"]
        text = run_helm([*args, *extra_args], helm=helm)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def coalesce_values(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of values files: maps merge key by key, null removes a key, the rest replaces."""
    result = copy.deepcopy(dict(base))
    for key, value in override.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = coalesce_values(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def isolated_env(kubeconfig: Path, work: Path) -> dict[str, str]:
    """The environment for helm against `kubeconfig` with its cache, config and data under `work`, so
    repositories and plugins of the user's own helm never leak in."""
    return {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "HELM_CACHE_HOME": str(work / "helm-cache"),
        "HELM_CONFIG_HOME": str(work / "helm-config"),
        "HELM_DATA_HOME": str(work / "helm-data"),
    }


class HelmError(RuntimeError):
    """helm exited non-zero; the message carries its stderr."""


def run_helm(args: Sequence[str], *, helm: Path | None = None, env: Mapping[str, str] | None = None) -> str:
    binary = helm or ensure_helm()
    result = subprocess.run(
        [str(binary), *args],
        capture_output=True,
        text=True,
        check=False,
        env=None if env is None else dict(env),
    )
    if result.returncode != 0:
        raise HelmError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr.strip()}")
    return result.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dra_operator.tools.helm", description=__doc__)
    parser.add_argument("--version", default=HELM_VERSION, help="helm release to build (default %(default)s)")
    args = parser.parse_args(argv)
    path = ensure_helm(args.version, log=lambda line: print(line, file=sys.stderr))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
