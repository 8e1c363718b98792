"""`dra-operator simulate`: allocate the claims of Pods offline, from YAML files, as the operator would.

Input: multi-document YAML (either apiVersion) of DeviceClasses, ResourceSlices, ResourceClaims,
ResourceClaimTemplates, Pods and workloads, and optionally Nodes (labels matter for nodeSelector slices;
without Nodes, the nodes are the slices' nodeName values). Pods are handled in file order; a workload stands
for its Pods: a Job (or a CronJob's job template) for `parallelism` Pods (default 1), a Deployment, ReplicaSet
or StatefulSet for `replicas` Pods (default 1), a DaemonSet for one Pod per node; they are named
`<workload>-<i>`, i from 0. For each Pod, template claims are generated (`generateName: <pod>-<claim>-` plus a
deterministic suffix, owned by the Pod), shared claims are allocated once and then reserved for every Pod that
uses them.

Output: a table Pod / claim -> node -> devices with the explanation for Pods that could not be allocated, or
with `-o yaml` the resulting ResourceClaims (generated ones included) with `status.allocation` and
`status.reservedFor`. Exit status: 0 when every Pod was allocated, 1 otherwise, 2 on invalid input (the
message names file and object).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import yaml
from pydantic import ValidationError

from dra_operator.allocation import Allocation, Node, PodRef, Snapshot, allocate, claim_key
from dra_operator.allocation.nodes import selector_matches
from dra_operator.allocation.selectors import SelectorCache
from dra_operator.allocation.snapshot import ClaimKey
from dra_operator.allocation.taints import rule_taints
from dra_operator.api.loader import load_dra_objects
from dra_operator.api.pod import check_pod_claims, pod_spec_of
from dra_operator.api.resource import (
    RESERVED_FOR_MAX,
    DeviceClass,
    DeviceSelector,
    DeviceTaintRule,
    DraObject,
    InvalidObject,
    NodeSelector,
    ResourceClaim,
    ResourceClaimConsumerReference,
    ResourceClaimStatus,
    ResourceClaimTemplate,
    ResourceSlice,
    load_object,
)
from dra_operator.cel import CelCompileError, compile_selector
from dra_operator.operator.placement import generated_claim

DEFAULT_NAMESPACE = "default"
# Kubernetes' alphabet for generated name suffixes (no vowels, no look-alikes).
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_REPLICA_KINDS = {"Deployment", "ReplicaSet", "StatefulSet", "ReplicationController"}
_IGNORED_KINDS = {"Namespace"}


class InputError(Exception):
    """Invalid input: the message names the file and the object."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE",
        help="YAML file ('-' for stdin); repeatable",
    )
    parser.add_argument("-o", "--output", choices=("table", "yaml"), default="table", help="output format")


@dataclass
class PodRun:
    """One Pod to simulate and what happened to it."""

    ref: PodRef
    source: str
    pod: dict[str, Any]
    only_node: str | None = None  # DaemonSet Pods
    claims: list[tuple[str, ClaimKey]] = field(default_factory=list)  # (Pod claim name, claim)
    node: str | None = None
    allocated: bool = False
    problem: str = ""


@dataclass
class World:
    classes: dict[str, DeviceClass] = field(default_factory=dict)
    slices: list[ResourceSlice] = field(default_factory=list)
    claims: dict[ClaimKey, ResourceClaim] = field(default_factory=dict)
    templates: dict[ClaimKey, ResourceClaimTemplate] = field(default_factory=dict)
    taint_rules: dict[str, DeviceTaintRule] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    workloads: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    order: list[ClaimKey] = field(default_factory=list)  # claims in input order, then generated ones


def _read(path: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror or err}") from None


def _namespaced(meta_namespace: str | None, name: str) -> ClaimKey:
    return (meta_namespace or DEFAULT_NAMESPACE, name)


