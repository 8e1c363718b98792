"""The per-Pod and per-claim flow: generate claims, allocate, reserve, ungate; release and deallocate.

This module decides for Pods and runs the items; the queue is workqueue's, the claim items (release) are
releasing's, and every write to a claim is claimwrites'.

A few workers share one queue of keys; an item never runs twice at once, and allocation decisions are
serialized, each putting its claims' new status into the state (assumed) before the next decision starts and
writing them afterwards, so this replica never races itself and no decision waits for another's round trip
to the API server. Only the Lease holder decides (a former
leader exits before its lease could pass on), so no two replicas allocate at once; every write carries a
precondition (resourceVersion, or a JSON-patch `test`), so a decision made from a stale cache — after a
restart, or a claim changed meanwhile — fails and is retried instead of handing out one device twice.
Every step is idempotent and starts from what the objects say, so a restart mid-flight resumes where it was.

Failed writes are retried by kind: a failed precondition (409, a JSON-patch `test`) or a vanished object at
once after a fresh read; an error that cannot heal by itself (400, 403, 422 Invalid) is told to the user — a
Warning event `WriteRejected` on the Pod (or claim) and a `WriteRejected` condition on the claim written to —
and retried with exponential backoff (1 s doubling to PERMANENT_BACKOFF_CAP); every other error (5xx, no
answer) with backoff up to TRANSIENT_BACKOFF_CAP. A watch event on the Pod, a claim or a template enqueues the
item at once whatever its backoff, so fixing the input is acted on without waiting.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import structlog

from dra_operator.admission import delivery, names
from dra_operator.admission.mutation import read_manifest
from dra_operator.api.gang import Gang, gang_of
from dra_operator.api.resource import RESERVED_FOR_MAX
from dra_operator.kube.client import Kube, KubeError, NotLeading, ours, path_of
from dra_operator.operator import metrics
from dra_operator.operator.allocating import AllocationRequest, Allocator, Failure, Placed
from dra_operator.operator.claimwrites import (
    WRITE_REJECTED,
    ClaimWrites,
    Reservation,
    devices_text,
    reserved_status,
    undo_all,
)
from dra_operator.operator.events import Recorder
from dra_operator.operator.placement import (
    device_annotations,
    extended_claim_spec,
    generated_claim,
    is_deleting,
    is_done,
    is_gated,
    pod_claim_refs,
    pod_fits_node,
    pod_patch,
    reserved_uids,
)
from dra_operator.operator.releasing import Releaser, generated_for
from dra_operator.operator.state import (
    CLAIMS,
    CLASSES,
    NODES,
    PODS,
    SLICES,
    TAINT_RULES,
    TEMPLATES,
    Json,
    Key,
    State,
    key_of,
    name_of,
)
from dra_operator.operator.workqueue import (
    CLAIM,
    PERMANENT_BACKOFF_CAP,
    POD,
    TRANSIENT_BACKOFF_CAP,
    Item,
    WorkQueue,
    backoff,
)

log = structlog.get_logger("dra_operator.reconciler")

#: Items in flight at once. Each waits on a few API round trips (claim create, status, ungate), so with few
#: workers the API server's latency, not the CPU, bounds Pods/s: at 500 nodes and 2,000 Pods (limits lifted,
#: bench/operator_vs_builtin.py) 4 workers gave 50.6 Pods/s, 16 gave 68.8 and 32 gave 60.8, their writes
#: slowing the Pod creates. kube-scheduler binds with the same parallelism (16).
WORKERS = 16
#: Where a Pod's claims went: (node, Pod claim name -> status.allocation, (driver, pool, device) -> GPU UUID).
_Placement = tuple[str | None, dict[str, Json], dict[tuple[str, str, str], str]]

#: Seconds between counts of the waiting-Pods gauge (a scan of every Pod).
WAITING_EVERY = 1.0
#: Seconds between looks at a node whose device plugin is busy with another Pod (a watch event on that Pod
#: usually comes first).
DELIVERY_RECHECK = 2.0
#: How many node names the candidate nodes per node constraint may hold in all (each set's names count): about
#: 20 MiB of sets, 40 constraints that each allow 5,000 nodes, or thousands that allow a few.
CANDIDATE_NAMES_KEPT = 200_000
#: Failed preconditions in a row retried at once (a fresh read fixes them) before they back off too.
IMMEDIATE_RETRIES = 3


@dataclass
class Reconciler:
    kube: Kube
    state: State
    recorder: Recorder
    allocator: Allocator
    is_leader: Callable[[], bool] = lambda: True
    namespaces: tuple[str, ...] = ()  # watched namespaces (empty: all)
    workers: int = WORKERS  # concurrent items (decisions stay serialized)
    # Devices are delivered by the agents' device plugin: one Pod in delivery per node at a time (see
    # dra_operator.admission.delivery for why).
    device_plugin: bool = False
    # Items are (POD|CLAIM, namespace, name). The bulk look at every claim of a new leader is a backlog,
    # behind everything else, so that a Pod created meanwhile is decided at once, not after 10,000 claims
    # (issue 14, failover).
    work: WorkQueue = field(default_factory=WorkQueue)
    _decide: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Node -> Pods placed there waiting for the Pod in delivery before them to be admitted.
    _deferred: dict[str, set[Item]] = field(default_factory=dict)
    # Node -> (uid, since (monotonic), name) of the Pod this replica last ungated there, until it is admitted.
    _ungating: dict[str, tuple[str, float, Key]] = field(default_factory=dict)
    # When the waiting-Pods gauge was last counted (monotonic).
    _waiting_counted: float = 0.0
    # Pod uid -> when this replica first saw it gated (monotonic), for the allocation latency histogram.
    _first_seen: dict[str, float] = field(default_factory=dict)
    # One decision at a time per gang (its members' items would otherwise create claims twice): the lock and
    # how many items use it, so that it goes when the last one is done.
    _gang_locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = field(default_factory=dict)
    # Counts changes that can make waiting Pods fit (devices freed, inputs changed): a gang that did not
    # fit is not decided again, for each of its members' items, until it moves.
    _epoch: int = 0
    # (namespace, gang key) -> (epoch, member uids) of its last decision that did not fit.
    _gang_misfit: dict[tuple[str, str], tuple[int, tuple[str, ...]]] = field(default_factory=dict)
    # What every decision reads of classes, slices, nodes and taint rules, kept while none of them changed
    # (State.revision_of), and the candidate nodes per set of Pod node constraints: a decision then costs no
    # pass over every node and slice.
    # kind -> ((state epoch, the kind's revision), its objects in name order): see _static_inputs.
    _static: dict[str, tuple[tuple[int, int], list[Json]]] = field(default_factory=dict)
    # Sets, which the search uses as they are (a list copied per decision cost it a pass over every node), but
    # at 5,000 names half a MiB each: the cache is bounded by the names it holds, not by its entries.
    _candidates: dict[str, frozenset[str]] = field(default_factory=dict)
    _candidate_names: int = 0
    writes: ClaimWrites = field(init=False)
    releaser: Releaser = field(init=False)

    def __post_init__(self) -> None:
        self.writes = ClaimWrites(self.kube, self.state, self.recorder, released=lambda: self.enqueue_gated())
        self.releaser = Releaser(self.state, self.writes, self._decide, self.enqueue)

    # ------------------------------------------------------------------------------------------ queueing

    def enqueue(self, kind: str, namespace: str, name: str, *, backlog: bool = False) -> None:
        """Queue an item once; `backlog` items wait until nothing else is queued."""
        self.work.add((kind, namespace, name), backlog=backlog)

    def forget_pod(self, uid: str) -> None:
        """A Pod is gone: drop what this replica remembered about it."""
        self._first_seen.pop(uid, None)
        self.recorder.forget(uid)

    def enqueue_gated(self, namespace: str | None = None) -> None:
        """Every gated Pod (of one namespace): something they may wait for appeared or changed."""
        self._epoch += 1
        for pod in self.state.gated_pods(namespace):
            self.enqueue(POD, *key_of(pod))

    def enqueue_everything(self) -> None:
        """On becoming leader: look at every Pod and claim again (the claims as a backlog: a waiting Pod's
        own claims come with its item)."""
        for pod in self.state.all(PODS):
            self.enqueue(POD, *key_of(pod))
        for claim in self.state.all(CLAIMS):
            self.enqueue(CLAIM, *key_of(claim), backlog=True)

    async def run(self) -> None:
        """`workers` loops over the work queue (an item is never processed twice at once); allocation
        decisions and their claim writes are serialized by a lock, while claim creation, Pod patches and
        releases of different items overlap."""
        await self.work.run(self.workers, self._process, lambda: self.is_leader())

    async def _process(self, item: Item) -> None:
        kind, namespace, name = item
        started = time.perf_counter()
        try:
            if kind == POD:
                await self.sync_pod(namespace, name)
            else:
                await self.releaser.sync(namespace, name)
        except NotLeading:
            # The Lease passed on while this item was in flight: it is the new leader's now.
            log.info("not leading any more: item dropped", kind=kind, namespace=namespace, name=name)
        except KubeError as exc:
            await self._failed(item, exc)
        except Exception:
            delay = backoff(self.work.failed(item), TRANSIENT_BACKOFF_CAP)
            log.exception("reconcile failed", kind=kind, namespace=namespace, name=name, retry_in=delay)
            self.work.add_after(item, delay)
        else:
            self.work.succeeded(item)
        finally:
            if kind == POD:
                metrics.SYNC_SECONDS.observe(time.perf_counter() - started)
            if time.monotonic() - self._waiting_counted > WAITING_EVERY:  # a scan of every Pod: not per item
                self._waiting_counted = time.monotonic()
                metrics.WAITING.set(sum(1 for p in self.state.gated_pods() if not is_deleting(p)))

    async def _failed(self, item: Item, exc: KubeError) -> None:
        """Schedule the retry a failed write deserves (see the module docstring), and say why when it was
        refused for good."""
        kind, namespace, name = item
        failures = self.work.failed(item)
        where = {"kind": kind, "namespace": namespace, "name": name, "call": f"{exc.method} {exc.path}"}
        if exc.permanent:
            delay = backoff(failures, PERMANENT_BACKOFF_CAP)
            metrics.REJECTED_WRITES.labels(str(exc.status)).inc()
            log.warning("write refused", **where, error=str(exc), failures=failures, retry_in=delay)
            await self._report_rejection(item, exc)
            self.work.add_after(item, delay)
        elif exc.conflict or exc.status == 422 or exc.not_found:
            # Decided on stale data (or the object went): read again and look once more.
            log.info("precondition failed, retrying", **where, error=str(exc), failures=failures)
            await self._refresh(item)
            if failures <= IMMEDIATE_RETRIES:
                self.enqueue(*item)
            else:
                self.work.add_after(item, backoff(failures - IMMEDIATE_RETRIES, TRANSIENT_BACKOFF_CAP))
        else:
            delay = backoff(failures, TRANSIENT_BACKOFF_CAP)
            # No answer or a server error: expected while the API server or etcd restarts; no traceback.
            log.warning("write failed, retrying", **where, error=str(exc), failures=failures, retry_in=delay)
            self.work.add_after(item, delay)

    async def _report_rejection(self, item: Item, exc: KubeError) -> None:
        """A Warning event on the item's object and a WriteRejected condition on the claim written to (for a
        refused Pod patch: on the Pod's claims). A new claim that could not be created has no condition to
        carry: its Pod's event says why."""
        kind, namespace, name = item
        what = _refused_call(exc)
        obj = self.state.get(PODS if kind == POD else CLAIMS, (namespace, name))
        targets: list[Json] = []
        claim_name = _claim_in_path(exc.path)
        if claim_name is not None:
            claim = self.state.get(CLAIMS, (namespace, claim_name))
            targets = [claim] if claim is not None else []
        elif obj is not None and kind == POD and "/pods/" in exc.path:
            targets = self._claims_of_pod(obj)
        if obj is not None:
            hint = (
                "fix the template, claim or Pod: it is retried at once when one of them changes"
                if kind == POD
                else "it is retried when the claim or its Pods change"
            )
            self.recorder.warning(obj, WRITE_REJECTED, f"{what}; {hint}")
        for claim in targets:
            await self.writes.rejected_condition(claim, _rejection_reason(exc), what)

    async def _refresh(self, item: Item) -> None:
        """After a failed precondition: read the objects involved again, not waiting for the watch."""
        kind, namespace, name = item
        try:
            if kind == CLAIM:
                claim = await self.kube.get(ours("resourceclaims", namespace, name))
                if claim:
                    self.state.wrote(CLAIMS, claim)
                return
            pod = await self.kube.get(path_of("pods", namespace=namespace, name=name))
            if pod is None:
                return
            self.state.wrote(PODS, pod)
            for ref in pod_claim_refs(pod):
                if ref.get("resourceClaimName"):
                    claim = await self.kube.get(ours("resourceclaims", namespace, ref["resourceClaimName"]))
                    if claim:
                        self.state.wrote(CLAIMS, claim)
            for claim in self._claims_of_pod(pod):
                fresh = await self.kube.get(ours("resourceclaims", *key_of(claim)))
                if fresh:
                    self.state.wrote(CLAIMS, fresh)
        except KubeError as exc:
            log.info("refresh failed", kind=kind, namespace=namespace, name=name, error=str(exc))

    # ---------------------------------------------------------------------------------------------- Pods

    async def sync_pod(self, namespace: str, name: str) -> None:
        pod = self.state.get(PODS, (namespace, name))
        if pod is None:
            return  # gone: its claims get a CLAIM item from the deletion event
        if is_done(pod) or is_deleting(pod):
            for claim in self._claims_of_pod(pod):
                self.enqueue(CLAIM, *key_of(claim))
            return
        if not is_gated(pod):
            node = delivery.node_of(pod)
            if node is not None and (delivery.admitted(pod) or is_done(pod) or is_deleting(pod)):
                self._delivered(node, pod["metadata"]["uid"])
            await self._check_ungated(pod)
            return
        self._first_seen.setdefault(pod["metadata"]["uid"], time.monotonic())
        gang = gang_of(pod["metadata"])
        if gang is not None:
            await self._allocate_gang(pod, gang)
        else:
            await self._allocate_pod(pod)

    def _ungating_elsewhere(self, node: str, uid: str) -> bool:
        """Another Pod this replica ungated on `node` may still be waiting for its kubelet."""
        if node not in self._ungating:
            return False
        other, since, key = self._ungating[node]
        pod = self.state.get(PODS, key)
        gone = pod is None or pod["metadata"].get("uid") != other or is_deleting(pod)
        if other == uid or gone or delivery.admitted(pod or {}) or is_done(pod or {}):
            return False
        return time.monotonic() - since < delivery.DELIVERY_TIMEOUT

    def _delivered(self, node: str, uid: str) -> None:
        """The Pod in delivery on `node` was admitted (or ended, or is going): the next Pods may go."""
        if (self._ungating.get(node) or ("",))[0] == uid:
            del self._ungating[node]
        for item in self._deferred.pop(node, set()):
            self.enqueue(*item)

    async def _check_ungated(self, pod: Json) -> None:
        """A managed Pod without our gate and without devices: it was bound at creation, or someone removed
        the gate before its claims were allocated (the chart's admission policy refuses that; this is what
        happens where the policy is not installed). Say which, truthfully; a Pod ungated by hand is deleted,
        because it would run without the devices it asked for and nothing can give them to it any more (the
        kubelet of built-in DRA refuses to start such a Pod); its controller, if any, makes a new one, which
        waits properly."""
        annotations = pod["metadata"].get("annotations") or {}
        if any(key.startswith(names.DEVICES_ANNOTATION_PREFIX) for key in annotations):
            return  # allocated: ungated by us
        gated_at_creation = read_manifest(annotations).get("gated")
        if gated_at_creation is True:
            message = (
                f"the scheduling gate {names.SCHEDULING_GATE} was removed by someone other than dra-operator "
                "before the Pod's claims were allocated, so it would run without its devices: the Pod is "
                "deleted (its controller, if any, creates a new one that waits for its devices)"
            )
            self.recorder.warning(pod, "UngatedBeforeAllocation", message)
            log.warning("pod ungated by hand before allocation: deleted", pod=name_of(pod))
            await self.kube.delete(
                path_of("pods", namespace=pod["metadata"]["namespace"], name=pod["metadata"]["name"]),
                preconditions={"uid": pod["metadata"]["uid"]},
            )
            return
        if not (pod.get("spec") or {}).get("nodeName"):
            return  # neither gated nor bound: not ours to judge yet
        if gated_at_creation is False:
            message = (
                "spec.nodeName was set at creation, so the Pod could not be held until its claims were "
                "allocated; create it without nodeName (use node affinity) to get devices"
            )
        else:  # created before the webhook recorded how it admitted the Pod
            message = (
                "the Pod runs without its devices: it was bound at creation (spec.nodeName), or its "
                "scheduling gate was removed by hand before its claims were allocated"
            )
        self.recorder.warning(pod, "NotGated", message)

    def _claims_of_pod(self, pod: Json) -> list[Json]:
        namespace = pod["metadata"]["namespace"]
        return [
            c
            for c in self.state.claims_of(pod["metadata"]["uid"])
            if c["metadata"].get("namespace") == namespace
        ]

    async def _pod_claims(self, pod: Json) -> dict[str, Json] | None:
        """The Pod's claims by Pod claim name, creating the ones from templates; None when one is missing."""
        namespace = pod["metadata"]["namespace"]
        found: dict[str, Json] = {}
        for ref in pod_claim_refs(pod):
            pod_claim = ref["name"]
            if ref.get("resourceClaimName"):
                claim = self.state.get(CLAIMS, (namespace, ref["resourceClaimName"]))
                if claim is None:
                    self._fail(
                        pod,
                        "ClaimNotFound",
                        f'pod claim "{pod_claim}": ResourceClaim "{ref["resourceClaimName"]}" not found '
                        f"in namespace {namespace}; the Pod waits for it",
                    )
                    return None
            else:
                claim = await self._generated_claim(pod, pod_claim)
                if claim is None:
                    template_name = str(ref.get("resourceClaimTemplateName"))
                    template = self.state.get(TEMPLATES, (namespace, template_name))
                    extended = extended_claim_spec(ref)
                    if extended is not None:
                        # The claim for the Pod's extended-resource requests: its spec came with the Pod.
                        template_name = "(extended resources)"
                        template = {"spec": {"spec": extended}}
                    if template is None:
                        self._fail(
                            pod,
                            "TemplateNotFound",
                            f'pod claim "{pod_claim}": ResourceClaimTemplate "{template_name}" not found '
                            f"in namespace {namespace}; the Pod waits for it",
                        )
                        return None
                    claim = await self.kube.create(
                        ours("resourceclaims", namespace), generated_claim(pod, pod_claim, template)
                    )
                    # No event of its own: the Pod's Allocated event names the claim and its template
                    # (two events per Pod on the happy path, as few as built-in DRA allows).
                    self.state.wrote(CLAIMS, claim)
                    log.info(
                        "claim created",
                        pod=name_of(pod),
                        claim=claim["metadata"]["name"],
                        template=template_name,
                    )
            if claim["metadata"].get("deletionTimestamp"):
                self._fail(
                    pod, "ClaimNotFound", f"ResourceClaim {claim['metadata']['name']} is being deleted"
                )
                return None
            found[pod_claim] = claim
        return found

    async def _generated_claim(self, pod: Json, pod_claim: str) -> Json | None:
        """The claim generated for this Pod claim, if there is one; any other generated for it is deleted.

        A create whose answer was lost may have landed: if its retry came before the watch showed the first,
        the Pod has two. The one kept is the same on every pass (not being deleted, reserved for the Pod,
        allocated, the oldest: in that order), so the Pod is never placed with one while the other holds
        devices; the Pod is still gated, so nothing runs on the one deleted."""
        uid = pod["metadata"]["uid"]
        generated = generated_for(self.state, pod["metadata"]["namespace"], uid, pod_claim)
        if not generated:
            return None

        def preference(claim: Json) -> tuple[bool, bool, bool, str, str]:
            meta, status = claim["metadata"], claim.get("status") or {}
            return (
                bool(meta.get("deletionTimestamp")),
                uid not in reserved_uids(claim),
                not status.get("allocation"),
                str(meta.get("creationTimestamp") or ""),
                str(meta.get("name")),
            )

        kept, *duplicates = sorted(generated, key=preference)
        for duplicate in duplicates:
            log.warning(
                "duplicate generated claim",
                pod=name_of(pod),
                claim=duplicate["metadata"]["name"],
                kept=kept["metadata"]["name"],
            )
            await self.writes.delete_generated(duplicate)
        return kept

    async def _allocate_pod(self, pod: Json) -> None:
        claims = await self._pod_claims(pod)
        if claims is None:
            return
        async with self._decide:
            # Decide on the freshest view (another worker may just have written one of these claims), and
            # assume the claims' new status before anyone else decides: no device can go to two claims of
            # this replica, and the next decision need not wait for this one's writes.
            claims = {pc: self.state.get(CLAIMS, key_of(c)) or c for pc, c in claims.items()}
            decided = await self._decide_pod(pod, claims)
        if decided is not None:
            outcome, plans = decided
            placed = await self._write_reservations(pod, claims, outcome, plans)
            await self._ungate(pod, claims, placed)

    async def _allocate_gang(self, pod: Json, gang: Gang) -> None:
        """Allocate a gang's waiting Pods in one decision, or none of them (see dra_operator.api.gang)."""
        namespace = pod["metadata"]["namespace"]
        key = (namespace, gang.key)
        lock, users = self._gang_locks.get(key) or (asyncio.Lock(), 0)
        self._gang_locks[key] = (lock, users + 1)
        try:
            async with lock:
                await self._decide_gang(pod, gang)
        finally:
            lock, users = self._gang_locks[key]
            if users > 1:
                self._gang_locks[key] = (lock, users - 1)
            else:
                del self._gang_locks[key]

    async def _decide_gang(self, pod: Json, gang: Gang) -> None:
        namespace = pod["metadata"]["namespace"]
        current = self.state.get(PODS, key_of(pod))
        if (
            current is None
            or current["metadata"].get("uid") != pod["metadata"]["uid"]
            or not is_gated(current)
        ):
            return  # decided with its gang while this item waited for the gang's lock
        members = [
            p for p in self.state.gang_pods(namespace, gang.key) if not is_done(p) and not is_deleting(p)
        ]
        if len(members) < gang.size:
            self._fail(
                pod,
                "GangIncomplete",
                f"{gang.display}: {len(members)} of its {gang.size} Pods exist; no Pod of a gang is "
                f"allocated until all {gang.size} do",
            )
            return
        waiting = [p for p in members if is_gated(p)]
        uids = tuple(p["metadata"]["uid"] for p in waiting)
        if self._gang_misfit.get((namespace, gang.key)) == (self._epoch, uids):
            return  # decided for another member's item since anything changed: its events say why
        claims_of: dict[str, dict[str, Json]] = {}
        for member in waiting:
            self._first_seen.setdefault(member["metadata"]["uid"], time.monotonic())
            claims = await self._pod_claims(member)
            if claims is None:
                if member is not pod:
                    self._fail(
                        pod,
                        "GangWaiting",
                        f"{gang.display}: Pod {name_of(member)} of the gang cannot be allocated yet "
                        "(its events say why), so none of the gang is",
                    )
                return
            claims_of[member["metadata"]["uid"]] = claims
        async with self._decide:
            decided = await self._decide_gang_together(gang, waiting, claims_of)
        if decided is None:
            if len(self._gang_misfit) > 4096:  # gangs long gone: forget them all, a retry costs one decision
                self._gang_misfit.clear()
            self._gang_misfit[(namespace, gang.key)] = (self._epoch, uids)
            return
        self._gang_misfit.pop((namespace, gang.key), None)
        placed_all = []
        try:
            for member, claims, outcome, plans in decided:
                placed_all.append(
                    (member, claims, await self._write_reservations(member, claims, outcome, plans))
                )
        finally:  # a failed write leaves the members after it unwritten: not assumed
            undo_all(plan for *_, plans in decided for plan in plans)
        log.info("gang allocated", gang=gang.display, namespace=namespace, pods=len(decided))
        for member, claims, placed in placed_all:
            await self._ungate(member, claims, placed)

    async def _decide_gang_together(
        self, gang: Gang, members: list[Json], claims_of: Mapping[str, dict[str, Json]]
    ) -> list[tuple[Json, dict[str, Json], Placed, list[Reservation]]] | None:
        """Allocate every waiting member of `gang` together and assume their claims' reservations; None (with
        a Warning on each member, and every reservation a member already held withdrawn) if they do not all
        fit."""
        requests: list[AllocationRequest] = []
        fresh: list[dict[str, Json]] = []
        for member in members:
            claims = {
                pc: self.state.get(CLAIMS, key_of(c)) or c
                for pc, c in claims_of[member["metadata"]["uid"]].items()
            }
            request = self._request(member, claims)
            if request is None:
                return None
            requests.append(request)
            fresh.append(claims)
        outcome = self.allocator.allocate_group(requests)
        if isinstance(outcome, tuple):
            index, failure = outcome
            before = f", with the {index} Pod(s) before it placed," if index else ""
            message = (
                f"{gang.display} ({gang.size} Pods) does not fit together, so none of its Pods is allocated: "
                f"Pod {name_of(members[index])}{before} cannot be placed: {failure.message}"
            )
            for member, claims in zip(members, fresh, strict=True):
                self._fail(
                    member,
                    "GangDoesNotFit" if failure.reason == "AllocationFailed" else failure.reason,
                    message,
                    claims=list(claims.values()),
                )
            for member, claims in zip(members, fresh, strict=True):
                await self._withdraw(member, claims)
            return None
        decided: list[tuple[Json, dict[str, Json], Placed, list[Reservation]]] = []
        try:
            for member, claims, placed in zip(members, fresh, outcome, strict=True):
                decided.append(
                    (member, claims, placed, await self._plan_reservations(member, claims, placed))
                )
        except BaseException:
            undo_all(plan for *_, plans in decided for plan in plans)
            raise
        return decided

    async def _ungate(self, pod: Json, claims: Mapping[str, Json], placed: _Placement) -> None:
        """Write the Pod's devices and node and lift its gate (or defer it behind its node's device
        plugin)."""
        node, allocations, gpu_uuids = placed
        uid = pod["metadata"]["uid"]
        annotations = device_annotations(pod, allocations, gpu_uuids)
        if self.device_plugin and node and delivery.delivery_containers(pod):
            now = datetime.datetime.now(datetime.UTC)
            busy = delivery.busy_with(self.state.pods_on(node), node, now, exclude_uid=uid)
            if self._ungating_elsewhere(node, uid):
                busy.append(f"{'/'.join(self._ungating[node][2])} (being ungated)")
            if busy:
                # Its claims stay reserved; it is ungated once the kubelet admitted the Pod before it.
                log.info("pod waits for its node's device plugin", pod=name_of(pod), node=node, behind=busy)
                self._deferred.setdefault(node, set()).add((POD, *key_of(pod)))
                self.work.add_after((POD, *key_of(pod)), DELIVERY_RECHECK)
                return
            annotations[names.NODE_ANNOTATION] = node
            annotations[names.UNGATED_AT_ANNOTATION] = delivery.timestamp(now)
            # Taken before the patch is sent (no await since the check): another worker deciding for the
            # same node meanwhile must not see it free because the patch has not come back yet.
            self._ungating[node] = (uid, time.monotonic(), key_of(pod))
        patched = await self.kube.json_patch(
            path_of("pods", namespace=pod["metadata"]["namespace"], name=pod["metadata"]["name"]),
            pod_patch(pod, node, annotations),
        )
        self.state.wrote(PODS, patched)
        self.recorder.forget(uid)
        origins: dict[str, str] = {}
        for ref in pod_claim_refs(pod):
            if ref.get("resourceClaimTemplateName"):
                origins[str(ref["name"])] = f"from template {ref['resourceClaimTemplateName']}"
            elif isinstance(ref.get("extendedResources"), dict):
                origins[str(ref["name"])] = "for " + ", ".join(sorted(set(ref["extendedResources"].values())))
        summary = ", ".join(
            f"{pc}={name_of(c)}"
            + (f" ({origins[pc]})" if pc in origins else "")
            + f"[{devices_text(allocations[pc])}]"
            for pc, c in sorted(claims.items())
        )
        self.recorder.normal(pod, "Allocated", f"claims allocated on node {node}: {summary}")
        metrics.ALLOCATIONS.inc()
        seen = self._first_seen.pop(uid, None)
        metrics.LATENCY.observe(max(0.0, time.monotonic() - seen) if seen is not None else 0.0)
        log.info("pod ungated", pod=name_of(pod), node=node, claims=summary)

    async def _decide_pod(
        self, pod: Json, claims: dict[str, Json]
    ) -> tuple[Placed, list[Reservation]] | None:
        """Allocate the Pod's claims together and assume their reservations for it (the caller writes them);
        None (with a Warning) if impossible."""
        request = self._request(pod, claims)
        if request is None:
            return None
        outcome = self.allocator.allocate(request)
        if isinstance(outcome, Failure):
            self._fail(pod, outcome.reason, outcome.message, claims=list(claims.values()))
            await self._withdraw(pod, claims)
            return None
        return outcome, await self._plan_reservations(pod, claims, outcome)

    async def _plan_reservations(
        self, pod: Json, claims: Mapping[str, Json], outcome: Placed
    ) -> list[Reservation]:
        """Each claim's new status (allocated if new, reserved for `pod`), assumed in the state at once; a
        claim without our finalizer gets it first (a user's claim: ours are born with it)."""
        plans: list[Reservation] = []
        try:
            for pod_claim, claim in claims.items():
                claim = await self.writes.ensure_finalizer(self.state.get(CLAIMS, key_of(claim)) or claim)
                new = reserved_status(claim, pod, outcome.allocations.get(pod_claim), outcome.node)
                if new is not None:
                    newly = not (claim.get("status") or {}).get("allocation")
                    plans.append(Reservation(pod_claim, claim, new, newly, self.state.assume(CLAIMS, new)))
        except BaseException:
            undo_all(plans)
            raise
        return plans

    async def _write_reservations(
        self, pod: Json, claims: Mapping[str, Json], outcome: Placed, plans: list[Reservation]
    ) -> _Placement:
        """Write the planned statuses, in order; the ones not written when a write fails are un-assumed."""
        written_by_claim: dict[str, Json] = {}
        try:
            for plan in plans:
                written_by_claim[plan.pod_claim] = await self.writes.reservation(pod, plan, outcome.node)
        finally:
            undo_all(plans)  # nothing for the written ones: their answer replaced the assumption
        allocations: dict[str, Json] = {}
        for pod_claim, claim in claims.items():
            current = written_by_claim.get(pod_claim) or self.state.get(CLAIMS, key_of(claim)) or claim
            allocations[pod_claim] = current["status"]["allocation"]
        return outcome.node, allocations, outcome.gpu_uuids

    def _request(self, pod: Json, claims: Mapping[str, Json]) -> AllocationRequest | None:
        """What the allocator needs to place `pod`; None (with a Warning) when its claims cannot be
        allocated."""
        uid = pod["metadata"]["uid"]
        for claim in claims.values():
            if uid not in reserved_uids(claim) and len(reserved_uids(claim)) >= RESERVED_FOR_MAX:
                self._fail(
                    pod, "AllocationFailed", f"ResourceClaim {name_of(claim)} is reserved for 256 consumers"
                )
                return None
        missing = self._missing_classes(claims)
        if missing:
            self._fail(pod, "ClassNotFound", "; ".join(missing), claims=list(claims.values()))
            return None
        return self._request_of(pod, claims)

    def _request_of(self, pod: Json, claims: Mapping[str, Json]) -> AllocationRequest:
        static = self._static_inputs()
        return AllocationRequest(
            pod=pod,
            claims=claims,
            classes=static[CLASSES],
            slices=static[SLICES],
            nodes=static[NODES],
            candidates=self._candidate_nodes(pod, static[NODES]),
            all_claims=(),
            taint_rules=static[TAINT_RULES],
            state=self.state,
        )

    def _static_inputs(self) -> dict[str, list[Json]]:
        """Classes, slices, nodes and taint rules, in name order (so that the snapshot, and with it every
        choice, is the same in every process), gathered again only after one of them changed."""
        # Kind by kind: an agent republishing its node's slice gathers the slices again, not the 5,000 nodes,
        # and keeps the nodes' list itself (the allocator reads an unchanged list by identity).
        inputs: dict[str, list[Json]] = {}
        for kind in (CLASSES, SLICES, NODES, TAINT_RULES):
            key = (self.state.epoch, self.state.revision_of(kind))
            held = self._static.get(kind)
            if held is None or held[0] != key:
                held = self._static[kind] = (key, list(self.state.all(kind, ordered=True)))
                if kind == NODES:
                    self._candidates.clear()
                    self._candidate_names = 0
            inputs[kind] = held[1]
        return inputs

    def warm(self) -> int:
        """What a standby does so that it decides at once when it takes the Lease: a trial allocation (never
        written) of a claim made from each ResourceClaimTemplate, which parses every slice, builds the
        snapshot and evaluates the selectors of the classes and templates in use on every device (at 40,000
        devices, 6.5 s that a new leader's first Pod waits otherwise; kept while nothing changes). Returns
        the templates tried."""
        tried = 0
        for template in self.state.all(TEMPLATES):
            meta = template.get("metadata") or {}
            spec = (template.get("spec") or {}).get("spec")
            if not isinstance(spec, dict):
                continue
            pod = {"metadata": {"name": "warm-up", "namespace": meta.get("namespace"), "uid": "warm-up"}}
            claim = {
                "apiVersion": template.get("apiVersion"),
                "kind": "ResourceClaim",
                "metadata": {
                    "name": f"warm-up-{meta.get('name')}",
                    "namespace": meta.get("namespace"),
                    "uid": f"warm-up-{meta.get('uid')}",
                    "resourceVersion": str(meta.get("resourceVersion")),
                },
                "spec": spec,
            }
            if self._missing_classes({"warm": claim}):
                continue
            # The outcome does not matter, only what it leaves cached.
            self.allocator.allocate(self._request_of(pod, {"warm": claim}))
            tried += 1
        return tried

    def _candidate_nodes(self, pod: Json, nodes: list[Json]) -> frozenset[str]:
        """The nodes the Pod's own constraints allow, by name; Pods with the same constraints (a Job's, a
        Deployment's) share one pass over the nodes."""
        spec = pod.get("spec") or {}
        constraints = json.dumps(
            [
                spec.get("nodeName"),
                spec.get("nodeSelector"),
                (spec.get("affinity") or {}).get("nodeAffinity"),
            ],
            sort_keys=True,
        )
        found = self._candidates.get(constraints)
        if found is None:
            found = frozenset(n["metadata"]["name"] for n in nodes if pod_fits_node(pod, n))
            if len(self._candidates) >= 1024 or self._candidate_names + len(found) > CANDIDATE_NAMES_KEPT:
                self._candidates.clear()
                self._candidate_names = 0
            self._candidates[constraints] = found
            self._candidate_names += len(found)
        return found

    async def _withdraw(self, pod: Json, claims: Mapping[str, Json]) -> None:
        """Undo what an unplaceable Pod holds, as kube-scheduler's PostFilter does: its reservation on each of
        its claims goes, and a claim left with no consumer is deallocated, so the next attempt chooses every
        claim afresh instead of being pinned to a node where the Pod cannot run (a template claim allocated on
        one node and a shared claim on another, after a failed write or a leader change between the two).
        Safe because the Pod is gated: nothing runs on its reservations, and other consumers keep theirs."""
        uid = pod["metadata"]["uid"]
        undone = False
        for claim in claims.values():
            claim = self.state.get(CLAIMS, key_of(claim)) or claim
            if uid not in reserved_uids(claim):
                continue
            keep = [r for r in (claim.get("status") or {}).get("reservedFor") or [] if r.get("uid") != uid]
            await self.writes.consumers(
                claim, keep, f"pod {name_of(pod)} cannot be placed: its reservation was withdrawn"
            )
            undone = True
        if undone:
            log.info("allocation withdrawn for an unplaceable pod", pod=name_of(pod))
            self.enqueue(POD, *key_of(pod))

    def _missing_classes(self, claims: Mapping[str, Json]) -> list[str]:
        """`claim X request R: device class C does not exist` for each unallocated request naming no class."""
        missing = []
        for claim in claims.values():
            if (claim.get("status") or {}).get("allocation"):
                continue
            for request in ((claim.get("spec") or {}).get("devices") or {}).get("requests") or []:
                subs = (
                    [request.get("exactly") or {}]
                    if request.get("exactly")
                    else request.get("firstAvailable") or []
                )
                for sub in subs:
                    name = sub.get("deviceClassName")
                    if name and self.state.get(CLASSES, ("", str(name))) is None:
                        what = f"claim {name_of(claim)} request {request.get('name')}"
                        missing.append(f"{what}: device class {name} does not exist")
        return missing

    def _fail(self, pod: Json, reason: str, message: str, claims: Iterable[Json] = ()) -> None:
        metrics.FAILURES.labels(reason).inc()
        self.recorder.warning(pod, reason, message)
        for claim in claims:
            if not (claim.get("status") or {}).get("allocation"):
                self.recorder.warning(claim, reason, f"pod {name_of(pod)}: {message}")
        log.info("pod stays gated", pod=name_of(pod), reason=reason, detail=message)


