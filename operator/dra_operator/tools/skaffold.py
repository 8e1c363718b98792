"""A pinned skaffold binary for checking skaffold.yaml: built once from Go modules, cached beside helm.

Why built: no registry this project may use ships skaffold, while the Go module proxy serves its source.
Upstream's go.mod carries replace and exclude directives, so `go install ...@version` is refused; the consumer
module in gomod/skaffold (go.mod, go.sum checked in) repeats them and builds skaffold's own main package.
v2.16.1 is the newest skaffold v2 release the proxy serves here (later tags are refused); its go.mod asks
for Go 1.24.1 and it builds with Go 1.26. Set DRA_OPERATOR_SKAFFOLD to an existing skaffold to skip the build.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from dra_operator.tools.gotool import ensure_go_module_tool, tool_path

SKAFFOLD_MODULE = "github.com/GoogleContainerTools/skaffold/v2"
SKAFFOLD_VERSION = "v2.16.1"  # must match the require line in gomod/skaffold/go.mod
# The tag's commit and time on the module proxy (its .info), stamped in as upstream's Makefile does, so
# `skaffold version` tells what it is and the build is reproducible.
SKAFFOLD_COMMIT = "95fb592deb61a4e290edca4925bd7c9c2fa93f6c"
SKAFFOLD_BUILD_DATE = "2025-06-18T03:34:25Z"
GOMOD_DIR = Path(__file__).resolve().parent / "gomod" / "skaffold"
# Upstream's release tags, less the cgo-only ones (osusergo, netgo, static_build) that CGO_ENABLED=0 makes
# moot: timetzdata embeds the time zone database so the static binary needs none on the host.
_TAGS = ("timetzdata",)


def skaffold_path() -> Path:
    return tool_path("skaffold", SKAFFOLD_VERSION)


def _ldflags() -> str:
    package = f"{SKAFFOLD_MODULE}/pkg/skaffold/version"
    values = {"version": SKAFFOLD_VERSION, "gitCommit": SKAFFOLD_COMMIT, "buildDate": SKAFFOLD_BUILD_DATE}
    return " ".join(["-s", "-w", *(f"-X {package}.{key}={value}" for key, value in values.items())])


def ensure_skaffold(*, log: Callable[[str], None] | None = None) -> Path:
    """Return a working skaffold, building it into the cache the first time (many minutes on 2 cores)."""
    return ensure_go_module_tool(
        name="skaffold",
        module_dir=GOMOD_DIR,
        package=f"{SKAFFOLD_MODULE}/cmd/skaffold",
        version=SKAFFOLD_VERSION,
        ldflags=_ldflags(),
        tags=_TAGS,
        log=log,
        env_override="DRA_OPERATOR_SKAFFOLD",
        probe=("version",),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dra_operator.tools.skaffold", description=__doc__)
    parser.parse_args(argv)
    print(ensure_skaffold(log=lambda line: print(line, file=sys.stderr)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
