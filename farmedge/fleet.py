"""``farmedge fleet``: which gateways of a county work, which are silent and
for how long, with what outbox, clock and battery, from InfluxDB and the
registry.

A gateway is *heard from* when its status message arrives: the agent sends
one on every connect and every ``[status] interval_s`` (300 s), and the
broker sends its last will (``online: false``) when it vanishes. Each
registered gateway gets one state (docs/fleet.md defines them):

``online``
    last status online, a status or reading within 3 of its intervals,
    and every sensor reporting;
``silent_sensors``
    online, but a sensor has sent no reading for 3 of its intervals;
``offline``
    heard from within 24 h, but its last status says offline (the last
    will), or neither a status nor a reading for 3 of its intervals (the
    gateway's ``interval_s`` in the registry, 600 s otherwise);
``idle``
    registered, but not heard from for more than 24 h;
``never_seen``
    registered, and never heard from.

A county's idle rate is the share of its registered gateways that are idle
or never seen. The county dashboard's "Idle gateways" panel computes the
same from the registry points the edge writes to the ``gateway``
measurement (:mod:`farmedge.edge.registry_points`).

The windows match the alert engine's device rules (gateway-offline and
sensor-silent: 3 intervals, 600 s by default), so the fleet view and the
alerts agree on who is offline.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from farmedge.cli import ParagraphHelpFormatter
from farmedge.storage.schema import GatewayField as G
from farmedge.storage.schema import Measurement, Tag, point, reading_fields

if TYPE_CHECKING:
    from farmedge.edge.settings import InfluxSection
    from farmedge.registry import Registry

__all__ = [
    "IDLE_AFTER_S",
    "STATES",
    "CountyView",
    "FleetError",
    "GatewayView",
    "Registered",
    "add_parser",
    "build_view",
    "classify",
]

#: Registered but silent this long: idle.
IDLE_AFTER_S = 24 * 3600
#: A sensor that reported within this window is expected to go on reporting.
INSTALLED_WINDOW_S = 7 * 86400
#: Offline / silent after this many intervals without news (the alert
#: engine's device rules use the same).
INTERVALS = 3
DEFAULT_INTERVAL_S = 600.0

_BY_GATEWAY = f'GROUP BY "{Tag.COUNTY}", "{Tag.FARM}", "{Tag.GATEWAY}"'
_BATTERY = (point("battery_voltage").measurement, point("battery_voltage").field)

STATES = ("online", "silent_sensors", "offline", "idle", "never_seen")
_STATE_TEXT = {"online": "online", "silent_sensors": "silent sensors", "offline": "OFFLINE",
               "idle": "IDLE", "never_seen": "NEVER SEEN"}


class FleetError(Exception):
    """InfluxDB cannot be asked, or answered an error."""


@dataclass(frozen=True, slots=True)
class Registered:
    """A gateway as the registry knows it."""

    county: str
    farm: str
    gateway: str
    interval_s: float | None = None
    #: sensor id -> its interval_s (None: the gateway's)
    sensors: dict[str, float | None] = field(default_factory=dict)
    farm_name: str | None = None


@dataclass(slots=True)
class Observed:
    """What InfluxDB holds about one gateway."""

    last_status_ms: int | None = None
    online: bool | None = None
    outbox_depth: int | None = None
    outbox_oldest_age_s: float | None = None
    clock: str | None = None
    #: sensor id -> time of its last reading (any kind)
    sensors: dict[str, int] = field(default_factory=dict)
    #: sensor id -> last battery voltage
    battery: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class GatewayView:
    county: str
    farm: str
    gateway: str
    state: str
    registered: bool
    #: When its last status arrived.
    last_seen_ms: int | None
    #: Time of its latest reading, any sensor.
    last_reading_ms: int | None
    online: bool | None
    outbox_depth: int | None
    outbox_oldest_age_s: float | None
    clock: str | None
    battery_v: float | None
    battery_sensor: str | None
    silent_sensors: list[str]
    farm_name: str | None = None

    def to_json(self, now_ms: int) -> dict[str, Any]:
        return {
            "gateway": self.gateway, "state": self.state, "registered": self.registered,
            "last_seen": _iso(self.last_seen_ms),
            "last_seen_ms": self.last_seen_ms,
            "last_seen_age_s": round((now_ms - self.last_seen_ms) / 1000, 1)
            if self.last_seen_ms is not None else None,
            "last_reading": _iso(self.last_reading_ms),
            "online": self.online, "outbox_depth": self.outbox_depth,
            "outbox_oldest_age_s": self.outbox_oldest_age_s, "clock": self.clock,
            "battery_v": self.battery_v, "battery_sensor": self.battery_sensor,
            "silent_sensors": self.silent_sensors,
        }


@dataclass(slots=True)
class CountyView:
    county: str
    gateways: list[GatewayView]
    #: False when there is no registry (open enrollment): every known
    #: gateway counts as registered.
    has_registry: bool = True

    def _counted(self) -> list[GatewayView]:
        return [g for g in self.gateways if g.registered or not self.has_registry]

    @property
    def registered(self) -> int:
        return len(self._counted())

    @property
    def idle(self) -> int:
        """Registered gateways idle or never seen."""
        return sum(1 for g in self._counted() if g.state in ("idle", "never_seen"))

    @property
    def idle_rate(self) -> float | None:
        n = self.registered
        return self.idle / n if n else None

    def states(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for g in self._counted():
            out[g.state] += 1
        return out

    def to_json(self, now_ms: int) -> dict[str, Any]:
        farms: dict[str, list[GatewayView]] = {}
        for g in self.gateways:
            farms.setdefault(g.farm, []).append(g)
        return {
            "county": self.county, "registered": self.registered, "idle": self.idle,
            "idle_rate": round(self.idle_rate, 4) if self.idle_rate is not None else None,
            "states": self.states(), "registry": self.has_registry,
            "farms": [{"farm": f, "name": gs[0].farm_name,
                       "states": {s: sum(1 for g in gs if g.state == s) for s in STATES},
                       "gateways": [g.to_json(now_ms) for g in gs]}
                      for f, gs in sorted(farms.items())],
        }


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


# -- the states ---------------------------------------------------------------

def classify(reg: Registered | None, key: tuple[str, str, str], obs: Observed | None,
             now_ms: int) -> GatewayView:
    """One gateway's state from what the registry says (None: not in it)
    and what InfluxDB holds (None: nothing)."""
    county, farm, gateway = key
    obs = obs or Observed()
    last_seen = obs.last_status_ms
    gw_interval = (reg.interval_s if reg and reg.interval_s else None) or DEFAULT_INTERVAL_S
    silent: list[str] = []
    if last_seen is None:
        state = "never_seen"
    elif now_ms - last_seen > IDLE_AFTER_S * 1000:
        state = "idle"
    elif obs.online is False or now_ms - max([last_seen, *obs.sensors.values()]) > \
            INTERVALS * gw_interval * 1000:
        state = "offline"
    else:
        expected: dict[str, float | None] = dict(reg.sensors) if reg else {}
        for sid, t in obs.sensors.items():
            if now_ms - t <= INSTALLED_WINDOW_S * 1000:
                expected.setdefault(sid, None)
        for sid, iv in sorted(expected.items()):
            window = INTERVALS * (iv or gw_interval) * 1000
            last = obs.sensors.get(sid)
            if last is None or now_ms - last > window:
                silent.append(sid)
        state = "silent_sensors" if silent else "online"
    battery_sensor = min(obs.battery, key=lambda s: obs.battery[s]) if obs.battery else None
    return GatewayView(
        county, farm, gateway, state, reg is not None, last_seen,
        max(obs.sensors.values()) if obs.sensors else None, obs.online,
        obs.outbox_depth, obs.outbox_oldest_age_s, obs.clock,
        obs.battery[battery_sensor] if battery_sensor else None, battery_sensor, silent,
        reg.farm_name if reg else None)


# -- InfluxDB -----------------------------------------------------------------

Query = Callable[[Sequence[str]], list[list[dict[str, Any]]]]


def influx_query(settings: InfluxSection, *, timeout_s: float = 30.0) -> Query:
    """A function that runs InfluxQL statements (farmedge.storage.query) and
    returns each statement's series; InfluxDB's errors as FleetError."""
    from farmedge.storage.query import DatabaseNotFound, InfluxQuery, QueryError

    ask = InfluxQuery(settings, timeout_s=timeout_s)

    def run(statements: Sequence[str]) -> list[list[dict[str, Any]]]:
        try:
            return ask(statements)
        except DatabaseNotFound as exc:
            raise FleetError(
                f"InfluxDB at {ask.where} has no database {exc.database!r}: the edge creates "
                "it on its first start (or farmedge provision influx); check [influx] "
                "database") from None
        except QueryError as exc:
            raise FleetError(str(exc)) from None

    return run


def _where(counties: Sequence[str]) -> str:
    if not counties:
        return ""
    # The ids as written: "." and any other regex character escaped, and "/"
    # (the end of InfluxQL's regex literal) after them.
    alt = "|".join(re.escape(c).replace("/", "\\/") for c in counties)
    return f' WHERE "{Tag.COUNTY}" =~ /^({alt})$/'


def _rows(series: list[dict[str, Any]]) -> list[tuple[tuple[str, str, str], dict[str, Any]]]:
    out = []
    for s in series:
        tags = s.get("tags") or {}
        key = (str(tags.get(Tag.COUNTY, "")), str(tags.get(Tag.FARM, "")),
               str(tags.get(Tag.GATEWAY, "")))
        for row in s.get("values", []):
            out.append((key, {**dict(zip(s["columns"], row, strict=True)),
                              "sensor": tags.get(Tag.SENSOR)}))
    return out


def registered_from_influx(query: Query, counties: Sequence[str]) -> list[Registered]:
    """The registry as the edge last wrote it to InfluxDB."""
    [series] = query([
        f'SELECT last("{G.REGISTERED}") AS "registered", last("{G.REGISTRY_SENSOR_IDS}") AS '
        f'"ids", last("{G.REGISTRY_INTERVAL_S}") AS "interval_s" FROM "{Measurement.GATEWAY}"'
        f"{_where(counties)} {_BY_GATEWAY}"])
    out = []
    for key, row in _rows(series):
        if not row.get("registered"):
            continue
        ids = [x for x in str(row.get("ids") or "").split(",") if x]
        iv = row.get("interval_s")
        out.append(Registered(*key, interval_s=float(iv) if iv else None,
                              sensors=dict.fromkeys(ids)))
    return out


def registered_from_file(registry: Registry, counties: Sequence[str]) -> list[Registered]:
    return [Registered(f.county, f.farm, gid, e.interval_s,
                       {sid: m.interval_s for sid, m in e.sensors.items()}, f.name)
            for f in registry.farms if not counties or f.county in counties
            for gid, e in f.gateways.items()]


def observe(query: Query, counties: Sequence[str]) -> dict[tuple[str, str, str], Observed]:
    where = _where(counties)
    by_gw = _BY_GATEWAY
    gw = f'"{Measurement.GATEWAY}"'
    fields = reading_fields()
    statements = [
        f'SELECT last("{G.ONLINE}") AS "online" FROM {gw}{where} {by_gw}',
        f'SELECT last("{G.OUTBOX_DEPTH}") AS "outbox_depth", last("{G.OUTBOX_OLDEST_AGE_S}") '
        f'AS "outbox_oldest_age_s", last("{G.CLOCK}") AS "clock" FROM {gw}{where} {by_gw}',
        *(f'SELECT last("{f}") AS "v" FROM "{m}"{where} {by_gw}, "{Tag.SENSOR}"'
          for m, f in fields),
    ]
    results = query(statements)
    out: dict[tuple[str, str, str], Observed] = {}
    for key, row in _rows(results[0]):
        o = out.setdefault(key, Observed())
        o.last_status_ms = int(row["time"])
        o.online = bool(row["online"]) if row.get("online") is not None else None
    for key, row in _rows(results[1]):
        o = out.setdefault(key, Observed())
        if row.get("outbox_depth") is not None:
            o.outbox_depth = int(row["outbox_depth"])
        if row.get("outbox_oldest_age_s") is not None:
            o.outbox_oldest_age_s = float(row["outbox_oldest_age_s"])
        o.clock = row.get("clock")
    for (m, f), series in zip(fields, results[2:], strict=True):
        for key, row in _rows(series):
            sid = str(row.get("sensor") or "")
            o = out.setdefault(key, Observed())
            t = int(row["time"])
            o.sensors[sid] = max(o.sensors.get(sid, t), t)
            if (m, f) == _BATTERY and row.get("v") is not None:
                o.battery[sid] = float(row["v"])
    return out


def build_view(registered: Sequence[Registered], observed: dict[tuple[str, str, str], Observed],
               now_ms: int, *, has_registry: bool = True,
               farms: Sequence[str] = ()) -> list[CountyView]:
    """Every registered gateway and every gateway seen, by county."""
    reg = {(r.county, r.farm, r.gateway): r for r in registered}
    keys = sorted(set(reg) | set(observed))
    counties: dict[str, list[GatewayView]] = {}
    for key in keys:
        if farms and key[1] not in farms:
            continue
        counties.setdefault(key[0], []).append(classify(reg.get(key), key, observed.get(key),
                                                        now_ms))
    return [CountyView(c, gs, has_registry) for c, gs in sorted(counties.items())]


# -- output -------------------------------------------------------------------

def _age(ms: int | None, now_ms: int) -> str:
    if ms is None:
        return "never"
    s = max(0.0, (now_ms - ms) / 1000)
    if s < 120:
        return f"{s:.0f} s ago"
    if s < 7200:
        return f"{s / 60:.0f} min ago"
    if s < 172800:
        return f"{s / 3600:.1f} h ago"
    return f"{s / 86400:.1f} d ago"


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _width(text: str) -> int:
    """Columns ``text`` takes in a terminal: Chinese characters take two."""
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def print_table(views: Sequence[CountyView], now_ms: int, out: TextIO) -> None:
    if not views:
        out.write("no gateways: none registered and none seen\n")
        return
    for i, cv in enumerate(views):
        if i:
            out.write("\n")
        rate = cv.idle_rate
        what = "registered" if cv.has_registry else "seen (no registry: open enrollment)"
        gws = "gateway" if cv.registered == 1 else "gateways"
        out.write(f"county {cv.county}: {cv.registered} {gws} {what}, {cv.idle} idle or "
                  f"never seen" + (f" (idle rate {rate:.1%})" if rate is not None else "")
                  + "\n")
        counts = ", ".join(f"{n} {_STATE_TEXT[s].lower()}" for s, n in cv.states().items()
                           if n)
        out.write(f"  {counts}\n")
        rows: list[tuple[str, ...]] = [("FARM", "GATEWAY", "STATE", "LAST SEEN", "OUTBOX",
                                        "OLDEST", "CLOCK", "BATTERY", "NOTE")]
        for g in cv.gateways:
            notes = []
            if g.silent_sensors:
                notes.append("silent: " + ", ".join(g.silent_sensors))
            if not g.registered and cv.has_registry:
                notes.append("not in the registry")
            if g.last_reading_ms is not None and g.state in ("idle", "never_seen", "offline") \
                    and (g.last_seen_ms is None or g.last_reading_ms > g.last_seen_ms):
                notes.append(f"no status, but a reading {_age(g.last_reading_ms, now_ms)}")
            rows.append((
                g.farm, g.gateway, _STATE_TEXT[g.state], _age(g.last_seen_ms, now_ms),
                str(g.outbox_depth) if g.outbox_depth is not None else "-",
                _duration(g.outbox_oldest_age_s) if g.outbox_oldest_age_s is not None else "-",
                g.clock or "-",
                f"{g.battery_v:.2f} V ({g.battery_sensor})" if g.battery_v is not None
                else "-", "; ".join(notes)))
        widths = [max(_width(r[c]) for r in rows) for c in range(len(rows[0]))]
        for r in rows:
            out.write("  " + "  ".join(v + " " * (w - _width(v))
                                       for v, w in zip(r, widths, strict=True))
                      .rstrip() + "\n")


def to_json(views: Sequence[CountyView], now_ms: int) -> dict[str, Any]:
    return {
        "generated_at": _iso(now_ms), "generated_at_ms": now_ms,
        "idle_after_s": IDLE_AFTER_S, "intervals": INTERVALS,
        "default_interval_s": DEFAULT_INTERVAL_S,
        "counties": [cv.to_json(now_ms) for cv in views],
    }


# -- the command ----------------------------------------------------------------


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "fleet", help="every gateway's state, outbox, clock and battery, per county and farm",
        description="The fleet, from InfluxDB and the registry: each gateway's state "
                    "(online, silent sensors, offline, idle: registered but silent over "
                    "24 h, never seen), when it was last heard from, its outbox depth and "
                    "oldest unsent reading, clock and lowest battery, per county and farm; "
                    "and each county's idle rate (share of registered gateways idle or "
                    "never seen).\n\nReads the edge's config for InfluxDB and the registry; "
                    "FARMEDGE_INFLUX_* variables override it (a read-only user is enough)."
                    "\n\nExit status: 0; 1 when InfluxDB cannot be queried; 2 for a wrong "
                    "config or registry.",
        epilog="examples:\n"
               "  farmedge fleet --config /etc/farmedge/edge.toml\n"
               "  farmedge fleet --county suihua --json | jq '.counties[].idle_rate'",
        formatter_class=ParagraphHelpFormatter)
    p.add_argument("--config", "-c", type=Path,
                   default=Path(os.environ["FARMEDGE_CONFIG"])
                   if os.environ.get("FARMEDGE_CONFIG") else None,
                   help="the edge's TOML config, for [influx] and registry (default: "
                        "$FARMEDGE_CONFIG, else defaults and environment)")
    p.add_argument("--registry", type=Path, default=None,
                   help="registry YAML (default: the config's registry; without one, the "
                        "registry the edge last wrote to InfluxDB)")
    p.add_argument("--county", action="append", default=[], metavar="ID",
                   help="only this county (repeat for several)")
    p.add_argument("--farm", action="append", default=[], metavar="ID",
                   help="only this farm (repeat for several)")
    p.add_argument("--json", action="store_true", help="print JSON, for scripts")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from farmedge.config import ConfigError, load_settings
    from farmedge.edge.settings import EdgeSettings
    from farmedge.registry import load_registry

    try:
        settings = load_settings(EdgeSettings, args.config)
        path = args.registry or settings.registry
        registry = load_registry(path) if path else None
    except ConfigError as exc:
        print(f"farmedge fleet: configuration error\n{exc}", file=sys.stderr)
        return 2
    query = influx_query(settings.influx)
    now_ms = int(time.time() * 1000)
    try:
        if registry is not None:
            registered = registered_from_file(registry, args.county)
        else:
            registered = registered_from_influx(query, args.county)
        observed = observe(query, args.county)
    except FleetError as exc:
        print(f"farmedge fleet: {exc}", file=sys.stderr)
        return 1
    views = build_view(registered, observed, now_ms,
                       has_registry=registry is not None or bool(registered), farms=args.farm)
    if args.json:
        sys.stdout.write(json.dumps(to_json(views, now_ms), ensure_ascii=False, indent=2)
                         + "\n")
    else:
        print_table(views, now_ms, sys.stdout)
    return 0
