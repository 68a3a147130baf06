"""The edge service end to end, against the real Mosquitto and InfluxDB."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farmedge.contract import encode_status, is_valid_id
from farmedge_dev.devservers import InfluxServer, MosquittoServer
from tests.edgeproc import EdgeProcess, edge_process
from tests.support import Publisher, count, eventually, make_payload, raw_payload

pytestmark = pytest.mark.servers

NOW = int(time.time() * 1000)


def q(influxdb: InfluxServer, db: str, query: str) -> list[dict[str, object]]:
    return influxdb.query(query, db)


def test_readings_land_with_tags_fields_units_and_timestamps(
        mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str, county: str,
        tmp_path: Path) -> None:
    with edge_process(mqtt_url=mosquitto.url, influx_url=influxdb.url, database=influx_db,
                      data_dir=tmp_path / "edge", county=county):
        pub = Publisher(mosquitto.url)
        sent = 0
        for farm in ("farm-a", "farm-b"):
            for g in range(3):
                gw = f"gw-{farm}-{g}"
                for seq in range(5):
                    ts = NOW - 60_000 + seq * 1000
                    readings = [
                        {"sensor": "soil-1", "kind": "soil_moisture", "ts": ts,
                         "value": 0.234, "unit": "m3/m3"},
                        {"sensor": "soil-1", "kind": "soil_temperature", "ts": ts,
                         "value": 68.0, "unit": "degF"},
                        {"sensor": "soil-1", "kind": "soil_ec", "ts": ts,
                         "value": 1.2, "unit": "mS/cm", "quality": "suspect"},
                        {"sensor": "bolus-7", "kind": "animal_body_temperature", "ts": ts,
                         "value": 38.6, "unit": "°C", "animal": "cow-7"},
                    ]
                    pub.publish(f"farm/v1/{county}/{farm}/{gw}/telemetry",
                                make_payload(gw, seq, readings))
                    sent += 1
        pub.close()
        eventually(lambda: count(influxdb.url, influx_db, "soil", "moisture") == 30, timeout=20)
        eventually(lambda: count(influxdb.url, influx_db, "livestock", "body_temperature") == 30)
        [series] = q(influxdb, influx_db,
                     "SELECT moisture, temperature, ec, ec_quality FROM soil WHERE "
                     "farm='farm-b' AND gateway='gw-farm-b-2' AND sensor='soil-1' "
                     f"AND time = {NOW - 60_000 + 4000}ms")
        assert series["values"] == [[NOW - 60_000 + 4000, 23.4, 20.0, 1200.0, "suspect"]]
        tags = q(influxdb, influx_db, 'SHOW TAG KEYS FROM "livestock"')[0]["values"]
        assert sorted(t[0] for t in tags) == ["animal", "county", "farm", "gateway", "sensor"]
        [cow] = q(influxdb, influx_db, "SELECT count(body_temperature) FROM livestock "
                                       "WHERE animal='cow-7'")
        assert cow["values"][0][1] == 30
        assert count(influxdb.url, influx_db, "ingest_errors", "count") == 0


def test_registry_adds_tags_and_rejects_unknown_gateways(
        mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str, county: str,
        tmp_path: Path) -> None:
    reg = tmp_path / "registry.yaml"
    reg.write_text(f"""
farms:
  - county: {county}
    farm: wang-12
    plots:
      field-3: {{crop: maize, field_capacity: 36}}
    gateways:
      gw-0007:
        sensors:
          soil-1: {{plot: field-3, crop: maize}}
