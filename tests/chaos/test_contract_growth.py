"""How the contract grows (docs/protocol.md), end to end: one real edge (a
process) against the real Mosquitto and InfluxDB serves an old-style gateway
(exactly the documented fields, eleven compact elements) and a new-style one
(unknown keys in the envelope, the readings and the status, compact
extension elements, with and without the MQTT 5 content type). Both are
stored in full, nothing is a dead letter, and nothing of the unknown fields
reaches the database."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from farmedge.contract import COMPACT, encode_compact
from farmedge.contract.compact import MAGIC
from farmedge_dev.devservers import InfluxServer, MosquittoServer, influx_query
from tests.edgeproc import EdgeProcess
from tests.support import Publisher, count, eventually

pytestmark = [pytest.mark.servers, pytest.mark.chaos]

N = 5   # readings per message


def _readings(sensor: str, t0: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"sensor": sensor, "kind": "soil_moisture", "ts": t0 + i * 1000,
             "value": 20.0 + i / 10, "unit": "%", **extra} for i in range(N)]


def _json(gateway: str, seq: int, readings: list[dict[str, Any]], **extra: Any) -> bytes:
    return json.dumps({"v": 1, "gateway": gateway, "seq": seq, "sent": int(time.time() * 1000),
                       "clock": "synced", "readings": readings, **extra}).encode()


def _compact(gateway: str, seq: int, readings: list[dict[str, Any]],
             *extension: Any) -> bytes:
    plain = encode_compact(gateway=gateway, seq=seq, sent=int(time.time() * 1000),
                           clock="synced", readings=readings, compression="none")
    if not extension:
        return plain
    body = msgpack.unpackb(plain[2:])
    out: bytes = bytes([MAGIC, 0]) + msgpack.packb([*body, *extension], use_bin_type=True)
    return out


def _field_keys(url: str, db: str, measurement: str) -> set[str]:
    series = influx_query(url, f'SHOW FIELD KEYS FROM "{measurement}"', db)
    return {str(v[0]) for s in series for v in s["values"]}  # type: ignore[union-attr]


def test_an_old_and_a_new_gateway_against_one_edge(
        mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str, county: str,
        tmp_path: Path) -> None:
    edge = EdgeProcess(mqtt_url=mosquitto.url, influx_url=influxdb.url, database=influx_db,
                       data_dir=tmp_path / "edge", county=county).start()
    pub = Publisher(mosquitto.url)
    try:
        now = int(time.time() * 1000) - 600_000
        base = f"farm/v1/{county}/farm-1"
        old_status = {"v": 1, "gateway": "gw-old", "online": True, "ts": now, "uptime_s": 5,
                      "version": "0.1.0", "outbox_depth": 0, "dropped": 0, "clock": "synced"}
        new_status = {**old_status, "gateway": "gw-new", "version": "9.0.0",
                      "reason": "running", "battery_pct": 87, "radio": {"rssi": -71},
                      "hold": {"readings": 0, "since": None}}
        pub.publish(f"{base}/gw-old/status", json.dumps(old_status).encode(), retain=True)
        pub.publish(f"{base}/gw-new/status", json.dumps(new_status).encode(), retain=True)
        # Old style: exactly the documented fields.
        pub.publish(f"{base}/gw-old/telemetry", _json("gw-old", 1, _readings("json", now)))
        pub.publish(f"{base}/gw-old/telemetry", _compact("gw-old", 2, _readings("cmp", now)))
        # New style: unknown keys at both levels; compact extension elements.
        pub.publish(f"{base}/gw-new/telemetry", _json(
            "gw-new", 1, _readings("json", now, depth_cm=10, calib={"raw": 1234}),
            battery_pct=87, site={"lat": 46.6, "lon": 126.9}, boot_id="b-7"))
        pub.publish(f"{base}/gw-new/telemetry",
                    _compact("gw-new", 2, _readings("cmp", now), [1] * N, "fw-9", None))
        # ... and as an MQTT 5 publisher says it, with the content type.
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = COMPACT
        pub.client.publish(f"{base}/gw-new/telemetry",
                           _compact("gw-new", 3, _readings("cmp5", now), 7, [0.5] * N),
                           qos=1, properties=props).wait_for_publish(30)

        for gw, sensors in (("gw-old", ("json", "cmp")), ("gw-new", ("json", "cmp", "cmp5"))):
            for s in sensors:
                where = f"\"gateway\" = '{gw}' AND \"sensor\" = '{s}'"
                eventually(lambda w=where: count(influxdb.url, influx_db, "soil", "moisture",
                                                 w) == N,
                           timeout=60, what=f"{N} readings of {gw}/{s} in InfluxDB")
            eventually(lambda g=gw: count(influxdb.url, influx_db, "gateway", "uptime_s",
                                          f"\"gateway\" = '{g}'") == 1,
                       timeout=60, what=f"the status of {gw} in InfluxDB")
        rows = influx_query(influxdb.url,
                            "SELECT moisture FROM soil WHERE \"gateway\" = 'gw-new' "
                            "AND \"sensor\" = 'cmp'", influx_db)
        assert [v[1] for v in rows[0]["values"]] == [  # type: ignore[index]
            20.0, 20.1, 20.2, 20.3, 20.4]
        versions = influx_query(influxdb.url, 'SELECT last("version") FROM "gateway" '
                                'GROUP BY "gateway"', influx_db)
        assert {s["tags"]["gateway"]: s["values"][0][1]  # type: ignore[index]
                for s in versions} == {"gw-old": "0.1.0", "gw-new": "9.0.0"}
        # Nothing was refused, and no unknown field reached the database.
        assert count(influxdb.url, influx_db, "ingest_errors", "count") == 0
        unknown = {"depth_cm", "calib", "battery_pct", "site", "boot_id", "reason", "radio",
                   "hold"}
        assert not _field_keys(influxdb.url, influx_db, "soil") & unknown
        assert not _field_keys(influxdb.url, influx_db, "gateway") & unknown
    finally:
        pub.close()
        edge.stop()
