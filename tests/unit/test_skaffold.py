"""skaffold.yaml as skaffold itself reads it: the pinned skaffold diagnoses it and renders the chart with it.

Nothing is built, pulled or pushed: render is handed an already built local image (--build-artifacts) and
told to take its tag as is (--digest-source=tag) without a cluster (--offline). skaffold runs helm for the
chart, so the pinned helm is put first on its PATH. Two kubeconfigs point nowhere: context `ci` (no profile
matches it) and `kind-dra`, which activates the `local` profile as a kind cluster would. diagnose asks a
docker daemon about the Dockerfile's base images (for ONBUILD triggers) and falls back to their registry,
which is not reachable here: a stand-in daemon answers that they have none.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from socketserver import ThreadingUnixStreamServer
from typing import Any

import pytest
import yaml

from dra_operator.tools.helm import chart_dir, coalesce_values, ensure_helm
from dra_operator.tools.skaffold import GOMOD_DIR, SKAFFOLD_MODULE, SKAFFOLD_VERSION, ensure_skaffold

ROOT = Path(__file__).resolve().parents[2]
CHART = chart_dir()
CONFIG = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
(ARTIFACT,) = CONFIG["build"]["artifacts"]
BUILT = "dra-operator:dev"  # what `docker build -t dra-operator:dev .` leaves in the local engine
# A cold skaffold build inside the first test's setup takes far longer than the suite's per-test timeout;
# `make skaffold` builds it beforehand, this only keeps a run without it from being killed half way.
pytestmark = pytest.mark.timeout(3600)


class _DaemonHandler(BaseHTTPRequestHandler):
    """The two calls skaffold makes to inspect a base image: API version negotiation and image inspect."""

    protocol_version = "HTTP/1.1"

    def do_HEAD(self) -> None:
        self._reply({})

    def do_GET(self) -> None:
        if "/images/" in self.path and self.path.endswith("/json"):
            image = self.path.split("/images/", 1)[1].removesuffix("/json")
            # Docker's image inspect: an image with a config and no ONBUILD triggers.
            self._reply({"Id": "sha256:" + "0" * 64, "RepoTags": [image], "Config": {"OnBuild": None}})
        else:
            self._reply({})

    def _reply(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Api-Version", "1.41")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def address_string(self) -> str:  # a unix socket peer has no address to log
        return "docker-client"

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def docker_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    socket_path = tmp_path_factory.mktemp("docker") / "docker.sock"
    server = ThreadingUnixStreamServer(str(socket_path), _DaemonHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"unix://{socket_path}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass(frozen=True)
class Skaffold:
    binary: Path
    env: dict[str, str]
    work: Path

    def run(self, *args: str, context: str = "ci") -> subprocess.CompletedProcess[str]:
        """Run skaffold over skaffold.yaml with `context` as the current kube context; it must succeed."""
        # render has no --kube-context flag: the context, which activates profiles, comes from the kubeconfig.
        env = dict(self.env, KUBECONFIG=str(self.work / f"{context}.kubeconfig"))
        command = [str(self.binary), *args, "--filename", str(ROOT / "skaffold.yaml"), "--update-check=false"]
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"skaffold {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        # A deprecated field or a value skaffold cannot use is logged as a warning, and the run goes on.
        assert "WARN" not in result.stderr and "level=warn" not in result.stderr, result.stderr
        return result

    def render(self, *args: str, context: str = "ci") -> list[dict[str, Any]]:
        artifacts = self.work / "artifacts.json"
        artifacts.write_text(json.dumps({"builds": [{"imageName": ARTIFACT["image"], "tag": BUILT}]}))
        output = self.work / "rendered.yaml"
        output.unlink(missing_ok=True)
        # --digest-source=tag: take the given tag as is; the default for a remote cluster asks the registry.
        self.run(
            "render",
            f"--build-artifacts={artifacts}",
            "--offline=true",
            "--digest-source=tag",
            f"--output={output}",
            *args,
            context=context,
        )
        return [doc for doc in yaml.safe_load_all(output.read_text()) if doc]


@pytest.fixture(scope="module")
def skaffold(tmp_path_factory: pytest.TempPathFactory, docker_host: str) -> Skaffold:
    work = tmp_path_factory.mktemp("skaffold")
    # skaffold runs `helm` by name; a directory of our own holds the pinned one under that name.
    bin_dir = work / "bin"
    bin_dir.mkdir()
    (bin_dir / "helm").symlink_to(ensure_helm())
    nowhere = {"cluster": "nowhere", "user": "nobody"}
    for context in ("ci", "kind-dra"):
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "nowhere", "cluster": {"server": "https://127.0.0.1:1"}}],
            "users": [{"name": "nobody", "user": {}}],
            "contexts": [{"name": context, "context": nowhere}],
            "current-context": context,
        }
        (work / f"{context}.kubeconfig").write_text(yaml.safe_dump(kubeconfig))
    home = work / "home"  # skaffold and helm keep their settings and caches under HOME: not the user's
    (home / ".skaffold").mkdir(parents=True)
    # Without this skaffold opts in to usage reporting on first run and would try to send it, and prompts.
    settings = {"collect-metrics": False, "update-check": False, "survey": {"disable-prompt": True}}
    (home / ".skaffold" / "config").write_text(yaml.safe_dump({"global": settings, "kubeContexts": []}))
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(home),
        "DOCKER_HOST": docker_host,
    }
    return Skaffold(binary=ensure_skaffold(), env=env, work=work)


def values(*files: str) -> dict[str, Any]:
    """The chart's values after `files`, merged as helm merges them (maps key by key, null removes)."""
    merged: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    for name in files:
        merged = coalesce_values(merged, yaml.safe_load((ROOT / name).read_text()))
    return merged


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def test_the_consumer_module_requires_the_release_the_binary_is_stamped_with() -> None:
    go_mod = (GOMOD_DIR / "go.mod").read_text()
    assert re.search(rf"^\s*{re.escape(SKAFFOLD_MODULE)} {re.escape(SKAFFOLD_VERSION)}\b", go_mod, re.M)
    assert re.search(rf"^tool {re.escape(SKAFFOLD_MODULE)}/cmd/skaffold$", go_mod, re.M)


