"""The product's container image built without a registry: a Debian Python base, the Dockerfile, an archive.

    python -m dra_operator.tools.image     # builds (cached); prints the image reference and archive path

Three steps, each cached under ~/.cache/dra-operator (or $XDG_CACHE_HOME):

1. ensure_python_base(): the Dockerfile's default base (python:<version>-slim, Docker Hub) cannot be pulled
   here, so a stand-in is made with `debootstrap --variant=minbase` of Debian bookworm (Python 3.11) from the
   Debian mirror this machine's apt uses. A venv in /opt/venv, first on PATH, stands in for the official
   image's pip (Debian's own Python is "externally managed"). The root filesystem tarball is cached under
   python-base/<suite>-<key>/ (the key hashes everything that went into it), and `docker import` turns it into
   `dra-operator/python-base:<suite>-<key>` in the private engine, whose data root persists between runs.
   The host's locally added trust anchors (/usr/local/share/ca-certificates) are installed into the base and
   pip is told to use the system store: behind a TLS-inspecting proxy that is what lets pip reach PyPI.
2. build_operator_image(): `docker buildx build --target runtime --build-arg PYTHON_IMAGE=<base> --load` of
   this checkout's Dockerfile on the private engine (tools.docker). RUN steps use the host network, as the
   engine has no bridge; pip inside them reaches PyPI directly. BuildKit's cache makes a rebuild of unchanged
   sources take seconds.
3. save_image(): a `docker save` archive under images/, named after the tag and the image ID, that
   `ctr -n k8s.io images import` loads into a node's containerd.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dra_operator.controlplane.build import BuildError, cache_root, file_lock
from dra_operator.tools.docker import (
    DockerDaemon,
    DockerError,
    Log,
    apt_install,
    running_engine,
    unmount_under,
)

SUITE = "bookworm"
VARIANT = "minbase"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
VENV = "/opt/venv"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
BASE_REPOSITORY = "dra-operator/python-base"
DEFAULT_TAG = "dra-operator:dev"
BUILD_TARGET = "runtime"
# The runtime stage's title label: dangling predecessors of our image are found by it and removed.
IMAGE_TITLE_LABEL = "org.opencontainers.image.title=dra-operator"
# Bump when the way the base is made changes (trimming, files added) so cached bases are rebuilt.
_BASE_RECIPE = 1
APT_DIR = Path("/etc/apt")
HOST_TRUST_ANCHORS = Path("/usr/local/share/ca-certificates")
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DEBOOTSTRAP = Path("/usr/sbin/debootstrap")
# Inside the chroot: nothing of the caller's environment (PIP_* settings, a venv's PATH) may leak in.
_CHROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
_PIP_CONF = (
    "# dra-operator python base: pip trusts the system store (with the build host's local anchors),\n"
    "# as Debian's own pip does, instead of the certificates bundled with pip.\n"
    "[global]\n"
    "cert = /etc/ssl/certs/ca-certificates.crt\n"
)


def checkout_root() -> Path:
    """The checkout this module runs from (the Dockerfile is not part of the installed package)."""
    return Path(__file__).resolve().parents[3]


# ---- the base image: recipe (pure) ----------------------------------------------------------------------


def _deb822_paragraphs(text: str) -> list[dict[str, str]]:
    paragraphs: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in [*text.splitlines(), ""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if current:
                paragraphs.append(current)
            current, last = {}, ""
        elif line[0].isspace() and last:
            current[last] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            last = key.strip().lower()
            current[last] = value.strip()
    return paragraphs


def apt_entries(files: Sequence[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """(URI, suites) of every enabled binary (`deb`) source in apt's one-line (.list) and deb822 (.sources)
    files, given as (file name, text) in apt's reading order; other file names are ignored, as apt does."""
    entries: list[tuple[str, list[str]]] = []
    for name, text in files:
        if name.endswith(".sources"):
            for paragraph in _deb822_paragraphs(text):
                if "deb" not in paragraph.get("types", "").split():
                    continue
                if paragraph.get("enabled", "yes").lower() == "no":
                    continue
                suites = paragraph.get("suites", "").split()
                entries += [(uri, suites) for uri in paragraph.get("uris", "").split()]
        elif name.endswith(".list"):
            for line in text.splitlines():
                words = line.split("#", 1)[0].split()
                if not words or words[0] != "deb":
                    continue
                words = words[1:]
                if words and words[0].startswith("["):  # options: [arch=amd64 signed-by=...]
                    while words and not words[0].endswith("]"):
                        words = words[1:]
                    words = words[1:]
                if len(words) >= 2:
                    entries.append((words[0], [words[1]]))
    return entries


