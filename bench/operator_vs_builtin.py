"""dra-operator against the built-in DRA of the same control plane (a benchmark, not a test).

One embedded control plane (Kubernetes 1.36: resource.k8s.io/v1 served, kube-scheduler's DynamicResources
plugin and the resourceclaim controller on), N fake Nodes (no kubelet) with 8 GPUs each
(`driver.example.com`, type=gpu, memory 64Gi, one node-local slice and pool per Node). Two scenarios run one
after the other, each in its own namespace with its own DeviceClass, ResourceClaimTemplate and ResourceSlices:

- built-in: resource.k8s.io/v1 objects; the resourceclaim controller creates each Pod's claim from the
  template, kube-scheduler allocates it and binds the Pod;
- dra-operator: the same objects in resource.dra-operator.io/v1 and `dra-operator run` as a subprocess; its
  webhook gates each Pod, the operator creates and allocates the claim and ungates, kube-scheduler binds.

Each creates P Pods (one GPU each, the seed's selector) one after the other from one client, or with
`--clients C` from C concurrent clients (as Kubernetes' scheduler_perf does). Columns:
`create s` the client's P create requests (the operator's webhook answers inside each); `wall s` from the
first create to the last Pod bound (spec.nodeName, seen on a watch); `Pods/s` = P / wall; `p50/p95 ms` per Pod
from just before its create request to its binding seen on the watch (creationTimestamp has only second
resolution); `writes/Pod`: the apiserver's own apiserver_request_total (POST/PUT/PATCH/DELETE/APPLY, any
answer) over placement and release, divided by P, events apart, without the benchmark's own Pod POSTs and
DELETEs and without Lease renewals (time-based, not per Pod); the counters are cluster-wide and nothing else
writes in the window (windows end when the counters stop moving); `cleanup s`: Pods deleted one after the
other (grace 0: no kubelet) until every claim of the namespace is gone; `operator RSS MiB`: VmRSS of the
operator process and its admission process together when ready / peak (VmHWM, each one's) / after cleanup.
Device capacity N x 8 must be at least P, so no Pod waits for a device. After the table, fragmentation: the
nodes none of whose GPUs a claim holds once every Pod is placed (where an 8-GPU Pod still fits); how long the
clean-up's own Pod deletes took, and the CPU seconds each process (the control plane's, the operator's) spent
during the clean-up; the CPU ms per Pod each process spent from the first create to the last Pod bound, and
during the creates each one's time runnable but waiting for a CPU (/proc schedstat); the admission webhook's
latency as the apiserver measures it. `--noop-webhook` also registers bench/noop_webhook.py, which answers
at once with no patch, for our scenario's creates, and shows its latency beside ours: what any webhook pays
under the same load (its calls add to that load, so that run's other figures are not comparable).

Kubernetes' client rate limits (controller manager 20/s, scheduler 50/s) bound the built-in path at these
sizes, and the operator's own (`--kube-api-qps`, 100/s by default) bounds ours; `--client-qps N` raises all
three to N (burst 2N) to show both paths without them (`--operator-qps N` sets ours alone). `--cpu-hog N`
runs N busy processes beside both scenarios, from the first setup to the last clean-up, so both meet the
same load (a machine whose other tenants are busy).

    .venv/bin/python bench/operator_vs_builtin.py [--nodes 20] [--pods 100] [--clients 1] [--client-qps N]
        [--operator-qps N] [--cpu-hog N] [--noop-webhook] [--timeout 180]
"""

from __future__ import annotations

import argparse
import array
import base64
import contextlib
import datetime
import http.client
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dra_operator.controlplane import ApiError, ControlPlane, gpu_slice_manifest, node_manifest, wait_until
from dra_operator.controlplane.launcher import free_port
from dra_operator.operator.local import LocalOperator
from dra_operator.pki import CertificateAuthority, write_pem

ROOT = Path(__file__).resolve().parent.parent
DRIVER = "driver.example.com"
PER_NODE = 8
SELECTOR = (
    f'device.attributes["{DRIVER}"].type == "gpu" && device.capacity["{DRIVER}"].memory == quantity("64Gi")'
)
OUR_WEBHOOK = "pods.resource.dra-operator.io"
NOOP_WEBHOOK = "noop.bench.dra-operator.io"
#: The apiserver's first webhook latency bucket, and issue 14's p50 bar: the share of calls within it.
FAST_WEBHOOK_SECONDS = 0.005
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE", "APPLY")
Json = dict[str, Any]
WriteKey = tuple[str, str, str, str, bool]  # verb, group, resource, subresource, answered non-2xx


@dataclass(frozen=True)
class Flavour:
    """One scenario's API group and the words to print for it."""

    label: str
    api_version: str
    namespace: str

    @property
    def group_path(self) -> str:
        return f"/apis/{self.api_version}"


BUILTIN = Flavour("built-in", "resource.k8s.io/v1", "bench-builtin")
OURS = Flavour("dra-operator", "resource.dra-operator.io/v1", "bench-operator")


@dataclass
class Result:
    flavour: Flavour
    pods: int
    creating: float
    wall: float
    latencies_ms: list[float]
    cleanup: float
    writes: dict[WriteKey, float]
    rss_mib: tuple[float, float, float] | None = None
    webhook_ms: tuple[float, float, float] | None = None  # p50, p99, calls: the apiserver's own histogram
    noop_webhook_ms: tuple[float, float, float] | None = None  # the same for the no-op webhook beside ours
    review_ms: tuple[float, float, float] | None = None  # the same from the operator's finer histogram
    whole_nodes_free: tuple[int, int] = (0, 0)  # nodes whose GPUs no claim holds once all are placed; of all
    deleting: float = 0.0  # of `cleanup`, the benchmark's own Pod deletes (one after the other)
    cleanup_cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by process during the clean-up
    creating_scheduling: dict[str, Scheduling] = field(default_factory=dict)  # by process, during the creates
    placing_scheduling: dict[str, Scheduling] = field(default_factory=dict)  # first create to last bound
    # Of the calls the apiserver measured, the share in its first bucket (<= 5 ms): ours, the no-op's.
    webhook_fast: tuple[float, float | None] | None = None

    @property
    def writes_per_pod(self) -> float:
        return sum(v for k, v in self.writes.items() if not is_event(k)) / self.pods

    @property
    def events_per_pod(self) -> float:
        return sum(v for k, v in self.writes.items() if is_event(k)) / self.pods


