#!/usr/bin/env python3
"""Writes the Go consumer module that builds one Kubernetes release's control plane (gomod/k8s-<minor>/).

    scripts/gen-k8s-gomod.py v1.30.14 [--dir operator/dra_operator/controlplane/gomod/k8s-1.30]

k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with ./staging paths; replace
directives only apply in the main module, so the consumer maps each staging module named in that release's
own go.mod to its published v0.<minor>.<patch> tag (or to an empty stub where the proxy has no such tag and
no build needs it). The module's GODEBUG defaults follow the release's own go line, so the binaries behave
as upstream's (1.30 was built with Go 1.22's timer and TLS defaults). go.sum comes from `go mod tidy`; the
files are checked in and builds run with -mod=readonly.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

GOMOD = Path(__file__).resolve().parent.parent / "operator" / "dra_operator" / "controlplane" / "gomod"
COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
# The go.mod `tool` directive needs a go line of 1.24 or newer.
MIN_GO_LINE = (1, 24)


def go(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    proc = subprocess.run(["go", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"go {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def published(module: str, version: str) -> bool:
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    proc = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"], env=env, capture_output=True, text=True
    )
    return proc.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("version", help="a k8s.io/kubernetes tag, e.g. v1.30.14")
    parser.add_argument("--dir", type=Path, help="output directory (default gomod/k8s-<major.minor>)")
    args = parser.parse_args()
    version: str = args.version
    match = re.fullmatch(r"v1\.(\d+)\.(\d+)", version)
    if not match:
        raise SystemExit(f"not a Kubernetes release tag: {version}")
    minor, patch = match.groups()
    out: Path = args.dir or GOMOD / f"k8s-1.{minor}"

    info = json.loads(go("mod", "download", "-json", f"k8s.io/kubernetes@{version}"))
    upstream = Path(info["GoMod"]).read_text()
    staging = sorted(set(re.findall(r"^\s*k8s\.io/([\w.-]+) => \./staging/src/", upstream, re.M)))
    go_line = re.search(r"^go (\d+)\.(\d+)", upstream, re.M)
    assert go_line is not None, "release go.mod without a go line"
    release_go = (int(go_line.group(1)), int(go_line.group(2)))
    line = max(release_go, MIN_GO_LINE)

    out.mkdir(parents=True, exist_ok=True)
    replaces: list[str] = []
    for name in staging:
        tag = f"v0.{minor}.{patch}"
        if published(f"k8s.io/{name}", tag):
            replaces.append(f"\tk8s.io/{name} => k8s.io/{name} {tag}")
            continue
        stub = out / "stub" / name
        stub.mkdir(parents=True, exist_ok=True)
        (stub / "go.mod").write_text(f"module k8s.io/{name}\n\ngo {line[0]}.{line[1]}.0\n")
        replaces.append(
            f"\t// k8s.io/{name}: no published {tag} on the proxy and no build needs it; see stub/."
        )
        replaces.append(f"\tk8s.io/{name} => ./stub/{name}")

    text = "\n".join(
        [
            f"// Consumer module that builds the Kubernetes {version} control-plane binaries.",
            "// Written by scripts/gen-k8s-gomod.py: each staging module the release replaces with",
            "// ./staging is mapped to its published tag; GODEBUG defaults follow the release's go line.",
            f"module dra-operator.local/controlplane/k8s-1.{minor}",
            "",
            f"go {line[0]}.{line[1]}.0",
            "",
            f"godebug default=go{release_go[0]}.{release_go[1]}",
            "",
            f"require k8s.io/kubernetes {version}",
            "",
            "replace (",
            *replaces,
            ")",
            "",
            "tool (",
            *[f"\tk8s.io/kubernetes/cmd/{command}" for command in COMMANDS],
            ")",
            "",
        ]
    )
    (out / "go.mod").write_text(text)
    go("mod", "tidy", cwd=out)
    print(f"wrote {out}/go.mod ({len(staging)} staging modules)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
