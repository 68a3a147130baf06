"""Alert engine against real peers: Apprise posting to a local HTTP server
(json://) and a local SMTP server (aiosmtpd), the real Mosquitto broker, the
real InfluxDB. Time is a simulated clock moved by the tests; nothing sleeps
to wait for a result (polling with a deadline only)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from farmedge.alerts import (
    AlertEngine,
    AlertsSettings,
    AppriseNotifier,
    InfluxRecorder,
    MemoryRecorder,
    MqttRecorder,
    load_rules,
)
from farmedge.config import ConfigError
from farmedge.contract.topics import status_topic, telemetry_topic
from farmedge.records import AcceptedReading
from farmedge.registry import Contact, Farm, GatewayEntry, Plot, Registry, SensorMeta
from farmedge_dev.devservers import InfluxServer, MosquittoServer
from tests.alerts_support import (
    HttpReceiver,
    MqttFeeder,
    SimClock,
    SmtpReceiver,
    local_ts,
    reading,
    settle,
    until,
)
from tests.support import Publisher, count, make_payload

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.servers

DRY_RULES = """
profiles:
  test-dry:
    description: one soil rule, for tests
    rules:
      - id: soil-dry
        kind: soil_moisture
        when: {below: 20}
        clear: {at_least: 24}
        for: 20m
        clear_for: 20m
        group_by: plot
        target: [22, 30]
        template: soil-dry
      - id: frost
        kind: air_temperature
        when: {at_most: -2}
        clear: {above: 0}
        severity: critical
        group_by: farm
        decimals: 1
        template: frost
        escalate_after: 2h
