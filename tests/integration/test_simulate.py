"""``farmedge simulate`` against the real Mosquitto broker."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from farmedge.contract import parse_gateway_topic, parse_telemetry
from farmedge_dev.devservers import MosquittoServer
from farmedge_dev.simulate import Simulator, build_messages
from tests.support import eventually

pytestmark = pytest.mark.servers


class Subscriber:
    """Collects every message under ``farm/v1/{county}/#`` (QoS 1)."""

    def __init__(self, url: str, county: str) -> None:
        u = urlsplit(url)
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *a: c.subscribe(f"farm/v1/{county}/#", qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(u.hostname or "127.0.0.1", u.port or 1883)
        self.client.loop_start()
        assert subscribed.wait(10), "subscription not acknowledged"

    def _on_message(self, client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload))

    def count(self) -> int:
        with self.lock:
            return len(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber(mosquitto: MosquittoServer, county: str) -> Iterator[Subscriber]:
    s = Subscriber(mosquitto.url, county)
    yield s
    s.close()


def test_messages_arrive_contract_valid_with_increasing_seq(
        mosquitto: MosquittoServer, county: str, subscriber: Subscriber) -> None:
    sim = Simulator(mqtt_url=mosquitto.url, county=county, farms=3, gateways_per_farm=2,
                    sensors=11, readings_per_message=25, rate=0, messages=600,
                    bad_rate=0.02, seed=4)
    stats = sim.run()
    assert (stats.published, stats.sent, stats.failed) == (600, 600, 0)
    assert stats.readings == 600 * 25
    eventually(lambda: subscriber.count() >= 600, what="600 messages received")
    time_now = time.time() * 1000

    seqs: dict[str, list[int]] = defaultdict(list)
    rejected: Counter[str] = Counter()
    readings = 0
    for topic, payload in subscriber.messages:
        t = parse_gateway_topic(topic)
        parsed = parse_telemetry(payload)
        env = parsed.envelope
        assert env.gateway == t.gateway and t.county == county
        seqs[env.gateway].append(env.seq)
        readings += len(parsed.readings) + len(parsed.rejected)
        rejected.update(r.reason for r in parsed.rejected)
        assert all(r.ts_ms <= env.sent <= time_now for r in parsed.readings)
    assert subscriber.count() == 600 and readings == 600 * 25
    assert len(seqs) == 6
    for s in seqs.values():
        assert s == list(range(100))
    # Every injected bad value, and nothing else, was rejected by the contract.
    assert sum(rejected.values()) == stats.bad
    assert 0.01 < stats.bad / stats.readings < 0.03
    assert set(rejected) <= {"out_of_range", "unknown_unit"}


def test_rate_and_live_pacing(mosquitto: MosquittoServer, county: str,
                              subscriber: Subscriber) -> None:
    started = time.monotonic()
    paced = Simulator(mqtt_url=mosquitto.url, county=county, farms=2, sensors=5, rate=500,
                      duration=1.5).run()
    took = time.monotonic() - started
    assert 600 <= paced.readings <= 800 and took < 5
    # Live: every gateway samples every interval of wall-clock time, stamped now.
    before = int(time.time() * 1000)
    live = Simulator(mqtt_url=mosquitto.url, county=county, farms=2, sensors=3,
                     interval=0.5, duration=1.6, seed=1).run()
    assert 6 <= live.published <= 10  # 4 rounds per gateway, give or take one
    last = [m for m in live.last.values()]
    assert all(before <= r.ts <= int(time.time() * 1000) for m in last for r in m.readings)


def test_command_line_prints_summary_and_exits_0(mosquitto: MosquittoServer, county: str,
                                                 subscriber: Subscriber) -> None:
    url = mosquitto.url.replace("mqtt://", "mqtt://sim:s3cret@")
    out = subprocess.run(
        [sys.executable, "-m", "farmedge", "simulate", "--mqtt-url", url,
         "--county", county, "--farms", "2", "--gateways-per-farm", "2", "--sensors", "4",
         "--rate", "0", "--messages", "40", "--bad-rate", "0.1", "--seed", "3"],
        capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "published 40 messages (160 readings)" in out.stdout
    assert "acked 40 of 40 sent, 0 refused, 0 unacknowledged" in out.stdout
    assert "bad readings injected:" in out.stdout
    assert "s3cret" not in out.stdout + out.stderr
    eventually(lambda: subscriber.count() == 40, what="40 messages received")


def test_unreachable_broker_is_an_error() -> None:
    from farmedge_dev.devservers import free_port

    out = subprocess.run(
        [sys.executable, "-m", "farmedge", "simulate", "--mqtt-url",
         f"mqtt://127.0.0.1:{free_port()}", "--messages", "1"],
        capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1
    assert "cannot connect to the broker" in out.stderr


def test_build_messages_without_a_broker() -> None:
    msgs = build_messages(count=300, farms=2, gateways_per_farm=2, sensors=7,
                          readings_per_message=50, interval=1.0, seed=9)
    now = time.time() * 1000
    keys = set()
    for m in msgs:
        parsed = parse_telemetry(m.payload)
        assert parsed.rejected == [] and len(parsed.readings) == 50
        assert parsed.envelope.seq == m.seq and m.topic.endswith(f"/{m.gateway}/telemetry")
        for r in parsed.readings:
            assert r.ts_ms <= now
            keys.add((m.gateway, r.sensor, r.kind.name, r.ts_ms))
    assert len(keys) == 300 * 50  # no reading repeats another's series and time
    again = build_messages(count=300, farms=2, gateways_per_farm=2, sensors=7,
                           readings_per_message=50, interval=1.0, seed=9,
                           start_ms=msgs[0].readings[0].ts)
    assert [m.readings for m in again] == [m.readings for m in msgs]


def test_processes_share_the_farms(mosquitto: MosquittoServer, county: str,
                                   subscriber: Subscriber) -> None:
    stats = Simulator(mqtt_url=mosquitto.url, county=county, farms=3, sensors=4, rate=0,
                      messages=90, processes=2, seed=2).run()
    assert (stats.published, stats.readings) == (90, 360)
    eventually(lambda: subscriber.count() == 90, what="90 messages received")
    seqs: dict[str, list[int]] = defaultdict(list)
    for _topic, payload in subscriber.messages:
        env = parse_telemetry(payload).envelope
        seqs[env.gateway].append(env.seq)
    assert {g: sorted(s) for g, s in seqs.items()} == {
        f"gw-00{f}-1": list(range(30)) for f in (1, 2, 3)}
    # A farm's messages do not depend on how the farms were shared out.
    alone = build_messages(count=3, farms=3, sensors=4, seed=2, county=county,
                           start_ms=parse_telemetry(subscriber.messages[0][1]).readings[0].ts_ms)
    first = {m.gateway: m for m in alone}
    got = {}
    for _topic, payload in subscriber.messages:
        p = parse_telemetry(payload)
        if p.envelope.seq == 0:
            got[p.envelope.gateway] = [(r.sensor, r.ts_ms, r.value) for r in p.readings]
    g0 = parse_telemetry(subscriber.messages[0][1]).envelope.gateway
    assert got[g0] == [(r.sensor, r.ts, r.value) for r in first[g0].readings]


@pytest.mark.parametrize(("command", "option", "value"), [
    ("simulate", "--interval", "inf"), ("simulate", "--interval", "nan"),
    ("simulate", "--interval", "-1"), ("simulate", "--rate", "nan"),
    ("simulate", "--duration", "nan"), ("demo", "--interval", "nan"),
    ("demo", "--bad-rate", "5"), ("demo", "--duration", "inf"), ("demo", "--refresh", "0"),
])
def test_a_number_no_run_can_use_is_refused_before_anything_starts(
        command: str, option: str, value: str, tmp_path: Path) -> None:
    """Refused by the command line: no broker is reached, no server started."""
    where = (["--mqtt-url", "mqtt://127.0.0.1:9"] if command == "simulate"
             else ["--data-dir", str(tmp_path / "demo")])
    out = subprocess.run([sys.executable, "-m", "farmedge", command, *where, option, value],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2, out.stderr
    assert f"argument {option}:" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "demo").exists()
