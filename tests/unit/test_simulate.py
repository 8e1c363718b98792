"""`dra-operator simulate`: the seed walkthrough offline, output formats, exit codes and bad input."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from dra_operator.cli import main

FIXTURES = Path(__file__).parents[1] / "fixtures"
SEED = FIXTURES / "seed"
SLICES = FIXTURES / "allocation" / "seed-slices.yaml"  # node-a: 3 x 64Gi + 1 x 32Gi, node-b: 2 x 64Gi
SEED_OBJECTS = [
    SEED / "deviceclass.yaml",
    SEED / "resourceclaimtemplate.yaml",
    SEED / "resourceclaim.yaml",
    SLICES,
]
GEN_PREFIX = "resource.dra-operator.io/pod-claim-name"


def run(capsys: pytest.CaptureFixture[str], *files: Path, output: str = "table") -> tuple[int, str, str]:
    argv = ["simulate", "-o", output]
    for path in files:
        argv += ["-f", str(path)]
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def seed_job(tmp_path: Path, keep: set[str]) -> Path:
    """The seed's Job, keeping only the Pod claims (and containers' uses of them) named in `keep`."""
    job: dict[str, Any] = yaml.safe_load((SEED / "dra-example-job.yaml").read_text())
    job = copy.deepcopy(job)
    spec = job["spec"]["template"]["spec"]
    spec["resourceClaims"] = [c for c in spec["resourceClaims"] if c["name"] in keep]
    for container in spec["containers"]:
        container["resources"]["claims"] = [c for c in container["resources"]["claims"] if c["name"] in keep]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def claims_by_name(text: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in yaml.safe_load_all(text) if d}


def devices(claim: dict[str, Any]) -> list[str]:
    results = claim["status"]["allocation"]["devices"]["results"]
    return [f"{r['pool']}/{r['device']}" for r in results]


# ---------------------------------------------------------------------------------------------- the seed


def test_seed_template_claim_gets_one_64gi_gpu_per_pod(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    job = seed_job(tmp_path, {"separate-gpu-claim"})
    code, out, err = run(capsys, *SEED_OBJECTS, job, output="yaml")
    assert code == 0, err
    claims = claims_by_name(out)
    generated = {n: c for n, c in claims.items() if n.startswith("example-dra-job-")}
    assert len(generated) == 2  # parallelism: 2
    chosen = [devices(c) for c in generated.values()]
    assert all(len(d) == 1 for d in chosen)
    assert len({d[0] for d in chosen}) == 2
    assert all(
        d[0] in {"node-a/gpu-0", "node-a/gpu-1", "node-a/gpu-3", "node-b/gpu-0", "node-b/gpu-1"}
        for d in chosen
    )
    for index, (name, claim) in enumerate(sorted(generated.items())):
        meta = claim["metadata"]
        pod = f"example-dra-job-{index}"
        assert name.startswith(f"{pod}-separate-gpu-claim-")
        assert meta["generateName"] == f"{pod}-separate-gpu-claim-"
        assert meta["annotations"][GEN_PREFIX] == "separate-gpu-claim"
        (owner,) = meta["ownerReferences"]
        assert (owner["apiVersion"], owner["kind"], owner["name"], owner["controller"]) == (
            "v1",
            "Pod",
            pod,
            True,
        )
        (reserved,) = claim["status"]["reservedFor"]
        assert (reserved["resource"], reserved["name"], reserved["uid"]) == ("pods", pod, owner["uid"])
    # The shared claim is not used by this Job, so it stays unallocated.
    assert "status" not in claims["example-resource-claim"]


def test_seed_all_claim_takes_every_matching_gpu_of_one_node(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    job = seed_job(tmp_path, {"shared-gpu-claim"})
    code, out, err = run(capsys, *SEED_OBJECTS, job, output="yaml")
    assert code == 0, err
    shared = claims_by_name(out)["example-resource-claim"]
    # every 64Gi GPU of node-a (gpu-2 has 32Gi), none of node-b
    assert devices(shared) == ["node-a/gpu-0", "node-a/gpu-1", "node-a/gpu-3"]
    terms = shared["status"]["allocation"]["nodeSelector"]["nodeSelectorTerms"]
    assert terms == [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-a"]}]}]
    assert [r["name"] for r in shared["status"]["reservedFor"]] == ["example-dra-job-0", "example-dra-job-1"]
    code, table, _ = run(capsys, *SEED_OBJECTS, job)
    rows = [line.split() for line in table.splitlines()[1:]]
    assert {row[0] for row in rows} == {"default/example-dra-job-0", "default/example-dra-job-1"}
    assert {row[4] for row in rows} == {"node-a"}  # POD, CLAIM (2 words + "(shared)"), NODE


def test_seed_job_as_written_cannot_be_allocated_and_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *SEED_OBJECTS, SEED / "dra-example-job.yaml")
    assert code == 1, err
    # Both claims select the same 64Gi GPUs; All takes every one of a node, the template claim needs one more.
    assert "takes all 3 matching devices: together they need 4 distinct devices, only 3 match" in out
    assert "takes all 2 matching devices: together they need 3 distinct devices, only 2 match" in out
    assert "node-a:" in out and "node-b:" in out


def test_upstream_seed_claim_is_rejected_with_a_hint(capsys: pytest.CaptureFixture[str]) -> None:
    upstream = SEED / "upstream" / "resourceclaim.yaml"
    code, out, err = run(capsys, SEED / "deviceclass.yaml", upstream)
    assert code == 2
    assert str(upstream) in err and "ResourceClaim example-resource-claim" in err
    assert "`expression` must be nested under `cel`" in err
    assert "Traceback" not in err and out == ""


# ------------------------------------------------------------------------------------------- bad input


BAD_INPUT = {
    "count-zero": (
        "kind: ResourceClaim\napiVersion: resource.dra-operator.io/v1\nmetadata: {name: c}\n"
        "spec: {devices: {requests: [{name: r, exactly: {deviceClassName: gpu, count: 0}}]}}\n",
        ["ResourceClaim c", "count"],
    ),
    "duplicate-requests": (
        "kind: ResourceClaim\napiVersion: resource.k8s.io/v1\nmetadata: {name: c}\n"
        "spec: {devices: {requests: [{name: r, exactly: {deviceClassName: gpu}},"
        " {name: r, exactly: {deviceClassName: gpu}}]}}\n",
        ["ResourceClaim c", "duplicate request name"],
    ),
    "neither-exactly-nor-first-available": (
        "kind: ResourceClaim\napiVersion: resource.k8s.io/v1\nmetadata: {name: c}\n"
        "spec: {devices: {requests: [{name: r}]}}\n",
        ["ResourceClaim c", "exactly one of exactly, firstAvailable"],
    ),
    "pod-claim-without-source": (
        "kind: Pod\napiVersion: v1\nmetadata: {name: p}\n"
        "spec: {containers: [{name: c, image: x}], resourceClaims: [{name: gpu}]}\n",
        ["Pod p", "must specify one of: `resourceClaimName`, `resourceClaimTemplateName`"],
    ),
    "invalid-cel": (
        "kind: DeviceClass\napiVersion: resource.k8s.io/v1\nmetadata: {name: gpu}\n"
        "spec: {selectors: [{cel: {expression: 'device.driver =='}}]}\n",
        ["DeviceClass gpu", "spec.selectors[0].cel.expression", "does not compile at line 1, column"],
    ),
    "unsupported-kind": (
        "kind: ConfigMap\napiVersion: v1\nmetadata: {name: cm}\n",
        ["ConfigMap cm", "not supported"],
    ),
    "not-yaml": ("kind: [\n", ["not valid YAML"]),
    "bad-parallelism": (
        "kind: Job\napiVersion: batch/v1\nmetadata: {name: j}\n"
        "spec: {parallelism: many, template: {spec: {containers: [{name: c, image: x}]}}}\n",
        ["Job j", "parallelism"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_invalid_input_exits_2_naming_file_and_object(
    case: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text, needles = BAD_INPUT[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    code, out, err = run(capsys, path)
    assert code == 2 and out == ""
    assert str(path) in err
    for needle in needles:
        assert needle in err, err
    assert "Traceback" not in err


def test_missing_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, tmp_path / "absent.yaml")
    assert code == 2 and "absent.yaml" in err and "cannot read" in err


def test_missing_template_or_claim_leaves_the_pod_unallocated(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pods = tmp_path / "pods.yaml"
    pods.write_text(
        "kind: Pod\napiVersion: v1\nmetadata: {name: a}\n"
        "spec: {containers: [{name: c, image: x}],"
        " resourceClaims: [{name: g, resourceClaimTemplateName: nope}]}\n"
        "---\nkind: Pod\napiVersion: v1\nmetadata: {name: b}\n"
        "spec: {containers: [{name: c, image: x}], resourceClaims: [{name: g, resourceClaimName: nope}]}\n"
    )
    code, out, _ = run(capsys, *SEED_OBJECTS, pods)
    assert code == 1
    assert "resourceclaimtemplate default/nope not found" in out
    assert "resourceclaim default/nope not found" in out


def test_pods_are_allocated_in_file_order_across_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pod = (
        "kind: Pod\napiVersion: v1\nmetadata: {{name: {name}}}\n"
        "spec: {{containers: [{{name: c, image: x}}],"
        " resourceClaims: [{{name: g, resourceClaimTemplateName: example-resource-claim-template}}]}}\n"
    )
    first, second = tmp_path / "1.yaml", tmp_path / "2.yaml"
    first.write_text(pod.format(name="zeta"))
    second.write_text(pod.format(name="alpha"))
    code, out, err = run(capsys, *SEED_OBJECTS, first, second, output="yaml")
    assert code == 0, err
    claims = claims_by_name(out)
    zeta = next(c for n, c in claims.items() if n.startswith("zeta-"))
    alpha = next(c for n, c in claims.items() if n.startswith("alpha-"))
    assert devices(zeta) == ["node-a/gpu-0"] and devices(alpha) == ["node-a/gpu-1"]


def test_device_taint_rules_in_the_input_keep_claims_off_their_devices(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A NoSchedule DeviceTaintRule on node-a's pool: the seed Job's two template claims go to node-b."""
    rule = {
        "apiVersion": "resource.dra-operator.io/v1",
        "kind": "DeviceTaintRule",
        "metadata": {"name": "drain-node-a"},
        "spec": {
            "deviceSelector": {"pool": "node-a"},
            "taint": {"key": "example.com/drain", "effect": "NoSchedule"},
        },
    }
    path = tmp_path / "rule.yaml"
    path.write_text(yaml.safe_dump(rule))
    job = seed_job(tmp_path, {"separate-gpu-claim"})
    code, out, err = run(capsys, *SEED_OBJECTS, path, job, output="yaml")
    assert code == 0, err
    generated = [c for n, c in claims_by_name(out).items() if n.startswith("example-dra-job-")]
    assert sorted(d for c in generated for d in devices(c)) == ["node-b/gpu-0", "node-b/gpu-1"]
