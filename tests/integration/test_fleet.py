"""``farmedge fleet`` and the county dashboard's "Idle gateways" panel, on
the same data: a registry of six gateways in two counties, the real edge
(which writes the registry to InfluxDB), gateways' status and readings
published to the real broker, and one gateway last heard from two days ago
(written straight to InfluxDB, since the edge stamps what it receives with
its own clock). Every state is there: online, silent sensors, offline, idle,
never seen; and a gateway taken out of the registry no longer counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from farmedge.contract import encode_status
from farmedge.provision import dashboards as gen
from farmedge_dev.devservers import InfluxServer, MosquittoServer
from tests.edgeproc import EdgeProcess
from tests.grafana_support import Selection, expand
from tests.support import Publisher, eventually, make_payload

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.servers

HOUR_MS = 3_600_000


def _registry(county: str, county2: str, *, with_gone: bool) -> str:
    gone = "      gw-gone: {}\n" if with_gone else ""
    return f"""
farms:
  - county: {county}
    farm: farm-a
    name: Farm A
    gateways:
      gw-online:
        sensors:
          soil-1: {{interval_s: 600}}
          node-1: {{interval_s: 600}}
      gw-silent:
        interval_s: 600
        sensors:
          soil-1: {{}}
          soil-2: {{}}
      gw-offline: {{}}
  - county: {county}
    farm: farm-b
    gateways:
      gw-idle: {{}}
      gw-never: {{}}
{gone}  - county: {county2}
    farm: farm-c
    gateways:
      gw-lonely: {{}}
