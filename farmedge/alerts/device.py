"""Device checks: gateway offline (last will, or silent past its intervals),
sensor silent, flatline, out of range, clock unsynced and outbox backlog,
from gateway status, from readings and from the engine's timers.

Farm-side only (docs/alerts.md, "Farm-side versus center-side"): silence
counts only time in which the center was receiving
(:class:`~.center.CenterHealth`) and waits its grace after an edge start or
a broker reconnect; a last will waits ``[alerts] offline_will_grace_s`` and
is forgotten when the gateway comes back; gateways of a mass offline
(:class:`~.center.CenterIncidents`) tell their farms nothing. Durations in
the texts are true: from the last status or reading actually seen.

When each gateway and sensor was last heard is kept here, per gateway, so
the fast path marks a sensor with one dict store.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

from farmedge.contract.models import Clock, StatusReason
from farmedge.records import StatusEvent

from .center import CenterHealth, CenterIncidents
from .context import Context, Contexts
from .rules import BoundRule
from .settings import AlertsSettings
from .state import StateMachine, fmt

__all__ = ["SILENCE_CHECK_S", "DeviceChecks", "interval_of", "longest_interval"]

SILENCE_CHECK_S = 10.0           # silence and offline checks at most this often (clock s)

GKey = tuple[str, str, str]
SensorKey = tuple[GKey, str]


def interval_of(ctx: Context, pr: dict[str, float]) -> float:
    """The reporting interval: the sensor's, its gateway's, the rule's default."""
    return ((ctx.meta.interval_s if ctx.meta else None)
            or (ctx.gw_obj.interval_s if ctx.gw_obj else None)
            or pr.get("default_interval_s", 600.0))


def longest_interval(contexts: Contexts) -> float:
    """The longest reporting interval of the registry's gateways (600 s
    without one): the grace after an edge start that covers them all."""
    return max((ge.interval_s or 600.0 for _f, ge in contexts.index.values()), default=600.0)


