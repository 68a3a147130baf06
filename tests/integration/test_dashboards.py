"""The Grafana dashboards: every panel's every query, expanded the way
Grafana expands it, runs against a real InfluxDB filled with simulated farms
and returns the series the panel expects. No Grafana server runs here:
tests/grafana_support.py reimplements its InfluxQL interpolation, and the
JSON is checked against tests/schemas/grafana-dashboard.schema.json."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from farmedge.provision import dashboards as gen
from tests.grafana_support import Selection, expand, panel_interval_ms
from tests.stack_support import (
    EDGE_USER,
    ENV,
    GRAFANA_USER,
    ROOT,
    Scenario,
    alert_lines,
    make_scenario,
    publish_scenario,
    query,
    start_pipeline,
    write_lines,
)
from tests.support import eventually

pytestmark = pytest.mark.servers

DASHBOARDS = gen.dashboards()
EXPECT = gen.expectations()
MODES = ("all", "listed", "one-farm")


@dataclass
class Filled:
    url: str
    db: str
    sc: Scenario
    #: The dashboards' time range: the scenario's start until all is stored.
    start_ms: int
    end_ms: int
    ingest_start_ms: int


def _stored_readings(url: str, db: str) -> int:
    n = 0
    for m, f in gen.reading_fields():
        for s in query(url, f'SELECT count("{f}") FROM "{m}"', GRAFANA_USER, db):
            n += s["values"][0][1]
    return n


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Filled]:
    """Simulated farms through the real pipeline: the gateways' messages are
    published to Mosquitto (shipped config, provisioned credentials), the
    edge ingests them with the registry and writes with its write-only
    InfluxDB user; the dashboards' queries then run as Grafana's read-only
    user. Alert records are written as the alert engine writes them."""
    now = int(time.time() * 1000)
    sc = make_scenario("suihua", now_ms=now)
    p = start_pipeline(tmp_path_factory.mktemp("dashboards"), sc.registry_yaml, county=sc.county)
    try:
        expected = publish_scenario(p, sc)
        db = ENV["INFLUX_DATABASE"]
        eventually(lambda: _stored_readings(p.influx.url, db) == expected, timeout=60,
                   what=f"{expected} readings stored")
        write_lines(p.influx.url, db, alert_lines(sc.county, sc.farms[0], now,
                                                 other_farm=sc.farms[1]), user=EDGE_USER)
        # The edge writes its own metrics every 10 s: wait for three, so that
        # rates over 10 s buckets have two buckets to compare.
        eventually(lambda: len(query(p.influx.url, 'SELECT "readings" FROM "edge"',
                                     GRAFANA_USER, db)[0]["values"]) >= 3
                   if query(p.influx.url, 'SELECT "readings" FROM "edge"', GRAFANA_USER, db)
                   else False, timeout=60, what="three self-metrics points of the edge")
        end = int(time.time() * 1000)
        yield Filled(p.influx.url, db, sc, sc.start_ms, end, p.edge_started_ms - 60_000)
    finally:
        p.stop()


def _variables(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in doc["templating"]["list"]}


def _tag_values(f: Filled, q: str) -> list[str]:
    series = query(f.url, q, GRAFANA_USER, f.db)
    out: list[str] = []
    for s in series:
        for row in s["values"]:  # type: ignore[union-attr]
            if row[1] not in out:
                out.append(row[1])
    return sorted(out)


def _selections(f: Filled, doc: dict[str, Any], mode: str, start: int, end: int
                ) -> dict[str, Selection]:
    """Resolve the dashboard's variables in order (each may depend on the
    previous ones), running their queries like Grafana does."""
    variables = _variables(doc)
    sel: dict[str, Selection] = {}
    for name, v in variables.items():
        if v["type"] == "custom":
            sel[name] = Selection(values=[v["current"]["value"]])
            continue
        q = expand(v["query"], start_ms=start, end_ms=end, interval_ms=60_000,
                   variables=variables, selections=sel)
        values = _tag_values(f, q)
        assert values, f"variable {name}: {q} returned nothing"
        v["_all_values"] = values
        if name == "county":
            assert values == [f.sc.county]
        if name == "farm":
            assert values == f.sc.farms if mode != "one-farm" else set(f.sc.farms) >= set(values)
        if mode == "all":
            sel[name] = Selection(all=True)
        elif mode == "one-farm" and name == "farm":
            sel[name] = Selection(values=[f.sc.farms[0]])
        else:
            sel[name] = Selection(values=values)
    return sel


def _check(series: list[dict[str, Any]], e: gen.Expect, query: str) -> None:
    assert series, f"no series for {e.dashboard} / {e.panel} / {e.ref}:\n{query}"
    if e.shape == "single":
        assert len(series) == 1 and len(series[0]["values"]) == 1, series
    cols = series[0]["columns"]
    assert cols[0] == "time"
    assert len(cols) - 1 == len(e.types), f"columns {cols} vs {e.types}"
    for i, want in enumerate(e.types, start=1):
        seen = [row[i] for s in series for row in s["values"] if row[i] is not None]
        assert seen, f"column {cols[i]} of {e.panel}/{e.ref} is all null:\n{query}"
        for v in seen:
            if want == "bool":
                ok = isinstance(v, bool)
            elif want == "number":
                ok = isinstance(v, int | float) and not isinstance(v, bool)
            else:
                ok = isinstance(v, str)
            assert ok, f"{e.panel}/{e.ref} column {cols[i]}: {v!r} is not {want}"
    if e.shape == "timeseries":
        assert any(len(s["values"]) >= 1 for s in series)
        for s in series:
            times = [row[0] for row in s["values"]]
            assert times == sorted(times)


def _panel(e: gen.Expect) -> dict[str, Any]:
    return next(p for p in DASHBOARDS[e.dashboard]["panels"] if p["title"] == e.panel)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("e", EXPECT, ids=lambda e: f"{e.dashboard}:{e.panel}:{e.ref}")
def test_every_panel_query_returns_its_series(filled: Filled, e: gen.Expect, mode: str
                                              ) -> None:
    doc = json.loads(json.dumps(DASHBOARDS[e.dashboard]))
    panel = _panel(e)
    target = next(t for t in panel["targets"] if t["refId"] == e.ref)
    if e.dashboard == "farmedge-ingest":
        start, end = filled.ingest_start_ms, filled.end_ms
    else:
        start, end = filled.start_ms, filled.end_ms
    sel = _selections(filled, doc, mode, start, end)
    interval = panel_interval_ms(start, end, min_interval=panel.get("interval"),
                                 datasource_interval="10s")
    q = expand(target["query"], start_ms=start, end_ms=end, interval_ms=interval,
               variables=_variables(doc), selections=sel)
    _check(query(filled.url, q, GRAFANA_USER, filled.db), e, q)


def test_alert_annotations_return_title_and_text(filled: Filled) -> None:
    doc = json.loads(json.dumps(DASHBOARDS["farmedge-farm"]))
    anno = next(a for a in doc["annotations"]["list"] if a["name"] == "Alerts")
    sel = _selections(filled, doc, "one-farm", filled.start_ms, filled.end_ms)
    q = expand(anno["query"], start_ms=filled.start_ms, end_ms=filled.end_ms,
               interval_ms=60_000, variables=_variables(doc), selections=sel)
    series = query(filled.url, q, GRAFANA_USER, filled.db)
    rows = [dict(zip(s["columns"], r, strict=True)) for s in series for r in s["values"]]
    assert sorted(r["title"] for r in rows) == sorted([
        "raise maize-blacksoil/dry", "clear maize-blacksoil/dry", "raise cattle/fever",
        "raise maize-blacksoil/dry", "worse maize-blacksoil/severe-drought",
        "raise device/clock-unsynced"])
    for col in anno["tagsColumn"].split(","):
        assert col in {"severity", "event", "scope_id"}


def test_county_figures_are_right(filled: Filled) -> None:
    """Not only non-empty: the county overview counts what the simulation did."""
    doc = json.loads(json.dumps(DASHBOARDS["farmedge-county"]))
    sc = filled.sc
    sel = _selections(filled, doc, "all", filled.start_ms, filled.end_ms)

    def run(title: str, ref: str = "A") -> list[dict[str, Any]]:
        p = next(p for p in doc["panels"] if p["title"] == title)
        t = next(t for t in p["targets"] if t["refId"] == ref)
        q = expand(t["query"], start_ms=filled.start_ms, end_ms=filled.end_ms,
                   interval_ms=300_000,
                   variables=_variables(doc), selections=sel)
        return query(filled.url, q, GRAFANA_USER, filled.db)

    assert run("Farms online")[0]["values"][0][1] == 2      # farm-003's gateway went offline
    assert run("Gateways online", "A")[0]["values"][0][1] == 2
    assert run("Gateways online", "B")[0]["values"][0][1] == 3
    counts = {s["name"]: s["values"][0][1:] for s in run("Devices reporting vs installed")}
    # 11 channels per gateway: soil x4, weather x3, livestock x2, water, battery.
    assert counts == {"soil": [12, 12], "weather": [9, 9], "livestock": [6, 6],
                      "water": [3, 3], "device": [3, 3]}
    assert {s["name"]: s["values"][0][1] for s in run("Idle equipment")} == dict.fromkeys(
        counts, 0)
    # The registry the edge wrote: 3 gateways, all heard from (one said offline).
    [idle] = run("Idle gateways")
    row = dict(zip(idle["columns"], idle["values"][0], strict=True))
    assert (idle["tags"]["county"], row["registered"], row["heard in 24 h"], row["idle"],
            row["idle rate"]) == (sc.county, 3, 3, 0, 0)
    firing = {ref: run("Alerts firing by severity", ref)[0]["values"][0][1]
              for ref in "ABC"}
    assert firing == {"A": 2, "B": 1, "C": 1}  # critical, warning, info
    fever = run("Animals with fever")[0]
    rows = [dict(zip(fever["columns"], r, strict=True)) for r in fever["values"]]
    assert [r["animal"] for r in rows] == [sc.sick_animal]
    assert rows[0]["highest"] == pytest.approx(40.3)


def test_committed_json_is_what_the_generator_writes() -> None:
    assert gen.main(["--check", "--out", str(ROOT / "dashboards" / "json")]) == 0


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_dashboard_matches_the_grafana_schema(uid: str) -> None:
    schema = json.loads((ROOT / "tests" / "schemas" / "grafana-dashboard.schema.json").read_text())
    doc = json.loads((ROOT / "dashboards" / "json" / f"{uid}.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(doc, schema, cls=jsonschema.Draft7Validator)


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_layout_fits_a_laptop_and_a_phone(uid: str) -> None:
    """24 columns, no overlaps, ids unique, units and descriptions set."""
    doc = DASHBOARDS[uid]
    cells: set[tuple[int, int]] = set()
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for p in doc["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps"
                cells.add((x, y))
        if p["type"] == "row":
            continue
        assert p["description"], p["title"]
        assert p["fieldConfig"]["defaults"]["unit"], p["title"]
        assert p["gridPos"]["w"] >= 6, "narrower panels are unreadable on a phone"
        for t in p["targets"]:
            assert t["datasource"]["uid"] == gen.DATASOURCE_UID


def test_provisioning_points_at_the_dashboards() -> None:
    prov = ROOT / "dashboards" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "farmedge.yaml").read_text())
    [source] = ds["datasources"]
    assert source["uid"] == gen.DATASOURCE_UID and source["type"] == "influxdb"
    assert source["jsonData"]["version"] == "InfluxQL"
    # The read-only user the compose file gives Grafana.
    assert source["user"] == "${INFLUX_GRAFANA_USER}"
    assert "password" in source["secureJsonData"]
    dp = yaml.safe_load((prov / "dashboards" / "farmedge.yaml").read_text())
    [provider] = dp["providers"]
    assert provider["type"] == "file"
    assert Path(provider["options"]["path"]).name == "farmedge"


@pytest.mark.slow
def test_the_alert_engines_own_records_show_on_the_dashboards(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """The same pipeline with the edge's alert engine on and no records of
    our own: the gateway whose status says offline raises the engine's
    gateway-offline alert, which the county overview counts as firing and the
    farm dashboard shows as an annotation."""
    now = int(time.time() * 1000)
    sc = make_scenario("hulan", now_ms=now, hours=1)
    p = start_pipeline(tmp_path_factory.mktemp("alerts-on"), sc.registry_yaml, county=sc.county,
                       alerts=True)
    try:
        publish_scenario(p, sc)
        db = ENV["INFLUX_DATABASE"]
        raised = eventually(lambda: query(
            p.influx.url, 'SELECT "title", "severity", "scope_id" FROM "alerts" WHERE '
            "\"event\" = 'raise' AND \"rule\" = 'device/gateway-offline'", GRAFANA_USER, db),
            timeout=30, what="the engine's gateway-offline alert")
        [title, severity, gateway] = raised[0]["values"][0][1:]
        assert gateway == "gw-003-1"
        end = int(time.time() * 1000)
        f = Filled(p.influx.url, db, sc, sc.start_ms, end, end)
        county = json.loads(json.dumps(DASHBOARDS["farmedge-county"]))
        sel = _selections(f, county, "all", sc.start_ms, end)
        panel = next(x for x in county["panels"] if x["title"] == "Alerts firing by severity")
        ref = {"critical": "A", "warning": "B", "info": "C"}[severity]
        target = next(t for t in panel["targets"] if t["refId"] == ref)
        q = expand(target["query"], start_ms=sc.start_ms, end_ms=end, interval_ms=60_000,
                   variables=_variables(county), selections=sel)
        assert query(p.influx.url, q, GRAFANA_USER, db)[0]["values"][0][1] >= 1
        farm_doc = json.loads(json.dumps(DASHBOARDS["farmedge-farm"]))
        anno = next(a for a in farm_doc["annotations"]["list"] if a["name"] == "Alerts")
        sel = _selections(f, farm_doc, "all", sc.start_ms, end)
        q = expand(anno["query"], start_ms=sc.start_ms, end_ms=end, interval_ms=60_000,
                   variables=_variables(farm_doc), selections=sel)
        titles = [r[1] for s in query(p.influx.url, q, GRAFANA_USER, db) for r in s["values"]]
        assert title in titles
    finally:
        p.stop()


def test_fleet_view_as_grafanas_read_only_user(filled: Filled, tmp_path: Path) -> None:
    """`farmedge fleet` with the read-only user Grafana has: the same county
    counts as the "Idle gateways" panel; a wrong password is said plainly."""
    import os
    import subprocess
    import sys

    reg = tmp_path / "registry.yaml"
    reg.write_text(filled.sc.registry_yaml)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARMEDGE_")}
    env.update(FARMEDGE_INFLUX_URL=filled.url, FARMEDGE_INFLUX_DATABASE=filled.db,
               FARMEDGE_INFLUX_USERNAME=GRAFANA_USER[0],
               FARMEDGE_INFLUX_PASSWORD=GRAFANA_USER[1])

    def fleet(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "farmedge", "fleet", "--registry",
                               str(reg), "--json"], capture_output=True, text=True,
                              timeout=60, env={**env, **extra}, cwd=ROOT)

    res = fleet()
    assert res.returncode == 0, res.stderr
    [county] = json.loads(res.stdout)["counties"]
    assert county["county"] == filled.sc.county
    assert (county["registered"], county["idle"], county["idle_rate"]) == (3, 0, 0.0)
    states = {g["gateway"]: g["state"] for f in county["farms"] for g in f["gateways"]}
    assert states["gw-003-1"] == "offline"  # its last status said offline

    doc = json.loads(json.dumps(DASHBOARDS["farmedge-county"]))
    sel = _selections(filled, doc, "all", filled.start_ms, filled.end_ms)
    panel = next(p for p in doc["panels"] if p["title"] == "Idle gateways")
    q = expand(panel["targets"][0]["query"], start_ms=filled.start_ms, end_ms=filled.end_ms,
               interval_ms=60_000, variables=_variables(doc), selections=sel)
    [row] = query(filled.url, q, GRAFANA_USER, filled.db)
    got = dict(zip(row["columns"], row["values"][0], strict=True))
    assert (got["registered"], got["idle"], got["idle rate"]) == (
        county["registered"], county["idle"], county["idle_rate"])

    bad = fleet(FARMEDGE_INFLUX_PASSWORD="wrong")
    assert bad.returncode == 1 and "answered 401" in bad.stderr, bad.stderr
