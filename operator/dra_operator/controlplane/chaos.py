"""Leader chaos on the test control plane: two operator replicas, the leader SIGKILLed again and again while
Pods come and go, with the product's invariants checked all along. The suite runs a bounded round
(tests/integration/test_operator_chaos.py); bench/chaos_soak.py runs a long one.

The workload: fake Nodes with `gpus_per_node` GPUs each, `shared_claims` ResourceClaims of one GPU, one
ResourceClaimTemplate of one GPU. Pod i uses its own template claim (i % 3 == 0), one shared claim
(i % 3 == 1), or both (i % 3 == 2: the two must end on one node). At most `live` Pods exist unfinished at
once; a Pod placed (ungated) is finished after `hold` seconds by this driver playing the kubelet: half are
deleted, half marked Succeeded. The leader replica is killed every `kill_every` seconds (uniformly drawn)
for `chaos_seconds` and restarted at once as the standby, so two replicas run nearly all the time.

Checked on every poll while it runs:
- no device is in two claims' allocations;
- a Pod seen ungated has every claim allocated, reserved for it, and all on one node;
- no Pod claim has two generated claims;
and at the end: every Pod was placed; those waiting when the last kill happened were placed within
`settle_bound` seconds of it; once every Pod is gone no generated claim is left, and no shared claim keeps a
reservation or an allocation.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dra_operator.admission import names
from dra_operator.controlplane.fakes import gpu_slice_manifest, node_manifest, pod_succeeded_status
from dra_operator.controlplane.launcher import ApiError, ControlPlane
from dra_operator.operator.local import LocalOperator, ProcessExited
from dra_operator.operator.placement import is_gated

GROUP = "/apis/resource.dra-operator.io/v1"
DRIVER = "driver.example.com"
Json = dict[str, Any]
#: Replica log events worth counting: they show which recovery paths a run went through.
LOG_EVENTS = (
    "allocation withdrawn for an unplaceable pod",
    "precondition failed, retrying",
    "not leading any more: item dropped",
    "claim deallocated",
)


@dataclass
class ChaosConfig:
    nodes: int = 8
    gpus_per_node: int = 4
    shared_claims: int = 4
    pods: int = 200
    live: int = 20  # unfinished Pods at most at once
    hold: float = 1.0  # seconds a placed Pod "runs" before it is finished
    chaos_seconds: float = 60.0
    kill_every: tuple[float, float] = (3.0, 7.0)
    lease_seconds: int = 3
    settle_bound: float = 60.0  # seconds after the last kill by which every waiting Pod is placed
    timeout: float = 600.0  # the whole run
    seed: int = 1


@dataclass
class ChaosReport:
    created: int = 0
    placed: int = 0
    kills: int = 0
    polls: int = 0
    violations: list[str] = field(default_factory=list)
    settle_seconds: float = 0.0  # last kill -> every Pod waiting then placed
    waiting_at_last_kill: int = 0
    max_wait_seconds: float = 0.0  # longest create -> ungated of any Pod
    wall_seconds: float = 0.0
    kinds: Counter[str] = field(default_factory=Counter)  # placed Pods by kind
    replica_logs: list[Path] = field(default_factory=list)
    # How often the replicas logged the events of LOG_EVENTS, and error-level records with a traceback.
    log_events: Counter[str] = field(default_factory=Counter)
    error_tracebacks: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.created} Pods created, {self.placed} placed ({dict(self.kinds)}), "
            f"{self.kills} leader kills, {self.polls} invariant polls, {len(self.violations)} violations; "
            f"the {self.waiting_at_last_kill} Pods waiting at the last kill placed "
            f"{self.settle_seconds:.1f} s "
            f"after it; longest wait {self.max_wait_seconds:.1f} s; wall {self.wall_seconds:.0f} s; "
            f"replica log events {dict(self.log_events)}"
        )


def _devices(claim: Json) -> list[tuple[str, str, str]]:
    results = ((claim.get("status") or {}).get("allocation") or {}).get("devices", {}).get("results") or []
    return [(r["driver"], r["pool"], r["device"]) for r in results]


class Chaos:
    """One run of the scenario on `cp` in a namespace of its own; `run()` returns the report."""

    def __init__(self, cp: ControlPlane, work_dir: Path, config: ChaosConfig | None = None) -> None:
        self.cp, self.work_dir = cp, work_dir
        self.config = config or ChaosConfig()
        self.random = random.Random(self.config.seed)
        tag = uuid.uuid4().hex[:6]
        self.namespace, self.lease, self.class_name = f"chaos-{tag}", f"chaos-{tag}", f"chaos-gpu-{tag}"
        self.node_names = [f"chaos-{tag}-{i}" for i in range(self.config.nodes)]
        self.replicas: list[LocalOperator] = []
        self.report = ChaosReport()
        self.created_at: dict[str, float] = {}  # Pod -> when its create succeeded
        self.placed_at: dict[str, float] = {}
        self.finished: set[str] = set()

    # ------------------------------------------------------------------------------------------- objects

    def _ns(self, plural: str, name: str = "", core: bool = False) -> str:
        base = (
            f"/api/v1/namespaces/{self.namespace}/{plural}"
            if core
            else f"{GROUP}/namespaces/{self.namespace}/{plural}"
        )
        return f"{base}/{name}" if name else base

    def _claim_spec(self) -> Json:
        return {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": self.class_name}}]}}

    def _pod(self, index: int) -> tuple[str, Json]:
        name = f"p{index:04d}"
        kind = ("own", "shared", "mixed")[index % 3]
        refs: list[Json] = []
        if kind in ("own", "mixed"):
            refs.append({"name": "gpu", "resourceClaimTemplateName": "one-gpu"})
        if kind in ("shared", "mixed"):
            refs.append(
                {"name": "shared", "resourceClaimName": f"shared-{index % self.config.shared_claims}"}
            )
        container = {
            "name": "main",
            "image": "registry.invalid/noop:1",
            "resources": {"claims": [{"name": r["name"]} for r in refs]},
        }
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"chaos-kind": kind}},
            "spec": {"restartPolicy": "Never", "containers": [container], "resourceClaims": refs},
        }
        return name, body

    def setup(self) -> None:
        c = self.config
        self.cp.request("POST", "/api/v1/namespaces", {"metadata": {"name": self.namespace}})
        selector = {"cel": {"expression": f'device.driver == "{DRIVER}"'}}
        self.cp.request(
            "POST",
            f"{GROUP}/deviceclasses",
            {
                "apiVersion": "resource.dra-operator.io/v1",
                "kind": "DeviceClass",
                "metadata": {"name": self.class_name},
                "spec": {"selectors": [selector]},
            },
        )
        for node in self.node_names:
            self.cp.request("POST", "/api/v1/nodes", node_manifest(node))
            gpus = {f"gpu-{i}": "64Gi" for i in range(c.gpus_per_node)}
            self.cp.request("POST", f"{GROUP}/resourceslices", gpu_slice_manifest(node, gpus, driver=DRIVER))
        self.cp.request(
            "POST",
            self._ns("resourceclaimtemplates"),
            {
                "apiVersion": "resource.dra-operator.io/v1",
                "kind": "ResourceClaimTemplate",
                "metadata": {"name": "one-gpu"},
                "spec": {"spec": self._claim_spec()},
            },
        )
        for index in range(c.shared_claims):
            self.cp.request(
                "POST",
                self._ns("resourceclaims"),
                {
                    "apiVersion": "resource.dra-operator.io/v1",
                    "kind": "ResourceClaim",
                    "metadata": {"name": f"shared-{index}"},
                    "spec": self._claim_spec(),
                },
            )

    def teardown(self) -> None:
        for replica in self.replicas:
            with contextlib.suppress(Exception):
                replica.stop()
        self._read_logs()
        for path in (
            f"/api/v1/namespaces/{self.namespace}",
            f"{GROUP}/deviceclasses/{self.class_name}",
            f"/apis/coordination.k8s.io/v1/namespaces/default/leases/{self.lease}",
            # the replicas' webhook configurations would refuse every later create with no one to answer
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/dra-operator",
            "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/dra-operator",
            *(f"{GROUP}/resourceslices/{n}-{DRIVER.replace('.', '-')}" for n in self.node_names),
            *(f"/api/v1/nodes/{n}" for n in self.node_names),
        ):
            with contextlib.suppress(ApiError):
                self.cp.request("DELETE", path)

    def _read_logs(self) -> None:
        """Count LOG_EVENTS and collect error-level records with a traceback, over every replica's log (a
        restarted replica appends to its file)."""
        for path in self.report.replica_logs:
            with contextlib.suppress(OSError):
                for line in path.read_text(errors="replace").splitlines():
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if not isinstance(record, dict):
                        continue
                    if record.get("event") in LOG_EVENTS:
                        self.report.log_events[str(record["event"])] += 1
                    if record.get("level") in ("error", "critical") and (
                        record.get("exception") or "Traceback" in line
                    ):
                        self.report.error_tracebacks.append(line[:2000])

    # ------------------------------------------------------------------------------------------ replicas

    def _start_replicas(self) -> None:
        for index in range(2):
            log_dir = self.work_dir / f"replica-{index}"
            log_dir.mkdir(parents=True, exist_ok=True)
            replica = LocalOperator(
                self.cp.kubeconfig,
                extra_args=(
                    "--lease-namespace=default",
                    f"--lease-name={self.lease}",
                    f"--lease-seconds={self.config.lease_seconds}",
                ),
                log_file=log_dir / "operator.log",
                name=f"replica-{index}",
            ).start()
            self.replicas.append(replica)
            self.report.replica_logs.append(replica.log_file)

    def _leader(self) -> LocalOperator | None:
        for replica in self.replicas:
            with contextlib.suppress(OSError, ProcessExited):
                if replica.ready():
                    return replica
        return None

    def _kill_leader(self) -> bool:
        leader = self._leader()
        if leader is None:
            return False
        leader.kill()
        leader.start()  # back at once, as a Deployment would restart it: now the standby
        self.report.kills += 1
        return True

    # --------------------------------------------------------------------------------------- invariants

    def _check(self, pods: list[Json], claims: list[Json], now: float) -> None:
        self.report.polls += 1
        holder: dict[tuple[str, str, str], str] = {}
        generated: Counter[tuple[str, str]] = Counter()
        by_name = {c["metadata"]["name"]: c for c in claims}
        for claim in claims:
            name = claim["metadata"]["name"]
            for device in _devices(claim):
                if device in holder:
                    self._violation(f"{device} allocated to both {holder[device]} and {name}")
                holder[device] = name
            owners = [o["uid"] for o in claim["metadata"].get("ownerReferences") or [] if o.get("controller")]
            pod_claim = (claim["metadata"].get("annotations") or {}).get(names.POD_CLAIM_NAME_ANNOTATION)
            if owners and pod_claim:
                generated[(owners[0], pod_claim)] += 1
        for (owner, pod_claim), count in generated.items():
            if count > 1:
                self._violation(f"pod uid {owner} claim {pod_claim!r} has {count} generated claims")
        for pod in pods:
            name = pod["metadata"]["name"]
            if is_gated(pod) or name in self.placed_at:
                continue
            self._check_placed(pod, by_name)
            self.placed_at[name] = now
            self.report.placed += 1
            self.report.kinds[pod["metadata"]["labels"]["chaos-kind"]] += 1
            wait = now - self.created_at.get(name, now)
            self.report.max_wait_seconds = max(self.report.max_wait_seconds, wait)

    def _check_placed(self, pod: Json, claims: dict[str, Json]) -> None:
        """An ungated Pod has all its claims allocated and reserved for it, on one node."""
        name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
        statuses = pod.get("status") or {}
        names_ = dict(
            (s.get("name"), s.get("resourceClaimName")) for s in statuses.get("resourceClaimStatuses") or []
        )
        nodes = set()
        for ref in pod["spec"].get("resourceClaims") or []:
            claim_name = ref.get("resourceClaimName") or names_.get(ref["name"])
            if claim_name is None:  # a template claim: find it by owner
                claim_name = next(
                    (
                        c["metadata"]["name"]
                        for c in claims.values()
                        if any(o.get("uid") == uid for o in c["metadata"].get("ownerReferences") or [])
                        and (c["metadata"].get("annotations") or {}).get(names.POD_CLAIM_NAME_ANNOTATION)
                        == ref["name"]
                    ),
                    None,
                )
            claim = claims.get(claim_name or "")
            if claim is None:
                self._violation(f"pod {name} ungated but its claim for {ref['name']!r} does not exist")
                continue
            status = claim.get("status") or {}
            if not status.get("allocation") or uid not in [
                r.get("uid") for r in status.get("reservedFor") or []
            ]:
                self._violation(
                    f"pod {name} ungated but claim {claim_name} is not allocated and reserved for it"
                )
            nodes.add(status.get("nodeName"))
        if len(nodes) > 1:
            self._violation(f"pod {name} ungated with claims on nodes {sorted(map(str, nodes))}")

    def _violation(self, message: str) -> None:
        if message not in self.report.violations:
            self.report.violations.append(message)

    # -------------------------------------------------------------------------------------------- driver

    def _create(self, index: int) -> bool:
        name, body = self._pod(index)
        try:
            self.cp.request("POST", self._ns("pods", core=True), body)
        except ApiError as error:
            if error.status != 409:  # the webhook between leaders, most likely: try again next poll
                return False
        self.created_at.setdefault(name, time.monotonic())
        return True

    def _finish(self, pod: Json) -> None:
        name = pod["metadata"]["name"]
        with contextlib.suppress(ApiError):
            if int(name[1:]) % 2:
                options = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0}
                self.cp.request("DELETE", self._ns("pods", name, core=True), options)
            else:
                self.cp.request(
                    "PATCH",
                    self._ns("pods", name, core=True) + "/status",
                    pod_succeeded_status(pod),
                    content_type="application/merge-patch+json",
                )
            self.finished.add(name)

    def run(self) -> ChaosReport:
        c = self.config
        started = time.monotonic()
        self.setup()
        try:
            self._start_replicas()
            deadline = started + c.timeout
            while self._leader() is None:
                if time.monotonic() > deadline:
                    raise TimeoutError("no replica became the leader")
                time.sleep(0.2)
            chaos_until = time.monotonic() + c.chaos_seconds
            next_kill = time.monotonic() + self.random.uniform(*c.kill_every)
            last_kill, waiting_then = 0.0, set()
            next_index = 0
            while True:
                now = time.monotonic()
                if now > deadline:
                    raise TimeoutError(f"chaos run not done after {c.timeout:.0f} s: {self.report.summary()}")
                if now < chaos_until and now >= next_kill:
                    if self._kill_leader():
                        last_kill = time.monotonic()
                        waiting_then = set(self.created_at) - set(self.placed_at)
                    next_kill = now + self.random.uniform(*c.kill_every)
                unfinished = len(self.created_at) - len(self.finished)
                while next_index < c.pods and unfinished < c.live and self._create(next_index):
                    next_index += 1
                    unfinished += 1
                pods = self.cp.request("GET", self._ns("pods", core=True))["items"]
                claims = self.cp.request("GET", self._ns("resourceclaims"))["items"]
                now = time.monotonic()
                self._check(pods, claims, now)
                for pod in pods:
                    name = pod["metadata"]["name"]
                    if (
                        name in self.placed_at
                        and name not in self.finished
                        and now - self.placed_at[name] >= c.hold
                    ):
                        self._finish(pod)
                if now >= chaos_until and next_index >= c.pods and len(self.placed_at) == c.pods:
                    break
                time.sleep(0.2)
            self.report.created = len(self.created_at)
            self.report.waiting_at_last_kill = len(waiting_then)
            if waiting_then:
                self.report.settle_seconds = max(self.placed_at[n] for n in waiting_then) - last_kill
            if self.report.settle_seconds > c.settle_bound:
                self._violation(
                    f"Pods waiting at the last kill were placed {self.report.settle_seconds:.1f} s after it "
                    f"(bound {c.settle_bound:.0f} s)"
                )
            self._clean_up(deadline)
        finally:
            self.report.wall_seconds = time.monotonic() - started
            self.teardown()
        return self.report

    def _clean_up(self, deadline: float) -> None:
        """Every Pod deleted: nothing may stay behind."""
        for pod in self.cp.request("GET", self._ns("pods", core=True))["items"]:
            with contextlib.suppress(ApiError):
                options = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0}
                self.cp.request("DELETE", self._ns("pods", pod["metadata"]["name"], core=True), options)
        while True:
            claims = self.cp.request("GET", self._ns("resourceclaims"))["items"]
            leftovers = [
                c["metadata"]["name"]
                for c in claims
                if not c["metadata"]["name"].startswith("shared-")
                or (c.get("status") or {}).get("reservedFor")
                or (c.get("status") or {}).get("allocation")
            ]
            if not leftovers:
                return
            if time.monotonic() > deadline:
                self._violation(f"left after every Pod was deleted: {sorted(leftovers)}")
                return
            time.sleep(0.2)
