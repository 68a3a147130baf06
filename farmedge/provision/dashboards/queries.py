"""The InfluxQL the dashboards share: filters by the template variables,
the variables themselves, and queries more than one panel (or ``farmedge
fleet``) uses. Every measurement, tag and field name comes from
:mod:`farmedge.storage.schema`."""

from __future__ import annotations

from farmedge.storage.schema import READING_MEASUREMENTS, reading_fields
from farmedge.storage.schema import GatewayField as G
from farmedge.storage.schema import Measurement as M  # noqa: N817
from farmedge.storage.schema import Tag as T  # noqa: N817

from .panels import Json, custom_var, query_var

__all__ = [
    "BY_GATEWAY",
    "FIRING_WINDOW",
    "FROM_READINGS",
    "F_ANIMAL",
    "F_COUNTY",
    "F_FARM",
    "F_GATEWAY",
    "F_PLOT",
    "INSTALLED_WINDOW",
    "TS",
    "VARIABLES",
    "V_ANIMAL",
    "V_COUNTY",
    "V_FARM",
    "V_FEVER",
    "V_GATEWAY",
    "V_PLOT",
    "V_SILENCE",
    "idle_gateways_query",
    "per_channel",
    "q",
]


def q(name: str) -> str:
    """A name as an InfluxQL identifier (the schema's need no escaping)."""
    return f'"{name}"'


# -- filters ----------------------------------------------------------------

F_COUNTY = f"{q(T.COUNTY)} =~ /^$county$/"
F_FARM = f"{F_COUNTY} AND {q(T.FARM)} =~ /^$farm$/"
F_GATEWAY = f"{F_FARM} AND {q(T.GATEWAY)} =~ /^$gateway$/"
F_PLOT = f"{F_FARM} AND {q(T.PLOT)} =~ /^$plot$/"
F_ANIMAL = f"{F_FARM} AND {q(T.ANIMAL)} =~ /^$animal$/"
TS = "GROUP BY time($__interval)"
#: Per gateway (the tags of the gateway measurement).
BY_GATEWAY = f"GROUP BY {q(T.COUNTY)}, {q(T.FARM)}, {q(T.GATEWAY)}"
FIRING_WINDOW = "30d"
#: A device that reported within this window counts as installed.
INSTALLED_WINDOW = "7d"


def per_channel(alias: str, where: str) -> str:
    """One subquery per contract field counting each channel (a sensor's
    kind) that has a reading in ``where``, unioned in one FROM."""
    return ", ".join(
        f'(SELECT count({q(f)}) AS "{alias}" FROM {q(m)} WHERE {where} '
        f"{BY_GATEWAY}, {q(T.SENSOR)})"
        for m, f in reading_fields())


FROM_READINGS = "/^(" + "|".join((*READING_MEASUREMENTS, M.GATEWAY)) + ")$/"
V_COUNTY = query_var("county", "County",
                     f"SHOW TAG VALUES FROM {FROM_READINGS} WITH KEY = {q(T.COUNTY)}")
V_FARM = query_var("farm", "Farm", f"SHOW TAG VALUES FROM {FROM_READINGS} WITH KEY = "
                                   f"{q(T.FARM)} WHERE {F_COUNTY}")
V_GATEWAY = query_var("gateway", "Gateway",
                      f"SHOW TAG VALUES FROM {FROM_READINGS} WITH KEY = {q(T.GATEWAY)} "
                      f"WHERE {F_FARM}")
V_PLOT = query_var("plot", "Plot", f"SHOW TAG VALUES FROM {q(M.SOIL)} WITH KEY = "
                                   f"{q(T.PLOT)} WHERE {F_FARM}")
V_ANIMAL = query_var("animal", "Animal", f"SHOW TAG VALUES FROM {q(M.LIVESTOCK)} WITH KEY = "
                                         f"{q(T.ANIMAL)} WHERE {F_FARM}")
V_SILENCE = custom_var("silence", "Reporting within", ["30m", "1h", "3h", "6h", "1d"], "1h",
                       "A device that sent nothing for this long counts as idle.")
V_FEVER = custom_var("fever", "Fever from (°C)", ["39.5", "40", "40.5"], "39.5",
                     "Body temperature that counts as fever: cattle 39.5 °C mild, 40 °C "
                     "case definition (docs/alerts.md).")
VARIABLES: dict[str, Json] = {v["name"]: v for v in (V_COUNTY, V_FARM, V_GATEWAY, V_PLOT,
                                                     V_ANIMAL, V_SILENCE, V_FEVER)}


def idle_gateways_query(county_filter: str) -> str:
    """Registered, heard from within 24 h, idle and the idle rate, per
    county, from the ``gateway`` measurement alone (InfluxQL cannot join two
    measurements): the registry points the edge writes every hour
    (``registered``) and the status messages (``online``). One bucket over
    all time with fill(0) makes a gateway without a status count 0 rather
    than vanish; ceil(n / (n + 1)) turns a count into 0 or 1."""
    per_gw = (f'SELECT last({q(G.REGISTERED)}) AS "registered", count({q(G.ONLINE)}) AS '
              f'"statuses" FROM {q(M.GATEWAY)} WHERE time > now() - 24h AND {county_filter} '
              f"GROUP BY time(100000d), {q(T.COUNTY)}, {q(T.FARM)}, {q(T.GATEWAY)} fill(0)")
    flags = ('SELECT "registered", ceil("statuses" / ("statuses" + 1)) AS "heard" '
             f'FROM ({per_gw}) WHERE "registered" = 1')
    return ('SELECT sum("registered") AS "registered", sum("heard") AS "heard in 24 h", '
            'sum("registered") - sum("heard") AS "idle", '
            '1 - sum("heard") / sum("registered") AS "idle rate" '
            f'FROM ({flags}) GROUP BY {q(T.COUNTY)}')
