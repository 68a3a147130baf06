"""Alert engine against real peers: Apprise posting to a local HTTP server
(json://) and a local SMTP server (aiosmtpd), the real Mosquitto broker, the
real InfluxDB. Time is a simulated clock moved by the tests; nothing sleeps
to wait for a result (polling with a deadline only). The engine's logic on
its own (state machine, groups, quiet hours, budgets, retries, the shipped
profiles, device rules, the state file) is tested without servers in
tests/unit/alerts/."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
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
from farmedge.contract.topics import status_topic, telemetry_topic
from farmedge.records import AcceptedReading
from farmedge.registry import Contact, Registry
from farmedge.storage.settings import InfluxSection
from farmedge_dev.devservers import InfluxServer, MosquittoServer
from tests.alerts_support import (
    HttpReceiver,
    MqttFeeder,
    SimClock,
    SmtpReceiver,
    farm_registry,
    local_ts,
    reading,
    settle,
    until,
)
from tests.support import Publisher, count, make_payload
from tests.unit.alerts.support import DRY_RULES  # one soil rule, one frost rule

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.servers


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
        recorders.append(InfluxRecorder(InfluxSection(url=influx.url, database=db), flush_s=0.2))
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
        await until(lambda: rig.engine.stats["status"] == 2, timeout=30, what="last will")
        await settle(rig.engine)
        assert http.posts == []        # a last will is a suspicion: it waits 5 min
        await rig.step(300)
        await until(lambda: len(http.posts) == 1, timeout=30, what="offline alert")
        # The true silence: last heard 7 min ago (2 min before the will).
        assert http.messages()[0] == "gw-1网关离线：已7分钟没有数据，请检查供电和网络。"
        # Sensors behind the dead gateway do not add their own silence alerts.
        for _ in range(6):
            await rig.step(600)
        await settle(rig.engine)
        assert len(http.posts) == 1
        gw = start_gateway()           # power back: online status
        await until(lambda: len(http.posts) == 2, timeout=30, what="back online")
        assert http.messages()[1] == "gw-1网关已恢复在线。"
        await rig.feed({"soil-1": 25, "soil-2": 25})
        await rig.step(600)
        await settle(rig.engine)
        assert len(http.posts) == 2
    finally:
        gw.kill()
        gw.wait()
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


# ------------------------------------------------------------------ routing, budgets, delivery


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


# ------------------------------------------------------------------ the command line


def test_cli_check_and_templates(tmp_path: Path, dry_rules: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "farmedge", "alerts", *args],
                              capture_output=True, text=True, cwd=ROOT,
                              timeout=60)

    ok = run("check", str(dry_rules))
    assert ok.returncode == 0 and ok.stdout.startswith("ok: 12 profiles"), ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("profiles:\n  x:\n    rulez: []\n")
    r = run("check", str(bad))
    assert r.returncode == 2 and f"{bad}:3: profiles.x.rulez: unknown key" in r.stderr
    t = run("templates", "--style", "aliyun", "--language", "zh", "--format", "csv")
    assert t.returncode == 0
    assert "soil-dry,raise,zh,${where}土壤偏干：含水量${reading}%（适宜${low}–${high}%），" \
           "请24小时内灌溉。" in t.stdout


