"""The Grafana dashboards of the service center, generated as JSON.

``python -m farmedge.dashboards`` writes dashboards/json/*.json;
``python -m farmedge.dashboards --check`` fails when the committed files
differ from what this module generates (the tests run it).

Why a small generator instead of grafanalib or grafana-foundation-sdk, and
instead of hand-kept JSON: the JSON is what Grafana provisions and what a site
edits, so it stays committed; but four dashboards repeat the same filters,
units and thresholds, and the county-wide counts union one subquery per
contract field, which is error-prone by hand. The two libraries would add a
dependency whose versions follow Grafana's (grafana-foundation-sdk is
published per Grafana release; grafanalib lags the panel model) for what is
plain dictionaries here. docs/stack.md says more.

Every query is InfluxQL (InfluxDB 1.8, 2.x through its v1 endpoints and DBRP
mapping, 3.x), using Grafana's macros ``$timeFilter`` and ``$__interval``
and the template variables county → farm → gateway / plot / animal in their
regex form (``"farm" =~ /^$farm$/``), which works for one value, several and
All. :func:`expectations` says what each panel's queries must return; the
tests run every query against a real InfluxDB filled by the real pipeline.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from farmedge.storage.schema import reading_fields

__all__ = ["DATASOURCE_UID", "Expect", "dashboards", "expectations", "idle_gateways_query",
           "main", "reading_fields"]

DATASOURCE_UID = "farmedge-influxdb"
DS: dict[str, str] = {"type": "influxdb", "uid": DATASOURCE_UID}
SCHEMA_VERSION = 39

Json = dict[str, Any]
Shape = Literal["timeseries", "table", "single"]
ValueType = Literal["number", "bool", "string"]


@dataclass(frozen=True, slots=True)
class Expect:
    """What one query of one panel must return."""

    dashboard: str
    panel: str
    ref: str
    #: timeseries: GROUP BY time buckets; table: rows; single: one row.
    shape: Shape
    #: Types of the value columns (after the time column), in order; every
    #: column must hold at least one non-null value of its type.
    types: tuple[ValueType, ...]


# -- filters ----------------------------------------------------------------

READING_MEASUREMENTS = ("soil", "weather", "livestock", "water", "device")
_F_COUNTY = '"county" =~ /^$county$/'
_F_FARM = f'{_F_COUNTY} AND "farm" =~ /^$farm$/'
_F_GATEWAY = f'{_F_FARM} AND "gateway" =~ /^$gateway$/'
_F_PLOT = f'{_F_FARM} AND "plot" =~ /^$plot$/'
_F_ANIMAL = f'{_F_FARM} AND "animal" =~ /^$animal$/'
_TS = "GROUP BY time($__interval)"
_FIRING_WINDOW = "30d"
#: A device that reported within this window counts as installed.
_INSTALLED_WINDOW = "7d"


def _per_channel(alias: str, where: str) -> str:
    """One subquery per contract field counting each channel (a sensor's
    kind) that has a reading in ``where``, unioned in one FROM."""
    return ", ".join(
        f'(SELECT count("{f}") AS "{alias}" FROM "{m}" WHERE {where} '
        f'GROUP BY "county", "farm", "gateway", "sensor")'
        for m, f in reading_fields())


# -- panel builders -----------------------------------------------------------

def _target(query: str, ref: str = "A", *, fmt: str = "time_series",
            alias: str | None = None) -> Json:
    t: Json = {"datasource": DS, "refId": ref, "rawQuery": True, "query": query,
               "resultFormat": fmt}
    if alias:
        t["alias"] = alias
    return t


def _thresholds(*steps: tuple[float | None, str]) -> Json:
    return {"mode": "absolute",
            "steps": [{"color": c, "value": v} for v, c in steps]}


_BASE = _thresholds((None, "green"))


class _Board:
    def __init__(self, uid: str, title: str, *, description: str, time_from: str,
                 variables: list[Json], tags: Sequence[str] = ("farmedge",),
                 annotations: Sequence[Json] = ()) -> None:
        self.uid = uid
        self.doc: Json = {
            "uid": uid,
            "title": title,
            "description": description,
            "tags": list(tags),
            "timezone": "browser",
            "editable": True,
            "graphTooltip": 1,
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "refresh": "1m",
            "time": {"from": time_from, "to": "now"},
            "timepicker": {"refresh_intervals": ["30s", "1m", "5m", "15m", "1h"]},
            "fiscalYearStartMonth": 0,
            "liveNow": False,
            "weekStart": "monday",
            "links": [{"type": "dashboards", "tags": ["farmedge"], "asDropdown": True,
                       "title": "farmedge", "includeVars": True, "keepTime": True,
                       "icon": "external link", "targetBlank": False, "tooltip": "",
                       "url": ""}],
            "templating": {"list": variables},
            "annotations": {"list": [_BUILTIN_ANNOTATION, *annotations]},
            "panels": [],
        }
        self.expect: list[Expect] = []
        self._x = self._y = self._row_h = 0

    def _place(self, w: int, h: int) -> Json:
        if self._x + w > 24:
            self._x, self._y, self._row_h = 0, self._y + self._row_h, 0
        pos = {"x": self._x, "y": self._y, "w": w, "h": h}
        self._x += w
        self._row_h = max(self._row_h, h)
        return pos

    def row(self, title: str) -> None:
        if self._x:
            self._x, self._y, self._row_h = 0, self._y + self._row_h, 0
        self.doc["panels"].append({
            "type": "row", "title": title, "id": len(self.doc["panels"]) + 1,
            "collapsed": False, "panels": [],
            "gridPos": {"x": 0, "y": self._y, "w": 24, "h": 1}})
        self._y += 1

    def panel(self, kind: str, title: str, targets: list[tuple[Json, Shape,
              tuple[ValueType, ...]]], *, w: int, h: int, description: str = "",
              unit: str = "short", thresholds: Json | None = None, decimals: int | None = None,
              mappings: list[Json] | None = None, options: Json | None = None,
              custom: Json | None = None, overrides: list[Json] | None = None,
              interval: str | None = "1m", transformations: list[Json] | None = None,
              minmax: tuple[float | None, float | None] = (None, None)) -> None:
        defaults: Json = {"unit": unit, "thresholds": thresholds or _BASE,
                          "color": {"mode": "thresholds" if kind in {"stat", "gauge",
                                                                     "bargauge"}
                                    else "palette-classic"}}
        if decimals is not None:
            defaults["decimals"] = decimals
        if mappings:
            defaults["mappings"] = mappings
        if minmax[0] is not None:
            defaults["min"] = minmax[0]
        if minmax[1] is not None:
            defaults["max"] = minmax[1]
        if custom:
            defaults["custom"] = custom
        p: Json = {
            "type": kind,
            "title": title,
            "id": len(self.doc["panels"]) + 1,
            "gridPos": self._place(w, h),
            "datasource": DS,
            "description": description,
            "targets": [t for t, _, _ in targets],
            "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
            "options": options or {},
        }
        if interval:
            p["interval"] = interval
        if transformations:
            p["transformations"] = transformations
        self.doc["panels"].append(p)
        for t, shape, types in targets:
            self.expect.append(Expect(self.uid, title, t["refId"], shape, types))


_BUILTIN_ANNOTATION: Json = {
    "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
    "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
    "type": "dashboard",
}


def _query_var(name: str, label: str, query: str, *, multi: bool = True) -> Json:
    return {
        "type": "query", "name": name, "label": label, "datasource": DS,
        "query": query, "definition": query, "refresh": 2, "sort": 7,
        "multi": multi, "includeAll": True, "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [], "hide": 0, "regex": "", "skipUrlSync": False,
    }


def _custom_var(name: str, label: str, values: Sequence[str], default: str,
                description: str) -> Json:
    return {
        "type": "custom", "name": name, "label": label, "query": ",".join(values),
        "description": description, "multi": False, "includeAll": False, "hide": 0,
        "current": {"selected": True, "text": default, "value": default},
        "options": [{"selected": v == default, "text": v, "value": v} for v in values],
        "skipUrlSync": False,
    }


_FROM_READINGS = "/^(" + "|".join((*READING_MEASUREMENTS, "gateway")) + ")$/"
V_COUNTY = _query_var("county", "County",
                      f'SHOW TAG VALUES FROM {_FROM_READINGS} WITH KEY = "county"')
V_FARM = _query_var("farm", "Farm", f'SHOW TAG VALUES FROM {_FROM_READINGS} WITH KEY = "farm" '
                                    f"WHERE {_F_COUNTY}")
V_GATEWAY = _query_var("gateway", "Gateway",
                       f'SHOW TAG VALUES FROM {_FROM_READINGS} WITH KEY = "gateway" '
                       f"WHERE {_F_FARM}")
V_PLOT = _query_var("plot", "Plot", f'SHOW TAG VALUES FROM "soil" WITH KEY = "plot" '
                                    f"WHERE {_F_FARM}")
V_ANIMAL = _query_var("animal", "Animal", f'SHOW TAG VALUES FROM "livestock" WITH KEY = '
                                          f'"animal" WHERE {_F_FARM}')
V_SILENCE = _custom_var("silence", "Reporting within", ["30m", "1h", "3h", "6h", "1d"], "1h",
                        "A device that sent nothing for this long counts as idle.")
V_FEVER = _custom_var("fever", "Fever from (°C)", ["39.5", "40", "40.5"], "39.5",
                      "Body temperature that counts as fever: cattle 39.5 °C mild, 40 °C "
                      "case definition (docs/alerts.md).")
VARIABLES: dict[str, Json] = {v["name"]: v for v in (V_COUNTY, V_FARM, V_GATEWAY, V_PLOT,
                                                     V_ANIMAL, V_SILENCE, V_FEVER)}

# -- shared field settings ------------------------------------------------------

_LINE: Json = {"drawStyle": "line", "lineWidth": 2, "fillOpacity": 8, "showPoints": "never",
               "spanNulls": 3_600_000, "axisPlacement": "auto"}
_BARS: Json = {"drawStyle": "bars", "fillOpacity": 70, "lineWidth": 1, "showPoints": "never",
               "axisPlacement": "auto"}
_STACKED_BARS: Json = {**_BARS, "stacking": {"mode": "normal", "group": "A"}}
_LEGEND: Json = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                 "tooltip": {"mode": "multi", "sort": "desc"}}
_STAT: Json = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
               "colorMode": "background", "graphMode": "none", "justifyMode": "center",
               "textMode": "value_and_name", "orientation": "auto", "wideLayout": True}
_TABLE: Json = {"showHeader": True, "cellHeight": "sm",
                "footer": {"show": False, "reducer": ["sum"], "countRows": False}}
_ONLINE_MAP: list[Json] = [{"type": "value", "options": {
    "true": {"text": "online", "color": "green", "index": 0},
    "false": {"text": "OFFLINE", "color": "red", "index": 1}}}]
_CLOCK_MAP: list[Json] = [{"type": "value", "options": {
    "synced": {"text": "synced", "color": "green", "index": 0},
    "unsynced": {"text": "UNSYNCED", "color": "orange", "index": 1},
    "true": {"text": "synced", "color": "green", "index": 2},
    "false": {"text": "UNSYNCED", "color": "orange", "index": 3}}}]

# Defaults a site can change in Grafana; sources in DOMAIN notes / docs/alerts.md.
#: Soil water target band, % volumetric (clay loam: maize trigger ≈25.5 %, FC 36 %).
MOISTURE_STEPS = _thresholds((None, "red"), (18, "orange"), (22, "green"), (36, "blue"))
#: Sowing soil temperature: maize ≥10 °C, soybean ≥12 °C; ≤5 °C chills seed.
SOIL_T_STEPS = _thresholds((None, "blue"), (5, "light-blue"), (10, "green"), (12, "dark-green"))
#: Cattle: normal 37.8-39.2 °C; fever ≥39.5 mild, ≥40 case definition.
BODY_T_STEPS = _thresholds((None, "blue"), (37.8, "green"), (39.5, "orange"), (40, "red"))
#: THI bands for dairy cattle: 68 mild, 72 moderate, 80 severe, 90 emergency.
THI_STEPS = _thresholds((None, "green"), (68, "yellow"), (72, "orange"), (80, "red"),
                        (90, "dark-red"))
#: Trough low at 20 % of its height.
WATER_STEPS = _thresholds((None, "red"), (20, "orange"), (30, "green"))


_AREA: Json = {**_LINE, "thresholdsStyle": {"mode": "line+area"}}
_DASHED: Json = {**_LINE, "thresholdsStyle": {"mode": "dashed"}}


def idle_gateways_query(county_filter: str) -> str:
    """Registered, heard from within 24 h, idle and the idle rate, per
    county, from the ``gateway`` measurement alone (InfluxQL cannot join two
    measurements): the registry points the edge writes every hour
    (``registered``) and the status messages (``online``). One bucket over
    all time with fill(0) makes a gateway without a status count 0 rather
    than vanish; ceil(n / (n + 1)) turns a count into 0 or 1."""
    per_gw = ('SELECT last("registered") AS "registered", count("online") AS "statuses" '
              f'FROM "gateway" WHERE time > now() - 24h AND {county_filter} '
              'GROUP BY time(100000d), "county", "farm", "gateway" fill(0)')
    flags = ('SELECT "registered", ceil("statuses" / ("statuses" + 1)) AS "heard" '
             f'FROM ({per_gw}) WHERE "registered" = 1')
    return ('SELECT sum("registered") AS "registered", sum("heard") AS "heard in 24 h", '
            'sum("registered") - sum("heard") AS "idle", '
            '1 - sum("heard") / sum("registered") AS "idle rate" '
            f'FROM ({flags}) GROUP BY "county"')


# -- the dashboards -------------------------------------------------------------

def county_overview() -> _Board:
    b = _Board("farmedge-county", "County overview", time_from="now-24h",
               description="What the service center watches all day: farms and gateways "
                           "online, idle equipment, alerts, data flow, dry plots, sick "
                           "animals.", variables=[V_COUNTY, V_SILENCE, V_FEVER])
    gw_last = (f'SELECT last("online") AS "online" FROM "gateway" WHERE $timeFilter AND '
               f'{_F_COUNTY} GROUP BY "county", "farm", "gateway"')
    b.panel("stat", "Farms online", [(_target(
        f'SELECT count("gateways") AS "farms" FROM (SELECT count("online") AS "gateways" '
        f'FROM ({gw_last}) WHERE "online" = true GROUP BY "county", "farm")', fmt="table"),
        "single", ("number",))], w=6, h=4, unit="none", decimals=0,
        description="Farms with at least one gateway whose last status in the time range "
                    "says online.", options=_STAT, interval=None)
    b.panel("stat", "Gateways online", [
        (_target(f'SELECT count("online") AS "online" FROM ({gw_last}) WHERE "online" = true',
                 "A", fmt="table"), "single", ("number",)),
        (_target(f'SELECT count("online") AS "known" FROM ({gw_last})', "B", fmt="table"),
         "single", ("number",)),
    ], w=6, h=4, unit="none", decimals=0, options=_STAT, interval=None,
        description="Online: last status says online. Known: sent a status in the time "
                    "range.")
    sources = (f'{_per_channel("installed", f"time > now() - {_INSTALLED_WINDOW} AND {_F_COUNTY}")}'
               f', {_per_channel("reporting", f"time > now() - $silence AND {_F_COUNTY}")}')
    b.panel("stat", "Idle equipment", [(_target(
        f'SELECT 1 - count("reporting") / count("installed") AS "idle" FROM {sources}',
        alias="$m"), "table", ("number",))],
        w=12, h=4, unit="percentunit", decimals=1, options=_STAT, interval=None,
        thresholds=_thresholds((None, "green"), (0.05, "orange"), (0.15, "red")),
        description=f"Share of installed devices that are silent, per kind of device (soil, "
                    f"weather, livestock, water, device). A device channel (one kind of one "
                    f"sensor) is installed when it reported within {_INSTALLED_WINDOW}, "
                    f"reporting when it did within $silence. The gateway health dashboard "
                    f"and the alert engine's 'sensor silent' alerts say which ones.")
    b.panel("table", "Idle gateways", [(_target(
        idle_gateways_query(_F_COUNTY), fmt="table"), "table",
        ("number", "number", "number", "number"))],
        w=12, h=7, unit="none", decimals=0, interval=None,
        options={**_TABLE, "sortBy": [{"displayName": "idle rate", "desc": True}]},
        custom={"align": "auto", "cellOptions": {"type": "auto"}, "inspect": False},
        transformations=[{"id": "organize", "options": {
            "excludeByName": {"Time": True}, "indexByName": {},
            "renameByName": {"county": "County"}}}],
        overrides=[{"matcher": {"id": "byName", "options": "idle rate"},
                    "properties": [
                        {"id": "unit", "value": "percentunit"}, {"id": "decimals", "value": 1},
                        {"id": "thresholds", "value": _thresholds(
                            (None, "green"), (0.05, "orange"), (0.15, "red"))},
                        {"id": "custom.cellOptions", "value": {"type": "color-background"}}]}],
        description="Per county: gateways in the registry (the edge writes it to InfluxDB "
                    "every hour), those heard from (a status message) within 24 h, the "
                    "idle ones (registered, but not heard from for 24 h or never) and their "
                    "share, the idle rate. 'farmedge fleet' names them, with the same "
                    "numbers.")
    b.panel("bargauge", "Devices reporting vs installed", [(_target(
        f'SELECT count("reporting") AS "reporting", count("installed") AS "installed" '
        f"FROM {sources}", alias="$m $col"), "table", ("number", "number"))],
        w=12, h=7, unit="none", decimals=0, interval=None,
        thresholds=_thresholds((None, "blue")),
        options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                 "orientation": "horizontal", "displayMode": "basic", "showUnfilled": True,
                 "valueMode": "color", "namePlacement": "left"},
        overrides=[{"matcher": {"id": "byRegexp", "options": ".*reporting"},
                    "properties": [{"id": "color", "value": {"mode": "fixed",
                                                             "fixedColor": "green"}}]}],
        description=f"Device channels reporting within $silence against those seen within "
                    f"{_INSTALLED_WINDOW}, per kind of device.")
    last_event = ('SELECT last("count") AS "n", "event", "severity" FROM "alerts" WHERE '
                  f'"event" =~ /^(raise|worse|clear)$/ AND time > now() - {_FIRING_WINDOW} '
                  f'AND {_F_COUNTY} GROUP BY "county", "farm", "family", "scope", "scope_id"')
    b.panel("bargauge", "Alerts firing by severity", [
        (_target(f'SELECT count("n") AS "{sev}" FROM ({last_event}) WHERE "event" != \'clear\' '
                 f"AND \"severity\" = '{sev}'", ref, fmt="table"), "single", ("number",))
        for ref, sev in (("A", "critical"), ("B", "warning"), ("C", "info"))],
        w=8, h=7, unit="none", decimals=0, interval=None,
        thresholds=_thresholds((None, "green"), (1, "orange")),
        overrides=[{"matcher": {"id": "byName", "options": n},
                    "properties": [{"id": "color", "value": {"mode": "fixed",
                                                             "fixedColor": c}}]}
                   for n, c in (("critical", "red"), ("warning", "orange"), ("info", "blue"))],
        options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                 "orientation": "horizontal", "displayMode": "basic", "showUnfilled": True,
                 "valueMode": "color"},
        description=f"Alert groups whose last event (raise, worse or clear) within "
                    f"{_FIRING_WINDOW} is not a clear, by their current severity, from the "
                    f"alert engine's 'alerts' measurement. An empty bar: none firing.")
    per_min = ", ".join(
        f'(SELECT count("{f}") AS "n" FROM "{m}" WHERE $timeFilter AND {_F_COUNTY} {_TS})'
        for m, f in reading_fields())
    b.panel("timeseries", "Readings per minute", [(_target(
        f'SELECT sum("n") * 60000 / $__interval_ms AS "readings" FROM {per_min} '
        f"WHERE $timeFilter {_TS} fill(0)", alias="$m"), "timeseries",
        ("number",))], w=16, h=7, unit="short", custom=_STACKED_BARS, options=_LEGEND,
        interval="5m",
        description="Readings stored for this county per minute by kind of device, placed "
                    "at their measurement time.")
    b.row("Needs attention")
    b.panel("table", "Driest plots", [(_target(
        f'SELECT last("moisture") AS "soil water", min("moisture") AS "lowest" FROM "soil" '
        f'WHERE $timeFilter AND {_F_COUNTY} AND "plot" != \'\' '
        f'GROUP BY "county", "farm", "plot"', fmt="table"), "table", ("number", "number"))],
        w=12, h=10, unit="percent", decimals=1, thresholds=MOISTURE_STEPS, interval=None,
        options={**_TABLE, "sortBy": [{"displayName": "soil water", "desc": False}]},
        custom={"align": "auto", "cellOptions": {"type": "color-background"},
                "inspect": False},
        overrides=[{"matcher": {"id": "byName", "options": "Time"},
                    "properties": [{"id": "custom.hidden", "value": True}]}],
        transformations=[{"id": "organize", "options": {
            "excludeByName": {"Time": True}, "indexByName": {},
            "renameByName": {"county": "County", "farm": "Farm", "plot": "Plot"}}}],
        description="Latest soil water (% volumetric) per plot, driest first. Red below "
                    "18 %, orange below 22 % (irrigation trigger for maize on clay loam is "
                    "about 25.5 %, field capacity about 36 %).")
    b.panel("table", "Animals with fever", [(_target(
        'SELECT "highest", "latest", "county", "farm", "animal" FROM (SELECT '
        'max("body_temperature") AS "highest", last("body_temperature") AS "latest" FROM '
        f'"livestock" WHERE $timeFilter AND {_F_COUNTY} GROUP BY "county", "farm", "animal")'
        ' WHERE "highest" >= $fever', fmt="table"), "table",
        ("number", "number", "string", "string", "string"))],
        w=12, h=10, unit="celsius", decimals=1, thresholds=BODY_T_STEPS, interval=None,
        options={**_TABLE, "sortBy": [{"displayName": "highest", "desc": True}]},
        custom={"align": "auto", "cellOptions": {"type": "color-text"}, "inspect": False},
        transformations=[{"id": "organize", "options": {
            "excludeByName": {"Time": True}, "indexByName": {},
            "renameByName": {"county": "County", "farm": "Farm", "animal": "Animal"}}}],
        description="Animals whose body temperature reached $fever °C in the time range. "
                    "Rumen boluses read about 2.3 °C low for up to 100 min after drinking, "
                    "so 'latest' can look normal while 'highest' shows the fever.")
    return b


def farm() -> _Board:
    anno = {
        "name": "Alerts", "datasource": DS, "enable": True, "hide": False,
        "iconColor": "red",
        "query": ('SELECT "title", "text" FROM "alerts" WHERE $timeFilter AND '
                  f"{_F_FARM} AND \"event\" =~ /^(raise|worse|clear|escalate)$/"),
        "tagsColumn": "severity,event,scope_id", "textColumn": "text",
        "titleColumn": "title",
    }
    b = _Board("farmedge-farm", "Farm", time_from="now-7d",
               description="One farm: soil per plot, weather, livestock, water; alerts as "
                           "annotations.",
               variables=[V_COUNTY, V_FARM, V_PLOT, V_ANIMAL], annotations=[anno])
    b.row("Fields")
    b.panel("timeseries", "Soil moisture per plot", [(_target(
        f'SELECT mean("moisture") FROM "soil" WHERE $timeFilter AND {_F_PLOT} '
        f'{_TS}, "plot", "sensor" fill(none)', alias="$tag_plot $tag_sensor"), "timeseries",
        ("number",))], w=12, h=9, unit="percent", decimals=1, thresholds=MOISTURE_STEPS,
        custom=_AREA, options=_LEGEND, minmax=(0, 50),
        description="Volumetric water content. Green band: the target (22-36 %, clay loam; "
                    "maize irrigation trigger ≈25.5 %). Below 22 % plan irrigation.")
    b.panel("timeseries", "Soil temperature", [(_target(
        f'SELECT mean("temperature") FROM "soil" WHERE $timeFilter AND {_F_PLOT} '
        f'{_TS}, "plot", "sensor" fill(none)', alias="$tag_plot $tag_sensor"), "timeseries",
        ("number",))], w=12, h=9, unit="celsius", decimals=1, thresholds=SOIL_T_STEPS,
        custom=_DASHED, options=_LEGEND,
        description="Sowing: maize when 5-10 cm soil stays ≥10 °C, soybean ≥12 °C; "
                    "≤5 °C within 48 h of planting chills the seed.")
    b.panel("timeseries", "Soil EC", [(_target(
        f'SELECT mean("ec") FROM "soil" WHERE $timeFilter AND {_F_PLOT} '
        f'{_TS}, "plot", "sensor" fill(none)', alias="$tag_plot $tag_sensor"), "timeseries",
        ("number",))], w=12, h=8, unit="suffix: µS/cm", decimals=0, custom=_LINE,
        options=_LEGEND, description="Bulk electrical conductivity; rises with soil water.")
    b.panel("timeseries", "Rainfall", [(_target(
        f'SELECT sum("rainfall") FROM "weather" WHERE $timeFilter AND {_F_FARM} '
        f'{_TS}, "sensor" fill(0)', alias="$tag_sensor"), "timeseries", ("number",))],
        w=12, h=8, unit="lengthmm", decimals=1, custom=_BARS, options=_LEGEND,
        interval="1h", description="Rain per interval (each reading is rain since the "
                                   "previous one).")
    b.row("Livestock")
    b.panel("timeseries", "Body temperature", [(_target(
        f'SELECT mean("body_temperature") FROM "livestock" WHERE $timeFilter AND '
        f'{_F_ANIMAL} {_TS}, "animal" fill(none)', alias="$tag_animal"), "timeseries",
        ("number",))], w=12, h=9, unit="celsius", decimals=2, thresholds=BODY_T_STEPS,
        custom=_DASHED, options=_LEGEND, minmax=(36, 42),
        description="Cattle: normal 37.8-39.2 °C; orange line 39.5 °C mild fever, red 40 °C. "
                    "Dips of about 2 °C after drinking are normal for rumen boluses.")
    b.panel("timeseries", "Activity", [(_target(
        f'SELECT mean("activity") FROM "livestock" WHERE $timeFilter AND {_F_ANIMAL} '
        f'{_TS}, "animal" fill(none)', alias="$tag_animal"), "timeseries", ("number",))],
        w=12, h=9, unit="suffix: steps/h", decimals=0, custom=_LINE, options=_LEGEND,
        description="A drop against the animal's own pattern comes 1-3 days before "
                    "illness is seen; peaks mark oestrus.")
    b.panel("timeseries", "Temperature-humidity index (THI)", [(_target(
        'SELECT 0.8 * mean("temperature") + mean("humidity") / 100 * '
        '(mean("temperature") - 14.4) + 46.4 AS "THI" FROM "weather" WHERE $timeFilter AND '
        f'{_F_FARM} {_TS}, "sensor" fill(none)', alias="THI $tag_sensor"), "timeseries",
        ("number",))], w=12, h=8, unit="none", decimals=0, thresholds=THI_STEPS,
        custom=_AREA, options=_LEGEND,
        description="THI = 0.8·T + RH·(T − 14.4) + 46.4 from air temperature and humidity. "
                    "Dairy cattle: 68 mild, 72 moderate, 80 severe, 90 emergency heat stress.")
    b.panel("timeseries", "Water levels", [(_target(
        f'SELECT mean("level") FROM "water" WHERE $timeFilter AND {_F_FARM} '
        f'{_TS}, "sensor" fill(none)', alias="$tag_sensor"), "timeseries", ("number",))],
        w=12, h=8, unit="percent", decimals=0, thresholds=WATER_STEPS,
        custom=_AREA, options=_LEGEND, minmax=(0, 100),
        description="Trough or tank level as a share of its height; low at 20 %.")
    b.row("Devices")
    b.panel("timeseries", "Battery voltage", [(_target(
        f'SELECT mean("battery_voltage") FROM "device" WHERE $timeFilter AND {_F_FARM} '
        f'{_TS}, "sensor" fill(none)', alias="$tag_sensor"), "timeseries", ("number",))],
        w=12, h=7, unit="volt", decimals=2, custom=_LINE, options=_LEGEND,
        description="Battery of each sensor node.")
    b.panel("table", "Alerts in the time range", [(_target(
        'SELECT "text", "severity", "event", "scope_id" FROM "alerts" WHERE $timeFilter AND '
        f"{_F_FARM} AND \"event\" =~ /^(raise|worse|clear|escalate)$/ ORDER BY time DESC "
        "LIMIT 50",
        fmt="table"), "table", ("string", "string", "string", "string"))],
        w=12, h=7, unit="none", interval=None, options=_TABLE,
        custom={"align": "auto", "cellOptions": {"type": "auto"}, "inspect": True},
        description="Alerts raised, worsened, escalated and cleared, newest first.")
    return b


def gateway_health() -> _Board:
    b = _Board("farmedge-gateways", "Gateway health", time_from="now-24h",
               description="Each farm gateway: online, uptime, outbox backlog, drops, clock, "
                           "CPU temperature, last seen.",
               variables=[V_COUNTY, V_FARM, V_GATEWAY])
    where = f"{_F_GATEWAY}"
    grp = 'GROUP BY "county", "farm", "gateway"'
    b.panel("table", "Gateways", [(_target(
        f'SELECT last("online") AS "online" FROM "gateway" WHERE time > now() - 30d AND '
        f"{where} {grp}", "A", fmt="table"), "table", ("bool",)),
        (_target(
            'SELECT last("uptime_s") AS "uptime", last("outbox_depth") AS "outbox", '
            'last("outbox_oldest_age_s") AS "oldest unsent", last("dropped") AS "dropped", '
            'last("clock") AS "clock", last("cpu_temperature") AS "CPU", '
            'last("disk_free_mb") AS "disk free" FROM "gateway" WHERE time > now() - 30d AND '
            f"{where} {grp}", "B", fmt="table"), "table",
         ("number", "number", "number", "number", "string", "number", "number"))],
        w=24, h=9, unit="none", interval=None,
        options={**_TABLE, "sortBy": [{"displayName": "Last seen", "desc": False}]},
        custom={"align": "auto", "cellOptions": {"type": "auto"}, "inspect": False},
        transformations=[
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {
                "excludeByName": {}, "indexByName": {},
                "renameByName": {"Time": "Last seen", "county": "County", "farm": "Farm",
                                 "gateway": "Gateway"}}}],
        overrides=[
            {"matcher": {"id": "byName", "options": "online"},
             "properties": [{"id": "mappings", "value": _ONLINE_MAP},
                            {"id": "custom.cellOptions",
                             "value": {"type": "color-background"}}]},
            {"matcher": {"id": "byName", "options": "clock"},
             "properties": [{"id": "mappings", "value": _CLOCK_MAP},
                            {"id": "custom.cellOptions", "value": {"type": "color-text"}}]},
            {"matcher": {"id": "byName", "options": "uptime"},
             "properties": [{"id": "unit", "value": "s"}]},
            {"matcher": {"id": "byName", "options": "oldest unsent"},
             "properties": [{"id": "unit", "value": "s"},
                            {"id": "thresholds", "value": _thresholds(
                                (None, "green"), (1800, "orange"), (21600, "red"))},
                            {"id": "custom.cellOptions", "value": {"type": "color-text"}}]},
            {"matcher": {"id": "byName", "options": "CPU"},
             "properties": [{"id": "unit", "value": "celsius"},
                            {"id": "thresholds", "value": _thresholds(
                                (None, "green"), (70, "orange"), (80, "red"))},
                            {"id": "custom.cellOptions", "value": {"type": "color-text"}}]},
            {"matcher": {"id": "byName", "options": "disk free"},
             "properties": [{"id": "unit", "value": "decmbytes"}]},
            {"matcher": {"id": "byName", "options": "Last seen"},
             "properties": [{"id": "unit", "value": "dateTimeFromNow"}]}],
        description="Last status of each gateway within 30 days. 'Last seen' is when the "
                    "last status arrived; a gateway that lost power without its last will "
                    "keeps its last 'online' until the alert engine's offline rule fires.")
    for title, field, mappings, desc in (
        ("Online", "online", _ONLINE_MAP,
         "Green while the gateway's status says online; red after its last will or an "
         "offline status."),
        ("Clock", "clock_synced", _CLOCK_MAP,
         "Orange while the gateway's clock is not NTP-synced (after a power cut without a "
         "real-time clock): its readings' times are estimates."),
    ):
        b.panel("state-timeline", title, [(_target(
            f'SELECT last("{field}") FROM "gateway" WHERE $timeFilter AND {where} '
            f'{_TS}, "gateway" fill(previous)', alias="$tag_gateway"), "timeseries",
            ("bool",))],
            w=12, h=8, unit="none", mappings=mappings, interval="5m",
            options={"showValue": "never", "rowHeight": 0.8, "mergeValues": True,
                     "alignValue": "left", "legend": {"showLegend": False,
                                                      "displayMode": "list",
                                                      "placement": "bottom"}},
            description=desc)
    for title, field, unit, steps, agg, desc in (
        ("Outbox depth", "outbox_depth", "short",
         _thresholds((None, "green"), (1000, "orange"), (10000, "red")), "max",
         "Readings waiting in the gateway's outbox for the uplink."),
        ("Oldest unsent reading", "outbox_oldest_age_s", "s",
         _thresholds((None, "green"), (1800, "orange"), (21600, "red")), "max",
         "Age of the oldest reading not yet acknowledged by the broker."),
        ("CPU temperature", "cpu_temperature", "celsius",
         _thresholds((None, "green"), (70, "orange"), (80, "red")), "mean",
         "A Raspberry Pi throttles at 80-85 °C."),
        ("Uptime", "uptime_s", "s", None, "last",
         "Seconds since the gateway agent started; drops to 0 mark restarts or power cuts."),
    ):
        b.panel("timeseries", title, [(_target(
            f'SELECT {agg}("{field}") FROM "gateway" WHERE $timeFilter AND {where} '
            f'{_TS}, "gateway" fill(none)', alias="$tag_gateway"), "timeseries",
            ("number",))], w=12, h=8, unit=unit, thresholds=steps,
            custom=_DASHED if steps else _LINE, options=_LEGEND, description=desc)
    b.panel("timeseries", "Readings dropped", [(_target(
        f'SELECT max("dropped") FROM "gateway" WHERE $timeFilter '
        f'AND {where} {_TS}, "gateway" fill(none)', alias="$tag_gateway"), "timeseries",
        ("number",))], w=12, h=8, unit="short", decimals=0,
        thresholds=_thresholds((None, "green"), (1, "red")), custom=_DASHED, options=_LEGEND,
        description="Readings the gateway had to drop since its agent started (outbox full "
                    "or too old), as its status reports them. Should stay at 0; a step up "
                    "means readings were lost on the farm.")
    b.panel("timeseries", "Messages missing (sequence gaps)", [(_target(
        f'SELECT sum("seq_gap") FROM "gateway" WHERE $timeFilter AND {where} '
        f'{_TS}, "gateway" fill(none)', alias="$tag_gateway"), "timeseries", ("number",))],
        w=12, h=8, unit="short", decimals=0, custom=_BARS, options=_LEGEND,
        description="Gaps in a gateway's message sequence numbers seen by the edge.")
    return b


def ingest_health() -> _Board:
    b = _Board("farmedge-ingest", "Ingest health", time_from="now-6h",
               description="The edge service: readings per second, rejects by reason, "
                           "spool, write latency.", variables=[])
    grp = f'{_TS}, "instance" fill(none)'
    b.panel("timeseries", "Readings per second", [
        (_target(f'SELECT non_negative_derivative(max("readings"), 1s) FROM "edge" WHERE '
                 f"$timeFilter {grp}", "A", alias="readings $tag_instance"), "timeseries",
         ("number",)),
        (_target(f'SELECT non_negative_derivative(max("messages"), 1s) FROM "edge" WHERE '
                 f"$timeFilter {grp}", "B", alias="messages $tag_instance"), "timeseries",
         ("number",)),
    ], w=12, h=8, unit="suffix: /s", decimals=1, custom=_LINE, options=_LEGEND,
        interval="10s", description="Readings and MQTT messages the edge took, per second.")
    b.panel("timeseries", "Rejects by reason", [(_target(
        f'SELECT sum("count") FROM "ingest_errors" WHERE $timeFilter {_TS}, "reason" '
        "fill(none)", alias="$tag_reason"), "timeseries", ("number",))],
        w=12, h=8, unit="short", decimals=0, custom=_STACKED_BARS, options=_LEGEND,
        description="Messages and readings sent to the dead-letter path, by reason.")
    b.panel("timeseries", "Spool depth", [
        (_target(f'SELECT max("spool_lines") FROM "edge" WHERE $timeFilter {grp}', "A",
                 alias="spooled $tag_instance"), "timeseries", ("number",)),
        (_target(f'SELECT max("spool_dropped") FROM "edge" WHERE $timeFilter {grp}', "B",
                 alias="dropped $tag_instance"), "timeseries", ("number",)),
    ], w=12, h=8, unit="short", decimals=0,
        thresholds=_thresholds((None, "green"), (1, "orange")), custom=_DASHED,
        options=_LEGEND, interval="10s",
        description="Lines waiting in the edge's local spool while InfluxDB is unreachable; "
                    "'dropped' counts lines a full spool had to drop (must stay 0).")
    b.panel("timeseries", "InfluxDB write latency", [
        (_target(f'SELECT max("write_p99_ms") FROM "edge" WHERE $timeFilter {grp}', "A",
                 alias="p99 $tag_instance"), "timeseries", ("number",)),
        (_target(f'SELECT mean("write_p50_ms") FROM "edge" WHERE $timeFilter {grp}', "B",
                 alias="p50 $tag_instance"), "timeseries", ("number",)),
    ], w=12, h=8, unit="ms", decimals=1,
        thresholds=_thresholds((None, "green"), (500, "orange"), (1500, "red")),
        custom=_DASHED, options=_LEGEND, interval="10s",
        description="Time of one batch write to InfluxDB, per 10 s window.")
    b.panel("timeseries", "Messages waiting for acknowledgement", [(_target(
        f'SELECT max("pending") FROM "edge" WHERE $timeFilter {grp}',
        alias="$tag_instance"), "timeseries", ("number",))],
        w=12, h=7, unit="short", decimals=0, custom=_LINE, options=_LEGEND, interval="10s",
        description="Messages received and not yet durable; stays high when writes stall.")
    b.panel("table", "Latest rejects", [(_target(
        'SELECT "reason", "gateway", "topic", "detail", "excerpt" FROM "ingest_errors" '
        "WHERE $timeFilter ORDER BY time DESC LIMIT 100", fmt="table"), "table",
        ("string", "string", "string", "string", "string"))],
        w=12, h=7, unit="none", interval=None, options=_TABLE,
        custom={"align": "auto", "cellOptions": {"type": "auto"}, "inspect": True},
        description="The dead-letter path: what was rejected, from where, and why.")
    return b


def _boards() -> list[_Board]:
    return [county_overview(), farm(), gateway_health(), ingest_health()]


def dashboards() -> dict[str, Json]:
    """uid -> dashboard JSON."""
    return {b.uid: b.doc for b in _boards()}


def expectations() -> list[Expect]:
    return [e for b in _boards() for e in b.expect]


def _render(doc: Json) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _files(out: Path) -> dict[Path, str]:
    return {out / f"{uid}.json": _render(doc) for uid, doc in dashboards().items()}


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m farmedge.dashboards",
                                 description="Write the Grafana dashboards as JSON.")
    ap.add_argument("--out", type=Path, default=Path("dashboards/json"))
    ap.add_argument("--check", action="store_true",
                    help="exit 1 when the files differ from what would be written")
    args = ap.parse_args(list(argv) if argv is not None else None)
    files = _files(args.out)
    if args.check:
        stale = [str(p) for p, text in files.items()
                 if not p.exists() or p.read_text(encoding="utf-8") != text]
        if stale:
            print("out of date (run python -m farmedge.dashboards): " + ", ".join(stale),
                  file=sys.stderr)
            return 1
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for p, text in files.items():
        p.write_text(text, encoding="utf-8")
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
