"""The four dashboards of the service center: county overview, farm,
gateway health, ingest health.

Names in queries come from the schema, by short aliases: ``M`` measurements,
``T`` tags, ``R`` reading fields, ``G`` gateway, ``E`` edge, ``D`` dead-letter
and ``A`` alert fields; ``q()`` quotes one. Column aliases (``AS "x"``) are
the dashboards' own."""

from __future__ import annotations

__all__ = ["county_overview", "farm", "gateway_health", "ingest_health"]

from farmedge.storage.schema import AlertField as A
from farmedge.storage.schema import DeadLetterField as D
from farmedge.storage.schema import EdgeField as E
from farmedge.storage.schema import GatewayField as G
from farmedge.storage.schema import Measurement as M  # noqa: N817
from farmedge.storage.schema import ReadingField as R
from farmedge.storage.schema import Tag as T  # noqa: N817
from farmedge.storage.schema import reading_fields

from .panels import (
    AREA,
    BARS,
    BODY_T_STEPS,
    CLOCK_MAP,
    DASHED,
    DS,
    LEGEND,
    LINE,
    MOISTURE_STEPS,
    ONLINE_MAP,
    SOIL_T_STEPS,
    STACKED_BARS,
    STAT,
    TABLE,
    THI_STEPS,
    WATER_STEPS,
    Board,
    Json,
    Shape,
    ValueType,
    target,
    thresholds,
)
from .queries import (
    BY_GATEWAY,
    F_ANIMAL,
    F_COUNTY,
    F_FARM,
    F_GATEWAY,
    F_PLOT,
    FIRING_WINDOW,
    INSTALLED_WINDOW,
    TS,
    V_ANIMAL,
    V_COUNTY,
    V_FARM,
    V_FEVER,
    V_GATEWAY,
    V_PLOT,
    V_SILENCE,
    idle_gateways_query,
    per_channel,
    q,
)


def _series(fn: str, field: str, measurement: str, where: str, by: tuple[str, ...],
            alias: str, *, fill: str = "none") -> list[tuple[Json, Shape, tuple[ValueType, ...]]]:
    """A time-series panel's one target: ``fn(field)`` of ``measurement``
    within ``where``, per time bucket and per ``by`` tag."""
    group = "".join(f", {q(t)}" for t in by)
    return [(target(f"SELECT {fn}({q(field)}) FROM {q(measurement)} WHERE $timeFilter AND "
                    f"{where} {TS}{group} fill({fill})", alias=alias),
             "timeseries", ("number",))]


# -- the dashboards -------------------------------------------------------------

