"""The alert engine: rules on readings and gateway status, a state machine per
rule and entity, grouping, routing, quiet hours, budgets, escalation and
delivery.

The edge calls :meth:`AlertEngine.on_readings` and :meth:`AlertEngine.on_status`
on its event loop once readings are durable; they only update memory and wake
the engine's own task, :meth:`AlertEngine.run`, which does everything slow:
timers (silence, offline, pending durations, reminders, quiet-hour release),
writing state to SQLite, and handing messages to the notifier.

State machine per rule and entity::

    ok --raise cond--> pending --held `for`--> firing --clear cond--> clearing
     ^                   |                       ^                      |
     +---clear cond------+                       +---not clear cond-----+
     ^                                                                  |
     +------------------------- clear held `clear_for` (resolved) ------+

Between the raise and the clear condition (hysteresis band) nothing changes, so
a value flapping around the threshold raises once and stays raised.

Alerts of one family and one group scope (ten dry sensors in one plot, twenty
silent sensors on one gateway) form a group: one message when the first member
fires (another when a higher level of the family joins, e.g. severe drought
after dry), reminders after ``remind_after``, one message when the last member
clears. Time comes from an injected ``clock`` (epoch seconds), so tests run
hours of simulated time without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from farmedge.disk import is_disk_full
from farmedge.records import Accepted, AcceptedReading, StatusEvent
from farmedge.registry import Contact, Farm, GatewayEntry, Registry, SensorMeta

from .errors import AlertsError, DeliveryFailed
from .notify import SMS_SCHEMES, Notifier, scheme_of
from .record import AlertEvent, Recorder
from .rules import REMIND_PREFIX, SEVERITY_RANK, BoundRule, Rule, RuleSet
from .settings import AlertsSettings
from .store import StateStore
from .templates import fit_sms, render, title_for

__all__ = ["AlertEngine", "check_registry", "parse_quiet_hours"]

log = logging.getLogger("farmedge.alerts")

_RAW_MAX_S = 6 * 3600.0          # raw points kept for short windows
_FRESH_S = 2 * 3600.0            # latest values that count in a plot/farm aggregate
_THI_PAIR_S = 1800.0             # temperature and humidity at most this far apart
_HISTORY_SAVE_S = 300.0          # how often hourly history goes to disk (real seconds)
_SILENCE_CHECK_S = 10.0         # silence and offline checks at most this often (clock s)
_NO_PLAN = object()
_STATUS_CHECKS = ("gateway_offline", "sensor_silent", "clock_unsynced", "outbox_backlog")

GKey = tuple[str, str, str]          # county, farm, gateway
SKey = tuple[str, str, str, str]     # county, farm, gateway, sensor


def parse_quiet_hours(spec: str) -> tuple[dtime, dtime]:
    """``"21:00-07:00"`` -> (start, end) local times."""
    try:
        a, b = (s.strip() for s in spec.split("-", 1))
        return dtime.fromisoformat(a), dtime.fromisoformat(b)
    except ValueError:
        raise AlertsError(f"quiet_hours {spec!r} is not HH:MM-HH:MM") from None


def check_registry(rules: RuleSet, registry: Registry | None, *,
                   where: Callable[[tuple[int | str, ...]], str] | None = None) -> None:
    """Every profile the registry names exists; quiet hours and time zones
    parse. Raises AlertsError listing each problem. ``where`` turns a
    location in the registry (``("farms", 0, "profile")``) into a prefix for
    the message, such as ``"registry.yaml:7: "``."""
    if registry is None:
        return
    problems: list[str] = []

    def at(loc: tuple[int | str, ...]) -> str:
        return where(loc) if where is not None else ""

    def prof(loc: tuple[int | str, ...], what: str, name: str | None) -> None:
        if name is not None and name not in rules.profiles:
            problems.append(f"{at(loc)}{what}: profile {name!r} is not defined "
                            f"(known: {', '.join(sorted(rules.profiles))})")

    def contacts(loc: tuple[int | str, ...], what: str, cs: Sequence[Contact]) -> None:
        for j, c in enumerate(cs):
            if c.quiet_hours:
                try:
                    parse_quiet_hours(c.quiet_hours)
                except AlertsError as exc:
                    problems.append(f"{at((*loc, j, 'quiet_hours'))}{what} contact {c.name}: "
                                    f"{exc}")

    for i, f in enumerate(registry.farms):
        base = f"farm {f.county}/{f.farm}"
        prof(("farms", i, "profile"), base, f.profile)
        try:
            ZoneInfo(f.timezone)
        except Exception:
            problems.append(f"{at(('farms', i, 'timezone'))}{base}: unknown timezone "
                            f"{f.timezone!r}")
        for pid, p in f.plots.items():
            prof(("farms", i, "plots", pid, "profile"), f"{base} plot {pid}", p.profile)
        for hid, h in f.herds.items():
            prof(("farms", i, "herds", hid, "profile"), f"{base} herd {hid}", h.profile)
        for gid, g in f.gateways.items():
            prof(("farms", i, "gateways", gid, "profile"), f"{base} gateway {gid}", g.profile)
        contacts(("farms", i, "contacts"), base, f.contacts)
    contacts(("center_contacts",), "center", registry.center_contacts)
    if problems:
        raise AlertsError("\n".join(problems))


# --------------------------------------------------------------------------- state


@dataclass(slots=True)
class _State:
    rule: str
    county: str
    farm: str
    etype: str
    eid: str
    group: str
    status: str = "pending"          # pending | firing | clearing
    since: float = 0.0
    holding: bool = True
    fired_at: float | None = None
    clear_since: float | None = None
    value: float = 0.0
    vars: dict[str, str] = field(default_factory=dict)
    family: str = ""
    stype: str = ""
    sid: str = ""
    gwhere: str = ""


@dataclass(slots=True)
class _Group:
    key: str
    county: str
    farm: str
    family: str
    stype: str
    sid: str
    where: str
    members: list[str] = field(default_factory=list)
    level: list[int] | None = None           # (severity rank, rule index) last raised
    rule: str | None = None                  # rule of the last raise
    severity: str = "warning"
    audience: list[str] = field(default_factory=list)
    raised_at: float | None = None
    critical_since: float | None = None
    last_sent: float | None = None
    escalated: bool = False
    suppressed: bool = False
    count: int = 0
    last_vars: dict[str, str] = field(default_factory=dict)
    last_value: float | None = None
    dirty: bool = True


@dataclass(slots=True)
class _Ctx:
    county: str
    farm: str
    gateway: str
    sensor: str
    farm_obj: Farm | None
    gw_obj: GatewayEntry | None
    meta: SensorMeta | None
    plot: str | None
    animal: str | None
    tz: ZoneInfo
    by_kind: dict[str, list[tuple[BoundRule, dict[str, float]]]]
    any_kind: list[tuple[BoundRule, dict[str, float]]]      # out_of_range checks
    status: list[tuple[BoundRule, dict[str, float]]]        # status / timer checks
    #: kind -> (plausible low, high, [(tolerance, window, flat state)]) or None
    fast: dict[str, Any] = field(default_factory=dict)
    #: (kind, flatline rule) -> [last value, since when]
    flat: dict[tuple[str, str], list[float]] = field(default_factory=dict)


def _fmt(v: float | None, decimals: int) -> str:
    if v is None or not math.isfinite(v):
        return "?"
    s = f"{v:.{decimals}f}"
    return s.lstrip("-") if float(s) == 0 else s


class AlertEngine:
    """Implements :class:`farmedge.edge.events.Observer`; ``run()`` is its task."""

    def __init__(self, *, rules: RuleSet, registry: Registry | None, notifier: Notifier,
                 state_path: Path | str = ":memory:", recorders: Sequence[Recorder] = (),
                 settings: AlertsSettings | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        check_registry(rules, registry)
        s = settings or AlertsSettings()
        for name in [s.default_profile, *s.crop_profiles.values()]:
            if name is not None and name not in rules.profiles:
                raise AlertsError(f"[alerts] profile {name!r} is not defined")
        self.rules = rules
        self.registry = registry
        self.notifier = notifier
        self.recorders = list(recorders)
        self.settings = s
        self.clock = clock
        self._store = StateStore(state_path)
        #: True while the state cannot be written for lack of disk space.
        self.disk_full = False
        self._index = registry.index() if registry is not None else {}
        self._rule_index: dict[str, tuple[Rule, int]] = {}
        for pname, p in rules.profiles.items():
            for i, r in enumerate(p.rules):
                self._rule_index[f"{pname}/{r.id}"] = (r, i)
        self._ctx_cache: dict[tuple[str, ...], _Ctx] = {}
        self._states: dict[str, _State] = {}
        self._groups: dict[str, _Group] = {}
        self._outbox: dict[str, dict[str, Any]] = {}
        self._budget: dict[str, int] = {}
        self._hourly: dict[str, dict[int, list[float]]] = {}
        self._raw: dict[str, deque[tuple[float, float]]] = {}
        self._latest: dict[str, dict[str, tuple[float, float]]] = {}
        self._flat_states: set[tuple[SKey, str]] = set()
        self._bad: dict[tuple[SKey, str], deque[float]] = {}
        #: gateways and sensors with a device state (offline, silent, clock, ...)
        self._flagged: set[tuple[str, ...]] = set()
        self._flagged_gw: set[str] = set()     # gateway ids, for the fast path
        self._last_silence_check = float("-inf")
        self._changed = False
        self._air: dict[GKey, dict[str, tuple[float, float]]] = {}
        self._base_cache: dict[str, tuple[int, float | None]] = {}
        self._seen_gw: dict[GKey, float] = {}
        self._seen_sensor: dict[SKey, float] = {}
        self._gw_will: set[GKey] = set()
        self._dirty: dict[str, dict[str, Any]] = {t: {} for t in
                                                  ("states", "groups", "outbox", "budget",
                                                   "history")}
        self._dirty_history: set[str] = set()
        self._history_saved = time.monotonic()
        self._early: deque[tuple[str, Any]] = deque(maxlen=100_000)
        self._loaded = False
        self._wake: asyncio.Event | None = None
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._sent_times: dict[str, deque[float]] = {}
        self._next_id = 0
        self._started = 0.0
        self._task: asyncio.Task[None] | None = None
        self.stats: dict[str, int] = {
            "readings": 0, "status": 0, "stale": 0, "raised": 0, "cleared": 0,
            "delivered": 0, "failed": 0, "suppressed": 0, "held": 0, "dropped_early": 0,
        }
        #: Called with (delivery, now) just before the notifier (benchmark hook).
        self.on_dispatch: Callable[[dict[str, Any], float], None] | None = None

    # ------------------------------------------------------------ observer API

    def on_accepted(self, records: Sequence[Accepted]) -> None:
        readings: list[AcceptedReading] = []
        for rec in records:
            readings.extend(rec.each())
        self.on_readings(readings)

    def on_readings(self, readings: Sequence[AcceptedReading]) -> None:
        if not self._loaded:
            if len(self._early) == self._early.maxlen:
                self.stats["dropped_early"] += 1
            self._early.append(("r", list(readings)))
            return
        now = self.clock()
        self.stats["readings"] += len(readings)
        # Fast path for the common case: a reading whose kind has only device
        # checks (flatline, plausible range) on a sensor and gateway with no
        # device alert, quality ok, clock synced. Everything else takes
        # _reading, which does the full work.
        seen = self._seen_sensor
        cache = self._ctx_cache
        flagged = self._flagged
        flagged_gw = self._flagged_gw
        slow = self._reading
        for r in readings:
            sk: SKey = r[:4]                # county, farm, gateway, sensor
            if sk in flagged or r.gateway in flagged_gw or r.quality != "ok" \
                    or not r.clock_ok:
                slow(r, now)
                continue
            tags = r.tags
            ctx = cache.get((*sk, tags.get("plot") or "", tags.get("animal") or "")
                            if tags else sk)
            if ctx is None:
                slow(r, now)
                continue
            plan = ctx.fast.get(r.kind, _NO_PLAN)
            if plan is _NO_PLAN:
                plan = ctx.fast[r.kind] = self._fast_plan(ctx, r.kind)
            if plan is None:
                slow(r, now)
                continue
            lo, hi, flats = plan
            v = r.value
            if not lo <= v <= hi:
                slow(r, now)
                continue
            seen[sk] = now
            ts = r.ts_ms / 1000.0
            for tol, window, st in flats:   # st: this sensor's [value, since]
                if abs(v - st[0]) > tol:
                    st[0] = v
                    st[1] = ts
                elif ts - st[1] >= window:
                    slow(r, now)
                    break
        if self._changed:       # an alert fired or resolved: act now, not at the tick
            self._changed = False
            self._poke()

    def on_status(self, event: StatusEvent) -> None:
        if not self._loaded:
            self._early.append(("s", event))
            return
        self._status(event, self.clock())
        self._poke()

    def wake(self) -> None:
        """Run a pass now (after advancing a simulated clock)."""
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # ------------------------------------------------------------ context

    def _ctx(self, county: str, farm: str, gateway: str, sensor: str,
             plot: str | None, animal: str | None) -> _Ctx:
        plot_in, animal_in = plot, animal
        key = (county, farm, gateway, sensor, plot or "", animal or "")
        c = self._ctx_cache.get(key)
        if c is not None:
            return c
        hit = self._index.get((county, farm, gateway))
        f: Farm | None
        ge: GatewayEntry | None
        if hit is not None:
            f, ge = hit
        else:
            f = self.registry.farm(county, farm) if self.registry is not None else None
            ge = None
        meta = ge.sensors.get(sensor) if ge is not None else None
        if meta is not None:
            plot = plot or meta.plot
            animal = animal or meta.animal
        profile: str | None = None
        over: dict[str, float] = {}
        if f is not None:
            if animal:
                for h in f.herds.values():
                    if animal in h.animals:
                        profile = h.profile
                        over.update(h.params)
                        break
            p = f.plots.get(plot) if plot else None
            if p is not None:
                if p.field_capacity is not None:
                    over["field_capacity"] = p.field_capacity
                if p.wilting_point is not None:
                    over["wilting_point"] = p.wilting_point
                over.update(p.params)
                if profile is None:
                    profile = p.profile
            if profile is None and ge is not None:
                profile = ge.profile
            if profile is None:
                profile = f.profile
            if profile is None:
                crop = (p.crop if p is not None else None) or (meta.crop if meta else None)
                if crop is not None:
                    profile = self.settings.crop_profiles.get(crop)
        if profile is None:
            profile = self.settings.default_profile
        brs: list[BoundRule] = []
        if profile is not None and profile in self.rules.profiles:
            brs.extend(self.rules.rules_of(profile))
        if "device" in self.rules.profiles and profile != "device":
            brs.extend(self.rules.rules_of("device"))
        by_kind: dict[str, list[tuple[BoundRule, dict[str, float]]]] = {}
        any_kind: list[tuple[BoundRule, dict[str, float]]] = []
        status: list[tuple[BoundRule, dict[str, float]]] = []
        for br in brs:
            pr = {**br.params, **over, **br.rule.params}
            item = (br, pr)
            if br.rule.check in _STATUS_CHECKS:
                status.append(item)
            elif br.rule.check == "out_of_range":
                any_kind.append(item)
            else:
                for k in br.rule.kind:
                    by_kind.setdefault(k, []).append(item)
        tz = ZoneInfo(f.timezone) if f is not None else ZoneInfo("Asia/Shanghai")
        c = _Ctx(county, farm, gateway, sensor, f, ge, meta, plot, animal, tz, by_kind, any_kind,
                 status)
        self._ctx_cache[key] = c
        if not plot_in and not animal_in:
            self._ctx_cache[(county, farm, gateway, sensor)] = c
        return c

    def _where(self, ctx: _Ctx, stype: str, sid: str) -> str:
        f = ctx.farm_obj
        if stype == "plot" and f is not None and sid in f.plots:
            return f.plots[sid].name or sid
        if stype == "farm":
            return (f.name if f is not None else None) or ctx.farm
        if stype == "sensor":
            return sid.split("/", 1)[-1]
        return sid

    @staticmethod
    def _scope_id(ctx: _Ctx, scope: str) -> str | None:
        if scope == "sensor":
            return f"{ctx.gateway}/{ctx.sensor}"
        if scope == "plot":
            return ctx.plot
        if scope == "animal":
            return ctx.animal
        if scope == "gateway":
            return ctx.gateway
        return ctx.farm

    # ------------------------------------------------------------ readings

    def _reading(self, r: AcceptedReading, now: float) -> None:
        # The hot path: keep the common case (no device alert on this sensor
        # or gateway, nothing out of range) to a few dict operations.
        sk = (r.county, r.farm, r.gateway, r.sensor)
        gk = (r.county, r.farm, r.gateway)
        self._seen_sensor[sk] = now
        self._seen_gw[gk] = now
        tags = r.tags
        if tags:
            ctx = self._ctx(r.county, r.farm, r.gateway, r.sensor, tags.get("plot"),
                            tags.get("animal"))
        else:
            ctx = self._ctx_cache.get(sk) or self._ctx(r.county, r.farm, r.gateway, r.sensor,
                                                       None, None)
        ts = r.ts_ms / 1000.0 if r.clock_ok else now
        stale = now - ts > self.settings.max_reading_age_s
        if stale:
            self.stats["stale"] += 1
        # Device status carried by telemetry: the gateway is up, this sensor
        # speaks. Only entities that have a device state need a look.
        if gk in self._flagged or sk in self._flagged or not r.clock_ok:
            self._device_clear(r, ctx, gk, sk, now)
        seen_series: set[str] | None = None
        for br, pr in ctx.any_kind:
            self._out_of_range(br, pr, ctx, r, sk, now)
        rules = ctx.by_kind.get(r.kind)
        if rules:
            for br, pr in rules:
                rule = br.rule
                if rule.check == "flatline":
                    self._flatline(br, pr, ctx, r, sk, ts, now)
                    continue
                if stale or r.quality == "error":
                    continue
                if seen_series is None:
                    seen_series = set()
                self._threshold(br, pr, ctx, r, ts, now, seen_series)

    def _fast_plan(self, ctx: _Ctx, kind: str
                   ) -> tuple[float, float, list[tuple[float, float, list[float]]]] | None:
        """What the fast path checks for this kind, or None when it has rules
        that need the full path (thresholds, derived values). Flatline state
        lives in the sensor's context, shared with :meth:`_flatline`."""
        flats: list[tuple[float, float, list[float]]] = []
        for br, pr in ctx.by_kind.get(kind, []):
            if br.rule.check != "flatline":
                return None
            st = ctx.flat.setdefault((kind, br.key), [math.inf, 0.0])
            flats.append((pr.get("tolerance", 0.0), br.rule.window or 43200.0, st))
        lo, hi = -math.inf, math.inf
        for br, _pr in ctx.any_kind:
            rng = br.rule.plausible.get(kind)
            if rng is not None:
                lo, hi = max(lo, rng[0]), min(hi, rng[1])
        return lo, hi, flats

    def _device_clear(self, r: AcceptedReading, ctx: _Ctx, gk: GKey, sk: SKey,
                      now: float) -> None:
        found = False
        for br, pr in ctx.status:
            chk = br.rule.check
            if chk == "gateway_offline" and gk not in self._gw_will:
                if self._observe_if_present(br, ctx, "gateway", r.gateway, now):
                    found = True
                    self._refresh_sensors(gk, now)
            elif chk == "sensor_silent":
                found |= self._observe_if_present(br, ctx, "sensor", f"{r.gateway}/{r.sensor}",
                                                  now)
            elif chk == "clock_unsynced":
                if not r.clock_ok:
                    found = True
                    self._observe(br, pr, ctx, "gateway", r.gateway, True, False, 0.0, {}, now)
                else:
                    found |= self._observe_if_present(br, ctx, "gateway", r.gateway, now)
        if not found and not any(k[0] == sk for k in self._flat_states) and \
                not any(k[0] == sk for k in self._bad):
            self._flagged.discard(gk)
            self._flagged.discard(sk)
            self._flagged_gw.discard(r.gateway)

    def _history(self, skey: str, ts: float, v: float, exclude_below: float | None,
                 base: float | None = None) -> None:
        raw = self._raw.get(skey)
        if raw is None:
            raw = self._raw[skey] = deque()
        if not raw or ts >= raw[-1][0]:
            raw.append((ts, v))
        while raw and raw[0][0] < ts - _RAW_MAX_S:
            raw.popleft()
        if exclude_below is not None and base is not None and v < base - exclude_below:
            return
        h = int(ts // 3600)
        buckets = self._hourly.setdefault(skey, {})
        b = buckets.get(h)
        if b is None:
            buckets[h] = [v, 1.0]
        else:
            b[0] += v
            b[1] += 1
        self._dirty_history.add(skey)

    def _baseline(self, skey: str, ts: float, window: float, by_hour: bool,
                  min_h: float) -> float | None:
        h = int(ts // 3600)
        cached = self._base_cache.get(skey)
        if cached is not None and cached[0] == h:
            return cached[1]
        buckets = self._hourly.get(skey, {})
        lo = h - int(window // 3600)
        for k in [k for k in buckets if k < lo - 24]:
            del buckets[k]
        hours = [k for k in buckets if lo <= k < h]
        base: float | None = None
        if len(hours) >= min_h:
            sel = [k for k in hours if (k - h) % 24 == 0] if by_hour else hours
            n = sum(buckets[k][1] for k in sel)
            if n > 0:
                base = sum(buckets[k][0] for k in sel) / n
        self._base_cache[skey] = (h, base)
        return base

    def _threshold(self, br: BoundRule, pr: dict[str, float], ctx: _Ctx, r: AcceptedReading,
                   ts: float, now: float, seen_series: set[str]) -> None:
        rule = br.rule
        skey = f"{r.county}/{r.farm}/{r.gateway}/{r.sensor}/{r.kind}"
        eid = self._scope_id(ctx, rule.entity)
        if eid is None:
            return
        v = r.value
        value: float | None = v
        d = rule.value
        if d == "relative_moisture":
            fc = pr.get("field_capacity")
            value = 100.0 * v / fc if fc else None
        elif d == "depletion":
            fc, wp = pr.get("field_capacity"), pr.get("wilting_point")
            value = 100.0 * (fc - v) / (fc - wp) if fc and wp is not None and fc > wp else None
        elif d == "depth_cm":
            value = v / 100.0 * pr.get("gauge_span_cm", 100.0) - pr.get("gauge_zero_cm", 0.0)
        elif d in ("rate_per_h", "rolling_mean"):
            if skey not in seen_series:
                self._history(skey, ts, v, None)
                seen_series.add(skey)
            value = self._windowed(skey, d, rule.window or 3600.0, ts)
        elif d in ("baseline_delta", "baseline_ratio"):
            bkey = f"{ctx.county}/{ctx.farm}/{rule.entity}:{eid}/{r.kind}"
            base = self._baseline(bkey, ts, rule.window or 864000.0,
                                  bool(pr.get("baseline_by_hour", 0)),
                                  pr.get("baseline_min_h", 48.0))
            if bkey not in seen_series:
                self._history(bkey, ts, v, pr.get("baseline_exclude_below"), base)
                seen_series.add(bkey)
            if base is None:
                value = None
            elif d == "baseline_delta":
                value = v - base
            else:
                value = 100.0 * v / base if base > 0 else None
        elif d == "thi":
            gk = (ctx.county, ctx.farm, ctx.gateway)
            air = self._air.setdefault(gk, {})
            air[r.kind] = (ts, v)
            t, rh = air.get("air_temperature"), air.get("air_humidity")
            if t is None or rh is None or abs(t[0] - rh[0]) > _THI_PAIR_S:
                value = None
            else:
                value = 0.8 * t[1] + rh[1] / 100.0 * (t[1] - 14.4) + 46.4
        if value is None:
            return
        if rule.entity in ("plot", "farm", "gateway") and d != "thi":
            agg_key = f"{br.key}|{ctx.county}/{ctx.farm}|{eid}"
            latest = self._latest.setdefault(agg_key, {})
            latest[f"{ctx.gateway}/{ctx.sensor}"] = (now, value)
            vals = [x for t0, x in latest.values() if now - t0 <= _FRESH_S]
            value = sum(vals) / len(vals)
        if rule.months is not None and datetime.fromtimestamp(now, ctx.tz).month not in rule.months:
            raise_holds, clear_holds = False, True
        else:
            assert rule.when is not None
            raise_holds = rule.when.holds(value)
            cc = rule.clear_cond
            clear_holds = cc.holds(value) if cc is not None else not raise_holds
        self._observe(br, pr, ctx, rule.entity, eid, raise_holds, clear_holds, value,
                      {"reading": _fmt(v, rule.decimals)}, now)

    def _windowed(self, skey: str, d: str, window: float, ts: float) -> float | None:
        if window <= _RAW_MAX_S:
            raw = self._raw.get(skey)
            if not raw:
                return None
            pts = [(t, x) for t, x in raw if t >= ts - window]
            if not pts or ts - pts[0][0] < window / 2:
                return None
            if d == "rolling_mean":
                return sum(x for _, x in pts) / len(pts)
            t0, x0 = pts[0]
            t1, x1 = pts[-1]
            return (x1 - x0) / (t1 - t0) * 3600.0 if t1 > t0 else None
        buckets = self._hourly.get(skey, {})
        h = int(ts // 3600)
        lo = h - int(window // 3600)
        sel = [k for k in buckets if lo < k <= h]
        if not sel or h - min(sel) < window / 7200:
            return None
        if d == "rolling_mean":
            n = sum(buckets[k][1] for k in sel)
            return sum(buckets[k][0] for k in sel) / n
        a, b = min(sel), max(sel)
        if a == b:
            return None
        return (buckets[b][0] / buckets[b][1] - buckets[a][0] / buckets[a][1]) / (b - a)

    def _flatline(self, br: BoundRule, pr: dict[str, float], ctx: _Ctx, r: AcceptedReading,
                  sk: SKey, ts: float, now: float) -> None:
        st = ctx.flat.setdefault((r.kind, br.key), [math.inf, 0.0])
        if abs(r.value - st[0]) > pr.get("tolerance", 0.0):
            st[0] = r.value
            st[1] = ts
            if (sk, br.key) in self._flat_states:
                self._flat_states.discard((sk, br.key))
                self._observe_if_present(br, ctx, "sensor", f"{ctx.gateway}/{ctx.sensor}", now)
            return
        held = ts - st[1]
        if held >= (br.rule.window or 43200.0):
            self._flat_states.add((sk, br.key))
            self._observe(br, pr, ctx, "sensor", f"{ctx.gateway}/{ctx.sensor}", True, False,
                          r.value, {"hours": str(round(held / 3600)),
                                    "reading": _fmt(r.value, 1)}, now, decimals=1)

    def _out_of_range(self, br: BoundRule, pr: dict[str, float], ctx: _Ctx, r: AcceptedReading,
                      sk: SKey, now: float) -> None:
        rule = br.rule
        bad = r.quality == "error"
        rng = rule.plausible.get(r.kind)
        if rng is not None and not (rng[0] <= r.value <= rng[1]):
            bad = True
        bkey = (sk, br.key)
        if not bad and bkey not in self._bad:
            return
        eid = f"{ctx.gateway}/{ctx.sensor}"
        q = self._bad.get(bkey)
        if q is None:
            if not bad:
                return
            q = self._bad[bkey] = deque()
        if bad:
            q.append(now)
            self._flagged.add(sk)
        while q and q[0] < now - (rule.window or 3600.0):
            q.popleft()
        if bad and len(q) >= pr.get("count", 3):
            self._observe(br, pr, ctx, "sensor", eid, True, False, r.value,
                          {"reading": _fmt(r.value, 1)}, now, decimals=1)
        elif not q:
            del self._bad[bkey]
            self._observe_if_present(br, ctx, "sensor", eid, now)

    # ------------------------------------------------------------ status and timers

    def _status(self, ev: StatusEvent, now: float) -> None:
        self.stats["status"] += 1
        gk = (ev.county, ev.farm, ev.gateway)
        prev = max([self._seen_gw.get(gk, self._started),
                    *(t for k, t in self._seen_sensor.items() if k[:3] == gk)])
        ctx = self._ctx(ev.county, ev.farm, ev.gateway, "", None, None)
        st = ev.status
        if st.online:
            self._seen_gw[gk] = now
            was_down = gk in self._gw_will
            self._gw_will.discard(gk)
        else:
            self._gw_will.add(gk)
            was_down = False
        for br, pr in ctx.status:
            rule = br.rule
            if rule.check == "gateway_offline":
                if st.online:
                    if self._observe_if_present(br, ctx, "gateway", ev.gateway, now) or was_down:
                        self._refresh_sensors(gk, now)
                else:
                    mins = max(1, math.ceil((now - prev) / 60))
                    self._observe(br, pr, ctx, "gateway", ev.gateway, True, False, mins,
                                  {"minutes": str(mins)}, now)
            elif rule.check == "clock_unsynced" and st.clock is not None and st.online:
                key = self._state_key(br, ctx, "gateway", ev.gateway)
                held = self._states[key].since if key in self._states else now
                mins = max(1, math.ceil((now - held) / 60))
                unsynced = st.clock == "unsynced"
                self._observe(br, pr, ctx, "gateway", ev.gateway, unsynced, not unsynced, mins,
                              {"minutes": str(mins)}, now)
            elif rule.check == "outbox_backlog" and st.outbox_oldest_age_s is not None:
                hours = st.outbox_oldest_age_s / 3600.0
                assert rule.when is not None
                cc = rule.clear_cond
                assert cc is not None
                self._observe(br, pr, ctx, "gateway", ev.gateway, rule.when.holds(hours),
                              cc.holds(hours), hours, {}, now)

    def _refresh_sensors(self, gk: GKey, now: float) -> None:
        for sk in list(self._seen_sensor):
            if sk[:3] == gk:
                self._seen_sensor[sk] = max(self._seen_sensor[sk], now)

    def _known(self) -> tuple[set[GKey], set[SKey]]:
        # Readings on the fast path mark only their sensor: a gateway was last
        # heard when its last status or any of its sensors' readings came.
        for sk, t in self._seen_sensor.items():
            gk = sk[:3]
            if t > self._seen_gw.get(gk, -math.inf):
                self._seen_gw[gk] = t
        gws: set[GKey] = set(self._seen_gw) | self._gw_will
        sensors: set[SKey] = set(self._seen_sensor)
        for (c, f, g), (_farm, ge) in self._index.items():
            gws.add((c, f, g))
            for s in ge.sensors:
                sensors.add((c, f, g, s))
        return gws, sensors

    def _timers(self, now: float) -> None:
        for key, st in list(self._states.items()):
            if key not in self._states:
                continue
            rule = self._rule_index[st.rule][0]
            if st.status == "pending" and st.holding and now - st.since >= rule.for_:
                self._fire(key, st, now)
            elif st.status == "clearing" and st.clear_since is not None and \
                    now - st.clear_since >= rule.clear_for:
                self._resolve(key, st, now)
        if 0 <= now - self._last_silence_check < _SILENCE_CHECK_S:
            return
        self._last_silence_check = now
        gws, sensors = self._known()
        down: set[GKey] = set(self._gw_will)
        for gk in gws:
            ctx = self._ctx(gk[0], gk[1], gk[2], "", None, None)
            for br, pr in ctx.status:
                if br.rule.check != "gateway_offline":
                    continue
                key = self._state_key(br, ctx, "gateway", gk[2])
                if key in self._states:
                    down.add(gk)
                if gk in self._gw_will:
                    continue
                interval = (ctx.gw_obj.interval_s if ctx.gw_obj and ctx.gw_obj.interval_s
                            else pr.get("default_interval_s", 600.0))
                silence = now - self._seen_gw.get(gk, self._started)
                if silence > pr.get("intervals", 3.0) * interval:
                    mins = math.ceil(silence / 60)
                    self._observe(br, pr, ctx, "gateway", gk[2], True, False, mins,
                                  {"minutes": str(mins)}, now)
                    down.add(gk)
        for sk in sensors:
            if sk[:3] in down:
                continue
            ctx = self._ctx(sk[0], sk[1], sk[2], sk[3], None, None)
            for br, pr in ctx.status:
                if br.rule.check != "sensor_silent":
                    continue
                interval = ((ctx.meta.interval_s if ctx.meta and ctx.meta.interval_s else None)
                            or (ctx.gw_obj.interval_s if ctx.gw_obj and ctx.gw_obj.interval_s
                                else None)
                            or pr.get("default_interval_s", 600.0))
                silence = now - self._seen_sensor.get(sk, self._started)
                if silence > pr.get("intervals", 3.0) * interval:
                    mins = math.ceil(silence / 60)
                    self._observe(br, pr, ctx, "sensor", f"{sk[2]}/{sk[3]}", True, False, mins,
                                  {"minutes": str(mins)}, now)

    # ------------------------------------------------------------ state machine

    def _state_key(self, br: BoundRule, ctx: _Ctx, etype: str, eid: str) -> str:
        return f"{br.key}|{ctx.county}/{ctx.farm}|{etype}:{eid}"

    def _observe_if_present(self, br: BoundRule, ctx: _Ctx, etype: str, eid: str,
                            now: float) -> bool:
        """The clear condition holds (device checks): act only if a state exists."""
        key = self._state_key(br, ctx, etype, eid)
        st = self._states.get(key)
        if st is None:
            return False
        self._step(key, st, br.rule, False, True, now)
        return True

    def _observe(self, br: BoundRule, pr: dict[str, float], ctx: _Ctx, etype: str, eid: str,
                 raise_holds: bool, clear_holds: bool, value: float, extra: dict[str, str],
                 now: float, *, decimals: int | None = None) -> None:
        key = self._state_key(br, ctx, etype, eid)
        st = self._states.get(key)
        rule = br.rule
        if st is None:
            if not raise_holds:
                return
            stype: str = rule.scope
            sid = eid if stype == etype else self._scope_id(ctx, stype)
            if sid is None:            # e.g. group by plot, but the sensor has none
                stype, sid = etype, eid
            family = rule.family or br.key
            gkey = f"{ctx.county}/{ctx.farm}|{family}|{stype}:{sid}"
            if rule.check is not None:
                if etype == "gateway":
                    self._flagged.add((ctx.county, ctx.farm, eid))
                    self._flagged_gw.add(eid)
                elif etype == "sensor":
                    self._flagged.add((ctx.county, ctx.farm, *eid.split("/", 1)))
            st = _State(br.key, ctx.county, ctx.farm, etype, eid, gkey, since=now,
                        family=family, stype=stype, sid=sid,
                        gwhere=self._where(ctx, stype, sid))
            st.vars["where"] = self._where(ctx, etype, eid)
            st.vars["farm"] = self._where(ctx, "farm", ctx.farm)
            self._states[key] = st
        dec = rule.decimals if decimals is None else decimals
        st.value = value
        st.vars.update(extra)
        st.vars["value"] = _fmt(value, dec)
        if rule.when is not None:
            st.vars["threshold"] = _fmt(rule.when.threshold, dec)
        if rule.target is not None:
            lo, hi = rule.target
            if rule.target_of is not None:
                base = pr.get(rule.target_of)
                if base:
                    lo, hi = lo * base / 100.0, hi * base / 100.0
            st.vars["low"] = _fmt(lo, dec)
            st.vars["high"] = _fmt(hi, dec)
        if "minutes" not in extra and st.status != "pending":
            held = now - (st.fired_at or st.since)
            st.vars["minutes"] = str(max(1, round(held / 60)))
            st.vars["hours"] = st.vars.get("hours") or str(round(held / 3600))
        self._step(key, st, rule, raise_holds, clear_holds, now)

    def _step(self, key: str, st: _State, rule: Rule, raise_holds: bool, clear_holds: bool,
              now: float) -> None:
        prev = st.status
        if st.holding != raise_holds or st.since == now:
            self._dirty["states"][key] = st     # new, or its holding changed
        st.holding = raise_holds
        self._step_status(key, st, rule, raise_holds, clear_holds, now)
        if st.status != prev and key in self._states:
            self._dirty["states"][key] = st

    def _step_status(self, key: str, st: _State, rule: Rule, raise_holds: bool,
                     clear_holds: bool, now: float) -> None:
        if st.status == "pending":
            if clear_holds and not raise_holds:
                del self._states[key]
                self._dirty["states"][key] = None
            elif raise_holds and now - st.since >= rule.for_:
                self._fire(key, st, now)
        elif st.status == "firing":
            if clear_holds and not raise_holds:
                if rule.clear_for <= 0:
                    self._resolve(key, st, now)
                else:
                    st.status = "clearing"
                    st.clear_since = now
        elif st.status == "clearing":
            if not clear_holds or raise_holds:
                st.status = "firing"
                st.clear_since = None
            elif st.clear_since is not None and now - st.clear_since >= rule.clear_for:
                self._resolve(key, st, now)

    def _fire(self, key: str, st: _State, now: float) -> None:
        st.status = "firing"
        st.fired_at = now
        self._changed = True
        self.stats["raised"] += 1
        self._dirty["states"][key] = st
        g = self._groups.get(st.group)
        if g is None:
            g = self._groups[st.group] = _Group(st.group, st.county, st.farm, st.family,
                                                st.stype, st.sid, st.gwhere)
        if key not in g.members:
            g.members.append(key)
        g.dirty = True

    def _resolve(self, key: str, st: _State, now: float) -> None:
        self.stats["cleared"] += 1
        self._changed = True
        del self._states[key]
        self._dirty["states"][key] = None
        g = self._groups.get(st.group)
        if g is None:
            return
        if key in g.members:
            g.members.remove(key)
        g.last_vars = dict(st.vars)
        g.last_value = st.value
        g.dirty = True

    # ------------------------------------------------------------ groups -> events

    def _level(self, rule_key: str) -> list[int]:
        rule, idx = self._rule_index[rule_key]
        return [SEVERITY_RANK[rule.severity], idx]

    def _groups_pass(self, now: float) -> None:
        for gkey, g in list(self._groups.items()):
            members = [self._states[k] for k in g.members if k in self._states]
            if members:
                top = max(members, key=lambda s: self._level(s.rule))
                rule = self._rule_index[top.rule][0]
                lvl = self._level(top.rule)
                if g.level is None or lvl > g.level:
                    same = [m for m in members if m.rule == top.rule]
                    worst = top
                    if rule.when is not None:
                        pick = max if rule.when.rising else min
                        worst = pick(same, key=lambda s: s.value)
                    first = g.level is None
                    g.level, g.rule, g.severity = lvl, top.rule, rule.severity
                    g.audience = list(rule.audience)
                    g.count = len(members)
                    g.raised_at = g.raised_at or now
                    if rule.severity == "critical":
                        g.critical_since = g.critical_since or now
                    g.last_sent = now
                    # The first raise is "raise"; a higher level of the family
                    # joining later (severe drought after dry) is "worse".
                    self._emit(g, "raise" if first else "worse", worst, now)
                elif g.rule is not None:
                    rule = self._rule_index[g.rule][0]
                    if rule.remind_after and g.last_sent is not None and \
                            now - g.last_sent >= rule.remind_after:
                        g.last_sent = now
                        self._emit(g, "remind", top, now)
                    if rule.severity == "critical" and rule.escalate_after and not g.escalated \
                            and g.critical_since is not None and \
                            now - g.critical_since >= rule.escalate_after:
                        g.escalated = True
                        self._emit(g, "escalate", top, now)
                self._dirty["groups"][gkey] = g
            else:
                if g.level is not None:
                    self._emit(g, "clear", None, now)
                del self._groups[gkey]
                self._dirty["groups"][gkey] = None
            g.dirty = False

    def _texts(self, g: _Group, variant: str, vars_: dict[str, str]) -> dict[str, str]:
        """Texts in both languages. ``{where}`` names the group's scope (the plot
        of ten dry sensors); a template with a ``*_many`` form names the single
        entity in its one-member text (one silent sensor vs. its gateway)."""
        assert g.rule is not None
        rule = self._rule_index[g.rule][0]
        t = self.rules.templates[rule.template]
        many = g.count > 1
        base = "clear" if variant == "clear" else "raise"
        v = dict(vars_)
        v["count"] = str(g.count)
        has_many = (t.raise_many if base == "raise" else t.clear_many) is not None
        if many or not has_many:
            v["where"] = g.where
        name = f"{base}_many" if many and has_many else base
        out = {lang: render(t, name, lang, v) for lang in ("zh", "en")}
        if variant == "remind":
            out = {lang: REMIND_PREFIX[lang] + txt for lang, txt in out.items()}
        return out

    def _emit(self, g: _Group, event: str, st: _State | None, now: float) -> None:
        vars_ = dict(st.vars) if st is not None else dict(g.last_vars)
        texts = self._texts(g, "clear" if event == "clear" else
                            ("remind" if event == "remind" else "raise"), vars_)
        value = st.value if st is not None else g.last_value
        entities = tuple(self._states[k].eid for k in g.members if k in self._states)
        self._record(g, event, now, value=value, texts=texts, entities=entities)
        # Recipients.
        recipients: list[tuple[Contact, bool]] = []   # (contact, is farm contact)
        f = self.registry.farm(g.county, g.farm) if self.registry is not None else None
        if event == "escalate":
            if self.registry is not None:
                recipients = [(c, False) for c in self.registry.center_contacts if c.agronomist]
        else:
            if "farm" in g.audience and f is not None:
                recipients += [(c, True) for c in f.contacts]
            if "center" in g.audience and self.registry is not None:
                recipients += [(c, False) for c in self.registry.center_contacts]
        if not recipients:
            return
        critical = g.severity == "critical" and event in ("raise", "worse", "remind", "escalate")
        # Daily budget per farm (critical messages are neither limited nor counted).
        if any(is_farm for _, is_farm in recipients):
            if event == "clear" and g.suppressed:
                recipients = [(c, x) for c, x in recipients if not x]
            elif event in ("raise", "worse", "remind") and not critical:
                budget = f.daily_message_budget if f is not None else 10
                tz = ZoneInfo(f.timezone) if f is not None else ZoneInfo("Asia/Shanghai")
                day = f"{g.county}/{g.farm}/{datetime.fromtimestamp(now, tz).date().isoformat()}"
                used = self._budget.get(day, 0)
                if used >= budget:
                    self.stats["suppressed"] += 1
                    if event == "raise":
                        g.suppressed = True
                    self._record(g, "suppressed", now, value=value, texts=texts,
                                 error=f"daily budget of {budget} messages used")
                    recipients = [(c, x) for c, x in recipients if not x]
                else:
                    self._budget[day] = used + 1
                    self._dirty["budget"][day] = used + 1
                    if event == "raise":
                        g.suppressed = False
        farm_name = (f.name if f is not None else None) or g.farm
        for c, _is_farm in recipients:
            lang = c.language
            due = now
            if c.quiet_hours and not critical:
                due = self._quiet_release(c.quiet_hours, now, f)
            for url in c.notify:
                if event == "clear" and self._drop_held(g.key, c.name, url, now):
                    continue
                body = texts.get(lang) or texts["zh"]
                if event == "escalate":
                    body = f"{farm_name}: {body}"
                if scheme_of(url) in SMS_SCHEMES:
                    body = fit_sms(body, lang)
                self._next_id += 1
                did = f"{now:017.3f}-{self._next_id:08d}"
                d = {
                    "id": did, "due": due, "url": url, "contact": c.name, "lang": lang,
                    "title": title_for(lang, g.severity if event != "clear" else "info",
                                       farm_name),
                    "body": body, "group": g.key, "event": event, "attempts": 0,
                    "county": g.county, "farm": g.farm, "rule": g.rule, "family": g.family,
                    "severity": g.severity, "scope": g.stype, "scope_id": g.sid,
                    "count": g.count, "value": value, "created": now,
                }
                self._outbox[did] = d
                self._dirty["outbox"][did] = d
                if due > now:
                    self.stats["held"] += 1
                    self._record_delivery(d, "held", now)

    def _drop_held(self, gkey: str, contact: str, url: str, now: float) -> bool:
        """A clear for a raise still held (quiet hours): drop both."""
        held = [k for k, d in self._outbox.items()
                if d["group"] == gkey and d["contact"] == contact and d["url"] == url
                and d["event"] in ("raise", "worse", "remind") and d["due"] > now
                and k not in self._inflight]
        for k in held:
            d = self._outbox.pop(k)
            self._dirty["outbox"][k] = None
            self._record_delivery(d, "dropped", now, error="cleared before quiet hours ended")
        return bool(held)

    @staticmethod
    def _quiet_release(spec: str, now: float, f: Farm | None) -> float:
        start, end = parse_quiet_hours(spec)
        tz = ZoneInfo(f.timezone) if f is not None else ZoneInfo("Asia/Shanghai")
        local = datetime.fromtimestamp(now, tz)
        t = local.time()
        inside = (start <= t < end) if start < end else (t >= start or t < end)
        if not inside:
            return now
        release = local.replace(hour=end.hour, minute=end.minute, second=0, microsecond=0)
        if release <= local:
            release += timedelta(days=1)
        return release.timestamp()

    # ------------------------------------------------------------ recording

    def _record(self, g: _Group, event: str, now: float, *, value: float | None,
                texts: dict[str, str], entities: tuple[str, ...] = (), error: str = "") -> None:
        ev = AlertEvent(
            ts_ms=int(now * 1000), event=event, county=g.county, farm=g.farm,
            rule=g.rule or "", family=g.family, severity=g.severity, scope=g.stype,
            scope_id=g.sid, group=g.key, count=g.count, value=value, text=texts, error=error,
            entities=entities)
        self._publish(ev)

    def _record_delivery(self, d: dict[str, Any], event: str, now: float, *, error: str = "",
                         attempt: int = 0) -> None:
        ev = AlertEvent(
            ts_ms=int(now * 1000), event=event, county=d["county"], farm=d["farm"],
            rule=d["rule"], family=d["family"], severity=d["severity"], scope=d["scope"],
            scope_id=d["scope_id"], group=d["group"], count=d["count"], value=d["value"],
            text={d["lang"]: d["body"]}, contact=d["contact"], channel=scheme_of(d["url"]),
            attempt=attempt, error=error)
        self._publish(ev)

    def _publish(self, ev: AlertEvent) -> None:
        for r in self.recorders:
            try:
                r.record(ev)
            except Exception:  # a recorder must never stop alerting
                log.exception("alerts: recorder %r failed", r)

    # ------------------------------------------------------------ delivery

    def _dispatch(self, now: float) -> None:
        for did, d in sorted(self._outbox.items()):
            if did in self._inflight or d["due"] > now:
                continue
            limit = self.settings.rate_limits.get(scheme_of(d["url"]))
            if limit:
                sent = self._sent_times.setdefault(d["url"], deque())
                while sent and sent[0] <= now - 60.0:
                    sent.popleft()
                if len(sent) >= limit:
                    d["due"] = sent[0] + 60.0
                    self._dirty["outbox"][did] = d
                    continue
                sent.append(now)
            if self.on_dispatch is not None:
                self.on_dispatch(d, now)
            self._inflight[did] = asyncio.create_task(self._send(did, d))

    async def _send(self, did: str, d: dict[str, Any]) -> None:
        try:
            await self.notifier.send(d["url"], title=d["title"], body=d["body"])
        except DeliveryFailed as exc:
            now = self.clock()
            d["attempts"] += 1
            self.stats["failed"] += 1
            self._record_delivery(d, "failed", now, error=str(exc), attempt=d["attempts"])
            if d["attempts"] >= self.settings.max_attempts:
                log.warning("alerts: giving up on %s to %s after %d attempts: %s",
                            d["event"], d["contact"], d["attempts"], exc)
                self._outbox.pop(did, None)
                self._dirty["outbox"][did] = None
            else:
                delay = min(self.settings.backoff_s * 2 ** (d["attempts"] - 1),
                            self.settings.backoff_max_s)
                d["due"] = now + delay
                self._dirty["outbox"][did] = d
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("alerts: notifier raised")
            d["due"] = self.clock() + self.settings.backoff_s
            self._dirty["outbox"][did] = d
        else:
            now = self.clock()
            self.stats["delivered"] += 1
            d["attempts"] += 1
            self._record_delivery(d, "delivered", now, attempt=d["attempts"])
            self._outbox.pop(did, None)
            self._dirty["outbox"][did] = None
        finally:
            self._inflight.pop(did, None)
            self._poke()

    # ------------------------------------------------------------ persistence

    def _load(self) -> None:
        st = self._store
        st.open()
        for k, v in st.load("states").items():
            if v.get("rule") in self._rule_index:
                s = self._states[k] = _State(**v)
                rule = self._rule_index[s.rule][0]
                if rule.check is not None and s.etype == "gateway":
                    self._flagged.add((s.county, s.farm, s.eid))
                    self._flagged_gw.add(s.eid)
                elif rule.check is not None and s.etype == "sensor":
                    gw, _, sensor = s.eid.partition("/")
                    self._flagged.add((s.county, s.farm, gw, sensor))
                    if rule.check == "flatline":
                        self._flat_states.add(((s.county, s.farm, gw, sensor), s.rule))
        for k, v in st.load("groups").items():
            v["dirty"] = False
            g = _Group(**v)
            if g.rule is not None and g.rule not in self._rule_index:
                continue            # its rule left the rule files: forget it quietly
            g.members = [m for m in g.members if m in self._states]
            self._groups[k] = g
        self._outbox = st.load("outbox")
        self._budget = {k: int(v) for k, v in st.load("budget").items()}
        for k, v in st.load("history").items():
            self._hourly[k] = {int(h): b for h, b in v.items()}
        if self._outbox:
            self._next_id = len(self._outbox)

    def _commit(self, *, history: bool = False) -> None:
        changes: dict[str, dict[str, Any]] = {}
        for table, rows in self._dirty.items():
            if not rows:
                continue
            out: dict[str, Any] = {}
            for k, v in rows.items():
                if v is None:
                    out[k] = None
                elif table in ("states", "groups"):
                    out[k] = asdict(v)
                else:
                    out[k] = v
            changes[table] = out
        if history or time.monotonic() - self._history_saved > _HISTORY_SAVE_S:
            changes["history"] = {k: {str(h): b for h, b in self._hourly[k].items()}
                                  for k in self._dirty_history if k in self._hourly}
            self._dirty_history.clear()
            self._history_saved = time.monotonic()
        if changes:
            self._store.write(changes)
        for rows in self._dirty.values():
            rows.clear()

    # ------------------------------------------------------------ the task

    def _pass(self, now: float) -> None:
        while self._early:
            what, item = self._early.popleft()
            if what == "r":
                self.stats["readings"] += len(item)
                for r in item:
                    self._reading(r, now)
            else:
                self._status(item, now)
        self._timers(now)
        self._groups_pass(now)

    def _commit_or_hold(self) -> None:
        """Commit; on a full disk keep the changes in memory (they are
        written at a later tick) and say so in ``disk_full``."""
        try:
            self._commit()
        except (sqlite3.Error, OSError) as exc:
            if not is_disk_full(exc):
                raise
            if not self.disk_full:
                log.error("alerts: disk full, state kept in memory until there is room: %s",
                          exc)
            self.disk_full = True
            return
        if self.disk_full:
            log.warning("alerts: room again, state written")
            self.disk_full = False

    async def run(self) -> None:
        """Load state, then loop: timers, groups, commit, dispatch. Cancel to stop."""
        self._wake = asyncio.Event()
        await asyncio.to_thread(self._load)
        self._started = self.clock()
        self._loaded = True
        tasks = [asyncio.create_task(r.run()) for r in self.recorders]
        try:
            while True:
                self._wake.clear()
                now = self.clock()
                self._pass(now)
                self._commit_or_hold()
                self._dispatch(now)
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                # cancel that arrives just as the event is set.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.tick_s):
                        await self._wake.wait()
        finally:
            for t in list(self._inflight.values()):
                t.cancel()
            if self._inflight:
                await asyncio.gather(*self._inflight.values(), return_exceptions=True)
            with contextlib.suppress(Exception):
                self._commit(history=True)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._store.close()
            self._loaded = False

    async def start(self) -> None:
        """Start ``run()`` as a task and return once state is loaded (the edge
        calls this before it takes messages)."""
        if self._task is None:
            self._task = asyncio.create_task(self.run())
        task = self._task
        while not self._loaded:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        """Stop the task started by ``start()``: state is written, sends in
        flight are cancelled (their messages stay in the outbox)."""
        task, self._task = self._task, None
        if task is not None:
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=5)
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ------------------------------------------------------------ inspection

    def firing(self) -> list[tuple[str, str, str]]:
        """(rule, entity, status) of every alert not ok, for tools and tests."""
        return sorted((s.rule, f"{s.etype}:{s.eid}", s.status) for s in self._states.values())
