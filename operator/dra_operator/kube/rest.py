"""REST paths and API errors: what callers name and catch, without the client itself (whose import of
kubernetes_asyncio's generated models costs a process some 60 MiB; the admission process does without)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from dra_operator.api.group import GROUP, VERSION


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
    def ambiguous(self) -> bool:
        """A write that failed so may have landed all the same: no answer came (a timeout after the request
        went out), or the server failed (etcd's "request timed out" is a 500 for a write it may have
        committed). A refusal (4xx) says it did not land."""
        return self.unreachable or self.status >= 500

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

    @property
    def ambiguous(self) -> bool:
        return False  # never sent


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
