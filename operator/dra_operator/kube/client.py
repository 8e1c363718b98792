"""A small JSON REST client over kubernetes_asyncio's ApiClient, with a per-verb write counter.

Why raw REST: the operator talks to our CRDs, Pods, Events, Leases and webhook configurations with a handful
of verbs, and wants the exact JSON back (no generated models); kubernetes_asyncio brings auth and TLS.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

from dra_operator import __version__
from dra_operator.kube.ratelimit import TokenBucket
from dra_operator.kube.rest import KubeError, NotLeading, ours, path_of, resource_of

__all__ = [
    "AGENT_USER_AGENT",
    "USER_AGENT",
    "Kube",
    "KubeError",
    "NoApiServer",
    "NotLeading",
    "api_client",
    "load_configuration",
    "ours",
    "path_of",
    "resource_of",
]

Json = dict[str, Any]

JSON_PATCH = "application/json-patch+json"
SELF_SUBJECT_REVIEWS = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
MERGE_PATCH = "application/merge-patch+json"

#: Who we are to the API server. It names the field manager of every field we write (the part before the
#: `/`: what `kubectl get -o yaml --show-managed-fields` and server-side apply conflicts show), audit log
#: entries and the apiserver's per-client metrics; kubernetes_asyncio's own is `OpenAPI-Generator/...`.
USER_AGENT = f"dra-operator/{__version__}"
AGENT_USER_AGENT = f"dra-operator-agent/{__version__}"


#: What a request raises when no HTTP answer came: refused or reset connections, TLS failures, timeouts
#: (TimeoutError is an OSError).
UNREACHABLE = (aiohttp.ClientError, OSError)


def skip_environment_lookups(api: k8s.ApiClient) -> None:
    """Switch off aiohttp's per-request look into the environment where it can find nothing.

    kubernetes_asyncio's session trusts the environment, so before every request aiohttp looks for a proxy in
    the environment and for credentials in the netrc file, each on a thread of the default executor: two
    thread round trips per API call, 5 % of the operator's time at 35 Pods/s (py-spy). With no proxy
    variable and no netrc file both lookups come back empty; where either exists, they stay on."""
    if any(name.lower().endswith("_proxy") for name in os.environ) or os.environ.get("NETRC"):
        return
    try:
        if (Path.home() / ".netrc").exists():
            return
    except (RuntimeError, OSError):  # no home directory: aiohttp finds no netrc file either
        pass
    session = getattr(getattr(api, "rest_client", None), "pool_manager", None)
    if isinstance(session, aiohttp.ClientSession) and hasattr(session, "_trust_env"):
        session._trust_env = False


class Kube:
    """JSON calls against the API server; counts writes per (verb, resource) for the API-cost figures."""

    def __init__(
        self,
        api: k8s.ApiClient,
        on_write: Callable[[str, str], None] | None = None,
        may_write: Callable[[str], bool] | None = None,
        on_reachable: Callable[[bool], None] | None = None,
        timeout: float = 30.0,
        user_agent: str = USER_AGENT,
        limiter: TokenBucket | None = None,
    ) -> None:
        self.api = api
        api.user_agent = user_agent
        skip_environment_lookups(api)
        # kubernetes_asyncio waits forever by default; a call that hangs (etcd away) would hold its item.
        self.timeout = timeout
        self.writes: collections.Counter[tuple[str, str]] = collections.Counter()
        self.on_write = on_write
        # Asked right before each write is sent (given its path): a fence for a leader that may have lost its
        # Lease while it was between two awaits (paused, starved), so no stale decision reaches the server.
        self.may_write = may_write
        self.on_reachable = on_reachable
        # Every request waits here first, watches too (client-go's rate limiter does the same).
        self.limiter = limiter

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - handed to aiohttp, which enforces it
    ) -> Json:
        if self.limiter is not None:
            await self.limiter.wait()  # before the fence below: leadership may lapse while this waits
        if method != "GET":
            if self.may_write is not None and not self.may_write(path):
                raise NotLeading(method, path)
            resource = resource_of(path)
            self.writes[(method, resource)] += 1
            if self.on_write is not None:
                self.on_write(method, resource)
        try:
            data = await self.api.call_api(
                path,
                method,
                query_params=query or [],
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body,
                response_types_map={200: "object", 201: "object", 202: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _request_timeout=timeout or self.timeout,
            )
        except ApiException as exc:
            self._reachable(True)
            try:
                parsed = json.loads(exc.body) if exc.body else None
            except ValueError:
                parsed = exc.body
            raise KubeError(int(exc.status or 0), str(exc.reason), parsed, method=method, path=path) from None
        except UNREACHABLE as exc:
            # No answer at all: an expected condition (apiserver restarting), reported without a traceback.
            self._reachable(False)
            detail = f"{type(exc).__name__}: {exc}"
            raise KubeError(0, "Unreachable", detail, method=method, path=path) from None
        self._reachable(True)
        return data if isinstance(data, dict) else {}

    async def watch(
        self, path: str, query: list[tuple[str, str]], read_timeout: float
    ) -> AsyncIterator[Json]:
        """The events of one watch request (`query` names the resourceVersion and the server's timeout), one
        parsed JSON object per line, until the server ends the stream. Raises KubeError for a refused request
        (410: the resourceVersion is too old) and for a connection lost or silent for `read_timeout` s."""
        if self.limiter is not None:
            await self.limiter.wait()
        try:
            response = await self.api.call_api(
                path,
                "GET",
                query_params=[("watch", "true"), *query],
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
                _request_timeout=aiohttp.ClientTimeout(sock_connect=self.timeout, sock_read=read_timeout),
            )
        except UNREACHABLE as exc:
            detail = f"{type(exc).__name__}: {exc}"
            raise KubeError(0, "Unreachable", detail, method="WATCH", path=path) from None
        async with response:
            if response.status != 200:
                text = await response.text()
                try:
                    body: Any = json.loads(text)
                except ValueError:
                    body = text
                raise KubeError(response.status, str(response.reason), body, method="WATCH", path=path)
            while True:
                try:
                    line = await response.content.readline()
                except (*UNREACHABLE, ValueError) as exc:  # ValueError: a line past aiohttp's buffer
                    detail = f"{type(exc).__name__}: {exc}"
                    raise KubeError(0, "Unreachable", detail, method="WATCH", path=path) from None
                if not line:
                    return
                try:
                    event = json.loads(line)
                except ValueError:
                    raise KubeError(0, "Garbled", line[:200], method="WATCH", path=path) from None
                if isinstance(event, dict):
                    yield event

    def _reachable(self, reachable: bool) -> None:
        if self.on_reachable is not None:
            self.on_reachable(reachable)

    async def get(self, path: str) -> Json | None:
        """GET an object; None when it does not exist."""
        try:
            return await self.request("GET", path)
        except KubeError as exc:
            if exc.not_found:
                return None
            raise

    async def username(self) -> str | None:
        """Who this client is to the API server (a SelfSubjectReview, served since Kubernetes 1.28 to every
        authenticated user); None when it cannot tell."""
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        try:
            found = await self.request("POST", SELF_SUBJECT_REVIEWS, review)
        except KubeError:
            return None
        name = ((found.get("status") or {}).get("userInfo") or {}).get("username")
        return str(name) if name else None

    async def create(self, path: str, body: Json) -> Json:
        return await self.request("POST", path, body)

    async def replace(self, path: str, body: Json) -> Json:
        return await self.request("PUT", path, body)

    async def json_patch(self, path: str, ops: list[Json]) -> Json:
        return await self.request("PATCH", path, ops, content_type=JSON_PATCH)

    async def merge_patch(self, path: str, patch: Json) -> Json:
        return await self.request("PATCH", path, patch, content_type=MERGE_PATCH)

    async def delete(self, path: str, preconditions: Json | None = None) -> Json | None:
        body: Json = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if preconditions:
            body["preconditions"] = preconditions
        try:
            return await self.request("DELETE", path, body)
        except KubeError as exc:
            if exc.not_found:
                return None
            raise

    async def served(self, group_version: str, plural: str) -> bool:
        """Whether the API server serves `plural` in `group/version` (discovery)."""
        try:
            doc = await self.request("GET", f"/apis/{group_version}")
        except KubeError as exc:
            if exc.unreachable or exc.status >= 500:
                raise  # no answer is not a "no": the caller waits for one
            return False
        return any(r.get("name") == plural for r in doc.get("resources", []))


async def load_configuration(kubeconfig: str | None, context: str | None = None) -> k8s.Configuration:
    """The API server's address and credentials: `kubeconfig` (its `context`) if given, else in-cluster."""
    from kubernetes_asyncio import config

    cfg = k8s.Configuration()
    if kubeconfig:
        await config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
    else:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    return cfg


class NoApiServer(RuntimeError):
    """No usable API server configuration was found (in-cluster, a kubeconfig file, or $KUBECONFIG)."""


async def api_client(kubeconfig: str | None = None, user_agent: str = USER_AGENT) -> k8s.ApiClient:
    """A client of the API server, introduced as `user_agent`: `kubeconfig` if given, else in-cluster, else
    $KUBECONFIG / ~/.kube."""
    from kubernetes_asyncio import config

    try:
        if kubeconfig:
            api = await config.new_client_from_config(config_file=kubeconfig)
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            configuration = k8s.Configuration()
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            api = k8s.ApiClient(configuration)
        else:
            api = await config.new_client_from_config()
    except config.ConfigException as error:
        where = "in-cluster, --kubeconfig or KUBECONFIG"
        raise NoApiServer(f"no usable API server configuration ({where}): {error}") from None
    api.user_agent = user_agent
    return api
