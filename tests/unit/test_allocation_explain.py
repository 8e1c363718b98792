"""Explanations for people: node-neutral reasons, nodes failing alike grouped, summaries fit an event."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest

from dra_operator.allocation import Explanation, Node, NodeFailure, PodRef, Snapshot, Unallocatable, allocate
from dra_operator.allocation.explain import (
    EVENT_MESSAGE_MAX,
    SHOWN_NODES,
    DeviceNames,
    DevicesContended,
    RequestUnsatisfiable,
    Style,
)
from dra_operator.allocation.search import DETAILED_NODES
from dra_operator.api.resource import DeviceClass, ResourceClaim, ResourceSlice

DRIVER = "driver.example.com"
POD = PodRef("default", "example-dra-job-0", "uid-1")
ALL = {"name": "single-gpu-claim", "exactly": {"deviceClassName": "gpu", "allocationMode": "All"}}
ONE = {"name": "gpu-claim", "exactly": {"deviceClassName": "gpu"}}


def gpu_class() -> DeviceClass:
    selector = {"cel": {"expression": f'device.driver == "{DRIVER}"'}}
    return DeviceClass.model_validate({"metadata": {"name": "gpu"}, "spec": {"selectors": [selector]}})


def slice_of(node: str | None, gpus: int, pool: str | None = None) -> ResourceSlice:
    where: dict[str, Any] = {"nodeName": node} if node else {"allNodes": True}
    spec = {
        "driver": DRIVER,
        "pool": {"name": pool or node, "generation": 1, "resourceSliceCount": 1},
        "devices": [{"name": f"gpu-{i}"} for i in range(gpus)],
        **where,
    }
    return ResourceSlice.model_validate({"metadata": {"name": f"{pool or node}-slice"}, "spec": spec})


def claim(name: str, request: dict[str, Any]) -> ResourceClaim:
    return ResourceClaim.model_validate(
        {"metadata": {"name": name, "namespace": "default"}, "spec": {"devices": {"requests": [request]}}}
    )


def seed_job_on(gpus_per_node: dict[str, int], shared_pool: int = 0) -> Explanation:
    """The seed's Job Pod (one GPU of its own plus the All claim) on nodes with so many GPUs each."""
    slices = [slice_of(node, n) for node, n in gpus_per_node.items() if n]
    if shared_pool:
        slices.append(slice_of(None, shared_pool, pool="rack"))
    nodes = sorted(gpus_per_node)
    snapshot = Snapshot.build([gpu_class()], slices, [Node(n) for n in nodes])
    claims = [claim("example-dra-job-0-separate-gpu-claim-hcgfl", ONE), claim("example-resource-claim", ALL)]
    outcome = allocate(snapshot, POD, claims)
    assert isinstance(outcome, Unallocatable)
    return outcome.explanation


def group_lines(explanation: Explanation) -> list[str]:
    return [line for line in explanation.render().splitlines()[1:] if "node(s) not shown" not in line]


@dataclass(frozen=True)
class Case:
    name: str
    gpus: dict[str, int]
    groups: list[list[str]]  # node names per group, in the expected order
    shared_pool: int = 0


CASES = [
    Case("one node", {"node-0": 4}, [["node-0"]]),
    Case("four identical nodes", {f"node-{i}": 4 for i in range(4)}, [[f"node-{i}" for i in range(4)]]),
    Case(
        "mixed reasons",
        {"a-small": 2, "b-big": 4, "c-big": 4, "d-none": 0, "e-small": 2},
        [["a-small", "e-small"], ["b-big", "c-big"], ["d-none"]],
    ),
    Case("a pool for all nodes too", {"node-0": 1, "node-1": 1}, [["node-0", "node-1"]], shared_pool=2),
    Case(
        "200 nodes, 5 kinds (20 diagnosed)",
        {f"node-{i:03}": i % 5 for i in range(200)},
        [[f"node-{i:03}" for i in range(kind, DETAILED_NODES, 5)] for kind in range(5)],
    ),
]


def summary_parts(explanation: Explanation) -> list[str]:
    head = f"cannot allocate all claims on any of {explanation.nodes_total} node(s): "
    summary = explanation.summary()
    assert len(summary) <= EVENT_MESSAGE_MAX and "\n" not in summary
    assert summary.startswith(head), summary
    return summary.removeprefix(head).split(" | ")


def names_first(part: str, node: str) -> bool:
    return part.startswith((f"{node}:", f"{node},"))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_nodes_failing_alike_are_one_group_with_node_neutral_reasons(case: Case) -> None:
    explanation = seed_job_on(case.gpus, case.shared_pool)
    groups = explanation.groups()
    assert [list(g.nodes) for g in groups] == case.groups
    lines = group_lines(explanation)
    assert len(lines) == len(case.groups)
    for line, nodes in zip(lines, case.groups, strict=True):
        assert line.strip().startswith(", ".join(nodes[:SHOWN_NODES])), line
        # Devices of the node's own pool are named by device name only, others in full.
        assert not re.search(rf"{DRIVER}/({'|'.join(case.gpus)})/", line), line
        if len(nodes) > 1:
            assert "this node" not in line, line
    parts = summary_parts(explanation)
    assert len(parts) == len(case.groups)
    for part, nodes in zip(parts, case.groups, strict=True):
        assert names_first(part, nodes[0]) and (": request " in part or ": claim " in part), part
    # Programs still get full device names.
    for failure in explanation.nodes:
        for reason in failure.reasons:
            names = reason.available.names if isinstance(reason, DevicesContended) else ()
            assert all(n.startswith(f"{DRIVER}/") for n in names), names