def load(paths: Sequence[str]) -> World:
    world = World()
    for path in paths:
        text = _read(path)
        try:
            models, others = load_dra_objects(text, source=path)
        except InvalidObject as err:
            raise InputError(str(err)) from None
        for model in models:
            _check_selectors(model, path)
            if isinstance(model, DeviceClass):
                _unique(world.classes, model.name, model, path, "DeviceClass")
            elif isinstance(model, ResourceSlice):
                world.slices.append(model)
            elif isinstance(model, DeviceTaintRule):
                _unique(world.taint_rules, model.name, model, path, "DeviceTaintRule")
            elif isinstance(model, ResourceClaim):
                model.metadata.namespace = model.metadata.namespace or DEFAULT_NAMESPACE
                key = claim_key(model)
                _unique(world.claims, key, model, path, "ResourceClaim")
                world.order.append(key)
            else:
                model.metadata.namespace = model.metadata.namespace or DEFAULT_NAMESPACE
                _unique(
                    world.templates,
                    _namespaced(model.namespace, model.name),
                    model,
                    path,
                    "ResourceClaimTemplate",
                )
        for obj in others:
            kind = obj.get("kind")
            if kind == "Node":
                try:
                    world.nodes.append(Node.from_object(obj))
                except ValueError as err:
                    raise InputError(f"{path}: {err}") from None
            elif kind in _IGNORED_KINDS:
                continue
            elif kind == "Pod" or kind in _REPLICA_KINDS or kind in {"Job", "CronJob", "DaemonSet"}:
                world.workloads.append((path, obj))
            else:
                name = (obj.get("metadata") or {}).get("name", "<unnamed>")
                raise InputError(f"{path}: {kind} {name}: kind not supported by simulate")
    return world


def _selectors(model: DraObject) -> list[tuple[str, list[DeviceSelector] | None]]:
    """(field path, selectors) of a class, claim, template or taint rule."""
    if isinstance(model, DeviceClass):
        return [("spec.selectors", model.spec.selectors)]
    if isinstance(model, DeviceTaintRule):
        selector = model.spec.device_selector
        return [("spec.deviceSelector.selectors", selector.selectors if selector is not None else None)]
    if isinstance(model, ResourceClaim):
        devices, base = model.spec.devices, "spec.devices"
    elif isinstance(model, ResourceClaimTemplate):
        devices, base = model.spec.spec.devices, "spec.spec.devices"
    else:
        return []
    found: list[tuple[str, list[DeviceSelector] | None]] = []
    for index, request in enumerate(devices.requests or ()):
        path = f"{base}.requests[{index}]"
        if request.exactly is not None:
            found.append((f"{path}.exactly.selectors", request.exactly.selectors))
        for sub, alternative in enumerate(request.first_available or ()):
            found.append((f"{path}.firstAvailable[{sub}].selectors", alternative.selectors))
    return found


def _check_selectors(model: DraObject, path: str) -> None:
    """CEL that does not compile is invalid input, as the apiserver rejects such objects on create."""
    for field_path, selectors in _selectors(model):
        for index, selector in enumerate(selectors or ()):
            try:
                compile_selector(selector.cel.expression)
            except CelCompileError as err:
                name = "/".join(filter(None, (model.metadata.namespace, model.name)))
                raise InputError(
                    f"{path}: {model.kind} {name}: {field_path}[{index}].cel.expression: {err}"
                ) from None


def _unique(into: dict[Any, Any], key: Any, value: Any, path: str, kind: str) -> None:
    if key in into:
        name = "/".join(key) if isinstance(key, tuple) else key
        raise InputError(f"{path}: {kind} {name}: defined more than once")
    into[key] = value


def _int(obj: dict[str, Any], path: str, keys: Sequence[str], default: int, what: str) -> int:
    node: Any = obj
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    if node is None:
        return default
    if not isinstance(node, int) or isinstance(node, bool) or node < 0:
        name = (obj.get("metadata") or {}).get("name")
        raise InputError(f"{path}: {obj.get('kind')} {name}: {what} must be a non-negative integer")
    return node


