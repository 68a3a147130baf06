"""``farmedge gateway read-once``: each sensor read once through its real
driver (the simulated one, and a Modbus-TCP probe answered by pymodbus's own
server), printed with its quality flag or the driver's error, and nothing
published: checked at a real broker."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from farmedge_dev.devservers import MosquittoServer, free_port
from tests.unit.gateway.test_drivers import EXPECTED, _context, _ServerThread

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.servers


@pytest.fixture
def probe_port() -> Iterator[int]:
    """A JXCT 7-in-1 probe (slave 7) on Modbus-TCP."""
    from pymodbus.server import ModbusTcpServer

    port = free_port()
    srv = _ServerThread(lambda: ModbusTcpServer(_context(7), address=("127.0.0.1", port)))
    srv.start()
    yield port
    srv.stop()


def _config(tmp_path: Path, mqtt_url: str, county: str, probe_port: int, *,
            failing: bool) -> Path:
    text = f"""
county = "{county}"
farm = "farm-1"
gateway = "gw-1"
data_dir = "{tmp_path / 'data'}"
[mqtt]
url = "{mqtt_url}"
[[sensors]]
driver = "simulated"
id = "soil-sim"
kinds = ["soil_moisture", "soil_temperature"]
seed = 3
[[sensors]]
driver = "modbus_tcp"
id = "probe-1"
host = "127.0.0.1"
port = {probe_port}
slave = 7
warmup_s = 0
[[sensors]]
driver = "simulated"
id = "bolus-1"
kinds = ["animal_body_temperature"]
animal = "cow-7"
bad_rate = {1.0 if failing else 0.0}
"""
    if failing:
        text += f"""
[[sensors]]
driver = "modbus_tcp"
id = "probe-2"
host = "127.0.0.1"
port = {probe_port}
slave = 3
timeout_s = 0.5
retries = 0
warmup_s = 0
"""
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def _read_once(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARMEDGE_")}
    return subprocess.run([sys.executable, "-m", "farmedge", "gateway", "read-once",
                           "--config", str(config), *args],
                          capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)


class _Watcher:
    """Subscribes to everything under the county, to see that nothing comes."""

    def __init__(self, port: int, county: str) -> None:
        self.got: queue.Queue[str] = queue.Queue()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"w-{uuid.uuid4().hex[:6]}",
                             protocol=mqtt.MQTTv5)
        subscribed: queue.Queue[bool] = queue.Queue()
        self.c.on_subscribe = lambda *a: subscribed.put(True)
        self.c.on_message = lambda c, u, m: self.got.put(m.topic)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.c.subscribe(f"farm/v1/{county}/#", qos=1)
        subscribed.get(timeout=30)
        self.county = county

    def topics_until_marker(self) -> list[str]:
        """Everything that arrived before a marker we publish now (the broker
        delivers in order, so whatever was published earlier came first)."""
        marker = f"farm/v1/{self.county}/marker"
        self.c.publish(marker, b"x", qos=1)
        seen: list[str] = []
        while True:
            topic = self.got.get(timeout=30)
            if topic == marker:
                return seen
            seen.append(topic)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_read_once_prints_every_sensor_and_publishes_nothing(
        tmp_path: Path, mosquitto: MosquittoServer, county: str, probe_port: int) -> None:
    cfg = _config(tmp_path, mosquitto.url, county, probe_port, failing=False)
    watcher = _Watcher(mosquitto.port, county)
    try:
        res = _read_once(cfg, "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        doc = json.loads(res.stdout)
        assert doc["ok"] is True and (doc["county"], doc["gateway"]) == (county, "gw-1")
        by_id = {s["id"]: s for s in doc["sensors"]}
        assert list(by_id) == ["soil-sim", "probe-1", "bolus-1"]
        probe = {r["kind"]: r["value"] for r in by_id["probe-1"]["readings"]}
        assert probe == EXPECTED
        assert {r["quality"] for s in doc["sensors"] for r in s["readings"]} == {"ok"}
        assert [r["kind"] for r in by_id["soil-sim"]["readings"]] == [
            "soil_moisture", "soil_temperature"]
        [bolus] = by_id["bolus-1"]["readings"]
        assert bolus["animal"] == "cow-7" and bolus["unit"] == "degC"

        table = _read_once(cfg)
        assert table.returncode == 0, table.stdout + table.stderr
        assert "soil_ph" in table.stdout and "6.85 pH" in table.stdout
        assert "all 3 sensors read" in table.stdout
        assert "nothing was published" in table.stdout

        assert watcher.topics_until_marker() == []
        assert not (tmp_path / "data").exists(), "read-once must not open the outbox"
    finally:
        watcher.close()


def test_a_failing_sensor_is_named_and_the_exit_status_says_so(
        tmp_path: Path, mosquitto: MosquittoServer, county: str, probe_port: int) -> None:
    cfg = _config(tmp_path, mosquitto.url, county, probe_port, failing=True)
    watcher = _Watcher(mosquitto.port, county)
    try:
        res = _read_once(cfg)
        assert res.returncode == 1, res.stdout + res.stderr
        out = res.stdout
        # The good probe is still read and shown.
        assert "6.85 pH" in out and "23.4 %" in out
        # The probe that does not answer (wrong slave address): its error.
        assert "FAILED" in out
        err_line = next(line for line in out.splitlines() if line.startswith("probe-2: "))
        assert "127.0.0.1" in err_line
        # The injected fault is flagged, not hidden.
        bolus = next(line for line in out.splitlines() if line.startswith("bolus-1"))
        assert "error" in bolus.split()
        assert "2 of 4 sensors failed: bolus-1, probe-2" in out

        only = _read_once(cfg, "--sensor", "probe-1", "--json")
        assert only.returncode == 0, only.stdout + only.stderr
        assert [s["id"] for s in json.loads(only.stdout)["sensors"]] == ["probe-1"]

        unknown = _read_once(cfg, "--sensor", "probe-9")
        assert unknown.returncode == 2 and "probe-9" in unknown.stderr

        assert watcher.topics_until_marker() == []
    finally:
        watcher.close()
