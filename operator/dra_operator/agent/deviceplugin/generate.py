"""Generates, and checks, the checked-in stubs of the kubelet device-plugin API v1beta1 (api_pb2*.py*).

    python -m dra_operator.agent.deviceplugin.generate --check   # exit 1 when the checked-in files are stale
    python -m dra_operator.agent.deviceplugin.generate --write   # regenerate them in place

The proto comes from the Go module cache: `go mod download k8s.io/kubelet@<v0.X.Y>`, the staging module of
the pinned Kubernetes `controlplane.build.K8S_VERSION` (v1.X.Y), through the module proxy; go verifies the
download against the checksum database, and when the control-plane consumer module pins the same version its
go.sum entry must match too. `generate` turns the proto text into the file texts; everything it does is a
function of that text and the pinned grpcio-tools, so the check can demand byte-identical files. Three
deterministic transformations sit around protoc:

1. `strip_gogoproto`: gogoproto options only steer the Go code generator and protoc cannot resolve their
   import here, so the `import ".../gogo.proto"` line, file-level `option (gogoproto.x) = ...;` lines and
   `(gogoproto.x) = ...` entries of field option lists are removed (a list left empty goes with its
   brackets). Nothing they remove reaches the wire. (The proto of k8s.io/kubelet v0.36 no longer has any.)
2. The proto is compiled under the name `dra_operator/agent/deviceplugin/api.proto` (DESCRIPTOR_NAME), not a
   bare `api.proto`: the generated classes then name their real module (`__module__`, which pickling and
   reprs use), and the file cannot collide with another api.proto in protobuf's process-wide descriptor pool.
   Message and service names (`v1beta1.Device`, `/v1beta1.Registration/Register`) come from the proto's
   `package` and are unchanged.
3. protoc writes the grpc module's import of the messages as an absolute import
   (`from dra_operator.agent.deviceplugin import api_pb2 as ...`); it becomes `from . import api_pb2 as ...`.

Each file then gets a header naming its source (module@version, path, sha256 of the proto as published,
before stripping) and the generator's version, which `--check` reads to say which proto a stale file came
from.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from dra_operator.controlplane.build import GOMOD_DIR, K8S_VERSION, BuildError, find_go
from dra_operator.tools.gotool import go_build_env

PACKAGE_DIR = Path(__file__).resolve().parent
MODULE = "k8s.io/kubelet"
PROTO_PATH = "pkg/apis/deviceplugin/v1beta1/api.proto"
# The generated code embeds the generator's version (grpc's GRPC_GENERATED_VERSION, protobuf's gencode
# version check), so byte-identical output needs exactly this grpcio-tools; pyproject.toml pins the same.
GRPCIO_TOOLS_VERSION = "1.85.1"
GENERATED = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py")
# The package the stubs live in, and so the name protoc compiles the proto under (see the module docstring).
PACKAGE = "dra_operator.agent.deviceplugin"
DESCRIPTOR_NAME = PACKAGE.replace(".", "/") + "/api.proto"
COMMAND = "python -m dra_operator.agent.deviceplugin.generate --write"


class GenerateError(RuntimeError):
    """The proto could not be fetched or compiled; the message says why and what to do."""


def staging_version(k8s_version: str) -> str:
    """The version of the Kubernetes staging modules (k8s.io/kubelet, ...) released with `k8s_version`.

    Kubernetes v1.X.Y publishes its staging modules as v0.X.Y (pre-releases keep their suffix).
    """
    match = re.fullmatch(r"v1\.(\d+\.\d+(?:-[0-9A-Za-z.-]+)?)", k8s_version)
    if match is None:
        raise ValueError(f"not a Kubernetes v1.X.Y version: {k8s_version!r}")
    return f"v0.{match.group(1)}"


@dataclass(frozen=True)
class ProtoSource:
    """Where a proto comes from: `path` inside Go module `module` at `version`."""

    module: str
    version: str
    path: str

    @property
    def module_version(self) -> str:
        return f"{self.module}@{self.version}"


# The proto the checked-in stubs must come from: k8s.io/kubelet of the pinned Kubernetes release.
SOURCE = ProtoSource(MODULE, staging_version(K8S_VERSION), PROTO_PATH)


# --- the gogoproto transformation --------------------------------------------------------------------------

_GOGO_IMPORT = re.compile(
    r'^[ \t]*import[ \t]+(?:public[ \t]+|weak[ \t]+)?"[^"]*gogo\.proto"[ \t]*;[ \t]*\n', re.M
)
_GOGO_FILE_OPTION = re.compile(r"^[ \t]*option[ \t]*\([ \t]*gogoproto\.[^;]*;[ \t]*\n", re.M)
# One entry of a field's option list: `name = value` with name `x`, `(x.y)` or `(x.y).z`, value a string or
# a bare token (true, 1, ENUM_VALUE).
_OPTION_ENTRY = re.compile(
    r'\s*(?P<name>\(\s*[\w.]+\s*\)(?:\.[\w.]+)?|[\w.]+)\s*=\s*(?P<value>"(?:[^"\\\n]|\\.)*"|[^,\]"\s]+)\s*'
)
_OPTION_LIST = re.compile(r'[ \t]*\[(?P<body>(?:[^\]"]|"(?:[^"\\\n]|\\.)*")*)\]')


def _strip_option_list(match: re.Match[str]) -> str:
    body = match.group("body")
    if "gogoproto" not in body:
        return match.group(0)
    entries: list[str] = []
    position = 0
    while position < len(body):
        entry = _OPTION_ENTRY.match(body, position)
        if entry is None:
            raise GenerateError(f"cannot parse the field option list [{body}]")
        name = re.sub(r"\s+", "", entry.group("name"))
        if not name.startswith("(gogoproto."):
            entries.append(f"{name} = {entry.group('value')}")
        position = entry.end()
        if position < len(body):
            if body[position] != ",":
                raise GenerateError(f"cannot parse the field option list [{body}]")
            position += 1
    return f" [{', '.join(entries)}]" if entries else ""


def strip_gogoproto(proto: str) -> str:
    """`proto` without the gogoproto import and options (Go-only). A field option list that held a gogoproto
    entry is rewritten as ` [name = value, ...]` from its other entries (or dropped when none is left); all
    other text stays byte for byte, so a proto without gogoproto comes back unchanged.

    Raises GenerateError when a gogoproto mention is left in a form this does not handle, rather than let
    protoc fail on it (or leave a Go-only option in).
    """
    text = _GOGO_IMPORT.sub("", proto)
    text = _GOGO_FILE_OPTION.sub("", text)
    text = _OPTION_LIST.sub(_strip_option_list, text)
    leftover = [
        f"line {number}: {line.strip()}"
        for number, line in enumerate(text.splitlines(), 1)
        if "gogoproto" in line.split("//", 1)[0]
    ]
    if leftover:
        raise GenerateError("gogoproto left after stripping, in a form not handled: " + "; ".join(leftover))
    return text


# --- generation --------------------------------------------------------------------------------------------


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def header(source: ProtoSource, proto_sha256: str) -> str:
    return (
        f"# Generated by `{COMMAND}`: do not edit.\n"
        f"# Source: {source.module_version} {source.path}\n"
        f"# Source sha256: {proto_sha256} (the proto as published, before stripping gogoproto options)\n"
        f"# Generator: grpcio-tools {GRPCIO_TOOLS_VERSION}\n"
    )


_HEADER = re.compile(
    r"# Generated by [^\n]*\n# Source: (?P<module_version>\S+) (?P<path>\S+)\n"
    r"# Source sha256: (?P<sha256>[0-9a-f]{64}) "
)


def recorded_source(text: str) -> tuple[str, str, str] | None:
    """(module@version, path, sha256) from a generated file's header; None when it has none."""
    match = _HEADER.match(text)
    return (match["module_version"], match["path"], match["sha256"]) if match else None


