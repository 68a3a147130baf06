"""Helpers shared by the tests: polling with a deadline, InfluxDB counts,
and an MQTT publisher that waits for every PUBACK."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from farmedge.contract import encode_json
from farmedge_dev.devservers import influx_query

T = TypeVar("T")


def eventually(fn: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.05,
               what: str = "condition") -> T:
    """Call ``fn`` until it returns a truthy value or raises no AssertionError;
    fail after ``timeout`` seconds. Never a fixed sleep."""
    deadline = time.monotonic() + timeout
    last_exc: AssertionError | None = None
    last: T | None = None
    while True:
        try:
            last = fn()
            if last:
                return last
        except AssertionError as exc:
            last_exc = exc
        if time.monotonic() > deadline:
            if last_exc is not None:
                raise AssertionError(f"{what} not met after {timeout}s: {last_exc}") from last_exc
            raise AssertionError(f"{what} not met after {timeout}s (last value {last!r})")
        time.sleep(interval)


def count(url: str, db: str, measurement: str, field: str, where: str = "") -> int:
    q = f'SELECT count("{field}") FROM "{measurement}"' + (f" WHERE {where}" if where else "")
    try:
        series = influx_query(url, q, db)
    except Exception:
        return 0
    if not series:
        return 0
    values = series[0]["values"]
    assert isinstance(values, list)
    return int(values[0][1])


def make_payload(gateway: str, seq: int, readings: Iterable[dict[str, Any]],
                 *, sent: int | None = None, clock: str = "synced") -> bytes:
    """A JSON telemetry payload, by the contract's encoder. The readings are
    written as they are (tests send malformed ones to see the edge reject
    them one by one); the envelope is checked."""
    return encode_json(gateway=gateway, seq=seq,
                       sent=sent if sent is not None else int(time.time() * 1000),
                       clock=clock, readings=list(readings), check_readings=False)


def raw_payload(gateway: str, seq: int, readings: Iterable[Any], *, sent: int | None = None,
                clock: str = "synced") -> bytes:
    """A telemetry payload written by hand, for tests of what the edge does
    with an envelope the contract's encoders refuse to build (a gateway id
    that is not an id, say). Everything else goes through make_payload."""
    return json.dumps({"v": 1, "gateway": gateway, "seq": seq,
                       "sent": sent if sent is not None else int(time.time() * 1000),
                       "clock": clock, "readings": list(readings)}, ensure_ascii=False).encode()


class Publisher:
    """A QoS 1 publisher (paho, MQTT 5) whose ``publish`` returns after PUBACK."""

    def __init__(self, url: str, client_id: str = "", *, clean: bool = True) -> None:
        u = urlsplit(url)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        if u.username:
            self.client.username_pw_set(u.username, u.password)
        self._connected = threading.Event()
        self.client.on_connect = lambda *a: self._connected.set()
        # paho rescans its in-flight window on every PUBACK: keep it small.
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self.client.connect(u.hostname or "127.0.0.1", u.port or 1883, clean_start=clean)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise AssertionError("publisher could not connect")

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                wait: bool = True) -> mqtt.MQTTMessageInfo:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if wait:
            info.wait_for_publish(30)
        return info

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
