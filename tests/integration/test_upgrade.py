"""An upgrade goes on from what the previous release left on disk: the
current code is started on copies of files written by farmedge 168e95c
(tests/fixtures/upgrade-168e95c/, made by tests/fixtures/make_upgrade_files.py
with that release's code; manifest.json says what they hold), against the
real Mosquitto and InfluxDB:

* the edge's spool (a file per batch, and the SQLite spool of an earlier
  version that 168e95c still replays): every spooled point reaches InfluxDB,
  exactly as many as were spooled, and the spool is empty afterwards;
* the edge's ingest state: the sensor ids a gateway already used count
  against its budget, and a message of an unsynced gateway delivered again
  lands where its clock segment placed it the first time;
* the gateway's outbox: every queued reading is sent and stored, once;
* the alert engine's state: the alert that was firing and already sent is
  not sent again, the one held by quiet hours is sent at 07:00 (a simulated
  clock), and the farm's daily message budget used before the upgrade still
  counts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from farmedge.alerts import AlertEngine, AlertsSettings, AppriseNotifier, MemoryRecorder, load_rules
from farmedge.contract import parse_telemetry
from farmedge.records import Accepted
from farmedge.registry import load_registry
from farmedge_dev.devservers import InfluxServer, MosquittoServer, influx_query
from tests.alerts_support import HttpReceiver, SimClock, settle, until
from tests.edgeproc import EdgeProcess
from tests.gateway_support import write_gateway_toml
from tests.support import Publisher, count, eventually, make_payload

pytestmark = pytest.mark.servers

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "upgrade-168e95c"
MANIFEST: dict[str, Any] = json.loads((FIXTURE / "manifest.json").read_text(encoding="utf-8"))


def _copy(part: str, dest: Path) -> Path:
    """A copy of one part's files (the fixture itself is never written)."""
    shutil.copytree(FIXTURE / part, dest)
    return dest


def _points(url: str, db: str, q: str) -> list[list[Any]]:
    out: list[list[Any]] = []
    for s in influx_query(url, q, db):
        values = s["values"]
        assert isinstance(values, list)
        out.extend(values)
    return out


# ------------------------------------------------------------------ the edge


def _messages(edge: EdgeProcess) -> float:
    """MQTT messages the edge has received (its /metrics)."""
    for ln in edge.metrics().splitlines():
        if ln.startswith("farmedge_messages_total "):
            return float(ln.split()[1])
    return 0.0


