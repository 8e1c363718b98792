"""The REST client's session: aiohttp's per-request environment lookups only where they can find something;
the name it gives the API server."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from aiohttp import web
from kubernetes_asyncio import client as k8s

from dra_operator import __version__
from dra_operator.kube.client import Kube


def trusts_environment(monkeypatch: pytest.MonkeyPatch, home: Path, **env: str) -> bool:
    for name in [n for n in os.environ if n.lower().endswith("_proxy") or n == "NETRC"]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(home))
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    async def build() -> bool:
        api = k8s.ApiClient(k8s.Configuration(host="https://127.0.0.1:1"))
        try:
            return bool(Kube(api).api.rest_client.pool_manager.trust_env)
        finally:
            await api.close()

    return asyncio.run(build())


def test_no_proxy_and_no_netrc_means_no_lookups(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert not trusts_environment(monkeypatch, tmp_path)


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy", "NO_PROXY", "NETRC"])
def test_a_proxy_or_netrc_variable_keeps_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str
) -> None:
    assert trusts_environment(monkeypatch, tmp_path, **{variable: "http://proxy.example:3128"})


def test_a_netrc_file_keeps_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".netrc").write_text("machine 127.0.0.1 login u password p\n")
    assert trusts_environment(monkeypatch, tmp_path)


def test_requests_name_the_operator_as_their_user_agent() -> None:
    """The API server takes a request's field manager from its User-Agent (up to the `/`)."""
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.headers["User-Agent"])
        return web.json_response({"kind": "Namespace", "metadata": {"name": "default"}})

    async def scenario() -> None:
        app = web.Application()
        app.router.add_get("/api/v1/namespaces/default", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        api = k8s.ApiClient(k8s.Configuration(host=f"http://127.0.0.1:{port}"))
        try:
            await Kube(api).get("/api/v1/namespaces/default")
            await Kube(api, user_agent="dra-operator-agent/9").get("/api/v1/namespaces/default")
        finally:
            await api.close()
            await runner.cleanup()

    asyncio.run(scenario())
    assert seen == [f"dra-operator/{__version__}", "dra-operator-agent/9"]