def expand_pods(world: World, node_names: Sequence[str | None]) -> list[PodRun]:
    """The Pods of the input, in order: Pods as given, workloads as `<name>-<i>` Pods of their template."""
    runs: list[PodRun] = []
    for path, obj in world.workloads:
        kind = obj.get("kind")
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            raise InputError(f"{path}: {kind}: metadata.name is required")
        namespace = meta.get("namespace") or DEFAULT_NAMESPACE
        try:
            check_pod_claims(obj, source=path)
        except InvalidObject as err:
            raise InputError(str(err)) from None
        spec = pod_spec_of(obj)
        if kind == "Pod":
            pods: list[tuple[str, str | None]] = [(name, None)]
        elif kind == "DaemonSet":
            pods = [(f"{name}-{i}", n) for i, n in enumerate(node_names) if n is not None]
        else:
            if kind == "Job":
                count = _int(obj, path, ("spec", "parallelism"), 1, "spec.parallelism")
            elif kind == "CronJob":
                count = _int(obj, path, ("spec", "jobTemplate", "spec", "parallelism"), 1, "parallelism")
            else:
                count = _int(obj, path, ("spec", "replicas"), 1, "spec.replicas")
            pods = [(f"{name}-{i}", None) for i in range(count)]
        for pod_name, only_node in pods:
            uid = meta.get("uid") if kind == "Pod" else None
            uid = str(uid or uuid.uuid5(uuid.NAMESPACE_URL, f"dra-operator-simulate/{namespace}/{pod_name}"))
            pod = {"metadata": {"name": pod_name, "namespace": namespace, "uid": uid}, "spec": spec}
            runs.append(PodRun(PodRef(namespace, pod_name, uid), path, pod, only_node))
    return runs


def pod_nodes(run: PodRun, nodes: Sequence[Node]) -> list[str | None] | None:
    """The nodes the Pod's own spec allows (nodeName, nodeSelector, required node affinity); None: all."""
    spec = run.pod["spec"]
    allowed: list[str | None] | None = None
    if run.only_node:
        allowed = [run.only_node]
    node_name = spec.get("nodeName")
    labels = spec.get("nodeSelector") or {}
    affinity = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    if not node_name and not labels and not affinity:
        return allowed
    try:
        required = NodeSelector.model_validate(affinity) if affinity else None
    except ValidationError as err:
        raise InputError(f"{run.source}: Pod {run.ref.name}: spec.affinity.nodeAffinity: {err}") from None
    matching = [
        n.name
        for n in nodes
        if (not node_name or n.name == node_name)
        and all(n.labels.get(k) == v for k, v in labels.items())
        and (required is None or selector_matches(required, n))
    ]
    return matching if allowed is None else [n for n in matching if n in allowed]


def _suffix(seed: str) -> str:
    digest = hashlib.sha256(seed.encode()).digest()
    return "".join(_SUFFIX_ALPHABET[b % len(_SUFFIX_ALPHABET)] for b in digest[:5])


def resolve_claims(world: World, run: PodRun) -> list[ResourceClaim] | None:
    """The Pod's claims in Pod order, template claims generated; None (see `run.problem`) if one is absent."""
    claims: list[ResourceClaim] = []
    for ref in check_pod_claims(run.pod, source=run.source):
        namespace = run.ref.namespace
        if ref.resource_claim_name:
            key = (namespace, ref.resource_claim_name)
            claim = world.claims.get(key)
            if claim is None:
                run.problem = f"resourceclaim {namespace}/{ref.resource_claim_name} not found"
                return None
        else:
            template_name = ref.resource_claim_template_name or ""
            template = world.templates.get((namespace, template_name))
            if template is None:
                run.problem = f"resourceclaimtemplate {namespace}/{template_name} not found"
                return None
            generated = generated_claim(run.pod, ref.name, template.to_dict())
            meta = generated["metadata"]
            meta["name"] = meta["generateName"] + _suffix(f"{run.ref.uid}/{ref.name}")
            claim = load_object(generated)  # type: ignore[assignment]
            assert isinstance(claim, ResourceClaim)
            key = claim_key(claim)
            world.claims[key] = claim
            world.order.append(key)
        run.claims.append((ref.name, key))
        claims.append(claim)
    return claims


def _reserve(claim: ResourceClaim, run: PodRun) -> None:
    status = claim.status or ResourceClaimStatus()
    reserved = list(status.reserved_for or [])
    if not any(r.uid == run.ref.uid for r in reserved):
        reserved.append(ResourceClaimConsumerReference(resource="pods", name=run.ref.name, uid=run.ref.uid))
    status.reserved_for = reserved
    claim.status = status


