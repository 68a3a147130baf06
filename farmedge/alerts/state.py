"""The state machine per rule and entity, and the groups alerts fire into.

::

    ok --raise cond--> pending --held `for`--> firing --clear cond--> clearing
     ^                   |                       ^                      |
     +---clear cond------+                       +---not clear cond-----+
     ^                                                                  |
     +------------------------- clear held `clear_for` (resolved) ------+

Between the raise and the clear condition (hysteresis band) nothing changes,
so a value flapping around the threshold raises once and stays raised. A
firing state joins its group (family and group scope); :mod:`.route` turns
groups into messages. Field names of :class:`AlertState` and :class:`Group`
are the columns of the state file: keep them (``store.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .context import Context
from .rules import SEVERITY_RANK, BoundRule, Rule, RuleSet
from .store import Changes

__all__ = ["AlertState", "Flags", "Group", "StateMachine", "fmt"]

GKey = tuple[str, str, str]


def fmt(v: float | None, decimals: int) -> str:
    """A number for a message ("?" when there is none; no "-0")."""
    if v is None or not math.isfinite(v):
        return "?"
    s = f"{v:.{decimals}f}"
    return s.lstrip("-") if float(s) == 0 else s


@dataclass(slots=True)
class AlertState:
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
class Group:
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


class Flags:
    """Gateways and sensors with a device state (offline, silent, flatline,
    ...): their readings take the full path, which can clear it."""

    def __init__(self) -> None:
        self.gateways: set[GKey] = set()
        #: gateway -> its flagged sensors
        self.sensors: dict[GKey, set[str]] = {}

    def flag_gateway(self, gk: GKey) -> None:
        self.gateways.add(gk)

    def flag_sensor(self, gk: GKey, sensor: str) -> None:
        s = self.sensors.get(gk)
        if s is None:
            s = self.sensors[gk] = set()
        s.add(sensor)

    def clear(self, gk: GKey, sensor: str) -> None:
        self.gateways.discard(gk)
        s = self.sensors.get(gk)
        if s is not None:
            s.discard(sensor)
            if not s:
                del self.sensors[gk]

    def has_sensor(self, gk: GKey, sensor: str) -> bool:
        s = self.sensors.get(gk)
        return s is not None and sensor in s


class StateMachine:
    def __init__(self, rules: RuleSet, changes: Changes, stats: dict[str, int]) -> None:
        self.rules = rules
        self.changes = changes
        self.stats = stats
        self.states: dict[str, AlertState] = {}
        self.groups: dict[str, Group] = {}
        self.flags = Flags()
        #: an alert fired or resolved since the engine last looked
        self.changed = False
        self.rule_index: dict[str, tuple[Rule, int]] = {}
        for pname, p in rules.profiles.items():
            for i, r in enumerate(p.rules):
                self.rule_index[f"{pname}/{r.id}"] = (r, i)

    @staticmethod
    def key(br: BoundRule, ctx: Context, etype: str, eid: str) -> str:
        return f"{br.key}|{ctx.county}/{ctx.farm}|{etype}:{eid}"

    def level(self, rule_key: str) -> list[int]:
        rule, idx = self.rule_index[rule_key]
        return [SEVERITY_RANK[rule.severity], idx]

    def observe_if_present(self, br: BoundRule, ctx: Context, etype: str, eid: str,
                           now: float) -> bool:
        """The clear condition holds (device checks): act only if a state exists."""
        key = self.key(br, ctx, etype, eid)
        st = self.states.get(key)
        if st is None:
            return False
        self._step(key, st, br.rule, False, True, now)
        return True

    def observe(self, br: BoundRule, pr: Mapping[str, float], ctx: Context, etype: str,
                eid: str, raise_holds: bool, clear_holds: bool, value: float,
                extra: dict[str, str], now: float, *, decimals: int | None = None) -> None:
        key = self.key(br, ctx, etype, eid)
        st = self.states.get(key)
        rule = br.rule
        if st is None:
            if not raise_holds:
                return
            st = self._new(key, br, ctx, etype, eid, now)
        dec = rule.decimals if decimals is None else decimals
        st.value = value
        st.vars.update(extra)
        st.vars["value"] = fmt(value, dec)
        if rule.when is not None:
            st.vars["threshold"] = fmt(rule.when.threshold, dec)
        if rule.target is not None:
            lo, hi = rule.target
            if rule.target_of is not None:
                base = pr.get(rule.target_of)
                if base:
                    lo, hi = lo * base / 100.0, hi * base / 100.0
            st.vars["low"] = fmt(lo, dec)
            st.vars["high"] = fmt(hi, dec)
        if "minutes" not in extra and st.status != "pending":
            held = now - (st.fired_at or st.since)
            st.vars["minutes"] = str(max(1, round(held / 60)))
            st.vars["hours"] = st.vars.get("hours") or str(round(held / 3600))
        self._step(key, st, rule, raise_holds, clear_holds, now)

    def _new(self, key: str, br: BoundRule, ctx: Context, etype: str, eid: str,
             now: float) -> AlertState:
        rule = br.rule
        stype: str = rule.scope
        sid = eid if stype == etype else ctx.scope_id(stype)
        if sid is None:            # e.g. group by plot, but the sensor has none
            stype, sid = etype, eid
        family = rule.family or br.key
        gkey = f"{ctx.county}/{ctx.farm}|{family}|{stype}:{sid}"
        if rule.check is not None:
            self._flag(ctx.county, ctx.farm, etype, eid)
        st = AlertState(br.key, ctx.county, ctx.farm, etype, eid, gkey, since=now,
                        family=family, stype=stype, sid=sid, gwhere=ctx.where(stype, sid))
        st.vars["where"] = ctx.where(etype, eid)
        st.vars["farm"] = ctx.where("farm", ctx.farm)
        self.states[key] = st
        return st

    def _flag(self, county: str, farm: str, etype: str, eid: str) -> None:
        if etype == "gateway":
            self.flags.flag_gateway((county, farm, eid))
        elif etype == "sensor":
            gw, _, sensor = eid.partition("/")
            self.flags.flag_sensor((county, farm, gw), sensor)

    def _step(self, key: str, st: AlertState, rule: Rule, raise_holds: bool,
              clear_holds: bool, now: float) -> None:
        prev = st.status
        dirty = self.changes.states
        if st.holding != raise_holds or st.since == now:
            dirty[key] = st     # new, or its holding changed
        st.holding = raise_holds
        if st.status == "pending":
            if clear_holds and not raise_holds:
                del self.states[key]
                dirty[key] = None
            elif raise_holds and now - st.since >= rule.for_:
                self.fire(key, st, now)
        elif st.status == "firing":
            if clear_holds and not raise_holds:
                if rule.clear_for <= 0:
                    self.resolve(key, st, now)
                else:
                    st.status = "clearing"
                    st.clear_since = now
        elif st.status == "clearing":
            if not clear_holds or raise_holds:
                st.status = "firing"
                st.clear_since = None
            elif st.clear_since is not None and now - st.clear_since >= rule.clear_for:
                self.resolve(key, st, now)
        if st.status != prev and key in self.states:
            dirty[key] = st

    def fire(self, key: str, st: AlertState, now: float) -> None:
        st.status = "firing"
        st.fired_at = now
        self.changed = True
        self.stats["raised"] += 1
        self.changes.states[key] = st
        g = self.groups.get(st.group)
        if g is None:
            g = self.groups[st.group] = Group(st.group, st.county, st.farm, st.family,
                                              st.stype, st.sid, st.gwhere)
        if key not in g.members:
            g.members.append(key)
        g.dirty = True

    def resolve(self, key: str, st: AlertState, now: float) -> None:
        self.stats["cleared"] += 1
        self.changed = True
        del self.states[key]
        self.changes.states[key] = None
        g = self.groups.get(st.group)
        if g is None:
            return
        if key in g.members:
            g.members.remove(key)
        g.last_vars = dict(st.vars)
        g.last_value = st.value
        g.dirty = True

    def timers(self, now: float) -> None:
        """Pending states whose ``for`` has passed fire; clearing states whose
        ``clear_for`` has passed resolve."""
        for key, st in list(self.states.items()):
            if key not in self.states:
                continue
            rule = self.rule_index[st.rule][0]
            if st.status == "pending" and st.holding and now - st.since >= rule.for_:
                self.fire(key, st, now)
            elif st.status == "clearing" and st.clear_since is not None and \
                    now - st.clear_since >= rule.clear_for:
                self.resolve(key, st, now)

    def load(self, states: Mapping[str, dict[str, Any]],
             groups: Mapping[str, dict[str, Any]]) -> list[tuple[GKey, str, str]]:
        """States and groups from the state file; states of rules no longer
        loaded are forgotten. Returns the flatline states as (gateway,
        sensor, rule) for the device checks."""
        flat: list[tuple[GKey, str, str]] = []
        names = AlertState.__dataclass_fields__
        for k, v in states.items():
            if v.get("rule") not in self.rule_index:
                continue
            s = self.states[k] = AlertState(**{n: x for n, x in v.items() if n in names})
            rule = self.rule_index[s.rule][0]
            if rule.check is not None:
                self._flag(s.county, s.farm, s.etype, s.eid)
                if rule.check == "flatline" and s.etype == "sensor":
                    gw, _, sensor = s.eid.partition("/")
                    flat.append(((s.county, s.farm, gw), sensor, s.rule))
        gnames = Group.__dataclass_fields__
        for k, v in groups.items():
            g = Group(**{n: x for n, x in v.items() if n in gnames})
            g.dirty = False
            if g.rule is not None and g.rule not in self.rule_index:
                continue            # its rule left the rule files: forget it quietly
            g.members = [m for m in g.members if m in self.states]
            self.groups[k] = g
        return flat

    def firing(self) -> list[tuple[str, str, str]]:
        """(rule, entity, status) of every alert not ok."""
        return sorted((s.rule, f"{s.etype}:{s.eid}", s.status) for s in self.states.values())
