"""Publishes a node's inventories as ResourceSlices through the API server (kubernetes_asyncio).

Each `sync` plans with `slices.plan` against the node's slices and executes the plan: nothing is written when
nothing changed. Writes carry the read resourceVersion, so a concurrent change makes the pass start over
instead of overwriting. Slices are owned by the Node object (ownerReference with its uid), so the garbage
collector removes them with the Node; while the Node does not exist nothing is published.

Where the slices come from. With a live `SliceView` (the agent keeps one: a label-selected watch), a pass
plans against it and asks the API server nothing unless it has something to write; the Node's uid is kept
from the last read and read again before any write. Without one, a pass's first list is served from the API
server's watch cache (resourceVersion 0), as informers list: read consistently, a list of a custom resource
is served from etcd before Kubernetes 1.31, every node's slice read and decoded to find this node's (6.7 s
and 9.6 CPU seconds of kube-apiserver at 5,000 nodes, from each agent each interval; bench/agent_sync.py).
Either way a stale answer costs at most one refused write, and the pass then starts over reading
consistently."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from dra_operator.agent.inventory import Inventory
from dra_operator.agent.slices import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    Action,
    Create,
    Delete,
    Replace,
    node_selector,
    plan,
)
from dra_operator.agent.sliceview import PLURAL, SliceView
from dra_operator.api.group import GROUP, VERSION

FIELD_MANAGER = "dra-operator-agent"
MAX_ATTEMPTS = 6

log = structlog.get_logger("dra_operator.agent.publisher")


def _retry_after(error: ApiException) -> float:
    """The server's Retry-After (seconds), bounded to [0.1, 5] so a pass never stalls for long."""
    try:
        headers: Any = error.headers or {}
        seconds = float(headers.get("Retry-After", 1))
    except (TypeError, ValueError):
        seconds = 1.0
    return min(max(seconds, 0.1), 5.0)


class SlicePublisher:
    """Keeps one node's ResourceSlices equal to the inventories handed to `sync`."""

    def __init__(self, api: client.ApiClient, node: str) -> None:
        self.node = node
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)
        self.view: SliceView | None = None  # see `watch`
        self._uid: str | None = None  # the Node's, as last read
        # Writes made, by kind ("create", "replace", "delete"): lets tests and metrics see that an unchanged
        # inventory costs no write.
        self.writes: Counter[str] = Counter()

    def watch(self, on_change: Callable[[], None]) -> SliceView:
        """A view of this node's slices for `sync` to plan against; run its `run()` as a task. `on_change` is
        called (in the event loop) when someone else changed them."""
        self.view = SliceView(self._custom, node_selector(self.node), on_change)
        return self.view

    async def node_uid(self) -> str | None:
        try:
            node = await self._core.read_node(self.node)
        except ApiException as error:
            if error.status == 404:
                self._uid = None
                return None
            raise
        self._uid = str(node.metadata.uid)
        return self._uid

    async def existing(self, *, cached: bool = False) -> list[dict[str, Any]]:
        """This agent's slices of the node: from the watch cache if `cached`, else read consistently."""
        selector = node_selector(self.node)
        if cached:
            listed = await self._custom.list_cluster_custom_object(
                GROUP, VERSION, PLURAL, label_selector=selector, resource_version="0"
            )
        else:
            listed = await self._custom.list_cluster_custom_object(
                GROUP, VERSION, PLURAL, label_selector=selector
            )
        return list(listed.get("items", []))

    async def sync(self, inventories: Sequence[Inventory]) -> list[Action]:
        """Bring the node's slices to `inventories`; returns the actions done (empty: nothing was written)."""
        known = self.view.items() if self.view is not None else None
        if known is not None and self._uid is not None and not plan(self.node, self._uid, inventories, known):
            return []  # the view and the uid kept agree with the inventory: nothing to ask the API server
        uid = await self.node_uid()
        if uid is None:
            log.warning(
                "node object not found: not publishing (slices are owned by the Node)", node=self.node
            )
            return []
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                if attempt == 1 and known is not None:
                    existing = known
                else:
                    existing = await self.existing(cached=attempt == 1)
                actions = plan(self.node, uid, inventories, existing)
                for action in actions:
                    await self._execute(action)
                return actions
            except ApiException as error:
                # 409: someone wrote in between (or two creates raced); 404: a slice vanished; 429: the server
                # asks us to come back (a CRD's storage still initialising). Start over, as client-go would.
                if error.status not in (404, 409, 429) or attempt == MAX_ATTEMPTS:
                    raise
                log.info("retrying the sync", node=self.node, status=error.status, attempt=attempt)
                if error.status in (404, 409) and self.view is not None:
                    self.view.invalidate()
                if error.status == 429:
                    await asyncio.sleep(_retry_after(error))
        return []

    async def _execute(self, action: Action) -> None:
        if isinstance(action, Create):
            created = await self._custom.create_cluster_custom_object(
                GROUP, VERSION, PLURAL, action.body, field_manager=FIELD_MANAGER
            )
            self._written(created)
            self.writes["create"] += 1
            log.info("created slice", slice=action.name, devices=len(action.body["spec"].get("devices", [])),
                     generation=action.body["spec"]["pool"]["generation"])  # fmt: skip
        elif isinstance(action, Replace):
            replaced = await self._custom.replace_cluster_custom_object(
                GROUP, VERSION, PLURAL, action.name, action.body, field_manager=FIELD_MANAGER
            )
            self._written(replaced)
            self.writes["replace"] += 1
            log.info("updated slice", slice=action.name, content_changed=action.content_changed,
                     devices=len(action.body["spec"].get("devices", [])),
                     generation=action.body["spec"]["pool"]["generation"])  # fmt: skip
        else:
            await self._delete(action)

    def _written(self, answer: dict[str, Any]) -> None:
        """The server's answer to a create or replace: what the next pass plans against."""
        if self.view is not None:
            self.view.record(answer)

    async def _delete(self, action: Delete) -> None:
        preconditions = client.V1Preconditions(resource_version=action.resource_version)
        try:
            await self._custom.delete_cluster_custom_object(
                GROUP, VERSION, PLURAL, action.name, body=client.V1DeleteOptions(preconditions=preconditions)
            )
        except ApiException as error:
            if error.status != 404:  # already gone is what we wanted
                raise
        if self.view is not None:
            self.view.forget(action.name)
        self.writes["delete"] += 1
        log.info("deleted slice", slice=action.name, reason=action.reason)


async def withdraw_all(api: client.ApiClient) -> list[str]:
    """Delete every ResourceSlice any agent published (all nodes): what the chart runs when it is uninstalled,
    after the agents are gone, so no slice of theirs outlives the release. Returns the names deleted."""
    custom = client.CustomObjectsApi(api)
    listed = await custom.list_cluster_custom_object(
        GROUP, VERSION, PLURAL, label_selector=f"{MANAGED_BY_LABEL}={MANAGED_BY}"
    )
    deleted: list[str] = []
    for item in listed.get("items", []):
        name = str(item["metadata"]["name"])
        try:
            await custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        except ApiException as error:
            if error.status != 404:
                raise
        deleted.append(name)
        log.info("withdrew slice", slice=name, node=(item.get("spec") or {}).get("nodeName"))
    return deleted
