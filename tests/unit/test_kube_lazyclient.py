"""kubernetes_asyncio's generated classes load one by one (dra_operator.kube.lazyclient): the same names
resolve to the same classes, the client still (de)serialises, Kopf still recognises its models, and the
operator's process no longer imports ~900 modules at start. Each check runs in a fresh interpreter, where
`dra_operator`'s import is the first to touch kubernetes_asyncio, as in every process we start."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dra_operator.kube.lazyclient import _exports


def fresh(code: str) -> dict[str, object]:
    """Run `code` (which assigns `out`) in a new interpreter; return `out`."""
    script = textwrap.dedent(code) + "\nimport json; print(json.dumps(out))\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_the_operator_imports_a_handful_of_generated_modules_not_all() -> None:
    out = fresh(
        """
        import sys
        import dra_operator.operator.main, kopf
        out = {
            "models": sum(m.startswith("kubernetes_asyncio.client.models.") for m in sys.modules),
            "apis": sum(m.startswith("kubernetes_asyncio.client.api.") for m in sys.modules),
            "kopf_sees": kopf._cogs.helpers.thirdparty.V1ObjectMetaAsync.__module__,
        }
        """
    )
    assert out["models"] <= 5 and out["apis"] == 0, out
    assert out["kopf_sees"] == "kubernetes_asyncio.client.models.v1_object_meta"


def test_names_resolve_to_the_classes_the_generated_files_name() -> None:
    out = fresh(
        """
        import dra_operator
        from kubernetes_asyncio import client
        from kubernetes_asyncio.client import CoreV1Api, V1Pod, ApiException
        import kubernetes_asyncio.client.models as models
        out = {
            "names": [c.__module__ + "." + c.__qualname__ for c in (CoreV1Api, V1Pod, ApiException)],
            "same": models.V1Pod is V1Pod and client.CoreV1Api is CoreV1Api,
            "version": client.__version__,
            "all": len(client.__all__),
            "dir": "V1Pod" in dir(client),
        }
        try:
            client.NoSuchThing
        except AttributeError as err:
            out["missing"] = str(err)
        """
    )
    assert out["names"] == [
        "kubernetes_asyncio.client.api.core_v1_api.CoreV1Api",
        "kubernetes_asyncio.client.models.v1_pod.V1Pod",
        "kubernetes_asyncio.client.exceptions.ApiException",
    ]
    assert out["same"] is True and out["dir"] is True
    assert re.fullmatch(r"\d+\.\d+\.\d+", str(out["version"]))
    assert isinstance(out["all"], int) and out["all"] > 800
    assert "NoSuchThing" in str(out["missing"])


def test_the_client_still_deserialises_and_serialises_models() -> None:
    out = fresh(
        """
        import asyncio
        import dra_operator
        from kubernetes_asyncio import client

        class Response:
            data = '{"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}'

        async def main():
            async with client.ApiClient() as api:
                pod = api.deserialize(Response(), "V1Pod")
                return pod.spec.containers[0].image, api.sanitize_for_serialization(pod)

        image, body = asyncio.run(main())
        out = {"image": image, "body": body}
        """
    )
    assert out["image"] == "i"
    assert out["body"] == {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}


def test_every_generated_init_is_read_fully() -> None:
    # A kubernetes_asyncio release with another layout makes install() leave the package eager: this test
    # says so, rather than the memory quietly coming back.
    import importlib.util

    spec = importlib.util.find_spec("kubernetes_asyncio")
    assert spec is not None and spec.submodule_search_locations
    root = Path(next(iter(spec.submodule_search_locations)))
    for part in ("client", "client/api", "client/models"):
        assert _exports(root / part / "__init__.py") is not None, part


@pytest.mark.parametrize("extra", ["x = 1", "import os", "from .models import *"])
def test_a_file_holding_anything_else_is_left_alone(tmp_path: Path, extra: str) -> None:
    init = tmp_path / "__init__.py"
    init.write_text(
        f'__version__ = "1.0.0"\nfrom kubernetes_asyncio.client.api_client import ApiClient\n{extra}\n'
    )
    assert _exports(init) is None