def county_overview() -> Board:
    b = Board("farmedge-county", "County overview", time_from="now-24h",
              description="What the service center watches all day: farms and gateways "
                          "online, idle equipment, alerts, data flow, dry plots, sick "
                          "animals.", variables=[V_COUNTY, V_SILENCE, V_FEVER])
    gw_last = (f'SELECT last({q(G.ONLINE)}) AS "online" FROM {q(M.GATEWAY)} WHERE $timeFilter '
               f"AND {F_COUNTY} {BY_GATEWAY}")
    b.panel("stat", "Farms online", [(target(
        f'SELECT count("gateways") AS "farms" FROM (SELECT count("online") AS "gateways" '
        f'FROM ({gw_last}) WHERE "online" = true GROUP BY {q(T.COUNTY)}, {q(T.FARM)})',
        fmt="table"),
        "single", ("number",))], w=6, h=4, unit="none", decimals=0,
        description="Farms with at least one gateway whose last status in the time range "
                    "says online.", options=STAT, interval=None)
    b.panel("stat", "Gateways online", [
        (target(f'SELECT count("online") AS "online" FROM ({gw_last}) WHERE "online" = true',
                "A", fmt="table"), "single", ("number",)),
        (target(f'SELECT count("online") AS "known" FROM ({gw_last})', "B", fmt="table"),
         "single", ("number",)),
    ], w=6, h=4, unit="none", decimals=0, options=STAT, interval=None,
        description="Online: last status says online. Known: sent a status in the time "
                    "range.")
    sources = (f'{per_channel("installed", f"time > now() - {INSTALLED_WINDOW} AND {F_COUNTY}")}'
               f', {per_channel("reporting", f"time > now() - $silence AND {F_COUNTY}")}')
    b.panel("stat", "Idle equipment", [(target(
        f'SELECT 1 - count("reporting") / count("installed") AS "idle" FROM {sources}',
        alias="$m"), "table", ("number",))],
        w=12, h=4, unit="percentunit", decimals=1, options=STAT, interval=None,
        thresholds=thresholds((None, "green"), (0.05, "orange"), (0.15, "red")),
        description=f"Share of installed devices that are silent, per kind of device (soil, "
                    f"weather, livestock, water, device). A device channel (one kind of one "
                    f"sensor) is installed when it reported within {INSTALLED_WINDOW}, "
                    f"reporting when it did within $silence. The gateway health dashboard "
                    f"and the alert engine's 'sensor silent' alerts say which ones.")
    b.panel("table", "Idle gateways", [(target(
        idle_gateways_query(F_COUNTY), fmt="table"), "table",
        ("number", "number", "number", "number"))],
        w=12, h=7, unit="none", decimals=0, interval=None,
        options={**TABLE, "sortBy": [{"displayName": "idle rate", "desc": True}]},
        custom={"align": "auto", "cellOptions": {"type": "auto"}, "inspect": False},
        transformations=[{"id": "organize", "options": {
            "excludeByName": {"Time": True}, "indexByName": {},
            "renameByName": {T.COUNTY: "County"}}}],
        overrides=[{"matcher": {"id": "byName", "options": "idle rate"},
                    "properties": [
                        {"id": "unit", "value": "percentunit"}, {"id": "decimals", "value": 1},
                        {"id": "thresholds", "value": thresholds(
                            (None, "green"), (0.05, "orange"), (0.15, "red"))},
                        {"id": "custom.cellOptions", "value": {"type": "color-background"}}]}],
        description="Per county: gateways in the registry (the edge writes it to InfluxDB "
                    "every hour), those heard from (a status message) within 24 h, the "
                    "idle ones (registered, but not heard from for 24 h or never) and their "
                    "share, the idle rate. 'farmedge fleet' names them, with the same "
                    "numbers.")
    b.panel("bargauge", "Devices reporting vs installed", [(target(
        f'SELECT count("reporting") AS "reporting", count("installed") AS "installed" '
        f"FROM {sources}", alias="$m $col"), "table", ("number", "number"))],
        w=12, h=7, unit="none", decimals=0, interval=None,
        thresholds=thresholds((None, "blue")),
        options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                 "orientation": "horizontal", "displayMode": "basic", "showUnfilled": True,
                 "valueMode": "color", "namePlacement": "left"},
        overrides=[{"matcher": {"id": "byRegexp", "options": ".*reporting"},
                    "properties": [{"id": "color", "value": {"mode": "fixed",
                                                             "fixedColor": "green"}}]}],
        description=f"Device channels reporting within $silence against those seen within "
                    f"{INSTALLED_WINDOW}, per kind of device.")
    last_event = (f'SELECT last({q(A.COUNT)}) AS "n", {q(T.EVENT)}, {q(T.SEVERITY)} FROM '
                  f"{q(M.ALERTS)} WHERE {q(T.EVENT)} =~ /^(raise|worse|clear)$/ AND "
                  f"time > now() - {FIRING_WINDOW} AND {F_COUNTY} GROUP BY {q(T.COUNTY)}, "
                  f"{q(T.FARM)}, {q(T.FAMILY)}, {q(T.SCOPE)}, {q(T.SCOPE_ID)}")
    b.panel("bargauge", "Alerts firing by severity", [
        (target(f'SELECT count("n") AS "{sev}" FROM ({last_event}) WHERE {q(T.EVENT)} != '
                f"'clear' AND {q(T.SEVERITY)} = '{sev}'", ref, fmt="table"), "single",
         ("number",))
        for ref, sev in (("A", "critical"), ("B", "warning"), ("C", "info"))],
        w=8, h=7, unit="none", decimals=0, interval=None,
        thresholds=thresholds((None, "green"), (1, "orange")),
        overrides=[{"matcher": {"id": "byName", "options": n},
                    "properties": [{"id": "color", "value": {"mode": "fixed",
                                                             "fixedColor": c}}]}
                   for n, c in (("critical", "red"), ("warning", "orange"), ("info", "blue"))],
        options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                 "orientation": "horizontal", "displayMode": "basic", "showUnfilled": True,
                 "valueMode": "color"},
        description=f"Alert groups whose last event (raise, worse or clear) within "
                    f"{FIRING_WINDOW} is not a clear, by their current severity, from the "
                    f"alert engine's 'alerts' measurement. An empty bar: none firing.")
    per_min = ", ".join(
        f'(SELECT count({q(f)}) AS "n" FROM {q(m)} WHERE $timeFilter AND {F_COUNTY} {TS})'
        for m, f in reading_fields())
    b.panel("timeseries", "Readings per minute", [(target(
        f'SELECT sum("n") * 60000 / $__interval_ms AS "readings" FROM {per_min} '
        f"WHERE $timeFilter {TS} fill(0)", alias="$m"), "timeseries",
        ("number",))], w=16, h=7, unit="short", custom=STACKED_BARS, options=LEGEND,
        interval="5m",
        description="Readings stored for this county per minute by kind of device, placed "
                    "at their measurement time.")
    b.row("Needs attention")
    b.panel("table", "Driest plots", [(target(
        f'SELECT last({q(R.MOISTURE)}) AS "soil water", min({q(R.MOISTURE)}) AS "lowest" '
        f"FROM {q(M.SOIL)} WHERE $timeFilter AND {F_COUNTY} AND {q(T.PLOT)} != '' "
        f"GROUP BY {q(T.COUNTY)}, {q(T.FARM)}, {q(T.PLOT)}", fmt="table"), "table",
        ("number", "number"))],
        w=12, h=10, unit="percent", decimals=1, thresholds=MOISTURE_STEPS, interval=None,
        options={**TABLE, "sortBy": [{"displayName": "soil water", "desc": False}]},
        custom={"align": "auto", "cellOptions": {"type": "color-background"},
                "inspect": False},
        overrides=[{"matcher": {"id": "byName", "options": "Time"},
                    "properties": [{"id": "custom.hidden", "value": True}]}],
        transformations=[{"id": "organize", "options": {
            "excludeByName": {"Time": True}, "indexByName": {},
            "renameByName": {T.COUNTY: "County", T.FARM: "Farm", T.PLOT: "Plot"}}}],
        description="Latest soil water (% volumetric) per plot, driest first. Red below "
                    "18 %, orange below 22 % (irrigation trigger for maize on clay loam is "
                    "about 25.5 %, field capacity about 36 %).")
    b.panel("table", "Animals with fever", [(target(
        f'SELECT "highest", "latest", {q(T.COUNTY)}, {q(T.FARM)}, {q(T.ANIMAL)} FROM (SELECT '
        f'max({q(R.BODY_TEMPERATURE)}) AS "highest", last({q(R.BODY_TEMPERATURE)}) AS "latest" '
        f"FROM {q(M.LIVESTOCK)} WHERE $timeFilter AND {F_COUNTY} GROUP BY {q(T.COUNTY)}, "
        f"{q(T.FARM)}, {q(T.ANIMAL)})"
        ' WHERE "highest" >= $fever', fmt="table"), "table",
        ("number", "number", "string", "string", "string"))],
        w=12, h=10, unit="celsius", decimals=1, thresholds=BODY_T_STEPS, interval=None,
        options={**TABLE, "sortBy": [{"displayName": "highest", "desc": True}]},
        custom={"align": "auto", "cellOptions": {"type": "color-text"}, "inspect": False},
        transformations=[{"id": "organize", "options": {
            "excludeByName": {"Time": True}, "indexByName": {},
            "renameByName": {T.COUNTY: "County", T.FARM: "Farm",
                             T.ANIMAL: "Animal"}}}],
        description="Animals whose body temperature reached $fever °C in the time range. "
                    "Rumen boluses read about 2.3 °C low for up to 100 min after drinking, "
                    "so 'latest' can look normal while 'highest' shows the fever.")
    return b