"""


@pytest.fixture
async def http() -> AsyncIterator[HttpReceiver]:
    r = await HttpReceiver().start()
    yield r
    await r.stop()


@pytest.fixture
def smtp() -> Any:
    r = SmtpReceiver().start()
    yield r
    r.stop()


@pytest.fixture
def dry_rules(tmp_path: Path) -> Path:
    p = tmp_path / "rules.yaml"
    p.write_text(DRY_RULES)
    return p


@pytest.fixture
def dry_rules_no_device(tmp_path: Path) -> Path:
    """The test rules, with the shipped device profile replaced by an empty one
    (for tests that jump hours ahead without sensors reporting)."""
    p = tmp_path / "rules-no-device.yaml"
    p.write_text(DRY_RULES + "  device:\n    rules: []\n")
    return p


def farm_registry(county: str, *, contacts: list[Contact], profile: str = "test-dry",
                  sensors: int = 2, budget: int = 10, center: list[Contact] | None = None,
                  interval: float = 600) -> Registry:
    sens = {f"soil-{i}": SensorMeta(plot="field-3", crop="maize", interval_s=interval)
            for i in range(1, sensors + 1)}
    return Registry(
        farms=[Farm(county=county, farm="wang-12", name="王家农场", profile=profile,
                    plots={"field-3": Plot(name="3号地", crop="maize", field_capacity=36,
                                           wilting_point=19)},
                    gateways={"gw-1": GatewayEntry(interval_s=interval, sensors=sens)},
                    contacts=contacts, daily_message_budget=budget)],
        center_contacts=center or [])


@dataclass
class Rig:
    engine: AlertEngine
    clock: SimClock
    county: str
    memory: MemoryRecorder
    feeder: MqttFeeder | None = None
    pub: Publisher | None = None
    seq: int = 0
    extra: list[Callable[[], None]] = field(default_factory=list)

    async def feed(self, values: dict[str, float], kind: str = "soil_moisture",
                   unit: str = "%", gateway: str = "gw-1") -> None:
        """Publish one telemetry message over MQTT (or call the engine directly
        without a broker) and wait until the engine has taken it."""
        before = self.engine.stats["readings"]
        rs = [reading(s, kind, v, self.clock.ms, unit) for s, v in values.items()]
        if self.pub is not None:
            self.seq += 1
            self.pub.publish(telemetry_topic(self.county, "wang-12", gateway),
                             make_payload(gateway, self.seq, rs, sent=self.clock.ms))
        else:
            self.engine.on_readings([
                AcceptedReading(self.county, "wang-12", gateway, r["sensor"], kind, r["ts"],
                                r["value"], unit, "ok") for r in rs])
        await until(lambda: self.engine.stats["readings"] >= before + len(rs),
                    what="engine took the readings")

    async def step(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.engine.wake()
        await settle(self.engine, passes=1)

    async def stop(self) -> None:
        await self.engine.close()
        if self.feeder is not None:
            self.feeder.close()
        if self.pub is not None:
            self.pub.close()
        for f in self.extra:
            f()


async def make_rig(*, county: str, registry: Registry, rules_path: Path | None,
                   start: float, state_path: Path | str = ":memory:",
                   broker: MosquittoServer | None = None, influx: InfluxServer | None = None,
                   db: str | None = None, clock: SimClock | None = None,
                   settings: AlertsSettings | None = None, shipped: bool = True) -> Rig:
    clock = clock or SimClock(start)
    memory = MemoryRecorder()
    recorders: list[Any] = [memory]
    if influx is not None and db is not None:
        recorders.append(InfluxRecorder(url=influx.url, database=db, flush_s=0.2))
    if broker is not None:
        recorders.append(MqttRecorder(url=broker.url))
    rs = load_rules([rules_path] if rules_path else [], shipped=shipped)
    engine = AlertEngine(rules=rs, registry=registry, notifier=AppriseNotifier(),
                         state_path=state_path, recorders=recorders, clock=clock,
                         settings=settings or AlertsSettings(tick_s=0.05, backoff_s=60))
    await engine.start()
    rig = Rig(engine, clock, county, memory)
    if broker is not None:
        rig.feeder = MqttFeeder(broker.port, county, engine, asyncio.get_running_loop(), clock,
                                 registry)
        rig.pub = Publisher(broker.url)
    return rig


class AlertsListener:
    """Collects what the engine publishes on farm/v1/{county}/+/alerts."""

    def __init__(self, port: int, county: str) -> None:
        self.events: list[dict[str, Any]] = []
        ready = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.on_connect = lambda cl, *a: cl.subscribe(f"farm/v1/{county}/+/alerts", qos=1)
        c.on_subscribe = lambda *a: ready.set()
        c.on_message = lambda cl, u, m: self.events.append(json.loads(m.payload))
        c.connect("127.0.0.1", port)
        c.loop_start()
        assert ready.wait(10)
        self.client = c

    def of(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ------------------------------------------------------------------ the cases


async def test_field_drying_gives_one_message_in_both_languages_and_one_clear(
        mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str, county: str,
        http: HttpReceiver, smtp: SmtpReceiver, dry_rules: Path) -> None:
    reg = farm_registry(county, contacts=[
        Contact(name="王建国", language="zh", notify=[http.url("sms")]),
        Contact(name="Li Wei", language="en", notify=[smtp.url("li@example.org")]),
    ])
    listener = AlertsListener(mosquitto.port, county)
    rig = await make_rig(county=county, registry=reg, rules_path=dry_rules,
                         start=local_ts(2026, 6, 10, 10), broker=mosquitto, influx=influxdb,
                         db=influx_db)
    try:
        # Two probes in one plot dry out through the threshold, 10 min apart.
        for v in (28, 24, 21, 14, 14, 13, 14, 13, 13):
            await rig.feed({"soil-1": v, "soil-2": v + 0.4})
            await rig.step(600)
        await until(lambda: len(http.posts) >= 1 and len(smtp.mails) >= 1, what="raise sent")
        await settle(rig.engine)
        assert http.messages() == ["3号地土壤偏干：含水量14%（适宜22–30%），请24小时内灌溉。"]
        assert smtp.bodies() == ["3号地 is dry: soil water 14% (target 22-30%). "
                                 "Irrigate within 24 h."]
        assert http.posts[0]["title"] == "【预警】王家农场"
        # Irrigation: the soil is wet again and stays wet past clear_for.
        for v in (27, 28, 28, 28):
            await rig.feed({"soil-1": v, "soil-2": v})
            await rig.step(600)
        await until(lambda: len(http.posts) == 2 and len(smtp.mails) == 2, what="clear sent")
        await settle(rig.engine)
        assert http.messages()[1] == "3号地土壤水分已恢复：含水量28%。"
        assert smtp.bodies()[1] == "3号地 soil water is back to 28%."
        assert len(http.posts) == 2 and len(smtp.mails) == 2
        # Recorded: MQTT alerts topic and InfluxDB measurement `alerts`.
        await until(lambda: listener.of("raise") and listener.of("clear"), what="mqtt events")
        raised = listener.of("raise")
        assert len(raised) == 1 and raised[0]["scope_id"] == "field-3"
        assert raised[0]["text"]["en"].startswith("3号地 is dry")
        assert sorted(raised[0]["entities"]) == ["gw-1/soil-1", "gw-1/soil-2"]

        def rows(ev: str) -> int:
            return count(influxdb.url, influx_db, "alerts", "count", f"\"event\" = '{ev}'")

        await until(lambda: rows("raise") == 1 and rows("clear") == 1 and rows("delivered") == 4,
                    what="alerts rows in InfluxDB")
    finally:
        await rig.stop()
        listener.close()


async def test_flapping_for_an_hour_gives_one_message(county: str, http: HttpReceiver,
                                                      dry_rules: Path) -> None:
    reg = farm_registry(county, sensors=1,
                        contacts=[Contact(name="王", notify=[http.url()])])
    rig = await make_rig(county=county, registry=reg, rules_path=dry_rules,
                         start=local_ts(2026, 6, 10, 10))
    try:
        # Every 5 min for an hour: around the raise threshold (20), once briefly
        # past the clear threshold (24) but not for clear_for.
        for v in (19, 21, 19.5, 20.5, 19, 21, 25, 19, 21, 19.5, 22, 19, 20.5):
            await rig.feed({"soil-1": v})
            await rig.step(300)
        await settle(rig.engine)
        assert len(http.posts) == 1
        assert http.messages()[0].startswith("3号地土壤偏干：含水量")
        assert [e.event for e in rig.memory.events if e.event in ("raise", "clear")] == ["raise"]
    finally:
        await rig.stop()


GATEWAY = textwrap.dedent("""
    import json, sys, time
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    port, topic, gw = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=gw, protocol=mqtt.MQTTv5)
    c.will_set(topic, json.dumps({"v": 1, "gateway": gw, "online": False}), qos=1, retain=True)
    c.connect("127.0.0.1", port, keepalive=5)
    c.loop_start()
    c.publish(topic, json.dumps({"v": 1, "gateway": gw, "online": True, "clock": "synced"}),
              qos=1, retain=True).wait_for_publish(10)
    print("up", flush=True)
    time.sleep(3600)
