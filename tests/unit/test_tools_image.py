"""The pure parts of the image build (tools.image, tools.docker): daemon arguments, mirror, keys, stamps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dra_operator.tools import docker, image

# ---- tools.docker -----------------------------------------------------------------------------------------


def test_dockerd_changes_no_host_network_and_keeps_its_files_in_its_own_directories(tmp_path: Path) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    args = docker.dockerd_args(data_root=data, run_dir=run)
    assert args[0] == "/usr/sbin/dockerd"
    for flag in (
        "--iptables=false",
        "--ip6tables=false",
        "--ip-forward=false",
        "--ip-masq=false",
        "--bridge=none",
        "--userland-proxy=false",
    ):
        assert flag in args
    assert f"--host=unix://{run}/docker.sock" in args
    assert f"--exec-root={run}/exec" in args
    assert f"--pidfile={run}/docker.pid" in args
    assert f"--data-root={data}/docker" in args
    # Our own containerd, never the host's (/run/containerd/containerd.sock on a Kubernetes node).
    assert f"--containerd={run}/containerd/containerd.sock" in args
    assert f"--config-file={run}/daemon.json" in args


def test_containerd_config_puts_state_and_sockets_in_the_run_dir_and_serves_no_cri(tmp_path: Path) -> None:
    text = docker.containerd_config(data_root=tmp_path / "data", run_dir=tmp_path / "run")
    assert "version = 2" in text
    assert f'root = "{tmp_path}/data/containerd"' in text
    assert f'state = "{tmp_path}/run/containerd"' in text
    assert f'address = "{tmp_path}/run/containerd/containerd.sock"' in text
    assert f'address = "{tmp_path}/run/containerd/containerd.sock.ttrpc"' in text
    assert '"io.containerd.grpc.v1.cri"' in text
    assert '"io.containerd.internal.v1.opt"' in text  # would create /opt/containerd
    assert '"/run/containerd' not in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Docker version 20.10.24+dfsg1, build 5d6db84\n", (20, 10)),
        ("Docker version 26.1.5+dfsg1, build 411e817\n", (26, 1)),
    ],
)
def test_parse_docker_version(text: str, expected: tuple[int, int]) -> None:
    assert docker.parse_docker_version(text) == expected


def test_parse_docker_version_rejects_nonsense() -> None:
    with pytest.raises(docker.DockerError):
        docker.parse_docker_version("dockerd: command not found")


def test_daemon_config_moves_the_key_file_only_where_dockerd_has_one(tmp_path: Path) -> None:
    old = docker.daemon_config(run_dir=tmp_path, version=(20, 10))
    assert old["deprecated-key-path"] == str(tmp_path / "key.json")
    # Newer dockerd rejects unknown keys in daemon.json.
    assert "deprecated-key-path" not in docker.daemon_config(run_dir=tmp_path, version=(26, 1))
    assert old["builder"] == {"gc": {"enabled": True, "defaultKeepStorage": "4GB"}}
    json.dumps(old)  # written as daemon.json


def test_run_dir_is_fixed_per_data_root_and_short_enough_for_unix_sockets(tmp_path: Path) -> None:
    first = docker.run_dir_for(tmp_path / "a")
    assert docker.run_dir_for(tmp_path / "a") == first  # a later start finds a killed run's directory
    assert docker.run_dir_for(tmp_path / "b") != first
    assert first.name.startswith("dra-operator-docker-")
    longest = f"{docker.containerd_socket(first)}.ttrpc"
    assert len(longest) < 108  # sun_path


def test_client_env_points_only_at_our_engine(tmp_path: Path) -> None:
    base = {"PATH": "/usr/bin", "DOCKER_CONTEXT": "remote", "DOCKER_HOST": "tcp://elsewhere:2375"}
    base |= {"BUILDX_BUILDER": "other", "DOCKER_TLS_VERIFY": "1"}
    env = docker.client_env(base, run_dir=tmp_path)
    assert env["DOCKER_HOST"] == f"unix://{tmp_path}/docker.sock"
    assert env["DOCKER_CONFIG"] == str(tmp_path / "config")
    assert env["BUILDX_NO_DEFAULT_ATTESTATIONS"] == "1"
    assert env["PATH"] == "/usr/bin"
    for name in ("DOCKER_CONTEXT", "BUILDX_BUILDER", "DOCKER_TLS_VERIFY"):
        assert name not in env


def test_buildx_is_pinned_and_stamped_with_its_version() -> None:
    assert docker.BUILDX_PACKAGE == "github.com/docker/buildx/cmd/buildx"
    assert docker.BUILDX_VERSION.startswith("v0.")
    flags = docker.buildx_ldflags("v0.33.0")
    assert "-X github.com/docker/buildx/version.Version=v0.33.0" in flags
    assert flags.startswith("-s -w ")


MOUNTINFO = """\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
51 27 0:4 net:[4026531833] /tmp/run/exec/netns/default rw - nsfs nsfs rw
52 22 254:1 /x /tmp/run/exec rw - ext4 /dev/vda rw
53 22 0:50 / /tmp/run/with\\040space rw - tmpfs tmpfs rw
54 22 0:51 / /tmp/runner/other rw - tmpfs tmpfs rw
"""


def test_mounts_under_lists_deepest_first_and_decodes_escapes() -> None:
    assert docker.mounts_under(Path("/tmp/run"), MOUNTINFO) == [
        "/tmp/run/exec/netns/default",
        "/tmp/run/with space",
        "/tmp/run/exec",
    ]
    assert docker.mounts_under(Path("/tmp/nothing"), MOUNTINFO) == []


# ---- tools.image: the base ------------------------------------------------------------------------------

DEBIAN_SOURCES = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


def test_mirror_is_the_one_apt_uses_for_the_suite() -> None:
    files = [("sources.list", ""), ("debian.sources", DEBIAN_SOURCES)]
    assert image.mirror_from_sources(files, "bookworm") == "http://mirror.example/debian"


def test_mirror_skips_disabled_entries_source_entries_and_files_apt_ignores() -> None:
    files = [
        (
            "sources.list",
            "deb-src http://src.example/debian bookworm main\n# deb http://old.example/debian x\n",
        ),
        ("extra.sources", "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n"),
        ("gcloud.list.disabled", "deb http://disabled.example/debian bookworm main\n"),
        ("z.list", "deb [arch=amd64 signed-by=/k.gpg] http://on.example/debian/ bookworm main\n"),
    ]
    assert image.mirror_from_sources(files, "bookworm") == "http://on.example/debian"


def test_mirror_falls_back_to_any_debian_archive_then_none() -> None:
    trixie = [("sources.list", "deb http://m.example/debian trixie main\n")]
    assert image.mirror_from_sources(trixie, "bookworm") == "http://m.example/debian"
    ubuntu = [("sources.list", "deb http://archive.ubuntu.com/ubuntu noble main\n")]
    assert image.mirror_from_sources(ubuntu, "bookworm") is None


def test_host_trust_anchors_are_the_crt_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.crt").write_bytes(b"A")
    (tmp_path / "sub" / "b.crt").write_bytes(b"B")
    (tmp_path / "notes.txt").write_text("ignored by update-ca-certificates")
    assert image.host_trust_anchors(tmp_path) == {"a.crt": b"A", "sub/b.crt": b"B"}
    assert image.host_trust_anchors(tmp_path / "missing") == {}


def test_base_key_follows_everything_the_base_is_made_from() -> None:
    recipe = image.base_recipe(mirror="http://m/debian", trust_anchors={"a.crt": b"A"})
    same = image.base_recipe(mirror="http://m/debian", trust_anchors={"a.crt": b"A"})
    assert image.recipe_key(recipe) == image.recipe_key(same)
    for other in (
        image.base_recipe(mirror="http://n/debian", trust_anchors={"a.crt": b"A"}),
        image.base_recipe(mirror="http://m/debian", trust_anchors={"a.crt": b"B"}),
        image.base_recipe(mirror="http://m/debian", trust_anchors={}),
    ):
        assert image.recipe_key(other) != image.recipe_key(recipe)
    reference = image.base_reference(recipe)
    assert reference == f"dra-operator/python-base:bookworm-{image.recipe_key(recipe)}"
    assert recipe["packages"] == ["python3", "python3-venv", "ca-certificates"]


def test_stamp_vouches_for_a_tarball_of_the_same_recipe(tmp_path: Path) -> None:
    recipe = image.base_recipe(mirror="http://m/debian", trust_anchors={})
    assert not image.stamp_matches(tmp_path, recipe)
    (tmp_path / "stamp.json").write_text(json.dumps({"recipe": recipe, "seconds": 120}))
    assert not image.stamp_matches(tmp_path, recipe)  # no tarball
    (tmp_path / "rootfs.tar").write_bytes(b"")
    assert image.stamp_matches(tmp_path, recipe)
    other = image.base_recipe(mirror="http://n/debian", trust_anchors={})
    assert not image.stamp_matches(tmp_path, other)
    (tmp_path / "stamp.json").write_text("{not json")
    assert not image.stamp_matches(tmp_path, recipe)


def test_import_puts_the_venv_first_on_path() -> None:
    changes = image.import_changes()
    path = next(change for change in changes if change.startswith("ENV PATH="))
    assert path.removeprefix("ENV PATH=").split(":")[0] == "/opt/venv/bin"
    assert 'CMD ["python3"]' in changes


def test_debootstrap_command(tmp_path: Path) -> None:
    keyring = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
    command = image.debootstrap_command(tmp_path / "rootfs", "http://m/debian", keyring=keyring)
    assert command == [
        "/usr/sbin/debootstrap",
        "--variant=minbase",
        "--include=python3,python3-venv,ca-certificates",
        f"--keyring={keyring}",
        "bookworm",
        str(tmp_path / "rootfs"),
        "http://m/debian",
    ]
    without = image.debootstrap_command(tmp_path, "m", keyring=None)
    assert not any(arg.startswith("--keyring") for arg in without)


def test_tar_leaves_out_what_the_runtime_provides(tmp_path: Path) -> None:
    command = image.tar_command(tmp_path / "rootfs", tmp_path / "out.tar")
    assert {"--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*", "--numeric-owner"} <= set(command)
    assert command[-1] == "."


# ---- tools.image: the product image and its archive -----------------------------------------------------


def test_buildx_build_args(tmp_path: Path) -> None:
    args = image.buildx_build_args(
        context=tmp_path,
        dockerfile=tmp_path / "Dockerfile",
        tag="dra-operator:dev",
        base="dra-operator/python-base:bookworm-0123456789ab",
        iidfile=tmp_path / "iid",
    )
    assert args[:2] == ["buildx", "build"]
    assert "--target=runtime" in args
    assert "--build-arg=PYTHON_IMAGE=dra-operator/python-base:bookworm-0123456789ab" in args
    assert "--load" in args
    assert "--network=host" in args  # the engine has no bridge
    assert "--provenance=false" in args
    assert "--tag=dra-operator:dev" in args
    assert f"--iidfile={tmp_path}/iid" in args
    assert not any(arg.startswith("--pull") for arg in args)  # the base exists only in the local store
    assert args[-1] == str(tmp_path)


def test_archive_is_keyed_by_tag_and_image_id(tmp_path: Path) -> None:
    image_id = "sha256:" + "ab" * 32
    path = image.archive_path("dra-operator:dev", image_id, tmp_path)
    assert path == tmp_path / "dra-operator_dev-abababababababab.tar"
    other = image.archive_path("dra-operator:dev", "sha256:" + "cd" * 32, tmp_path)
    assert other != path
    named = image.archive_path("reg.example/x/y:1.0", image_id, tmp_path)
    assert named.name.startswith("reg.example_x_y_1.0-")


def test_the_dockerfile_needs_no_frontend_image() -> None:
    # A `# syntax=` line makes BuildKit fetch a frontend image, which an offline build cannot.
    first = (image.checkout_root() / "Dockerfile").read_text().splitlines()[0]
    assert not first.lower().replace(" ", "").startswith("#syntax=")