def is_event(key: WriteKey) -> bool:
    return key[2] == "events"


# ------------------------------------------------------------------------------------------------ client


class Client:
    """HTTPS to the apiserver as admin, with a streaming watch (ControlPlane.request answers JSON only) and
    creates over kept-alive connections."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.port = int(cp.server.rsplit(":", 1)[1])
        self.context = ssl.create_default_context(cafile=str(cp.ca_file))
        self.context.load_cert_chain(str(cp.admin_cert_file), str(cp.admin_key_file))
        self._local = threading.local()
        self._kept: list[http.client.HTTPSConnection] = []

    def connect(self, timeout: float = 30.0) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context, timeout=timeout)

    def create(self, path: str, body: Json) -> None:
        """POST `body` over the calling thread's own connection, kept alive between requests as client-go
        keeps its connections (a handshake per create would load the apiserver with work no real client
        causes); raises ApiError on a non-2xx answer. A connection found closed is opened again once; a create
        that landed before its connection broke answers 409 then, which counts as created."""
        payload = json.dumps(body).encode()
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        for retry in (False, True):
            conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = self.connect()
                self._kept.append(conn)
            try:
                conn.request("POST", path, body=payload, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if retry:
                    raise
                continue
            if 200 <= response.status < 300 or (retry and response.status == 409):
                return
            raise ApiError(response.status, "POST", path, json.loads(data) if data else None)

    def close(self) -> None:
        """Close the connections `create` kept (each thread's)."""
        for conn in self._kept:
            conn.close()
        self._kept.clear()

    def metrics(self) -> str:
        conn = self.connect()
        try:
            conn.request("GET", "/metrics")
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    def webhook_buckets(self, webhook: str = OUR_WEBHOOK) -> dict[float, float]:
        """The apiserver's own apiserver_admission_webhook_admission_duration_seconds for `webhook` (mutating,
        CREATE): upper bound -> cumulative count."""
        prefix = "apiserver_admission_webhook_admission_duration_seconds_bucket{"
        buckets: dict[float, float] = {}
        for line in self.metrics().splitlines():
            if not line.startswith(prefix):
                continue
            labels_text, _, value = line.rpartition(" ")
            labels = dict(
                (k, v.strip('"'))
                for k, _, v in (item.partition("=") for item in labels_text[len(prefix) : -1].split(","))
            )
            if labels.get("name") == webhook and labels.get("operation") == "CREATE":
                bound = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + float(value)
        return buckets

    def writes(self) -> dict[WriteKey, float]:
        """apiserver_request_total summed by (verb, group, resource, subresource), write verbs only."""
        text = self.metrics()
        totals: dict[WriteKey, float] = {}
        prefix = "apiserver_request_total{"
        for line in text.splitlines():
            if not line.startswith(prefix):
                continue
            labels_text, _, value = line.rpartition(" ")
            labels = {
                k: v.strip('"')
                for k, _, v in (item.partition("=") for item in labels_text[len(prefix) : -1].split(","))
            }
            if labels.get("verb") in WRITE_VERBS:
                key = (
                    labels["verb"],
                    labels.get("group", ""),
                    labels.get("resource", ""),
                    labels.get("subresource", ""),
                    not labels.get("code", "").startswith("2"),
                )
                totals[key] = totals.get(key, 0.0) + float(value)
        return totals


class BindingWatch:
    """Watches a namespace's Pods and notes when each is first seen with spec.nodeName set; when the API
    server ends the watch (its timeout), it resumes from the last resourceVersion seen, or lists again when
    that version has expired."""

    def __init__(self, client: Client, namespace: str) -> None:
        self.bound: dict[str, float] = {}
        self.client = client
        self.path = f"/api/v1/namespaces/{namespace}/pods"
        self.rv = self._list()
        self.error: BaseException | None = None
        self.closing = False
        self._open()
        self.thread = threading.Thread(target=self._run, name=f"watch-{namespace}", daemon=True)
        self.thread.start()

    def _list(self) -> str:
        listed = self.client.cp.request("GET", self.path)
        seen = time.monotonic()
        for obj in listed.get("items") or []:
            if (obj.get("spec") or {}).get("nodeName"):
                self.bound.setdefault(obj["metadata"]["name"], seen)
        return str(listed["metadata"]["resourceVersion"])

    def _open(self) -> None:
        self.conn = self.client.connect(timeout=600)
        self.conn.request("GET", f"{self.path}?watch=1&resourceVersion={self.rv}&allowWatchBookmarks=true")
        self.response = self.conn.getresponse()
        if self.response.status != 200:
            raise RuntimeError(f"watch {self.path}: HTTP {self.response.status}")

    def _run(self) -> None:
        try:
            while not self.closing:
                while line := self.response.readline():
                    seen = time.monotonic()
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":  # 410 Gone: the version expired; list again
                        self.rv = self._list()
                        break
                    self.rv = str((obj.get("metadata") or {}).get("resourceVersion") or self.rv)
                    if event.get("type") in ("ADDED", "MODIFIED") and (obj.get("spec") or {}).get("nodeName"):
                        self.bound.setdefault(obj["metadata"]["name"], seen)
                if not self.closing:
                    self.conn.close()
                    self._open()
        except Exception as error:  # http.client fails in several ways on a socket shut down under it
            if not self.closing:
                self.error = error

    def close(self) -> None:
        # Unblocks the reader: shutting the socket down ends its readline().
        self.closing = True
        with contextlib.suppress(OSError):
            if self.conn.sock is not None:
                self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()
        self.thread.join(timeout=10)


# ------------------------------------------------------------------------------------------------ objects


def device_class(flavour: Flavour) -> Json:
    return {
        "apiVersion": flavour.api_version,
        "kind": "DeviceClass",
        "metadata": {"name": f"{flavour.namespace}-gpu"},
        "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]},
    }


def resource_slice(flavour: Flavour, node: str) -> Json:
    return gpu_slice_manifest(
        node,
        {f"gpu-{i}": "64Gi" for i in range(PER_NODE)},
        driver=DRIVER,
        api_version=flavour.api_version,
        name=f"{flavour.namespace}-{node}",
    )


def claim_template(flavour: Flavour) -> Json:
    request = {
        "name": "gpu",
        "exactly": {
            "deviceClassName": f"{flavour.namespace}-gpu",
            "selectors": [{"cel": {"expression": SELECTOR}}],
        },
    }
    return {
        "apiVersion": flavour.api_version,
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": "gpu"},
        "spec": {"spec": {"devices": {"requests": [request]}}},
    }


def pod(name: str) -> Json:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "main",
                    "image": "registry.invalid/noop:1",
                    "resources": {"claims": [{"name": "gpu"}]},
                }
            ],
            "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": "gpu"}],
        },
    }


