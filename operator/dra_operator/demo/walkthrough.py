"""The demo's steps, in order: cluster, nodes and agents, operator, the seed walkthrough, clean-up, stop."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dra_operator import crds
from dra_operator.admission import names
from dra_operator.admission.mutation import read_manifest
from dra_operator.controlplane import (
    K8S_VERSION,
    ApiError,
    ControlPlane,
    node_manifest,
    pod_succeeded_status,
)
from dra_operator.demo import buildwatch
from dra_operator.demo.console import Console, table
from dra_operator.demo.processes import Children, DemoError, Interrupted
from dra_operator.operator.local import LocalOperator, LocalProcess, ProcessExited
from dra_operator.realnodes import BUSYBOX_IMAGE, RealNodes, RealNodesError, RealNodesUnavailable, available

T = TypeVar("T")
Json = dict[str, Any]

NAMESPACE = "default"  # the seed applies its manifests without -n
GROUP_PATH = "/apis/resource.dra-operator.io/v1"
CLAIMS = f"{GROUP_PATH}/namespaces/{NAMESPACE}/resourceclaims"
PODS = f"/api/v1/namespaces/{NAMESPACE}/pods"
EVENTS = f"/api/v1/namespaces/{NAMESPACE}/events"
JOB = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/example-dra-job"
JOB_PODS = f"{PODS}?labelSelector=job-name%3Dexample-dra-job"
CLAIMS_KIND = "resourceclaims.resource.dra-operator.io"
MERGE_PATCH = "application/merge-patch+json"
WAIT = 60.0
# What a container of the demo runs on real nodes: print the device variables it was given, then exit.
PRINT_DEVICES = 'env | grep -E "^(DRA_[A-Z0-9_]*_DEVICES|NVIDIA_VISIBLE_DEVICES)=" | sort; true'
# The manifests whose containers run on real nodes (their ubuntu image is swapped for a local busybox).
RUNNABLE = ("pod-with-template.yaml", "pods-sharing-claim.yaml", "dra-example-job.yaml")

STEPS = (
    "Control plane binaries",
    "Control plane",
    "CRDs, GPU nodes and their node agents",
    "The operator",
    "Identify devices to claim",
    "Claim resources: a ResourceClaimTemplate and a ResourceClaim",
    "Request devices: a Pod with the template, two Pods sharing the claim",
    "The seed's Job, as written",
    "The Job again, with the shared claim on the 32Gi GPUs",
    "Clean up",
    "Stop",
)


def _phase(pod: Json) -> str:
    return str((pod.get("status") or {}).get("phase") or "")


def _ended(pod: Json) -> bool:
    return _phase(pod) in ("Succeeded", "Failed")


def _gated(pod: Json) -> bool:
    return any(g.get("name") == names.SCHEDULING_GATE for g in pod["spec"].get("schedulingGates") or [])


def _devices(claim: Json | None) -> list[tuple[str, str]]:
    """(pool, device) of each allocated device of a claim."""
    allocation = ((claim or {}).get("status") or {}).get("allocation") or {}
    return [(r["pool"], r["device"]) for r in (allocation.get("devices") or {}).get("results") or []]


class Walkthrough:
    def __init__(
        self, console: Console, workdir: Path, manifests: Path, node_count: int, nodes_kind: str = "auto"
    ) -> None:
        self.console = console
        self.workdir = workdir
        self.node_names = [f"gpu-node-{index}" for index in range(node_count)]
        self.nodes_kind = nodes_kind
        self.cp: ControlPlane | None = None
        self.real: RealNodes | None = None
        self.children = Children(workdir)
        self.build_seconds = 0.0
        # The manifests sit in the directory kubectl runs in, so `kubectl apply -f FILE` reads as typed.
        self.files = workdir / "manifests"
        shutil.copytree(manifests, self.files)
        self.started = time.monotonic()

    # ---- helpers -----------------------------------------------------------------------------------------

    @property
    def plane(self) -> ControlPlane:
        if self.cp is None:
            raise DemoError("the control plane is not running")
        return self.cp

    def kubectl(self, *args: str, show_output: bool = True) -> str:
        """Run the pinned kubectl as a user would (KUBECONFIG set, in the manifests' directory); show it."""
        self.console.command(shlex.join(["kubectl", *args]))
        proc = subprocess.run(
            [str(self.plane.bin_dir / "kubectl"), *args],
            cwd=self.files,
            env=self.plane.env(),
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )
        text = proc.stdout + proc.stderr
        if show_output:
            self.console.output(text)
        if proc.returncode != 0:
            self.children.check()  # a dead operator or agent explains more than kubectl does
            shown = "see its output above" if show_output else text
            raise DemoError(f"kubectl {shlex.join(args)} failed (exit {proc.returncode}): {shown}")
        return text

    def get(self, path: str) -> Json | None:
        try:
            found: Json = self.plane.request("GET", path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise
        return found

    def items(self, path: str) -> list[Json]:
        found = self.get(path)
        return list((found or {}).get("items") or [])

    def wait(self, predicate: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
        """Poll `predicate` until it returns something truthy; fail fast if a process of the demo died."""
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            self.children.check()
            self.plane.check()
            try:
                value = predicate()
            except ApiError as error:  # e.g. a kind whose CRD is still being established
                last, value = error, None
            except ProcessExited as exited:  # died between check() and predicate()
                raise DemoError(str(exited)) from None
            if value:
                return value
            if time.monotonic() > deadline:
                logs = "".join(
                    f"\n--- last lines of {c.log_file}:\n{c.log(15)}" for c in self.children.children
                )
                raise DemoError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r}){logs}")
            time.sleep(0.2)

    def finish(self, pod: Json) -> None:
        """Play the kubelet: the Pod's containers ran and exited 0."""
        self.plane.request(
            "PATCH",
            f"{PODS}/{pod['metadata']['name']}/status",
            pod_succeeded_status(pod),
            content_type=MERGE_PATCH,
        )

    def events(self, name: str, reason: str) -> list[Json]:
        selector = f"involvedObject.name={name},reason={reason}"
        return self.items(f"{EVENTS}?fieldSelector={selector}")

    # ---- the run -----------------------------------------------------------------------------------------

    def run(self, keep: bool) -> None:
        c = self.console
        c.title(f"dra-operator demo: Dynamic Resource Allocation on an embedded Kubernetes {K8S_VERSION}")
        c.note("following https://kubernetes.io/docs/tasks/configure-pod-container/assign-resources/")
        c.note("allocate-devices-with-dra/ with apiVersion resource.dra-operator.io/v1")
        c.note(f"work directory (logs, manifests; removed at the end): {self.workdir}")
        self.start_cluster()
        self.start_nodes()
        self.start_operator()
        self.identify_devices()
        self.claim_resources()
        self.request_devices()
        self.seed_job_as_written()
        self.placeable_job()
        if keep:
            self.keep_running()
        else:
            self.clean_up()

    def start_cluster(self) -> None:
        c = self.console
        c.step(STEPS[0])
        result = buildwatch.ensure_binaries(c)
        self.build_seconds = 0.0 if result.cached else result.seconds
        how = "found cached" if result.cached else f"built in {result.seconds / 60:.1f} min"
        c.info(f"kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd: {how}")
        c.info(f"in {result.bin_dir}")
        c.step(STEPS[1])
        c.info("starting etcd, kube-apiserver, kube-controller-manager and kube-scheduler on 127.0.0.1 ...")
        self.cp = ControlPlane(bin_dir=result.bin_dir, run_dir=self.workdir / "controlplane")
        self.cp.start()
        c.info(f"ready in {self.cp.startup_seconds or 0:.1f}s at {self.cp.server}")

    def start_nodes(self) -> None:
        c = self.console
        c.step(STEPS[2])
        crd_dir = self.files / "crds"
        crd_dir.mkdir()
        for name, text in crds.rendered().items():
            (crd_dir / name).write_text(text)
        c.note(
            "crds/ holds the CRDs as `dra-operator crds --write crds` writes them (the chart has the same)"
        )
        self.kubectl("apply", "--server-side", "-f", "crds/")
        self.kubectl("wait", "--for=condition=Established", "-f", "crds/", "--timeout=60s")
        c.info("")
        self.start_real_or_fake_nodes()
        c.note("one simulated agent per node publishes its devices (inventory.yaml: four 64Gi and two 32Gi")
        c.note("GPUs of driver.example.com) as a slice")
        for node in self.node_names:
            args = ["agent", "--backend=simulated", "--inventory=inventory.yaml", f"--node={node}"]
            c.command(shlex.join(["dra-operator", *args]) + " &")
            self.children.start(
                LocalProcess(
                    args, log_file=self.workdir / f"agent-{node}.log", env=self.plane.env(), cwd=self.files
                )
            )

        inventory = yaml.safe_load((self.files / "inventory.yaml").read_text())
        per_node = inventory["gpus"]["count"] + len(inventory.get("devices") or [])

        def published() -> bool:
            slices = self.items(f"{GROUP_PATH}/resourceslices")
            counts = {s["spec"].get("nodeName"): len(s["spec"].get("devices") or []) for s in slices}
            return all(counts.get(node) == per_node for node in self.node_names)

        self.wait(published, "each agent to publish its node's ResourceSlice")
        self.kubectl("get", "nodes")
        self.kubectl("get", "resourceslices.resource.dra-operator.io")

    def start_real_or_fake_nodes(self) -> None:
        """Real nodes (kubelet + containerd) where this machine can run them, else fake Nodes; say which."""
        c = self.console
        ok, why = available()
        if self.nodes_kind == "real" and not ok:
            raise DemoError(f"--nodes-kind=real: {why}")
        if self.nodes_kind != "fake" and ok:
            c.note(
                "mode: REAL NODES: each node runs a kubelet, containerd, runc and CNI (built once, cached);"
            )
            c.note("containers really run, and print the devices they were given")
            self.real = RealNodes(self.plane, count=len(self.node_names), prefix="gpu-node")
            try:
                self.real.start()
            except (RealNodesError, RealNodesUnavailable) as error:
                raise DemoError(f"real nodes failed to start: {error}") from None
            c.info(f"{len(self.node_names)} nodes Ready in {self.real.startup_seconds or 0:.1f}s")
            c.note(
                f"nodes' directories (kubelet and containerd logs, removed at the end): {self.real.run_dir}"
            )
            self.make_runnable()
            return
        reason = "--nodes-kind=fake" if self.nodes_kind == "fake" else why
        c.note(f"mode: FAKE NODES ({reason}): Node objects without a kubelet (Ready, nothing runs on them);")
        c.note("the demo plays the kubelet by marking bound Pods Succeeded")
        for node in self.node_names:
            self.plane.request("POST", "/api/v1/nodes", node_manifest(node))

    def make_runnable(self) -> None:
        """No registry here: the Pods' ubuntu image becomes a local busybox that prints its devices."""
        for name in RUNNABLE:
            path = self.files / name
            documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
            for document in documents:
                spec = document["spec"]
                pod_spec = spec["template"]["spec"] if document["kind"] == "Job" else spec
                for container in pod_spec["containers"]:
                    container.update(
                        image=BUSYBOX_IMAGE, imagePullPolicy="Never", command=["sh", "-c", PRINT_DEVICES]
                    )
            path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
        self.console.note(
            f"{', '.join(RUNNABLE)}: image {BUSYBOX_IMAGE} (imported into each node), which prints"
        )
        self.console.note("the container's DRA_*_DEVICES and NVIDIA_VISIBLE_DEVICES and exits")

    def start_operator(self) -> None:
        c = self.console
        c.step(STEPS[3])
        # $KUBECONFIG (the plane's env) rather than --kubeconfig: the command shown is the one a user types
        operator = LocalOperator(
            None,
            extra_args=["--lease-namespace=kube-system"],
            env=self.plane.env(),
            log_file=self.workdir / "operator.log",
        )
        c.command(shlex.join(["dra-operator", *operator.args]) + " &")
        started = time.monotonic()
        self.children.start(operator)
        self.wait(operator.ready, "the operator to fill its caches, lead and configure its webhook", 90)
        seconds = time.monotonic() - started
        c.info(f"ready in {seconds:.1f}s: caches filled, leader (Lease kube-system/dra-operator),")
        c.info(f"admission webhook registered at https://127.0.0.1:{operator.webhook_port}")

    def identify_devices(self) -> None:
        c = self.console
        c.step(STEPS[4])
        c.note("the cluster admin's part: a DeviceClass for the driver's devices")
        self.kubectl("apply", "-f", "deviceclass.yaml")
        c.note("the workload operator's first command")
        self.kubectl("get", "deviceclasses.resource.dra-operator.io")

    def claim_resources(self) -> None:
        c = self.console
        c.step(STEPS[5])
        self.kubectl("apply", "-f", "resourceclaimtemplate.yaml")
        c.note("resourceclaim.yaml is the seed's with `expression:` nested under `cel:` (upstream indents it")
        c.note("beside `- cel:`, which the API server rejects); it asks for All 64Gi GPUs of one node")
        self.kubectl("apply", "-f", "resourceclaim.yaml")

    def request_devices(self) -> None:
        c = self.console
        c.step(STEPS[6])
        self.kubectl("apply", "-f", "pod-with-template.yaml")
        self.kubectl("apply", "-f", "pods-sharing-claim.yaml")
        wanted = ("pod-with-template", "pod-sharing-claim-1", "pod-sharing-claim-2")

        def bound() -> list[Json] | None:
            pods = [p for p in self.items(PODS) if p["metadata"]["name"] in wanted]
            done = len(pods) == len(wanted) and all(p["spec"].get("nodeName") for p in pods)
            return pods if done else None

        pods = self.wait(bound, "the three Pods to be allocated and bound to nodes")
        claims = self.items(CLAIMS)  # as allocated now: on real nodes the Pods end (and release) in seconds
        self.kubectl("get", "pods", "-o", "wide")
        self.show_placements(pods, claims)
        self.kubectl("get", CLAIMS_KIND)
        c.info("")
        if self.real is None:
            c.note(
                "no kubelet here: the demo marks the bound Pods Succeeded, as a kubelet does when they end"
            )
            for pod in pods:
                self.finish(pod)
        else:
            self.wait(
                lambda: all(
                    _phase(p) == "Succeeded" for p in self.items(PODS) if p["metadata"]["name"] in wanted
                ),
                "the kubelets to run the three Pods to completion",
                120,
            )
            self.show_container_devices(pods, claims)

        def released() -> bool:
            claims = self.items(CLAIMS)
            shared = [x for x in claims if x["metadata"]["name"] == "example-resource-claim"]
            return len(claims) == 1 and len(shared) == 1 and not _devices(shared[0])

        self.wait(released, "the generated claim to be deleted and the shared claim deallocated")
        self.kubectl("get", CLAIMS_KIND)
        c.check("the template Pod's claim was deleted with it; the shared claim is deallocated (no consumer)")
        self.kubectl("delete", "-f", "pod-with-template.yaml", "-f", "pods-sharing-claim.yaml")

    def show_container_devices(self, pods: list[Json], claims: list[Json]) -> None:
        """`kubectl logs` of each Pod: what its container printed, checked against its claims' devices."""
        by_name = {x["metadata"]["name"]: x for x in claims}
        for pod in sorted(pods, key=lambda p: str(p["metadata"]["name"])):
            name = pod["metadata"]["name"]
            text = self.kubectl("logs", name)
            for ref in read_manifest(pod["metadata"].get("annotations"))["resourceClaims"]:
                claim = self._claim_of(pod, ref, claims, by_name)
                expected = ",".join(f"driver.example.com/{pool}/{device}" for pool, device in _devices(claim))
                shown = dict(line.partition("=")[::2] for line in text.splitlines())
                got = shown.get(names.env_name(ref["name"]), "")
                if sorted(got.split(",")) != sorted(expected.split(",")):
                    raise DemoError(f"{name} printed {got!r} for claim {ref['name']}, allocated {expected!r}")
        self.console.check("each container printed exactly its claims' devices (DRA_<CLAIM>_DEVICES)")

    def show_placements(self, pods: list[Json], claims: list[Json] | None = None) -> None:
        """The table Pods -> nodes -> claims -> devices from the Pods and the claims' allocations, checked."""
        claims = self.items(CLAIMS) if claims is None else claims
        by_name = {x["metadata"]["name"]: x for x in claims}
        rows: list[list[str]] = []
        problems: list[str] = []
        for pod in sorted(pods, key=lambda p: str(p["metadata"]["name"])):
            pod_name, node = pod["metadata"]["name"], pod["spec"].get("nodeName") or "-"
            for ref in read_manifest(pod["metadata"].get("annotations"))["resourceClaims"]:
                claim = self._claim_of(pod, ref, claims, by_name)
                claim_name = claim["metadata"]["name"] if claim else "(none)"
                claim_node = ((claim or {}).get("status") or {}).get("nodeName")
                devices = _devices(claim)
                rows.append(
                    [
                        pod_name,
                        node,
                        ref["name"],
                        claim_name,
                        _device_cell(devices),
                    ]
                )
                if claim_node != node or any(pool != node for pool, _ in devices) or not devices:
                    problems.append(
                        f"{pod_name} on {node}: claim {claim_name} on {claim_node}, devices {devices}"
                    )
        self.console.info("")
        self.console.info(table(["POD", "NODE", "POD CLAIM", "RESOURCECLAIM", "DEVICES (POOL: NAMES)"], rows))
        self.console.info("")
        if problems:
            raise DemoError("Pods placed away from their claims' devices:\n" + "\n".join(problems))
        self.console.check("every Pod is bound to the node of its claims' devices")

    @staticmethod
    def _claim_of(pod: Json, ref: Json, claims: list[Json], by_name: dict[str, Json]) -> Json | None:
        if ref.get("resourceClaimName"):
            return by_name.get(ref["resourceClaimName"])
        uid = pod["metadata"]["uid"]
        for claim in claims:
            owners = claim["metadata"].get("ownerReferences") or []
            annotations = claim["metadata"].get("annotations") or {}
            if any(o.get("uid") == uid for o in owners) and (
                annotations.get(names.POD_CLAIM_NAME_ANNOTATION) == ref["name"]
            ):
                return claim
        return None

    def seed_job_as_written(self) -> None:
        c = self.console
        c.step(STEPS[7])
        self.kubectl("apply", "-f", "dra-example-job.yaml")

        def failed() -> list[Json] | None:
            pods = self.items(JOB_PODS)
            if len(pods) < 2 or not all(self.events(p["metadata"]["name"], "AllocationFailed") for p in pods):
                return None
            return pods

        pods = self.wait(failed, "AllocationFailed on the Job's Pods")
        if any(not _gated(p) for p in pods):
            raise DemoError("a Pod of the seed's Job was placed, which no node's devices allow")
        self.kubectl("get", "pods", "-l", "job-name=example-dra-job")
        name = sorted(p["metadata"]["name"] for p in pods)[0]
        c.note("drill down with kubectl describe, as the seed's troubleshooting says (excerpt):")
        text = self.kubectl("describe", "pod", name, show_output=False)
        self.console.output(self.describe_excerpt(text))
        c.info("")
        c.note("why: the shared claim (allocationMode All, 64Gi) wants every 64Gi GPU of a node, and each")
        c.note("Pod's template claim one more 64Gi GPU on that same node: no node can hold both")
        message = " ".join(str(e.get("message")) for e in self.events(name, "AllocationFailed"))
        # Nodes that fail alike share one reason: `node-0, node-1: …`.
        explained = [
            n for n in self.node_names if re.search(rf"(?<![\w.-]){re.escape(n)}(?=[,:]| and )", message)
        ]
        c.check(
            f"the Job's Pods stay gated; AllocationFailed gives the reason on {len(explained)} of "
            f"{len(self.node_names)} nodes"
            + (
                ""
                if len(explained) == len(self.node_names)
                else " (the others are counted in the event message)"
            )
        )
        self.kubectl("delete", "-f", "dra-example-job.yaml")
        self.wait(
            lambda: not self.items(JOB_PODS) and len(self.items(CLAIMS)) == 1,
            "the Job's Pods and their generated claims to be gone",
        )

    @staticmethod
    def describe_excerpt(text: str) -> str:
        """The name, the scheduling gates and the Events of `kubectl describe pod`."""
        lines = text.rstrip("\n").splitlines()
        keep = [line for line in lines if line.startswith(("Name:", "Node:", "Status:", "Scheduling Gates:"))]
        start = next((i for i, line in enumerate(lines) if line.startswith("Events:")), len(lines))
        return "\n".join([*keep, "...", *lines[start:]])

    def placeable_job(self) -> None:
        c = self.console
        c.step(STEPS[8])
        self.kubectl("delete", "-f", "resourceclaim.yaml")
        self.wait(lambda: not self.items(CLAIMS), "the claim to be deleted")
        self.kubectl("apply", "-f", "resourceclaim-32gi.yaml")
        self.kubectl("apply", "-f", "dra-example-job.yaml")
        job = yaml.safe_load((self.files / "dra-example-job.yaml").read_text())
        completions = int(job["spec"]["completions"])
        parallelism = int(job["spec"]["parallelism"])
        finished: set[str] = set()
        waves = 0
        most_at_once = 0

        def next_wave() -> list[Json] | None:
            pods = [p for p in self.items(JOB_PODS) if p["metadata"]["name"] not in finished]
            running = [p for p in pods if not _ended(p) and not p["metadata"].get("deletionTimestamp")]
            bound = [p for p in running if p["spec"].get("nodeName")]
            expected = min(parallelism, completions - len(finished))
            return bound if expected > 0 and len(bound) >= expected else None

        if self.real is not None:
            self.run_job_on_real_nodes(completions, parallelism)
            return
        c.note(
            f"the demo's kubelet ends the Pods once {parallelism} of them are bound (the Job's parallelism)"
        )
        while len(finished) < completions:
            wave = self.wait(next_wave, f"the next {parallelism} Pods of the Job to be placed", 90)
            waves += 1
            most_at_once = max(most_at_once, len(wave))
            if waves == 1:
                self.show_placements(wave)
                self.kubectl("get", CLAIMS_KIND)
                c.info("")
            c.info(f"wave {waves} {self.check_wave(wave)}")
            for pod in wave:
                self.finish(pod)
                finished.add(pod["metadata"]["name"])

        def complete() -> bool:
            status = (self.get(JOB) or {}).get("status") or {}
            return int(status.get("succeeded") or 0) >= completions

        self.wait(complete, f"the Job to count {completions} completions")
        self.kubectl("get", "job", "example-dra-job")
        c.check(
            f"{completions} Pods completed in {waves} waves, at most {most_at_once} at a time; in each wave "
            "the Pods shared one node"
        )

    def run_job_on_real_nodes(self, completions: int, parallelism: int) -> None:
        c = self.console
        c.note(
            f"the kubelets run the Job's Pods, {parallelism} at a time, each container printing its devices"
        )

        def complete() -> bool:
            status = (self.get(JOB) or {}).get("status") or {}
            if int(status.get("failed") or 0):
                raise DemoError(f"Pods of the Job failed: {status}")
            return int(status.get("succeeded") or 0) >= completions

        self.wait(complete, f"the Job to count {completions} completions", 300)
        self.kubectl("get", "job", "example-dra-job")
        pods = sorted(self.items(JOB_PODS), key=lambda p: str(p["status"].get("startTime")))
        rows: list[list[str]] = []
        for pod in pods:
            annotations = pod["metadata"].get("annotations") or {}
            own = annotations.get(names.devices_annotation("separate-gpu-claim", None), "")
            shared = annotations.get(names.devices_annotation("shared-gpu-claim", None), "")
            rows.append(
                [
                    pod["metadata"]["name"],
                    pod["spec"].get("nodeName") or "-",
                    _phase(pod),
                    ",".join(d.split("/", 1)[-1] for d in own.split(",") if d),
                    ",".join(d.split("/", 1)[-1] for d in shared.split(",") if d),
                ]
            )
        c.info("")
        c.info(table(["JOB POD", "NODE", "PHASE", "OWN GPU (POOL/NAME)", "SHARED GPUS"], rows))
        c.info("")
        first = pods[0]["metadata"]["name"]
        self.kubectl("logs", first, "--all-containers", "--prefix")
        shared_nodes = {row[1] for row in rows}
        if len(shared_nodes) != 1 or len({row[4] for row in rows}) != 1:
            raise DemoError(
                f"the Job's Pods ran on {sorted(shared_nodes)}, not all with the same shared claim"
            )
        if any(row[3] in row[4].split(",") or not row[3] for row in rows):
            raise DemoError(f"a Pod's own GPU is missing or also the shared claim's: {rows}")
        c.check(
            f"{completions} Pods ran to completion on {next(iter(shared_nodes))}, the shared claim's node, "
            "each with a GPU of its own"
        )

    def check_wave(self, wave: list[Json]) -> str:
        """Check one wave's Pods (one node, the shared claim's; a GPU of that node each, none twice) and
        describe them from the device annotations their containers read: `(shared claim: ...): pod -> ...`."""
        own: dict[str, list[str]] = {}
        for pod in wave:
            annotations = pod["metadata"].get("annotations") or {}
            devices = annotations.get(names.devices_annotation("separate-gpu-claim", None), "")
            # each entry is driver/pool/device; pool and node coincide for node-local slices
            own[pod["metadata"]["name"]] = [d.split("/", 1)[-1] for d in devices.split(",") if d]
        nodes = {p["spec"]["nodeName"] for p in wave}
        shared = _devices(self.get(f"{CLAIMS}/example-resource-claim"))
        shared_nodes = {pool for pool, _ in shared}
        gpus = [gpu for found in own.values() for gpu in found]
        if (
            len(nodes) != 1
            or shared_nodes != nodes
            or any(len(found) != 1 for found in own.values())
            or len(set(gpus)) != len(gpus)
            or any(gpu.split("/")[0] not in nodes for gpu in gpus)
        ):
            raise DemoError(
                f"unexpected placement: Pods on {nodes}, shared claim on {shared}, own GPUs {own}"
            )
        shared_text = f"{next(iter(shared_nodes))}/{','.join(device for _, device in shared)}"
        pods = ", ".join(f"{name} -> {','.join(own[name])}" for name in sorted(own))
        return f"(shared claim: {shared_text}): {pods}"

    def clean_up(self) -> None:
        c = self.console
        c.step(STEPS[9])
        self.kubectl("delete", "-f", "dra-example-job.yaml")
        self.kubectl("delete", "-f", "resourceclaimtemplate.yaml")
        c.note("resourceclaim.yaml and the demo's variant name the same claim")
        self.kubectl("delete", "-f", "resourceclaim.yaml")
        self.wait(lambda: not self.items(CLAIMS), "every ResourceClaim to be gone")
        self.kubectl("get", CLAIMS_KIND)
        left = self.items(f"{GROUP_PATH}/resourceclaims")
        if left:
            raise DemoError(f"claims left after the clean-up: {[x['metadata']['name'] for x in left]}")
        c.check("no claims left")

    def keep_running(self) -> None:
        c = self.console
        c.print()
        c.title("Still running (--keep). In another shell:")
        c.info(f"export KUBECONFIG={shlex.quote(str(self.plane.kubeconfig))}")
        c.info(f"export PATH={shlex.quote(str(self.plane.bin_dir))}:$PATH")
        c.info(f"cd {shlex.quote(str(self.files))}   # the walkthrough's manifests")
        c.info("kubectl get pods,resourceclaims.resource.dra-operator.io -o wide")
        if self.real is None:
            c.note(
                "bound Pods are marked Succeeded within a second (there is no kubelet); logs in "
                + str(self.workdir)
            )
        else:
            c.note(f"real nodes: Pods run for real; logs in {self.workdir}")
        c.print("Ctrl-C stops everything.")
        try:
            while True:
                self.children.check()
                self.plane.check()
                for pod in self.items(PODS) if self.real is None else []:
                    gone = pod["metadata"].get("deletionTimestamp")
                    if pod["spec"].get("nodeName") and not _ended(pod) and not gone:
                        self.finish(pod)
                time.sleep(1.0)
        except (KeyboardInterrupt, Interrupted):
            c.print()
            c.print("stopping (--keep ends with Ctrl-C)")

    def stop(self) -> None:
        """Stop the operator, the agents and the control plane; safe after any failure, and more than once."""
        if self.cp is None and not self.children.children:
            return
        c = self.console
        c.step(STEPS[-1])
        pids = [child.pid for child in self.children.children]
        self.children.stop()
        nodes = ""
        if self.real is not None:
            # Its kubelets, containerds, shims and containers, namespaces, bridge and cgroups go with it.
            self.real.stop()
            self.real = None
            nodes = f"{len(self.node_names)} real nodes, "
        if self.cp is not None:
            pids += list(self.cp.pids.values())
            self.cp.stop()
            self.cp = None
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists() and not _zombie(pid)]
        if alive:
            c.print(f"processes still alive: {alive}")
        else:
            c.check(
                f"operator, {len(self.node_names)} agents, {nodes}control plane stopped "
                f"({len(pids)} processes)"
            )


def _device_cell(devices: list[tuple[str, str]]) -> str:
    """`pool: device,device` per pool (here a pool is a node), pools separated by `; `."""
    pools: dict[str, list[str]] = {}
    for pool, device in devices:
        pools.setdefault(pool, []).append(device)
    return "; ".join(f"{pool}: {','.join(found)}" for pool, found in pools.items()) or "-"


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2 :].startswith("Z")