""")


async def test_gateway_killed_gives_one_offline_and_one_back_online(
        mosquitto: MosquittoServer, county: str, http: HttpReceiver, dry_rules: Path,
        tmp_path: Path) -> None:
    reg = farm_registry(county, sensors=2, contacts=[Contact(name="王", notify=[http.url()])])
    rig = await make_rig(county=county, registry=reg, rules_path=dry_rules,
                         start=local_ts(2026, 6, 10, 10), broker=mosquitto)
    topic = status_topic(county, "wang-12", "gw-1")
    script = tmp_path / "gw.py"
    script.write_text(GATEWAY)

    def start_gateway() -> subprocess.Popen[str]:
        p = subprocess.Popen([sys.executable, str(script), str(mosquitto.port), topic, "gw-1"],
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None and p.stdout.readline().strip() == "up"
        return p

    gw = start_gateway()
    try:
        await until(lambda: rig.engine.stats["status"] == 1, what="online status")
        await rig.feed({"soil-1": 25, "soil-2": 25})
        await rig.step(120)
        gw.kill()                      # power cut: no DISCONNECT, the broker sends the will
        gw.wait()
        await until(lambda: len(http.posts) == 1, timeout=15, what="offline alert")
        assert http.messages()[0] == "gw-1网关离线：已2分钟没有数据，请检查供电和网络。"
        # Sensors behind the dead gateway do not add their own silence alerts.
        for _ in range(6):
            await rig.step(600)
        await settle(rig.engine)
        assert len(http.posts) == 1
        gw = start_gateway()           # power back: online status
        await until(lambda: len(http.posts) == 2, timeout=15, what="back online")
        assert http.messages()[1] == "gw-1网关已恢复在线。"
        await rig.feed({"soil-1": 25, "soil-2": 25})
        await rig.step(600)
        await settle(rig.engine)
        assert len(http.posts) == 2
    finally:
        gw.kill()
        gw.wait()
        await rig.stop()


async def test_gateway_silent_past_its_intervals_goes_offline(county: str, http: HttpReceiver,
                                                              dry_rules: Path) -> None:
    """No last will (a link that died quietly): offline after 3 intervals."""
    reg = farm_registry(county, sensors=1, contacts=[Contact(name="王", notify=[http.url()])])
    rig = await make_rig(county=county, registry=reg, rules_path=dry_rules,
                         start=local_ts(2026, 6, 10, 10))
    try:
        await rig.feed({"soil-1": 25, "air-1": 20})
        await rig.step(1700)
        await settle(rig.engine)
        assert http.posts == []
        await rig.step(200)            # 1900 s > 3 x 600 s
        await until(lambda: len(http.posts) == 1, what="offline")
        assert http.messages()[0] == "gw-1网关离线：已32分钟没有数据，请检查供电和网络。"
        await rig.feed({"soil-1": 25, "air-1": 20})
        await until(lambda: len(http.posts) == 2, what="back online")
        assert http.messages()[1] == "gw-1网关已恢复在线。"
    finally:
        await rig.stop()


async def test_restart_while_firing_sends_nothing_twice(
        mosquitto: MosquittoServer, county: str, http: HttpReceiver, dry_rules: Path,
        tmp_path: Path) -> None:
    reg = farm_registry(county, sensors=1, contacts=[Contact(name="王", notify=[http.url()])])
    state = tmp_path / "alerts.sqlite"
    clock = SimClock(local_ts(2026, 6, 10, 10))
    rig = await make_rig(county=county, registry=reg, rules_path=dry_rules, start=0,
                         clock=clock, state_path=state, broker=mosquitto)
    for v in (15, 15, 15, 15):
        await rig.feed({"soil-1": v})
        await rig.step(600)
    await until(lambda: len(http.posts) == 1, what="raise")
    await rig.stop()
    # The edge restarts: same state file, the broker redelivers retained status.
    rig = await make_rig(county=county, registry=reg, rules_path=dry_rules, start=0,
                         clock=clock, state_path=state, broker=mosquitto)
    try:
        assert ("test-dry/soil-dry", "sensor:gw-1/soil-1", "firing") in rig.engine.firing()
        for v in (14, 15, 14, 15):
            await rig.feed({"soil-1": v})
            await rig.step(600)
        await settle(rig.engine)
        assert len(http.posts) == 1
        for v in (26, 26, 26, 26):
            await rig.feed({"soil-1": v})
            await rig.step(600)
        await until(lambda: len(http.posts) == 2, what="clear after restart")
        await settle(rig.engine)
        assert http.messages()[1].startswith("3号地土壤水分已恢复")
        assert len(http.posts) == 2
    finally:
        await rig.stop()


async def test_twenty_silent_sensors_behind_one_gateway_give_one_message(
        mosquitto: MosquittoServer, county: str, http: HttpReceiver, dry_rules: Path) -> None:
    reg = farm_registry(county, sensors=20, contacts=[Contact(name="王", notify=[http.url()])])
    rig = await make_rig(county=county, registry=reg, rules_path=dry_rules,
                         start=local_ts(2026, 6, 10, 10), broker=mosquitto)
    try:
        sensors = {f"soil-{i}": 25.0 for i in range(1, 21)}
        await rig.feed({**sensors, "air-1": 20})
        assert rig.pub is not None
        for _ in range(4):             # the gateway stays up (status and air readings)
            await rig.step(600)
            await rig.feed({"air-1": 20})
        await until(lambda: len(http.posts) == 1, what="silence alert")
        await settle(rig.engine)
        assert len(http.posts) == 1
        msg = http.messages()[0]
        assert msg.startswith("gw-1网关下20个传感器已") and msg.endswith("请检查接线和供电。")
        await rig.feed(sensors)
        await until(lambda: len(http.posts) == 2, what="clear")
        await settle(rig.engine)
        assert http.messages()[1] == "gw-1网关下20个传感器已恢复数据。"
        assert len(http.posts) == 2
    finally:
        await rig.stop()


async def test_quiet_hours_hold_a_warning_until_morning_and_let_a_critical_through(
        county: str, http: HttpReceiver, dry_rules_no_device: Path) -> None:
    dry_rules = dry_rules_no_device
    reg = farm_registry(county, sensors=1, contacts=[
        Contact(name="王", notify=[http.url()], quiet_hours="21:00-07:00")])
    rig = await make_rig(county=county, registry=reg, rules_path=dry_rules,
                         start=local_ts(2026, 6, 10, 22, 30))
    try:
        for _ in range(3):
            await rig.feed({"soil-1": 15})
            await rig.step(600)
        await settle(rig.engine)
        assert http.posts == []
        assert [e.event for e in rig.memory.events if e.event == "held"] == ["held"]
        await rig.feed({"air-1": -3.5}, kind="air_temperature", unit="degC")
        await until(lambda: len(http.posts) == 1, what="critical at night")
        assert http.messages() == ["王家农场霜冻：气温-3.5℃（≤-2.0℃可冻死幼苗），请做好防霜。"]
        # Morning: 07:00 releases the warning.
        rig.clock.t = local_ts(2026, 6, 11, 6, 59)
        await rig.step(0)
        await settle(rig.engine)
        assert len(http.posts) == 1
        await rig.step(60)
        await until(lambda: len(http.posts) == 2, what="warning at 07:00")
        assert http.messages()[1] == "3号地土壤偏干：含水量15%（适宜22–30%），请24小时内灌溉。"
    finally:
        await rig.stop()


# ------------------------------------------------------------------ routing, budgets, delivery


async def test_held_warning_that_clears_overnight_is_never_sent(
        county: str, http: HttpReceiver, dry_rules_no_device: Path) -> None:
    dry_rules = dry_rules_no_device
    reg = farm_registry(county, sensors=1, contacts=[
        Contact(name="王", notify=[http.url()], quiet_hours="21:00-07:00")])
    rig = await make_rig(county=county, registry=reg, rules_path=dry_rules,
                         start=local_ts(2026, 6, 10, 22))
    try:
        for v in (15, 15, 15, 30, 30, 30, 30):
            await rig.feed({"soil-1": v})
            await rig.step(600)
        rig.clock.t = local_ts(2026, 6, 11, 8)
        await rig.step(0)
        await settle(rig.engine)
        assert http.posts == []
        assert [e.event for e in rig.memory.events if e.event == "dropped"] == ["dropped"]
    finally:
        await rig.stop()


async def test_daily_budget_escalation_and_retry(county: str, http: HttpReceiver,
                                                 smtp: SmtpReceiver, dry_rules: Path) -> None:
    reg = farm_registry(
        county, sensors=1, budget=1, contacts=[Contact(name="王", notify=[http.url()])],
        center=[Contact(name="County agronomist", language="en", agronomist=True,
                        notify=[smtp.url()])])
    # Two plots on two gateways would be clearer; one warning group and a second
    # warning (other plot) is enough to use the budget of 1.
    rig = await make_rig(county=county, registry=reg, rules_path=dry_rules,
                         start=local_ts(2026, 6, 10, 10))
    try:
        http.fail_next = 1             # the first delivery attempt gets a 500
        for i in range(3):
            if i:
                await rig.step(600)
            await rig.feed({"soil-1": 15})
        await until(lambda: [e for e in rig.memory.events if e.event == "failed"],
                    what="failed attempt")
        assert http.posts == []
        await rig.step(61)             # backoff 60 s
        await until(lambda: len(http.posts) == 1, what="retried")
        # A second warning today (another sensor on another plot) is over budget.
        rig.engine.on_readings([AcceptedReading(county, "wang-12", "gw-1", "soil-9",
                                                "soil_moisture", rig.clock.ms, 10, "%", "ok",
                                                {"plot": "field-9"})])
        await rig.step(1300)
        rig.engine.on_readings([AcceptedReading(county, "wang-12", "gw-1", "soil-9",
                                                "soil_moisture", rig.clock.ms, 10, "%", "ok",
                                                {"plot": "field-9"})])
        await settle(rig.engine)
        assert [e.scope_id for e in rig.memory.events if e.event == "suppressed"] == ["field-9"]
        assert len(http.posts) == 1
        # Frost is critical: passes the budget, and goes to the agronomist after 2 h.
        await rig.feed({"air-1": -4}, kind="air_temperature", unit="degC")
        await until(lambda: len(http.posts) == 2, what="critical")
        for _ in range(13):
            await rig.feed({"air-1": -4}, kind="air_temperature", unit="degC")
            await rig.step(600)
        await until(lambda: len(smtp.mails) == 1, what="escalation")
        assert smtp.bodies()[0] == ("王家农场: Frost at 王家农场: -4.0 C (seedlings die at "
                                    "-2.0 C). Protect the crop.")
    finally:
        await rig.stop()


async def test_rate_limit_spreads_messages_over_minutes(county: str, http: HttpReceiver,
                                                        dry_rules: Path) -> None:
    """25 plots dry at once behind a channel limited to 20 a minute (as DingTalk
    bots are); the json:// receiver stands in for the bot."""
    plots = {f"p{i}": Plot(name=f"{i}号地") for i in range(25)}
    reg = Registry(farms=[Farm(county=county, farm="wang-12", profile="test-dry", plots=plots,
                               daily_message_budget=100,
                               contacts=[Contact(name="群", notify=[http.url()])])])
    rig = await make_rig(county=county, registry=reg, rules_path=dry_rules,
                         start=local_ts(2026, 6, 10, 10),
                         settings=AlertsSettings(tick_s=0.05, rate_limits={"json": 20}))
    try:
        for n in range(3):
            if n:
                await rig.step(600)
            rig.engine.on_readings([
                AcceptedReading(county, "wang-12", "gw-1", f"s{i}", "soil_moisture",
                                rig.clock.ms, 10, "%", "ok", {"plot": f"p{i}"})
                for i in range(25)])
        await until(lambda: len(http.posts) == 20, what="first 20")
        await settle(rig.engine)
        assert len(http.posts) == 20
        await rig.step(60)
        await until(lambda: len(http.posts) == 25, what="the rest a minute later")
    finally:
        await rig.stop()