def test_skaffold_is_the_pinned_release(skaffold: Skaffold) -> None:
    result = subprocess.run([str(skaffold.binary), "version"], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == SKAFFOLD_VERSION


def test_diagnose_reads_the_config_and_names_the_artifact(skaffold: Skaffold) -> None:
    out = skaffold.run("diagnose").stdout
    assert "Number of artifacts: 1" in out and f"Docker artifact: {ARTIFACT['image']}\n" in out, out
    # skaffold found the Dockerfile's COPY sources in the context: what `skaffold dev` watches to rebuild.
    dependencies = re.search(r"Dependencies: (\d+) files", out)
    assert dependencies and int(dependencies[1]) > 0, out


def test_skaffold_fix_would_change_nothing_but_the_schema_version(skaffold: Skaffold) -> None:
    # The file stays on an older schema so that older skaffold v2 releases read it too; the pinned one
    # upgrades it in memory, and the upgrade must not have to rewrite any field (a renamed or moved one).
    fixed = yaml.safe_load(skaffold.run("fix").stdout)
    assert fixed.pop("apiVersion").startswith("skaffold/v4")
    assert fixed == {k: v for k, v in CONFIG.items() if k != "apiVersion"}


LOCAL = {"-p local": (["-p", "local"], "ci"), "kind context": ([], "kind-dra")}


@pytest.mark.parametrize("how", LOCAL)
def test_diagnose_applies_the_local_profile(skaffold: Skaffold, how: str) -> None:
    args, context = LOCAL[how]
    effective = yaml.safe_load(skaffold.run("diagnose", "--yaml-only", *args, context=context).stdout)
    assert effective["build"]["local"]["push"] is False
    (release,) = effective["deploy"]["helm"]["releases"]
    # skaffold resolves the paths against skaffold.yaml's directory.
    assert [Path(f) for f in release["valuesFiles"]] == [ROOT / "charts/dra-operator/ci/local-values.yaml"]
    assert "IMAGE_DIGEST" not in release["setValueTemplates"]["image.tag"]


def test_render_default_profile_runs_the_given_image_with_the_charts_defaults(skaffold: Skaffold) -> None:
    objects = skaffold.render()
    defaults = values()
    deployment, daemonset = one(objects, "Deployment"), one(objects, "DaemonSet")
    for workload in (deployment, daemonset):
        (container,) = pod_spec(workload)["containers"]
        assert container["image"] == BUILT, "the chart must run exactly the image skaffold was given"
    assert deployment["metadata"]["namespace"] == CONFIG["deploy"]["helm"]["releases"][0]["namespace"]
    assert deployment["spec"]["replicas"] == defaults["operator"]["replicas"]
    assert f"--backend={defaults['agent']['backend']}" in pod_spec(daemonset)["containers"][0]["args"]
    assert pod_spec(daemonset)["nodeSelector"] == defaults["agent"]["nodeSelector"]
    assert [o for o in objects if o["kind"] == "PodDisruptionBudget"]


@pytest.mark.parametrize("how", LOCAL)
def test_render_local_profile_applies_the_local_values(skaffold: Skaffold, how: str) -> None:
    args, context = LOCAL[how]
    objects = skaffold.render(*args, context=context)
    local = values("charts/dra-operator/ci/local-values.yaml")
    deployment, daemonset = one(objects, "Deployment"), one(objects, "DaemonSet")
    for workload in (deployment, daemonset):
        (container,) = pod_spec(workload)["containers"]
        assert container["image"] == BUILT
        assert container["imagePullPolicy"] == local["image"]["pullPolicy"]
    assert deployment["spec"]["replicas"] == local["operator"]["replicas"]
    assert not [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    agent = pod_spec(daemonset)
    assert f"--backend={local['agent']['backend']}" in agent["containers"][0]["args"]
    # An agent on every node of a kind/k3d cluster: no GPU label needed, the control plane's taint tolerated.
    assert "nodeSelector" not in local["agent"] and not agent.get("nodeSelector")
    assert agent["tolerations"] == local["agent"]["tolerations"]
    inventory = one([o for o in objects if o["kind"] == "ConfigMap" and "inventory" in o["metadata"]["name"]],
                    "ConfigMap")  # fmt: skip
    assert yaml.safe_load(inventory["data"]["inventory.yaml"]) == local["agent"]["simulated"]["inventory"]
