"""A private Docker engine for image builds: our own containerd + dockerd, and the buildx plugin for BuildKit.

Why private: this machine's Docker (if any) is not ours to configure, and a Kubernetes node's containerd must
not be touched, so `DockerDaemon` starts a containerd and a dockerd of its own, talking over unix sockets in
a run directory (`$TMPDIR/dra-operator-docker-<hash>/`), with images and build cache in a data root under the
cache (`~/.cache/dra-operator/docker/`) so layers are reused from one run to the next. Two daemons cannot
share a data root, so it is held under a file lock for the daemon's lifetime; a second user waits for it.

The host is changed as little as dockerd allows: no iptables rules, no bridge, no IP forwarding, no NAT, no
userland proxy. Containers run with `--network none` (tests) and builds with `--network host` (pip must reach
PyPI from a RUN step); dockerd itself creates only /run/docker/plugins (hard-coded in it) and, for dockerd
before 23, we point its key file into the run directory instead of /etc/docker.

Both daemons are asked to die with the thread that started them (PR_SET_PDEATHSIG). A run killed with SIGKILL
leaves its run directory behind; because that directory's path depends only on the data root, the next start
finds it, kills whatever daemon is still recorded there, and starts containerd and dockerd on the same state
and exec roots: containerd then reconnects to any container shim that survived, and dockerd (live-restore off)
stops those containers and releases their mounts, exactly as after a crash of a system Docker.

The client is Debian's /usr/bin/docker (package docker.io), chosen over any other docker on PATH: it comes
with the daemon, speaks its API version, and is what `ensure_docker_installed()` guarantees on a fresh
machine. BuildKit builds need the buildx CLI plugin, which no registry we may use ships as a binary: it is
built from Go modules (tools.gotool) and linked into `$DOCKER_CONFIG/cli-plugins/docker-buildx`.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from dra_operator.controlplane.build import cache_root
from dra_operator.controlplane.launcher import die_with_parent, log_tail
from dra_operator.tools.gotool import ensure_go_tool

Log = Callable[[str], None]

DOCKERD = Path("/usr/sbin/dockerd")
CONTAINERD = Path("/usr/bin/containerd")
DOCKER_CLI = Path("/usr/bin/docker")
# docker.io brings containerd, runc and tini (docker-init) as dependencies; runc is named for hosts where a
# partial removal left docker.io without it.
DOCKER_PACKAGES = ("docker.io", "containerd", "runc")

BUILDX_MODULE = "github.com/docker/buildx"
BUILDX_PACKAGE = f"{BUILDX_MODULE}/cmd/buildx"
# v0.33.0: the newest release served whose go.mod neither asks for a Go newer than 1.26.0 (it says 1.25.5) nor
# carries exclude/replace directives (v0.29.x does, and `go install pkg@version` refuses those). Its Docker
# client accepts API 1.40 and up; Debian bookworm's dockerd 20.10 speaks 1.41.
BUILDX_VERSION = "v0.33.0"
BUILDX_ENV_OVERRIDE = "DRA_OPERATOR_BUILDX"

DEFAULT_START_TIMEOUT = 60.0
DEFAULT_LOCK_TIMEOUT = 1800.0  # another session may be building an image on the same data root
_STOP_GRACE = 20.0  # dockerd gives running containers 15 s before it kills them
_RUN_DIR_PREFIX = "dra-operator-docker-"
# Client settings that would send our docker CLI somewhere else than our daemon, or change what buildx does.
_FOREIGN_CLIENT_ENV = (
    "DOCKER_CONTEXT",
    "DOCKER_TLS_VERIFY",
    "DOCKER_CERT_PATH",
    "DOCKER_API_VERSION",
    "BUILDX_BUILDER",
    "BUILDX_CONFIG",
)


class DockerError(RuntimeError):
    """The engine could not be installed, started or used; the message says why (and quotes the log)."""


# ---- packages -------------------------------------------------------------------------------------------

_apt_updated = False


@contextlib.contextmanager
def _services_held_back() -> Iterator[None]:
    # docker.io's maintainer scripts would start the system dockerd, which then creates docker0 and adds
    # iptables rules: precisely what the private engine avoids. policy-rc.d answering 101 ("action forbidden")
    # is Debian's documented way to keep packages from starting services; an existing one is left as it is.
    policy = Path("/usr/sbin/policy-rc.d")
    if policy.exists():
        yield
        return
    policy.write_text("#!/bin/sh\n# written by dra_operator.tools.docker while it runs apt-get\nexit 101\n")
    policy.chmod(0o755)
    try:
        yield
    finally:
        policy.unlink(missing_ok=True)


def apt_install(packages: Sequence[str], *, log: Log | None = None) -> None:
    """`apt-get install -y --no-install-recommends` the packages (after one `apt-get update` per process)."""
    global _apt_updated
    wanted = " ".join(packages)
    if os.geteuid() != 0:
        raise DockerError(f"{wanted} missing and installing it needs root: apt-get install {wanted}")
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        raise DockerError(f"{wanted} missing and no apt-get here: install it with your package manager")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Another apt-get (a second test session) may hold dpkg's lock for a while: wait instead of failing.
    lock_wait = ["-o", "DPkg::Lock::Timeout=600"]
    with _services_held_back():
        if not _apt_updated:
            if log:
                log("apt-get update")
            _run_checked([apt_get, *lock_wait, "update"], env=env, what="apt-get update")
            _apt_updated = True
        if log:
            log(f"apt-get install {wanted}")
        command = [apt_get, *lock_wait, "install", "-y", "--no-install-recommends", *packages]
        _run_checked(command, env=env, what=f"apt-get install {wanted}")


def _run_checked(command: Sequence[str], *, env: Mapping[str, str], what: str) -> None:
    result = subprocess.run(list(command), env=dict(env), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DockerError(f"{what} failed ({result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}")


def _runc_present() -> bool:
    return any(Path(directory, "runc").is_file() for directory in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"))


def ensure_docker_installed(*, log: Log | None = None) -> None:
    """Install Debian's docker.io (dockerd, containerd, runc, the docker client) when any is missing."""
    if DOCKERD.is_file() and CONTAINERD.is_file() and DOCKER_CLI.is_file() and _runc_present():
        return
    apt_install(DOCKER_PACKAGES, log=log)
    missing = [str(path) for path in (DOCKERD, CONTAINERD, DOCKER_CLI) if not path.is_file()]
    if missing:
        raise DockerError(
            f"apt-get installed {' '.join(DOCKER_PACKAGES)}, yet {', '.join(missing)} is absent"
        )


