"""Running the real edge service (``python -m farmedge edge run``) as a child
process in tests, and publishing streams of readings at it."""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from farmedge.edge.settings import EdgeSettings, HttpSection, InfluxSection, MqttSection
from farmedge_dev.devservers import free_port

from .support import eventually, make_payload

ROOT = Path(__file__).resolve().parent.parent


class EdgeProcess:
    def __init__(self, *, mqtt_url: str, influx_url: str, database: str, data_dir: Path,
                 county: str | None = None, extra_env: dict[str, str] | None = None,
                 config: Path | None = None, client_id: str | None = None,
                 argv: list[str] | None = None) -> None:
        self.http_port = free_port()
        self.data_dir = data_dir
        self.log_path = data_dir / f"edge-{self.http_port}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FARMEDGE_")}
        env.update({
            "FARMEDGE_MQTT_URL": mqtt_url,
            "FARMEDGE_INFLUX_URL": influx_url,
            "FARMEDGE_INFLUX_DATABASE": database,
            "FARMEDGE_DATA_DIR": str(data_dir),
            "FARMEDGE_HTTP_PORT": str(self.http_port),
            "FARMEDGE_LOG_FORMAT": "json",
            "FARMEDGE_MQTT_CLIENT_ID": client_id or f"edge-{database}",
            "PYTHONPATH": str(ROOT),
        })
        if county:
            env["FARMEDGE_MQTT_TOPICS"] = json.dumps(
                [f"farm/v1/{county}/+/+/telemetry", f"farm/v1/{county}/+/+/status"])
        env.update(extra_env or {})
        self.env = env
        self.config = config
        #: The command line, when not ``python -m farmedge edge run``.
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, wait_subscribed: bool = True) -> EdgeProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # A failing test must not leave an edge running after pytest exits.
        atexit.register(self._kill_if_running)
        argv = self.argv or [sys.executable, "-m", "farmedge", "edge", "run"]
        if self.config:
            argv += ["--config", str(self.config)]
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen(argv, env=self.env, stdout=logf, stderr=subprocess.STDOUT,
                                         cwd=ROOT)
        if wait_subscribed:
            eventually(lambda: self.health().get("mqtt_subscribed"), timeout=20,
                       what="edge subscribed")
        return self

    def health(self) -> dict[str, Any]:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"edge exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz",
                                        timeout=2) as r:
                return dict(json.loads(r.read()), http_status=r.status)
        except urllib.error.HTTPError as e:
            return dict(json.loads(e.read()), http_status=e.code)
        except OSError:
            return {}

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics",
                                    timeout=2) as r:
            return r.read().decode()

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(10)
        self.proc = None
        return rc

    def _kill_if_running(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@contextmanager
def edge_process(**kw: Any) -> Iterator[EdgeProcess]:
    e = EdgeProcess(**kw).start()
    try:
        yield e
    finally:
        e.stop()


class StreamPublisher:
    """Publishes ``messages`` telemetry messages of ``per_message`` readings,
    round-robin over ``gateways``, at ``rate`` messages/s, in a thread, with a
    persistent MQTT session so that a broker restart loses nothing. Every
    reading has its own series and timestamp, so InfluxDB's count of points
    equals the number of distinct readings published."""

    def __init__(self, url: str, county: str, *, messages: int, per_message: int = 10,
                 gateways: int = 3, rate: float = 200.0, kind: str = "soil_moisture",
                 client_id: str | None = None) -> None:
        u = urlsplit(url)
        self.county = county
        self.messages = messages
        self.per_message = per_message
        self.gateways = [f"gw-{i}" for i in range(gateways)]
        self.rate = rate
        self.kind = kind
        self.published = 0
        self.acked = 0
        self._acked_mids: set[int] = set()
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"pub-{county}", protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self.client.on_publish = self._on_publish
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.reconnect_delay_set(1, 2)
        self.client.connect(u.hostname or "127.0.0.1", u.port or 1883, clean_start=False,
                            properties=props)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.base_ts = int(time.time() * 1000) - 3_600_000

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        with self._lock:
            self.acked += 1

    @property
    def total_readings(self) -> int:
        return self.messages * self.per_message

    def start(self) -> StreamPublisher:
        self._thread.start()
        return self

    def _run(self) -> None:
        interval = 1.0 / self.rate
        t0 = time.monotonic()
        for i in range(self.messages):
            gw = self.gateways[i % len(self.gateways)]
            seq = i // len(self.gateways)
            readings = [{"sensor": f"s{j}", "kind": self.kind, "ts": self.base_ts + seq * 10 + 0,
                         "value": round(10 + (seq % 500) * 0.01 + j * 0.1, 3), "unit": "%"}
                        for j in range(self.per_message)]
            payload = make_payload(gw, seq, readings)
            self.client.publish(f"farm/v1/{self.county}/farm-1/{gw}/telemetry", payload, qos=1)
            self.published += 1
            delay = t0 + (i + 1) * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def wait_done(self, timeout: float = 120) -> None:
        self._thread.join(timeout)
        eventually(lambda: self.acked >= self.messages, timeout=timeout,
                   what=f"all {self.messages} messages acknowledged by the broker")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def edge_settings(mosquitto_url: str, influx_url: str, db: str, county: str,
                  tmp_path: Path) -> EdgeSettings:
    """Settings for an in-process EdgeService on one county's topics, writing
    to database ``db``, flushing every 0.1 s, health on a free port."""
    return EdgeSettings(
        data_dir=tmp_path / "edge",
        mqtt=MqttSection(url=mosquitto_url, client_id=f"edge-{county}",
                         topics=[f"farm/v1/{county}/+/+/telemetry",
                                 f"farm/v1/{county}/+/+/status"]),
        influx=InfluxSection(url=influx_url, database=db, flush_interval_s=0.1),
        http=HttpSection(port=0))
