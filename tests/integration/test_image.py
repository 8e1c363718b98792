"""The product image as tools.image builds it on the private engine: what runs in it, and its archive.

One engine and one build per session (cached: a warm build takes seconds, a cold one minutes, hence the long
timeout). Containers run with `docker run --rm --network none`. Fails, never skips, when the engine cannot
start or the build fails: CI runs as root with apt, the Go module proxy and PyPI reachable.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dra_operator.controlplane.build import BuildError
from dra_operator.controlplane.polling import wait_until
from dra_operator.tools.docker import DockerDaemon, DockerError, mounts_under, run_dir_for
from dra_operator.tools.image import BuiltImage, build_operator_image, save_image

# A cold build (buildx from Go modules, debootstrap, every wheel from PyPI) outlasts the default 600 s.
pytestmark = pytest.mark.timeout(2400)

RUNTIME_UID = 65532


@pytest.fixture(scope="session")
def engine() -> Iterator[DockerDaemon]:
    daemon = DockerDaemon()
    try:
        daemon.start()
    except (DockerError, BuildError, OSError) as error:
        pytest.fail(f"private docker engine unavailable: {error}", pytrace=False)
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def built(engine: DockerDaemon) -> BuiltImage:
    try:
        return build_operator_image(daemon=engine)
    except (DockerError, BuildError, OSError) as error:
        pytest.fail(f"building the image failed: {error}", pytrace=False)


def run(
    engine: DockerDaemon, image: str, *args: str, entrypoint: str | None = None
) -> subprocess.CompletedProcess[str]:
    chosen = ["--entrypoint", entrypoint] if entrypoint else []
    return engine.docker("run", "--rm", "--network", "none", *chosen, image, *args, check=False, timeout=120)


def test_runs_as_the_unprivileged_uid(engine: DockerDaemon, built: BuiltImage) -> None:
    user = engine.docker("image", "inspect", "--format", "{{.Config.User}}", built.image_id).stdout.strip()
    assert user == f"{RUNTIME_UID}:{RUNTIME_UID}"
    result = run(engine, built.reference, "-c", "id -u; id -g", entrypoint="sh")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(RUNTIME_UID), str(RUNTIME_UID)]


def test_cli_prints_usage(engine: DockerDaemon, built: BuiltImage) -> None:
    result = run(engine, built.reference, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: dra-operator" in result.stdout
    # The image's default command is --help too.
    default = run(engine, built.reference)
    assert default.returncode == 0, default.stderr
    assert "usage: dra-operator" in default.stdout


CEL_CHECK = """
import cel_expr_python
from dra_operator.cel import CelDevice, compile_selector
selector = compile_selector(
    'device.driver == "gpu.example.com" && '
    'device.capacity["gpu.example.com"].memory.compareTo(quantity("32Gi")) >= 0'
)
big = CelDevice.from_plain("gpu.example.com", {"model": "x"}, {"memory": "64Gi"})
small = CelDevice.from_plain("gpu.example.com", {"model": "x"}, {"memory": "16Gi"})
print(selector.evaluate(big), selector.evaluate(small))
"""


def test_cel_runtime_evaluates(engine: DockerDaemon, built: BuiltImage) -> None:
    result = run(engine, built.reference, "-c", CEL_CHECK, entrypoint="python")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]


def test_nvml_bindings_import(engine: DockerDaemon, built: BuiltImage) -> None:
    # No GPU here: importing is what the image can show; the agent's NVML use is tested elsewhere.
    result = run(engine, built.reference, "-c", "import pynvml; print(pynvml.__name__)", entrypoint="python")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "pynvml"


def test_no_pip_at_run_time(engine: DockerDaemon, built: BuiltImage) -> None:
    commands = run(engine, built.reference, "-c", "command -v pip pip3 pip3.11", entrypoint="sh")
    assert commands.returncode != 0 and commands.stdout.strip() == ""
    module = run(engine, built.reference, "-c", "import pip", entrypoint="python")
    assert module.returncode != 0
    assert "No module named 'pip'" in module.stderr


def test_built_on_the_debian_python_base(engine: DockerDaemon, built: BuiltImage) -> None:
    assert built.base.startswith("dra-operator/python-base:bookworm-")
    result = run(engine, built.reference, "-c", "import sys; print(sys.version[:4])", entrypoint="python")
    assert result.stdout.strip() == "3.11"
    assert built.size < 450e6, f"the image grew to {built.size / 1e6:.0f} MB"


def test_rebuild_of_unchanged_sources_is_the_same_image(engine: DockerDaemon, built: BuiltImage) -> None:
    again = build_operator_image(daemon=engine)
    assert again.image_id == built.image_id
    assert again.base == built.base


def test_archive_names_the_tag_and_holds_the_image(engine: DockerDaemon, built: BuiltImage) -> None:
    archive = save_image(built.reference, daemon=engine)
    assert built.image_id.removeprefix("sha256:")[:16] in archive.name
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        handle = tar.extractfile("manifest.json")
        assert handle is not None
        manifest = json.load(handle)
    (entry,) = manifest
    assert entry["RepoTags"] == [built.reference]
    # docker save names the config after its digest, which is the image ID.
    assert entry["Config"].removesuffix(".json") == built.image_id.removeprefix("sha256:")
    assert set(entry["Layers"]) <= names
    written = archive.stat().st_mtime_ns
    assert save_image(built.reference, daemon=engine) == archive
    assert archive.stat().st_mtime_ns == written  # kept while the image ID is the same


def test_host_network_is_left_alone(engine: DockerDaemon, built: BuiltImage) -> None:
    # What a default dockerd would add: the docker0 bridge and DOCKER chains.
    assert not [name for name in os.listdir("/sys/class/net") if name.startswith("docker")]
    iptables = shutil.which("iptables")
    if iptables is not None:
        for table in ("filter", "nat"):
            rules = subprocess.run([iptables, "-t", table, "-S"], capture_output=True, text=True, check=False)
            assert "DOCKER" not in rules.stdout


KILLED_OWNER = """
import sys
from pathlib import Path
from dra_operator.tools.docker import DockerDaemon
from dra_operator.tools.image import ensure_python_base
daemon = DockerDaemon(data_root=Path(sys.argv[1])).start()
base = ensure_python_base(daemon)
container = daemon.docker("run", "-d", "--network", "none", base, "sleep", "600").stdout.strip()
pid = daemon.docker("inspect", "--format", "{{.State.Pid}}", container).stdout.strip()
print(container, pid, flush=True)
sys.stdin.read()  # until killed
"""


def _pids(run_dir: Path) -> list[int]:
    return [int((run_dir / name).read_text()) for name in ("docker.pid", "containerd.pid")]


def test_a_killed_owner_leaves_nothing_the_next_start_does_not_clean(tmp_path: Path) -> None:
    # A data root of its own: the session's engine holds the cached one.
    data_root = tmp_path / "engine"
    owner = subprocess.Popen(
        [sys.executable, "-c", KILLED_OWNER, str(data_root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    line = owner.stdout.readline()
    if not line:
        owner.wait()
        assert owner.stderr is not None
        pytest.fail(f"the owner process failed: {owner.stderr.read()[-3000:]}")
    container, container_pid = line.split()
    run_dir = run_dir_for(data_root)
    daemons = _pids(run_dir)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    try:
        # The daemons die with their owner; the container's shim outlives them.
        wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in daemons), 30, "daemons gone")
        assert Path(f"/proc/{container_pid}").exists()
        with DockerDaemon(data_root=data_root) as again:
            state = again.docker("inspect", "--format", "{{.State.Running}}", container).stdout.strip()
            assert state == "false"
            wait_until(lambda: not Path(f"/proc/{container_pid}").exists(), 30, "container process gone")
            again.docker("rm", container)
        assert not run_dir.exists()
        assert mounts_under(run_dir) == [] and mounts_under(data_root) == []
    finally:
        owner.stdout.close()
        if owner.stderr is not None:
            owner.stderr.close()
        if owner.stdin is not None:
            owner.stdin.close()
