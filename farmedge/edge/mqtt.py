"""The MQTT side of the edge: a paho-mqtt 2.x client with manual
acknowledgement, so a message is PUBACKed only once its readings are durable.

paho runs its network loop (and its reconnection loop, with exponential
back-off) in its own thread. Messages cross into asyncio in one place: a list
under a lock, drained by a single ``call_soon_threadsafe`` per burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from farmedge.logs import get_logger, redact_url

from .settings import MqttSection

__all__ = ["Inbound", "MqttSource"]


@dataclass(slots=True)
class Inbound:
    topic: str
    payload: bytes
    mid: int
    qos: int
    retain: bool
    content_type: str | None
    received_ms: int
    received_mono: float
    #: Connection the message came on: a PUBACK is only valid on that one.
    generation: int


class MqttSource:
    def __init__(self, settings: MqttSection, *,
                 on_messages: Callable[[list[Inbound]], None]) -> None:
        self._s = settings
        self._on_messages = on_messages
        self._log = get_logger("farmedge.edge.mqtt", broker=redact_url(settings.url))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._buffer: list[Inbound] = []
        self._scheduled = False
        self._generation = 0
        self._accepting = True
        self.connected = False
        #: True once the broker granted the subscriptions on this connection.
        self.subscribed = False
        self.connected_since: float | None = None
        self.disconnected_since: float | None = time.monotonic()
        self.connects = 0
        u = urlsplit(settings.url)
        self._host = u.hostname or "127.0.0.1"
        self._port = u.port or (8883 if settings.tls else 1883)
        self._username = settings.username or (unquote(u.username) if u.username else None)
        pw = settings.password.get_secret_value() if settings.password else None
        self._password = pw or (unquote(u.password) if u.password else None)
        self._client = self._build_client()

    def _build_client(self) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self._s.client_id,
                        protocol=mqtt.MQTTv5, manual_ack=True)
        if self._username:
            c.username_pw_set(self._username, self._password)
        if self._s.tls:
            c.tls_set(ca_certs=str(self._s.ca_file) if self._s.ca_file else None,
                      certfile=str(self._s.cert_file) if self._s.cert_file else None,
                      keyfile=str(self._s.key_file) if self._s.key_file else None,
                      cert_reqs=ssl.CERT_REQUIRED)
        c.reconnect_delay_set(max(1, int(self._s.reconnect_min_s)),
                              max(1, int(self._s.reconnect_max_s)))
        c.max_queued_messages_set(0)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        return c

    # -- lifecycle -------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._s.session_expiry_s
        props.ReceiveMaximum = self._s.receive_maximum
        self._client.connect_async(self._host, self._port, keepalive=self._s.keepalive_s,
                                   clean_start=False, properties=props)
        self._client.loop_start()
        self._log.info("mqtt.connecting", client_id=self._s.client_id)

    def stop_accepting(self) -> None:
        """Messages that arrive from now on are neither processed nor
        acknowledged: the broker keeps them for the session."""
        self._accepting = False

    async def stop(self) -> None:
        self._accepting = False
        await asyncio.to_thread(self._stop_sync)

    def _stop_sync(self) -> None:
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
        self.connected = False

    # -- acknowledgement -------------------------------------------------
    def ack(self, messages: list[Inbound]) -> int:
        """PUBACK what is durable. A message from an earlier connection is not
        acknowledged here: the broker redelivers it and the idempotent write
        stores it once. Returns how many were acknowledged."""
        gen = self._generation
        n = 0
        for m in messages:
            if m.qos > 0 and m.generation == gen:
                self._client.ack(m.mid, m.qos)
                n += 1
        return n

    # -- paho callbacks (paho's thread) ----------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any,
                    reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._log.error("mqtt.connect_refused", reason=str(reason_code))
            return
        with self._lock:
            self._generation += 1
        self.connected = True
        self.connects += 1
        self.connected_since = time.monotonic()
        self.disconnected_since = None
        prefix = f"$share/{self._s.share_group}/" if self._s.share_group else ""
        subs = [(prefix + t, SubscribeOptions(qos=1)) for t in self._s.topics]
        client.subscribe(subs)
        self._log.info("mqtt.connected", session_present=bool(flags.session_present),
                       topics=[s for s, _ in subs])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      reason_codes: Any, properties: Any) -> None:
        bad = [str(rc) for rc in reason_codes if rc.is_failure]
        if bad:
            self._log.error("mqtt.subscribe_refused", reasons=bad)
        else:
            self.subscribed = True

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any,
                       reason_code: Any, properties: Any) -> None:
        if self.connected:
            if self._accepting:
                self._log.warning("mqtt.disconnected", reason=str(reason_code))
            else:
                self._log.info("mqtt.disconnected", reason=str(reason_code))
        self.connected = False
        self.subscribed = False
        self.disconnected_since = time.monotonic()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if not self._accepting or self._loop is None:
            return
        props = getattr(msg, "properties", None)
        ctype = getattr(props, "ContentType", None) if props is not None else None
        item = Inbound(msg.topic, bytes(msg.payload), msg.mid, msg.qos, bool(msg.retain), ctype,
                       int(time.time() * 1000), time.monotonic(), self._generation)
        with self._lock:
            self._buffer.append(item)
            if self._scheduled:
                return
            self._scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            items, self._buffer = self._buffer, []
            self._scheduled = False
        if items:
            self._on_messages(items)
