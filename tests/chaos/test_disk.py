"""A full disk is a resource like InfluxDB: the edge stops acknowledging
(the broker holds the messages), says so on /healthz and /metrics, replays
its spool even while the disk is full, never exits, and resumes by itself
when there is room again. The spool lives on a 2 MiB tmpfs mounted by the
test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from farmedge_dev.devservers import InfluxServer, MosquittoServer
from tests.disks import fill_disk, small_tmpfs
from tests.edgeproc import EdgeProcess, StreamPublisher
from tests.support import count, eventually

pytestmark = [pytest.mark.servers, pytest.mark.chaos, pytest.mark.slow]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path, "2m", "disk") as mnt:
        yield mnt


def _disk_full(edge: EdgeProcess) -> dict[str, object] | None:
    h = edge.health()
    if h.get("http_status") == 503 and h.get("disk_full"):
        return h
    return None


def test_a_full_disk_holds_messages_replays_and_resumes(
        mosquitto: MosquittoServer, influx_factory: Callable[[], InfluxServer], county: str,
        small_disk: Path, tmp_path: Path) -> None:
    influx = influx_factory()
    influx.create_database("d")
    kw = dict(mqtt_url=mosquitto.url, influx_url=influx.url, database="d",
              data_dir=small_disk / "edge", county=county,
              extra_env={"FARMEDGE_INFLUX_RETRY_FOR_S": "0.5",
                         "FARMEDGE_INFLUX_BACKOFF_MAX_S": "2"})  # alerts on (the default)

    def new_edge() -> EdgeProcess:
        e = EdgeProcess(**kw)  # type: ignore[arg-type]
        e.log_path = tmp_path / "edge.log"  # not on the small disk
        return e.start()

    edge = new_edge()
    influx.stop()
    first = StreamPublisher(mosquitto.url, county, messages=500, per_message=10,
                            rate=500).start()
    second = StreamPublisher(mosquitto.url, county, messages=1500, per_message=10, rate=500,
                             client_id=f"pub2-{county}")
    second.gateways = ["gw-10", "gw-11", "gw-12"]  # series of their own
    published = first.total_readings + second.total_readings
    try:
        first.wait_done(60)
        eventually(lambda: edge.health().get("spool_lines", 0) >= first.total_readings,
                   timeout=60, what="the first readings spooled")
        filler = fill_disk(small_disk)
        second.start()
        h = eventually(lambda: _disk_full(edge), timeout=60, what="/healthz says disk full")
        assert any("disk full" in r and "bytes free" in r for r in h["reasons"]), h  # type: ignore[union-attr]
        assert "farmedge_disk_full 1.0" in edge.metrics()
        second.wait_done(60)  # the broker has them all, and holds what the edge has not acked
        spooled = edge.health()["spool_lines"]

        # a restart on the full disk: it starts, and holds again (no crash loop)
        assert edge.stop() == 0
        edge = new_edge()
        eventually(lambda: _disk_full(edge), timeout=60, what="/healthz says disk full again")
        assert edge.health()["spool_lines"] == spooled

        # InfluxDB is back, the disk still full: the replay makes progress
        influx.start()
        eventually(lambda: edge.health().get("spool_lines") == 0, timeout=120, interval=0.5,
                   what="the spool replayed on a full disk")
        assert filler.exists()
        filler.unlink()
        eventually(lambda: count(influx.url, "d", "soil", "moisture") >= published,
                   timeout=120, interval=0.5, what=f"{published} readings stored")
        eventually(lambda: edge.health().get("http_status") == 200, timeout=60,
                   what="/healthz healthy again")
        stored = count(influx.url, "d", "soil", "moisture")
        dead = count(influx.url, "d", "ingest_errors", "count")
        assert stored + dead == published, (stored, dead)
        assert "farmedge_disk_full 0.0" in edge.metrics()
        log = edge.log_tail(1_000_000)
        assert "edge.fatal" not in log
        assert "spool.disk_full" in log
    finally:
        first.close()
        second.close()
        assert edge.stop() == 0, edge.log_tail()


def test_an_edge_started_on_a_full_disk_runs(
        mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str, county: str,
        small_disk: Path, tmp_path: Path) -> None:
    """Stopped cleanly (its SQLite files closed), then the disk fills, then
    the edge starts: it must run (InfluxDB needs no disk), not crash-loop."""
    kw = dict(mqtt_url=mosquitto.url, influx_url=influxdb.url, database=influx_db,
              data_dir=small_disk / "edge", county=county)
    edge = EdgeProcess(**kw)  # type: ignore[arg-type]
    edge.log_path = tmp_path / "edge.log"
    edge.start()
    assert edge.stop() == 0
    fill_disk(small_disk)
    edge = EdgeProcess(**kw)  # type: ignore[arg-type]
    edge.log_path = tmp_path / "edge2.log"
    edge.start()
    pub = StreamPublisher(mosquitto.url, county, messages=100, per_message=10, rate=200).start()
    try:
        pub.wait_done(60)
        eventually(lambda: count(influxdb.url, influx_db, "soil", "moisture") == 1000,
                   timeout=60, what="readings stored by an edge on a full disk")
        h = edge.health()
        # it could not save what it learnt (the new gateways' ids): it says so
        assert h["http_status"] == 503 and h["status"] == "degraded", h
        assert any("ingest state not saved" in r for r in h["reasons"]), h
        assert "edge.fatal" not in edge.log_tail(1_000_000)
    finally:
        pub.close()
        assert edge.stop() == 0, edge.log_tail()
