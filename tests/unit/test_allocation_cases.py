"""Allocation rules as YAML cases (tests/fixtures/allocation/*.yaml), run through `simulate` end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dra_operator import simulate
from dra_operator.allocation.explain import Explanation

CASES = Path(__file__).parents[1] / "fixtures" / "allocation"
CASE_FILES = sorted(p for p in CASES.glob("*.yaml") if p.name != "seed-slices.yaml")


def _split(path: Path) -> tuple[str, dict[str, Any]]:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    expect = [d for d in documents if d.get("kind") == "Expect"]
    assert len(expect) == 1, f"{path.name}: one `kind: Expect` document expected"
    objects = [d for d in documents if d.get("kind") != "Expect"]
    return yaml.safe_dump_all(objects), expect[0]


def _pod_key(name: str) -> tuple[str, str]:
    namespace, _, pod = name.rpartition("/")
    return (namespace or "default", pod)


class Outcome:
    """What simulate decided for each Pod, with the explanations captured as structures."""

    def __init__(self, objects: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        source = tmp_path / "case.yaml"
        source.write_text(objects)
        self.explanations: dict[tuple[str, str], Explanation] = {}
        original = simulate.allocate

        def recording(*args: Any, **kwargs: Any) -> Any:
            outcome = original(*args, **kwargs)
            explanation = getattr(outcome, "explanation", None)
            if explanation is not None:
                pod = args[1]
                self.explanations[(pod.namespace, pod.name)] = explanation
            return outcome

        monkeypatch.setattr(simulate, "allocate", recording)
        self.world = simulate.load([str(source)])
        self.runs, self.rendered = simulate.simulate(self.world)
        self.by_pod = {(r.ref.namespace, r.ref.name): r for r in self.runs}

    def claim(self, pod: tuple[str, str], pod_claim: str) -> Any:
        run = self.by_pod[pod]
        keys = dict(run.claims)
        assert pod_claim in keys, f"{pod}: no claim {pod_claim!r} (has {sorted(keys)})"
        return self.world.claims[keys[pod_claim]]


def _reason_types(explanation: Explanation) -> list[str]:
    return [type(r).__name__ for r in explanation.reasons]


@pytest.mark.parametrize("case", CASE_FILES, ids=[p.stem for p in CASE_FILES])
def test_case(case: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    objects, expect = _split(case)
    outcome = Outcome(objects, tmp_path, monkeypatch)
    pods: dict[str, dict[str, Any]] = expect["pods"]
    assert set(map(_pod_key, pods)) <= set(outcome.by_pod), "every expected Pod was simulated"
    for name, want in pods.items():
        key = _pod_key(name)
        run = outcome.by_pod[key]
        if "fails" in want:
            assert not run.allocated, f"{name}: expected to fail, got node {run.node}"
            explanation = outcome.explanations[key]
            assert want["fails"] in _reason_types(explanation), (name, _reason_types(explanation))
            text = explanation.render()
            for needle in want.get("mentions", []):
                assert needle in text, f"{name}: {needle!r} not in explanation:\n{text}"
            continue
        assert run.allocated, f"{name}: {outcome.rendered.get(key) or run.problem}"
        if "node" in want:
            assert run.node == want["node"], name
        for pod_claim, devices in (want.get("claims") or {}).items():
            allocation = outcome.claim(key, pod_claim).status.allocation
            got = [f"{r.driver}/{r.pool}/{r.device}" for r in allocation.devices.results or []]
            assert got == devices, f"{name} {pod_claim}"
        for pod_claim, selector in (want.get("nodeSelector") or {}).items():
            allocation = outcome.claim(key, pod_claim).status.allocation
            got = allocation.node_selector.to_dict() if allocation.node_selector is not None else None
            assert got == selector, f"{name} {pod_claim}"
        for pod_claim, flags in (want.get("adminAccess") or {}).items():
            allocation = outcome.claim(key, pod_claim).status.allocation
            assert [r.admin_access for r in allocation.devices.results] == flags, f"{name} {pod_claim}"
        for pod_claim, names in (want.get("requests") or {}).items():
            allocation = outcome.claim(key, pod_claim).status.allocation
            assert [r.request for r in allocation.devices.results] == names, f"{name} {pod_claim}"
        for pod_claim, tolerations in (want.get("tolerations") or {}).items():
            allocation = outcome.claim(key, pod_claim).status.allocation
            got = [[t.to_dict() for t in r.tolerations or []] for r in allocation.devices.results]
            assert got == tolerations, f"{name} {pod_claim}"
    if "exit" in expect:
        assert (0 if all(r.allocated for r in outcome.runs) else 1) == expect["exit"]


@pytest.mark.parametrize("case", CASE_FILES, ids=[p.stem for p in CASE_FILES])
def test_case_is_deterministic(case: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    objects, _ = _split(case)
    first = Outcome(objects, tmp_path, monkeypatch)
    second = Outcome(objects, tmp_path, monkeypatch)
    dump = [first.world.claims[k].to_dict() for k in first.world.order]
    assert dump == [second.world.claims[k].to_dict() for k in second.world.order]
    assert first.rendered == second.rendered
