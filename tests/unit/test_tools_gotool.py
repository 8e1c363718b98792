"""The Go tool cache: builds once, reuses a working binary, rebuilds when what it was built from changes.

A stand-in `go` on PATH records its calls and writes a tiny executable where the real one would put the
tool, so the cache protocol is checked without compiling anything.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from dra_operator.controlplane.build import BuildError
from dra_operator.tools import gotool

FAKE_GO = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_GO_LOG"], "a") as log:
    env = {{key: os.environ.get(key) for key in ("CGO_ENABLED", "GOTOOLCHAIN", "GOFLAGS")}}
    log.write(json.dumps({{"args": args, "cwd": os.getcwd(), **env}}) + "\\n")
if os.environ.get("FAKE_GO_FAIL"):
    sys.exit("compile error")
if args[0] == "install":
    package = args[-1].split("@")[0].split("/")
    name = package[-2] if package[-1][:1] == "v" and package[-1][1:].isdigit() else package[-1]
    out = os.path.join(os.environ["GOBIN"], name)
else:
    out = args[args.index("-o") + 1]
with open(out, "w") as binary:
    binary.write("#!/bin/sh\\nexit 0\\n")
os.chmod(out, 0o755)
"""


@pytest.fixture
def fake_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    go = bin_dir / "go"
    go.write_text(FAKE_GO.format(python=sys.executable))
    go.chmod(go.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "go.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GO_LOG", str(log))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return log


def calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def tool(ldflags: str = "-s -w") -> Path:
    return gotool.ensure_go_tool(
        name="widget",
        module="example.com/widget/v2",
        package="example.com/widget/v2",
        version="v2.1.0",
        ldflags=ldflags,
        probe=(),
    )


def test_builds_once_static_with_the_local_toolchain_then_reuses(fake_go: Path, tmp_path: Path) -> None:
    path = tool()
    assert path == tmp_path / "cache" / "dra-operator" / "widget-v2.1.0" / "widget"
    assert os.access(path, os.X_OK)
    (call,) = calls(fake_go)
    assert call["args"] == ["install", "-trimpath", "-ldflags", "-s -w", "example.com/widget/v2@v2.1.0"]
    assert (call["CGO_ENABLED"], call["GOTOOLCHAIN"]) == ("0", "local")
    assert tool() == path
    assert len(calls(fake_go)) == 1, "a cached, stamped, working binary is reused"
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".widget-build-")] == []


def test_changed_link_flags_rebuild(fake_go: Path) -> None:
    tool()
    tool(ldflags="-s -w -X main.version=v2.1.0")
    assert [c["args"][3] for c in calls(fake_go)] == ["-s -w", "-s -w -X main.version=v2.1.0"]


def test_a_binary_that_does_not_run_is_rebuilt(fake_go: Path) -> None:
    path = tool()
    path.write_text("#!/bin/sh\nexit 1\n")
    assert gotool.ensure_go_tool(
        name="widget", module="example.com/widget/v2", package="example.com/widget/v2", version="v2.1.0"
    )
    assert len(calls(fake_go)) == 2


def test_override_names_a_prebuilt_binary(
    fake_go: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prebuilt = tmp_path / "my-widget"
    prebuilt.write_text("")
    monkeypatch.setenv("WIDGET", str(prebuilt))
    assert (
        gotool.ensure_go_tool(name="widget", module="m", package="m", version="v1", env_override="WIDGET")
        == prebuilt
    )
    monkeypatch.setenv("WIDGET", str(tmp_path / "missing"))
    with pytest.raises(BuildError, match="WIDGET"):
        gotool.ensure_go_tool(name="widget", module="m", package="m", version="v1", env_override="WIDGET")
    assert calls(fake_go) == []


def test_a_failed_build_says_so_and_leaves_nothing(fake_go: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_GO_FAIL", "1")
    with pytest.raises(BuildError, match="compile error"):
        tool()
    assert not gotool.tool_path("widget", "v2.1.0").exists()


def test_consumer_module_builds_read_only_from_a_copy(fake_go: Path, tmp_path: Path) -> None:
    module = tmp_path / "gomod" / "widget"
    module.mkdir(parents=True)
    (module / "go.mod").write_text("module example.local/widget\n")
    (module / "go.sum").write_text("")

    def build() -> Path:
        return gotool.ensure_go_module_tool(
            name="widget",
            module_dir=module,
            package="example.com/widget/v2/cmd/widget",
            version="v2.1.0",
            tags=("timetzdata",),
            probe=(),
        )

    path = build()
    (call,) = calls(fake_go)
    assert call["args"][0] == "build" and call["args"][-1] == "example.com/widget/v2/cmd/widget"
    assert "-mod=readonly" in call["GOFLAGS"] and "timetzdata" in call["args"]
    assert Path(call["cwd"]) != module, "go runs in a copy, never in the shipped module"
    assert build() == path
    (module / "go.sum").write_text("example.com/dep v1.0.0 h1:x\n")
    build()
    assert len(calls(fake_go)) == 2, "a changed go.sum is a different build"
