"""The alert engine inside the real edge, end to end: telemetry published on
the real broker → edge (validate, write to the real InfluxDB, acknowledge) →
alert engine → Apprise → a local HTTP server; and the gateway's last will →
offline message. The engine runs on a simulated clock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from farmedge.alerts import (
    AlertEngine,
    AlertsSettings,
    AppriseNotifier,
    InfluxRecorder,
    MemoryRecorder,
    MqttRecorder,
    load_rules,
)
from farmedge.contract.topics import status_topic, telemetry_topic
from farmedge.edge.app import EdgeService, build_observers
from farmedge.edge.settings import EdgeSettings
from farmedge.registry import Contact, Farm, GatewayEntry, Plot, Registry, SensorMeta
from farmedge.storage.settings import InfluxSection
from farmedge_dev.devservers import InfluxServer, MosquittoServer
from tests.alerts_support import HttpReceiver, SimClock, local_ts, reading, status_payload, until
from tests.edgeproc import edge_settings
from tests.support import Publisher, count, make_payload

pytestmark = pytest.mark.servers


def registry(county: str, url: str) -> Registry:
    return Registry(farms=[Farm(
        county=county, farm="wang-12", name="王家农场",
        plots={"field-3": Plot(name="3号地", crop="maize", field_capacity=36,
                               wilting_point=19)},
        gateways={"gw-1": GatewayEntry(interval_s=600, sensors={
            "soil-1": SensorMeta(plot="field-3", crop="maize", interval_s=600)})},
        contacts=[Contact(name="王建国", language="zh", notify=[url])])])



async def test_reading_through_the_edge_reaches_the_farmer(
        mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str, county: str,
        http: HttpReceiver, tmp_path: Path) -> None:
    reg = registry(county, http.url())
    clock = SimClock(local_ts(2026, 7, 1, 9))
    memory = MemoryRecorder()
    engine = AlertEngine(
        rules=load_rules(), registry=reg, notifier=AppriseNotifier(), clock=clock,
        state_path=tmp_path / "alerts.sqlite",
        recorders=[memory, InfluxRecorder(InfluxSection(url=influxdb.url, database=influx_db),
                                          flush_s=0.2),
                   MqttRecorder(url=mosquitto.url)],
        settings=AlertsSettings(tick_s=0.05))
    s = edge_settings(mosquitto.url, influxdb.url, influx_db, county, tmp_path)
    svc = EdgeService(s, registry=reg, observers=[engine])
    stop = asyncio.Event()
    task = asyncio.create_task(svc.run(stop))
    pub = Publisher(mosquitto.url)
    try:
        await until(lambda: svc.mqtt.subscribed, what="edge subscribed")
        # The edge told the engine it started, then that its broker is up.
        await until(lambda: engine.health.connected and engine.stats["center_events"] >= 2,
                    what="the engine knows the edge is receiving")
        pub.publish(status_topic(county, "wang-12", "gw-1"),
                    status_payload("gw-1", True, clock="synced"), retain=True)
        # maize-blacksoil through the plot's crop: FC 36, WP 19, light drought
        # below 21.6 % held for 1 h (irrigate fires first, at 26 %).
        for seq, v in enumerate([25.0] * 7 + [25.0], start=1):
            payload = make_payload("gw-1", seq, [reading("soil-1", "soil_moisture", v,
                                                         clock.ms)], sent=clock.ms)
            before = engine.stats["readings"]
            pub.publish(telemetry_topic(county, "wang-12", "gw-1"), payload)
            await until(lambda b=before: engine.stats["readings"] > b,  # type: ignore[misc]
                        what="reading through the edge")
            clock.advance(600)
            engine.wake()
        await until(lambda: len(http.posts) == 1, what="message")
        assert http.messages() == ["3号地即将缺水：含水量25%（适宜22–31%），请安排灌溉。"]
        # The reading is in InfluxDB (the edge wrote it before the engine saw it),
        # and so are the alert and its delivery.
        assert count(influxdb.url, influx_db, "soil", "moisture") == 8
        await until(lambda: count(influxdb.url, influx_db, "alerts", "count",
                                  "\"event\" = 'delivered'") == 1, what="alerts rows")
        # The gateway's last will: offline.
        pub.publish(status_topic(county, "wang-12", "gw-1"), status_payload("gw-1", False),
                    retain=True)
        await until(lambda: engine.stats["status"] == 2, what="last will")
        clock.advance(300)             # a last will waits 5 min before it is believed
        engine.wake()
        await until(lambda: len(http.posts) == 2, what="offline message")
        assert http.messages()[1] == "gw-1网关离线：已15分钟没有数据，请检查供电和网络。"
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        pub.close()
    assert engine._task is None        # the edge closed the engine on shutdown


def test_edge_builds_the_engine_from_its_config(tmp_path: Path, county: str) -> None:
    s = EdgeSettings(data_dir=tmp_path, alerts=AlertsSettings(rules=[]))
    obs = build_observers(s, registry(county, "json://127.0.0.1:9/x"))
    assert [type(o).__name__ for o in obs] == ["AlertEngine"]
    assert build_observers(EdgeSettings(data_dir=tmp_path,
                                        alerts=AlertsSettings(enabled=False)), None) == []