def farm() -> Board:
    anno = {
        "name": "Alerts", "datasource": DS, "enable": True, "hide": False,
        "iconColor": "red",
        "query": (f"SELECT {q(A.TITLE)}, {q(A.TEXT)} FROM {q(M.ALERTS)} WHERE $timeFilter AND "
                  f"{F_FARM} AND {q(T.EVENT)} =~ /^(raise|worse|clear|escalate)$/"),
        "tagsColumn": f"{T.SEVERITY},{T.EVENT},{T.SCOPE_ID}", "textColumn": A.TEXT,
        "titleColumn": A.TITLE,
    }
    b = Board("farmedge-farm", "Farm", time_from="now-7d",
              description="One farm: soil per plot, weather, livestock, water; alerts as "
                          "annotations.",
              variables=[V_COUNTY, V_FARM, V_PLOT, V_ANIMAL], annotations=[anno])
    b.row("Fields")
    per_plot = (T.PLOT, T.SENSOR)
    b.panel("timeseries", "Soil moisture per plot",
        _series("mean", R.MOISTURE, M.SOIL, F_PLOT, per_plot, "$tag_plot $tag_sensor"),
        w=12, h=9, unit="percent", decimals=1, thresholds=MOISTURE_STEPS,
        custom=AREA, options=LEGEND, minmax=(0, 50),
        description="Volumetric water content. Green band: the target (22-36 %, clay loam; "
                    "maize irrigation trigger ≈25.5 %). Below 22 % plan irrigation.")
    b.panel("timeseries", "Soil temperature",
        _series("mean", R.TEMPERATURE, M.SOIL, F_PLOT, per_plot, "$tag_plot $tag_sensor"),
        w=12, h=9, unit="celsius", decimals=1, thresholds=SOIL_T_STEPS,
        custom=DASHED, options=LEGEND,
        description="Sowing: maize when 5-10 cm soil stays ≥10 °C, soybean ≥12 °C; "
                    "≤5 °C within 48 h of planting chills the seed.")
    b.panel("timeseries", "Soil EC",
        _series("mean", R.EC, M.SOIL, F_PLOT, per_plot, "$tag_plot $tag_sensor"),
        w=12, h=8, unit="suffix: µS/cm", decimals=0, custom=LINE,
        options=LEGEND, description="Bulk electrical conductivity; rises with soil water.")
    b.panel("timeseries", "Rainfall",
        _series("sum", R.RAINFALL, M.WEATHER, F_FARM, (T.SENSOR,), "$tag_sensor", fill="0"),
        w=12, h=8, unit="lengthmm", decimals=1, custom=BARS, options=LEGEND,
        interval="1h", description="Rain per interval (each reading is rain since the "
                                   "previous one).")
    b.row("Livestock")
    b.panel("timeseries", "Body temperature",
        _series("mean", R.BODY_TEMPERATURE, M.LIVESTOCK, F_ANIMAL, (T.ANIMAL,), "$tag_animal"),
        w=12, h=9, unit="celsius", decimals=2, thresholds=BODY_T_STEPS,
        custom=DASHED, options=LEGEND, minmax=(36, 42),
        description="Cattle: normal 37.8-39.2 °C; orange line 39.5 °C mild fever, red 40 °C. "
                    "Dips of about 2 °C after drinking are normal for rumen boluses.")
    b.panel("timeseries", "Activity",
        _series("mean", R.ACTIVITY, M.LIVESTOCK, F_ANIMAL, (T.ANIMAL,), "$tag_animal"),
        w=12, h=9, unit="suffix: steps/h", decimals=0, custom=LINE, options=LEGEND,
        description="A drop against the animal's own pattern comes 1-3 days before "
                    "illness is seen; peaks mark oestrus.")
    b.panel("timeseries", "Temperature-humidity index (THI)", [(target(
        f"SELECT 0.8 * mean({q(R.TEMPERATURE)}) + mean({q(R.HUMIDITY)}) / 100 * "
        f'(mean({q(R.TEMPERATURE)}) - 14.4) + 46.4 AS "THI" FROM {q(M.WEATHER)} WHERE '
        f"$timeFilter AND {F_FARM} {TS}, {q(T.SENSOR)} fill(none)", alias="THI $tag_sensor"),
        "timeseries",
        ("number",))], w=12, h=8, unit="none", decimals=0, thresholds=THI_STEPS,
        custom=AREA, options=LEGEND,
        description="THI = 0.8·T + RH·(T − 14.4) + 46.4 from air temperature and humidity. "
                    "Dairy cattle: 68 mild, 72 moderate, 80 severe, 90 emergency heat stress.")
    b.panel("timeseries", "Water levels",
        _series("mean", R.LEVEL, M.WATER, F_FARM, (T.SENSOR,), "$tag_sensor"),
        w=12, h=8, unit="percent", decimals=0, thresholds=WATER_STEPS,
        custom=AREA, options=LEGEND, minmax=(0, 100),
        description="Trough or tank level as a share of its height; low at 20 %.")
    b.row("Devices")
    b.panel("timeseries", "Battery voltage",
        _series("mean", R.BATTERY_VOLTAGE, M.DEVICE, F_FARM, (T.SENSOR,), "$tag_sensor"),
        w=12, h=7, unit="volt", decimals=2, custom=LINE, options=LEGEND,
        description="Battery of each sensor node.")
    b.panel("table", "Alerts in the time range", [(target(
        f"SELECT {q(A.TEXT)}, {q(T.SEVERITY)}, {q(T.EVENT)}, {q(T.SCOPE_ID)} FROM "
        f"{q(M.ALERTS)} WHERE $timeFilter AND {F_FARM} AND {q(T.EVENT)} =~ "
        "/^(raise|worse|clear|escalate)$/ ORDER BY time DESC LIMIT 50",
        fmt="table"), "table", ("string", "string", "string", "string"))],
        w=12, h=7, unit="none", interval=None, options=TABLE,
        custom={"align": "auto", "cellOptions": {"type": "auto"}, "inspect": True},
        description="Alerts raised, worsened, escalated and cleared, newest first.")
    return b


