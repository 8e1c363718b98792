"""Pydantic models of the five DRA kinds of resource.dra-operator.io/v1, mirroring resource.k8s.io/v1 (for
DeviceTaintRule: resource.k8s.io/v1alpha3 of Kubernetes 1.33-1.34).

Python names are snake_case, Kubernetes JSON names camelCase (alias generator). Spec types forbid unknown
fields, as the apiserver does, so a mis-indented manifest is an error rather than a silently empty selector.
Validation runs once, at load time; the allocator only reads attributes. `crd_rules` on a class are the CEL
rules the CRD generator puts into `x-kubernetes-validations`; the class's Python validators enforce the same.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from dra_operator.api.formats import (
    CEL_EXPRESSION_MAX,
    STRING_ATTRIBUTE_MAX,
    VERSION_ATTRIBUTE_MAX,
    DNSLabel,
    DNSSubdomain,
    DriverName,
    Format,
    FullyQualifiedName,
    PoolName,
    QualifiedName,
    QuantityValue,
    RequestReference,
)
from dra_operator.api.group import API_VERSION as API_VERSION
from dra_operator.api.group import API_VERSIONS as API_VERSIONS
from dra_operator.api.group import GROUP as GROUP
from dra_operator.api.group import UPSTREAM_API_VERSION as UPSTREAM_API_VERSION
from dra_operator.api.group import VERSION as VERSION
from dra_operator.api.meta import annotation_problems, invalid_value, label_problems, qualified_name_messages
from dra_operator.api.problems import InvalidObject as InvalidObject
from dra_operator.api.problems import format_location as format_location
from dra_operator.api.problems import problems_of as problems_of
from dra_operator.api.sharing import LeanModel, Table, compacted, shared_map

# Limits of resource.k8s.io/v1 (k8s.io/api resource/v1 types.go constants).
REQUESTS_MAX = 32
SELECTORS_MAX = 32
SUBREQUESTS_MAX = 8
CONSTRAINTS_MAX = 32
CONFIG_MAX = 32
TOLERATIONS_MAX = 16
RESULTS_MAX = 32
ALLOCATION_CONFIG_MAX = 64
RESERVED_FOR_MAX = 256
DEVICES_PER_SLICE_MAX = 128
# From 1.35 a slice whose devices use taints or counters holds at most 64 devices.
DEVICES_PER_SLICE_WITH_TAINTS_OR_COUNTERS_MAX = 64
ATTRIBUTES_AND_CAPACITY_MAX = 32
DEVICE_TAINTS_MAX = 16
TAINT_KEY_MAX = 316
TAINT_VALUE_MAX = 63
# metav1.Condition entries of a DeviceTaintRule's status (resource.k8s.io/v1alpha3, 1.35).
TAINT_RULE_CONDITIONS_MAX = 8
BINDING_CONDITIONS_MAX = 4
COUNTER_SETS_MAX = 8
COUNTERS_PER_SET_MAX = 32
CONSUMES_COUNTERS_MAX = 2
OPAQUE_PARAMETERS_MAX = 10 * 1024
TERMS_MAX = 32
VALUES_MAX = 256

AllocationMode = Literal["ExactCount", "All"]
EXACT_COUNT: AllocationMode = "ExactCount"
ALL: AllocationMode = "All"

CrdRule = tuple[str, str]
"""A CEL rule for `x-kubernetes-validations` and its message."""


class KubeModel(LeanModel):
    """Base of the spec and status types: camelCase JSON, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        arbitrary_types_allowed=True,
        validate_default=False,
    )
    crd_rules: ClassVar[tuple[CrdRule, ...]] = ()
    # Lists that Kubernetes treats as maps (`x-kubernetes-list-type: map`): Python field name -> JSON key
    # fields. The apiserver then rejects duplicate keys itself. Lists not named here are atomic.
    crd_list_map_keys: ClassVar[dict[str, tuple[str, ...]]] = {}
    # Fields required in Python whose absence the CRD reports through a friendlier `crd_rules` message.
    crd_not_required: ClassVar[frozenset[str]] = frozenset()
    # Transition rules (they read `oldSelf`): checked on updates only, by the apiserver; a model checks one
    # object at a time and cannot. Kubernetes' own update validation (ValidateImmutableField) as CEL.
    crd_transition_rules: ClassVar[tuple[CrdRule, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        """The Kubernetes JSON form: camelCase, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def _exactly_one(owner: str, fields: dict[str, bool]) -> None:
    given = [name for name, present in fields.items() if present]
    if len(given) != 1:
        names = ", ".join(fields)
        if not given:
            raise ValueError(f"{owner}: exactly one of {names} must be set, none is")
        raise ValueError(f"{owner}: exactly one of {names} must be set, not {' and '.join(given)}")


# ---------------------------------------------------------------------------------------------- metadata


class OwnerReference(LeanModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    api_version: str
    kind: str
    name: str
    uid: str
    controller: bool | None = None
    block_owner_deletion: bool | None = None


class ObjectMeta(LeanModel):
    """metav1.ObjectMeta; fields the operator does not read pass through unchanged (extra allowed)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: str | None = None
    generate_name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    owner_references: list[OwnerReference] | None = None
    finalizers: list[str] | None = None


class ClaimTemplateMeta(KubeModel):
    """The metadata a ResourceClaimTemplate may give its claims: labels and annotations only."""

    labels: dict[str, str] | None = None
    """Labels every claim made from the template gets."""
    annotations: dict[str, str] | None = None
    """Annotations every claim made from the template gets."""

    @model_validator(mode="after")
    def _keys_and_values(self) -> ClaimTemplateMeta:
        # Generated claims carry these; the apiserver would refuse each claim, so refuse the template (as
        # Kubernetes does) with its words.
        found = label_problems(self.labels or {}, "labels") + annotation_problems(
            self.annotations or {}, "annotations"
        )
        if found:
            raise ValueError("; ".join(f"{path}: {message}" for path, message in found))
        return self


# ------------------------------------------------------------------------------------- core/v1 mirrors


class NodeSelectorRequirement(KubeModel):
    key: str
    """The node label key (or, under matchFields, the node field: only metadata.name) the requirement
    tests."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    """How the key's value relates to `values`: In, NotIn, Exists, DoesNotExist, Gt or Lt."""
    values: Annotated[list[str], Field(max_length=VALUES_MAX)] | None = None
    """The values to compare with: one or more for In and NotIn, none for Exists and DoesNotExist, one
    integer for Gt and Lt."""


class NodeSelectorTerm(KubeModel):
    match_expressions: Annotated[list[NodeSelectorRequirement], Field(max_length=TERMS_MAX)] | None = None
    """Requirements on node labels; all of them must hold."""
    match_fields: Annotated[list[NodeSelectorRequirement], Field(max_length=TERMS_MAX)] | None = None
    """Requirements on node fields (metadata.name); all of them must hold."""


class NodeSelector(KubeModel):
    node_selector_terms: Annotated[list[NodeSelectorTerm], Field(max_length=TERMS_MAX)]
    """A node fits when it matches any one of these terms."""


class Condition(KubeModel):
    """metav1.Condition."""

    type: str
    """The condition's type, in CamelCase (e.g. Allocated, Reserved)."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    reason: str = ""
    """A CamelCase word saying why the condition last changed."""
    message: str = ""
    """A human-readable explanation of the last change."""
    last_transition_time: str | None = None
    """When the status last changed (RFC 3339)."""
    observed_generation: int | None = None
    """The object generation the condition was set for."""


# ------------------------------------------------------------------------------------- selectors, config


class CELDeviceSelector(KubeModel):
    expression: Annotated[str, Field(min_length=1, max_length=CEL_EXPRESSION_MAX)]
    """A CEL expression evaluated for each device; the device is selected when it returns true. It reads
    `device.driver`, `device.attributes["<domain>"].<name>` and `device.capacity["<domain>"].<name>` (a
    quantity), and `device.allowMultipleAllocations`. An expression that fails for a device (a missing
    attribute, a type error) is an error for the claim, not a silent false."""


class DeviceSelector(KubeModel):
    cel: CELDeviceSelector
    """Selects devices with a CEL expression."""

    # The apiserver prunes `cel: null` and reports `expression` as an unknown field; this rule adds the hint.
    crd_rules: ClassVar[tuple[CrdRule, ...]] = (
        (
            "has(self.cel)",
            "cel is required: `expression` must be nested under `cel` (indent it below `- cel:`)",
        ),
    )
    crd_not_required: ClassVar[frozenset[str]] = frozenset({"cel"})

    @model_validator(mode="before")
    @classmethod
    def _explain_misindented_expression(cls, data: Any) -> Any:
        # The upstream docs once showed `- cel:` with `expression:` at the same indentation, which YAML
        # reads as {cel: null, expression: ...}. Kubernetes rejects it; say what to fix, not only "unknown".
        if isinstance(data, dict) and "expression" in data and not data.get("cel"):
            raise ValueError(
                "`expression` must be nested under `cel` (found `cel` without a value and `expression` "
                "beside it; indent `expression:` below `- cel:`)"
            )
        return data


class OpaqueDeviceConfiguration(KubeModel):
    driver: DriverName
    """The driver the parameters are for; other drivers ignore them."""
    # runtime.RawExtension: any JSON object, passed to the driver unchanged.
    parameters: dict[str, Any]
    """Driver-specific configuration, passed through unchanged (any JSON object, at most 10 KiB)."""

    @field_validator("parameters")
    @classmethod
    def _parameters_size(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(value, separators=(",", ":"))) > OPAQUE_PARAMETERS_MAX:
            raise ValueError(f"parameters must be no more than {OPAQUE_PARAMETERS_MAX} bytes")
        return value


class DeviceClassConfiguration(KubeModel):
    opaque: OpaqueDeviceConfiguration | None = None
    """Configuration for one driver, recorded in the allocation of each device allocated through the class."""

    crd_rules: ClassVar[tuple[CrdRule, ...]] = (("has(self.opaque)", "opaque is required"),)

    @model_validator(mode="after")
    def _one_config(self) -> DeviceClassConfiguration:
        _exactly_one("config", {"opaque": self.opaque is not None})
        return self


class DeviceClaimConfiguration(KubeModel):
    requests: Annotated[list[RequestReference], Field(max_length=REQUESTS_MAX)] | None = None
    """The requests (or `request/subrequest`) this configuration applies to; empty means all requests of
    the claim."""
    opaque: OpaqueDeviceConfiguration | None = None
    """Configuration for one driver, recorded in the allocation of the devices of these requests."""

    crd_rules: ClassVar[tuple[CrdRule, ...]] = (("has(self.opaque)", "opaque is required"),)

    @model_validator(mode="after")
    def _one_config(self) -> DeviceClaimConfiguration:
        _exactly_one("config", {"opaque": self.opaque is not None})
        return self


# ------------------------------------------------------------------------------------------ DeviceClass


class DeviceClassSpec(KubeModel):
    selectors: Annotated[list[DeviceSelector], Field(max_length=SELECTORS_MAX)] | None = None
    """CEL selectors every device of this class must pass; a claim's own selectors come on top."""
    config: Annotated[list[DeviceClassConfiguration], Field(max_length=CONFIG_MAX)] | None = None
    """Configuration for the drivers, recorded in the allocation of every device allocated through this
    class, before the claim's own."""
    extended_resource_name: Annotated[str, Field(max_length=253)] | None = None
    """An extended resource name (e.g. `example.com/gpu`) that Pods may ask for in their container
    resources instead of writing a claim: the admission webhook turns such a request into a claim generated
    for the Pod from this class."""


# ------------------------------------------------------------------------------------------ claim spec


class DeviceToleration(KubeModel):
    key: Annotated[str, Field(max_length=316)] | None = None
    """The taint key this toleration matches; empty with operator Exists matches every key."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists (any value) or Equal (the value must equal `value`). Default Equal."""
    value: Annotated[str, Field(max_length=63)] | None = None
    """The taint value to match with operator Equal."""
    effect: Literal["NoSchedule", "NoExecute"] | None = None
    """The taint effect to match (NoSchedule or NoExecute); empty matches both."""
    toleration_seconds: int | None = None
    """With effect NoExecute: how long a Pod whose device gets the taint may keep running before it is
    evicted; unset means forever."""

    crd_rules: ClassVar[tuple[CrdRule, ...]] = (
        (
            "self.operator != 'Exists' || !has(self.value) || self.value == ''",
            "value must be empty for Exists",
        ),
    )

    @model_validator(mode="after")
    def _exists_has_no_value(self) -> DeviceToleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists must not have a value")
        return self


class CapacityRequirements(KubeModel):
    requests: Annotated[dict[QualifiedName, QuantityValue], Field(max_length=32)] | None = None
    """The minimum of each capacity (by its qualified name) a device must offer for this request; with a
    request policy on the device, the amount is also what the allocation consumes."""


def _check_count(mode: AllocationMode, count: int | None) -> int | None:
    """Kubernetes' defaulting and validation of count: 1 by default for ExactCount, > 0, and unset for All.

    An explicit `count: 0` is rejected here, as the issue asks, although kube-apiserver 1.36 accepts it: its
    int64 field with omitempty cannot tell 0 from unset, so it defaults 0 to 1.
    """
    if mode == EXACT_COUNT:
        if count is None:
            return 1
        if count <= 0:
            raise ValueError(f"count must be greater than 0 for allocationMode ExactCount, got {count}")
        return count
    if count is not None:
        raise ValueError("count must not be set when allocationMode is All")
    return None


class _DeviceSelection(KubeModel):
    """The fields that ExactDeviceRequest and DeviceSubRequest share: which devices, and how many."""

    device_class_name: DNSSubdomain
    """The DeviceClass the devices must belong to: its selectors and configuration apply."""
    selectors: Annotated[list[DeviceSelector], Field(max_length=SELECTORS_MAX)] | None = None
    """CEL selectors a device must pass, on top of those of the class."""
    allocation_mode: AllocationMode = EXACT_COUNT
    """ExactCount (the default): `count` devices. All: every matching device of one node's pools, at least
    one."""
    count: Annotated[int, Field(gt=0)] | None = None
    """How many devices with allocation mode ExactCount. Default 1."""
    tolerations: Annotated[list[DeviceToleration], Field(max_length=TOLERATIONS_MAX)] | None = None
    """Device taints this request tolerates: a device with a NoSchedule or NoExecute taint is only
    allocated if tolerated."""
    capacity: CapacityRequirements | None = None
    """Capacity each allocated device must provide (and, on shareable devices, consumes)."""

    crd_rules: ClassVar[tuple[CrdRule, ...]] = (
        (
            "!has(self.count) || !has(self.allocationMode) || self.allocationMode == 'ExactCount'",
            "count must not be set when allocationMode is All",
        ),
    )

    @model_validator(mode="after")
    def _default_count(self) -> _DeviceSelection:
        self.count = _check_count(self.allocation_mode, self.count)
        return self


class ExactDeviceRequest(_DeviceSelection):
    admin_access: bool | None = None
    """Ask for the devices for administration (monitoring, maintenance) without taking them from other
    claims. Only allowed in namespaces labelled `resource.kubernetes.io/admin-access: "true"`."""


class DeviceSubRequest(_DeviceSelection):
    name: DNSLabel
    """The subrequest's name, unique within its request; results and constraints name it as
    `request/subrequest`."""


class DeviceRequest(KubeModel):
    name: DNSLabel
    """The request's name, unique within the claim; containers, constraints and config refer to it."""
    exactly: ExactDeviceRequest | None = None
    """One device selection. Exactly one of `exactly` and `firstAvailable` is set."""
    first_available: (
        Annotated[list[DeviceSubRequest], Field(min_length=1, max_length=SUBREQUESTS_MAX)] | None
    ) = None
    """Alternative device selections in order of preference: the first one that can be satisfied is
    allocated."""

    crd_rules: ClassVar[tuple[CrdRule, ...]] = (
        (
            "has(self.exactly) != has(self.firstAvailable)",
            "exactly one of exactly or firstAvailable must be set",
        ),
    )
    crd_list_map_keys: ClassVar[dict[str, tuple[str, ...]]] = {"first_available": ("name",)}

    @model_validator(mode="after")
    def _one_kind(self) -> DeviceRequest:
        _exactly_one(
            f"request {self.name!r}",
            {"exactly": self.exactly is not None, "firstAvailable": self.first_available is not None},
        )
        if self.first_available is not None:
            _no_duplicates("subrequest", [sub.name for sub in self.first_available])
        return self

    @property
    def subrequest_names(self) -> list[str]:
        return [sub.name for sub in self.first_available or ()]


class DeviceConstraint(KubeModel):
    requests: Annotated[list[RequestReference], Field(max_length=REQUESTS_MAX)] | None = None
    """The requests (or `request/subrequest`) the constraint applies to; empty means all."""
    match_attribute: FullyQualifiedName | None = None
    """A fully qualified attribute name (`domain/name`) whose value must be the same on every device
    allocated for these requests; a device without it is not eligible."""
    distinct_attribute: FullyQualifiedName | None = None
    """A fully qualified attribute name whose value must differ between the devices allocated for these
    requests."""

    crd_rules: ClassVar[tuple[CrdRule, ...]] = (
        (
            "has(self.matchAttribute) != has(self.distinctAttribute)",
            "exactly one of matchAttribute or distinctAttribute must be set",
        ),
    )

    @model_validator(mode="after")
    def _one_kind(self) -> DeviceConstraint:
        _exactly_one(
            "constraint",
            {
                "matchAttribute": self.match_attribute is not None,
                "distinctAttribute": self.distinct_attribute is not None,
            },
        )
        return self


def _no_duplicates(what: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"duplicate {what} name {name!r}")
        seen.add(name)


class DeviceClaim(KubeModel):
    requests: Annotated[list[DeviceRequest], Field(max_length=REQUESTS_MAX)] | None = None
    """What devices the claim asks for, one entry per request."""
    constraints: Annotated[list[DeviceConstraint], Field(max_length=CONSTRAINTS_MAX)] | None = None
    """Constraints across the devices of several requests (same or distinct attribute values)."""
    config: Annotated[list[DeviceClaimConfiguration], Field(max_length=CONFIG_MAX)] | None = None
    """Configuration for the drivers, recorded in the allocation with the devices."""

    crd_list_map_keys: ClassVar[dict[str, tuple[str, ...]]] = {"requests": ("name",)}
    # The CRD checks only the request part of `request/subrequest` references: checking subrequests too is
    # estimated beyond the apiserver's CEL cost budget (measured on 1.36); the Python validator checks both.
    crd_rules: ClassVar[tuple[CrdRule, ...]] = tuple(
        (
            f"!has(self.{field}) || self.{field}.all(c, !has(c.requests) || c.requests.all(r,"
            " has(self.requests) && self.requests.exists(q, q.name == r.split('/')[0])))",
            f"{field}: each entry of requests must name a request of this claim (<request>[/<subrequest>])",
        )
        for field in ("constraints", "config")
    )

    @model_validator(mode="after")
    def _references_exist(self) -> DeviceClaim:
        requests = self.requests or []
        _no_duplicates("request", [r.name for r in requests])
        known: set[str] = set()
        for request in requests:
            known.add(request.name)
            known.update(f"{request.name}/{sub}" for sub in request.subrequest_names)
        references: list[tuple[str, int, list[str]]] = [
            ("constraints", i, c.requests or []) for i, c in enumerate(self.constraints or [])
        ]
        references += [("config", i, c.requests or []) for i, c in enumerate(self.config or [])]
        for kind, index, refs in references:
            for ref in refs:
                if ref not in known:
                    raise ValueError(
                        f"{kind}[{index}].requests: {ref!r} is not the name of a request "
                        "(or request/subrequest) in this claim"
                    )
        return self


class ResourceClaimSpec(KubeModel):
    devices: DeviceClaim = Field(default_factory=DeviceClaim)
    """The devices this claim asks for. The spec is immutable once created."""

    crd_transition_rules: ClassVar[tuple[CrdRule, ...]] = (("self == oldSelf", "field is immutable"),)


# ---------------------------------------------------------------------------------------- claim status


class DeviceRequestAllocationResult(KubeModel):
    request: RequestReference
    """The request (or `request/subrequest`) this device was allocated for."""
    driver: DriverName
    """The driver of the device."""
    pool: PoolName
    """The pool of the device within its driver (for node-local devices, usually the node's name)."""
    device: DNSLabel
    """The device's name within its pool."""
    admin_access: bool | None = None
    """Set when the device was allocated for administration (see the request's adminAccess)."""
    tolerations: Annotated[list[DeviceToleration], Field(max_length=TOLERATIONS_MAX)] | None = None
    """The request's tolerations at allocation time."""
    binding_conditions: Annotated[list[str], Field(max_length=BINDING_CONDITIONS_MAX)] | None = None
    """The device's binding conditions, copied from its slice."""
    binding_failure_conditions: Annotated[list[str], Field(max_length=BINDING_CONDITIONS_MAX)] | None = None
    """The device's binding failure conditions, copied from its slice."""
    share_id: str | None = Field(default=None, alias="shareID")
    """Which share of a device allocated to several claims this is (devices that allow multiple
    allocations)."""
    consumed_capacity: Annotated[dict[QualifiedName, QuantityValue], Field(max_length=32)] | None = None
    """The capacity this allocation consumes of a shareable device."""


class DeviceAllocationConfiguration(KubeModel):
    source: Literal["FromClass", "FromClaim"]
    """Where the configuration came from: FromClass (the DeviceClass) or FromClaim (the claim)."""
    requests: Annotated[list[RequestReference], Field(max_length=REQUESTS_MAX)] | None = None
    """The requests it applies to; empty means all."""
    opaque: OpaqueDeviceConfiguration | None = None
    """The driver-specific configuration."""


class DeviceAllocationResult(KubeModel):
    results: Annotated[list[DeviceRequestAllocationResult], Field(max_length=RESULTS_MAX)] | None = None
    """One entry per allocated device."""
    config: Annotated[list[DeviceAllocationConfiguration], Field(max_length=ALLOCATION_CONFIG_MAX)] | None = (
        None
    )
    """The configuration of the classes and of the claim that applies to the allocated devices, in that
    order."""


class AllocationResult(KubeModel):
    devices: DeviceAllocationResult = Field(default_factory=DeviceAllocationResult)
    """The allocated devices and their configuration."""
    # None means the devices are reachable from every node.
    node_selector: NodeSelector | None = None
    """The nodes where the allocated devices are reachable; a Pod using the claim is placed on one of them."""
    allocation_timestamp: str | None = None
    """When the allocation was made (set upstream with binding conditions; dra-operator leaves it empty)."""

    # Set once; it may only be removed (the claim is deallocated).
    crd_transition_rules: ClassVar[tuple[CrdRule, ...]] = (("self == oldSelf", "field is immutable"),)


class ResourceClaimConsumerReference(KubeModel):
    api_group: str | None = None
    """The consumer's API group; empty for core objects such as Pods."""
    resource: Annotated[str, Field(min_length=1, max_length=253)]
    """The consumer's resource type, e.g. pods."""
    name: Annotated[str, Field(min_length=1, max_length=253)]
    """The consumer's name."""
    uid: Annotated[str, Field(min_length=1, max_length=128)]
    """The consumer's uid: the reservation belongs to that very object."""


class NetworkDeviceData(KubeModel):
    interface_name: Annotated[str, Field(max_length=256)] | None = None
    """The network interface's name inside the Pod."""
    ips: Annotated[list[str], Field(max_length=16)] | None = None
    """The interface's IP addresses in CIDR notation."""
    hardware_address: Annotated[str, Field(max_length=128)] | None = None
    """The interface's hardware (MAC) address."""


class AllocatedDeviceStatus(KubeModel):
    driver: DriverName
    """The driver of the device."""
    pool: PoolName
    """The pool of the device."""
    device: DNSLabel
    """The device's name within its pool."""
    share_id: str | None = Field(default=None, alias="shareID")
    """The share of the device, when it is allocated to several claims."""
    conditions: Annotated[list[Condition], Field(max_length=8)] | None = None
    """The device's conditions as its driver reports them."""
    data: dict[str, Any] | None = None
    """Driver-specific data about the allocated device."""
    network_data: NetworkDeviceData | None = None
    """Network configuration of the device, for network devices."""


class ResourceClaimStatus(KubeModel):
    allocation: AllocationResult | None = None
    """Set once devices are allocated: which devices, and the nodes they are reachable from."""
    reserved_for: (
        Annotated[list[ResourceClaimConsumerReference], Field(max_length=RESERVED_FOR_MAX)] | None
    ) = None
    """The consumers (Pods) currently using the claim. While any is listed the claim stays allocated, and
    deleting it waits until none is."""
    # One entry per allocated device, so bounded by the number of results.
    devices: Annotated[list[AllocatedDeviceStatus], Field(max_length=RESULTS_MAX)] | None = None
    """Per allocated device, the status its driver reports."""
    # --- Not in upstream resource.k8s.io/v1: written by dra-operator for `kubectl get` and `describe`.
    # A CRD printer column is a JSONPath, so the operator keeps the computed STATE column here
    # ("pending", "allocated", "allocated,reserved", with "deleted," first while deleting) ...
    state: Annotated[str, Field(max_length=64)] | None = None
    """What `kubectl get` shows in STATE: pending, allocated or allocated,reserved (deleted, first while
    the claim is being deleted). Written by dra-operator; a claim without a status reads pending."""
    # ... the node the allocation is bound to (None while pending or when the devices are on every node) ...
    node_name: Annotated[str, Field(max_length=253)] | None = None
    """The node the allocated devices are on; empty while pending or when they are reachable from every
    node."""
    # ... and claim-level conditions (upstream only has per-device ones).
    conditions: Annotated[list[Condition], Field(max_length=16)] | None = None
    """Allocated and Reserved conditions, with the reason of their last change."""

    crd_list_map_keys: ClassVar[dict[str, tuple[str, ...]]] = {
        "reserved_for": ("uid",),
        "conditions": ("type",),
    }
    crd_rules: ClassVar[tuple[CrdRule, ...]] = (
        (
            "!has(self.reservedFor) || size(self.reservedFor) == 0 || has(self.allocation)",
            "reservedFor may only be set while the claim is allocated",
        ),
    )

    @model_validator(mode="after")
    def _unique_consumers(self) -> ResourceClaimStatus:
        if self.reserved_for:
            _no_duplicates("reservedFor uid", [ref.uid for ref in self.reserved_for])
            if self.allocation is None:
                raise ValueError("reservedFor may only be set while the claim is allocated")
        return self


# ------------------------------------------------------------------------------------------------ slices


# Parsed attribute and capacity values, shared by the devices that repeat them (see api.sharing).
_ATTRIBUTES = Table()
_ATTRIBUTE_FIELDS = frozenset({"int", "bool", "string", "version"})
_CAPACITIES = Table()
_CAPACITY_FIELDS = frozenset({"value"})


class DeviceAttribute(KubeModel):
    """Exactly one of int, bool, string or version (a semantic version 2.0.0)."""

    int_value: int | None = Field(default=None, alias="int")
    """An integer value."""
    bool_value: bool | None = Field(default=None, alias="bool")
    """A boolean value."""
    string: Annotated[str, Field(max_length=STRING_ATTRIBUTE_MAX)] | None = None
    """A string value, at most 64 characters."""
    version: Annotated[str, Field(max_length=VERSION_ATTRIBUTE_MAX)] | None = None
    """A semantic version 2.0.0 value, at most 64 characters."""

    crd_rules: ClassVar[tuple[CrdRule, ...]] = (
        (
            "(has(self.int) ? 1 : 0) + (has(self.bool) ? 1 : 0) + (has(self.string) ? 1 : 0)"
            " + (has(self.version) ? 1 : 0) == 1",
            "exactly one of int, bool, string or version must be set",
        ),
    )

    @model_validator(mode="wrap")
    @classmethod
    def _shared(cls, data: Any, handler: ModelWrapValidatorHandler[DeviceAttribute]) -> DeviceAttribute:
        return _ATTRIBUTES.parsed(data, _ATTRIBUTE_FIELDS, handler)

    @field_validator("int_value")
    @classmethod
    def _int64(cls, value: int | None) -> int | None:
        # The API's type is int64 (the CRD says `format: int64`); CEL's int is int64 too.
        if value is not None and not -(2**63) <= value < 2**63:
            raise ValueError(f"{value} is out of range for an int64 attribute")
        return value

    @model_validator(mode="after")
    def _one_type(self) -> DeviceAttribute:
        given = (
            (self.int_value is not None)
            + (self.bool_value is not None)
            + (self.string is not None)
            + (self.version is not None)
        )
        if given == 1 and self.version is None:
            return self  # the common case, kept cheap: slices carry thousands of attributes
        _exactly_one(
            "attribute",
            {
                "int": self.int_value is not None,
                "bool": self.bool_value is not None,
                "string": self.string is not None,
                "version": self.version is not None,
            },
        )
        if self.version is not None:
            from dra_operator.api.semver import Semver

            try:
                Semver.parse(self.version)
            except ValueError as err:
                raise ValueError(f"version must be a semantic version 2.0.0: {err}") from None
        return self

    @field_validator("int_value", mode="before")
    @classmethod
    def _int_not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("int must be an integer, not a boolean")
        return value

    @property
    def value(self) -> int | bool | str:
        """The attribute's value (a version stays a string; the CEL layer turns it into a semver)."""
        for candidate in (self.int_value, self.bool_value, self.string, self.version):
            if candidate is not None:
                return candidate
        raise AssertionError("validated attribute has no value")


class CapacityRequestPolicyRange(KubeModel):
    min: QuantityValue
    """The smallest amount one allocation may consume."""
    max: QuantityValue | None = None
    """The largest amount one allocation may consume."""
    step: QuantityValue | None = None
    """Amounts above min are rounded up to a multiple of this step."""


class CapacityRequestPolicy(KubeModel):
    default: QuantityValue | None = None
    """What an allocation consumes when its request names no amount."""
    valid_values: Annotated[list[QuantityValue], Field(max_length=10)] | None = None
    """The amounts an allocation may consume; a request is rounded up to the next one."""
    valid_range: CapacityRequestPolicyRange | None = None
    """The range of amounts an allocation may consume."""


class DeviceCapacity(KubeModel):
    value: QuantityValue
    """The device's total amount of this capacity."""
    request_policy: CapacityRequestPolicy | None = None
    """How allocations of a device that allows multiple allocations consume this capacity."""

    @model_validator(mode="wrap")
    @classmethod
    def _shared(cls, data: Any, handler: ModelWrapValidatorHandler[DeviceCapacity]) -> DeviceCapacity:
        return _CAPACITIES.parsed(data, _CAPACITY_FIELDS, handler)


class Counter(KubeModel):
    value: QuantityValue
    """The counter's amount."""


class CounterSet(KubeModel):
    name: DNSLabel
    """The counter set's name, which devices refer to."""
    counters: Annotated[dict[DNSLabel, Counter], Field(min_length=1, max_length=COUNTERS_PER_SET_MAX)]
    """The counters of the set and their amounts, shared by the devices that consume them."""


class DeviceCounterConsumption(KubeModel):
    counter_set: DNSLabel
    """The name of the slice's counter set this device draws on."""
    counters: Annotated[dict[DNSLabel, Counter], Field(min_length=1, max_length=COUNTERS_PER_SET_MAX)]
    """How much of each counter the device uses while allocated."""


# A taint key is a label key (`[prefix/]name`) and its value a label value, as Kubernetes validates both. The
# patterns give the CRD the same rules; the prefix's 253-character limit is beyond a pattern.
_LABEL_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]"
_LABEL_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
TAINT_KEY_PATTERN = f"^({_LABEL_PREFIX}/)?{_LABEL_NAME}$"
TAINT_VALUE_PATTERN = f"^({_LABEL_NAME})?$"


class DeviceTaint(KubeModel):
    """A taint on a device: from its slice, or added by a DeviceTaintRule. Effect None only informs."""

    key: Annotated[str, Field(min_length=1, max_length=TAINT_KEY_MAX), Format(pattern=TAINT_KEY_PATTERN)]
    """The taint key, a label key (optionally prefixed)."""
    value: Annotated[str, Field(max_length=TAINT_VALUE_MAX), Format(pattern=TAINT_VALUE_PATTERN)] | None = (
        None
    )
    """The taint value, a label value."""
    effect: Literal["NoSchedule", "NoExecute", "None"]
    """NoSchedule: no new allocation of the device unless tolerated. NoExecute: also evicts the Pods using
    it that do not tolerate it. None: only shown."""
    time_added: str | None = None
    """When the taint was added. For a NoExecute taint without it, tolerationSeconds count from when the
    operator first saw the taint."""

    @field_validator("key")
    @classmethod
    def _label_key(cls, value: str) -> str:
        # The apiserver's words (it validates taint keys as label keys), so a refusal reads like upstream's.
        found = qualified_name_messages(value)
        if found:
            raise ValueError("; ".join(invalid_value(value, message) for message in found))
        return value

    @field_validator("value")
    @classmethod
    def _label_value(cls, value: str | None) -> str | None:
        if value:
            found = [message for _, message in label_problems({"key": value}, "")]
            if found:
                raise ValueError("; ".join(found))
        return value

    def render(self) -> str:
        """`key=value:effect` (`key:effect` without a value), as kubectl shows node taints."""
        return f"{self.key}{'=' + self.value if self.value else ''}:{self.effect}"


def _node_scope(node_name: str | None, node_selector: Any, all_nodes: bool | None) -> dict[str, bool]:
    """Which node-scoping fields are set; allNodes counts only when true, as in Kubernetes."""
    return {
        "nodeName": bool(node_name),
        "nodeSelector": node_selector is not None,
        "allNodes": bool(all_nodes),
    }


class Device(KubeModel):
    name: DNSLabel
    """The device's name, unique within its pool."""
    attributes: (
        Annotated[dict[QualifiedName, DeviceAttribute], Field(max_length=ATTRIBUTES_AND_CAPACITY_MAX)] | None
    ) = None
    """Attributes by qualified name (`name`, or `domain/name`; a name without domain belongs to the
    driver's domain), readable by CEL selectors."""
    capacity: (
        Annotated[dict[QualifiedName, DeviceCapacity], Field(max_length=ATTRIBUTES_AND_CAPACITY_MAX)] | None
    ) = None
    """Capacities by qualified name, as quantities (e.g. memory: 64Gi), readable by CEL selectors."""
    consumes_counters: (
        Annotated[list[DeviceCounterConsumption], Field(max_length=CONSUMES_COUNTERS_MAX)] | None
    ) = None
    """Counters of the slice's counter sets this device uses while allocated; devices sharing a counter
    cannot all be allocated at once."""
    node_name: DNSSubdomain | None = None
    """For a device of a slice with perDeviceNodeSelection: the node it is reachable from."""
    node_selector: NodeSelector | None = None
    """For a device of a slice with perDeviceNodeSelection: the nodes it is reachable from."""
    all_nodes: bool | None = None
    """For a device of a slice with perDeviceNodeSelection: reachable from every node."""
    taints: Annotated[list[DeviceTaint], Field(max_length=DEVICE_TAINTS_MAX)] | None = None
    """Taints on the device: allocations must tolerate them (see DeviceTaint)."""
    binds_to_node: bool | None = None
    """Allocate this device to one node even where it is reachable from several."""
    binding_conditions: Annotated[list[str], Field(max_length=BINDING_CONDITIONS_MAX)] | None = None
    """Conditions a driver reports on an allocated device before its Pod may be bound (an upstream alpha).
    dra-operator prefers devices without them and copies them into the allocation, but does not wait for
    them."""
    binding_failure_conditions: Annotated[list[str], Field(max_length=BINDING_CONDITIONS_MAX)] | None = None
    """Conditions that, when True, mean binding the device failed (an upstream alpha; copied into the
    allocation)."""
    allow_multiple_allocations: bool | None = None
    """The device may be allocated to several claims at once, each consuming part of its capacity."""

    crd_rules: ClassVar[tuple[CrdRule, ...]] = (
        (
            "(has(self.attributes) ? size(self.attributes) : 0)"
            f" + (has(self.capacity) ? size(self.capacity) : 0) <= {ATTRIBUTES_AND_CAPACITY_MAX}",
            f"attributes and capacity together must have at most {ATTRIBUTES_AND_CAPACITY_MAX} entries",
        ),
        (
            "(has(self.nodeName) ? 1 : 0) + (has(self.nodeSelector) ? 1 : 0)"
            " + (has(self.allNodes) && self.allNodes ? 1 : 0) <= 1",
            "at most one of nodeName, nodeSelector or allNodes may be set on a device",
        ),
    )

    @field_validator("attributes", "capacity")
    @classmethod
    def _shared_map(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return shared_map(value)

    @model_validator(mode="after")
    def _limits(self) -> Device:
        entries = len(self.attributes or ()) + len(self.capacity or ())
        if entries > ATTRIBUTES_AND_CAPACITY_MAX:
            raise ValueError(
                f"device {self.name!r}: attributes and capacity together must have at most "
                f"{ATTRIBUTES_AND_CAPACITY_MAX} entries, got {entries}"
            )
        scope = _node_scope(self.node_name, self.node_selector, self.all_nodes)
        if sum(scope.values()) > 1:
            given = " and ".join(name for name, present in scope.items() if present)
            raise ValueError(
                f"device {self.name!r}: at most one of nodeName, nodeSelector or allNodes, not {given}"
            )
        return self

    @property
    def has_node_scope(self) -> bool:
        return bool(self.node_name) or self.node_selector is not None or bool(self.all_nodes)


class ResourcePool(KubeModel):
    name: PoolName
    """The pool's name, unique within the driver; for node-local devices usually the node's name."""
    # Kubernetes reads a missing generation as 0 (valid) and a missing resourceSliceCount as 0 (invalid).
    generation: Annotated[int, Field(ge=0)] = 0
    """Incremented when the pool's slices are replaced; slices of older generations are ignored."""
    resource_slice_count: Annotated[int, Field(gt=0)]
    """How many slices make up this generation of the pool."""


class ResourceSliceSpec(KubeModel):
    driver: DriverName
    """The driver (a DNS subdomain, e.g. gpu.example.com) that publishes and prepares these devices."""
    pool: ResourcePool
    """The pool these devices belong to."""
    node_name: DNSSubdomain | None = None
    """The node the devices are reachable from. Exactly one of nodeName, nodeSelector, allNodes and
    perDeviceNodeSelection is set."""
    node_selector: NodeSelector | None = None
    """The nodes the devices are reachable from."""
    all_nodes: bool | None = None
    """The devices are reachable from every node."""
    per_device_node_selection: bool | None = None
    """Each device says itself which nodes it is reachable from."""
    devices: Annotated[list[Device], Field(max_length=DEVICES_PER_SLICE_MAX)] | None = None
    """The devices of this slice, at most 128 (64 when they use taints or counters)."""
    shared_counters: Annotated[list[CounterSet], Field(max_length=COUNTER_SETS_MAX)] | None = None
    """Counter sets that several devices of the pool draw on."""

    crd_transition_rules: ClassVar[tuple[CrdRule, ...]] = (
        ("self.driver == oldSelf.driver", "driver is immutable"),
        ("self.pool.name == oldSelf.pool.name", "pool.name is immutable"),
        (
            "(has(self.nodeName) ? self.nodeName : '') == (has(oldSelf.nodeName) ? oldSelf.nodeName : '')",
            "nodeName is immutable",
        ),
    )

    crd_list_map_keys: ClassVar[dict[str, tuple[str, ...]]] = {
        "devices": ("name",),
        "shared_counters": ("name",),
    }
    crd_rules: ClassVar[tuple[CrdRule, ...]] = (
        (
            "(has(self.nodeName) ? 1 : 0) + (has(self.nodeSelector) ? 1 : 0)"
            " + (has(self.allNodes) && self.allNodes ? 1 : 0)"
            " + (has(self.perDeviceNodeSelection) && self.perDeviceNodeSelection ? 1 : 0) == 1",
            "exactly one of nodeName, nodeSelector, allNodes or perDeviceNodeSelection must be set",
        ),
        (
            "!has(self.nodeSelector) || size(self.nodeSelector.nodeSelectorTerms) == 1",
            "nodeSelector must have exactly one term",
        ),
        (
            "!has(self.sharedCounters) || !has(self.devices) || size(self.devices) == 0",
            "sharedCounters and devices cannot be in the same slice",
        ),
        (
            "(has(self.perDeviceNodeSelection) && self.perDeviceNodeSelection) || !has(self.devices)"
            " || self.devices.all(d, !has(d.nodeName) && !has(d.nodeSelector) && !has(d.allNodes))",
            "nodeName, nodeSelector and allNodes on a device need perDeviceNodeSelection: true",
        ),
    )

    @field_validator("devices")
    @classmethod
    def _compact_devices(cls, devices: list[Device] | None) -> list[Device] | None:
        # The operator keeps every device of the cluster parsed (api.sharing.compacted).
        return None if devices is None else [compacted(device) for device in devices]

    @model_validator(mode="after")
    def _scope_and_limits(self) -> ResourceSliceSpec:
        scope = _node_scope(self.node_name, self.node_selector, self.all_nodes)
        scope["perDeviceNodeSelection"] = bool(self.per_device_node_selection)
        _exactly_one("slice", scope)
        if self.node_selector is not None and len(self.node_selector.node_selector_terms) != 1:
            raise ValueError("nodeSelector must have exactly one term")
        devices = self.devices or []
        _no_duplicates("device", [d.name for d in devices])
        if self.per_device_node_selection:
            for device in devices:
                if not device.has_node_scope:
                    raise ValueError(
                        f"device {device.name!r}: with perDeviceNodeSelection one of nodeName, "
                        "nodeSelector or allNodes must be set"
                    )
        else:
            for device in devices:
                if device.has_node_scope:
                    raise ValueError(
                        f"device {device.name!r}: nodeName, nodeSelector and allNodes on a device need "
                        "perDeviceNodeSelection: true"
                    )
        if any(d.taints or d.consumes_counters for d in devices) and (
            len(devices) > DEVICES_PER_SLICE_WITH_TAINTS_OR_COUNTERS_MAX
        ):
            raise ValueError(
                f"a slice whose devices use taints or counters may have at most "
                f"{DEVICES_PER_SLICE_WITH_TAINTS_OR_COUNTERS_MAX} devices, got {len(devices)}"
            )
        if self.shared_counters and devices:
            raise ValueError("sharedCounters and devices cannot be in the same slice")
        if self.shared_counters:
            _no_duplicates("counter set", [c.name for c in self.shared_counters])
        return self


# ---------------------------------------------------------------------------------------- the five kinds


def _check_api_version(value: str) -> str:
    if value not in API_VERSIONS:
        raise ValueError(f"apiVersion must be {API_VERSION} or {UPSTREAM_API_VERSION}, got {value!r}")
    return value


class _TopLevel(KubeModel):
    api_version: str = API_VERSION
    # Narrowed to one kind by each subclass; declared here so that dumps read apiVersion, kind, metadata.
    kind: str
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)

    @field_validator("api_version")
    @classmethod
    def _known_version(cls, value: str) -> str:
        return _check_api_version(value)

    @property
    def name(self) -> str:
        return self.metadata.name or ""

    @property
    def namespace(self) -> str | None:
        return self.metadata.namespace


class DeviceClass(_TopLevel):
    kind: Literal["DeviceClass"] = "DeviceClass"
    spec: DeviceClassSpec = Field(default_factory=DeviceClassSpec)
    """Which devices belong to the class and the configuration they get."""


class ResourceClaim(_TopLevel):
    kind: Literal["ResourceClaim"] = "ResourceClaim"
    spec: ResourceClaimSpec
    """The devices asked for. Immutable."""
    status: ResourceClaimStatus | None = None
    """The allocation and its consumers, written by dra-operator."""


class ResourceClaimTemplateSpec(KubeModel):
    metadata: ClaimTemplateMeta | None = None
    """Labels and annotations copied into every claim made from the template."""
    spec: ResourceClaimSpec
    """The spec of every claim made from the template."""

    # The whole template is immutable; `spec` says so itself (ResourceClaimSpec), once.
    crd_transition_rules: ClassVar[tuple[CrdRule, ...]] = (
        (
            "has(self.metadata) == has(oldSelf.metadata)"
            " && (!has(self.metadata) || self.metadata == oldSelf.metadata)",
            "metadata: field is immutable",
        ),
    )


class ResourceClaimTemplate(_TopLevel):
    kind: Literal["ResourceClaimTemplate"] = "ResourceClaimTemplate"
    spec: ResourceClaimTemplateSpec
    """The claim each Pod that names this template gets. Immutable."""


class ResourceSliceStatus(KubeModel):
    """Not in resource.k8s.io/v1: the operator's count of the slice's devices, for `kubectl get` (see
    dra_operator.allocation.usage). Written through the status subresource, so the agent's writes of the spec
    never touch it."""

    devices: Annotated[int, Field(ge=0)] | None = None
    """How many devices the slice has. Written by dra-operator, for `kubectl get`."""
    allocated: Annotated[int, Field(ge=0)] | None = None
    """How many of them are allocated to claims."""
    tainted: Annotated[int, Field(ge=0)] | None = None
    """How many of them carry a NoSchedule or NoExecute taint (their own or a DeviceTaintRule's)."""
    free: Annotated[int, Field(ge=0)] | None = None
    """How many of them are neither allocated nor tainted."""


class ResourceSlice(_TopLevel):
    kind: Literal["ResourceSlice"] = "ResourceSlice"
    spec: ResourceSliceSpec
    """The devices published, by the node agent for its node."""
    status: ResourceSliceStatus | None = None
    """Device counts (devices, allocated, tainted, free), written by dra-operator."""

    @field_validator("metadata")
    @classmethod
    def _compact_metadata(cls, metadata: ObjectMeta) -> ObjectMeta:
        # Kept by the thousand, as the devices are (api.sharing.compacted): 12 fields, most of them None.
        return compacted(metadata)


class DeviceTaintSelector(KubeModel):
    """Which devices a DeviceTaintRule taints: every field that is set must match (an empty one matches all).

    As resource.k8s.io/v1alpha3 of 1.33-1.34 without `deviceClassName`; `selectors` (dropped upstream in 1.35)
    stays, because selecting devices by CEL is what our users ask for.
    """

    driver: DriverName | None = None
    """Only devices of this driver."""
    pool: PoolName | None = None
    """Only devices of this pool."""
    device: DNSLabel | None = None
    """Only the device of this name."""
    selectors: Annotated[list[DeviceSelector], Field(max_length=SELECTORS_MAX)] | None = None
    """CEL selectors every tainted device must pass."""


class DeviceTaintRuleSpec(KubeModel):
    # Without a selector no device matches (upstream's rule), so a rule cannot taint everything by omission.
    device_selector: DeviceTaintSelector | None = None
    """Which devices get the taint: every field that is set must match. Without a selector no device is
    tainted."""
    taint: DeviceTaint
    """The taint added to each selected device."""

    # The prefix limit of a label key, which the pattern of `taint.key` cannot express. The rule sits here,
    # not on DeviceTaint, to keep it out of the CEL cost of slices (128 devices x 16 taints).
    crd_rules: ClassVar[tuple[CrdRule, ...]] = (
        (
            "!self.taint.key.contains('/') || size(self.taint.key.split('/')[0]) <= 253",
            "taint.key: prefix part must be no more than 253 bytes",
        ),
    )


class DeviceTaintRuleStatus(KubeModel):
    """Written by the operator through the status subresource: how many devices the rule taints now (ours,
    for `kubectl get`) and conditions such as EvictionInProgress (upstream 1.35)."""

    matched_devices: Annotated[int, Field(ge=0)] | None = None
    """How many devices the rule taints now. Written by dra-operator."""
    conditions: Annotated[list[Condition], Field(max_length=TAINT_RULE_CONDITIONS_MAX)] | None = None
    """Conditions of the rule, such as EvictionInProgress while Pods are being evicted."""

    crd_list_map_keys: ClassVar[dict[str, tuple[str, ...]]] = {"conditions": ("type",)}


class DeviceTaintRule(_TopLevel):
    """Cluster-scoped: adds a taint to every device its selector matches, as if the slice carried it."""

    kind: Literal["DeviceTaintRule"] = "DeviceTaintRule"
    spec: DeviceTaintRuleSpec
    """Which devices to taint, and the taint."""
    status: DeviceTaintRuleStatus | None = None
    """What the rule does now, written by dra-operator."""


DraObject = DeviceClass | ResourceClaim | ResourceClaimTemplate | ResourceSlice | DeviceTaintRule
KINDS: dict[
    str,
    type[DeviceClass]
    | type[ResourceClaim]
    | type[ResourceClaimTemplate]
    | type[ResourceSlice]
    | type[DeviceTaintRule],
] = {
    "DeviceClass": DeviceClass,
    "ResourceClaim": ResourceClaim,
    "ResourceClaimTemplate": ResourceClaimTemplate,
    "ResourceSlice": ResourceSlice,
    "DeviceTaintRule": DeviceTaintRule,
}


# --------------------------------------------------------------------------------------------- loading


def _display_name(obj: dict[str, Any]) -> str | None:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return None
    name = meta.get("name") or meta.get("generateName")
    if not isinstance(name, str):
        return None
    namespace = meta.get("namespace")
    return f"{namespace}/{name}" if isinstance(namespace, str) and namespace else name


def is_dra_object(obj: Any) -> bool:
    """Whether `obj` is a dict for one of the five kinds, in either API group."""
    if not isinstance(obj, dict):
        return False
    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    # Only strings can be members: a list or dict from malformed input is unhashable, not an error to raise.
    return (
        isinstance(kind, str)
        and isinstance(api_version, str)
        and api_version in API_VERSIONS
        and kind in KINDS
    )


def load_object(obj: Any, *, source: str | None = None) -> DraObject:
    """Validate one Kubernetes object dict of the five kinds (either apiVersion) into its model."""
    if not isinstance(obj, dict):
        raise InvalidObject([("", f"expected an object, got {type(obj).__name__}")], source=source)
    kind = obj.get("kind")
    name = _display_name(obj)
    if not isinstance(kind, str) or kind not in KINDS:
        raise InvalidObject(
            [("kind", f"expected one of {', '.join(KINDS)}, got {kind!r}")],
            kind=str(kind),
            name=name,
            source=source,
        )
    if obj.get("apiVersion") not in API_VERSIONS:
        raise InvalidObject(
            [
                (
                    "apiVersion",
                    f"must be {API_VERSION} or {UPSTREAM_API_VERSION}, got {obj.get('apiVersion')!r}",
                )
            ],
            kind=kind,
            name=name,
            source=source,
        )
    try:
        return KINDS[kind].model_validate(obj)
    except ValidationError as err:
        raise InvalidObject(problems_of(err), kind=kind, name=name, source=source) from None


def dump_object(obj: KubeModel) -> dict[str, Any]:
    """The Kubernetes JSON form of a model."""
    return obj.to_dict()
