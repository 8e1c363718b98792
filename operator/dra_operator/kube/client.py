"""A small JSON REST client over kubernetes_asyncio's ApiClient, with a per-verb write counter.

Why raw REST: the operator talks to our CRDs, Pods, Events, Leases and webhook configurations with a handful
of verbs, and wants the exact JSON back (no generated models); kubernetes_asyncio brings auth and TLS.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

from dra_operator.api.resource import GROUP, VERSION

Json = dict[str, Any]

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"


class KubeError(Exception):
    """An API call failed; `status` is the HTTP status (409 conflict, 404 not found, 422 invalid, ...), or 0
    when no answer came (the API server unreachable); `method` and `path` name the call when known."""

    def __init__(
        self, status: int, reason: str, body: Any = None, *, method: str = "", path: str = ""
    ) -> None:
        self.status = status
        self.reason = reason
        self.body = body
        self.method = method
        self.path = path
        super().__init__(f"{status} {reason}: {self.message}")

    @property
    def message(self) -> str:
        """The Status message; for a refused object its causes (`field: why`), which leave out the object's
        name — a generated name differs on every try, and the message should not."""
        body = self.body if isinstance(self.body, dict) else {}
        causes = [c for c in (body.get("details") or {}).get("causes") or [] if isinstance(c, dict)]
        if causes:
            return "; ".join(f"{c['field']}: {c.get('message')}" if c.get("field") else str(c.get("message"))
                             for c in causes)  # fmt: skip
        return str(body.get("message") or self.body)

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def unreachable(self) -> bool:
        return self.status == 0

    @property
    def permanent(self) -> bool:
        """Repeating the same request cannot succeed: it was refused as invalid (400, or 422 with reason
        Invalid naming the object and its field errors) or forbidden (403). A failed JSON-patch `test` is a
        422 with reason Invalid too, but with empty details and the generic message "the server rejected
        our request due to an error in our request" (measured on kube-apiserver 1.36): that is a
        precondition, and a fresh read fixes it."""
        if self.status in (400, 403):
            return True
        if self.status != 422 or not isinstance(self.body, dict) or self.body.get("reason") != "Invalid":
            return False
        details = self.body.get("details")
        return isinstance(details, dict) and bool(details.get("causes") or details.get("name"))


class NotLeading(KubeError):
    """A write refused by this process itself: it no longer holds the leader Lease (see Kube.may_write)."""

    def __init__(self, method: str, path: str) -> None:
        super().__init__(0, "NotLeading", "not the leader: write withheld", method=method, path=path)


#: What a request raises when no HTTP answer came: refused or reset connections, TLS failures, timeouts
#: (TimeoutError is an OSError).
UNREACHABLE = (aiohttp.ClientError, OSError)


def path_of(
    plural: str,
    *,
    group: str = "",
    version: str = "v1",
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """The REST path of a collection or an object."""
    base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    if namespace:
        base += f"/namespaces/{quote(namespace)}"
    base += f"/{plural}"
    if name:
        base += f"/{quote(name)}"
    if subresource:
        base += f"/{subresource}"
    return base


def ours(
    plural: str, namespace: str | None = None, name: str | None = None, subresource: str | None = None
) -> str:
    """REST path of one of our kinds (resource.dra-operator.io/v1)."""
    return path_of(
        plural, group=GROUP, version=VERSION, namespace=namespace, name=name, subresource=subresource
    )


def resource_of(path: str) -> str:
    """`pods`, `resourceclaims/status`, ... from a REST path (for counting writes)."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    parts = parts[2:] if parts[0] == "api" else parts[3:]  # drop api/v1 or apis/group/version
    if len(parts) >= 2 and parts[0] == "namespaces" and len(parts) > 2:
        parts = parts[2:]
    return "/".join([parts[0], *parts[2:3]]) if parts else ""


class Kube:
    """JSON calls against the API server; counts writes per (verb, resource) for the API-cost figures."""

    def __init__(
        self,
        api: k8s.ApiClient,
        on_write: Callable[[str, str], None] | None = None,
        may_write: Callable[[str], bool] | None = None,
        on_reachable: Callable[[bool], None] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.api = api
        # kubernetes_asyncio waits forever by default; a call that hangs (etcd away) would hold its item.
        self.timeout = timeout
        self.writes: collections.Counter[tuple[str, str]] = collections.Counter()
        self.on_write = on_write
        # Asked right before each write is sent (given its path): a fence for a leader that may have lost its
        # Lease while it was between two awaits (paused, starved), so no stale decision reaches the server.
        self.may_write = may_write
        self.on_reachable = on_reachable

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


async def api_client(kubeconfig: str | None = None) -> k8s.ApiClient:
    """A client of the API server: `kubeconfig` if given, else in-cluster, else $KUBECONFIG / ~/.kube."""
    from kubernetes_asyncio import config

    try:
        if kubeconfig:
            return await config.new_client_from_config(config_file=kubeconfig)
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            configuration = k8s.Configuration()
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            return k8s.ApiClient(configuration)
        return await config.new_client_from_config()
    except config.ConfigException as error:
        where = "in-cluster, --kubeconfig or KUBECONFIG"
        raise NoApiServer(f"no usable API server configuration ({where}): {error}") from None