def gateway_health() -> Board:
    b = Board("farmedge-gateways", "Gateway health", time_from="now-24h",
              description="Each farm gateway: online, uptime, outbox backlog, drops, clock, "
                          "CPU temperature, last seen.",
              variables=[V_COUNTY, V_FARM, V_GATEWAY])
    where = f"{F_GATEWAY}"
    grp = BY_GATEWAY
    b.panel("table", "Gateways", [(target(
        f'SELECT last({q(G.ONLINE)}) AS "online" FROM {q(M.GATEWAY)} WHERE time > now() - 30d '
        f"AND {where} {grp}", "A", fmt="table"), "table", ("bool",)),
        (target(
            f'SELECT last({q(G.UPTIME_S)}) AS "uptime", last({q(G.OUTBOX_DEPTH)}) AS "outbox", '
            f'last({q(G.OUTBOX_OLDEST_AGE_S)}) AS "oldest unsent", last({q(G.DROPPED)}) AS '
            f'"dropped", last({q(G.CLOCK)}) AS "clock", last({q(G.CPU_TEMPERATURE)}) AS "CPU", '
            f'last({q(G.DISK_FREE_MB)}) AS "disk free" FROM {q(M.GATEWAY)} WHERE '
            f"time > now() - 30d AND {where} {grp}", "B", fmt="table"), "table",
         ("number", "number", "number", "number", "string", "number", "number"))],
        w=24, h=9, unit="none", interval=None,
        options={**TABLE, "sortBy": [{"displayName": "Last seen", "desc": False}]},
        custom={"align": "auto", "cellOptions": {"type": "auto"}, "inspect": False},
        transformations=[
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {
                "excludeByName": {}, "indexByName": {},
                "renameByName": {"Time": "Last seen", T.COUNTY: "County", T.FARM: "Farm",
                                 T.GATEWAY: "Gateway"}}}],
        overrides=[
            {"matcher": {"id": "byName", "options": "online"},
             "properties": [{"id": "mappings", "value": ONLINE_MAP},
                            {"id": "custom.cellOptions",
                             "value": {"type": "color-background"}}]},
            {"matcher": {"id": "byName", "options": "clock"},
             "properties": [{"id": "mappings", "value": CLOCK_MAP},
                            {"id": "custom.cellOptions", "value": {"type": "color-text"}}]},
            {"matcher": {"id": "byName", "options": "uptime"},
             "properties": [{"id": "unit", "value": "s"}]},
            {"matcher": {"id": "byName", "options": "oldest unsent"},
             "properties": [{"id": "unit", "value": "s"},
                            {"id": "thresholds", "value": thresholds(
                                (None, "green"), (1800, "orange"), (21600, "red"))},
                            {"id": "custom.cellOptions", "value": {"type": "color-text"}}]},
            {"matcher": {"id": "byName", "options": "CPU"},
             "properties": [{"id": "unit", "value": "celsius"},
                            {"id": "thresholds", "value": thresholds(
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
        ("Online", G.ONLINE, ONLINE_MAP,
         "Green while the gateway's status says online; red after its last will or an "
         "offline status."),
        ("Clock", G.CLOCK_SYNCED, CLOCK_MAP,
         "Orange while the gateway's clock is not NTP-synced (after a power cut without a "
         "real-time clock): its readings' times are estimates."),
    ):
        b.panel("state-timeline", title, [(target(
            f"SELECT last({q(field)}) FROM {q(M.GATEWAY)} WHERE $timeFilter AND {where} "
            f"{TS}, {q(T.GATEWAY)} fill(previous)", alias="$tag_gateway"), "timeseries",
            ("bool",))],
            w=12, h=8, unit="none", mappings=mappings, interval="5m",
            options={"showValue": "never", "rowHeight": 0.8, "mergeValues": True,
                     "alignValue": "left", "legend": {"showLegend": False,
                                                      "displayMode": "list",
                                                      "placement": "bottom"}},
            description=desc)
    for title, field, unit, steps, agg, desc in (
        ("Outbox depth", G.OUTBOX_DEPTH, "short",
         thresholds((None, "green"), (1000, "orange"), (10000, "red")), "max",
         "Readings waiting in the gateway's outbox for the uplink."),
        ("Oldest unsent reading", G.OUTBOX_OLDEST_AGE_S, "s",
         thresholds((None, "green"), (1800, "orange"), (21600, "red")), "max",
         "Age of the oldest reading not yet acknowledged by the broker."),
        ("CPU temperature", G.CPU_TEMPERATURE, "celsius",
         thresholds((None, "green"), (70, "orange"), (80, "red")), "mean",
         "A Raspberry Pi throttles at 80-85 °C."),
        ("Uptime", G.UPTIME_S, "s", None, "last",
         "Seconds since the gateway agent started; drops to 0 mark restarts or power cuts."),
    ):
        b.panel("timeseries", title, [(target(
            f"SELECT {agg}({q(field)}) FROM {q(M.GATEWAY)} WHERE $timeFilter AND {where} "
            f"{TS}, {q(T.GATEWAY)} fill(none)", alias="$tag_gateway"), "timeseries",
            ("number",))], w=12, h=8, unit=unit, thresholds=steps,
            custom=DASHED if steps else LINE, options=LEGEND, description=desc)
    b.panel("timeseries", "Readings dropped", [(target(
        f"SELECT max({q(G.DROPPED)}) FROM {q(M.GATEWAY)} WHERE $timeFilter "
        f"AND {where} {TS}, {q(T.GATEWAY)} fill(none)", alias="$tag_gateway"), "timeseries",
        ("number",))], w=12, h=8, unit="short", decimals=0,
        thresholds=thresholds((None, "green"), (1, "red")), custom=DASHED, options=LEGEND,
        description="Readings the gateway had to drop since its agent started (outbox full "
                    "or too old), as its status reports them. Should stay at 0; a step up "
                    "means readings were lost on the farm.")
    b.panel("timeseries", "Messages missing (sequence gaps)", [(target(
        f"SELECT sum({q(G.SEQ_GAP)}) FROM {q(M.GATEWAY)} WHERE $timeFilter AND {where} "
        f"{TS}, {q(T.GATEWAY)} fill(none)", alias="$tag_gateway"), "timeseries", ("number",))],
        w=12, h=8, unit="short", decimals=0, custom=BARS, options=LEGEND,
        description="Gaps in a gateway's message sequence numbers seen by the edge.")
    return b


def ingest_health() -> Board:
    b = Board("farmedge-ingest", "Ingest health", time_from="now-6h",
              description="The edge service: readings per second, rejects by reason, "
                          "spool, write latency.", variables=[])
    grp = f"{TS}, {q(T.INSTANCE)} fill(none)"
    edge = q(M.EDGE)
    b.panel("timeseries", "Readings per second", [
        (target(f"SELECT non_negative_derivative(max({q(E.READINGS)}), 1s) FROM {edge} WHERE "
                f"$timeFilter {grp}", "A", alias="readings $tag_instance"), "timeseries",
         ("number",)),
        (target(f"SELECT non_negative_derivative(max({q(E.MESSAGES)}), 1s) FROM {edge} WHERE "
                f"$timeFilter {grp}", "B", alias="messages $tag_instance"), "timeseries",
         ("number",)),
    ], w=12, h=8, unit="suffix: /s", decimals=1, custom=LINE, options=LEGEND,
        interval="10s", description="Readings and MQTT messages the edge took, per second.")
    b.panel("timeseries", "Rejects by reason", [(target(
        f"SELECT sum({q(D.COUNT)}) FROM {q(M.INGEST_ERRORS)} WHERE $timeFilter {TS}, "
        f"{q(T.REASON)} fill(none)", alias="$tag_reason"), "timeseries", ("number",))],
        w=12, h=8, unit="short", decimals=0, custom=STACKED_BARS, options=LEGEND,
        description="Messages and readings sent to the dead-letter path, by reason.")
    b.panel("timeseries", "Spool depth", [
        (target(f"SELECT max({q(E.SPOOL_LINES)}) FROM {edge} WHERE $timeFilter {grp}", "A",
                alias="spooled $tag_instance"), "timeseries", ("number",)),
        (target(f"SELECT max({q(E.SPOOL_DROPPED)}) FROM {edge} WHERE $timeFilter {grp}", "B",
                alias="dropped $tag_instance"), "timeseries", ("number",)),
    ], w=12, h=8, unit="short", decimals=0,
        thresholds=thresholds((None, "green"), (1, "orange")), custom=DASHED,
        options=LEGEND, interval="10s",
        description="Lines waiting in the edge's local spool while InfluxDB is unreachable; "
                    "'dropped' counts lines a full spool had to drop (must stay 0).")
    b.panel("timeseries", "InfluxDB write latency", [
        (target(f"SELECT max({q(E.WRITE_P99_MS)}) FROM {edge} WHERE $timeFilter {grp}", "A",
                alias="p99 $tag_instance"), "timeseries", ("number",)),
        (target(f"SELECT mean({q(E.WRITE_P50_MS)}) FROM {edge} WHERE $timeFilter {grp}", "B",
                alias="p50 $tag_instance"), "timeseries", ("number",)),
    ], w=12, h=8, unit="ms", decimals=1,
        thresholds=thresholds((None, "green"), (500, "orange"), (1500, "red")),
        custom=DASHED, options=LEGEND, interval="10s",
        description="Time of one batch write to InfluxDB, per 10 s window.")
    b.panel("timeseries", "Messages waiting for acknowledgement", [(target(
        f"SELECT max({q(E.PENDING)}) FROM {edge} WHERE $timeFilter {grp}",
        alias="$tag_instance"), "timeseries", ("number",))],
        w=12, h=7, unit="short", decimals=0, custom=LINE, options=LEGEND, interval="10s",
        description="Messages received and not yet durable; stays high when writes stall.")
    b.panel("table", "Latest rejects", [(target(
        f"SELECT {q(T.REASON)}, {q(D.GATEWAY)}, {q(D.TOPIC)}, {q(D.DETAIL)}, {q(D.EXCERPT)} "
        f"FROM {q(M.INGEST_ERRORS)} WHERE $timeFilter ORDER BY time DESC LIMIT 100",
        fmt="table"), "table",
        ("string", "string", "string", "string", "string"))],
        w=12, h=7, unit="none", interval=None, options=TABLE,
        custom={"align": "auto", "cellOptions": {"type": "auto"}, "inspect": True},
        description="The dead-letter path: what was rejected, from where, and why.")
    return b
