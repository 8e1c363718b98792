"""Why a Pod's claims cannot be allocated: structured reasons per node, and their rendering for people.

The same rendering serves `dra-operator simulate` and the operator's AllocationFailed event
(`Explanation.summary` fits an event message). Reasons are plain frozen dataclasses so tests and callers can
inspect them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from dra_operator.allocation.selectors import SelectorFailure

SHOWN_DEVICES = 6
EVENT_MESSAGE_MAX = 1024


@dataclass(frozen=True, slots=True)
class DeviceNames:
    """Some device names (`driver/pool/device`) and how many there are in all."""

    names: tuple[str, ...] = ()
    total: int = 0

    @classmethod
    def of(cls, names: Sequence[str], limit: int = SHOWN_DEVICES) -> DeviceNames:
        return cls(tuple(names[:limit]), len(names))

    def render(self) -> str:
        text = ", ".join(self.names)
        if self.total > len(self.names):
            text += f", … ({self.total - len(self.names)} more)"
        return text

    def __bool__(self) -> bool:
        return self.total > 0


def _request(claim: str, request: str) -> str:
    return f"claim {claim} request {request}"


# ---------------------------------------------------------------------------------------- fatal reasons
# Kubernetes' allocator returns an error for these: the whole scheduling attempt fails, whatever other
# nodes offer.


@dataclass(frozen=True, slots=True)
class ClassNotFound:
    claim: str
    request: str
    class_name: str

    def render(self) -> str:
        return f"{_request(self.claim, self.request)}: device class {self.class_name} does not exist"


@dataclass(frozen=True, slots=True)
class SelectorError:
    claim: str
    request: str
    failure: SelectorFailure
    source: str  # "class <name>" or "claim"
    node: str | None = None

    def render(self) -> str:
        where = f" (node {self.node})" if self.node and not self.failure.compile_error else ""
        return f"{_request(self.claim, self.request)}: {self.source} selector: {self.failure.render()}{where}"


@dataclass(frozen=True, slots=True)
class PoolNotReady:
    """An All request sees a pool that is incomplete (being updated) or invalid."""

    claim: str
    request: str
    pool: str
    invalid: str | None = None
    node: str | None = None

    def render(self) -> str:
        state = f"is currently invalid ({self.invalid})" if self.invalid else "is currently being updated"
        where = f" (node {self.node})" if self.node else ""
        head = _request(self.claim, self.request)
        return f"{head}: asks for all devices, but resource pool {self.pool} {state}{where}"


@dataclass(frozen=True, slots=True)
class TooManyDevices:
    claim: str
    needed: int
    limit: int
    node: str | None = None

    def render(self) -> str:
        where = f" (node {self.node})" if self.node else ""
        limit = f"more than the limit of {self.limit} per claim"
        return f"claim {self.claim}: {self.needed} devices requested, {limit}{where}"


@dataclass(frozen=True, slots=True)
class ConstraintBlocksAll:
    claim: str
    request: str
    device: str
    constraint: str
    node: str | None = None

    def render(self) -> str:
        where = f" (node {self.node})" if self.node else ""
        return (
            f"{_request(self.claim, self.request)}: cannot add device {self.device} (allocationMode All) "
            f"because constraint {self.constraint} would not be satisfied{where}"
        )


FatalReason = ClassNotFound | SelectorError | PoolNotReady | TooManyDevices | ConstraintBlocksAll


# ---------------------------------------------------------------------------------------- node reasons


@dataclass(frozen=True, slots=True)
class ClaimNotOnNode:
    """An already allocated (shared) claim is bound to other nodes."""

    claim: str

    def render(self) -> str:
        return f"claim {self.claim} is already allocated and not available on this node"


@dataclass(frozen=True, slots=True)
class RequestUnsatisfiable:
    """One request cannot be met on the node even on its own."""

    claim: str
    request: str
    needed: int
    all_mode: bool
    usable: DeviceNames  # match, reachable, untainted and free
    in_use: tuple[tuple[str, str], ...] = ()  # (device, held by claim)
    in_use_total: int = 0
    tainted: DeviceNames = field(default_factory=DeviceNames)
    not_matching: DeviceNames = field(default_factory=DeviceNames)
    other_pools: tuple[str, ...] = ()  # incomplete or invalid pools that were skipped
    no_counters: DeviceNames = field(default_factory=DeviceNames)  # their pool's shared counters are used up

    def render(self) -> str:
        if self.all_mode:
            head = f"{_request(self.claim, self.request)} (allocationMode All)"
        else:
            noun = "device" if self.needed == 1 else "devices"
            head = f"{_request(self.claim, self.request)} needs {self.needed} {noun}"
        parts: list[str] = []
        matching = self.usable.total + self.in_use_total + self.tainted.total + self.no_counters.total
        if matching == 0:
            parts.append("no device matches its selectors")
        elif self.all_mode:
            parts.append(f"{matching} matching")
        else:
            parts.append(
                f"{self.usable.total} of {matching} matching {'is' if self.usable.total == 1 else 'are'} free"
            )
        if self.in_use_total:
            shown = ", ".join(f"{d} (claim {c})" for d, c in self.in_use)
            more = self.in_use_total - len(self.in_use)
            parts.append(f"in use: {shown}" + (f", … ({more} more)" if more > 0 else ""))
        if self.tainted:
            parts.append(f"tainted (not tolerated): {self.tainted.render()}")
        if self.no_counters:
            parts.append(f"shared counters used up: {self.no_counters.render()}")
        if self.not_matching:
            parts.append(f"selectors false on {self.not_matching.total}: {self.not_matching.render()}")
        if self.other_pools:
            parts.append(f"skipped incomplete or invalid pools: {', '.join(self.other_pools)}")
        return f"{head}: " + "; ".join(parts)


@dataclass(frozen=True, slots=True)
class DevicesContended:
    """Requests that are each satisfiable alone compete for the same devices."""

    members: tuple[tuple[str, str, int, bool], ...]  # (claim, request, needed, all_mode)
    available: DeviceNames

    def render(self) -> str:
        needs = []
        for claim, request, needed, all_mode in self.members:
            what = (
                f"all {needed} matching devices"
                if all_mode
                else f"{needed} device{'s' if needed != 1 else ''}"
            )
            needs.append(f"{_request(claim, request)} takes {what}")
        total = sum(m[2] for m in self.members)
        return (
            f"{' and '.join(needs)}: together they need {total} distinct devices but only "
            f"{self.available.total} match them on this node ({self.available.render()})"
        )


@dataclass(frozen=True, slots=True)
class ConstraintUnsatisfiable:
    claim: str
    constraint: str
    detail: str = ""

    def render(self) -> str:
        detail = f": {self.detail}" if self.detail else ""
        return f"claim {self.claim}: no choice of devices satisfies constraint {self.constraint}{detail}"


@dataclass(frozen=True, slots=True)
class InvalidPools:
    pools: tuple[str, ...]

    def render(self) -> str:
        return f"invalid resource pools were encountered: {', '.join(self.pools)}"


@dataclass(frozen=True, slots=True)
class NoCombination:
    def render(self) -> str:
        return "no combination of devices satisfies all requests and constraints of the Pod's claims together"


NodeReason = (
    ClaimNotOnNode
    | RequestUnsatisfiable
    | DevicesContended
    | ConstraintUnsatisfiable
    | InvalidPools
    | NoCombination
)


@dataclass(frozen=True, slots=True)
class NodeFailure:
    node: str | None
    reasons: tuple[NodeReason, ...]

    def render(self) -> str:
        return "; ".join(r.render() for r in self.reasons)


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why a Pod's claims cannot be allocated: a fatal reason, or why each node (a detailed sample) fails."""

    pod: str
    fatal: FatalReason | None = None
    nodes: tuple[NodeFailure, ...] = ()
    nodes_total: int = 0

    @property
    def reasons(self) -> list[FatalReason | NodeReason]:
        found: list[FatalReason | NodeReason] = [self.fatal] if self.fatal is not None else []
        for failure in self.nodes:
            found.extend(failure.reasons)
        return found

    def _groups(self) -> list[tuple[list[str], str]]:
        """Nodes with the same rendered reasons, grouped, in node order."""
        groups: dict[str, list[str]] = {}
        for failure in self.nodes:
            groups.setdefault(failure.render(), []).append(failure.node or "(any node)")
        return [(names, text) for text, names in groups.items()]

    def render(self) -> str:
        """Several lines: the fatal reason, or one line per group of nodes that fail alike."""
        if self.fatal is not None:
            return f"cannot allocate: {self.fatal.render()}"
        if not self.nodes:
            return "cannot allocate: no node is available"
        lines = [f"cannot allocate all claims on any of {self.nodes_total} node(s):"]
        for names, text in self._groups():
            shown = ", ".join(names[:SHOWN_DEVICES]) + (
                f", … ({len(names) - SHOWN_DEVICES} more)" if len(names) > SHOWN_DEVICES else ""
            )
            lines.append(f"  {shown}: {text}")
        missing = self.nodes_total - len(self.nodes)
        if missing > 0:
            lines.append(f"  ({missing} more node(s) not shown)")
        return "\n".join(lines)

    def summary(self, limit: int = EVENT_MESSAGE_MAX) -> str:
        """One line that fits an event message."""
        text = " ".join(line.strip() for line in self.render().splitlines())
        return text if len(text) <= limit else text[: limit - 1] + "…"
