"""Helpers for the service-center stack tests: a Mosquitto broker running the
shipped configuration (deploy/mosquitto/) and small MQTT clients that report
what the broker answered."""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from farmedge.devservers import MosquittoServer

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
#: Client.publish's answer when the broker closed the connection instead of a PUBACK.
DROPPED = -1


@dataclass
class ShippedBroker(MosquittoServer):
    """Mosquitto started with deploy/mosquitto/mosquitto.conf, only its paths
    and listener moved into a temporary folder. Password file and ACL live in
    ``config_dir`` (what ``farmedge provision --broker-dir`` writes)."""

    @property
    def config_dir(self) -> Path:
        return self.workdir / "config"

    def conf_text(self) -> str:
        text = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
        lines = []
        for line in text.splitlines():
            if line.strip() == "listener 1883":
                line = f"listener {self.port} 127.0.0.1"
            lines.append(line.replace("/mosquitto/config/", f"{self.config_dir}/")
                         .replace("/mosquitto/data/", f"{self.workdir}/data/"))
        # Run as root, Mosquitto switches to the user "mosquitto", which cannot
        # read pytest's temporary folders; stay the user the tests run as.
        own_user = "user root\n" if os.geteuid() == 0 else ""
        return "\n".join(lines) + "\n" + own_user + self.extra_conf

    def start(self, timeout: float = 15.0) -> ShippedBroker:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        for name in ("passwd", "acl"):
            p = self.config_dir / name
            if not p.exists():
                p.write_text((DEPLOY / "mosquitto" / name).read_text()
                             if (DEPLOY / "mosquitto" / name).exists() else "")
        super().start(timeout)
        return self

    def reload(self) -> None:
        """SIGHUP: Mosquitto reads the password file and ACL again."""
        import signal

        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)


class Client:
    """A paho MQTT 5 client that records the CONNACK, SUBACK and messages."""

    def __init__(self, port: int, username: str | None = None, password: str | None = None,
                 *, client_id: str = "") -> None:
        self.port = port
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
        if username is not None:
            self.c.username_pw_set(username, password)
        self.connack: queue.Queue[int] = queue.Queue()
        self.suback: queue.Queue[list[int]] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.puback: dict[int, int] = {}
        self.dropped = threading.Event()
        self._lock = threading.Lock()
        self.c.on_connect = lambda c, u, f, rc, p=None: self.connack.put(rc.value)
        self.c.on_subscribe = lambda c, u, mid, rcs, p=None: self.suback.put(
            [r.value for r in rcs])
        self.c.on_message = lambda c, u, m: self.messages.put(m)

        def on_publish(c: object, u: object, mid: int, rc: object, p: object = None) -> None:
            with self._lock:
                self.puback[mid] = getattr(rc, "value", 0)

        self.c.on_publish = on_publish

    def connect(self, timeout: float = 10.0) -> int:
        """Connect; return the CONNACK reason code (0 = accepted)."""
        self.c.connect("127.0.0.1", self.port)
        self.c.loop_start()
        try:
            return self.connack.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no CONNACK from the broker") from None

    def subscribe(self, topic: str, qos: int = 1) -> list[int]:
        self.c.subscribe(topic, qos)
        return self.suback.get(timeout=10)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1) -> int:
        """Publish and wait for the PUBACK; return its reason code, or
        DROPPED when the broker closed the connection instead (Mosquitto 2.0
        does that for an MQTT 5 publish the ACL denies)."""
        self.c.on_disconnect = lambda *a: self.dropped.set()
        info = self.c.publish(topic, payload, qos=qos)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with self._lock:
                if info.mid in self.puback:
                    return self.puback[info.mid]
            if self.dropped.is_set():
                return DROPPED
            time.sleep(0.01)
        raise AssertionError(f"no PUBACK for {topic}")

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
