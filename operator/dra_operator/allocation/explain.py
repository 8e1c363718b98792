"""Why a Pod's claims cannot be allocated: structured reasons per node, and their rendering for people.

The same rendering serves `dra-operator simulate` (`Explanation.render`, lines) and the operator's
AllocationFailed event (`Explanation.summary`, one line that fits an event message). Reasons are plain frozen
dataclasses so tests and callers can inspect them; they keep full `driver/pool/device` names.

Rendering is node-neutral so that nodes failing alike read alike and are grouped: devices of the node's own
pools (node-local slices) are named by device name only (the pool being the node), devices of other pools keep
`driver/pool/device`. A `Style` says how much detail to spend; `summary` spends less until every group fits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from dra_operator.allocation.selectors import SelectorFailure

SHOWN_DEVICES = 6
SHOWN_NODES = 8
COMPACT_NODES = 3  # node names shown per group in the most compact summary
EVENT_MESSAGE_MAX = 1024
SHORT_CLAIM_MAX = 28  # longer claim names are elided in the middle in the most compact summary
MIN_SHARE = 60  # the fewest characters a group gets before whole groups are left out of a summary
LEFT_OUT = "(+{n} more group(s): see the dra-operator logs or `dra-operator simulate`)"

DeviceDetail = Literal["list", "range", "count"]
_NUMBERED = re.compile(r"^(.*?)(\d+)$")


@dataclass(frozen=True, slots=True)
class Style:
    """How reasons are worded: names of the node's own devices, detail spent, singular or plural nodes."""

    local: tuple[tuple[str, str], ...] = ()  # (pool label `driver/pool`, prefix its devices are named with)
    devices: DeviceDetail = "list"  # names, compressed runs (`gpu-0…gpu-3`), or a count
    short_claims: bool = False  # drop the Pod's namespace and elide long claim names
    requests_only: bool = False  # name a request without its claim
    namespace: str = ""  # the Pod's namespace
    plural: bool = False  # the text speaks for several nodes

    @property
    def where(self) -> str:
        return "each of these nodes" if self.plural else "this node"

    def device(self, label: str) -> str:
        for pool, prefix in self.local:
            if label.startswith(pool + "/") and "/" not in label[len(pool) + 1 :]:
                return prefix + label[len(pool) + 1 :]
        return label

    def pool(self, label: str) -> str:
        for pool, _ in self.local:
            if label == pool:
                return f"the node's own {label.partition('/')[0]} pool"
        return label

    def claim(self, label: str) -> str:
        if not self.short_claims:
            return label
        namespace, _, name = label.rpartition("/")
        name = name if namespace == self.namespace else label
        if len(name) > SHORT_CLAIM_MAX:
            keep = SHORT_CLAIM_MAX - 1
            name = name[: keep - keep // 2] + "…" + name[-(keep // 2) :]
        return name

    def request(self, claim: str, request: str) -> str:
        return f"request {request}" if self.requests_only else _request(self.claim(claim), request)

    def names(self, names: DeviceNames) -> str:
        if self.devices == "count":
            return _count(names.total)
        shown = [self.device(n) for n in names.names]
        text = ", ".join(_runs(shown) if self.devices == "range" else shown)
        if names.total > len(names.names):
            text += f", … ({names.total - len(names.names)} more)"
        return text


FULL = Style()


def _count(n: int) -> str:
    return f"{n} device{'s' if n != 1 else ''}"


def _runs(names: Sequence[str]) -> list[str]:
    """`gpu-0, gpu-1, gpu-2, gpu-5` -> `gpu-0…gpu-2, gpu-5`: consecutive numbers with the same stem."""
    out: list[str] = []
    run: list[str] = []
    last: tuple[str, int] | None = None
    for name in names:
        match = _NUMBERED.match(name)
        key = (match.group(1), int(match.group(2))) if match else None
        if run and key is not None and last is not None and key == (last[0], last[1] + 1):
            run.append(name)
        else:
            out.extend(_run(run))
            run = [name]
        last = key
    out.extend(_run(run))
    return out


def _run(run: list[str]) -> list[str]:
    return [f"{run[0]}…{run[-1]}"] if len(run) > 2 else run


@dataclass(frozen=True, slots=True)
class DeviceNames:
    """Some device names (`driver/pool/device`) and how many there are in all."""

    names: tuple[str, ...] = ()
    total: int = 0

    @classmethod
    def of(cls, names: Sequence[str], limit: int = SHOWN_DEVICES) -> DeviceNames:
        return cls(tuple(names[:limit]), len(names))

    def render(self, style: Style = FULL) -> str:
        return style.names(self)

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
# Each renders node-neutrally in a Style; nodes whose reasons render alike are shown as one group.


@dataclass(frozen=True, slots=True)
class ClaimNotOnNode:
    """An already allocated (shared) claim is bound to other nodes."""

    claim: str

    def render(self, style: Style = FULL) -> str:
        where = "these nodes" if style.plural else "this node"
        return f"claim {style.claim(self.claim)} is already allocated and not available on {where}"


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

    def render(self, style: Style = FULL) -> str:
        request = style.request(self.claim, self.request)
        if self.all_mode:
            head = f"{request} (allocationMode All)"
        else:
            noun = "device" if self.needed == 1 else "devices"
            head = f"{request} needs {self.needed} {noun}"
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
            parts.append(f"in use: {self._in_use(style)}")
        if self.tainted:
            parts.append(f"tainted (not tolerated): {style.names(self.tainted)}")
        if self.no_counters:
            parts.append(f"shared counters used up: {style.names(self.no_counters)}")
        if self.not_matching:
            parts.append(f"selectors false on {self.not_matching.total}: {style.names(self.not_matching)}")
        if self.other_pools:
            pools = ", ".join(style.pool(p) for p in self.other_pools)
            parts.append(f"skipped incomplete or invalid pools: {pools}")
        return f"{head}: " + "; ".join(parts)

    def _in_use(self, style: Style) -> str:
        held: dict[str, list[str]] = {}  # holder -> devices, in device order
        for device, holder in self.in_use:
            held.setdefault(holder, []).append(style.device(device))
        if style.devices == "count":  # who holds them matters more than which they are
            holders = ", ".join(style.claim(h) for h in held)
            return f"{_count(self.in_use_total)} (claim{'s' if len(held) > 1 else ''} {holders})"
        if style.devices == "range":
            shown = [f"{', '.join(_runs(d))} (claim {style.claim(h)})" for h, d in held.items()]
        else:
            shown = [f"{style.device(d)} (claim {style.claim(h)})" for d, h in self.in_use]
        more = self.in_use_total - len(self.in_use)
        return ", ".join(shown) + (f", … ({more} more)" if more > 0 else "")


@dataclass(frozen=True, slots=True)
class DevicesContended:
    """Requests that are each satisfiable alone compete for the same devices."""

    members: tuple[tuple[str, str, int, bool], ...]  # (claim, request, needed, all_mode)
    available: DeviceNames

    def render(self, style: Style = FULL) -> str:
        needs = []
        for claim, request, needed, all_mode in self.members:
            if not all_mode:
                what = f"needs {_count(needed)}"
            else:
                what = (
                    f"takes all {needed} matching devices" if needed != 1 else "takes the one matching device"
                )
            needs.append(f"{style.request(claim, request)} {what}")
        total = sum(m[2] for m in self.members)
        devices = "" if style.devices == "count" else f" ({style.names(self.available)})"
        return (
            f"{' and '.join(needs)}: together they need {total} distinct devices, only "
            f"{self.available.total} match on {style.where}{devices}"
        )


@dataclass(frozen=True, slots=True)
class ConstraintUnsatisfiable:
    claim: str
    constraint: str
    detail: str = ""

    def render(self, style: Style = FULL) -> str:
        detail = f": {self.detail}" if self.detail else ""
        claim = style.claim(self.claim)
        return f"claim {claim}: no choice of devices satisfies constraint {self.constraint}{detail}"


@dataclass(frozen=True, slots=True)
class InvalidPools:
    pools: tuple[str, ...]

    def render(self, style: Style = FULL) -> str:
        return f"invalid resource pools were encountered: {', '.join(style.pool(p) for p in self.pools)}"


@dataclass(frozen=True, slots=True)
class NoCombination:
    def render(self, style: Style = FULL) -> str:
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
    own_pools: tuple[str, ...] = ()  # labels (`driver/pool`) of the pools that are this node's alone

    def style(self, base: Style = FULL) -> Style:
        """`base` with this node's own devices named without their pool: by device name when the node has one
        own pool, else by `driver/device` where the driver has only that pool on the node."""
        if len(self.own_pools) == 1:
            return replace(base, local=((self.own_pools[0], ""),))
        drivers = [p.partition("/")[0] for p in self.own_pools]
        local = tuple(
            (pool, f"{driver}/")
            for pool, driver in zip(self.own_pools, drivers, strict=True)
            if drivers.count(driver) == 1
        )
        return replace(base, local=local)

    def render(self, style: Style = FULL) -> str:
        """The reasons, node-neutral (see `style`)."""
        own = self.style(style)
        return "; ".join(r.render(own) for r in self.reasons)


@dataclass(frozen=True, slots=True)
class NodeGroup:
    """Nodes whose reasons render alike; `failure` is the first node's (any member renders the same)."""

    nodes: tuple[str, ...]
    failure: NodeFailure

    def names(self, shown: int = SHOWN_NODES) -> str:
        if len(self.nodes) <= shown + 1:  # "and 1 more" is no shorter than the name
            return ", ".join(self.nodes)
        return f"{', '.join(self.nodes[:shown])} and {len(self.nodes) - shown} more"

    def reason(self, style: Style = FULL) -> str:
        return self.failure.render(replace(style, plural=len(self.nodes) > 1))

    def render(self, style: Style = FULL, shown_nodes: int = SHOWN_NODES) -> str:
        return f"{self.names(shown_nodes)}: {self.reason(style)}"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def _elide(text: str, limit: int) -> str:
    """`text` in `limit` characters, its middle left out: a reason starts with what is asked and ends with
    what differs between nodes (who holds the devices, which pool)."""
    if len(text) <= limit:
        return text
    head = max(limit - 1, 0) * 11 // 20
    return text[:head] + "…" + text[len(text) - (max(limit - 1, 0) - head) :]


def _fair_shares(lengths: Sequence[int], budget: int) -> list[int]:
    """Characters per part when `budget` is shared: short parts keep theirs, long ones share the rest."""
    shares = list(lengths)
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    left = budget
    for position, index in enumerate(order):
        share = left // (len(order) - position)
        shares[index] = min(lengths[index], share)
        left -= shares[index]
    return shares


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

    @property
    def _base(self) -> Style:
        return Style(namespace=self.pod.partition("/")[0] if "/" in self.pod else "")

    def groups(self, style: Style | None = None) -> list[NodeGroup]:
        """Nodes whose reasons render alike in `style` (default: full detail), nodes in name order, groups
        ordered by their first node. Less detail can merge groups."""
        found: dict[str, list[NodeFailure]] = {}
        style = style or self._base
        for failure in self.nodes:
            found.setdefault(failure.render(style), []).append(failure)
        groups = []
        for failures in found.values():
            named = sorted(failures, key=lambda f: f.node or "")
            groups.append(NodeGroup(tuple(f.node or "(any node)" for f in named), named[0]))
        return sorted(groups, key=lambda g: g.nodes)

    def _head(self) -> str:
        return f"cannot allocate all claims on any of {self.nodes_total} node(s):"

    def _not_shown(self) -> str:
        missing = self.nodes_total - len(self.nodes)
        return f"({missing} more node(s) not shown)" if missing > 0 else ""

    def render(self) -> str:
        """Several lines: the fatal reason, or one line per group of nodes that fail alike."""
        if self.fatal is not None:
            return f"cannot allocate: {self.fatal.render()}"
        if not self.nodes:
            return "cannot allocate: no node is available"
        lines = [self._head(), *(f"  {g.render(self._base)}" for g in self.groups())]
        if self._not_shown():
            lines.append(f"  {self._not_shown()}")
        return "\n".join(lines)

    def summary(self, limit: int = EVENT_MESSAGE_MAX) -> str:
        """One line of at most `limit` characters that gives every group of nodes its reason. Detail goes in
        this order: device lists (runs, then counts), claim names (shortened, then left out of requests) and
        node lists; then each group's reason is cut to a fair share (its middle left out); only when a share
        would be too small to say anything are the last groups left out, and counted."""
        if self.fatal is not None:
            return _cut(f"cannot allocate: {self.fatal.render()}", limit)
        if not self.nodes:
            return _cut("cannot allocate: no node is available", limit)
        base = self._base
        levels: list[tuple[Style, int]] = [
            (base, SHOWN_NODES),
            (replace(base, devices="range"), SHOWN_NODES),
            (replace(base, devices="count"), SHOWN_NODES),
            (replace(base, devices="count", short_claims=True), COMPACT_NODES),
            (replace(base, devices="count", short_claims=True, requests_only=True), COMPACT_NODES),
        ]
        head, not_shown = self._head(), self._not_shown()
        groups: list[NodeGroup] = []
        for style, shown_nodes in levels:
            groups = self.groups(style)
            text = _line(head, [g.render(style, shown_nodes) for g in groups], not_shown)
            if len(text) <= limit:
                return text
        # Still too long: cut each group's reason to a fair share, leaving out the last groups (counted) only
        # when a share would not even hold the start of a reason.
        names = [f"{g.names(shown_nodes)}: " for g in groups]
        reasons = [g.reason(style) for g in groups]
        for kept in range(len(groups), 0, -1):
            left_out = LEFT_OUT.format(n=len(groups) - kept) if kept < len(groups) else ""
            tail = " ".join(t for t in (not_shown, left_out) if t)
            frame = len(_line(head, names[:kept], tail))  # everything but the reasons
            shares = _fair_shares([len(r) for r in reasons[:kept]], limit - frame)
            if kept == 1 or all(s == len(r) or s >= MIN_SHARE for s, r in zip(shares, reasons, strict=False)):
                parts = [n + _elide(r, s) for n, r, s in zip(names, reasons, shares, strict=False)]
                return _cut(_line(head, parts, tail), limit)
        raise AssertionError("not reached: one group always fits, cut")


def _line(head: str, parts: Sequence[str], tail: str) -> str:
    """`head part | part | … tail`."""
    return " ".join([head, " | ".join(parts), *([tail] if tail else [])])
