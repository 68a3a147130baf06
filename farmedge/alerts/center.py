"""Farm-side versus center-side: what the engine knows of the service
center's own health, and the center's incidents.

:class:`CenterHealth` follows the edge's :class:`~farmedge.records.CenterEvent`
records: whether the edge is connected to its broker (receiving), since when
it was not (the blind time the silence rules do not count), and the grace
after an edge start or a broker reconnect during which the silence rules
wait for the gateways to report again. Without a word from the edge (tools,
tests) the center counts as connected and settled.

:class:`CenterIncidents` turns the center's troubles into alerts of the
shipped ``center`` profile (rules with a ``check:`` of :data:`CENTER_CHECKS`,
audience ``[center]``), kept by the same state machine and sent by the same
router (grouping, the operators' daily budget, quiet hours) as farm alerts,
to the registry's ``center_contacts`` only. They are recorded under the
farm id :data:`CENTER_FARM`. Each incident is pending for its rule's
``for``: one that ends before that sends one notice (its clear text, with
the true duration); one that lasts sends its raise, then its clear.

Mass offline: last wills of at least ``mass_offline_share`` of a county's
gateways, and at least ``mass_offline_min_gateways``, within
``mass_offline_window_s`` are one incident; its gateways tell their farms
nothing while it lasts.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from farmedge.logs import get_logger
from farmedge.records import CenterEvent

from .context import DEFAULT_TZ, Context
from .route import CENTER_FARM
from .rules import BoundRule, RuleSet
from .settings import AlertsSettings
from .state import AlertState, StateMachine, fmt

if TYPE_CHECKING:
    from .delivery import Delivery
    from .record import AlertEvent
    from .route import Router

__all__ = ["CENTER_CHECKS", "CENTER_COUNTY", "CENTER_FARM", "CenterHealth", "CenterIncidents",
           "fmt_duration"]

log = get_logger("farmedge.alerts")

#: The county id edge-wide incidents (broker, InfluxDB, the edge itself,
#: deliveries) are kept and recorded under; every center incident has the
#: farm id CENTER_FARM.
CENTER_COUNTY = "_center"
#: Checks of the center profile.
CENTER_CHECKS = ("edge_restarted", "broker_down", "cluster_down", "influx_down", "disk_full",
                 "mass_offline", "delivery_failing", "clock_hold", "spool_filling",
                 "delivery_unconfirmed")
#: What the edge lost, by CenterEvent.broker: (check, entity id, name). A
#: profile without cluster_down (a site's own center) tells of the cluster
#: with its broker_down rule.
_BROKERS = {"mqtt": ("broker_down", "mqtt", "MQTT"), "nats": ("cluster_down", "nats", "NATS")}
#: Blind intervals remembered (older ones no longer matter to any silence).
_BLIND_MAX = 4096


def _broker(ev: CenterEvent, rules: Mapping[str, object]) -> tuple[str, str, str]:
    """(check, entity id, name) of the broker ``ev`` names; a profile
    without that check (a site's own center) tells of it with its
    broker_down rule."""
    check, eid, name = _BROKERS[ev.broker]
    return (check if check in rules else "broker_down"), eid, name


GKey = tuple[str, str, str]


def fmt_duration(seconds: float) -> str:
    """``20s``, ``12min``, ``3h05min``, ``2d03h``: true, and short."""
    s = max(0, round(seconds))
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 60:
        return f"{m}min"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}min"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


class CenterHealth:
    """The center's health as the edge reports it (engine clock seconds)."""

    def __init__(self, settings: AlertsSettings) -> None:
        self.settings = settings
        #: The edge is connected to its broker (True until the edge says otherwise).
        self.connected = True
        self.influx_up = True
        self.replaying = False
        #: The spool cannot take a batch (disk full).
        self.disk_full = False
        #: When the edge last started, and when it was last (re)connected: the
        #: grace of the silence rules runs from the later of the two.
        self.started_at: float | None = None
        self.grace_from = -math.inf
        #: Since when the edge has not been receiving (None: it is).
        self.down_since: float | None = None
        self._blind: deque[tuple[float, float]] = deque(maxlen=_BLIND_MAX)

    @property
    def receiving(self) -> bool:
        """Messages reach the engine: the broker is connected, and batches
        become durable (InfluxDB, or else the spool has room)."""
        return self.connected and not (self.disk_full and not self.influx_up)

    def apply(self, ev: CenterEvent, now: float) -> None:
        was = self.receiving
        what = ev.what
        if what == "edge_started":
            self.started_at = now
            self.grace_from = now
            self.connected = False
        elif what == "broker_down":
            self.connected = False
        elif what == "broker_up":
            self.connected = True
            self.grace_from = now
        elif what in ("influx_down", "influx_up"):
            self.influx_up = what == "influx_up"
        elif what in ("replay_started", "replay_done"):
            self.replaying = what == "replay_started"
        elif what in ("disk_full", "disk_ok"):
            self.disk_full = what == "disk_full"
        if self.receiving:
            if self.down_since is not None:
                self._blind.append((self.down_since, now))
                self.down_since = None
        elif (was or what == "edge_started") and self.down_since is None:
            self.down_since = now

    def grace_s(self, interval_s: float) -> float:
        s = self.settings
        return max(s.reconnect_grace_s, s.reconnect_grace_intervals * interval_s)

    def settled(self, now: float, interval_s: float) -> bool:
        """Receiving, and past the grace after the last start or reconnect:
        a silence now is the gateway's, not the center's."""
        return self.receiving and now - self.grace_from >= self.grace_s(interval_s)

    def blind_between(self, since: float, now: float) -> float:
        """Seconds of [since, now] in which the edge was not receiving."""
        total = 0.0
        for a, b in reversed(self._blind):
            if b <= since:
                break
            total += min(b, now) - max(a, since)
        if self.down_since is not None and self.down_since < now:
            total += now - max(self.down_since, since)
        return max(0.0, total)

    def heard_for(self, since: float, now: float) -> float:
        """How long of [since, now] the center was receiving: the silence a
        silence rule counts."""
        return (now - since) - self.blind_between(since, now)


@dataclass(slots=True)
class _Mass:
    """One county's mass-offline incident."""

    since: float
    #: Its gateways still down, and the most that were at once.
    down: set[GKey] = field(default_factory=set)
    peak: int = 0


class CenterContext(Context):
    """The context of a center incident: names its entities itself."""

    names: dict[str, str]

    def where(self, stype: str, sid: str) -> str:
        return self.names.get(sid, sid)


def _context(county: str) -> CenterContext:
    ctx = CenterContext(county, CENTER_FARM, "", "", None, None, None, None, None,
                        ZoneInfo(DEFAULT_TZ), {}, [], [])
    ctx.names = {}
    return ctx


class CenterIncidents:
    """Center-side incidents through the state machine and the router."""

    def __init__(self, *, rules: RuleSet, machine: StateMachine, health: CenterHealth,
                 settings: AlertsSettings, stats: dict[str, int],
                 router: Callable[[], Router],
                 longest_interval: Callable[[], float] = lambda: 600.0) -> None:
        self.machine = machine
        self._longest_interval = longest_interval
        self.health = health
        self.settings = settings
        self.stats = stats
        self._router = router
        #: check -> its rule (the first profile defining it; normally ``center``)
        self.rule: dict[str, BoundRule] = {}
        for name in sorted(rules.profiles, key=lambda n: (n != "center", n)):
            for br in rules.rules_of(name):
                chk = br.rule.check
                if chk in CENTER_CHECKS and chk not in self.rule:
                    self.rule[chk] = br
        self._ctx: dict[str, CenterContext] = {}
        #: county -> gateway -> time of its latest will within the window,
        #: oldest first (for mass offline)
        self._wills: dict[str, dict[GKey, float]] = {}
        self.mass: dict[str, _Mass] = {}
        #: (county, farm, contact) -> failed attempts in a row
        self._failures: dict[tuple[str, str, str], int] = {}
        #: gateways whose current clock hold the operators were told of
        self._holds_told: set[GKey] = set()

    def ctx(self, county: str) -> CenterContext:
        c = self._ctx.get(county)
        if c is None:
            c = self._ctx[county] = _context(county)
        return c

    # ------------------------------------------------------------ incidents

    def _start(self, check: str, county: str, eid: str, where: str, now: float, *,
               value: float = 0.0, extra: Mapping[str, str] | None = None) -> None:
        br = self.rule.get(check)
        if br is None:
            return
        ctx = self.ctx(county)
        ctx.names[eid] = where
        vars_ = {"duration": fmt_duration(0), "minutes": "0", **(extra or {})}
        self.machine.observe(br, br.params, ctx, "farm", eid, True, False, value, vars_, now)

    def _end(self, check: str, county: str, eid: str, now: float,
             extra: Mapping[str, str] | None = None) -> None:
        br = self.rule.get(check)
        if br is None:
            return
        ctx = self.ctx(county)
        key = self.machine.key(br, ctx, "farm", eid)
        st = self.machine.states.get(key)
        if st is None:
            return
        self._durations(st.vars, now - st.since)
        st.vars.update(extra or {})
        if st.status == "pending":
            # Over before it became an incident: one notice, afterwards.
            del self.machine.states[key]
            self.machine.changes.states[key] = None
            self._router().notice(br, ctx, st, now)
            return
        self.machine.observe_if_present(br, ctx, "farm", eid, now)

    def _state(self, check: str, county: str, eid: str) -> AlertState | None:
        br = self.rule.get(check)
        if br is None:
            return None
        return self.machine.states.get(self.machine.key(br, self.ctx(county), "farm", eid))

    def _value(self, check: str, county: str, eid: str, value: float) -> None:
        br = self.rule.get(check)
        if br is None:
            return
        st = self.machine.states.get(self.machine.key(br, self.ctx(county), "farm", eid))
        if st is not None:
            st.value = value
            st.vars["value"] = fmt(value, br.rule.decimals)
            st.vars["count"] = fmt(value, 0)

    def notice(self, check: str, county: str, eid: str, where: str, now: float,
               extra: Mapping[str, str] | None = None) -> None:
        """A one-off message (the edge started)."""
        br = self.rule.get(check)
        if br is None:
            return
        ctx = self.ctx(county)
        ctx.names[eid] = where
        st = AlertState(br.key, county, CENTER_FARM, "farm", eid, "", since=now,
                        family=br.rule.family or br.key, stype="farm", sid=eid, gwhere=where)
        st.vars.update({"where": where, "duration": fmt_duration(0), "minutes": "0",
                        **(extra or {})})
        self._router().notice(br, ctx, st, now)

    @staticmethod
    def _durations(vars_: dict[str, str], seconds: float) -> None:
        vars_["duration"] = fmt_duration(seconds)
        vars_["minutes"] = str(max(1, round(seconds / 60)))
        vars_["hours"] = str(round(seconds / 3600))

    def timers(self, now: float) -> None:
        """Keep the durations in the texts of open incidents true."""
        farm = CENTER_FARM
        for st in self.machine.states.values():
            if st.farm == farm:
                self._durations(st.vars, now - st.since)

    # ------------------------------------------------------------ the edge's events

    def event(self, ev: CenterEvent, now: float) -> None:
        h = self.health
        was_connected, was_influx, was_disk = h.connected, h.influx_up, h.disk_full
        h.apply(ev, now)
        log.info("alerts.center_event", what=ev.what, detail=ev.detail or None)
        what = ev.what
        c = CENTER_COUNTY
        if what == "edge_started":
            self._forget_pending(("broker_down", "cluster_down", "influx_down", "disk_full",
                                  "spool_filling"))
            grace = fmt_duration(h.grace_s(self._longest_interval()))
            self.notice("edge_restarted", c, "edge", "edge", now, {"duration": grace})
        elif what == "broker_down" and was_connected:
            check, eid, name = _broker(ev, self.rule)
            self._start(check, c, eid, name, now)
        elif what == "broker_up":
            # Every check and entity a lost broker can have been told under
            # (an incident may predate a change of [source] kind).
            for check in ("broker_down", "cluster_down"):
                for _, eid, _ in _BROKERS.values():
                    self._end(check, c, eid, now)
        elif what == "influx_down" and was_influx:
            self._start("influx_down", c, "influxdb", "InfluxDB", now)
        elif what == "influx_up":
            self._end("influx_down", c, "influxdb", now)
        elif what == "disk_full" and not was_disk:
            self._start("disk_full", c, "disk", "disk", now)
        elif what == "disk_ok":
            self._end("disk_full", c, "disk", now)
        elif what == "spool_filling":
            pct = ev.value if ev.value is not None else 0.0
            if self._state("spool_filling", c, "spool") is None:
                self._start("spool_filling", c, "spool", "spool", now, value=pct,
                            extra={"value": fmt(pct, 0), "reading": ev.detail})
        elif what == "spool_ok":
            self._end("spool_filling", c, "spool", now,
                      {"value": fmt(ev.value, 0)} if ev.value is not None else None)

    # ------------------------------------------------------------ mass offline

    def will(self, gk: GKey, now: float, county_total: int) -> bool:
        """A gateway's last will. Returns True when it belongs to a mass
        offline incident of its county (its farm hears nothing of it)."""
        county = gk[0]
        m = self.mass.get(county)
        if m is not None:
            m.down.add(gk)
            m.peak = max(m.peak, len(m.down))
            self._value("mass_offline", county, f"mass:{county}", m.peak)
            return True
        s = self.settings
        # Wills right after the edge (re)connected are the broker's doing:
        # the broker incident says it, not a mass offline.
        if not self.health.connected or now - self.health.grace_from < s.mass_offline_window_s:
            return False
        q = self._wills.setdefault(county, {})
        q.pop(gk, None)
        q[gk] = now
        while q:
            first = next(iter(q))
            if q[first] >= now - s.mass_offline_window_s:
                break
            del q[first]
        need = max(s.mass_offline_min_gateways, math.ceil(s.mass_offline_share * county_total))
        if len(q) < need:
            return False
        gws = set(q)
        m = self.mass[county] = _Mass(now, gws, len(gws))
        q.clear()
        self._start("mass_offline", county, f"mass:{county}", county, now,
                    value=float(len(gws)),
                    extra={"count": str(len(gws)), "reading": str(county_total)})
        log.warning("alerts.mass_offline", county=county, gateways=len(gws),
                    of=county_total)
        return True

    def member(self, gk: GKey) -> bool:
        m = self.mass.get(gk[0])
        return m is not None and gk in m.down

    def back(self, gk: GKey, now: float) -> list[GKey]:
        """A gateway of a mass incident is back. When too few of the
        incident's gateways are still down for it to be one, it ends; the
        gateways still down are returned (they are farm-side now)."""
        county = gk[0]
        m = self.mass.get(county)
        if m is None or gk not in m.down:
            return []
        m.down.discard(gk)
        if len(m.down) >= self.settings.mass_offline_min_gateways:
            return []
        del self.mass[county]
        self._end("mass_offline", county, f"mass:{county}", now)
        return sorted(m.down)

    # ------------------------------------------------------------ clock holds

    def clock_hold(self, gk: GKey, held: int | None, held_for_s: float | None,
                   now: float) -> None:
        """A gateway's status: readings held for an unsynced clock. A hold
        lasting ``[alerts] clock_hold_incident_s`` is one notice to the
        operators (never the farm); a hold that ends and starts again is a
        new one."""
        if not held or held_for_s is None:
            self._holds_told.discard(gk)
            return
        if gk in self._holds_told or held_for_s < self.settings.clock_hold_incident_s:
            return
        self._holds_told.add(gk)
        county, farm, gw = gk
        self.notice("clock_hold", county, f"hold:{farm}/{gw}", gw, now,
                    {"duration": fmt_duration(held_for_s),
                     "minutes": str(max(1, round(held_for_s / 60))),
                     "count": str(held), "value": str(held), "farm_id": farm})

    # ------------------------------------------------------------ deliveries

    def delivery(self, d: Delivery, ok: bool, error: str, now: float) -> None:
        """The outcome of one delivery attempt."""
        key = (d.county, d.farm, d.contact)
        eid = f"contact:{d.county}/{d.farm}/{d.contact}"
        if ok:
            if self._failures.pop(key, 0) >= self.settings.delivery_failures_incident:
                self._end("delivery_failing", CENTER_COUNTY, eid, now)
            return
        if d.farm == CENTER_FARM and d.rule == self._rule_key("delivery_failing"):
            return       # an operator's own failure notice failing: no loop
        n = self._failures[key] = self._failures.get(key, 0) + 1
        if n >= self.settings.delivery_failures_incident:
            self._start("delivery_failing", CENTER_COUNTY, eid, d.contact, now, value=float(n),
                        extra={"reading": fmt(float(n), 0), "contact": d.contact})

    def unconfirmed(self, ds: list[Delivery], where: str, now: float,
                    publish: Callable[[AlertEvent], None]) -> None:
        """Messages found with an intent to send and no outcome when their
        state was loaded (a restart, or a partition taken over): they may
        have reached their contact, so they are not sent again. Each is
        recorded (``unconfirmed``) and the operators get one notice for
        them all, naming the contacts to check with."""
        if not ds:
            return
        for d in ds:
            self.stats["unconfirmed"] += 1
            publish(d.event_for("unconfirmed", now, attempt=d.attempts + 1,
                                error="handed to the notifier, outcome not recorded: not resent"))
            log.warning("alerts.delivery_unconfirmed", county=d.county, farm=d.farm,
                        contact=d.contact, alert_event=d.event, sending=d.sending)
        names = sorted({d.contact for d in ds})
        told = "、".join(names[:3]) + ("…" if len(names) > 3 else "")
        self.notice("delivery_unconfirmed", CENTER_COUNTY, f"unconfirmed:{where}:{now:.0f}",
                    where, now, {"count": str(len(ds)), "value": str(len(ds)), "reading": told})

    def _rule_key(self, check: str) -> str | None:
        br = self.rule.get(check)
        return br.key if br is not None else None

    # ------------------------------------------------------------ restart

    def _forget_pending(self, checks: tuple[str, ...]) -> None:
        """Incidents of the edge's previous run still pending: over (a
        firing one stays, and clears when its condition ends)."""
        keys = {br.key for c, br in self.rule.items() if c in checks}
        sm = self.machine
        for key, st in list(sm.states.items()):
            if st.rule in keys and st.status == "pending":
                del sm.states[key]
                sm.changes.states[key] = None

    def forget_mass(self) -> None:
        """After a restart: a mass incident's gateways are not known any
        more; its state is dropped quietly (the wills come again)."""
        br = self.rule.get("mass_offline")
        if br is None:
            return
        sm = self.machine
        for key, st in list(sm.states.items()):
            if st.rule == br.key:
                del sm.states[key]
                sm.changes.states[key] = None
                g = sm.groups.pop(st.group, None)
                if g is not None:
                    sm.changes.groups[st.group] = None