""")
    with edge_process(mqtt_url=mosquitto.url, influx_url=influxdb.url, database=influx_db,
                      data_dir=tmp_path / "edge", county=county,
                      extra_env={"FARMEDGE_REGISTRY": str(reg)}):
        pub = Publisher(mosquitto.url)
        r = [{"sensor": "soil-1", "kind": "soil_moisture", "ts": NOW, "value": 14, "unit": "%"}]
        pub.publish(f"farm/v1/{county}/wang-12/gw-0007/telemetry", make_payload("gw-0007", 1, r))
        pub.publish(f"farm/v1/{county}/wang-12/gw-9999/telemetry", make_payload("gw-9999", 1, r))
        pub.close()
        eventually(lambda: count(influxdb.url, influx_db, "ingest_errors", "count") == 1)
        eventually(lambda: count(influxdb.url, influx_db, "soil", "moisture") == 1)
        [s] = q(influxdb, influx_db, "SELECT moisture, plot, crop FROM soil")
        assert s["values"][0][1:] == [14.0, "field-3", "maize"]
        [e] = q(influxdb, influx_db, "SELECT detail, reason, gateway FROM ingest_errors")
        assert e["values"][0][2:] == ["unknown_gateway", "gw-9999"]


def test_bad_input_is_dead_lettered_and_the_pipeline_goes_on(
        mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str, county: str,
        tmp_path: Path) -> None:
    good = {"sensor": "s1", "kind": "soil_moisture", "ts": NOW, "value": 20.0, "unit": "%"}
    bad_msgs = [
        ("gw-1", b"{not json"),
        ("gw-1", b"\x00\xff\xfe garbage"),
        ("gw-1", json.dumps({"v": 1, "gateway": "gw-1"}).encode()),
        ("gw-1", make_payload("gw-OTHER", 1, [good])),           # gateway mismatch
        ("gw-1", make_payload("gw-1", 2, [dict(good, kind="vibes")])),   # unknown kind
        ("gw-1", make_payload("gw-1", 3, [dict(good, unit="furlong")])),  # unknown unit
        ("gw-1", make_payload("gw-1", 4, [dict(good, value=180.0)])),     # out of range
        ("gw-1", make_payload("gw-1", 5, [dict(good, ts=NOW + 86_400_000)])),  # future
    ]
    with edge_process(mqtt_url=mosquitto.url, influx_url=influxdb.url, database=influx_db,
                      data_dir=tmp_path / "edge", county=county) as edge:
        pub = Publisher(mosquitto.url)
        for gw, payload in bad_msgs:
            pub.publish(f"farm/v1/{county}/f/{gw}/telemetry", payload)
        # one bad reading among good neighbours: only it is rejected
        mixed = [dict(good, sensor="a"), dict(good, sensor="b", value="wet"),
                 dict(good, sensor="c")]
        pub.publish(f"farm/v1/{county}/f/gw-1/telemetry", make_payload("gw-1", 6, mixed))
        pub.close()
        eventually(lambda: count(influxdb.url, influx_db, "ingest_errors", "count") == 9)
        eventually(lambda: count(influxdb.url, influx_db, "soil", "moisture") == 2)
        rows = q(influxdb, influx_db, "SELECT reason, detail, excerpt, topic FROM ingest_errors")
        reasons = sorted(v[1] for v in rows[0]["values"])
        assert reasons == sorted(["bad_json", "bad_json", "schema", "gateway_mismatch",
                                  "unknown_kind", "unknown_unit", "out_of_range",
                                  "ts_in_future", "schema"])
        for v in rows[0]["values"]:
            assert v[2], "every dead letter says why"
            assert len(v[3]) <= 200
            assert v[4] == f"farm/v1/{county}/f/gw-1/telemetry"
        h = edge.health()
        assert h["http_status"] == 200
        assert 'farmedge_rejected_total{reason="unknown_unit"} 1.0' in edge.metrics()


_chars = [*list(" ,=\"'\\ab7-_.黑龙江/"), "\u200b"]
# Mosquitto disconnects a client whose topic holds control characters, so
# newlines and tabs are tried in payload ids only.
hostile_level = st.text(alphabet=st.sampled_from(_chars), min_size=1, max_size=12)
hostile = st.text(alphabet=st.sampled_from([*_chars, "\n", "\t"]), min_size=1, max_size=12)


@pytest.mark.slow
def test_hostile_ids_and_payloads_never_crash_or_inject(
        mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str, county: str,
        tmp_path: Path) -> None:
    """Property-based: ids with spaces, commas, '=', quotes, backslashes, newlines or
    Chinese, and arbitrary payload bytes, are each stored exactly or rejected with a
    reason; the edge keeps running."""
    pub = Publisher(mosquitto.url)
    expected_ok: list[tuple[str, str, str]] = []
    expected_err = 0

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck),
              database=None)
    @given(farm=hostile_level, gateway=hostile_level, sensor=hostile,
           junk=st.binary(max_size=64))
    def publish_one(farm: str, gateway: str, sensor: str, junk: bytes) -> None:
        nonlocal expected_err
        if "/" in farm or "/" in gateway:
            return  # a different topic depth: not subscribed, never reaches the edge
        topic = f"farm/v1/{county}/{farm}/{gateway}/telemetry"
        r = {"sensor": sensor, "kind": "air_humidity", "ts": NOW, "value": 50.0, "unit": "%RH"}
        # The gateway id may be hostile: written by hand, as a hostile
        # firmware would, since the encoder refuses to build it.
        pub.publish(topic, raw_payload(gateway, 1, [r]))
        if is_valid_id(farm) and is_valid_id(gateway) and is_valid_id(sensor):
            expected_ok.append((farm, gateway, sensor))
        else:
            expected_err += 1
        pub.publish(topic, junk)
        expected_err += 1

    with edge_process(mqtt_url=mosquitto.url, influx_url=influxdb.url, database=influx_db,
                      data_dir=tmp_path / "edge", county=county) as edge:
        publish_one()
        pub.close()
        want_ok = len(set(expected_ok))
        eventually(lambda: count(influxdb.url, influx_db, "ingest_errors", "count")
                   == expected_err, timeout=30, what=f"{expected_err} dead letters")
        eventually(lambda: count(influxdb.url, influx_db, "weather", "humidity") == want_ok,
                   timeout=30, what=f"{want_ok} stored readings")
        stored = q(influxdb, influx_db, 'SHOW TAG VALUES FROM "weather" WITH KEY = "sensor"')
        stored_sensors = {v[1] for v in stored[0]["values"]} if stored else set()
        assert stored_sensors == {s for _, _, s in expected_ok}
        meas = {v[0] for v in q(influxdb, influx_db, "SHOW MEASUREMENTS")[0]["values"]}
        # (alerts: the engine records the edge's start, a center-side notice)
        assert meas <= {"weather", "ingest_errors", "edge", "gateway", "alerts"}
        assert edge.health()["http_status"] == 200


def test_status_messages_are_stored(mosquitto: MosquittoServer, influxdb: InfluxServer,
                                    influx_db: str, county: str, tmp_path: Path) -> None:
    with edge_process(mqtt_url=mosquitto.url, influx_url=influxdb.url, database=influx_db,
                      data_dir=tmp_path / "edge", county=county):
        pub = Publisher(mosquitto.url)
        st_on = encode_status(gateway="gw-1", online=True, uptime_s=12.5, version="0.1.0",
                              outbox_depth=3, outbox_oldest_age_s=4.0, dropped=0,
                              clock="synced", cpu_temperature=51.2, disk_free_mb=900.0)
        pub.publish(f"farm/v1/{county}/f/gw-1/status", st_on, retain=True)
        pub.publish(f"farm/v1/{county}/f/gw-1/status",
                    encode_status(gateway="gw-1", online=False), retain=True)
        pub.publish(f"farm/v1/{county}/f/gw-1/status", b"{}")
        pub.close()
        eventually(lambda: count(influxdb.url, influx_db, "gateway", "online") == 2)
        [s] = q(influxdb, influx_db, "SELECT online, outbox_depth, clock FROM gateway")
        assert [v[1:] for v in s["values"]] == [[True, 3, "synced"], [False, None, None]]
        eventually(lambda: count(influxdb.url, influx_db, "ingest_errors", "count") == 1)


def test_unsynced_clock_is_placed_on_the_edge_clock_and_flagged(
        mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str, county: str,
        tmp_path: Path) -> None:
    with edge_process(mqtt_url=mosquitto.url, influx_url=influxdb.url, database=influx_db,
                      data_dir=tmp_path / "edge", county=county):
        pub = Publisher(mosquitto.url)
        # A Pi that booted without NTP thinks it is 1970 + 1 hour.
        fake_now = 3_600_000
        r = [{"sensor": "s1", "kind": "soil_moisture", "ts": fake_now - 5000, "value": 21.0,
              "unit": "%"}]
        before = int(time.time() * 1000)
        pub.publish(f"farm/v1/{county}/f/gw-1/telemetry",
                    make_payload("gw-1", 1, r, sent=fake_now, clock="unsynced"))
        pub.close()
        eventually(lambda: count(influxdb.url, influx_db, "soil", "moisture") == 1)
        [s] = q(influxdb, influx_db, "SELECT moisture, moisture_time_estimated FROM soil")
        t, value, flag = s["values"][0]
        assert value == 21.0
        assert flag is True
        assert before - 5000 - 2000 <= t <= int(time.time() * 1000)


def test_config_errors_name_the_line_and_key(tmp_path: Path) -> None:
    import subprocess
    import sys

    cfg = tmp_path / "edge.toml"
    cfg.write_text('data_dir = "x"\n\n[mqtt]\nurl = "http://nope"\n\n[influx]\n'
                   "batch_size = 0\nflush_intervall_s = 2\n")
    r = subprocess.run([sys.executable, "-m", "farmedge", "edge", "check-config", "--config",
                        str(cfg)], capture_output=True, text=True, check=False,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path.cwd())})
    assert r.returncode == 2
    assert f"{cfg}:4: [mqtt] url: Value error, must start with mqtt:// or mqtts://" in r.stderr
    assert f"{cfg}:7: [influx] batch_size: Input should be greater than or equal to 1" \
        in r.stderr
    assert f"{cfg}:8: [influx] flush_intervall_s: unknown key" in r.stderr
    r = subprocess.run([sys.executable, "-m", "farmedge", "edge", "check-config"],
                       capture_output=True, text=True, check=False,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path.cwd()),
                            "FARMEDGE_INFLUX_API": "v2"})
    assert r.returncode == 2
    assert "[influx]" in r.stderr
    assert "needs org, bucket, token" in r.stderr
    reg = tmp_path / "registry.yaml"
    reg.write_text("farms:\n  - county: c1\n    farm: f 1\n")
    r = subprocess.run([sys.executable, "-m", "farmedge", "edge", "check-config"],
                       capture_output=True, text=True, check=False,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path.cwd()),
                            "FARMEDGE_REGISTRY": str(reg)})
    assert r.returncode == 2
    assert f"{reg}:3: farms[0].farm: Value error, id 'f 1' is not valid" in r.stderr


def test_the_example_config_is_valid() -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "farmedge", "edge", "check-config", "--config",
                        "config.example.toml"], capture_output=True, text=True, check=False,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path.cwd())})
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stdout


def test_secrets_never_reach_the_log(mosquitto: MosquittoServer, influxdb: InfluxServer,
                                     influx_db: str, county: str, tmp_path: Path) -> None:
    url = mosquitto.url.replace("mqtt://", "mqtt://edgeuser:s3cret-pw@")
    e = EdgeProcess(mqtt_url=url, influx_url=influxdb.url, database=influx_db,
                    data_dir=tmp_path / "edge", county=county,
                    extra_env={"FARMEDGE_INFLUX_PASSWORD": "influx-s3cret",
                               "FARMEDGE_INFLUX_USERNAME": "u"}).start()
    e.stop()
    log = e.log_path.read_text()
    assert "edge.starting" in log
    assert "s3cret" not in log


def test_sequence_gaps_and_duplicates_are_counted(
        mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str, county: str,
        tmp_path: Path) -> None:
    r = [{"sensor": "s1", "kind": "soil_moisture", "ts": NOW, "value": 20.0, "unit": "%"}]
    with edge_process(mqtt_url=mosquitto.url, influx_url=influxdb.url, database=influx_db,
                      data_dir=tmp_path / "edge", county=county) as edge:
        pub = Publisher(mosquitto.url)
        for seq in (1, 2, 5, 5, 6):
            pub.publish(f"farm/v1/{county}/f/gw-1/telemetry", make_payload("gw-1", seq, r))
        pub.close()
        eventually(lambda: count(influxdb.url, influx_db, "gateway", "seq_gap") == 1)
        [s] = q(influxdb, influx_db, "SELECT seq_gap FROM gateway")
        assert s["values"][0][1] == 2
        eventually(lambda: "farmedge_seq_duplicate_messages_total 1.0" in edge.metrics())
        assert "farmedge_seq_gap_messages_total 2.0" in edge.metrics()