# ------------------------------------------------------------------ shipped profiles


def _direct(rig: Rig, sensor: str, kind: str, value: float, unit: str,
            tags: dict[str, str] | None = None) -> None:
    rig.engine.on_readings([AcceptedReading(rig.county, "wang-12", "gw-1", sensor, kind,
                                            rig.clock.ms, value, unit, "ok", tags or {})])


async def test_shipped_maize_profile_grades_drought(county: str, http: HttpReceiver) -> None:
    reg = farm_registry(county, sensors=1, profile="maize-blacksoil", budget=20,
                        contacts=[Contact(name="王", notify=[http.url()])])
    rig = await make_rig(county=county, registry=reg, rules_path=None,
                         start=local_ts(2026, 7, 1, 9))
    try:
        # FC 36, WP 19: irrigate below 26.65 % (FAO-56 p=0.55), light drought
        # below 21.6 % (60 % FC), severe below 14.4 % (40 % FC).
        for v in [30, 28] + [26] * 7 + [21] * 7 + [14] * 7:
            _direct(rig, "soil-1", "soil_moisture", v, "%")
            _direct(rig, "air-1", "air_temperature", 22, "degC")
            await rig.step(600)
        await settle(rig.engine)
        assert http.messages() == [
            "3号地即将缺水：含水量26%（适宜22–31%），请安排灌溉。",
            "3号地土壤偏干：含水量21%（适宜22–31%），请24小时内灌溉。",
            "3号地严重干旱：含水量14%（适宜22–31%），请立即灌溉。",
        ]
    finally:
        await rig.stop()