def buildx_ldflags(version: str = BUILDX_VERSION) -> str:
    # Without the stamp `docker buildx version` reports "v0.0.0+unknown".
    stamp = f"-X {BUILDX_MODULE}/version.Version={version} -X {BUILDX_MODULE}/version.Package={BUILDX_MODULE}"
    return f"-s -w {stamp}"


def ensure_buildx(*, log: Log | None = None) -> Path:
    """The buildx plugin binary: $DRA_OPERATOR_BUILDX if set, else built once from Go modules (minutes)."""
    return ensure_go_tool(
        name="docker-buildx",
        module=BUILDX_MODULE,
        package=BUILDX_PACKAGE,
        version=BUILDX_VERSION,
        ldflags=buildx_ldflags(),
        log=log,
        env_override=BUILDX_ENV_OVERRIDE,
        probe=("version",),
    )


# ---- configuration (pure) -------------------------------------------------------------------------------


def default_data_root() -> Path:
    return cache_root() / "docker"


def run_dir_for(data_root: Path) -> Path:
    """The run directory of the engine on `data_root`: one fixed, short path (sockets) per data root."""
    digest = hashlib.sha256(str(data_root.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"{_RUN_DIR_PREFIX}{digest}"


def containerd_config(*, data_root: Path, run_dir: Path) -> str:
    """containerd's config.toml: state and sockets in the run directory, content under the data root."""
    disabled = [
        # No Kubernetes CRI service: this containerd only runs dockerd's containers.
        "io.containerd.grpc.v1.cri",
        # The "opt" plugin would create /opt/containerd on the host.
        "io.containerd.internal.v1.opt",
    ]
    lines = [
        "version = 2",
        f"root = {json.dumps(str(data_root / 'containerd'))}",
        f"state = {json.dumps(str(run_dir / 'containerd'))}",
        f"disabled_plugins = {json.dumps(disabled)}",
        "[grpc]",
        f"  address = {json.dumps(str(containerd_socket(run_dir)))}",
        "[ttrpc]",
        f"  address = {json.dumps(str(containerd_socket(run_dir)) + '.ttrpc')}",
    ]
    return "\n".join(lines) + "\n"


def containerd_socket(run_dir: Path) -> Path:
    return run_dir / "containerd" / "containerd.sock"


def docker_socket(run_dir: Path) -> Path:
    return run_dir / "docker.sock"


def parse_docker_version(text: str) -> tuple[int, int]:
    """(major, minor) from `dockerd --version` ("Docker version 20.10.24+dfsg1, build 5d6db84")."""
    match = re.search(r"version (\d+)\.(\d+)", text)
    if not match:
        raise DockerError(f"cannot read a version from {text.strip()!r}")
    return int(match[1]), int(match[2])


def daemon_config(*, run_dir: Path, version: tuple[int, int]) -> dict[str, object]:
    """dockerd's daemon.json (our own, so the host's /etc/docker/daemon.json does not apply)."""
    config: dict[str, object] = {
        # BuildKit's cache lives in the data root across runs: bound it.
        "builder": {"gc": {"enabled": True, "defaultKeepStorage": "4GB"}},
    }
    if version < (23, 0):
        # dockerd before 23 writes a key file, by default into /etc/docker; newer ones have no such option.
        config["deprecated-key-path"] = str(run_dir / "key.json")
    return config


def containerd_args(run_dir: Path) -> list[str]:
    return [str(CONTAINERD), "--config", str(run_dir / "containerd.toml")]


def dockerd_args(*, data_root: Path, run_dir: Path) -> list[str]:
    return [
        str(DOCKERD),
        f"--host=unix://{docker_socket(run_dir)}",
        f"--exec-root={run_dir / 'exec'}",
        f"--pidfile={run_dir / 'docker.pid'}",
        f"--data-root={data_root / 'docker'}",
        f"--containerd={containerd_socket(run_dir)}",
        f"--config-file={run_dir / 'daemon.json'}",
        # No host network changes: no rules, no docker0, no forwarding or masquerading, no docker-proxy.
        "--iptables=false",
        "--ip6tables=false",
        "--ip-forward=false",
        "--ip-masq=false",
        "--bridge=none",
        "--userland-proxy=false",
    ]


def client_env(base: Mapping[str, str], *, run_dir: Path, config_dir: Path | None = None) -> dict[str, str]:
    """`base` with the docker client pointed at the engine of `run_dir` and nothing pointing elsewhere."""
    env = {key: value for key, value in base.items() if key not in _FOREIGN_CLIENT_ENV}
    env["DOCKER_HOST"] = f"unix://{docker_socket(run_dir)}"
    env["DOCKER_CONFIG"] = str(config_dir or run_dir / "config")
    # dockerd 20.10 without the containerd image store cannot keep attestations; buildx must not ask for them.
    env["BUILDX_NO_DEFAULT_ATTESTATIONS"] = "1"
    return env


# ---- processes --------------------------------------------------------------------------------------------


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def mounts_under(directory: Path, mountinfo: str | None = None) -> list[str]:
    """Mount points at or below `directory` (from /proc/self/mountinfo), deepest first (unmount order)."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return []
    prefix = str(directory).rstrip("/")
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        # Field 5 is the mount point; the kernel writes space, tab, newline and backslash as octal escapes.
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(found, key=len, reverse=True)


def unmount_under(directory: Path) -> bool:
    """Detach every mount at or below `directory`; True when none is left."""
    for point in mounts_under(directory):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
    return not mounts_under(directory)


def _ping(sock: Path, timeout: float = 2.0) -> bool:
    """dockerd answers GET /_ping with 200 once its API serves."""
    connection = _UnixHTTPConnection(sock, timeout)
    try:
        connection.request("GET", "/_ping")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def _accepts(sock: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(2.0)
        try:
            client.connect(str(sock))
        except OSError:
            return False
    return True


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class DockerDaemon:
    """A private containerd + dockerd on a cached data root; use as a context manager or start()/stop().

    Start it from a long-lived thread (the main thread, normally): the daemons die with the thread that
    started them. env() is the environment for docker clients; docker(*args) runs our client.
    """

    _active: set[Path] = set()  # data roots this process runs an engine on (a second one would deadlock)

    def __init__(
        self,
        *,
        data_root: Path | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        log: Log | None = None,
    ) -> None:
        self.data_root = (data_root or default_data_root()).resolve()
        self.run_dir = run_dir_for(self.data_root)
        self.start_timeout = start_timeout
        self.lock_timeout = lock_timeout
        self._log = log
        self._lock: IO[str] | None = None
        self._containerd: subprocess.Popen[bytes] | None = None
        self._dockerd: subprocess.Popen[bytes] | None = None
        self.buildx: Path | None = None

    # ---- public ------------------------------------------------------------------------------------------

    @property
    def socket(self) -> Path:
        return docker_socket(self.run_dir)

    @property
    def config_dir(self) -> Path:
        return self.run_dir / "config"

    @property
    def running(self) -> bool:
        return self._dockerd is not None and self._dockerd.poll() is None

    def env(self) -> dict[str, str]:
        """Environment for docker clients of this engine: DOCKER_HOST, DOCKER_CONFIG (with buildx in it)."""
        return client_env(os.environ, run_dir=self.run_dir, config_dir=self.config_dir)

    def docker(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run our docker client against this engine; with check, a non-zero exit raises DockerError."""
        if not self.running:
            raise DockerError("the docker engine is not running")
        result = subprocess.run(
            [str(DOCKER_CLI), *args],
            env=self.env(),
            input=input,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            output = (result.stdout[-2000:] + result.stderr[-4000:]).strip()
            raise DockerError(f"docker {' '.join(args)} failed ({result.returncode}):\n{output}")
        return result

    def logs(self, lines: int = 30) -> str:
        return log_tail(self.run_dir / "dockerd.log", lines)

    def __enter__(self) -> DockerDaemon:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> DockerDaemon:
        if self._dockerd is not None:
            raise DockerError("the docker engine is already started")
        if os.geteuid() != 0:
            raise DockerError("the private docker engine needs root (dockerd does not run rootless here)")
        if self.data_root in DockerDaemon._active:
            raise DockerError(f"this process already runs an engine on {self.data_root}")
        ensure_docker_installed(log=self._log)
        buildx = self.buildx = ensure_buildx(log=self._log)
        version = parse_docker_version(
            subprocess.run([str(DOCKERD), "--version"], capture_output=True, text=True, check=True).stdout
        )
        self._acquire_lock()
        atexit.register(self.stop)
        DockerDaemon._active.add(self.data_root)
        try:
            self._sweep()
            self._prepare(version, buildx)
            self._start_daemons()
        except BaseException:
            self.stop(keep_logs=True)
            raise
        return self

    def stop(self, *, keep_logs: bool = False) -> None:
        """Stop dockerd, then containerd, and remove the run directory; safe to call more than once."""
        atexit.unregister(self.stop)
        clean = True
        for process in (self._dockerd, self._containerd):
            if process is not None:
                clean &= _stop_process(process)
        self._dockerd = self._containerd = None
        if self._lock is not None:
            # With both daemons gone no mount of theirs is needed any more, yet some stay: a clean dockerd
            # leaves its exec root's netns/default (a bind of the host's network namespace), and one started
            # after a killed run finds its data root already bind-mounted, so it does not undo that mount.
            unmount_under(self.data_root)
            unmounted = unmount_under(self.run_dir)
            # Never remove a tree that still has something mounted in it: rmtree would descend into it.
            if clean and unmounted and not keep_logs:
                shutil.rmtree(self.run_dir, ignore_errors=True)
        DockerDaemon._active.discard(self.data_root)
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    # ---- internals ---------------------------------------------------------------------------------------

    def _acquire_lock(self) -> None:
        self.data_root.mkdir(parents=True, exist_ok=True)
        handle = (self.data_root / "engine.lock").open("a")
        deadline = time.monotonic() + self.lock_timeout
        announced = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    handle.close()
                    raise DockerError(
                        f"another docker engine holds {self.data_root} for over {self.lock_timeout:.0f}s"
                    ) from None
                if self._log and not announced:
                    self._log(f"waiting for the docker engine on {self.data_root} held by another process")
                    announced = True
                time.sleep(0.5)
        self._lock = handle

    def _sweep(self) -> None:
        # We hold the data root's lock, so whatever the run directory still records belongs to a run that is
        # gone. PR_SET_PDEATHSIG normally took its daemons along; make sure, by pid and command line.
        for name in ("docker.pid", "containerd.pid"):
            pid = _read_pid(self.run_dir / name)
            if pid is not None and str(self.run_dir) in _cmdline(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                if not _wait_gone(pid, 10.0):
                    raise DockerError(f"a stale daemon (pid {pid}) of {self.run_dir} does not exit")
        for name in ("docker.pid", "containerd.pid", "docker.sock"):
            (self.run_dir / name).unlink(missing_ok=True)
        containerd_socket(self.run_dir).unlink(missing_ok=True)
        # The exec root and containerd's state stay: on them, new daemons clean up a killed run's containers.

    def _prepare(self, version: tuple[int, int], buildx: Path) -> None:
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.run_dir / "containerd").mkdir(exist_ok=True)
        (self.run_dir / "containerd.toml").write_text(
            containerd_config(data_root=self.data_root, run_dir=self.run_dir)
        )
        config = daemon_config(run_dir=self.run_dir, version=version)
        (self.run_dir / "daemon.json").write_text(json.dumps(config, indent=2) + "\n")
        plugins = self.config_dir / "cli-plugins"
        plugins.mkdir(parents=True, exist_ok=True)
        link = plugins / "docker-buildx"
        link.unlink(missing_ok=True)
        link.symlink_to(buildx)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        # dockerd finds runc, containerd-shim-runc-v2 and docker-init on PATH, which may lack the sbin dirs.
        env["PATH"] = os.pathsep.join([env.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
        with (self.run_dir / f"{name}.log").open("ab") as out:
            return subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.run_dir,
                env=env,
                start_new_session=True,  # signals for our session (Ctrl-C) must not reach it: stop() decides
                preexec_fn=die_with_parent,  # only calls prctl(2)
            )

    def _start_daemons(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        self._containerd = self._spawn("containerd", containerd_args(self.run_dir))
        (self.run_dir / "containerd.pid").write_text(str(self._containerd.pid))
        self._wait("containerd", deadline, lambda: _accepts(containerd_socket(self.run_dir)))
        self._dockerd = self._spawn("dockerd", dockerd_args(data_root=self.data_root, run_dir=self.run_dir))
        self._wait("dockerd", deadline, lambda: _ping(self.socket))

    def _wait(self, name: str, deadline: float, ready: Callable[[], bool]) -> None:
        while not ready():
            for other, other_name in ((self._containerd, "containerd"), (self._dockerd, "dockerd")):
                if other is not None and other.poll() is not None:
                    log = self.run_dir / f"{other_name}.log"
                    raise DockerError(
                        f"{other_name} exited with code {other.returncode}; {log}:\n{log_tail(log)}"
                    )
            log = self.run_dir / f"{name}.log"
            if time.monotonic() > deadline:
                raise DockerError(
                    f"{name} not ready after {self.start_timeout:.0f}s; {log}:\n{log_tail(log)}"
                )
            time.sleep(0.1)


def _stop_process(process: subprocess.Popen[bytes]) -> bool:
    """SIGTERM the daemon (it stops its containers), SIGKILL its group after a grace; True if it stopped."""
    clean = True
    if process.poll() is None:
        # Only the daemon itself: its children (a build's runc) are its to stop, in order.
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=_STOP_GRACE)
        except subprocess.TimeoutExpired:
            clean = False
            process.kill()
            process.wait()
    # Anything it left in its process group goes with it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    return clean


@contextlib.contextmanager
def running_engine(daemon: DockerDaemon | None, *, log: Log | None = None) -> Iterator[DockerDaemon]:
    """`daemon` as is when given (the caller owns it), else a fresh engine for the duration of the block."""
    if daemon is not None:
        yield daemon
        return
    with DockerDaemon(log=log) as started:
        yield started