# ------------------------------------------------------------------------------------------------ operator


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants still running (the operator and its admission process)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except FileNotFoundError:
            continue  # ended meanwhile
        found.append(current)
        pending.extend(int(child) for child in children)
    return found


@dataclass(frozen=True)
class Scheduling:
    """What the kernel's scheduler says of a process's threads (/proc/PID/task/*/schedstat), in seconds:
    time on a CPU, time runnable but waiting for one, and how many times it was put on a CPU."""

    on_cpu: float = 0.0
    waiting: float = 0.0
    runs: int = 0

    def __sub__(self, other: Scheduling) -> Scheduling:
        return Scheduling(self.on_cpu - other.on_cpu, self.waiting - other.waiting, self.runs - other.runs)


def scheduling(pids: list[int]) -> Scheduling:
    """`Scheduling` summed over every thread of `pids` (threads that ended meanwhile drop out of the sum)."""
    on_cpu = waiting = runs = 0
    for pid in pids:
        for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            try:
                cpu_ns, wait_ns, count = (int(v) for v in stat.read_text().split())
            except (FileNotFoundError, ProcessLookupError):
                continue
            on_cpu, waiting, runs = on_cpu + cpu_ns, waiting + wait_ns, runs + count
    return Scheduling(on_cpu / 1e9, waiting / 1e9, runs)


def cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and its descendants (the operator's admission process) so far."""
    return scheduling(process_tree(pid)).on_cpu


def memory_mib(pid: int, field_name: str = "VmRSS") -> float:
    """`field_name` of /proc/PID/status summed over the process and its descendants (the operator's admission
    process), in MiB. For VmHWM the sum of each one's peak. A page both processes map (the shared libraries
    both load) counts twice; `pages_once_mib` counts it once."""
    total = 0
    for current in process_tree(pid):
        try:
            status = Path(f"/proc/{current}/status").read_text().splitlines()
        except FileNotFoundError:
            continue
        found = [line for line in status if line.startswith(field_name + ":")]
        if not found:
            raise RuntimeError(f"{field_name} not in /proc/{current}/status")
        total += int(found[0].split()[1])  # kB
    return total / 1024


PAGE = os.sysconf("SC_PAGE_SIZE")
_PRESENT = 1 << 63
_FRAME = (1 << 55) - 1


def pages_once_mib(pid: int) -> float | None:
    """The distinct physical pages that the process and its descendants map, each counted once, in MiB: the
    memory they hold together, as a memory cgroup holding just them charges it (page cache they do not map
    aside). From each mapping's frame numbers in /proc/PID/pagemap; None where the kernel hides those (they
    read as 0 without CAP_SYS_ADMIN)."""
    frames: set[int] = set()
    present = 0
    for current in process_tree(pid):
        try:
            maps = Path(f"/proc/{current}/maps").read_text().splitlines()
            fd = os.open(f"/proc/{current}/pagemap", os.O_RDONLY)
        except (FileNotFoundError, ProcessLookupError):
            continue
        try:
            for line in maps:
                start, end = (int(bound, 16) for bound in line.split(None, 1)[0].split("-"))
                if line.endswith("[vsyscall]"):
                    continue  # outside the process's page tables
                data = os.pread(fd, (end - start) // PAGE * 8, start // PAGE * 8)
                entries = array.array("Q", data)
                mapped = [entry & _FRAME for entry in entries if entry & _PRESENT]
                present += len(mapped)
                frames.update(mapped)
        finally:
            os.close(fd)
    if present and frames <= {0}:
        return None
    return len(frames) * PAGE / 2**20


# ------------------------------------------------------------------------------------------------ scenario


@dataclass
class Bench:
    cp: ControlPlane
    client: Client
    nodes: list[str]
    pods: int
    timeout: float
    clients: int = 1
    noop_webhook: bool = False  # whether the no-op webhook answers inside our scenario's creates too
    profile_dir: Path | None = None  # where kube-apiserver's CPU profiles of placement and clean-up go
    profile_seconds: int = 20
    log: Callable[[str], None] = field(default=print)

    def setup(self, flavour: Flavour) -> None:
        self.cp.request("POST", "/api/v1/namespaces", {"metadata": {"name": flavour.namespace}})
        # Pods are refused until the namespace's default ServiceAccount exists.
        wait_until(
            lambda: self.cp.request("GET", f"/api/v1/namespaces/{flavour.namespace}/serviceaccounts/default"),
            timeout=60,
            message=f"the default ServiceAccount of {flavour.namespace}",
        )
        group = flavour.group_path
        self.cp.request("POST", f"{group}/deviceclasses", device_class(flavour))
        for node in self.nodes:
            self.cp.request("POST", f"{group}/resourceslices", resource_slice(flavour, node))
        self.cp.request(
            "POST", f"{group}/namespaces/{flavour.namespace}/resourceclaimtemplates", claim_template(flavour)
        )

    def teardown(self, flavour: Flavour) -> None:
        group = flavour.group_path
        self.cp.request("DELETE", f"{group}/namespaces/{flavour.namespace}/resourceclaimtemplates/gpu")
        for node in self.nodes:
            self.cp.request("DELETE", f"{group}/resourceslices/{flavour.namespace}-{node}")
        self.cp.request("DELETE", f"{group}/deviceclasses/{flavour.namespace}-gpu")

    def claims(self, flavour: Flavour) -> list[Json]:
        items: list[Json] = self.cp.request(
            "GET", f"{flavour.group_path}/namespaces/{flavour.namespace}/resourceclaims"
        )["items"]
        return items

    def quiet_writes(self) -> dict[WriteKey, float]:
        """The write counters once they stop moving (trailing status updates and batched events are in)."""
        previous: list[dict[WriteKey, float]] = [self.client.writes()]

        def settled() -> dict[WriteKey, float]:
            # Sampled once a second (the interval is what "quiet" means, not a wait for an outcome): two equal
            # scrapes in a row, leases aside, mean nothing is in flight. An empty answer means "not yet".
            time.sleep(1.0)
            now = self.client.writes()
            same = without_leases(now) == without_leases(previous[-1])
            previous.append(now)
            return now if same else {}

        return wait_until(settled, timeout=30, message="the apiserver's writes to settle")

    def run(self, flavour: Flavour, operator: LocalOperator | None) -> Result:
        ns = flavour.namespace
        pods_path = f"/api/v1/namespaces/{ns}/pods"
        watch = BindingWatch(self.client, ns)
        rss_before = memory_mib(operator.pid) if operator else 0.0
        before = self.quiet_writes()
        hooks_before = self.client.webhook_buckets() if operator else {}
        noop_before = self.client.webhook_buckets(NOOP_WEBHOOK) if operator and self.noop_webhook else {}
        reviews_before = review_buckets(operator) if operator else {}
        scheduled = self.scheduled_processes(operator)
        scheduling_before = {name: scheduling(pids) for name, pids in scheduled.items()}
        created: dict[str, float] = {}
        profiler = self.profile(f"{flavour.namespace}-placement")
        try:

            def create(index: int) -> None:
                name = f"p{index:04}"
                created[name] = time.monotonic()
                self.client.create(pods_path, pod(name))

            if self.clients > 1:  # each client keeps a connection of its own: they do not share one
                with ThreadPoolExecutor(self.clients) as pool:
                    list(pool.map(create, range(self.pods)))
            else:
                for index in range(self.pods):
                    create(index)
            self.client.close()
            creating = time.monotonic() - min(created.values())
            creating_scheduling = {
                name: scheduling(pids) - scheduling_before[name] for name, pids in scheduled.items()
            }
            hooks_after = self.client.webhook_buckets() if operator else {}
            noop_after = self.client.webhook_buckets(NOOP_WEBHOOK) if operator and self.noop_webhook else {}

            def all_bound() -> bool:
                if watch.error is not None:
                    raise RuntimeError(f"watch failed: {watch.error}")
                return len(watch.bound) >= self.pods

            try:
                wait_until(
                    all_bound, timeout=self.timeout, message=f"{self.pods} Pods bound ({flavour.label})"
                )
            except TimeoutError:
                self.log(self.diagnose(flavour, operator, set(created) - set(watch.bound)))
                raise
            placing_scheduling = {
                name: scheduling(pids) - scheduling_before[name] for name, pids in scheduled.items()
            }
        finally:
            watch.close()
            if profiler is not None:
                profiler.join()
        # The admission process reports each review to the operator, whose loop may still be busy with the
        # burst when the last create returns: read its count once every Pod is placed.
        reviews_after = review_buckets(operator) if operator else {}
        first = min(created.values())
        wall = max(watch.bound.values()) - first
        latencies = [(watch.bound[name] - created[name]) * 1000 for name in created]
        rss_peak = memory_mib(operator.pid, "VmHWM") if operator else 0.0
        whole_free = (len(set(self.nodes) - nodes_in_use(self.claims(flavour))), len(self.nodes))

        processes = {**self.cp.pids, **({"dra-operator": operator.pid} if operator else {})}
        cpu_before = {name: cpu_seconds(pid) for name, pid in processes.items()}
        profiler = self.profile(f"{flavour.namespace}-cleanup")
        started = time.monotonic()
        options = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0}
        for name in created:
            self.cp.request("DELETE", f"{pods_path}/{name}", options)
        deleting = time.monotonic() - started
        wait_until(
            lambda: not self.cp.request("GET", pods_path)["items"] and not self.claims(flavour),
            timeout=self.timeout,
            message=f"Pods and claims of {ns} to be gone",
        )
        cleanup = time.monotonic() - started
        cleanup_cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in processes.items()}
        if profiler is not None:
            profiler.join()
        released = self.quiet_writes()
        rss_after = memory_mib(operator.pid) if operator else 0.0

        writes = {k: v - before.get(k, 0.0) for k, v in without_leases(released).items()}
        # The benchmark's own requests: one POST and one DELETE per Pod, the same in both scenarios.
        for own in (("POST", "", "pods", "", False), ("DELETE", "", "pods", "", False)):
            writes[own] = writes.get(own, 0.0) - self.pods
        writes = {k: v for k, v in writes.items() if v}
        rss = (rss_before, rss_peak, rss_after) if operator else None
        webhook = reviews = noop = fast = None
        if operator:
            p50, calls = bucket_quantile(hooks_before, hooks_after, 0.50)
            p99, _ = bucket_quantile(hooks_before, hooks_after, 0.99)
            webhook = (p50, p99, calls)
            p50, calls = bucket_quantile(reviews_before, reviews_after, 0.50)
            p99, _ = bucket_quantile(reviews_before, reviews_after, 0.99)
            reviews = (p50, p99, calls)
            fast = (
                bucket_share(hooks_before, hooks_after, FAST_WEBHOOK_SECONDS),
                bucket_share(noop_before, noop_after, FAST_WEBHOOK_SECONDS) if noop_after else None,
            )
        if noop_after:
            p50, calls = bucket_quantile(noop_before, noop_after, 0.50)
            p99, _ = bucket_quantile(noop_before, noop_after, 0.99)
            noop = (p50, p99, calls)
        return Result(
            flavour,
            self.pods,
            creating,
            wall,
            latencies,
            cleanup,
            writes,
            rss,
            webhook,
            noop,
            reviews,
            whole_free,
            deleting,
            cleanup_cpu,
            creating_scheduling,
            placing_scheduling,
            webhook_fast=fast,
        )

    def profile(self, name: str) -> threading.Thread | None:
        """Start kube-apiserver's own CPU profile (/debug/pprof/profile) of the next `profile_seconds`,
        written to `profile_dir`/`name`.pprof when it ends (read it with `go tool pprof -top`)."""
        if self.profile_dir is None:
            return None
        target = self.profile_dir / f"{name}.pprof"

        def fetch() -> None:
            conn = self.client.connect(timeout=self.profile_seconds + 60)
            try:
                conn.request("GET", f"/debug/pprof/profile?seconds={self.profile_seconds}")
                target.write_bytes(conn.getresponse().read())
            finally:
                conn.close()

        thread = threading.Thread(target=fetch, name="apiserver-profile", daemon=True)
        thread.start()
        return thread

    def scheduled_processes(self, operator: LocalOperator | None) -> dict[str, list[int]]:
        """The processes whose scheduling the creates' figures show: the control plane's, the operator's
        main process and its admission process (the one that answers inside each create)."""
        found = {name: [pid] for name, pid in self.cp.pids.items()}
        if operator:
            found["dra-operator"] = [operator.pid]
            found["its admission process"] = process_tree(operator.pid)[1:]
        return found

    def diagnose(self, flavour: Flavour, operator: LocalOperator | None, unbound: set[str]) -> str:
        """Why Pods were not bound: one of them, its claim(s), events, and the operator's log tail."""
        ns = flavour.namespace
        name = sorted(unbound)[0]
        lines = [f"{len(unbound)} Pods not bound, e.g. {name}:"]
        with contextlib.suppress(ApiError):
            p = self.cp.request("GET", f"/api/v1/namespaces/{ns}/pods/{name}")
            lines.append(
                json.dumps(
                    {"spec.schedulingGates": p["spec"].get("schedulingGates"), "status": p.get("status")}
                )
            )
        for claim in self.claims(flavour)[:2]:
            lines.append(json.dumps({"claim": claim["metadata"]["name"], "status": claim.get("status")}))
        for event in self.cp.request("GET", f"/api/v1/namespaces/{ns}/events")["items"][-8:]:
            lines.append(
                f"event {event['involvedObject'].get('name')}: {event.get('reason')}: {event.get('message')}"
            )
        lines.append(self.cp.logs("kube-scheduler", 15))
        if operator:
            lines.append(operator.log())
        return "\n".join(lines)


