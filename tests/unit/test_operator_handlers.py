"""The operator's Kopf registry: watch-event and index handlers only, which is what lets it switch off Kopf's
per-object diff base (dra_operator.operator.kopfstorage)."""

from __future__ import annotations

import inspect
from typing import Any, cast

import kopf

from dra_operator.operator import handlers
from dra_operator.operator.reconciler import Reconciler
from dra_operator.operator.state import State


def test_no_handler_needs_the_diff_base() -> None:
    registry = kopf.OperatorRegistry()
    handlers.register(registry, State(), cast(Reconciler, object()), on_warm=lambda: None)
    found: Any = registry
    assert found._watching.get_all_handlers(), "the watch-event handlers are registered"
    assert found._changing.get_all_handlers() == [], "on.create/update/delete/resume read the diff base"
    assert found._spawning.get_all_handlers() == [], "daemons and timers read the diff base"


def test_every_handler_and_index_function_runs_on_the_event_loop() -> None:
    """Kopf runs a plain function in its thread pool: a thread hop per watch event, and the State touched from
    a second thread. Coroutines run on the loop."""
    registry = kopf.OperatorRegistry()
    handlers.register(registry, State(), cast(Reconciler, object()), on_warm=lambda: None)
    found: Any = registry
    registered = found._indexing.get_all_handlers() + found._watching.get_all_handlers()
    assert len(found._indexing.get_all_handlers()) == 7, "one index per cached kind"
    plain = [h.id for h in registered if not inspect.iscoroutinefunction(h.fn)]
    assert plain == [], f"run in Kopf's thread pool: {plain}"


def test_after_indexing_kopfs_raw_object_holds_only_what_the_cache_keeps() -> None:
    """Kopf parks each listed object with its raw event until every index has its first listing; the raw
    object shrinks to the cache's form at indexing (kopfpatch.hold_only), and the later handlers still read
    what they need from it."""
    import asyncio

    registry = kopf.OperatorRegistry()
    handlers.register(registry, State(), cast(Reconciler, object()), on_warm=lambda: None)
    found: Any = registry
    by_id = {h.id: h.fn for h in found._indexing.get_all_handlers()}
    managed = [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}]
    meta = {"name": "n", "uid": "u", "resourceVersion": "7", "managedFields": managed}
    raw_node = {"metadata": dict(meta), "spec": {"taints": []}, "status": {"images": [{"names": ["a"]}]}}
    raw_claim = {
        "metadata": dict(meta, namespace="ns"),
        "spec": {"devices": {}},
        "status": {"state": "pending"},
    }
    for index_id, raw in (("dra_nodes", raw_node), ("dra_claims", raw_claim)):
        indexed = asyncio.run(by_id[index_id](body=kopf.Body(raw)))
        assert "managedFields" not in raw["metadata"], index_id
        assert raw["metadata"]["uid"] == "u" and raw["metadata"]["resourceVersion"] == "7"  # Kopf reads them
        assert list(indexed) == [("ns", "n") if index_id == "dra_claims" else ("", "n")]
    assert "status" not in raw_node and raw_node["spec"] == {"taints": []}
    assert raw_claim["status"] == {"state": "pending"} and raw_claim["spec"] == {"devices": {}}