class DeviceChecks:
    def __init__(self, contexts: Contexts, machine: StateMachine,
                 stats: dict[str, int], *, settings: AlertsSettings | None = None,
                 health: CenterHealth | None = None,
                 center: CenterIncidents | None = None) -> None:
        self.settings = settings or contexts.settings
        self.health = health or CenterHealth(self.settings)
        self.center = center
        self.contexts = contexts
        self.machine = machine
        self.stats = stats
        self.gw_seen: dict[GKey, float] = {}
        #: gateway -> sensor -> when last heard (engine clock)
        self.sensor_seen: dict[GKey, dict[str, float]] = {}
        #: gateways whose last will (online: false) is the latest status
        self.gw_will: set[GKey] = set()
        #: when each of those wills came, and when its gateway was last heard before
        self.will_at: dict[GKey, float] = {}
        self.heard_before_will: dict[GKey, float] = {}
        #: gateways whose latest offline status is a planned stop
        self.planned: set[GKey] = set()
        #: gateways holding readings back for an unsynced clock (status): their
        #: sensors' silence is the hold's, an operator matter (clock-unsynced)
        self.holding: set[GKey] = set()
        #: (gateway, sensor) -> flatline rules with a state
        self.flat_states: dict[SensorKey, set[str]] = {}
        #: (gateway, sensor) -> out_of_range rule -> times of bad readings
        self.bad: dict[SensorKey, dict[str, deque[float]]] = {}
        self.started = 0.0
        self._last_silence_check = float("-inf")
        #: county -> its known gateways, until the next silence check (a flood of wills)
        self._county_gws: dict[str, set[GKey]] = {}
        #: Cluster mode (partitions.py): is a farm ours; silence counts from when
        self.owns: Callable[[str, str], bool] | None = None
        self.since: Callable[[GKey, float], float] = lambda gk, started: started

    def seen(self, gk: GKey) -> dict[str, float]:
        s = self.sensor_seen.get(gk)
        return s if s is not None else self.sensor_seen.setdefault(gk, {})

    # ------------------------------------------------------------ on readings

    def flatline(self, br: BoundRule, pr: dict[str, float], ctx: Context, kind: str,
                 value: float, ts: float, now: float) -> None:
        st = ctx.flat.setdefault((kind, br.key), [math.inf, 0.0])
        sk = ((ctx.county, ctx.farm, ctx.gateway), ctx.sensor)
        eid = f"{ctx.gateway}/{ctx.sensor}"
        if abs(value - st[0]) > pr.get("tolerance", 0.0):
            st[0] = value
            st[1] = ts * 1000.0
            rules = self.flat_states.get(sk)
            if rules is not None and br.key in rules:
                rules.discard(br.key)
                if not rules:
                    del self.flat_states[sk]
                self.machine.observe_if_present(br, ctx, "sensor", eid, now)
            return
        held = ts - st[1] / 1000.0
        if held >= (br.rule.window or 43200.0) and now - ts <= self.settings.max_reading_age_s:
            # (a stale reading, a replayed backlog, is history: it raises nothing)
            self.flat_states.setdefault(sk, set()).add(br.key)
            self.machine.observe(br, pr, ctx, "sensor", eid, True, False, value,
                                 {"hours": str(round(held / 3600)), "reading": fmt(value, 1)},
                                 now, decimals=1)

    def out_of_range(self, br: BoundRule, pr: dict[str, float], ctx: Context, kind: str,
                     value: float, quality: str, now: float) -> None:
        rule = br.rule
        bad = quality == "error"
        rng = rule.plausible.get(kind)
        if rng is not None and not (rng[0] <= value <= rng[1]):
            bad = True
        gk = (ctx.county, ctx.farm, ctx.gateway)
        sk = (gk, ctx.sensor)
        qs = self.bad.get(sk)
        q = qs.get(br.key) if qs is not None else None
        if q is None:
            if not bad:
                return
            if qs is None:
                qs = self.bad[sk] = {}
            q = qs[br.key] = deque()
        eid = f"{ctx.gateway}/{ctx.sensor}"
        if bad:
            q.append(now)
            self.machine.flags.flag_sensor(gk, ctx.sensor)
        while q and q[0] < now - (rule.window or 3600.0):
            q.popleft()
        if bad and len(q) >= pr.get("count", 3):
            self.machine.observe(br, pr, ctx, "sensor", eid, True, False, value,
                                 {"reading": fmt(value, 1)}, now, decimals=1)
        elif not q:
            assert qs is not None
            del qs[br.key]
            if not qs:
                del self.bad[sk]
            self.machine.observe_if_present(br, ctx, "sensor", eid, now)

    def device_clear(self, ctx: Context, clock_ok: bool, now: float) -> None:
        """A reading from a flagged gateway or sensor (or with an unsynced
        clock): the gateway is up, the sensor speaks."""
        sm = self.machine
        gk = (ctx.county, ctx.farm, ctx.gateway)
        found = False
        for br, pr in ctx.status:
            chk = br.rule.check
            if chk == "gateway_offline" and gk not in self.gw_will:
                if sm.observe_if_present(br, ctx, "gateway", ctx.gateway, now):
                    found = True
                    self.refresh_sensors(gk, now)
            elif chk == "sensor_silent":
                found |= sm.observe_if_present(br, ctx, "sensor",
                                               f"{ctx.gateway}/{ctx.sensor}", now)
            elif chk == "clock_unsynced":
                if not clock_ok:
                    found = True
                    sm.observe(br, pr, ctx, "gateway", ctx.gateway, True, False, 0.0, {}, now)
                else:
                    found |= sm.observe_if_present(br, ctx, "gateway", ctx.gateway, now)
        sk = (gk, ctx.sensor)
        if not found and sk not in self.flat_states and sk not in self.bad:
            sm.flags.clear(gk, ctx.sensor)

    # ------------------------------------------------------------ status and timers

    def status(self, ev: StatusEvent, now: float) -> None:
        sm = self.machine
        self.stats["status"] += 1
        gk = (ev.county, ev.farm, ev.gateway)
        prev = max([self.gw_seen.get(gk, self.since(gk, self.started)), *self.seen(gk).values()])
        ctx = self.contexts.get(ev.county, ev.farm, ev.gateway, "")
        st = ev.status
        if st.online:
            self.gw_seen[gk] = now
            was_down = gk in self.gw_will
            self._will_gone(gk, now)
            if st.held_unsynced or st.clock == Clock.UNSYNCED:
                self.holding.add(gk)
            else:
                self.holding.discard(gk)
            if self.center is not None:
                self.center.clock_hold(gk, st.held_unsynced, st.held_for_s, now)
        else:
            if gk not in self.gw_will:
                self.gw_will.add(gk)
                self.will_at[gk] = now
                self.heard_before_will[gk] = prev
                if st.reason == StatusReason.STOPPING:
                    self.planned.add(gk)     # planned: no mass offline, a longer grace
                elif self.center is not None:
                    self.center.will(gk, now, self._county_total(gk))
            was_down = False
        for br, pr in ctx.status:
            rule = br.rule
            if rule.check == "gateway_offline":
                if st.online:
                    if sm.observe_if_present(br, ctx, "gateway", ev.gateway, now) or was_down:
                        self.refresh_sensors(gk, now)
                else:
                    self._will_due(gk, ctx, br, pr, now)
            elif rule.check == "clock_unsynced" and st.clock is not None and st.online:
                key = sm.key(br, ctx, "gateway", ev.gateway)
                held = sm.states[key].since if key in sm.states else now
                mins = max(1, math.ceil((now - held) / 60))
                unsynced = st.clock == "unsynced"
                sm.observe(br, pr, ctx, "gateway", ev.gateway, unsynced, not unsynced, mins,
                           {"minutes": str(mins)}, now)
            elif rule.check == "outbox_backlog" and st.outbox_oldest_age_s is not None:
                hours = st.outbox_oldest_age_s / 3600.0
                assert rule.when is not None
                cc = rule.clear_cond
                assert cc is not None
                sm.observe(br, pr, ctx, "gateway", ev.gateway, rule.when.holds(hours),
                           cc.holds(hours), hours, {}, now)

    def _will_gone(self, gk: GKey, now: float) -> None:
        """The gateway is back: its will is forgotten (if its mass offline ends,
        the gateways still down wait their grace as farm-side suspicions)."""
        self.gw_will.discard(gk)
        self.planned.discard(gk)
        self.will_at.pop(gk, None)
        self.heard_before_will.pop(gk, None)
        if self.center is not None:
            for left in self.center.back(gk, now):
                if left in self.will_at:
                    self.will_at[left] = now

    def _will_due(self, gk: GKey, ctx: Context, br: BoundRule, pr: dict[str, float],
                  now: float) -> None:
        """Offline from a last will, once its grace has passed, the center
        is settled and the gateway is not part of a mass offline; the
        minutes are those since it was last heard."""
        if self.center is not None and self.center.member(gk):
            return
        at = self.will_at.get(gk, now)
        s = self.settings
        grace = s.planned_stop_grace_s if gk in self.planned else s.offline_will_grace_s
        if now - at < grace:
            return
        if not self.health.settled(now, interval_of(ctx, pr)):
            return
        self._silent(br, pr, ctx, "gateway", gk[2], self.heard_before_will.get(gk, at), now)

    def _silent(self, br: BoundRule, pr: dict[str, float], ctx: Context, etype: str, eid: str,
                last: float, now: float) -> None:
        """Offline or silent: the minutes are those since it was last heard."""
        mins = max(1, round((now - last) / 60))
        self.machine.observe(br, pr, ctx, etype, eid, True, False, mins,
                             {"minutes": str(mins)}, now)

    def _county_total(self, gk: GKey) -> int:
        """How many gateways the county of ``gk`` has (``gk`` among them)."""
        c = gk[0]
        gws = self._county_gws.get(c) or self._county_gws.setdefault(c, {
            g for g in (*self.contexts.index, *self.gw_seen, *self.gw_will) if g[0] == c})
        gws.add(gk)
        return len(gws)

    def refresh_sensors(self, gk: GKey, now: float) -> None:
        """A gateway back: its sensors get a fresh interval."""
        seen = self.seen(gk)
        for s, t in seen.items():
            seen[s] = max(t, now)

    def _known(self) -> tuple[set[GKey], set[tuple[GKey, str]]]:
        # Readings mark their sensor: a gateway was last heard when its last
        # status or any of its sensors' readings came.
        for gk, seen in self.sensor_seen.items():
            if seen:
                t = max(seen.values())
                if t > self.gw_seen.get(gk, -math.inf):
                    self.gw_seen[gk] = t
        gws: set[GKey] = set(self.gw_seen) | self.gw_will
        sensors = {(gk, s) for gk, seen in self.sensor_seen.items() for s in seen}
        for gk, (_farm, ge) in self.contexts.index.items():
            gws.add(gk)
            for s in ge.sensors:
                sensors.add((gk, s))
        if (owns := self.owns) is not None:  # cluster mode: our partitions' farms only
            return ({gk for gk in gws if owns(gk[0], gk[1])},
                    {sk for sk in sensors if owns(sk[0][0], sk[0][1])})
        return gws, sensors

    def timers(self, now: float) -> None:
        """Gateways and sensors silent past their intervals."""
        if 0 <= now - self._last_silence_check < SILENCE_CHECK_S:
            return
        self._last_silence_check = now
        self._county_gws.clear()
        sm, health, center = self.machine, self.health, self.center
        gws, sensors = self._known()
        down: set[GKey] = self.gw_will | self.holding
        for gk in gws:
            ctx = self.contexts.get(gk[0], gk[1], gk[2], "")
            for br, pr in ctx.status:
                if br.rule.check != "gateway_offline":
                    continue
                firing = sm.key(br, ctx, "gateway", gk[2]) in sm.states
                if firing:
                    down.add(gk)
                if gk in self.gw_will:
                    if not firing and self.gw_seen.get(gk, -math.inf) > \
                            self.will_at.get(gk, math.inf):
                        self._will_gone(gk, now)    # readings since the will: it is up
                        down.discard(gk)
                        continue
                    self._will_due(gk, ctx, br, pr, now)
                    continue
                interval = interval_of(ctx, pr)
                if not health.settled(now, interval) or (center is not None
                                                         and center.member(gk)):
                    continue
                last = self.gw_seen.get(gk, self.since(gk, self.started))
                if health.heard_for(last, now) > pr.get("intervals", 3.0) * interval:
                    self._silent(br, pr, ctx, "gateway", gk[2], last, now)
                    down.add(gk)
        for gk, sensor in sensors:
            if gk in down:
                continue
            ctx = self.contexts.get(gk[0], gk[1], gk[2], sensor)
            for br, pr in ctx.status:
                if br.rule.check != "sensor_silent":
                    continue
                interval = interval_of(ctx, pr)
                if not health.settled(now, interval):
                    continue
                last = self.sensor_seen.get(gk, {}).get(sensor, self.since(gk, self.started))
                if health.heard_for(last, now) > pr.get("intervals", 3.0) * interval:
                    self._silent(br, pr, ctx, "sensor", f"{gk[2]}/{sensor}", last, now)

    def load_flat(self, flat: list[tuple[GKey, str, str]]) -> None:
        for gk, sensor, rule in flat:
            self.flat_states.setdefault((gk, sensor), set()).add(rule)