def _check_generator_version() -> None:
    try:
        installed = metadata.version("grpcio-tools")
    except metadata.PackageNotFoundError:
        installed = None
    if installed != GRPCIO_TOOLS_VERSION:
        raise GenerateError(
            f"the stubs are generated with grpcio-tools {GRPCIO_TOOLS_VERSION}, this environment has "
            f"{installed or 'none'}: {sys.executable} -m pip install 'grpcio-tools=={GRPCIO_TOOLS_VERSION}'"
        )


def _protoc(proto: str) -> dict[str, str]:
    """Run grpc_tools.protoc on `proto` in a temporary directory; the texts of the three outputs by name."""
    with tempfile.TemporaryDirectory(prefix="deviceplugin-protoc-") as scratch:
        root = Path(scratch)
        src = root / "src"
        out = root / "out"
        proto_file = src / DESCRIPTOR_NAME
        proto_file.parent.mkdir(parents=True)
        out.mkdir()
        proto_file.write_bytes(proto.encode())
        args = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={src}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            DESCRIPTOR_NAME,
        ]
        result = subprocess.run(args, cwd=root, capture_output=True, text=True, check=False, timeout=120)
        if result.returncode != 0:
            raise GenerateError(f"grpc_tools.protoc failed ({result.returncode}):\n{result.stderr[-4000:]}")
        produced = out.joinpath(*PACKAGE.split("."))
        try:
            texts = {name: (produced / name).read_bytes().decode() for name in GENERATED}
        except OSError as error:
            raise GenerateError(f"grpc_tools.protoc did not write an expected file: {error}") from error
        wanted = {produced / name for name in GENERATED}
        extra = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p not in wanted)
        if extra:
            raise GenerateError(f"grpc_tools.protoc wrote unexpected files: {', '.join(extra)}")
        return texts


def relative_grpc_import(text: str) -> str:
    """Turn the grpc module's absolute import of the messages module into `from . import api_pb2 as ...`."""
    pattern = re.compile(rf"^from {re.escape(PACKAGE)} import api_pb2 as (\w+)$", re.M)
    fixed, count = pattern.subn(r"from . import api_pb2 as \1", text)
    if count != 1:
        raise GenerateError(f"expected one `from {PACKAGE} import api_pb2` in api_pb2_grpc.py, found {count}")
    return fixed


