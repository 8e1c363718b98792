"""Nodes as the allocator sees them (name and labels) and core/v1 NodeSelector matching against them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from dra_operator.api.resource import NodeSelector, NodeSelectorRequirement, NodeSelectorTerm

# The only node field a NodeSelector's matchFields may name (as in kube-scheduler).
NODE_NAME_FIELD = "metadata.name"


@dataclass(frozen=True, slots=True)
class Node:
    """A node: its name and labels. `name=None` is the placeholder used when a snapshot knows no nodes."""

    name: str | None
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_object(cls, obj: Mapping[str, object]) -> Node:
        """A core/v1 Node dict (only metadata.name and metadata.labels are read)."""
        meta = obj.get("metadata")
        if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
            raise ValueError("Node: metadata.name is required")
        labels = meta.get("labels") or {}
        if not isinstance(labels, Mapping):
            raise ValueError(f"Node {meta['name']}: metadata.labels must be a map")
        if all(type(k) is str and type(v) is str for k, v in labels.items()):
            # The object's own map, not a copy: nothing here writes it, and a snapshot holds every Node's.
            return cls(name=meta["name"], labels=labels)
        return cls(name=str(meta["name"]), labels={str(k): str(v) for k, v in labels.items()})


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _requirement_matches(req: NodeSelectorRequirement, value: str | None) -> bool:
    """One requirement against one value (a label value or a field value; None when absent)."""
    values = req.values or []
    op = req.operator
    if op == "In":
        return value is not None and value in values
    if op == "NotIn":
        return value is None or value not in values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    # Gt / Lt: both sides must be integers, exactly one value (as in k8s.io/apimachinery labels).
    if value is None or len(values) != 1:
        return False
    have, want = _int_or_none(value), _int_or_none(values[0])
    if have is None or want is None:
        return False
    return have > want if op == "Gt" else have < want


def term_matches(term: NodeSelectorTerm, node: Node) -> bool:
    """Requirements of one term are ANDed; a term without any requirement matches no node."""
    expressions = term.match_expressions or []
    fields = term.match_fields or []
    if not expressions and not fields:
        return False
    if node.name is None:
        # The placeholder node has neither labels nor a name to match.
        return False
    for req in expressions:
        if not _requirement_matches(req, node.labels.get(req.key)):
            return False
    for req in fields:
        if req.key != NODE_NAME_FIELD:
            return False
        # Only In and NotIn are valid for fields; anything else never matches.
        if req.operator not in ("In", "NotIn") or not _requirement_matches(req, node.name):
            return False
    return True


def selector_matches(selector: NodeSelector, node: Node) -> bool:
    """Terms of a NodeSelector are ORed; a selector without terms matches no node."""
    return any(term_matches(term, node) for term in selector.node_selector_terms)
