"""Farm-side versus center-side where restarts matter: the real edge (in
process), the real Mosquitto broker and InfluxDB, a gateway that behaves as
the agent does on its link (a last will, ``online: true`` on every
connect, telemetry every 2 s), Apprise posting to a local HTTP server; each
scenario ends with its exact list of messages (who, text). The engine runs
on the real clock, with durations scaled through ``[alerts]``: the
gateway's 2 s interval (registry) makes 3 intervals of silence 6 s, and the
last will's grace is 10 s. The scenarios on a simulated clock are in
tests/unit/alerts/test_scenarios.py.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from farmedge.alerts import AlertEngine, AlertsSettings, AppriseNotifier, load_rules
from farmedge.contract.topics import status_topic, telemetry_topic
from farmedge.edge.app import EdgeService
from farmedge.registry import Contact, Farm, GatewayEntry, Plot, Registry, SensorMeta
from farmedge_dev.devservers import InfluxServer, MosquittoServer
from tests.alerts_support import HttpReceiver, reading, settle, status_payload, until
from tests.edgeproc import edge_settings
from tests.support import make_payload

pytestmark = pytest.mark.servers

INTERVAL = 2.0


def registry(county: str, http: HttpReceiver) -> Registry:
    return Registry(
        farms=[Farm(county=county, farm="wang-12", name="王家农场",
                    plots={"field-3": Plot(name="3号地", crop="maize", field_capacity=36,
                                           wilting_point=19)},
                    gateways={"gw-1": GatewayEntry(interval_s=INTERVAL, sensors={
                        "soil-1": SensorMeta(plot="field-3", crop="maize",
                                             interval_s=INTERVAL)})},
                    contacts=[Contact(name="王建国", notify=[http.url("farmer")])])],
        center_contacts=[Contact(name="县中心", notify=[http.url("operator")])])


class Gateway:
    """The gateway's link as the agent has it: a retained last will, a
    retained ``online: true`` on every (re)connect, telemetry every 2 s."""

    def __init__(self, port: int, county: str) -> None:
        self.county = county
        self.seq = 0
        self.stop = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gw-1", protocol=mqtt.MQTTv5)
        c.will_set(status_topic(county, "wang-12", "gw-1"),
                   status_payload("gw-1", False), qos=1, retain=True)
        c.reconnect_delay_set(min_delay=1, max_delay=2)
        c.on_connect = lambda cl, *a: cl.publish(
            status_topic(county, "wang-12", "gw-1"),
            status_payload("gw-1", True, clock="synced"), qos=1, retain=True)
        c.connect("127.0.0.1", port, keepalive=5)
        c.loop_start()
        self.client = c
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import time

        while not self.stop.is_set():
            self.seq += 1
            now = int(time.time() * 1000)
            self.client.publish(telemetry_topic(self.county, "wang-12", "gw-1"),
                                make_payload("gw-1", self.seq,
                                             [reading("soil-1", "soil_moisture", 28.0, now)]),
                                qos=1)
            self.stop.wait(INTERVAL)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.client.disconnect()
        self.client.loop_stop()


def settings() -> AlertsSettings:
    return AlertsSettings(tick_s=0.2, offline_will_grace_s=10, reconnect_grace_s=6,
                          mass_offline_window_s=5)


async def run_edge(broker_url: str, influx: InfluxServer, db: str, county: str,
                   data_dir: Path, reg: Registry) -> tuple[EdgeService, AlertEngine,
                                                           asyncio.Event, asyncio.Task[None]]:
    engine = AlertEngine(rules=load_rules(), registry=reg, notifier=AppriseNotifier(),
                         state_path=data_dir / "alerts.sqlite", settings=settings())
    s = edge_settings(broker_url, influx.url, db, county, data_dir)
    svc = EdgeService(s, registry=reg, observers=[engine])
    stop = asyncio.Event()
    task = asyncio.create_task(svc.run(stop))
    await until(lambda: svc.mqtt.subscribed and engine.health.connected
                and engine.stats["center_events"] >= 2, timeout=30, what="edge receiving")
    return svc, engine, stop, task


def texts(http: HttpReceiver, path: str) -> list[str]:
    return http.messages(path)


EDGE_STARTED = "边缘服务已重启：网关6s内补报数据前不发静默告警。"


async def test_broker_restart(mosquitto_factory: Callable[[], MosquittoServer],
                              influxdb: InfluxServer, influx_db: str, county: str,
                              http: HttpReceiver, tmp_path: Path) -> None:
    broker = mosquitto_factory()
    reg = registry(county, http)
    _svc, engine, stop, task = await run_edge(broker.url, influxdb, influx_db, county,
                                             tmp_path / "edge", reg)
    gw = Gateway(broker.port, county)
    try:
        await until(lambda: engine.stats["readings"] >= 3, timeout=30, what="readings")
        broker.stop()                   # the center's broker restarts
        await until(lambda: not engine.health.connected, timeout=20, what="edge sees it")
        await asyncio.sleep(INTERVAL * 4)   # the outage itself: longer than 3 intervals
        broker.start()
        await until(lambda: engine.health.connected, timeout=30, what="edge back")
        before = engine.stats["readings"]
        await until(lambda: engine.stats["readings"] >= before + 5, timeout=60,
                    what="the gateway reporting again")
        await until(lambda: len(texts(http, "operator")) == 2, timeout=30,
                    what="the broker notice")
        await settle(engine)
        assert texts(http, "farmer") == []
        ops = texts(http, "operator")
        assert ops[0] == EDGE_STARTED
        assert re.fullmatch(r"中心MQTT服务器中断\d+s后已恢复，未向农户发离线告警。", ops[1]), ops
    finally:
        gw.close()
        stop.set()
        await asyncio.wait_for(task, 60)


async def test_edge_restart(mosquitto: MosquittoServer, influxdb: InfluxServer,
                            influx_db: str, county: str, http: HttpReceiver,
                            tmp_path: Path) -> None:
    reg = registry(county, http)
    gw = Gateway(mosquitto.port, county)
    try:
        _svc, engine, stop, task = await run_edge(mosquitto.url, influxdb, influx_db, county,
                                                 tmp_path / "edge", reg)
        await until(lambda: engine.stats["readings"] >= 3, timeout=30, what="readings")
        stop.set()                       # SIGTERM, as systemd stops it
        await asyncio.wait_for(task, 60)
        await asyncio.sleep(INTERVAL * 4)    # down longer than 3 intervals
        _svc, engine, stop, task = await run_edge(mosquitto.url, influxdb, influx_db, county,
                                                 tmp_path / "edge", reg)
        before = engine.stats["readings"]
        await until(lambda: engine.stats["readings"] >= before + 8, timeout=60,
                    what="readings after the restart")
        await until(lambda: len(texts(http, "operator")) == 2, timeout=30, what="notices")
        await settle(engine)
        assert texts(http, "farmer") == []
        # One notice per start: the first start, then the restart.
        assert texts(http, "operator") == [EDGE_STARTED, EDGE_STARTED]
        stop.set()
        await asyncio.wait_for(task, 60)
    finally:
        gw.close()


async def test_gateway_really_down_then_back(mosquitto: MosquittoServer, influxdb: InfluxServer,
                                             influx_db: str, county: str, http: HttpReceiver,
                                             tmp_path: Path) -> None:
    reg = registry(county, http)
    _svc, engine, stop, task = await run_edge(mosquitto.url, influxdb, influx_db, county,
                                             tmp_path / "edge", reg)
    gw = Gateway(mosquitto.port, county)
    try:
        await until(lambda: engine.stats["readings"] >= 3, timeout=30, what="readings")
        gw.stop.set()
        gw.thread.join(5)
        # Power cut: no DISCONNECT, no more pings; the broker sends the will
        # after 1.5 keepalives (7.5 s).
        gw.client.loop_stop()
        await until(lambda: len(texts(http, "farmer")) == 1, timeout=40, what="offline")
        down = texts(http, "farmer")[0]
        m = re.fullmatch(r"gw-1网关离线：已(\d+)分钟没有数据，请检查供电和网络。", down)
        assert m is not None, down
        gw = Gateway(mosquitto.port, county)
        await until(lambda: len(texts(http, "farmer")) == 2, timeout=30, what="back")
        await settle(engine)
        assert texts(http, "farmer")[1] == "gw-1网关已恢复在线。"
        assert texts(http, "operator") == [EDGE_STARTED]
    finally:
        gw.close()
        stop.set()
        await asyncio.wait_for(task, 60)