def nodes_in_use(claims: list[Json]) -> set[str]:
    """The nodes holding an allocated device (each node's slice is its own pool, named after it)."""
    used = set()
    for claim in claims:
        allocation = (claim.get("status") or {}).get("allocation") or {}
        for result in (allocation.get("devices") or {}).get("results") or []:
            used.add(str(result.get("pool")))
    return used


def without_leases(writes: dict[WriteKey, float]) -> dict[WriteKey, float]:
    return {k: v for k, v in writes.items() if k[2] != "leases"}


# ------------------------------------------------------------------------------------------------ report


def review_buckets(operator: LocalOperator) -> dict[float, float]:
    """dra_operator_admission_review_seconds of mutate-pods, the operator's own: upper bound -> count."""
    prefix = "dra_operator_admission_review_seconds_bucket{"
    buckets: dict[float, float] = {}
    for key, value in operator.metrics().items():
        if not key.startswith(prefix):
            continue
        labels = dict(item.split("=", 1) for item in key[len(prefix) : -1].split(","))
        if labels.get("path") == '"mutate-pods"':
            bound = labels["le"].strip('"')
            buckets[float("inf") if bound == "+Inf" else float(bound)] = value
    return buckets


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> tuple[float, float]:
    """(quantile in ms, observations) of a histogram's growth, interpolated within its bucket as Prometheus'
    histogram_quantile does; the apiserver's buckets are coarse (5, 25, 100 ms, ...), so is the answer."""
    grown = sorted((bound, after[bound] - before.get(bound, 0.0)) for bound in after)
    total = grown[-1][1] if grown else 0.0
    if not total:
        return float("nan"), 0.0
    rank, lower, below = q * total, 0.0, 0.0
    for bound, cumulative in grown:
        if cumulative >= rank:
            if bound == float("inf"):
                return lower * 1000, total
            return (lower + (bound - lower) * (rank - below) / max(cumulative - below, 1e-9)) * 1000, total
        lower, below = bound, cumulative
    return lower * 1000, total


