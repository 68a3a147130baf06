"""The pieces dashboards are made of: a board that places panels on
Grafana's grid and records what each query must return (:class:`Expect`),
targets, thresholds, template variables and shared field settings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["AREA", "BARS", "BASE", "BODY_T_STEPS", "CLOCK_MAP", "DASHED", "DATASOURCE_UID", "DS",
           "LEGEND", "LINE", "MOISTURE_STEPS", "ONLINE_MAP", "SOIL_T_STEPS", "STACKED_BARS",
           "STAT", "TABLE", "THI_STEPS", "WATER_STEPS", "Board", "Expect", "Json", "Shape",
           "ValueType", "custom_var", "query_var", "target", "thresholds"]

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


# -- panel builders -----------------------------------------------------------

def target(query: str, ref: str = "A", *, fmt: str = "time_series",
           alias: str | None = None) -> Json:
    t: Json = {"datasource": DS, "refId": ref, "rawQuery": True, "query": query,
               "resultFormat": fmt}
    if alias:
        t["alias"] = alias
    return t


def thresholds(*steps: tuple[float | None, str]) -> Json:
    return {"mode": "absolute",
            "steps": [{"color": c, "value": v} for v, c in steps]}


BASE = thresholds((None, "green"))


class Board:
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
            "annotations": {"list": [BUILTIN_ANNOTATION, *annotations]},
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
        defaults: Json = {"unit": unit, "thresholds": thresholds or BASE,
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


BUILTIN_ANNOTATION: Json = {
    "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
    "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
    "type": "dashboard",
}


def query_var(name: str, label: str, query: str, *, multi: bool = True) -> Json:
    return {
        "type": "query", "name": name, "label": label, "datasource": DS,
        "query": query, "definition": query, "refresh": 2, "sort": 7,
        "multi": multi, "includeAll": True, "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [], "hide": 0, "regex": "", "skipUrlSync": False,
    }


def custom_var(name: str, label: str, values: Sequence[str], default: str,
               description: str) -> Json:
    return {
        "type": "custom", "name": name, "label": label, "query": ",".join(values),
        "description": description, "multi": False, "includeAll": False, "hide": 0,
        "current": {"selected": True, "text": default, "value": default},
        "options": [{"selected": v == default, "text": v, "value": v} for v in values],
        "skipUrlSync": False,
    }


# -- shared field settings ------------------------------------------------------

LINE: Json = {"drawStyle": "line", "lineWidth": 2, "fillOpacity": 8, "showPoints": "never",
               "spanNulls": 3_600_000, "axisPlacement": "auto"}
BARS: Json = {"drawStyle": "bars", "fillOpacity": 70, "lineWidth": 1, "showPoints": "never",
               "axisPlacement": "auto"}
STACKED_BARS: Json = {**BARS, "stacking": {"mode": "normal", "group": "A"}}
LEGEND: Json = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                 "tooltip": {"mode": "multi", "sort": "desc"}}
STAT: Json = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
               "colorMode": "background", "graphMode": "none", "justifyMode": "center",
               "textMode": "value_and_name", "orientation": "auto", "wideLayout": True}
TABLE: Json = {"showHeader": True, "cellHeight": "sm",
                "footer": {"show": False, "reducer": ["sum"], "countRows": False}}
ONLINE_MAP: list[Json] = [{"type": "value", "options": {
    "true": {"text": "online", "color": "green", "index": 0},
    "false": {"text": "OFFLINE", "color": "red", "index": 1}}}]
CLOCK_MAP: list[Json] = [{"type": "value", "options": {
    "synced": {"text": "synced", "color": "green", "index": 0},
    "unsynced": {"text": "UNSYNCED", "color": "orange", "index": 1},
    "true": {"text": "synced", "color": "green", "index": 2},
    "false": {"text": "UNSYNCED", "color": "orange", "index": 3}}}]

# Defaults a site can change in Grafana; sources in DOMAIN notes / docs/alerts.md.
#: Soil water target band, % volumetric (clay loam: maize trigger ≈25.5 %, FC 36 %).
MOISTURE_STEPS = thresholds((None, "red"), (18, "orange"), (22, "green"), (36, "blue"))
#: Sowing soil temperature: maize ≥10 °C, soybean ≥12 °C; ≤5 °C chills seed.
SOIL_T_STEPS = thresholds((None, "blue"), (5, "light-blue"), (10, "green"), (12, "dark-green"))
#: Cattle: normal 37.8-39.2 °C; fever ≥39.5 mild, ≥40 case definition.
BODY_T_STEPS = thresholds((None, "blue"), (37.8, "green"), (39.5, "orange"), (40, "red"))
#: THI bands for dairy cattle: 68 mild, 72 moderate, 80 severe, 90 emergency.
THI_STEPS = thresholds((None, "green"), (68, "yellow"), (72, "orange"), (80, "red"),
                       (90, "dark-red"))
#: Trough low at 20 % of its height.
WATER_STEPS = thresholds((None, "red"), (20, "orange"), (30, "green"))


AREA: Json = {**LINE, "thresholdsStyle": {"mode": "line+area"}}
DASHED: Json = {**LINE, "thresholdsStyle": {"mode": "dashed"}}
