"""`dra-operator demo` end to end, as a user runs it: exit status, what it shows, nothing left behind.

The assertions read the evidence out of the demo's own output (its placement tables, the real kubectl's tables
and describe excerpt) and check it against itself: every Pod sits on the node of its claims and devices, the
seed's Job is refused with a reason for each node, the placeable Job completes with at most `parallelism` Pods
at a time, no claim is left, and no process or directory of the demo survives it (also after Ctrl-C).

It runs in both modes: `real` (kubelets run the Pods; `kubectl logs` shows each container's devices),
what `make demo` picks here (root, cgroup v1), and `fake` (no kubelet; the demo marks Pods Succeeded),
what it falls back to on a machine that cannot run real nodes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from dra_operator.demo import manifests_dir

REPO = Path(__file__).resolve().parents[2]
SEED_PORTED = REPO / "tests" / "fixtures" / "seed"
DEMO_TIMEOUT = 300  # the demo itself aims at under two minutes with cached binaries

Row = dict[str, str]


def demo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dra_operator.cli", "demo", *args]


def demo_env() -> dict[str, str]:
    env = {**os.environ, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "operator"), env.get("PYTHONPATH")) if p)
    return env


def tables(output: str, first_column: str) -> list[tuple[int, list[Row]]]:
    """(line number, rows) of every table in the output whose header starts with `first_column` (columns are
    3+ spaces apart, as kubectl and the demo print them)."""
    found: list[tuple[int, list[Row]]] = []
    lines = [line.strip() for line in output.splitlines()]
    for index, line in enumerate(lines):
        if not line.startswith(first_column + " "):
            continue
        headers = re.split(r"\s{3,}", line)
        rows = []
        for row_line in lines[index + 1 :]:
            cells = re.split(r"\s{3,}", row_line)
            if not row_line or row_line.startswith(("$", "#", "✓")) or len(cells) != len(headers):
                break
            rows.append(dict(zip(headers, cells, strict=True)))
        found.append((index, rows))
    return found


def rows_where(output: str, column: str, value: str) -> list[Row]:
    return [row for _, rows in tables(output, "NAME") for row in rows if row.get(column) == value]


def work_dir(output: str) -> Path:
    match = re.search(r"work directory \(.*\): (\S+)", output)
    assert match, output
    return Path(match.group(1))


def processes_mentioning(text: str) -> list[str]:
    """Live processes whose command line or environment names `text`: the demo's children all name its work
    directory (the control plane in its arguments, the agents and the operator in KUBECONFIG)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or proc.name == str(os.getpid()):
            continue
        try:
            argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in argv or text in environ:
            found.append(f"{proc.name}: {argv}")
    return found


