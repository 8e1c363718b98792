"""Keeps each ResourceSlice's status (devices, allocated, tainted, free) current: the free-devices view.

The leader brings its counts (dra_operator.allocation.usage.UsageLedger) up to date from the caches' change
journal every `interval` seconds: the slices and claims changed since the last pass, and the devices the
DeviceTaintRules avoid. It writes the status of the slices whose counts moved, through the status subresource
(a merge patch, so the agent's writes of the spec and ours never conflict). The interval bounds the writes: a
burst of allocations costs each touched slice one write per interval, not one per Pod; the view is at most
that much behind. A pass compares every slice's status with its counts when it starts a leadership term, after
the journal's epoch moved and after a write that failed: another leader may have written in between, and
status-only edits reach no journal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog

from dra_operator.allocation.usage import UsageLedger, avoided, claim_devices, slice_devices
from dra_operator.kube.client import Kube, KubeError, NotLeading, ours
from dra_operator.operator.periodic import Unchanged, leader_passes
from dra_operator.operator.slices import slice_models
from dra_operator.operator.state import CLAIMS, SLICES, TAINT_RULES, Json, Key, State, key_of

log = structlog.get_logger("dra_operator.poolstatus")

DEFAULT_INTERVAL = 5.0


class PoolStatus:
    def __init__(
        self,
        kube: Kube,
        state: State,
        is_leader: Callable[[], bool],
        interval: float,
        rule_taints: Callable[[], Mapping[tuple[str, str, str], Iterable[Any]]] = dict,
    ) -> None:
        self.kube, self.state, self.is_leader, self.interval = kube, state, is_leader, interval
        self.rule_taints = rule_taints  # the DeviceTaintRules' taints per device, counted as tainted
        self.writes = 0
        self.unchanged = Unchanged(state, SLICES, CLAIMS, TAINT_RULES)
        self.ledger = UsageLedger()
        # (journal epoch, {kind: revision}) the ledger has read up to; None: read every slice and claim anew.
        self._read: tuple[int, dict[str, int]] | None = None
        self._compare_all = True  # the next pass compares every slice's status, not only changed counts

    async def run(self) -> None:
        await leader_passes(self.interval, self._leading, self.update)

    def _leading(self) -> bool:
        leading = self.is_leader()
        if not leading:
            self._compare_all = True  # a term ended: the next one's first pass trusts no status
        return leading

    async def update(self) -> int:
        """Write the status of every slice whose counts changed; returns how many were written. Skipped while
        slices, claims and taint rules are unchanged since a pass that wrote everything it meant to."""
        if self.unchanged.since_settled() and not self._compare_all:
            return 0
        revisions = self.unchanged.now()
        self._catch_up()
        if self._compare_all:
            self.ledger.mark()
            self._compare_all = False
        failed = False
        written = 0
        for name, counts in self.ledger.changed().items():
            current = self.state.get(SLICES, ("", name))
            wanted = counts.status()
            if current is None or (current.get("status") or {}) == wanted:
                continue
            try:
                patched = await self.kube.merge_patch(
                    ours("resourceslices", name=name, subresource="status"), {"status": wanted}
                )
            except NotLeading:
                self._compare_all = True
                return written
            except KubeError as exc:
                if exc.status != 404:  # a slice withdrawn meanwhile needs no status
                    log.warning("slice status not written", slice=name, error=str(exc))
                    self.ledger.mark([name])
                    failed = True
                continue
            self.state.wrote(SLICES, patched, journal=False)  # status only: decisions read the spec
            written += 1
        self.writes += written
        self.unchanged.settled(None if failed else revisions)
        return written

    def _catch_up(self) -> None:
        """Bring the ledger up to date: the slices and claims changed since it last read (all of them when the
        journal's epoch moved), and the devices the taint rules avoid."""
        state = self.state
        kinds = (SLICES, CLAIMS)
        if self._read is None or self._read[0] != state.epoch:
            # Revisions taken before reading, so that a change while reading is read again next time.
            self._read = (state.epoch, dict.fromkeys(kinds, state.revision))
            self.ledger = UsageLedger.of(
                slice_devices(slice_models(state.all(SLICES))),
                ((key_of(claim), claim_devices(claim)) for claim in state.all(CLAIMS)),
            )
            self._compare_all = True
        else:
            cursors = self._read[1]
            for kind in kinds:
                revision, keys = state.changes(kind, cursors[kind])
                for key in keys:
                    self._put(kind, key, state.get(kind, key))
                cursors[kind] = revision
        self.ledger.put_ruled(avoided(self.rule_taints()))

    def _put(self, kind: str, key: Key, obj: Json | None) -> None:
        if kind == CLAIMS:
            self.ledger.put_claim(key, claim_devices(obj) if obj is not None else frozenset())
            return
        offered = slice_devices(slice_models([obj])) if obj is not None else {}
        self.ledger.put_slice(key[1], offered.get(key[1]))