async def test_shipped_cattle_profile_thi_and_bolus_baseline(county: str,
                                                             http: HttpReceiver) -> None:
    reg = Registry(farms=[Farm(
        county=county, farm="wang-12", name="王家牧场", profile="cattle-dairy",
        gateways={"gw-1": GatewayEntry(interval_s=3600)},
        contacts=[Contact(name="王", notify=[http.url()])], daily_message_budget=50)])
    start = local_ts(2026, 7, 1, 0)
    rig = await make_rig(county=county, registry=reg, rules_path=None, start=start)
    try:
        # Three days of a normal cow (38.5 C) and a cool barn.
        for i in range(72):
            wobble = 0.1 * (i % 3 - 1)
            _direct(rig, "bolus-17", "animal_body_temperature", 38.5 + wobble, "degC",
                    {"animal": "cow-17"})
            _direct(rig, "barn-t", "air_temperature", 20 + wobble, "degC")
            _direct(rig, "barn-h", "air_humidity", 60 + wobble, "%RH")
            _direct(rig, "trough", "water_level", 80, "%")
            rig.clock.advance(3600)
        await settle(rig.engine)
        assert http.posts == []
        # +0.9 C over her own baseline, still under the 39.5 C fever line.
        for _ in range(3):
            _direct(rig, "bolus-17", "animal_body_temperature", 39.4, "degC",
                    {"animal": "cow-17"})
            await rig.step(1800)
        await until(lambda: len(http.posts) == 1, what="baseline fever")
        assert http.messages()[0] == "cow-17体温比平时高0.9℃（读数39.4℃），可能发病，请检查。"
        # Hot humid barn: 27 C, 70 % RH -> THI 76.8 (moderate), then 30 C -> 81.3 (severe).
        for _ in range(5):
            _direct(rig, "bolus-17", "animal_body_temperature", 39.4, "degC",
                    {"animal": "cow-17"})
            _direct(rig, "trough", "water_level", 80, "%")
            _direct(rig, "barn-t", "air_temperature", 27, "degC")
            _direct(rig, "barn-h", "air_humidity", 70, "%RH")
            await rig.step(900)
        await until(lambda: len(http.posts) == 2, what="THI moderate")
        assert http.messages()[1] == "gw-1中度热应激：温湿指数77（≥72），请加强通风喷淋。"
        for _ in range(4):
            _direct(rig, "bolus-17", "animal_body_temperature", 39.4, "degC",
                    {"animal": "cow-17"})
            _direct(rig, "trough", "water_level", 80, "%")
            _direct(rig, "barn-t", "air_temperature", 30, "degC")
            _direct(rig, "barn-h", "air_humidity", 70, "%RH")
            await rig.step(900)
        await until(lambda: len(http.posts) == 3, what="THI severe")
        assert http.messages()[2] == "gw-1重度热应激：温湿指数81（≥80），请立即降温并保证饮水。"
    finally:
        await rig.stop()