def _claim_in_path(path: str) -> str | None:
    """The claim a REST path names (`.../resourceclaims/NAME[/status]`), None for the collection or others."""
    parts = path.split("?")[0].rstrip("/").split("/")
    if "resourceclaims" in parts:
        index = parts.index("resourceclaims")
        if index + 1 < len(parts):
            return parts[index + 1]
    return None


def _rejection_reason(exc: KubeError) -> str:
    """The condition reason: the Status reason the API server gave (Invalid, Forbidden, BadRequest)."""
    body = exc.body if isinstance(exc.body, dict) else {}
    return str(body.get("reason") or exc.reason or exc.status).replace(" ", "")


def _refused_call(exc: KubeError) -> str:
    """`the API server refused to create a ResourceClaim (422 Invalid): <its message>`."""
    verbs = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
    parts = exc.path.split("?")[0].rstrip("/").split("/")
    plural = next((p for p in reversed(parts) if p in ("resourceclaims", "pods", "events")), parts[-1])
    target = _claim_in_path(exc.path) or (parts[-1] if plural == "pods" and parts[-2] == "pods" else "")
    noun = {"resourceclaims": "ResourceClaim", "pods": "Pod", "events": "Event"}.get(plural, plural)
    what = f"{noun} {target}".strip() if target else f"a {noun}"
    status = "status of " if parts[-1] == "status" else ""
    verb = verbs.get(exc.method, exc.method.lower() or "write")
    return (
        f"the API server refused to {verb} {status}{what} ({exc.status} {_rejection_reason(exc)}): "
        f"{exc.message}"
    )