def test_four_identical_nodes_read_as_the_seed_troubleshooting_would() -> None:
    explanation = seed_job_on({f"node-{i}": 4 for i in range(4)})
    (line,) = group_lines(explanation)
    assert "together they need 5 distinct devices, only 4 match on each of these nodes" in line
    assert line.endswith("(gpu-0, gpu-1, gpu-2, gpu-3)"), line


def test_devices_of_a_pool_for_all_nodes_keep_their_pool() -> None:
    explanation = seed_job_on({"node-0": 1, "node-1": 1}, shared_pool=2)
    (line,) = group_lines(explanation)
    assert f"{DRIVER}/rack/gpu-0" in line and "(gpu-0, " in line, line


# ---------------------------------------------------------------------------------- summary budget

LONG = "very-long-generated-claim-name-" * 2 + "x"


def in_use(node: str, holder: str, claim_name: str) -> RequestUnsatisfiable:
    held = tuple((f"{DRIVER}/{node}/gpu-{i}", f"default/{holder}") for i in range(6))
    return RequestUnsatisfiable(f"default/{claim_name}", "gpu", 1, False, DeviceNames(), held, 8)


def many_nodes(nodes: int, kinds: int, claim_name: str) -> tuple[Explanation, list[list[str]]]:
    """`nodes` nodes in `kinds` groups: node i has its 8 devices held by claim `holder-<i % kinds>`."""
    failures = []
    expected: list[list[str]] = [[] for _ in range(kinds)]
    for i in range(nodes):
        name = f"node-{i:03}"
        reason = in_use(name, f"holder-{i % kinds}", claim_name)
        failures.append(NodeFailure(name, (reason,), (f"{DRIVER}/{name}",)))
        expected[i % kinds].append(name)
    return Explanation("default/pod", nodes=tuple(failures), nodes_total=nodes), expected


def one_line(explanation: Explanation) -> str:
    return " ".join(explanation.render().split("\n  "))


@pytest.mark.parametrize(
    ("nodes", "kinds", "claim_name", "all_named"),
    [
        (1, 1, LONG, True),
        (4, 1, LONG, True),
        (4, 4, LONG, True),
        (200, 1, LONG, True),
        (200, 5, LONG, True),
        (200, 8, "pod-gpu-x7k2p", True),
        (200, 12, "pod-gpu-x7k2p", False),
        (200, 60, LONG, False),
    ],
)
def test_summary_fits_and_gives_every_group_a_reason_or_counts_the_rest(
    nodes: int, kinds: int, claim_name: str, all_named: bool
) -> None:
    explanation, expected = many_nodes(nodes, kinds, claim_name)
    summary = explanation.summary()
    parts = summary_parts(explanation)
    named = [g for g in expected if any(names_first(p, g[0]) for p in parts)]
    assert named == expected[: len(named)]  # groups in order of their first node, none skipped
    for group, part in zip(named, parts, strict=False):
        assert f"holder-{expected.index(group)})" in part, part  # what differs is kept
    if all_named:
        assert len(named) == len(expected) and "more group" not in summary, summary
    else:
        match = re.search(r"\(\+(\d+) more group\(s\)", summary)
        assert match and len(named) + int(match.group(1)) == len(expected), summary


@pytest.mark.parametrize(
    ("nodes", "kinds", "spent_less"),
    [
        (4, 4, ["gpu-0…gpu-5 (claim default/holder-0)"]),  # device runs
        (200, 5, ["8 devices (claim holder-0)", "very-long-gene…"]),  # device counts, then claim names
    ],
)
def test_summary_spends_less_on_devices_then_claim_names(
    nodes: int, kinds: int, spent_less: list[str]
) -> None:
    explanation, _ = many_nodes(nodes, kinds, LONG)
    assert len(one_line(explanation)) > EVENT_MESSAGE_MAX
    summary = explanation.summary()
    for needle in spent_less:
        assert needle in summary, summary


def test_summary_is_the_rendering_on_one_line_when_it_fits() -> None:
    explanation = seed_job_on({f"node-{i}": 4 for i in range(4)})
    assert explanation.summary() == one_line(explanation)


@pytest.mark.parametrize(
    ("style", "shown"),
    [
        (Style(), "gpu-0, gpu-1, gpu-2, gpu-3, gpu-5"),
        (Style(devices="range"), "gpu-0…gpu-3, gpu-5"),
        (Style(devices="count"), "5 devices"),
    ],
)
def test_device_lists_by_detail(style: Style, shown: str) -> None:
    names = DeviceNames.of([f"{DRIVER}/n/gpu-{i}" for i in (0, 1, 2, 3, 5)])
    assert names.render(Style(local=((f"{DRIVER}/n", ""),), devices=style.devices)) == shown
    assert DeviceNames.of([f"{DRIVER}/n/gpu-0"]).render() == f"{DRIVER}/n/gpu-0"  # not the node's: in full


def test_short_claim_names_drop_the_pods_namespace_and_elide_the_middle() -> None:
    style = Style(short_claims=True, namespace="default")
    short = style.claim("default/example-dra-job-0-separate-gpu-claim-hcgfl")
    assert len(short) <= 28 and short.startswith("example-dra") and short.endswith("hcgfl")
    assert style.claim("other/c") == "other/c"