# ------------------------------------------------------------------ rule files


def test_shipped_profiles_load_and_fit_one_sms() -> None:
    rs = load_rules()
    assert {"maize-blacksoil", "soybean-blacksoil", "paddy-rice", "cattle-dairy", "cattle-beef",
            "pigs", "poultry", "water-trough", "device"} <= set(rs.profiles)
    from farmedge.alerts import export_templates

    rows = export_templates(rs)
    assert rows and all(r.widest_chars <= 70 for r in rows if r.language == "zh")


@pytest.mark.parametrize(("text", "expect"), [
    ("profiles:\n  x:\n    rules:\n      - id: a\n        kind: soil_moisture\n"
     "        when: {below: 3}\n        template: nope\n",
     ":7: profiles.x.rules[0].template: no template 'nope'"),
    ("profiles:\n  x:\n    rules:\n      - id: a\n        kind: soil_moist\n"
     "        when: {below: 3}\n        template: soil-dry\n",
     ":4: profiles.x.rules[0]: Value error, kind 'soil_moist' is not a contract kind"),
    ("profiles:\n  x:\n    rules:\n      - id: a\n        kind: soil_moisture\n"
     "        when: {below: 3}\n        for: soon\n        template: soil-dry\n",
     ":7: profiles.x.rules[0].for: Value error, 'soon' is not a duration"),
    ("templates:\n  t:\n    raise: {zh: '{where}" + "很" * 62 + "', en: x}\n"
     "    clear: {zh: a, en: b}\n",
     ":2: templates.t: Value error, raise.zh: 68 characters with the widest values"),
    ("profiles:\n  a:\n    include: [b]\n  b:\n    include: [a]\n",
     ":3: profiles.a.include: include cycle a -> b -> a"),
])
def test_rule_file_errors_name_file_line_and_reason(tmp_path: Path, text: str,
                                                    expect: str) -> None:
    p = tmp_path / "site.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_rules([p])
    assert f"{p}{expect}" in str(ei.value)