def mirror_from_sources(files: Sequence[tuple[str, str]], suite: str = SUITE) -> str | None:
    """The Debian mirror to debootstrap `suite` from: the first source serving that suite, else the first
    Debian archive (a URI ending in /debian) apt uses; None when apt uses neither."""
    entries = apt_entries(files)
    for uri, suites in entries:
        if suite in suites:
            return uri.rstrip("/")
    for uri, _ in entries:
        if uri.rstrip("/").endswith("/debian"):
            return uri.rstrip("/")
    return None


def host_apt_sources(apt_dir: Path = APT_DIR) -> list[tuple[str, str]]:
    files = [apt_dir / "sources.list"]
    files += sorted((apt_dir / "sources.list.d").glob("*"))
    found = []
    for path in files:
        try:
            found.append((path.name, path.read_text()))
        except OSError:
            continue
    return found


def host_mirror() -> str:
    """The Debian mirror this machine's apt uses (the one reachable from here), else deb.debian.org."""
    return mirror_from_sources(host_apt_sources()) or DEFAULT_MIRROR


def host_trust_anchors(directory: Path = HOST_TRUST_ANCHORS) -> dict[str, bytes]:
    """Locally added CA certificates (update-ca-certificates reads *.crt there), by path below `directory`."""
    if not directory.is_dir():
        return {}
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*.crt"))
        if path.is_file()
    }


def import_changes() -> list[str]:
    """Dockerfile instructions `docker import --change` applies to the base (what the official image sets)."""
    return [
        f"ENV PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV LANG=C.UTF-8",
        'CMD ["python3"]',
    ]


def base_recipe(*, mirror: str, trust_anchors: Mapping[str, bytes]) -> dict[str, object]:
    """Everything the base image is made from; its hash names the cache entry and the image tag."""
    return {
        "recipe": _BASE_RECIPE,
        "suite": SUITE,
        "variant": VARIANT,
        "packages": list(BASE_PACKAGES),
        "mirror": mirror,
        "venv": VENV,
        "trust_anchors": {name: hashlib.sha256(data).hexdigest() for name, data in trust_anchors.items()},
        "changes": import_changes(),
    }


def recipe_key(recipe: Mapping[str, object]) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def base_reference(recipe: Mapping[str, object]) -> str:
    return f"{BASE_REPOSITORY}:{SUITE}-{recipe_key(recipe)}"


def base_dir(recipe: Mapping[str, object]) -> Path:
    return cache_root() / "python-base" / f"{SUITE}-{recipe_key(recipe)}"


def debootstrap_command(target: Path, mirror: str, *, keyring: Path | None) -> list[str]:
    command = [str(DEBOOTSTRAP), f"--variant={VARIANT}", f"--include={','.join(BASE_PACKAGES)}"]
    if keyring is not None:
        command.append(f"--keyring={keyring}")
    return [*command, SUITE, str(target), mirror]


