"""Starts and stops a real Kubernetes control plane on 127.0.0.1: etcd, apiserver, controllers, scheduler.

Python API (used by the test fixtures, the demo and the benchmarks)::

    from dra_operator.controlplane import ControlPlane

    with ControlPlane() as cp:            # builds the binaries on first use (cached), then starts everything
        cp.kubeconfig                     # Path of an admin kubeconfig (certificates embedded)
        cp.server                         # "https://127.0.0.1:<port>"
        cp.ca_file, cp.ca_key_file        # cluster CA (e.g. for a webhook's caBundle / to issue certificates)
        cp.admin_cert_file, cp.admin_key_file
        cp.run_dir                        # certificates, etcd data, <component>.log, kubeconfig
        cp.bin_dir                        # kube-apiserver, kubectl, ... of the pinned release
        cp.kubectl("get", "nodes", "-o", "json")    # CompletedProcess (text); check=True by default
        cp.request("GET", "/api/v1/nodes")          # parsed JSON from the apiserver, as admin
        cp.issue_serving_cert(directory, "webhook") # (cert, key) for 127.0.0.1/localhost signed by cp.ca_file
        cp.restart("kube-apiserver")                # or "etcd": fault injection, same ports and data
        cp.stop_component("etcd"); cp.start_component("etcd")   # the same in two steps, to act in between

Every port is picked free at start, so several control planes (test sessions, engineers) run side by side.
What runs: etcd (in the run directory, no fsync), kube-apiserver (RBAC+Node authorization, default admission
plugins, webhooks may call https://127.0.0.1:<port>, resource.k8s.io/v1 served as the release defaults),
kube-controller-manager (every default controller except node lifecycle, so fake Nodes without a kubelet stay
Ready; service-account tokens and root CA published), kube-scheduler (no leader election). Ready means: etcd
healthy, apiserver /readyz, scheduler /readyz, and the controller-manager gave a fresh namespace its `default`
ServiceAccount.

stop_component(name) terminates one component the same way stop() does and start_component(name) starts it
again with the same arguments — same ports, same etcd data, same certificates, its log appended to — and
waits until it answers (etcd /health, apiserver /readyz, scheduler /readyz); restart(name) does both. Tests
use it to show that clients ride through an API server or etcd restart.

stop() terminates each component's process group (SIGTERM, then SIGKILL after a grace period) and removes the
run directory unless `keep_run_dir` is set or start failed. It also runs at interpreter exit, and each child
is asked to die with the thread that started it (PR_SET_PDEATHSIG), so a killed test run leaves no server
behind. Start ControlPlane from a long-lived thread (the main thread, normally).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import http.client
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import yaml

from dra_operator.controlplane import build
from dra_operator.controlplane.certs import FRONT_PROXY_CLIENT, ControlPlanePKI, generate_pki, load_ca

_T = TypeVar("_T")
SERVICE_CIDR = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
DEFAULT_START_TIMEOUT = 90.0
_STOP_GRACE = 10.0
_RUN_DIR_PREFIX = "dra-controlplane-"
_OWNER_FILE = "owner.pid"


class ControlPlaneError(RuntimeError):
    """Start-up failed; the message names the component and ends with the tail of its log."""


#: Where free_port looks first: below the kernel's ephemeral range (see free_port).
_LISTEN_PORTS = range(20000, 32768)
#: Every port free_port has handed out in this process, so that it never hands out one twice.
_HANDED_OUT: set[int] = set()


def _ephemeral_ports() -> range:
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return range(32768, 61000)
    return range(low, high + 1)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, for a server started next.

    Not one the OS picks (`bind(0)`): that comes from the ephemeral range, from which every outgoing
    connection takes its source port too, so between our pick and the server's bind a client of the
    control plane could take it (an admission process failed to listen that way: address in use). A random
    port below that range is taken only by another listener.

    Nor one it handed out before: ports picked together (a server's webhook, metrics and health ports) are
    bound later, so a second random draw of the first one would still find it free, and the second server
    to start would fail to listen (an admission process failed that way too)."""
    ephemeral = _ephemeral_ports()
    candidates = [p for p in random.sample(_LISTEN_PORTS, 64) if p not in ephemeral and p not in _HANDED_OUT]
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _sweep_stale_run_dirs() -> None:
    # A run killed with SIGKILL takes its servers along (PR_SET_PDEATHSIG) but cannot remove its directory;
    # remove those whose owner is gone. Directories without an owner file are left alone.
    for directory in Path(tempfile.gettempdir()).glob(f"{_RUN_DIR_PREFIX}*"):
        try:
            owner = int((directory / _OWNER_FILE).read_text())
            os.kill(owner, 0)
        except ProcessLookupError:
            shutil.rmtree(directory, ignore_errors=True)
        except (OSError, ValueError):
            continue