def test_cli_check_and_templates(tmp_path: Path, dry_rules: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "farmedge", "alerts", *args],
                              capture_output=True, text=True, cwd=ROOT,
                              timeout=60)

    ok = run("check", str(dry_rules))
    assert ok.returncode == 0 and ok.stdout.startswith("ok: 11 profiles"), ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("profiles:\n  x:\n    rulez: []\n")
    r = run("check", str(bad))
    assert r.returncode == 2 and f"{bad}:3: profiles.x.rulez: unknown key" in r.stderr
    t = run("templates", "--style", "aliyun", "--language", "zh", "--format", "csv")
    assert t.returncode == 0
    assert "soil-dry,raise,zh,${where}土壤偏干：含水量${reading}%（适宜${low}–${high}%），" \
           "请24小时内灌溉。" in t.stdout


REMIND_RULES = """
profiles:
  test-remind:
    rules:
      - id: soil-dry
        kind: soil_moisture
        when: {below: 20}
        clear: {at_least: 24}
        group_by: plot
        target: [22, 30]
        template: soil-dry
        remind_after: 6h
"""


async def test_reminder_after_the_cool_down_while_still_firing(
        county: str, http: HttpReceiver, tmp_path: Path) -> None:
    rules = tmp_path / "remind.yaml"
    rules.write_text(REMIND_RULES + "  device:\n    rules: []\n")
    reg = farm_registry(county, sensors=1, profile="test-remind",
                        contacts=[Contact(name="王", notify=[http.url()])])
    rig = await make_rig(county=county, registry=reg, rules_path=rules,
                         start=local_ts(2026, 6, 10, 8))
    try:
        for _ in range(13):            # 13 h dry, a reading every hour
            await rig.feed({"soil-1": 15})
            await rig.step(3600)
        await until(lambda: len(http.posts) == 3, what="raise and two reminders")
        await settle(rig.engine)
        text = "3号地土壤偏干：含水量15%（适宜22–30%），请24小时内灌溉。"
        assert http.messages() == [text, "提醒：" + text, "提醒：" + text]
        assert [e.event for e in rig.memory.events if e.event in ("raise", "remind")] == [
            "raise", "remind", "remind"]
    finally:
        await rig.stop()