def generate(proto: str, source: ProtoSource = SOURCE) -> dict[str, str]:
    """The checked-in files' texts (name -> text) generated from `proto`, the text of `source`'s api.proto."""
    _check_generator_version()
    texts = _protoc(strip_gogoproto(proto))
    texts["api_pb2_grpc.py"] = relative_grpc_import(texts["api_pb2_grpc.py"])
    top = header(source, sha256(proto))
    return {name: top + texts[name] for name in GENERATED}


# --- the pinned proto --------------------------------------------------------------------------------------


def _pinned_sum(source: ProtoSource) -> str | None:
    """The h1: hash the control-plane consumer module's go.sum pins for `source`'s module, if it pins it."""
    go_sum = GOMOD_DIR / "k8s" / "go.sum"
    if not go_sum.is_file():
        return None
    for line in go_sum.read_text().splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[:2] == [source.module, source.version]:
            return fields[2]
    return None


def fetch_proto(source: ProtoSource = SOURCE) -> str:
    """The text of `source`'s proto from the Go module cache; the module is downloaded through the proxy first
    if the cache lacks it.

    Raises GenerateError (Go missing, the module not downloadable, a checksum mismatch, no such file).
    """
    try:
        go, go_env = find_go()
    except BuildError as error:
        raise GenerateError(str(error)) from error
    # Outside any module (a fresh temporary directory), with a stray user GOFLAGS neutralized.
    env = dict(go_build_env(go_env), GOFLAGS="-mod=mod")
    with tempfile.TemporaryDirectory(prefix="deviceplugin-gomod-") as scratch:
        try:
            result = subprocess.run(
                [go, "mod", "download", "-json", source.module_version],
                cwd=scratch,
                env=env,
                capture_output=True,
                text=True,
                check=False,
                timeout=300,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise GenerateError(f"`go mod download {source.module_version}` did not run: {error}") from error
    try:
        info = json.loads(result.stdout)
    except ValueError:
        info = {}
    if result.returncode != 0 or info.get("Error") or not info.get("Dir"):
        detail = info.get("Error") or result.stderr.strip()[-2000:] or f"exit status {result.returncode}"
        raise GenerateError(
            f"cannot download {source.module_version} with `go mod download` (the Go module proxy must be "
            f"reachable, or the module already in `go env GOMODCACHE`): {detail}"
        )
    pinned = _pinned_sum(source)
    if pinned is not None and info.get("Sum") != pinned:
        raise GenerateError(
            f"{source.module_version} downloaded with checksum {info.get('Sum')}, but the control plane's "
            f"go.sum pins {pinned}"
        )
    path = Path(info["Dir"]) / source.path
    try:
        return path.read_bytes().decode()
    except OSError as error:
        raise GenerateError(f"{source.module_version} has no {source.path}: {error}") from error


# --- write and check ---------------------------------------------------------------------------------------


def stale(expected: dict[str, str], directory: Path = PACKAGE_DIR) -> list[str]:
    """One line per checked-in file that differs from `expected` (empty when all are byte-identical)."""
    problems = []
    for name, text in expected.items():
        path = directory / name
        try:
            current = path.read_bytes()
        except OSError:
            problems.append(f"{name}: missing")
            continue
        if current == text.encode():
            continue
        recorded = recorded_source(current.decode(errors="replace"))
        wanted = recorded_source(text)
        if recorded is None:
            problems.append(f"{name}: differs and has no source header")
        elif recorded != wanted:
            problems.append(f"{name}: generated from {' '.join(recorded)}, expected {' '.join(wanted or ())}")
        else:
            problems.append(f"{name}: differs from what the same proto generates (edited by hand?)")
    return problems


def write(expected: dict[str, str], directory: Path = PACKAGE_DIR) -> None:
    for name, text in expected.items():
        (directory / name).write_bytes(text.encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dra_operator.agent.deviceplugin.generate",
        description="Generate or check the kubelet device-plugin v1beta1 stubs from "
        f"{SOURCE.module_version} {SOURCE.path}.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="regenerate the checked-in files")
    mode.add_argument("--check", action="store_true", help="exit 1 when the checked-in files are stale")
    args = parser.parse_args(argv)
    try:
        expected = generate(fetch_proto())
    except GenerateError as error:
        sys.stderr.write(f"generate: {error}\n")
        return 2
    if args.write:
        write(expected)
        sys.stdout.write(f"wrote {', '.join(GENERATED)} from {SOURCE.module_version} {SOURCE.path}\n")
        return 0
    problems = stale(expected)
    for problem in problems:
        sys.stderr.write(f"stale: {problem}\n")
    if problems:
        sys.stderr.write(f"regenerate with: {COMMAND}\n")
        return 1
    sys.stdout.write(f"up to date with {SOURCE.module_version} {SOURCE.path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