def tar_command(rootfs: Path, output: Path) -> list[str]:
    # /dev, /proc and /sys are filled by the container runtime; numeric owners, as the image's users are the
    # rootfs's own and not this host's.
    return [
        "tar",
        "--create",
        f"--file={output}",
        f"--directory={rootfs}",
        "--numeric-owner",
        "--sort=name",
        "--exclude=./dev/*",
        "--exclude=./proc/*",
        "--exclude=./sys/*",
        ".",
    ]


def stamp_matches(directory: Path, recipe: Mapping[str, object]) -> bool:
    try:
        recorded = json.loads((directory / "stamp.json").read_text())
    except (OSError, ValueError):
        return False
    return recorded.get("recipe") == dict(recipe) and (directory / "rootfs.tar").is_file()


# ---- the base image: making it --------------------------------------------------------------------------


def current_base_recipe() -> dict[str, object]:
    return base_recipe(mirror=host_mirror(), trust_anchors=host_trust_anchors())


def _chroot(rootfs: Path, *command: str) -> None:
    result = subprocess.run(
        ["chroot", str(rootfs), *command], env=_CHROOT_ENV, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise DockerError(f"in the base rootfs, {' '.join(command)} failed:\n{result.stderr[-3000:]}")


def _empty(directory: Path, keep: Callable[[Path], bool] = lambda path: False) -> None:
    """Remove the files below `directory` except those `keep` accepts; directories stay."""
    if not directory.is_dir():
        return
    for path in sorted(directory.rglob("*"), reverse=True):
        if path.is_dir() and not path.is_symlink():
            continue
        if not keep(path):
            path.unlink()


def _finish_rootfs(rootfs: Path, trust_anchors: Mapping[str, bytes]) -> None:
    _chroot(rootfs, "python3", "-m", "venv", VENV)
    if trust_anchors:
        for name, data in trust_anchors.items():
            target = rootfs / HOST_TRUST_ANCHORS.relative_to("/") / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        _chroot(rootfs, "update-ca-certificates")
    (rootfs / "etc" / "pip.conf").write_text(_PIP_CONF)
    # Docker writes hostname and resolv.conf per container; debootstrap copied this host's into the rootfs.
    for name in ("hostname", "resolv.conf"):
        (rootfs / "etc" / name).unlink(missing_ok=True)
    # What the slim Debian images leave out too: downloaded packages, package lists, logs, manuals and
    # documentation (except the licences).
    _empty(rootfs / "var" / "cache" / "apt")
    _empty(rootfs / "var" / "lib" / "apt" / "lists", keep=lambda path: path.name == "lock")
    _empty(rootfs / "var" / "log")
    _empty(rootfs / "usr" / "share" / "man")
    _empty(rootfs / "usr" / "share" / "doc", keep=lambda path: path.name == "copyright")


def _tail_text(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def _remove_tree(directory: Path) -> None:
    # debootstrap mounts /proc and /sys inside the target (and may bind /dev): a failed run can leave them,
    # and rmtree must never descend into the host's.
    if not unmount_under(directory):
        raise DockerError(f"{directory} still has mounts; not removing it")
    shutil.rmtree(directory, ignore_errors=True)


def ensure_base_rootfs(recipe: Mapping[str, object], *, log: Log | None = None) -> Path:
    """The base's root filesystem tarball for `recipe`, debootstrapped into the cache the first time."""
    directory = base_dir(recipe)
    tarball = directory / "rootfs.tar"
    if stamp_matches(directory, recipe):
        return tarball
    with file_lock(directory.parent / ".lock"):
        if stamp_matches(directory, recipe):  # made by another process while we waited
            return tarball
        if os.geteuid() != 0:
            raise DockerError("making the python base needs root (debootstrap, chroot)")
        if not DEBOOTSTRAP.is_file():
            apt_install(("debootstrap", "debian-archive-keyring"), log=log)
        mirror = str(recipe["mirror"])
        started = time.monotonic()
        if log:
            log(f"debootstrap {SUITE} ({VARIANT} + {', '.join(BASE_PACKAGES)}) from {mirror} (once; minutes)")
        scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=directory.parent))
        try:
            rootfs = scratch / "rootfs"
            keyring = DEBIAN_KEYRING if DEBIAN_KEYRING.is_file() else None
            command = debootstrap_command(rootfs, mirror, keyring=keyring)
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                detail = _tail_text(rootfs / "debootstrap" / "debootstrap.log")
                raise DockerError(
                    f"debootstrap failed ({result.returncode}):\n{result.stderr[-2000:]}\n{detail}"
                )
            _finish_rootfs(rootfs, host_trust_anchors())
            packed = subprocess.run(
                tar_command(rootfs, scratch / "rootfs.tar"), capture_output=True, text=True, check=False
            )
            if packed.returncode != 0:
                raise DockerError(f"packing the base rootfs failed:\n{packed.stderr[-2000:]}")
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "stamp.json").unlink(missing_ok=True)
            os.replace(scratch / "rootfs.tar", tarball)
            stamp = {"recipe": dict(recipe), "seconds": round(time.monotonic() - started)}
            (scratch / "stamp.json").write_text(json.dumps(stamp, indent=2) + "\n")
            os.replace(scratch / "stamp.json", directory / "stamp.json")  # last: it vouches for the tarball
        finally:
            _remove_tree(scratch)
        # Bases of older recipes are never used again; .build-* are what a killed run left.
        for old in [*directory.parent.glob(f"{SUITE}-*"), *directory.parent.glob(".build-*")]:
            if old != directory and old.is_dir():
                _remove_tree(old)
        if log:
            log(f"python base rootfs made in {time.monotonic() - started:.0f}s: {tarball}")
    return tarball