@pytest.fixture(scope="module", params=["real", "fake"])
def demo_run(request: pytest.FixtureRequest) -> Iterator[subprocess.CompletedProcess[str]]:
    proc = subprocess.run(
        demo_command(f"--nodes-kind={request.param}"),
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:  # every test below reads this output: fail them all with the demo's own words
        pytest.fail(f"demo exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    yield proc


def real(run: subprocess.CompletedProcess[str]) -> bool:
    return "--nodes-kind=real" in run.args


def test_demo_says_which_mode_it_ran_in(demo_run: subprocess.CompletedProcess[str]) -> None:
    said = re.findall(r"# mode: (REAL NODES|FAKE NODES)", demo_run.stdout)
    assert said == (["REAL NODES"] if real(demo_run) else ["FAKE NODES"]), demo_run.stdout


def test_demo_exits_zero_in_time(demo_run: subprocess.CompletedProcess[str]) -> None:
    took = re.search(r"^demo took (\d+)s", demo_run.stdout, re.MULTILINE)
    assert took, demo_run.stdout
    assert int(took.group(1)) < 120, "the demo should take under two minutes once the binaries are cached"


def test_pods_sit_on_their_claims_nodes(demo_run: subprocess.CompletedProcess[str]) -> None:
    out = demo_run.stdout
    placements = tables(out, "POD")
    claim_tables = [(at, rows) for at, rows in tables(out, "NAME") if rows and "STATE" in rows[0]]
    # The Pods of step 7, and (fake nodes, where the demo ends the Pods) the first wave of the placeable Job.
    assert len(placements) == (1 if real(demo_run) else 2), out
    nodes = {row["NAME"] for row in rows_where(out, "STATUS", "Ready")}
    assert len(nodes) == 3, out
    for at, placement in placements:
        assert placement, out
        # `kubectl get resourceclaims...` printed right after the placement table: the claims' own columns.
        claims = {row["NAME"]: row for row in next(rows for where, rows in claim_tables if where > at)}
        for row in placement:
            assert row["NODE"] in nodes, row
            pool, _, devices = row["DEVICES (POOL: NAMES)"].partition(": ")
            assert pool == row["NODE"] and devices, row  # node-local devices of the Pod's own node
            claim = claims[row["RESOURCECLAIM"]]
            assert claim["NODE"] == row["NODE"], (row, claim)
            assert claim["STATE"] == "allocated,reserved", claim
    # The template Pod holds one 64Gi GPU of its node, so the All claim (every 64Gi GPU) went to another.
    first = {row["POD"]: row for row in placements[0][1]}
    assert first["pod-with-template"]["NODE"] != first["pod-sharing-claim-1"]["NODE"]
    assert first["pod-sharing-claim-1"]["NODE"] == first["pod-sharing-claim-2"]["NODE"]
    assert len(first["pod-sharing-claim-1"]["DEVICES (POOL: NAMES)"].split(",")) == 4


def test_seed_job_is_refused_with_a_reason_per_node(demo_run: subprocess.CompletedProcess[str]) -> None:
    out = demo_run.stdout
    nodes = {row["NAME"] for row in rows_where(out, "STATUS", "Ready")}
    gated = rows_where(out, "STATUS", "SchedulingGated")
    assert len(gated) == 2, out  # the Job's parallelism
    events = out[out.index("$ kubectl describe pod " + gated[0]["NAME"]) :]
    events = events[: events.index("✓")]
    assert "AllocationFailed" in events, events
    explanation = events[events.index("AllocationFailed") :]
    for node in nodes:  # nodes that fail alike share one reason: `node-0, node-1: …`
        assert re.search(rf"(?<![\w.-]){re.escape(node)}(?=[,:]| and )", explanation), (node, explanation)


def logged(out: str, pod: str) -> dict[str, set[str]]:
    """What `kubectl logs POD` printed in the demo's output: variable -> devices (pool/name)."""
    text = out[out.index(f"$ kubectl logs {pod}") :].splitlines()[1:]
    found: dict[str, set[str]] = {}
    for line in text:
        key, sep, value = line.strip().rpartition("] ")[2].partition("=")
        if not sep:
            break
        found[key] = {device.split("/", 1)[1] for device in value.split(",") if "/" in device}
    return found


def test_real_containers_print_exactly_their_claims_devices(
    demo_run: subprocess.CompletedProcess[str],
) -> None:
    if not real(demo_run):
        assert "$ kubectl logs" not in demo_run.stdout  # nothing runs on fake nodes
        return
    out = demo_run.stdout
    (_, placement), *_ = tables(out, "POD")
    for row in placement:
        pool, _, devices = row["DEVICES (POOL: NAMES)"].partition(": ")
        variable = "DRA_GPU_DEVICES" if row["POD CLAIM"] == "gpu" else "DRA_SHARED_GPU_DEVICES"
        assert logged(out, row["POD"]) == {
            variable: {f"{pool}/{device}" for device in devices.split(",")},
            "NVIDIA_VISIBLE_DEVICES": set(),  # `void`: no NVML GPU in these claims
        }, row
    assert "✓ each container printed exactly its claims' devices" in out


def test_placeable_job_runs_two_at_a_time_to_completion(demo_run: subprocess.CompletedProcess[str]) -> None:
    out = demo_run.stdout
    job = yaml.safe_load((manifests_dir() / "dra-example-job.yaml").read_text())
    if real(demo_run):
        ((_, rows),) = tables(out, "JOB POD")
        assert len(rows) == job["spec"]["completions"] and {r["PHASE"] for r in rows} == {"Succeeded"}, out
        (node,) = {r["NODE"] for r in rows}
        (shared,) = {r["SHARED GPUS"] for r in rows}
        assert all(r["OWN GPU (POOL/NAME)"].startswith(node + "/") for r in rows), rows
        assert not {r["OWN GPU (POOL/NAME)"] for r in rows} & set(shared.split(",")), rows
        first = logged(out, rows[0]["JOB POD"])
        assert first["DRA_SEPARATE_GPU_CLAIM_DEVICES"] == {rows[0]["OWN GPU (POOL/NAME)"]}, first
        assert first["DRA_SHARED_GPU_CLAIM_DEVICES"] == set(shared.split(",")), first
        job_rows = rows_where(out, "NAME", "example-dra-job")
        assert job_rows[-1]["COMPLETIONS"] == "{0}/{0}".format(job["spec"]["completions"])
        return
    waves = re.findall(r"^\s*wave \d+ \(shared claim: ([^/]+)/(\S+)\): (.*)$", out, re.MULTILINE)
    assert waves, out
    placed = [pair.split(" -> ") for *_, wave in waves for pair in wave.split(", ")]
    assert len(placed) == job["spec"]["completions"], waves
    assert len({pod for pod, _ in placed}) == len(placed), "a Pod counted twice"
    for shared_node, shared_gpus, wave in waves:
        own = [pair.split(" -> ")[1] for pair in wave.split(", ")]
        assert len(own) <= job["spec"]["parallelism"], wave
        # every Pod of the wave on the shared claim's node, with a GPU of its own that the claim does not hold
        assert all(gpu.startswith(shared_node + "/") for gpu in own), (shared_node, wave)
        assert len(set(own)) == len(own), wave
        assert not {gpu.split("/")[1] for gpu in own} & set(shared_gpus.split(",")), wave
    job_rows = rows_where(out, "NAME", "example-dra-job")
    assert job_rows and job_rows[-1]["COMPLETIONS"] == "{0}/{0}".format(job["spec"]["completions"])


def test_clean_up_leaves_no_claim_and_no_process(demo_run: subprocess.CompletedProcess[str]) -> None:
    out = demo_run.stdout
    clean_up = out[out.index("Clean up") :]
    last_get = clean_up[clean_up.rindex("$ kubectl get resourceclaims.resource.dra-operator.io") :]
    assert "No resources found in default namespace." in last_get.splitlines()[1], last_get
    directory = work_dir(out)
    assert not directory.exists(), f"{directory} left behind"
    assert processes_mentioning(str(directory)) == []
    if real(demo_run):
        match = re.search(r"nodes' directories \(.*\): (\S+)", out)
        assert match, out
        nodes_dir = match.group(1)
        assert not Path(nodes_dir).exists(), f"{nodes_dir} left behind"
        assert processes_mentioning(nodes_dir) == []  # kubelets, containerds, shims, containers


def test_ctrl_c_stops_everything() -> None:
    # The demo starts with Ctrl-C's default disposition, as from a terminal: a suite started in the background
    # by a shell without job control inherits SIGINT ignored, and an ignored SIGINT stays ignored in Python.
    # (An exec keeps SIG_DFL; a preexec_fn would be unsafe beside the suite's threads.)
    with_default_sigint = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    with_default_sigint += "os.execvp(sys.argv[1], sys.argv[1:])"
    proc = subprocess.Popen(
        [sys.executable, "-c", with_default_sigint, *demo_command()],
        env=demo_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []
    reached = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if "Identify devices to claim" in line:  # control plane, agents and operator all running
                reached.set()
        reached.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert reached.wait(DEMO_TIMEOUT), "".join(seen)
        assert proc.poll() is None, "".join(seen)
        directory = work_dir("".join(seen))
        running = processes_mentioning(str(directory))
        assert len(running) >= 8, running  # 4 control plane components, 3 agents, the operator
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130, "".join(seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    output = "".join(seen)
    assert "interrupted: stopping everything the demo started" in output, output
    assert processes_mentioning(str(directory)) == [], output
    assert not directory.exists(), output


@pytest.mark.parametrize(
    "name", ["deviceclass.yaml", "resourceclaimtemplate.yaml", "resourceclaim.yaml", "dra-example-job.yaml"]
)
def test_demo_manifests_are_the_ported_seed(name: str) -> None:
    shipped = list(yaml.safe_load_all((manifests_dir() / name).read_text()))
    assert shipped == list(yaml.safe_load_all((SEED_PORTED / name).read_text()))


def test_demo_variant_claim_differs_from_the_seed_claim_only_in_memory() -> None:
    seed = (manifests_dir() / "resourceclaim.yaml").read_text()
    variant = yaml.safe_load((manifests_dir() / "resourceclaim-32gi.yaml").read_text())
    assert variant == yaml.safe_load(seed.replace('quantity("64Gi")', 'quantity("32Gi")'))
    assert variant != yaml.safe_load(seed)
