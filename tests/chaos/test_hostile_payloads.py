"""Hostile payloads against the edge as a process, through the real
Mosquitto, into the real InfluxDB: a zstd decompression bomb (32 KiB that
claim 1 GiB) and a status whose number InfluxDB cannot store
(``cpu_temperature: 1e999``). The edge stays up and small, both become dead
letters with their reason, the telemetry queued behind them is stored, and
the bomb is acknowledged: a restarted edge does not get it again."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from farmedge_dev.devservers import InfluxServer, MosquittoServer, influx_query, process_stats
from tests.edgeproc import EdgeProcess
from tests.hostile import zstd_bomb
from tests.support import Publisher, count, eventually, make_payload

pytestmark = [pytest.mark.servers, pytest.mark.chaos]

GiB = 1024**3


def _dead_letters(influxdb: InfluxServer, db: str) -> list[tuple[str, str, str]]:
    series = influx_query(influxdb.url, "SELECT reason, gateway, detail FROM ingest_errors", db)
    return [(str(r), str(g), str(d)) for _, r, g, d in series[0]["values"]] if series else []


def test_a_zstd_bomb_and_an_unstorable_status_are_dead_letters_and_the_rest_goes_on(
        mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str, county: str,
        tmp_path: Path) -> None:
    kw = {"mqtt_url": mosquitto.url, "influx_url": influxdb.url, "database": influx_db,
          "data_dir": tmp_path / "edge", "county": county}
    # A first run makes the edge's persistent session; while it is down the
    # broker queues the bomb, the status and the telemetry behind them.
    edge = EdgeProcess(**kw).start()  # type: ignore[arg-type]
    assert edge.stop() == 0
    bomb = zstd_bomb(GiB)
    assert len(bomb) < 40 * 1024
    now = int(time.time() * 1000)
    pub = Publisher(mosquitto.url)
    try:
        pub.publish(f"farm/v1/{county}/farm-1/gw-bomb/telemetry", bomb)
        pub.publish(f"farm/v1/{county}/farm-1/gw-2/status",
                    b'{"v":1,"gateway":"gw-2","online":true,"cpu_temperature":1e999}',
                    retain=True)
        for seq in range(20):
            pub.publish(f"farm/v1/{county}/farm-1/gw-1/telemetry", make_payload(
                "gw-1", seq, [{"sensor": f"s{i}", "kind": "soil_moisture", "ts": now - seq,
                               "value": 20.5, "unit": "%"} for i in range(5)]))
        edge = EdgeProcess(**kw).start()  # type: ignore[arg-type]
        try:
            eventually(lambda: count(influxdb.url, influx_db, "soil", "moisture") == 100,
                       timeout=60, what="the 100 readings behind the bomb stored")
            letters = eventually(lambda: (lambda d: d if len(d) >= 2 else None)(
                _dead_letters(influxdb, influx_db)), timeout=30, what="two dead letters")
            reasons = {(r, g) for r, g, _ in letters}
            assert reasons == {("too_large", "gw-bomb"), ("bad_status", "gw-2")}, letters
            detail = {r: d for r, _, d in letters}
            assert "zstd frame holds 1073741824 bytes" in detail["too_large"]
            assert "cpu_temperature" in detail["bad_status"]
            assert edge.health().get("http_status") == 200
            assert edge.proc is not None
            # The bomb cost the edge next to nothing (it took it past 1 GB).
            assert process_stats(edge.proc.pid).peak_rss_kb < 250 * 1024
            assert count(influxdb.url, influx_db, "gateway", "online") == 0
        finally:
            assert edge.stop() == 0
        # Restarted: the bomb was acknowledged, so it is not delivered again.
        edge = EdgeProcess(**kw).start()  # type: ignore[arg-type]
        try:
            pub.publish(f"farm/v1/{county}/farm-1/gw-1/telemetry", make_payload(
                "gw-1", 20, [{"sensor": "after", "kind": "soil_moisture", "ts": now,
                              "value": 21.5, "unit": "%"}]))
            eventually(lambda: count(influxdb.url, influx_db, "soil", "moisture") == 101,
                       timeout=60, what="a reading published after the restart stored")
            too_large = [x for x in _dead_letters(influxdb, influx_db) if x[0] == "too_large"]
            assert len(too_large) == 1, too_large
            assert edge.health().get("http_status") == 200
        finally:
            assert edge.stop() == 0
    finally:
        pub.publish(f"farm/v1/{county}/farm-1/gw-2/status", b"", retain=True)
        pub.close()


def test_a_status_with_a_count_past_int64_is_a_dead_letter(
        mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str, county: str,
        tmp_path: Path) -> None:
    """InfluxDB refuses an integer past int64; the contract refuses it first,
    so the status is a ``bad_status`` dead letter and a good status after it
    is stored."""
    edge = EdgeProcess(mqtt_url=mosquitto.url, influx_url=influxdb.url, database=influx_db,
                       data_dir=tmp_path / "edge", county=county).start()
    pub = Publisher(mosquitto.url)
    try:
        topic = f"farm/v1/{county}/farm-1/gw-3/status"
        pub.publish(topic, json.dumps({"v": 1, "gateway": "gw-3", "online": True,
                                       "dropped": 2**64}).encode(), retain=True)
        pub.publish(topic, json.dumps({"v": 1, "gateway": "gw-3", "online": True,
                                       "dropped": 2**63 - 1}).encode(), retain=True)
        eventually(lambda: count(influxdb.url, influx_db, "gateway", "dropped") == 1,
                   timeout=30, what="the good status stored")
        rows = influx_query(influxdb.url, "SELECT dropped FROM gateway", influx_db)
        assert rows[0]["values"][0][1] == 2**63 - 1
        letters = eventually(lambda: _dead_letters(influxdb, influx_db), timeout=30,
                             what="the dead letter")
        assert [(r, g) for r, g, _ in letters] == [("bad_status", "gw-3")]
        assert "influx_rejected" not in edge.metrics()
    finally:
        pub.publish(f"farm/v1/{county}/farm-1/gw-3/status", b"", retain=True)
        pub.close()
        assert edge.stop() == 0


def test_a_status_with_fields_of_the_wrong_type_is_a_dead_letter(
        mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str, county: str,
        tmp_path: Path) -> None:
    """``"online": "yes"`` or ``"dropped": true`` is not guessed into a
    boolean or a count: each is a ``bad_status`` dead letter, nothing of it is
    stored, and the good status after them is."""
    edge = EdgeProcess(mqtt_url=mosquitto.url, influx_url=influxdb.url, database=influx_db,
                       data_dir=tmp_path / "edge", county=county).start()
    pub = Publisher(mosquitto.url)
    try:
        topic = f"farm/v1/{county}/farm-1/gw-4/status"
        pub.publish(topic, b'{"v":1,"gateway":"gw-4","online":"yes"}')
        pub.publish(topic, b'{"v":1,"gateway":"gw-4","online":true,"dropped":true}')
        pub.publish(topic, b'{"v":1,"gateway":"gw-4","online":true,"dropped":3}')
        eventually(lambda: count(influxdb.url, influx_db, "gateway", "online") == 1,
                   timeout=30, what="the good status stored")
        rows = influx_query(influxdb.url, "SELECT dropped FROM gateway", influx_db)
        assert [r[1] for r in rows[0]["values"]] == [3]
        letters = eventually(lambda: len(_dead_letters(influxdb, influx_db)) == 2
                             and _dead_letters(influxdb, influx_db), timeout=30,
                             what="two dead letters")
        assert [(r, g) for r, g, _ in letters] == [("bad_status", "gw-4")] * 2
    finally:
        pub.close()
        assert edge.stop() == 0