def test_the_edge_replays_the_old_spool_and_uses_the_old_ingest_state(
        tmp_path: Path, mosquitto: MosquittoServer, influxdb: InfluxServer,
        influx_db: str) -> None:
    county, farm = MANIFEST["county"], MANIFEST["farm"]
    spool = MANIFEST["spool"]
    data = _copy("edge", tmp_path / "edge")
    assert (data / "spool.sqlite3").exists()
    assert len(list((data / "spool").glob("*.zst"))) == spool["file_batches"]
    edge = EdgeProcess(mqtt_url=mosquitto.url, influx_url=influxdb.url, database=influx_db,
                       data_dir=data, county=county,
                       extra_env={"FARMEDGE_INGEST_MAX_IDS_PER_GATEWAY": "3"}).start()
    try:
        def stored() -> dict[str, int]:
            return {m: count(influxdb.url, influx_db, m, p["field"])
                    for m, p in spool["points"].items()}

        want = {m: p["n"] for m, p in spool["points"].items()}
        eventually(lambda: edge.health().get("spool_lines") == 0 and stored() == want,
                   timeout=90, what=f"the spooled points in InfluxDB ({want})")
        assert stored() == want
        assert not (data / "spool.sqlite3").exists(), "the earlier version's spool stays"
        assert list((data / "spool").glob("*.zst")) == []

        pub = Publisher(mosquitto.url)
        try:
            # The budget is 3 ids and the state knows gw-1's three: soil-1 is
            # known, soil-9 is one too many (a fresh state would take both).
            t = MANIFEST["t0_ms"] + 3_600_000
            pub.publish(f"farm/v1/{county}/{farm}/gw-1/telemetry", make_payload("gw-1", 50, [
                {"sensor": "soil-1", "kind": "soil_moisture", "ts": t, "value": 33.0,
                 "unit": "%"},
                {"sensor": "soil-9", "kind": "soil_moisture", "ts": t, "value": 34.0,
                 "unit": "%"}], sent=t))
            # gw-2's seq 2 again (its clock is unsynced): placed by the old
            # segment's offset, not by the time it arrives now.
            seg = MANIFEST["ingest_state"]["gw2_seq2"]
            pub.publish(f"farm/v1/{county}/{farm}/gw-2/telemetry", make_payload("gw-2", 2, [
                {"sensor": "air-1", "kind": "air_temperature", "ts": seg["reading_ts"],
                 "value": 29.5, "unit": "degC"}], sent=seg["sent"], clock="unsynced"))
        finally:
            pub.close()
        budget = "\"reason\" = 'cardinality_budget'"
        eventually(lambda: count(influxdb.url, influx_db, "ingest_errors", "count", budget) == 1
                   and count(influxdb.url, influx_db, "soil", "moisture", f"time = {t}ms") == 1,
                   timeout=60, what="soil-1 stored and soil-9 refused by the budget")
        rows = _points(influxdb.url, influx_db,
                       f"SELECT moisture, sensor FROM soil WHERE time = {t}ms")
        assert [r[2] for r in rows] == ["soil-1"]
        temp = spool["points"]["weather"]["field"]
        q = (f"SELECT {temp} FROM weather WHERE sensor = 'air-1' "
             f"AND time = {seg['stored_ts']}ms")
        eventually(lambda: [r[1] for r in _points(influxdb.url, influx_db, q)] == [29.5],
                   timeout=60, what="gw-2's message at the time its old segment gives")
        assert count(influxdb.url, influx_db, "weather", temp) == spool["points"]["weather"]["n"]
        # gw-1's status again (a retained one at reconnect, say): the point it
        # was stored on, not a new one.
        st = MANIFEST["ingest_state"]["gw1_status"]
        seen = _messages(edge)
        pub = Publisher(mosquitto.url)
        try:
            pub.publish(f"farm/v1/{county}/{farm}/gw-1/status", st["payload"].encode(),
                        retain=True)
        finally:
            pub.close()
        eventually(lambda: _messages(edge) > seen and edge.health().get("pending_messages") == 0,
                   timeout=60, what="the status handled and written")
        field = spool["points"]["gateway"]["field"]
        assert count(influxdb.url, influx_db, "gateway", field) == spool["points"]["gateway"]["n"]
        assert count(influxdb.url, influx_db, "gateway", field,
                     f"time = {st['stored_ts']}ms") == 1
    finally:
        rc = edge.stop()
    assert rc == 0, edge.log_tail()


# ------------------------------------------------------------------ the gateway