"""


def _status(gateway: str, online: bool = True, **extra: Any) -> bytes:
    doc: dict[str, Any] = {}
    if online:
        doc.update(ts=int(time.time() * 1000), uptime_s=100.0, version="0.1.0",
                   clock="synced", outbox_depth=0, outbox_oldest_age_s=0.0, dropped=0)
        doc.update(extra)
    return encode_status(gateway=gateway, online=online, **doc)


def _query(url: str, db: str, q: str) -> list[dict[str, Any]]:
    from farmedge_dev.devservers import influx_query

    return influx_query(url, q, db)


def _fleet(influx: InfluxServer, db: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARMEDGE_")}
    env.update(FARMEDGE_INFLUX_URL=influx.url, FARMEDGE_INFLUX_DATABASE=db)
    return subprocess.run([sys.executable, "-m", "farmedge", "fleet", *args],
                          capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)


def _by_gateway(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["gateway"]: g for c in doc["counties"] for f in c["farms"] for g in f["gateways"]}


def _panel_rows(influx: InfluxServer, db: str) -> dict[str, dict[str, Any]]:
    """The 'Idle gateways' panel's query, as Grafana sends it with All
    counties selected, run against InfluxDB."""
    doc = gen.dashboards()["farmedge-county"]
    panel = next(p for p in doc["panels"] if p["title"] == "Idle gateways")
    [target] = panel["targets"]
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    now = int(time.time() * 1000)
    q = expand(target["query"], start_ms=now - 24 * HOUR_MS, end_ms=now, interval_ms=60_000,
               variables=variables,
               selections={n: Selection(all=True) for n in variables})
    out = {}
    for s in _query(influx.url, db, q):
        for row in s["values"]:
            out[s["tags"]["county"]] = dict(zip(s["columns"], row, strict=True))
    return out


def test_fleet_view_and_dashboard_agree(tmp_path: Path, mosquitto: MosquittoServer,
                                        influxdb: InfluxServer, influx_db: str,
                                        county: str) -> None:
    county2 = county + "x"
    reg = tmp_path / "registry.yaml"
    env = {"FARMEDGE_REGISTRY": str(reg), "FARMEDGE_ALERTS_ENABLED": "false"}
    data = tmp_path / "edge"

    # A first registry with a gateway that is later taken out.
    reg.write_text(_registry(county, county2, with_gone=True))
    first = EdgeProcess(mqtt_url=mosquitto.url, influx_url=influxdb.url, database=influx_db,
                        data_dir=data, county=county, extra_env=env).start()

    def registered() -> dict[str, int]:
        series = _query(influxdb.url, influx_db, 'SELECT last("registered") FROM "gateway" '
                        'GROUP BY "gateway"')
        return {s["tags"]["gateway"]: s["values"][0][1] for s in series}

    eventually(lambda: registered().get("gw-gone") == 1, timeout=30,
               what="the edge wrote the registry")
    assert first.stop() == 0

    reg.write_text(_registry(county, county2, with_gone=False))
    edge = EdgeProcess(mqtt_url=mosquitto.url, influx_url=influxdb.url, database=influx_db,
                       data_dir=data, county=county, extra_env=env).start()
    pub = Publisher(mosquitto.url)
    try:
        eventually(lambda: registered().get("gw-gone") == 0, timeout=30,
                   what="the edge wrote that gw-gone left the registry")
        assert set(registered()) == {"gw-online", "gw-silent", "gw-offline", "gw-idle",
                                     "gw-never", "gw-gone", "gw-lonely"}

        base = f"farm/v1/{county}"
        now = int(time.time() * 1000)
        pub.publish(f"{base}/farm-a/gw-online/status",
                    _status("gw-online", outbox_depth=5, outbox_oldest_age_s=12.5))
        pub.publish(f"{base}/farm-a/gw-online/telemetry", make_payload("gw-online", 0, [
            {"sensor": "soil-1", "kind": "soil_moisture", "ts": now - 1000, "value": 24.0,
             "unit": "%"},
            {"sensor": "node-1", "kind": "battery_voltage", "ts": now - 1000, "value": 3.52,
             "unit": "V"},
            {"sensor": "soil-1", "kind": "battery_voltage", "ts": now - 1000, "value": 3.71,
             "unit": "V"}]))
        pub.publish(f"{base}/farm-a/gw-silent/status", _status("gw-silent", clock="unsynced"))
        pub.publish(f"{base}/farm-a/gw-silent/telemetry", make_payload("gw-silent", 0, [
            {"sensor": "soil-1", "kind": "soil_moisture", "ts": now - 1000, "value": 30.0,
             "unit": "%"}]))
        pub.publish(f"{base}/farm-a/gw-offline/status", _status("gw-offline"))
        pub.publish(f"{base}/farm-a/gw-offline/status", _status("gw-offline", online=False))
        # Heard from two days ago, nothing since.
        old = now - 48 * HOUR_MS
        body = (f"gateway,county={county},farm=farm-b,gateway=gw-idle online=true,"
                f"outbox_depth=3i,outbox_oldest_age_s=60.0,clock=\"synced\" {old}\n")
        urllib.request.urlopen(urllib.request.Request(
            f"{influxdb.url}/write?db={influx_db}&precision=ms", data=body.encode(),
            method="POST"), timeout=10)

        def statuses() -> int:
            series = _query(influxdb.url, influx_db,
                            f"SELECT count(\"online\") FROM \"gateway\" WHERE "
                            f"\"county\" = '{county}' AND time > now() - 1h")
            return int(series[0]["values"][0][1]) if series else 0

        def readings() -> int:
            n = 0
            for m, f in (("soil", "moisture"), ("device", "battery_voltage")):
                for s in _query(influxdb.url, influx_db, f'SELECT count("{f}") FROM "{m}"'):
                    n += int(s["values"][0][1])
            return n

        def stored() -> bool:
            got = (statuses(), readings())
            assert got == (4, 4), f"(statuses, readings) = {got}"
            return True

        eventually(stored, timeout=30, what="statuses and readings stored")

        res = _fleet(influxdb, influx_db, "--registry", str(reg), "--json")
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        gws = _by_gateway(doc)
        assert {g: v["state"] for g, v in gws.items()} == {
            "gw-online": "online", "gw-silent": "silent_sensors", "gw-offline": "offline",
            "gw-idle": "idle", "gw-never": "never_seen", "gw-lonely": "never_seen"}
        on = gws["gw-online"]
        assert (on["outbox_depth"], on["outbox_oldest_age_s"], on["clock"]) == (5, 12.5,
                                                                                 "synced")
        assert (on["battery_v"], on["battery_sensor"]) == (3.52, "node-1")
        assert on["last_seen_age_s"] < 120 and on["online"] is True
        assert gws["gw-silent"]["silent_sensors"] == ["soil-2"]
        assert gws["gw-silent"]["clock"] == "unsynced"
        assert gws["gw-offline"]["online"] is False
        assert 47 * 3600 < gws["gw-idle"]["last_seen_age_s"] < 49 * 3600
        assert gws["gw-idle"]["outbox_depth"] == 3
        assert gws["gw-never"]["last_seen"] is None
        counties = {c["county"]: c for c in doc["counties"]}
        assert set(counties) == {county, county2}
        c1 = counties[county]
        assert (c1["registered"], c1["idle"], c1["idle_rate"]) == (5, 2, 0.4)
        assert c1["states"] == {"online": 1, "silent_sensors": 1, "offline": 1, "idle": 1,
                                "never_seen": 1}
        assert [f["farm"] for f in c1["farms"]] == ["farm-a", "farm-b"]
        assert c1["farms"][0]["name"] == "Farm A"
        assert (counties[county2]["registered"], counties[county2]["idle_rate"]) == (1, 1.0)

        # The dashboard panel: the same numbers, from the registry the edge wrote.
        rows = _panel_rows(influxdb, influx_db)
        for c, want in counties.items():
            row = rows[c]
            assert (row["registered"], row["idle"]) == (want["registered"], want["idle"]), row
            assert row["idle rate"] == pytest.approx(want["idle_rate"])
            assert row["heard in 24 h"] == want["registered"] - want["idle"]

        # Without a registry file: the registry the edge wrote (gw-gone is out).
        res2 = _fleet(influxdb, influx_db, "--json", "--county", county)
        assert res2.returncode == 0, res2.stderr
        doc2 = json.loads(res2.stdout)
        assert {g: v["state"] for g, v in _by_gateway(doc2).items()} == {
            g: v["state"] for g, v in gws.items() if g != "gw-lonely"}
        assert doc2["counties"][0]["idle_rate"] == 0.4

        table = _fleet(influxdb, influx_db, "--registry", str(reg), "--farm", "farm-a")
        assert table.returncode == 0, table.stderr
        out = table.stdout
        assert f"county {county}: 3 gateways registered, 0 idle or never seen" in out
        assert "silent: soil-2" in out and "3.52 V (node-1)" in out and "OFFLINE" in out
        assert "gw-idle" not in out
    finally:
        pub.close()
        edge.stop()


def test_fleet_says_when_influxdb_cannot_answer(tmp_path: Path) -> None:
    from farmedge_dev.devservers import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("FARMEDGE_")}
    env["FARMEDGE_INFLUX_URL"] = f"http://127.0.0.1:{free_port()}"
    res = subprocess.run([sys.executable, "-m", "farmedge", "fleet"], capture_output=True,
                         text=True, timeout=60, env=env, cwd=ROOT)
    assert res.returncode == 1
    assert "cannot query InfluxDB" in res.stderr and "Traceback" not in res.stderr


def test_the_states_and_their_windows() -> None:
    """classify() on its own: the windows of docs/fleet.md, with a fixed now."""
    from farmedge.fleet import Observed, Registered, classify

    now = 1_800_000_000_000
    key = ("c", "f", "g")
    minute = 60_000

    def state(reg: Registered | None, obs: Observed | None) -> tuple[str, list[str]]:
        v = classify(reg, key, obs, now)
        return v.state, v.silent_sensors

    reg = Registered("c", "f", "g", interval_s=300,
                     sensors={"fast": 60.0, "slow": 3600.0, "plain": None})
    heard = {"last_status_ms": now - minute, "online": True}
    all_fresh = {"fast": now - 2 * minute, "slow": now - 2 * 3_600_000, "plain": now - minute}
    assert state(reg, None) == ("never_seen", [])
    assert state(reg, Observed(sensors={"fast": now})) == ("never_seen", [])
    assert state(reg, Observed(last_status_ms=now - 25 * 60 * minute, online=True)) == (
        "idle", [])
    # 3 × the gateway's 300 s: offline after 15 min without a status or a reading.
    quiet = {k: now - 16 * minute for k in all_fresh}
    assert state(reg, Observed(last_status_ms=now - 16 * minute, online=True,
                               sensors=quiet)) == ("offline", [])
    # Readings keep it online between two statuses (status every 30 min here).
    assert state(reg, Observed(last_status_ms=now - 20 * minute, online=True,
                               sensors=all_fresh)) == ("online", [])
    assert state(reg, Observed(last_status_ms=now - minute, online=False,
                               sensors=all_fresh)) == ("offline", [])
    assert state(reg, Observed(**heard, sensors=all_fresh)) == ("online", [])
    # Each sensor's own interval (fast: 3 min), else the gateway's (plain: 15 min).
    stale = {**all_fresh, "fast": now - 4 * minute, "plain": now - 16 * minute}
    assert state(reg, Observed(**heard, sensors=stale)) == (
        "silent_sensors", ["fast", "plain"])
    # A sensor the registry does not list counts while it reported within 7 days.
    extra = {**all_fresh, "spare": now - 2 * 86_400_000}
    assert state(reg, Observed(**heard, sensors=extra)) == ("silent_sensors", ["spare"])
    gone = {**all_fresh, "spare": now - 8 * 86_400_000}
    assert state(reg, Observed(**heard, sensors=gone)) == ("online", [])
    # Not in the registry: default interval 600 s (offline after 30 min).
    assert state(None, Observed(last_status_ms=now - 20 * minute, online=True)) == (
        "online", [])
    assert classify(None, key, Observed(**heard), now).registered is False


def test_registry_points_remember_what_left(tmp_path: Path) -> None:
    from farmedge.edge.registry_points import load_written, registry_lines, save_written
    from farmedge.registry import Registry

    reg = Registry.model_validate({"farms": [{"county": "c", "farm": "f", "gateways": {
        "g1": {"interval_s": 300, "sensors": {"s1": {}, "s2": {}}}, "g2": {}}}]})
    lines, written = registry_lines(reg, load_written(tmp_path), 1000)
    assert lines == [
        'gateway,county=c,farm=f,gateway=g1 registered=1i,registry_sensors=2i,'
        'registry_sensor_ids="s1,s2",registry_interval_s=300.0 1000',
        'gateway,county=c,farm=f,gateway=g2 registered=1i,registry_sensors=0i,'
        'registry_sensor_ids="" 1000']
    save_written(tmp_path, written)
    smaller = Registry.model_validate({"farms": [{"county": "c", "farm": "f",
                                                  "gateways": {"g2": {}}}]})
    lines, written = registry_lines(smaller, load_written(tmp_path), 2000)
    assert lines[-1] == "gateway,county=c,farm=f,gateway=g1 registered=0i,registry_sensors=0i 2000"
    assert written == {("c", "f", "g2")}


def test_fleet_on_a_missing_then_an_empty_database(tmp_path: Path, influxdb: InfluxServer,
                                                   influx_db: str) -> None:
    """Before the edge first ran, the database does not exist: InfluxDB 1.x
    answers "not executed" to each of several statements, and fleet says
    what is missing. Once it exists, empty, every registered gateway (ids in
    Chinese too, a thousand of them) is never seen, quickly, in valid JSON."""
    from farmedge_dev.devservers import influx_query

    reg = tmp_path / "registry.yaml"
    lines = ["farms:"]
    for f in range(100):
        lines += [f"  - county: 县{f % 3}", f"    farm: 农场-{f}", "    gateways:"]
        lines += [f"      网关-{g}: {{}}" for g in range(10)]
    reg.write_text("\n".join(lines) + "\n", encoding="utf-8")
    missing = f"{influx_db}_none"
    res = _fleet(influxdb, missing, "--registry", str(reg))
    assert res.returncode == 1, res.stdout
    assert f"has no database '{missing}'" in res.stderr, res.stderr
    influx_query(influxdb.url, f'CREATE DATABASE "{missing}"')
    try:
        _check_empty(influxdb, missing, reg)
    finally:
        influxdb.query(f'DROP DATABASE "{missing}"')


def _check_empty(influxdb: InfluxServer, db: str, reg: Path) -> None:
    started = time.monotonic()
    res = _fleet(influxdb, db, "--registry", str(reg), "--json")
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - started < 30
    doc = json.loads(res.stdout)
    assert sum(c["registered"] for c in doc["counties"]) == 1000
    assert all(c["idle_rate"] == 1.0 for c in doc["counties"])
    assert {g["state"] for g in _by_gateway(doc).values()} <= {"never_seen", "NEVER SEEN"}
    res = _fleet(influxdb, db, "--registry", str(reg), "--county", "县1")
    assert res.returncode == 0, res.stderr
    # Columns line up on a terminal, where each Chinese character takes two.
    from farmedge.fleet import _width

    lines = [ln for ln in res.stdout.splitlines() if "GATEWAY" in ln or "NEVER SEEN" in ln]
    assert len(lines) > 300
    starts = {_width(ln[:ln.index("NEVER SEEN" if "NEVER" in ln else "STATE")])
              for ln in lines}
    assert len(starts) == 1, starts


def test_a_county_is_matched_as_written_not_as_a_pattern(influxdb: InfluxServer,
                                                          influx_db: str) -> None:
    """``--county su.hua`` is that county only: the ids go into an InfluxQL
    regular expression, where ``.`` would match suihua too, and a ``\\``
    before the closing ``/`` would end the expression early."""
    import urllib.request

    from farmedge.fleet import observe, registered_from_influx
    from farmedge_dev.devservers import influx_query

    now = int(time.time() * 1000)
    lines = "\n".join(
        f'gateway,county={c},farm=f1,gateway=gw-1 online=true,registered=1i {now}'
        for c in ("su.hua", "suihua", "su-hua_县"))
    req = urllib.request.Request(f"{influxdb.url}/write?db={influx_db}&precision=ms",
                                 data=lines.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=30):
        pass

    def query(statements: Sequence[str]) -> list[list[dict[str, Any]]]:
        return [influx_query(influxdb.url, s, influx_db) for s in statements]

    assert {k[0] for k in observe(query, ["su.hua"])} == {"su.hua"}
    assert {r.county for r in registered_from_influx(query, ["su.hua"])} == {"su.hua"}
    assert {k[0] for k in observe(query, ["su.hua", "suihua"])} == {"su.hua", "suihua"}
    assert {k[0] for k in observe(query, ["su-hua_县"])} == {"su-hua_县"}
    assert observe(query, ["su\\"]) == {}