def bucket_share(before: dict[float, float], after: dict[float, float], bound: float) -> float:
    """The share of a histogram's growth at or under `bound` (one of its bucket bounds)."""
    total = after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0)
    return (after.get(bound, 0.0) - before.get(bound, 0.0)) / total if total else float("nan")


def percentile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]
    )


def row(cells: list[str], widths: list[int]) -> str:
    return " | ".join(
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


def webhook_lines(ours: Result) -> list[str]:
    """The admission figures of our scenario: the apiserver's, the no-op webhook's, our own."""
    lines: list[str] = []
    if ours.webhook_ms is not None:
        p50, p99, calls = ours.webhook_ms
        lines += [
            f"admission webhook latency as the apiserver measures it (apiserver_admission_webhook_admission_"
            f"duration_seconds, pods.resource.dra-operator.io, CREATE, {calls:.0f} calls): p50 {p50:.1f} ms, "
            f"p99 {p99:.1f} ms (interpolated in the apiserver's buckets 5/25/100/500 ms ...)",
        ]
    if ours.noop_webhook_ms is not None:
        p50, p99, calls = ours.noop_webhook_ms
        lines.append(
            f"a no-op webhook beside ours, the same way ({NOOP_WEBHOOK}, {calls:.0f} calls: it answers "
            f"`allowed` at once, with no patch): p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        )
    if ours.webhook_fast is not None:
        mine, noop = ours.webhook_fast
        lines.append(
            f"calls within {FAST_WEBHOOK_SECONDS * 1000:.0f} ms (the apiserver's first bucket; a p50 in it "
            f"needs over half): ours {100 * mine:.1f} %"
            + ("" if noop is None else f", the no-op webhook's {100 * noop:.1f} %")
        )
    if ours.review_ms is not None:
        p50, p99, calls = ours.review_ms
        lines.append(
            "the operator's own answer time (dra_operator_admission_review_seconds, mutate-pods, "
            f"{calls:.0f} reviews, request read to answer built): p50 {p50:.2f} ms, p99 {p99:.2f} ms"
        )
    return lines


def cpu_per_pod_line(r: Result) -> str:
    used = {name: 1000 * s.on_cpu / r.pods for name, s in r.placing_scheduling.items()}
    return (
        f"CPU ms per Pod from {r.flavour.label}'s first create to its last Pod bound: "
        + ", ".join(f"{name} {ms:.1f}" for name, ms in used.items())
        + f"; all {sum(used.values()):.1f}"
    )


def report_ours(ours: Result) -> str:
    """`--ours-only`: our scenario's own figures, no ratio (nothing ran beside it)."""
    lines = [
        f"dra-operator alone (--ours-only, no ratio): {ours.pods} Pods, create {ours.creating:.2f} s, wall "
        f"{ours.wall:.2f} s, {ours.pods / ours.wall:.1f} Pods/s, p50 {percentile(ours.latencies_ms, 50):.0f} "
        f"ms, p95 {percentile(ours.latencies_ms, 95):.0f} ms, writes/Pod {ours.writes_per_pod:.2f}, "
        f"clean-up {ours.cleanup:.2f} s",
        cpu_per_pod_line(ours),
        "",
        *webhook_lines(ours),
        "",
        "writes per Pod by kind (in brackets: of those, answered non-2xx):",
    ]
    for kind in sorted({k[:4] for k in ours.writes}, key=lambda k: (k[2], k[3], k[0])):
        lines.append(f"  {kind_name(kind)}: {by_kind(ours, kind)}")
    return "\n".join(lines)


def report(builtin: Result, ours: Result) -> str:
    header = [
        "scenario",
        "Pods",
        "create s",
        "wall s",
        "Pods/s",
        "p50 ms",
        "p95 ms",
        "writes/Pod",
        "events/Pod",
        "cleanup s",
        "operator RSS MiB",
    ]

    def cells(r: Result) -> list[str]:
        rss = "-" if r.rss_mib is None else "/".join(f"{v:.0f}" for v in r.rss_mib)
        return [
            r.flavour.label,
            str(r.pods),
            f"{r.creating:.2f}",
            f"{r.wall:.2f}",
            f"{r.pods / r.wall:.1f}",
            f"{percentile(r.latencies_ms, 50):.0f}",
            f"{percentile(r.latencies_ms, 95):.0f}",
            f"{r.writes_per_pod:.2f}",
            f"{r.events_per_pod:.2f}",
            f"{r.cleanup:.2f}",
            rss,
        ]

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else "-"

    ratios = [
        "ratio ours/built-in",
        "",
        ratio(ours.creating, builtin.creating),
        ratio(ours.wall, builtin.wall),
        ratio(ours.pods / ours.wall, builtin.pods / builtin.wall),
        ratio(percentile(ours.latencies_ms, 50), percentile(builtin.latencies_ms, 50)),
        ratio(percentile(ours.latencies_ms, 95), percentile(builtin.latencies_ms, 95)),
        ratio(ours.writes_per_pod, builtin.writes_per_pod),
        ratio(ours.events_per_pod, builtin.events_per_pod),
        ratio(ours.cleanup, builtin.cleanup),
        "",
    ]
    table = [header, cells(builtin), cells(ours), ratios]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = [row(table[0], widths), "-+-".join("-" * w for w in widths)]
    lines += [row(r, widths) for r in table[1:]]

    lines += [
        "",
        "fragmentation once every Pod is placed: whole nodes left free (where an 8-GPU Pod still fits): "
        f"built-in {builtin.whole_nodes_free[0]} of {builtin.whole_nodes_free[1]}, dra-operator "
        f"{ours.whole_nodes_free[0]} of {ours.whole_nodes_free[1]} (placement policy binpack, the default)",
        "",
        f"clean-up: the benchmark's own {ours.pods} Pod deletes took {builtin.deleting:.2f} s (built-in) and "
        f"{ours.deleting:.2f} s (dra-operator), one after the other; the rest is the wait for every claim to "
        "be gone; CPU seconds spent meanwhile: "
        + "; ".join(
            f"{r.flavour.label}: " + ", ".join(f"{name} {cpu:.1f}" for name, cpu in r.cleanup_cpu.items())
            for r in (builtin, ours)
        ),
    ]
    lines += [cpu_per_pod_line(r) for r in (builtin, ours)]
    for r in (builtin, ours):
        lines.append(
            f"during {r.flavour.label}'s creates ({r.creating:.1f} s), CPU seconds / seconds runnable but "
            "waiting for a CPU / the mean wait each time the kernel put a thread on a CPU: "
            + ", ".join(
                f"{name} {s.on_cpu:.1f} / {s.waiting:.1f} / {1000 * s.waiting / max(s.runs, 1):.2f} ms"
                for name, s in r.creating_scheduling.items()
            )
        )
    lines += ["", *webhook_lines(ours)]
    lines += [
        "",
        "writes per Pod by kind, placement + release (in brackets: of those, answered non-2xx, e.g. 409),",
        "the benchmark's own Pod POST/DELETE and Lease renewals are not counted:",
    ]
    kinds = sorted(
        {k[:4] for k in (*builtin.writes, *ours.writes)}, key=lambda k: (k[2] == "events", k[2], k[3], k[0])
    )
    table = [["kind", builtin.flavour.label, ours.flavour.label]]
    for kind in kinds:
        table.append([kind_name(kind), *(by_kind(r, kind) for r in (builtin, ours))])
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    lines += ["  " + row(r, widths) for r in table]
    return "\n".join(lines)


def kind_name(kind: tuple[str, str, str, str]) -> str:
    """`VERB resource[/subresource] (group)`."""
    verb, group, resource, subresource = kind
    return f"{verb} {resource}{'/' + subresource if subresource else ''}" + (f" ({group})" if group else "")


def by_kind(result: Result, kind: tuple[str, str, str, str]) -> str:
    total = sum(v for k, v in result.writes.items() if k[:4] == kind) / result.pods
    failed = result.writes.get((*kind, True), 0.0) / result.pods
    if not total:
        return "-"
    return f"{total:.2f}" + (f" ({failed:.2f})" if failed else "")


# ------------------------------------------------------------------------------------------------ main


@contextlib.contextmanager
def stage(what: str) -> Iterator[None]:
    started = time.monotonic()
    print(f"... {what}", flush=True)
    yield
    print(f"    done in {time.monotonic() - started:.1f}s", flush=True)


@contextlib.contextmanager
def cpu_hog(processes: int) -> Iterator[None]:
    """`processes` busy loops (each takes a core when it can), stopped however the block ends."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


@contextlib.contextmanager
def noop_webhook(cp: ControlPlane, directory: Path, namespace: str) -> Iterator[None]:
    """bench/noop_webhook.py running, and registered for the Pod creates of `namespace` (before ours: the
    apiserver calls configurations in name order, and a webhook that mutates nothing makes no other run
    again)."""
    ca = CertificateAuthority.create("bench-noop-ca", datetime.timedelta(days=1))
    cert, key = ca.issue("bench-noop", hosts=("127.0.0.1",), server=True)
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "noop_webhook.py"),
            f"--port={port}",
            f"--cert={write_pem(directory / 'noop.crt', cert)}",
            f"--key={write_pem(directory / 'noop.key', key, private=True)}",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    path = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "listening":
            raise RuntimeError(f"bench/noop_webhook.py did not start (exit {server.wait()})")
        webhook = {
            "name": NOOP_WEBHOOK,
            "clientConfig": {
                "url": f"https://127.0.0.1:{port}/",
                "caBundle": base64.b64encode(ca.cert_pem).decode(),
            },
            "rules": [
                {"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}
            ],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 10,
        }
        cp.request("POST", path, {"metadata": {"name": "bench-noop"}, "webhooks": [webhook]})
        yield
    finally:
        with contextlib.suppress(ApiError):
            cp.request("DELETE", f"{path}/bench-noop")
        server.kill()
        server.wait()


def wait_for_webhook(cp: ControlPlane, client: Client, namespace: str, webhook: str) -> None:
    """Until the apiserver calls `webhook` for a Pod create in `namespace` (its configuration takes effect
    asynchronously), tried with dry-run creates of a Pod without claims."""
    probe = {
        **pod("noop-probe"),
        "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]},
    }

    def called() -> bool:
        cp.request("POST", f"/api/v1/namespaces/{namespace}/pods?dryRun=All", probe)
        return sum(client.webhook_buckets(webhook).values()) > 0

    wait_until(called, timeout=30, message=f"the apiserver to call {webhook}")


def operator_limits(args: argparse.Namespace) -> list[str]:
    """The operator's client rate limit (burst twice that): lifted with both sides' under --client-qps."""
    qps = args.operator_qps if args.operator_qps is not None else args.client_qps
    return [] if qps is None else [f"--kube-api-qps={qps:g}"]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=20, help="fake Nodes, 8 GPUs each (default 20)")
    parser.add_argument("--pods", type=int, default=100, help="Pods per scenario, one GPU each (default 100)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for placement/cleanup")
    parser.add_argument("--clients", type=int, default=1, help="concurrent creating clients (default 1)")
    parser.add_argument("--workers", type=int, default=None, help="operator --workers (default: its own)")
    parser.add_argument(
        "--operator-qps",
        type=float,
        default=None,
        help="operator --kube-api-qps, burst twice that (default: --client-qps if given, else its own)",
    )
    parser.add_argument(
        "--client-qps",
        type=int,
        default=None,
        help="client rate limit of kube-controller-manager and kube-scheduler (burst twice that); "
        "default: Kubernetes' own, 20/30 and 50/100",
    )
    parser.add_argument(
        "--cpu-hog", type=int, default=0, help="busy processes beside both scenarios (default 0: none)"
    )
    parser.add_argument(
        "--noop-webhook",
        action="store_true",
        help="a webhook that answers at once (bench/noop_webhook.py) inside our scenario's creates too, "
        "its latency shown beside ours: the floor of any webhook's under the same load",
    )
    parser.add_argument(
        "--ours-only",
        action="store_true",
        help="run dra-operator's scenario alone and print its own figures (no ratio): for iterating on the "
        "webhook's latency without waiting for the built-in path",
    )
    parser.add_argument(
        "--apiserver-profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="write kube-apiserver's CPU profile of the first --profile-seconds of each scenario's placement "
        "(from the first create) and clean-up (from the first delete) to DIR/<namespace>-<phase>.pprof",
    )
    parser.add_argument("--profile-seconds", type=int, default=20, help="length of each profile (default 20)")
    args = parser.parse_args()
    if args.apiserver_profile:
        args.apiserver_profile.mkdir(parents=True, exist_ok=True)
    capacity = args.nodes * PER_NODE
    if capacity < args.pods:
        parser.error(f"{args.nodes} nodes x {PER_NODE} GPUs = {capacity} < {args.pods} Pods: Pods would wait")

    # The test control plane runs kube-apiserver with --profiling=false; the last flag given wins.
    profiling = ["--profiling=true"] if args.apiserver_profile else []
    plane = ControlPlane(client_qps=args.client_qps, extra_apiserver_args=profiling)
    with (
        plane as cp,
        tempfile.TemporaryDirectory(prefix="bench-operator-") as tmp,
        contextlib.ExitStack() as load,
    ):
        print(f"control plane up in {cp.startup_seconds:.1f}s; binaries {cp.bin_dir}", flush=True)
        client = Client(cp)
        nodes = [f"bench-node-{i:03}" for i in range(args.nodes)]
        with stage(f"{args.nodes} fake Nodes and the CRDs"):
            for node in nodes:
                cp.request("POST", "/api/v1/nodes", node_manifest(node))
            cp.kubectl("apply", "-f", str(ROOT / "crds"))
            cp.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
            # The control plane's start-up probe namespace is being deleted: not our writes to count.
            wait_until(
                lambda: all(
                    (n.get("status") or {}).get("phase") != "Terminating"
                    for n in cp.request("GET", "/api/v1/namespaces")["items"]
                ),
                timeout=120,
                message="no namespace terminating",
            )
        bench = Bench(
            cp,
            client,
            nodes,
            args.pods,
            args.timeout,
            clients=args.clients,
            noop_webhook=args.noop_webhook,
            profile_dir=args.apiserver_profile,
            profile_seconds=args.profile_seconds,
        )
        load.enter_context(cpu_hog(args.cpu_hog))  # from here to the end of the last clean-up

        builtin: Result | None = None
        if not args.ours_only:
            with stage(f"built-in DRA: {args.pods} Pods"):
                bench.setup(BUILTIN)
                builtin = bench.run(BUILTIN, None)
                bench.teardown(BUILTIN)

        workers = [] if args.workers is None else [f"--workers={args.workers}"]
        operator = LocalOperator(
            cp.kubeconfig,
            extra_args=["--lease-namespace=default", *workers, *operator_limits(args)],
            log_file=Path(tmp) / "operator.log",
        ).start()
        try:
            with stage("operator start"):
                operator.wait_ready(timeout=90)
            with stage(f"dra-operator: {args.pods} Pods"):
                if args.noop_webhook:
                    load.enter_context(noop_webhook(cp, Path(tmp), OURS.namespace))
                bench.setup(OURS)
                if args.noop_webhook:
                    wait_for_webhook(cp, client, OURS.namespace, NOOP_WEBHOOK)
                ours = bench.run(OURS, operator)
                bench.teardown(OURS)
        except BaseException:
            print(f"--- operator log ---\n{operator.log()}", file=sys.stderr)
            raise
        finally:
            operator.stop()

    print()
    qps = (
        "Kubernetes defaults (controller manager 20/30, scheduler 50/100)"
        if args.client_qps is None
        else f"{args.client_qps}/{2 * args.client_qps} for both (--client-qps)"
    )
    print(f"client rate limits (qps/burst) of kube-controller-manager and kube-scheduler: {qps}")
    limits = operator_limits(args)
    limit = f"{limits[0]} (burst twice that)" if limits else "its defaults"
    print(f"dra-operator's client rate limit: {limit}")
    if args.cpu_hog:
        print(f"{args.cpu_hog} busy process(es) ran beside both scenarios (--cpu-hog)")
    print(
        f"Kubernetes control plane (embedded, no kubelet), {args.nodes} Nodes x {PER_NODE} GPUs = {capacity} "
        f"devices >= {args.pods} Pods (no Pod waits for a device); "
        + (
            "one client creates the Pods in turn"
            if args.clients == 1
            else f"{args.clients} concurrent clients create the Pods"
        )
    )
    print(report(builtin, ours) if builtin is not None else report_ours(ours))
    return 0


if __name__ == "__main__":
    sys.exit(main())
