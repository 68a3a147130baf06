"""Alert records take the edge's own writer and spool: an alert raised and
delivered while InfluxDB is down is spooled with the readings, and both
reach InfluxDB when it is back. Real Mosquitto and InfluxDB (stopped and
started again), the engine on a simulated clock, Apprise to a local HTTP
server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import zstandard

from farmedge.alerts import (
    AlertEngine,
    AlertsSettings,
    AppriseNotifier,
    InfluxRecorder,
    MemoryRecorder,
    RecordSink,
    SinkRecorder,
    load_rules,
)
from farmedge.contract.topics import status_topic, telemetry_topic
from farmedge.edge.app import EdgeService, build_observers
from farmedge.edge.settings import EdgeSettings, InfluxSection
from farmedge.records import Stage as Observer
from farmedge_dev.devservers import InfluxServer, MosquittoServer
from tests.alerts_support import HttpReceiver, SimClock, local_ts, reading, status_payload, until
from tests.edgeproc import edge_settings
from tests.integration.test_alerts_edge import registry
from tests.support import Publisher, count, make_payload

pytestmark = pytest.mark.servers


def _spooled(spool: Path, prefix: str) -> int:
    """Lines starting with ``prefix`` in the spool's files."""
    n = 0
    for f in spool.glob("*.zst"):
        try:
            text = zstandard.ZstdDecompressor().decompress(f.read_bytes()).decode()
        except (OSError, zstandard.ZstdError):
            continue  # replayed and removed meanwhile
        n += sum(1 for x in text.split("\n") if x.startswith(prefix))
    return n


async def test_alert_records_written_while_influxdb_is_down_reach_it_when_it_is_back(
        mosquitto: MosquittoServer, influx_factory: Callable[[], InfluxServer], county: str,
        http: HttpReceiver, tmp_path: Path) -> None:
    influx = influx_factory()
    influx.create_database("d")
    reg = registry(county, http.url())
    clock = SimClock(local_ts(2026, 7, 1, 9))
    memory = MemoryRecorder()
    engines: list[AlertEngine] = []

    def stages(records: RecordSink) -> Sequence[Observer]:
        engines.append(AlertEngine(
            rules=load_rules(), registry=reg, notifier=AppriseNotifier(), clock=clock,
            state_path=tmp_path / "alerts.sqlite", recorders=[memory, SinkRecorder(records)],
            settings=AlertsSettings(tick_s=0.05)))
        return engines

    s = edge_settings(mosquitto.url, influx.url, "d", county, tmp_path)
    s = s.model_copy(update={"influx": InfluxSection(url=influx.url, database="d",
                                                      flush_interval_s=0.1, retry_for_s=1)})
    svc = EdgeService(s, registry=reg, observers=stages)
    [engine] = engines
    stop = asyncio.Event()
    task = asyncio.create_task(svc.run(stop))
    pub = Publisher(mosquitto.url)
    try:
        await until(lambda: svc.mqtt.subscribed, what="edge subscribed")
        pub.publish(status_topic(county, "wang-12", "gw-1"),
                    status_payload("gw-1", True, clock="synced"))
        await asyncio.to_thread(influx.stop)
        for seq in range(1, 9):
            payload = make_payload("gw-1", seq, [reading("soil-1", "soil_moisture", 25.0,
                                                         clock.ms)], sent=clock.ms)
            before = engine.stats["readings"]
            pub.publish(telemetry_topic(county, "wang-12", "gw-1"), payload)
            await until(lambda b=before: engine.stats["readings"] > b,  # type: ignore[misc]
                        timeout=30, what="reading through the edge (spooled)")
            clock.advance(600)
            engine.wake()
        await until(lambda: len(http.posts) == 1, what="message")
        await until(lambda: any(e.event == "delivered" for e in memory.events),
                    what="delivery recorded")
        alert_lines = len(memory.events)
        # Recorded while InfluxDB is down: into the spool, with the readings.
        await until(lambda: _spooled(s.data_dir / "spool", "alerts,") == alert_lines,
                    timeout=30, what="alert records spooled")
        assert svc.sink.influx_down
        await asyncio.to_thread(influx.start)
        await until(lambda: count(influx.url, "d", "alerts", "count",
                                  "\"event\" = 'delivered'") == 1, timeout=60,
                    what="the delivery's record in InfluxDB")
        await until(lambda: count(influx.url, "d", "alerts", "count") == alert_lines,
                    timeout=30, what="every alert record")
        await until(lambda: svc.spool.lines == 0, what="spool replayed")
        assert count(influx.url, "d", "soil", "moisture") == 8
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        pub.close()


def test_the_edge_built_engine_records_through_the_edge_s_sink(tmp_path: Path,
                                                               county: str) -> None:
    s = EdgeSettings(data_dir=tmp_path, alerts=AlertsSettings(rules=[]))
    svc = EdgeService(s, registry=registry(county, "json://127.0.0.1:9/x"))
    [engine] = svc.observers
    assert isinstance(engine, AlertEngine)
    kinds = [type(r) for r in engine.recorders]
    assert SinkRecorder in kinds and InfluxRecorder not in kinds
    # Without the edge's sink (an engine built on its own), its own client.
    [alone] = build_observers(s, registry(county, "json://127.0.0.1:9/x"))
    assert isinstance(alone, AlertEngine)
    assert [type(r) for r in alone.recorders if type(r) in (SinkRecorder, InfluxRecorder)] \
        == [InfluxRecorder]
