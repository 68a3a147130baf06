"""Readings into the state machine.

:meth:`ReadingPath.accepted` takes the edge's records as they come, one
:class:`~farmedge.records.Accepted` per message, and keeps the common case
cheap: per message it checks the gateway once (clock synced, no device
state); per reading it finds the sensor's plan for that kind (computed once
per context and kind, :meth:`Context.fast_plan`), checks the plausible range
and steps the flatline checks, and marks the sensor heard. No object is built
per reading there. A reading that a threshold or derived-value rule uses, or
one of a flagged sensor, of quality other than ok, outside its plausible range,
or at the end of a flatline window takes the full path, :meth:`ReadingPath.full`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from farmedge.contract.models import Quality
from farmedge.records import Accepted, AcceptedReading

from .context import Context, Contexts
from .derive import DERIVE, NOT_AGGREGATED, Input
from .device import DeviceChecks
from .history import History
from .rules import BoundRule
from .settings import AlertsSettings
from .state import StateMachine, fmt

__all__ = ["ReadingPath"]

_OK = Quality.OK


class ReadingPath:
    def __init__(self, *, contexts: Contexts, machine: StateMachine, device: DeviceChecks,
                 history: History, settings: AlertsSettings, stats: dict[str, int]) -> None:
        self.contexts = contexts
        self.machine = machine
        self.device = device
        self.history = history
        self.settings = settings
        self.stats = stats
        #: (county, farm, gateway) -> sensor -> its context, for readings
        #: without an animal of their own ...
        self._gw_ctx: dict[tuple[str, str, str], dict[str, Context]] = {}
        #: ... and animal -> sensor -> context for readings naming one
        self._gw_animal_ctx: dict[tuple[str, str, str], dict[str, dict[str, Context]]] = {}

    def accepted(self, records: Sequence[Accepted], now: float) -> int:
        """Every reading of ``records``; returns how many there were."""
        n = 0
        gw_flags = self.machine.flags.gateways
        sensor_flags = self.machine.flags.sensors
        device = self.device
        full = self.full
        ok = _OK
        for rec in records:
            readings = rec.readings
            n += len(readings)
            gk = (rec.county, rec.farm, rec.gateway)
            seen = device.seen(gk)
            device.gw_seen[gk] = now
            ctxs = self._gw_ctx.get(gk)
            if ctxs is None:
                ctxs = self._gw_ctx[gk] = {}
                self._gw_animal_ctx[gk] = {}
            animals = self._gw_animal_ctx[gk]
            slow = not rec.clock_ok or gk in gw_flags
            flagged = sensor_flags.get(gk)
            offset = rec.offset_ms
            for r in readings:
                sensor = r.sensor
                seen[sensor] = now
                animal = r.animal
                if animal is None:
                    ctx = ctxs.get(sensor)
                else:
                    by_sensor = animals.get(animal)
                    ctx = by_sensor.get(sensor) if by_sensor is not None else None
                if ctx is None:
                    ctx = self._context(rec, sensor, animal, ctxs, animals)
                kind = r.kind.name
                if slow or r.quality is not ok or (flagged and sensor in flagged):
                    full(ctx, kind, r.ts_ms + offset, r.value, r.quality.value, rec.clock_ok,
                         now)
                    continue
                plan = ctx.fast.get(kind)
                if plan is None:
                    plan = ctx.fast_plan(kind)
                lo, hi, tol, window, st, more = plan
                v = r.value
                # out of the plausible range, or a rule that needs the full path
                if not lo <= v <= hi:
                    full(ctx, kind, r.ts_ms + offset, v, "ok", True, now)
                    continue
                if st is None:
                    continue
                ts = r.ts_ms + offset if offset else r.ts_ms
                # flatline: st is this sensor's [value, since ms]
                if abs(v - st[0]) > tol:
                    st[0] = v
                    st[1] = ts
                elif ts - st[1] >= window:
                    full(ctx, kind, ts, v, "ok", True, now)
                    continue
                for tol, window, st in more:      # more flatline rules on the kind
                    if abs(v - st[0]) > tol:
                        st[0] = v
                        st[1] = ts
                    elif ts - st[1] >= window:
                        full(ctx, kind, ts, v, "ok", True, now)
                        break
        return n

    def _context(self, rec: Accepted, sensor: str, animal: str | None,
                 ctxs: dict[str, Context], animals: dict[str, dict[str, Context]]) -> Context:
        meta = rec.meta(sensor)
        ctx = self.contexts.get(rec.county, rec.farm, rec.gateway, sensor, meta.plot,
                                animal or meta.animal, entry=rec.entry)
        if animal is None:
            ctxs[sensor] = ctx
        else:
            animals.setdefault(animal, {})[sensor] = ctx
        return ctx

    def each(self, readings: Sequence[AcceptedReading], now: float) -> None:
        """Readings one by one (tools and tests; the edge hands records)."""
        device = self.device
        for r in readings:
            gk = (r.county, r.farm, r.gateway)
            device.seen(gk)[r.sensor] = now
            device.gw_seen[gk] = now
            tags = r.tags
            ctx = self.contexts.get(r.county, r.farm, r.gateway, r.sensor,
                                    tags.get("plot") if tags else None,
                                    tags.get("animal") if tags else None)
            self.full(ctx, r.kind, r.ts_ms, r.value, r.quality, r.clock_ok, now)

    def full(self, ctx: Context, kind: str, ts_ms: int, value: float, quality: str,
             clock_ok: bool, now: float) -> None:
        """One reading through every rule of its context."""
        ts = ts_ms / 1000.0 if clock_ok else now
        stale = now - ts > self.settings.max_reading_age_s
        if stale:
            self.stats["stale"] += 1
        device = self.device
        gk = (ctx.county, ctx.farm, ctx.gateway)
        flags = self.machine.flags
        # Device status carried by telemetry: the gateway is up, this sensor
        # speaks. Only entities that have a device state need a look.
        if not clock_ok or gk in flags.gateways or flags.has_sensor(gk, ctx.sensor):
            device.device_clear(ctx, clock_ok, now)
        for br, pr in ctx.any_kind:
            device.out_of_range(br, pr, ctx, kind, value, quality, now)
        rules = ctx.by_kind.get(kind)
        if not rules:
            return
        x: Input | None = None
        for br, pr in rules:
            rule = br.rule
            if rule.check == "flatline":
                device.flatline(br, pr, ctx, kind, value, ts, now)
                continue
            if stale or quality == "error":
                continue
            eid = ctx.scope_id(rule.entity)
            if eid is None:
                continue
            if x is None:
                x = Input(value, ts, kind,
                          f"{ctx.county}/{ctx.farm}/{ctx.gateway}/{ctx.sensor}/{kind}", "", gk,
                          self.history, set())
            x.rule, x.params = rule, pr
            x.entity = f"{ctx.county}/{ctx.farm}/{rule.entity}:{eid}"
            self._threshold(br, pr, ctx, x, eid, now)

    def _threshold(self, br: BoundRule, pr: dict[str, float], ctx: Context, x: Input, eid: str,
                   now: float) -> None:
        rule = br.rule
        value = DERIVE[rule.value](x)
        if value is None:
            return
        if rule.entity in ("plot", "farm", "gateway") and rule.value not in NOT_AGGREGATED:
            value = self.history.aggregate(f"{br.key}|{ctx.county}/{ctx.farm}|{eid}",
                                           f"{ctx.gateway}/{ctx.sensor}", now, value)
        if rule.months is not None and datetime.fromtimestamp(now, ctx.tz).month not in rule.months:
            raise_holds, clear_holds = False, True
        else:
            assert rule.when is not None
            raise_holds = rule.when.holds(value)
            cc = rule.clear_cond
            clear_holds = cc.holds(value) if cc is not None else not raise_holds
        self.machine.observe(br, pr, ctx, rule.entity, eid, raise_holds, clear_holds, value,
                             {"reading": fmt(x.value, rule.decimals)}, now)
