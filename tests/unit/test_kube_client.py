"""The REST client's session: aiohttp's per-request environment lookups only where they can find something."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from kubernetes_asyncio import client as k8s

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