def die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGKILL it when its parent thread dies.
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Component:
    """A child process started by `spawn`: its name, process and log (shared by the control plane and the
    real nodes)."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def spawn(
        cls,
        name: str,
        argv: list[str],
        log: Path,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Component:
        """Start `argv` with its output appended to `log`, in its own process group (so a stop reaches any
        helper it forks), killed by the kernel when the starting thread dies."""
        with log.open("ab") as out:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent,  # only calls prctl(2)
            )
        return cls(name, process, log)

    def exited(self) -> str | None:
        """None while it runs, else what happened with the tail of its log (for an error message)."""
        code = self.process.poll()
        if code is None:
            return None
        return f"{self.name} exited with code {code}; last lines of {self.log}:\n{log_tail(self.log)}"


@dataclass(frozen=True)
class _Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    scheduler: int

    @classmethod
    def pick(cls) -> _Ports:
        ports: set[int] = set()
        while len(ports) < 4:
            ports.add(free_port())
        return cls(*sorted(ports))


class ControlPlane:
    """A local control plane; use as a context manager or call start() and stop()."""

    def __init__(
        self,
        *,
        bin_dir: Path | None = None,
        run_dir: Path | None = None,
        keep_run_dir: bool = False,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        extra_apiserver_args: Sequence[str] = (),
        client_qps: int | None = None,
        verbosity: int = 1,
        version: str = build.K8S_VERSION,
    ) -> None:
        # The Kubernetes release to run (one of build.RELEASES; "1.30" names the matrix's 1.30 patch).
        self.release = build.release(version)
        self._bin_dir = bin_dir
        self._requested_run_dir = run_dir
        self.keep_run_dir = keep_run_dir
        self.start_timeout = start_timeout
        self.extra_apiserver_args = tuple(extra_apiserver_args)
        # Client rate limit of the controller manager and the scheduler (burst twice that); None keeps
        # Kubernetes' defaults (20/s and 50/s), which throttle the built-in DRA controllers under load.
        self.client_qps = client_qps
        self.verbosity = verbosity
        self._components: list[Component] = []
        self._stopped: dict[str, int] = {}  # component stopped by stop_component -> its place in the order
        self._run_dir: Path | None = None
        self._pki: ControlPlanePKI | None = None
        self._ports: _Ports | None = None
        self._ssl: ssl.SSLContext | None = None
        self.startup_seconds: float | None = None

    # ---- public attributes ---------------------------------------------------------------------------------

    @property
    def run_dir(self) -> Path:
        return self._require(self._run_dir)

    @property
    def bin_dir(self) -> Path:
        return self._require(self._bin_dir)

    @property
    def version(self) -> str:
        """The Kubernetes release this control plane runs (v1.X.Y)."""
        return self.release.kubernetes

    @property
    def kubeconfig(self) -> Path:
        return self.run_dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self._require(self._ports).apiserver}"

    @property
    def ca_file(self) -> Path:
        return self._require(self._pki).ca_file

    @property
    def ca_key_file(self) -> Path:
        return self._require(self._pki).ca_key_file

    @property
    def admin_cert_file(self) -> Path:
        return self._require(self._pki).admin_cert_file

    @property
    def admin_key_file(self) -> Path:
        return self._require(self._pki).admin_key_file

    @property
    def running(self) -> bool:
        return bool(self._components) and all(c.process.poll() is None for c in self._components)

    @property
    def stopped(self) -> list[str]:
        """Components stopped by stop_component() and not started again."""
        return sorted(self._stopped)

    @property
    def pids(self) -> dict[str, int]:
        """Process id of each running component, by binary name."""
        return {c.name: c.process.pid for c in self._components}

    @property
    def ports(self) -> dict[str, int]:
        """Every TCP port this control plane listens on, by role."""
        ports = self._ports_()
        return {
            "etcd-client": ports.etcd_client,
            "etcd-peer": ports.etcd_peer,
            "kube-apiserver": ports.apiserver,
            "kube-scheduler": ports.scheduler,
        }

    def check(self) -> None:
        """Raise ControlPlaneError (with the log tail) if a component has exited since start."""
        for component in self._components:
            code = component.process.poll()
            if code is not None:
                raise self._fail(component, f"exited with code {code}")

    def env(self) -> dict[str, str]:
        """Environment for child processes that should talk to this control plane (KUBECONFIG, PATH)."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["KUBECACHEDIR"] = str(self.run_dir / "kubectl-cache")
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env

    # ---- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        if self._components:
            raise ControlPlaneError("control plane already started")
        if self._bin_dir is None:
            self._bin_dir = build.ensure_binaries(version=self.release.kubernetes).bin_dir
        started = time.monotonic()
        atexit.register(self.stop)
        attempts = 3
        for attempt in range(1, attempts + 1):
            try:
                self._start_once()
                break
            except ControlPlaneError as error:
                keep = self.keep_run_dir
                self.keep_run_dir = True  # keep the logs of the failed attempt for the error message's reader
                self.stop()
                self.keep_run_dir = keep
                # Ports are chosen free but not reserved: another session may grab one in between. Retry then.
                if attempt == attempts or "address already in use" not in str(error):
                    raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop_component(self, name: str) -> None:
        """Stop one running component (its process group: SIGTERM, SIGKILL after a grace period)."""
        for index, component in enumerate(self._components):
            if component.name == name:
                terminate(component.process)
                del self._components[index]
                self._stopped[name] = index
                return
        raise ControlPlaneError(f"{name} is not running (running: {', '.join(self.pids) or 'nothing'})")

    def start_component(self, name: str, timeout: float | None = None) -> None:
        """Start a component stop_component() stopped, as it was started (same ports, data, certificates,
        log), and wait until it answers; ControlPlaneError (with its log's tail) if it does not in time."""
        if name not in self._stopped:
            raise ControlPlaneError(f"{name} was not stopped by stop_component()")
        ports = self._ports_()
        args, ready = {
            "etcd": (self._etcd_args, lambda: self._http_ok(ports.etcd_client, "/health", tls=False)),
            "kube-apiserver": (self._apiserver_args, lambda: self._http_ok(ports.apiserver, "/readyz")),
            "kube-controller-manager": (self._controller_manager_args, lambda: True),
            "kube-scheduler": (self._scheduler_args, self._scheduler_ready),
        }[name]
        index = self._stopped.pop(name)
        component = self._spawn(name, args())
        self._components.remove(component)
        self._components.insert(min(index, len(self._components)), component)  # stop() keeps its order
        self._wait(component, time.monotonic() + (timeout or self.start_timeout), ready)

    def restart(self, name: str, timeout: float | None = None) -> None:
        """stop_component(name), then start_component(name)."""
        self.stop_component(name)
        self.start_component(name, timeout)

    def stop(self) -> None:
        """Stop every component (newest first) and remove the run directory; safe to call more than once."""
        atexit.unregister(self.stop)
        for component in reversed(self._components):
            terminate(component.process)
        self._components.clear()
        self._stopped.clear()
        if self._run_dir is not None and not self.keep_run_dir and self._requested_run_dir is None:
            shutil.rmtree(self._run_dir, ignore_errors=True)

    def _start_once(self) -> None:
        if self._requested_run_dir is not None:
            self._run_dir = self._requested_run_dir
            self._run_dir.mkdir(parents=True, exist_ok=True)
            # Every start is a fresh cluster: etcd data of an earlier run would not match the new ports.
            shutil.rmtree(self._run_dir / "etcd", ignore_errors=True)
        else:
            _sweep_stale_run_dirs()
            self._run_dir = Path(tempfile.mkdtemp(prefix=_RUN_DIR_PREFIX))
            (self._run_dir / _OWNER_FILE).write_text(str(os.getpid()))
        self._pki = generate_pki(self._run_dir / "pki")
        self._ports = _Ports.pick()
        self._ssl = _client_ssl(self._pki)
        self._write_kubeconfig()
        deadline = time.monotonic() + self.start_timeout

        etcd = self._spawn("etcd", self._etcd_args())
        self._wait(etcd, deadline, lambda: self._http_ok(self._ports_().etcd_client, "/health", tls=False))
        apiserver = self._spawn("kube-apiserver", self._apiserver_args())
        self._wait(apiserver, deadline, lambda: self._http_ok(self._ports_().apiserver, "/readyz"))
        kcm = self._spawn("kube-controller-manager", self._controller_manager_args())
        scheduler = self._spawn("kube-scheduler", self._scheduler_args())
        self._wait(scheduler, deadline, self._scheduler_ready)
        self._wait_default_service_account(kcm, deadline)

    # ---- component arguments ---------------------------------------------------------------------------

    def _ports_(self) -> _Ports:
        return self._require(self._ports)

    def _etcd_args(self) -> list[str]:
        ports = self._ports_()
        client = f"http://127.0.0.1:{ports.etcd_client}"
        peer = f"http://127.0.0.1:{ports.etcd_peer}"
        return [
            "--name=default",
            f"--data-dir={self.run_dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            # Test data: losing it on a crash is fine, and fsync dominates write latency on a shared disk.
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ]

    def _apiserver_args(self) -> list[str]:
        pki = self._require(self._pki)
        ports = self._ports_()
        return [
            f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports.apiserver}",
            # A loopback advertise address is rejected by the endpoint reconciler; nothing needs the
            # `kubernetes` Service endpoints here, so the reconciler is switched off.
            "--advertise-address=127.0.0.1",
            "--endpoint-reconciler-type=none",
            f"--cert-dir={self.run_dir / 'apiserver'}",
            f"--tls-cert-file={pki.apiserver_cert_file}",
            f"--tls-private-key-file={pki.apiserver_key_file}",
            f"--client-ca-file={pki.ca_file}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki.service_account_pub_file}",
            f"--service-account-signing-key-file={pki.service_account_key_file}",
            "--authorization-mode=Node,RBAC",
            # Front proxy (aggregation layer) as in kubeadm clusters: without it, components that delegate
            # authentication log errors about the missing requestheader CA, and APIServices cannot be served.
            f"--requestheader-client-ca-file={pki.front_proxy_ca_file}",
            f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki.front_proxy_cert_file}",
            f"--proxy-client-key-file={pki.front_proxy_key_file}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # Real kubelets (dra_operator.realnodes): `kubectl logs/exec` reach them with this identity,
            # at the InternalIP they report; without kubelets these flags are inert.
            f"--kubelet-client-certificate={pki.kubelet_client_cert_file}",
            f"--kubelet-client-key={pki.kubelet_client_key_file}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            # Webhooks and APIServices named by Service are called at one of its endpoints' addresses:
            # there is no kube-proxy to make ClusterIPs answer.
            "--enable-aggregator-routing=true",
            "--allow-privileged=true",
            # This plugin taints every new Node not-ready:NoSchedule until node lifecycle (off here, see the
            # controller manager) sees it Ready; fake Nodes would never be schedulable.
            "--disable-admission-plugins=TaintNodesByCondition",
            # Two cores shared with tests: no request queuing or inflight limits to tune or to trip over.
            "--enable-priority-and-fairness=false",
            "--max-requests-inflight=0",
            "--max-mutating-requests-inflight=0",
            "--profiling=false",
            f"--v={self.verbosity}",
            *self.extra_apiserver_args,
        ]

    def _controller_manager_args(self) -> list[str]:
        pki = self._require(self._pki)
        return [
            f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            # No serving endpoint: readiness is judged by what the controllers do, and no port is needed.
            "--secure-port=0",
            # Node lifecycle would taint and evict fake Nodes that have no kubelet heartbeat.
            "--controllers=*,-node-lifecycle-controller",
            f"--service-account-private-key-file={pki.service_account_key_file}",
            f"--root-ca-file={pki.ca_file}",
            f"--cluster-signing-cert-file={pki.ca_file}",
            f"--cluster-signing-key-file={pki.ca_key_file}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allocate-node-cidrs=false",
            *self._client_rate_args(),
            f"--v={self.verbosity}",
        ]

    def _client_rate_args(self) -> list[str]:
        if self.client_qps is None:
            return []
        return [f"--kube-api-qps={self.client_qps}", f"--kube-api-burst={2 * self.client_qps}"]

    def _scheduler_args(self) -> list[str]:
        config = self.run_dir / "kube-scheduler.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    "clientConnection": {
                        "kubeconfig": str(self.kubeconfig),
                        **(
                            {"qps": self.client_qps, "burst": 2 * self.client_qps}
                            if self.client_qps is not None
                            else {}
                        ),
                    },
                    "leaderElection": {"leaderElect": False},
                }
            )
        )
        return [
            f"--config={config}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self._ports_().scheduler}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            f"--v={self.verbosity}",
        ]

    def _write_kubeconfig(self) -> None:
        pki = self._require(self._pki)

        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "dra-operator",
                    "cluster": {"server": self.server, "certificate-authority-data": b64(pki.ca_file)},
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate-data": b64(pki.admin_cert_file),
                        "client-key-data": b64(pki.admin_key_file),
                    },
                }
            ],
            "contexts": [{"name": "dra-operator", "context": {"cluster": "dra-operator", "user": "admin"}}],
            "current-context": "dra-operator",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)

    # ---- processes and readiness -----------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> Component:
        component = Component.spawn(
            name, [str(self.bin_dir / name), *args], self.run_dir / f"{name}.log", cwd=self.run_dir
        )
        self._components.append(component)
        return component

    def _fail(self, component: Component, reason: str) -> ControlPlaneError:
        return ControlPlaneError(
            f"{component.name} {reason}; last lines of {component.log}:\n{log_tail(component.log)}"
        )

    def _wait(self, component: Component, deadline: float, ready: Callable[[], bool]) -> None:
        while True:
            for running in self._components:
                code = running.process.poll()
                if code is not None:
                    raise self._fail(running, f"exited with code {code} during start-up")
            if ready():
                return
            if time.monotonic() > deadline:
                raise self._fail(component, f"not ready after {self.start_timeout:.0f}s")
            time.sleep(0.1)

    def _scheduler_ready(self) -> bool:
        # kube-scheduler serves /readyz (informers synced) from 1.31; 1.30 only has /healthz.
        path = "/readyz" if self.release.minor >= 31 else "/healthz"
        return self._http_ok(self._ports_().scheduler, path, verify=False)

    def _http_ok(self, port: int, path: str, *, tls: bool = True, verify: bool = True) -> bool:
        try:
            status, _ = self._http(port, "GET", path, tls=tls, verify=verify, timeout=2.0)
        except (OSError, http.client.HTTPException):
            return False
        return status == 200

    def _http(
        self,
        port: int,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        tls: bool = True,
        verify: bool = True,
        timeout: float = 30.0,
        content_type: str = "application/json",
    ) -> tuple[int, bytes]:
        conn: http.client.HTTPConnection
        if tls:
            context = self._ssl if verify else _insecure_ssl()
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=timeout)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            headers = {"Accept": "application/json"}
            if body is not None:
                headers["Content-Type"] = content_type
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def _wait_default_service_account(self, kcm: Component, deadline: float) -> None:
        namespace = f"dra-controlplane-ready-{uuid.uuid4().hex[:8]}"
        self.request("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/default"
        self._wait(kcm, deadline, lambda: self._http_ok(self._ports_().apiserver, path))
        # The namespace controller removes it in the background; nothing waits for that.
        self.request("DELETE", f"/api/v1/namespaces/{namespace}")

    # ---- client helpers --------------------------------------------------------------------------------

    def request(
        self, method: str, path: str, body: Any = None, *, content_type: str = "application/json"
    ) -> Any:
        """Call the apiserver as admin; returns the decoded JSON body, raises ApiError on a non-2xx status."""
        payload = None if body is None else json.dumps(body).encode()
        status, data = self._http(self._ports_().apiserver, method, path, payload, content_type=content_type)
        if not 200 <= status < 300:
            try:
                detail = json.loads(data) if data else None
            except ValueError:  # a path outside every served group answers in plain text
                detail = data.decode(errors="replace").strip()
            raise ApiError(status, method, path, detail)
        return json.loads(data) if data else None

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this control plane; raises CalledProcessError (with stderr)."""
        proc = subprocess.run(
            # Discovery cache in the run directory: ~/.kube/cache would collect one entry per random port.
            [
                str(self.bin_dir / "kubectl"),
                f"--kubeconfig={self.kubeconfig}",
                f"--cache-dir={self.run_dir / 'kubectl-cache'}",
                *args,
            ],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
        return proc

    def issue_serving_cert(
        self, directory: Path, name: str, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
    ) -> tuple[Path, Path]:
        """Write `<name>.crt`/`<name>.key` for `hosts`, signed by the cluster CA (ca_file is the caBundle)."""
        directory.mkdir(parents=True, exist_ok=True)
        return load_ca(self.ca_file, self.ca_key_file).write_serving_cert(directory, name, hosts)

    def logs(self, component: str, lines: int = 50) -> str:
        """The last lines of a component's log, e.g. for an assertion message."""
        return log_tail(self.run_dir / f"{component}.log", lines)

    @staticmethod
    def _require(value: _T | None) -> _T:
        if value is None:
            raise ControlPlaneError("control plane not started")
        return value


class ApiError(RuntimeError):
    """A non-2xx answer from the apiserver; `status` and the decoded `body` (a Status object) are kept."""

    def __init__(self, status: int, method: str, path: str, body: Any) -> None:
        message = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.status = status
        self.body = body


def _client_ssl(pki: ControlPlanePKI) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.load_cert_chain(str(pki.admin_cert_file), str(pki.admin_key_file))
    return context


def _insecure_ssl() -> ssl.SSLContext:
    # The scheduler serves /readyz with a self-signed certificate of its own; only liveness is asked of it.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=_STOP_GRACE)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
