"""Container images the real test nodes need without a registry: the sandbox (pause) and a busybox test image.

Both are written here as `docker save`-format archives (manifest.json, config, one layer tar), which
`ctr images import` loads into a node's containerd under the name in RepoTags. The bytes are deterministic
(fixed mtimes and owners), so the image IDs only change when the binaries do.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PAUSE_IMAGE = "dra-operator.local/pause:1"
BUSYBOX_IMAGE = "dra-operator.local/busybox:1"
BUSYBOX_BINARY = Path("/bin/busybox")


@dataclass(frozen=True)
class LayerFile:
    """One entry of the image's single layer: a file (from `source`), a symlink (`link`) or a directory."""

    path: str
    source: Path | None = None
    link: str | None = None
    mode: int = 0o755
    directory: bool = False


@dataclass(frozen=True)
class ImageConfig:
    entrypoint: Sequence[str] = ()
    cmd: Sequence[str] = ()
    env: Sequence[str] = ("PATH=/bin",)
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict)


def _layer_bytes(files: Iterable[LayerFile]) -> bytes:
    buffer = io.BytesIO()
    directories: set[str] = set()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(files, key=lambda f: f.path):
            parts = entry.path.strip("/").split("/")
            for depth in range(1, len(parts)):
                directory = "/".join(parts[:depth])
                if directory not in directories:
                    directories.add(directory)
                    info = tarfile.TarInfo(directory)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            info = tarfile.TarInfo(entry.path.strip("/"))
            info.mode = entry.mode
            if entry.directory:
                info.type = tarfile.DIRTYPE
                directories.add(entry.path.strip("/"))
                tar.addfile(info)
            elif entry.link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, entry.link
                tar.addfile(info)
            elif entry.source is not None:
                data = entry.source.read_bytes()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                raise ValueError(f"{entry.path}: a layer file needs a source or a link")
    return buffer.getvalue()


def write_image_archive(path: Path, reference: str, files: Iterable[LayerFile], config: ImageConfig) -> Path:
    """Write a one-layer image named `reference` to `path` (docker-archive format); returns `path`."""
    layer = _layer_bytes(files)
    layer_digest = hashlib.sha256(layer).hexdigest()
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": list(config.env),
            **({"Entrypoint": list(config.entrypoint)} if config.entrypoint else {}),
            **({"Cmd": list(config.cmd)} if config.cmd else {}),
            **({"User": config.user} if config.user else {}),
            **({"Labels": dict(config.labels)} if config.labels else {}),
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
        "history": [{"created_by": "dra-operator realnodes.images"}],
    }
    config_bytes = json.dumps(image_config, sort_keys=True).encode()
    config_name = f"{hashlib.sha256(config_bytes).hexdigest()}.json"
    manifest = [{"Config": config_name, "RepoTags": [reference], "Layers": [f"{layer_digest}/layer.tar"]}]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with tarfile.open(partial, mode="w") as archive:
        for name, data in (
            (f"{layer_digest}/layer.tar", layer),
            (config_name, config_bytes),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, io.BytesIO(data))
    os.replace(partial, path)  # readers never see half an archive
    return path


def pause_image(pause_binary: Path, directory: Path) -> Path:
    """The sandbox image every Pod's namespaces hang on (containerd's `sandbox_image`)."""
    return write_image_archive(
        directory / "pause.tar",
        PAUSE_IMAGE,
        [LayerFile("pause", source=pause_binary)],
        ImageConfig(entrypoint=("/pause",), env=()),
    )


def busybox_applets(binary: Path = BUSYBOX_BINARY) -> list[str]:
    out = subprocess.run([str(binary), "--list"], capture_output=True, text=True, check=True).stdout
    return sorted({name for name in out.split() if name and name != "busybox"})


def busybox_image(directory: Path, binary: Path = BUSYBOX_BINARY) -> Path:
    """A shell-and-coreutils image for test containers: Debian's static busybox with its applets linked.

    /tmp exists (world-writable) so containers running as a non-root user can write somewhere.
    """
    files = [LayerFile("bin/busybox", source=binary), LayerFile("tmp", mode=0o1777, directory=True)]
    files += [LayerFile(f"bin/{name}", link="busybox") for name in busybox_applets(binary)]
    archive = write_image_archive(directory / "busybox.tar", BUSYBOX_IMAGE, files, ImageConfig(cmd=("sh",)))
    return archive