def ensure_python_base(daemon: DockerDaemon | None = None, *, log: Log | None = None) -> str:
    """The Python base image's reference in the engine: present already, else imported from the cached rootfs
    (made first if missing). Starts an engine of its own when `daemon` is None."""
    recipe = current_base_recipe()
    reference = base_reference(recipe)
    with running_engine(daemon, log=log) as engine:
        if engine.docker("image", "inspect", reference, check=False).returncode == 0:
            return reference
        tarball = ensure_base_rootfs(recipe, log=log)
        changes = [arg for change in import_changes() for arg in ("--change", change)]
        message = f"debootstrap --variant={VARIANT} {SUITE} + {', '.join(BASE_PACKAGES)} + venv {VENV}"
        engine.docker("import", *changes, "--message", message, str(tarball), reference, timeout=600)
        if log:
            log(f"imported {reference}")
        # Older bases are dropped (the ones still under a built image only lose their tag).
        listed = engine.docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", BASE_REPOSITORY)
        for old in listed.stdout.split():
            if old != reference:
                engine.docker("image", "rm", old, check=False)
    return reference


# ---- the product image ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltImage:
    reference: str  # the tag, e.g. dra-operator:dev
    image_id: str  # sha256:...
    base: str  # the PYTHON_IMAGE it was built on
    size: int  # bytes, as `docker image inspect` reports
    seconds: float  # the build step alone


def buildx_build_args(
    *, context: Path, dockerfile: Path, tag: str, base: str, iidfile: Path, target: str = BUILD_TARGET
) -> list[str]:
    """Arguments of `docker` for building `target` of `dockerfile` on `base` into the engine's image store."""
    return [
        "buildx",
        "build",
        f"--file={dockerfile}",
        f"--target={target}",
        f"--build-arg=PYTHON_IMAGE={base}",
        # The engine has no bridge network: RUN steps use the host's, as pip must reach PyPI.
        "--network=host",
        # dockerd 20.10's image store cannot keep attestations; say so rather than rely on buildx's defaults.
        "--provenance=false",
        "--sbom=false",
        "--load",
        f"--tag={tag}",
        f"--iidfile={iidfile}",
        "--progress=plain",
        str(context),
    ]


