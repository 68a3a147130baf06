"""The engine's side of cluster mode (farmedge/alerts/cluster.py): which
rows of the state belong to which partition, loading a partition's state
when it is gained and writing and dropping it when it is lost, and the
fence before a pass's messages are handed to notifiers.

Kept out of the fast path: readings and statuses come only for owned
partitions (the edge reads only those), so nothing here runs per reading.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from farmedge.contract.models import StatusReason
from farmedge.logs import get_logger
from farmedge.records import StatusEvent

from .cluster import CENTER_FARM, LOCAL, PartitionFence, PartitionStore, farm_of_row
from .errors import StateError

if TYPE_CHECKING:
    from .delivery import Delivery
    from .engine import AlertEngine

__all__ = ["COUNTY_ROLE_PARTITION", "FENCED_RETRY_S", "Partitions", "county_status"]

log = get_logger("farmedge.alerts")

#: A message refused by the fence is looked at again after this long.
FENCED_RETRY_S = 5.0
#: The owner of this partition holds the county role: it sends the
#: operators' county-wide notices (mass offline) that every instance
#: detects (docs/scaling.md, "Alert state and handover").
COUNTY_ROLE_PARTITION = 0
#: How long a lost partition's sends in flight are waited for.
_INFLIGHT_WAIT_S = 10.0

GKey = tuple[str, str, str]
Changes = dict[str, dict[str, Any]]


class Partitions:
    """One engine's partitions: ``fence`` says which are ours, ``store``
    (None: state kept in memory only) holds their state while they move."""

    def __init__(self, engine: AlertEngine, fence: PartitionFence,
                 store: PartitionStore | None) -> None:
        self.engine = engine
        self.fence = fence
        self.store = store
        #: (county, farm) -> partition (the fence's hash, once per farm)
        self._of: dict[tuple[str, str], int] = {}
        #: partition -> when it was gained (engine clock): silence counts from then
        self.gained_at: dict[int, float] = {}
        #: outbox id -> partition, for the deletes of the partition's rows
        self._outbox: dict[str, int] = {}
        #: Partitions owned whose state could not be loaded yet: nothing is
        #: sent or written for them (the store's state would be overwritten)
        #: until a later pass loads it.
        self.unloaded: set[int] = set()
        #: Partitions whose last write failed (their messages wait).
        self.unwritten: set[int] = set()
        self._retry_at = 0.0

    def of(self, county: str, farm: str) -> int:
        key = (county, farm)
        p = self._of.get(key)
        if p is None:
            p = self._of[key] = self.fence.partition_of(county, farm)
        return p

    def owns(self, county: str, farm: str) -> bool:
        return self.of(county, farm) in self.fence.owned()

    def since(self, gk: GKey, started: float) -> float:
        """When a gateway's silence starts counting, for want of anything
        heard: the engine's start or the gain of its partition, the later."""
        return max(started, self.gained_at.get(self.of(gk[0], gk[1]), -math.inf))

    def partition_of_row(self, table: str, key: str, row: Mapping[str, Any] | None) -> int:
        if table == "outbox" and row is None:
            return self._outbox.pop(key, LOCAL)
        cf = farm_of_row(table, key, row)
        if cf is None:
            return LOCAL
        p = self.of(*cf)
        if table == "outbox":
            self._outbox[key] = p
        return p

    # ------------------------------------------------------------ commit

    def split(self, changes: Changes) -> dict[int, Changes]:
        """``{partition: {table: rows}}`` (LOCAL for the instance's own)."""
        out: dict[int, Changes] = {}
        for table, rows in changes.items():
            for k, v in rows.items():
                p = self.partition_of_row(table, k, v)
                out.setdefault(p, {}).setdefault(table, {})[k] = v
        return out

    async def write(self, changes: Changes) -> None:
        """Each owned partition's rows to the store, then the local rows to
        the state file (all acknowledged when this returns). Rows of a
        partition no longer ours are not written: its new owner's state is
        the truth. A partition whose write failed is in :attr:`unwritten`
        until one succeeds: its messages wait (their intent is not stored)."""
        owned = self.fence.owned()
        parts = self.split(changes)
        local = parts.pop(LOCAL, None)
        error: BaseException | None = None
        if self.store is not None:
            todo = [p for p in parts if p in owned and p not in self.unloaded]
            results = await asyncio.gather(*(self.store.write(p, parts[p]) for p in todo),
                                           return_exceptions=True)
            for p, r in zip(todo, results, strict=True):
                if isinstance(r, BaseException):
                    self.unwritten.add(p)
                    error = error or r
                else:
                    self.unwritten.discard(p)
        if local:
            self.engine._store.write(local)
        if error is not None:
            raise error if isinstance(error, StateError) else StateError(
                f"alert state in the key-value store: {error}") from error

    def written(self, ds: list[Delivery]) -> list[Delivery]:
        """Of the deliveries marked, those whose intent is stored (the
        others wait for a write that works)."""
        if not self.unwritten:
            return ds
        return [d for d in ds if d.farm == CENTER_FARM
                or self.of(d.county, d.farm) not in self.unwritten]

    # ------------------------------------------------------------ the fence

    async def allowed(self, ds: list[Delivery], now: float) -> list[Delivery]:
        """Of the deliveries due, those whose partition is still ours by the
        fence (one check per partition per pass); the others wait."""
        eng = self.engine
        owned = self.fence.owned()
        checked: dict[int, bool] = {}
        out: list[Delivery] = []
        for d in ds:
            if d.farm == CENTER_FARM:
                if not await self._county_role(d, now, checked):
                    continue
                out.append(d)
                continue
            p = self.of(d.county, d.farm)
            ok = checked.get(p)
            if ok is None:
                ok = checked[p] = p in owned and p not in self.unloaded \
                    and await self.fence.check(p)
                if not ok:
                    log.warning("alerts.send_fenced", partition=p)
            if ok:
                out.append(d)
            else:
                # Not ours any more: the new owner has the message; it stays
                # (unchanged in the store) until the edge says the partition
                # is lost.
                d.due = now + FENCED_RETRY_S
                eng.stats["fenced"] += 1
        return out

    async def _county_role(self, d: Delivery, now: float, checked: dict[int, bool]) -> bool:
        """A county-wide notice (mass offline) goes out only from the
        holder of the county role; the others drop theirs."""
        mass = self.engine.center.rule.get("mass_offline")
        if mass is None or d.rule != mass.key:
            return True
        p = COUNTY_ROLE_PARTITION
        ok = checked.get(p)
        if ok is None:
            ok = checked[p] = p in self.fence.owned() and await self.fence.check(p)
        if not ok:
            self.engine.outbox.items.pop(d.id, None)
            self.engine._changes.outbox[d.id] = None
        return ok

    def records(self, farm: str, rule: str) -> bool:
        """Whether this instance records an event of a county-wide incident
        (only the county role's holder does: one point, not one per edge)."""
        if farm != CENTER_FARM:
            return True
        mass = self.engine.center.rule.get("mass_offline")
        return mass is None or rule != mass.key or \
            COUNTY_ROLE_PARTITION in self.fence.owned()

    # ------------------------------------------------------------ gained, lost

    async def gained(self, p: int) -> bool:
        """Load the partition's state; False (kept in :attr:`unloaded`,
        tried again at later passes) when the store cannot be read."""
        eng = self.engine
        self.gained_at.setdefault(p, eng.clock())
        if self.store is None:
            return True
        try:
            rows = await self.store.load(p)
        except Exception as exc:  # the store's own error: no state, so no sends
            if p not in self.unloaded:
                log.error("alerts.partition_load_failed", partition=p, error=str(exc)[:300],
                          detail="nothing sent or written for it until it loads")
            self.unloaded.add(p)
            return False
        if p in self.unloaded:
            # What the engine made of the partition without its state (new
            # raises of alerts the state has firing, say) is dropped: the
            # readings that come next start from the state.
            self._forget(p)
            self.unloaded.discard(p)
        for k in rows.get("outbox", {}):
            self._outbox[k] = p
        flat = eng.machine.load(rows.get("states", {}), rows.get("groups", {}))
        eng.device.load_flat(flat)
        eng.outbox.load(rows.get("outbox", {}))
        for k, v in rows.get("budget", {}).items():
            eng.router.budget[k] = max(int(v), eng.router.budget.get(k, 0))
        eng.history.load(rows.get("history", {}))
        log.info("alerts.partition_loaded", partition=p,
                 **{t: len(r) for t, r in rows.items()})
        eng.wake()
        return True

    async def retry_loads(self, now: float) -> list[int]:
        """The partitions loaded now, of those that could not be (at most
        every FENCED_RETRY_S)."""
        if not self.unloaded or now < self._retry_at:
            return []
        self._retry_at = now + FENCED_RETRY_S
        owned = self.fence.owned()
        done = []
        for p in sorted(self.unloaded):
            if p not in owned:
                continue
            if await self.gained(p):
                done.append(p)
        return done

    async def lost(self, p: int) -> None:
        """Sends in flight for ``p`` finish (bounded), its changes are
        written, then every trace of its farms leaves memory."""
        eng = self.engine
        mine = [t for did, t in eng.outbox.inflight.items()
                if (d := eng.outbox.items.get(did)) is not None and d.farm != CENTER_FARM
                and self.of(d.county, d.farm) == p]
        if mine:
            await asyncio.wait(mine, timeout=_INFLIGHT_WAIT_S)
        if self.store is not None and p not in self.unloaded:
            parts = self.split(eng._changes.rows())
            rows = parts.get(p)
            hist = {k: v for k, v in eng.history.changed_rows().items()
                    if self._in(k, p, "history")}
            if hist:
                rows = rows or {}
                rows["history"] = hist
            if rows:
                try:
                    await self.store.write(p, rows)
                except Exception as exc:  # the store's own error: the next owner's state
                    log.error("alerts.partition_write_failed", partition=p, error=str(exc))
            forget = getattr(self.store, "forget", None)
            if callable(forget):
                forget(p)
        self._forget(p)
        self.gained_at.pop(p, None)
        self.unloaded.discard(p)
        self.unwritten.discard(p)
        log.info("alerts.partition_dropped", partition=p)

    def _in(self, key: str, p: int, table: str) -> bool:
        cf = farm_of_row(table, key, None)
        return cf is not None and self.of(*cf) == p

    def _forget(self, p: int) -> None:
        eng = self.engine
        sm = eng.machine
        ch = eng._changes

        def gone(county: str, farm: str) -> bool:
            return farm != CENTER_FARM and self.of(county, farm) == p

        for k, st in list(sm.states.items()):
            if gone(st.county, st.farm):
                del sm.states[k]
                ch.states.pop(k, None)
        for k, g in list(sm.groups.items()):
            if gone(g.county, g.farm):
                del sm.groups[k]
                ch.groups.pop(k, None)
        ob = eng.outbox
        for did, d in list(ob.items.items()):
            if d.farm != CENTER_FARM and gone(d.county, d.farm):
                del ob.items[did]
                ch.outbox.pop(did, None)
                self._outbox.pop(did, None)
        for k in list(eng.router.budget):
            cf = farm_of_row("budget", k, None)
            if cf is not None and gone(*cf):
                del eng.router.budget[k]
                ch.budget.pop(k, None)
        h = eng.history
        for k in [k for k in h.hourly if self._in(k, p, "history")]:
            del h.hourly[k]
            h.dirty.discard(k)
        for k in [k for k in h.raw if self._in(k, p, "history")]:
            del h.raw[k]
        _forget_gateways(eng, lambda gk: gone(gk[0], gk[1]))


def county_status(eng: AlertEngine, ev: StatusEvent, now: float) -> None:
    """A status of a gateway in a partition another instance owns: only for
    the county-wide rules (mass offline), never for its farm."""
    gk = (ev.county, ev.farm, ev.gateway)
    if ev.status.online:
        eng.center.back(gk, now)
    elif ev.status.reason != StatusReason.STOPPING:
        eng.center.will(gk, now, eng.device._county_total(gk))


def _forget_gateways(eng: AlertEngine, gone: Callable[[GKey], bool]) -> None:
    """The device checks' and flags' memory of the partition's gateways."""
    dv, fl = eng.device, eng.machine.flags
    for d in (dv.gw_seen, dv.sensor_seen, dv.will_at, dv.heard_before_will, fl.sensors,
              eng.history.air):
        for gk in [gk for gk in d if gone(gk)]:
            del d[gk]
    for s in (dv.gw_will, dv.planned, dv.holding, fl.gateways):
        s.difference_update({gk for gk in s if gone(gk)})
    for d2 in (dv.flat_states, dv.bad):
        for sk in [sk for sk in d2 if gone(sk[0])]:
            del d2[sk]