def test_the_gateway_sends_what_its_old_outbox_holds(
        tmp_path: Path, mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str,
        county: str) -> None:
    queued: dict[str, int] = MANIFEST["gateway"]["queued"]
    data = _copy("gateway", tmp_path / "gw-data")
    cfg = tmp_path / "gateway.toml"
    write_gateway_toml(cfg, mosquitto.url, county, data)
    edge = EdgeProcess(mqtt_url=mosquitto.url, influx_url=influxdb.url, database=influx_db,
                       data_dir=tmp_path / "edge", county=county).start()
    log = (tmp_path / "gateway.log").open("wb")
    gw = subprocess.Popen([sys.executable, "-m", "farmedge", "gateway", "run", "--config",
                           str(cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        def stored() -> dict[str, int]:
            return {s: count(influxdb.url, influx_db, m, f, f"\"sensor\" = '{s}'")
                    for s, (m, f) in {"queued-1": ("soil", "moisture"),
                                      "queued-2": ("weather", "temperature"),
                                      "queued-3": ("soil", "moisture")}.items()}

        eventually(lambda: stored() == queued or gw.poll() is not None, timeout=90,
                   what=f"the queued readings in InfluxDB ({queued})")
        assert gw.poll() is None, (tmp_path / "gateway.log").read_text()[-3000:]
        assert stored() == queued
    finally:
        gw.terminate()
        gw.wait(60)
        log.close()
        edge.stop()
    assert gw.returncode == 0, (tmp_path / "gateway.log").read_text()[-3000:]
    assert stored() == queued
    # The boot that never synced: its readings went out marked unsynced.
    assert count(influxdb.url, influx_db, "soil", "moisture_time_estimated",
                 "\"sensor\" = 'queued-3'") == queued["queued-3"]
    assert count(influxdb.url, influx_db, "soil", "moisture_time_estimated",
                 "\"sensor\" = 'queued-1'") == 0


# ------------------------------------------------------------------ the alerts


@pytest.fixture
async def receiver() -> AsyncIterator[HttpReceiver]:
    """The json:// receiver at the address the held message was queued for."""
    r = HttpReceiver()
    r.port = MANIFEST["alerts"]["port"]
    try:
        await r.start()
    except OSError as exc:
        pytest.fail(f"port {r.port} (the fixture's alert contact) is taken: {exc}")
    yield r
    await r.stop()


async def test_the_alert_engine_goes_on_from_the_old_state(
        tmp_path: Path, receiver: HttpReceiver) -> None:
    m = MANIFEST["alerts"]
    d = _copy("alerts", tmp_path / "alerts")
    registry = load_registry(d / "registry.yaml")
    clock = SimClock(m["now"] + 60)
    engine = AlertEngine(rules=load_rules([d / "rules.yaml"]), registry=registry,
                         notifier=AppriseNotifier(), state_path=d / "alerts.sqlite",
                         recorders=[MemoryRecorder()], clock=clock,
                         settings=AlertsSettings(tick_s=0.05, backoff_s=60))
    await engine.start()
    entry = registry.index()[(m["county"], m["farm"], "gw-1")][1]

    async def feed(values: dict[str, float]) -> None:
        before = engine.stats["readings"]
        payload = make_payload("gw-1", 1, [
            {"sensor": s, "kind": "soil_moisture", "ts": clock.ms, "value": v, "unit": "%"}
            for s, v in values.items()], sent=clock.ms)
        engine.on_accepted([Accepted(m["county"], m["farm"], "gw-1", clock.ms, True, 0,
                                     parse_telemetry(payload).readings, entry)])
        await until(lambda: engine.stats["readings"] >= before + len(values),
                    what="the engine took the readings")

    async def step(seconds: float) -> None:
        clock.advance(seconds)
        engine.wake()
        await settle(engine, passes=1)

    try:
        rule, entity = m["firing"]
        assert (rule, entity, "firing") in engine.firing()
        # Both plots stay dry through the night: nothing is sent again. A
        # third dries out before midnight: the day's budget (two messages) was
        # used up before the upgrade, so it is not even held for the morning.
        for _ in range(4):
            await feed({"soil-1": 15.0, "soil-3": 14.0, "soil-5": 13.0})
            await step(600)
        assert ("upgrade-dry/soil-dry", "sensor:gw-1/soil-5", "firing") in engine.firing()
        clock.t = m["held_release"] - 60
        await step(0)
        await settle(engine)
        assert receiver.posts == []
        # 07:00: the message quiet hours held is sent, once.
        await step(120)
        await until(lambda: len(receiver.posts) >= 1, what="the held message at 07:00")
        await settle(engine)
        assert len(receiver.posts) == 1
        assert receiver.messages()[0].startswith(m["held_plot"])
        assert receiver.messages()[0] != m["sent_before"][0]
        assert (rule, entity, "firing") in engine.firing()
    finally:
        await engine.close()