def simulate(world: World) -> tuple[list[PodRun], dict[ClaimKey, str]]:
    """Allocate Pod after Pod. Returns the runs and, per Pod that failed allocation, its explanation text."""
    cache = SelectorCache()
    ruled = rule_taints(list(world.taint_rules.values()), world.slices, cache) if world.taint_rules else None
    snapshot = Snapshot.build(
        world.classes.values(),
        world.slices,
        world.nodes or None,
        list(world.claims.values()),
        cache=cache,
        extra_taints=ruled.by_device if ruled is not None else None,
    )
    runs = expand_pods(world, [n.name for n in snapshot.nodes])
    explanations: dict[ClaimKey, str] = {}
    for run in runs:
        claims = resolve_claims(world, run)
        if claims is None:
            continue
        full = [
            claim_key(c)
            for c in claims
            if len((c.status and c.status.reserved_for) or ()) >= RESERVED_FOR_MAX
        ]
        if full:
            run.problem = (
                f"resourceclaim {'/'.join(full[0])} is reserved for {RESERVED_FOR_MAX} consumers already"
            )
            continue
        outcome = allocate(snapshot, run.ref, claims, pod_nodes(run, snapshot.nodes))
        if not isinstance(outcome, Allocation):
            explanations[(run.ref.namespace, run.ref.name)] = outcome.explanation.render()
            continue
        for key, result in outcome.results.items():
            claim = world.claims[key]
            claim.status = claim.status or ResourceClaimStatus()
            claim.status.allocation = result
        outcome.commit(snapshot)
        for claim in claims:
            _reserve(claim, run)
        run.node = outcome.node_name
        run.allocated = True
    return runs, explanations


def _devices(claim: ResourceClaim) -> str:
    allocation = claim.status.allocation if claim.status else None
    if allocation is None:
        return "-"
    results = allocation.devices.results or []
    return (
        ", ".join(f"{r.driver}/{r.pool}/{r.device}" + (" (admin)" if r.admin_access else "") for r in results)
        or "-"
    )


def render_table(
    world: World, runs: Sequence[PodRun], explanations: dict[ClaimKey, str], out: TextIO
) -> None:
    rows: list[tuple[str, str, str, str]] = [("POD", "CLAIM", "NODE", "DEVICES")]
    notes: list[tuple[int, str]] = []
    for run in runs:
        pod = f"{run.ref.namespace}/{run.ref.name}"
        if not run.claims and run.allocated:
            rows.append((pod, "-", run.node or "-", "-"))
        for pod_claim, key in run.claims:
            claim = world.claims[key]
            allocation = claim.status.allocation if claim.status else None
            shared = (
                "" if any(o.kind == "Pod" for o in claim.metadata.owner_references or ()) else " (shared)"
            )
            label = f"{pod_claim}: {key[1]}{shared}"
            node = (run.node or "*") if run.allocated else "-"
            devices = _devices(claim) if run.allocated and allocation is not None else "-"
            rows.append((pod, label, node, devices))
        if not run.allocated:
            if not run.claims:
                rows.append((pod, "-", "-", "-"))
            text = run.problem or explanations.get((run.ref.namespace, run.ref.name), "")
            notes.append((len(rows) - 1, text))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    by_row = dict(notes)
    for index, row in enumerate(rows):
        line = "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3]
        out.write(line.rstrip() + "\n")
        if index in by_row:
            for text_line in by_row[index].splitlines():
                out.write(f"    {text_line}\n")


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (CEL expressions) as literal blocks, as people write them."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_Dumper.add_representer(str, _represent_str)


def render_yaml(world: World, out: TextIO) -> None:
    documents = [world.claims[key].to_dict() for key in world.order]
    yaml.dump_all(documents, out, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def main(args: argparse.Namespace) -> int:
    try:
        world = load(args.filename)
        runs, explanations = simulate(world)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except InvalidObject as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        if args.output == "yaml":
            render_yaml(world, sys.stdout)
        else:
            render_table(world, runs, explanations, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0 if all(run.allocated for run in runs) else 1
