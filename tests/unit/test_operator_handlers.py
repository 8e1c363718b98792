"""The operator's Kopf registry: watch-event and index handlers only, which is what lets it switch off Kopf's
per-object diff base (dra_operator.operator.kopfstorage)."""

from __future__ import annotations

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