def build_operator_image(
    tag: str = DEFAULT_TAG,
    *,
    daemon: DockerDaemon | None = None,
    context: Path | None = None,
    log: Log | None = None,
) -> BuiltImage:
    """Build the Dockerfile's runtime stage on the Python base, as `tag`, in the private engine."""
    context = context or checkout_root()
    dockerfile = context / "Dockerfile"
    if not dockerfile.is_file():
        raise DockerError(f"no Dockerfile at {dockerfile}: build from a checkout of the project")
    with running_engine(daemon, log=log) as engine:
        base = ensure_python_base(engine, log=log)
        started = time.monotonic()
        if log:
            log(f"building {tag} from {dockerfile} on {base}")
        with tempfile.TemporaryDirectory(prefix="dra-operator-image-") as scratch:
            iidfile = Path(scratch) / "iid"
            args = buildx_build_args(
                context=context, dockerfile=dockerfile, tag=tag, base=base, iidfile=iidfile
            )
            engine.docker(*args, timeout=1800)
            image_id = iidfile.read_text().strip()
        seconds = time.monotonic() - started
        size = int(engine.docker("image", "inspect", "--format", "{{.Size}}", image_id).stdout.strip())
        # Each rebuild of changed sources leaves the previous image dangling: drop those of ours.
        engine.docker("image", "prune", "--force", "--filter", f"label={IMAGE_TITLE_LABEL}", check=False)
        if log:
            log(f"built {tag} ({image_id[:19]}, {size / 1e6:.0f} MB) in {seconds:.0f}s")
    return BuiltImage(reference=tag, image_id=image_id, base=base, size=size, seconds=seconds)


def archive_path(reference: str, image_id: str, directory: Path | None = None) -> Path:
    """Where the archive of `reference` at `image_id` goes: one file per tag and image ID."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", reference)
    digest = image_id.removeprefix("sha256:")[:16]
    return (directory or cache_root() / "images") / f"{safe}-{digest}.tar"


def save_image(
    reference: str = DEFAULT_TAG,
    *,
    daemon: DockerDaemon | None = None,
    directory: Path | None = None,
    log: Log | None = None,
) -> Path:
    """A `docker save` archive of `reference` (kept while its image ID stays), for `ctr images import`."""
    with running_engine(daemon, log=log) as engine:
        image_id = engine.docker("image", "inspect", "--format", "{{.Id}}", reference).stdout.strip()
        path = archive_path(reference, image_id, directory)
        if path.is_file():
            return path
        with file_lock(path.parent / ".lock"):
            if path.is_file():
                return path
            partial = path.with_name(f".{path.name}.partial")
            engine.docker("save", f"--output={partial}", reference, timeout=600)
            partial.chmod(0o644)  # docker writes it owner-only; it holds nothing secret
            os.replace(partial, path)  # atomic: a reader never loads half an archive
            # Archives of this tag's earlier images are stale.
            for old in path.parent.glob(f"{path.name.rsplit('-', 1)[0]}-*.tar"):
                if old != path:
                    old.unlink(missing_ok=True)
        if log:
            log(f"saved {reference} to {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dra_operator.tools.image",
        description="Build the dra-operator image without a registry (cached); print reference and archive.",
    )
    parser.add_argument("--tag", default=DEFAULT_TAG, help="image reference to build (default %(default)s)")
    args = parser.parse_args(argv)
    started = time.monotonic()

    def log(line: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {line}", file=sys.stderr, flush=True)

    try:
        with DockerDaemon(log=log) as engine:
            built = build_operator_image(args.tag, daemon=engine, log=log)
            archive = save_image(built.reference, daemon=engine, log=log)
    except (DockerError, BuildError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    log(f"{built.reference} {built.image_id} ({built.size / 1e6:.0f} MB), archive {archive}")
    print(built.reference)
    print(archive)
    return 0


if __name__ == "__main__":
    sys.exit(main())