async def test_device_rules_battery_range_flatline_clock_and_backlog(
        county: str, http: HttpReceiver) -> None:
    from farmedge.contract.models import GatewayStatus
    from farmedge.records import StatusEvent

    reg = farm_registry(county, sensors=2, contacts=[Contact(name="王", notify=[http.url()])],
                        center=[Contact(name="center", notify=[http.url("center")])],
                        profile="maize-blacksoil")
    rig = await make_rig(county=county, registry=reg, rules_path=None,
                         start=local_ts(2026, 6, 10, 8))
    e = rig.engine

    def send(sensor: str, kind: str, value: float, unit: str, quality: str = "ok",
             clock_ok: bool = True) -> None:
        e.on_readings([AcceptedReading(county, "wang-12", "gw-1", sensor, kind, rig.clock.ms,
                                       value, unit, quality, {}, clock_ok)])

    def status(**kw: Any) -> None:
        e.on_status(StatusEvent(county, "wang-12", "gw-1",
                                GatewayStatus(v=1, gateway="gw-1", online=True, **kw),
                                rig.clock.ms))

    try:
        for i in range(15):            # 2.5 h, a reading every 10 min
            synced = i >= 6            # NTP after an hour
            send("soil-1", "soil_moisture", 25 + i % 3, "%", clock_ok=synced)
            send("soil-2", "soil_moisture", 26 + i % 2, "%", clock_ok=synced)
            send("soil-1", "battery_voltage", 3.1, "V", clock_ok=synced)         # low battery
            send("soil-2", "soil_temperature", 17.25, "degC", clock_ok=synced)   # stuck
            send("soil-2", "soil_ec", 300, "uS/cm", quality="error", clock_ok=synced)  # broken
            status(clock="unsynced" if i < 6 else "synced", outbox_oldest_age_s=4 * 3600)
            await rig.step(600)
        await rig.step(12 * 3600)      # the stuck temperature passes the 12-h window
        for sensor in ("soil-1", "soil-2"):
            send(sensor, "soil_moisture", 25, "%")
        send("soil-2", "soil_temperature", 17.25, "degC")
        status(clock="synced", outbox_oldest_age_s=4 * 3600)
        await settle(e)
        raised = {ev.rule for ev in rig.memory.events if ev.event == "raise"}
        assert {"device/battery-low", "device/out-of-range", "device/clock-unsynced",
                "device/outbox-backlog", "device/flatline"} <= raised
        cleared = {ev.rule for ev in rig.memory.events if ev.event == "clear"}
        assert "device/clock-unsynced" in cleared
        # Center-only rules go to the center; the farmer hears about the rest.
        assert any("积压数据" in m for m in http.messages("center"))
        assert any("电池电压低" in m for m in http.messages("sms"))
        assert not any("时钟" in m for m in http.messages("sms"))
    finally:
        await rig.stop()


async def test_restart_with_a_rule_removed_forgets_its_alerts(
        county: str, http: HttpReceiver, dry_rules: Path, tmp_path: Path) -> None:
    reg = farm_registry(county, sensors=1, contacts=[Contact(name="王", notify=[http.url()])])
    state = tmp_path / "alerts.sqlite"
    clock = SimClock(local_ts(2026, 6, 10, 10))
    rig = await make_rig(county=county, registry=reg, rules_path=dry_rules, start=0,
                         clock=clock, state_path=state)
    for _ in range(3):
        await rig.feed({"soil-1": 15})
        await rig.step(600)
    await until(lambda: len(http.posts) == 1, what="raise")
    await rig.stop()
    other = tmp_path / "other.yaml"
    other.write_text(DRY_RULES.replace("      - id: soil-dry", "      - id: soil-dry-2"))
    rig = await make_rig(county=county, registry=reg, rules_path=other, start=0, clock=clock,
                         state_path=state)
    try:
        await rig.feed({"soil-1": 30})
        await rig.step(600)
        await settle(rig.engine)
        assert rig.engine.firing() == [] and len(http.posts) == 1
    finally:
        await rig.stop()
