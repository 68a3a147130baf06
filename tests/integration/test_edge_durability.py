"""Nothing acknowledged is ever lost: InfluxDB down for 30 s, the edge killed
with SIGKILL, the broker restarted, the edge stopped with SIGTERM. After each,
the count of readings in InfluxDB equals the count published, no more."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from farmedge_dev.devservers import InfluxServer, MosquittoServer
from tests.edgeproc import EdgeProcess, StreamPublisher
from tests.support import count, eventually

pytestmark = [pytest.mark.servers, pytest.mark.slow]


def _all_arrive(influx: InfluxServer, db: str, pub: StreamPublisher, timeout: float = 120) -> None:
    pub.wait_done(timeout)
    eventually(lambda: count(influx.url, db, "soil", "moisture") >= pub.total_readings,
               timeout=timeout, interval=0.5,
               what=f"{pub.total_readings} readings in InfluxDB")
    assert count(influx.url, db, "soil", "moisture") == pub.total_readings


def test_influxdb_down_for_30_seconds(mosquitto: MosquittoServer,
                                      influx_factory: Callable[[], InfluxServer],
                                      county: str, tmp_path: Path) -> None:
    influx = influx_factory()
    influx.create_database("d")
    edge = EdgeProcess(mqtt_url=mosquitto.url, influx_url=influx.url, database="d",
                       data_dir=tmp_path / "edge", county=county,
                       extra_env={"FARMEDGE_INFLUX_RETRY_FOR_S": "2"}).start()
    pub = StreamPublisher(mosquitto.url, county, messages=4000, per_message=10, rate=100).start()
    try:
        eventually(lambda: pub.published >= 400, timeout=30)
        influx.stop()
        stopped_at = pub.published
        h = eventually(lambda: (lambda x: x if x.get("http_status") == 503 else None)(
            edge.health()), timeout=30, what="/healthz reports InfluxDB down")
        assert any("InfluxDB" in r for r in h["reasons"])
        eventually(lambda: edge.health().get("spool_lines", 0) > 0, timeout=30)
        # hold the outage for 30 s of publishing (100 messages/s)
        eventually(lambda: pub.published >= stopped_at + 3000, timeout=60, interval=0.2)
        influx.start()
        _all_arrive(influx, "d", pub)
        eventually(lambda: edge.health().get("spool_lines") == 0, timeout=60)
        assert edge.health()["http_status"] == 200
        assert "spool.replay_start" in edge.log_tail(200_000)
    finally:
        pub.close()
        assert edge.stop() == 0


def test_edge_killed_with_sigkill_and_restarted(mosquitto: MosquittoServer,
                                                influxdb: InfluxServer, influx_db: str,
                                                county: str, tmp_path: Path) -> None:
    kw = dict(mqtt_url=mosquitto.url, influx_url=influxdb.url, database=influx_db,
              data_dir=tmp_path / "edge", county=county)
    edge = EdgeProcess(**kw).start()  # type: ignore[arg-type]
    pub = StreamPublisher(mosquitto.url, county, messages=3000, per_message=10, rate=150).start()
    try:
        for threshold in (600, 1500):
            eventually(lambda t=threshold: pub.published >= t, timeout=30)  # type: ignore[misc]
            edge.kill()
            edge = EdgeProcess(**kw).start()  # type: ignore[arg-type]
        _all_arrive(influxdb, influx_db, pub)
    finally:
        pub.close()
        edge.stop()


def test_broker_restarted(mosquitto_factory: Callable[[], MosquittoServer],
                          influxdb: InfluxServer, influx_db: str, county: str,
                          tmp_path: Path) -> None:
    broker = mosquitto_factory()
    edge = EdgeProcess(mqtt_url=broker.url, influx_url=influxdb.url, database=influx_db,
                       data_dir=tmp_path / "edge", county=county).start()
    pub = StreamPublisher(broker.url, county, messages=3000, per_message=10, rate=150).start()
    try:
        eventually(lambda: pub.published >= 1000, timeout=30)
        broker.stop()
        h = eventually(lambda: (lambda x: x if x.get("http_status") == 503 else None)(
            edge.health()), timeout=20, what="/healthz reports the broker down")
        assert any("MQTT broker unreachable" in r for r in h["reasons"])
        broker.start()
        eventually(lambda: edge.health().get("mqtt_subscribed"), timeout=30)
        _all_arrive(influxdb, influx_db, pub)
    finally:
        pub.close()
        edge.stop()


def test_sigterm_flushes_and_exits_zero(mosquitto: MosquittoServer, influxdb: InfluxServer,
                                        influx_db: str, county: str, tmp_path: Path) -> None:
    kw = dict(mqtt_url=mosquitto.url, influx_url=influxdb.url, database=influx_db,
              data_dir=tmp_path / "edge", county=county,
              extra_env={"FARMEDGE_INFLUX_FLUSH_INTERVAL_S": "5"})
    edge = EdgeProcess(**kw).start()  # type: ignore[arg-type]
    pub = StreamPublisher(mosquitto.url, county, messages=1500, per_message=10, rate=300).start()
    try:
        eventually(lambda: pub.published >= 500, timeout=30)
        before = count(influxdb.url, influx_db, "soil", "moisture")
        assert edge.stop(signal.SIGTERM) == 0
        after = count(influxdb.url, influx_db, "soil", "moisture")
        assert after > before, "what the edge held was written before it exited"
        edge = EdgeProcess(**kw).start()  # type: ignore[arg-type]
        _all_arrive(influxdb, influx_db, pub)
    finally:
        pub.close()
        edge.stop()


def test_spool_is_replayed_after_an_edge_restart(mosquitto: MosquittoServer,
                                                 influx_factory: Callable[[], InfluxServer],
                                                 county: str, tmp_path: Path) -> None:
    """InfluxDB down, the edge spools, the edge is stopped; InfluxDB comes back and
    a new edge process replays what the old one spooled."""
    influx = influx_factory()
    influx.create_database("d")
    kw = dict(mqtt_url=mosquitto.url, influx_url=influx.url, database="d",
              data_dir=tmp_path / "edge", county=county,
              extra_env={"FARMEDGE_INFLUX_RETRY_FOR_S": "0.5"})
    edge = EdgeProcess(**kw).start()  # type: ignore[arg-type]
    influx.stop()
    pub = StreamPublisher(mosquitto.url, county, messages=300, per_message=10, rate=300).start()
    try:
        pub.wait_done(60)
        eventually(lambda: edge.health().get("spool_lines", 0) >= 3000, timeout=60,
                   what="everything spooled")
        assert edge.stop() == 0
        influx.start()
        edge = EdgeProcess(**kw).start()  # type: ignore[arg-type]
        _all_arrive(influx, "d", pub)
        assert "spool.found" in edge.log_tail(100_000)
    finally:
        pub.close()
        edge.stop()


def test_sigterm_while_the_broker_is_unreachable_exits_promptly(
        influxdb: InfluxServer, influx_db: str, county: str, tmp_path: Path) -> None:
    """A stop must not wait out the reconnect back-off."""
    from farmedge_dev.devservers import free_port

    edge = EdgeProcess(mqtt_url=f"mqtt://127.0.0.1:{free_port()}", influx_url=influxdb.url,
                       database=influx_db, data_dir=tmp_path / "edge", county=county,
                       extra_env={"FARMEDGE_MQTT_RECONNECT_MIN_S": "30",
                                  "FARMEDGE_MQTT_RECONNECT_MAX_S": "60"})
    edge.start(wait_subscribed=False)
    h = eventually(lambda: (lambda x: x if x.get("http_status") == 503 else None)(
        edge.health()), timeout=30, what="/healthz says the broker is unreachable")
    assert any("MQTT" in r for r in h["reasons"])
    eventually(lambda: "mqtt.reconnect_in" in edge.log_tail(), timeout=20)
    assert edge.stop(timeout=10) == 0
