"""The one MQTT publisher of farmedge: the gateway's uplink, the alert
recorder, the simulator and the dev tools' counters use it (the edge's
source, which consumes with manual acknowledgement, is
:class:`farmedge.transport.mqtt.MqttSource`).

One :class:`Publisher` is one MQTT connection: a fresh paho client, paho's
own reconnecting turned off. MQTT 5 by default: clean start, no session
kept (session expiry 0), the content type sent as a property. With
``protocol="3.1.1"`` (brokers that refuse MQTT 5, NATS's MQTT listener
among them) there are no properties: content types are not sent (the
contract tells its encodings apart by their first byte) and a received
message has none; ``persistent_session=True`` then connects with clean
session false, so the broker keeps the session of the (stable) client id
across connections and nodes. To reconnect,
make another one (:func:`farmedge.transport.reconnect.reconnect_forever`
does it with the shared back-off). Nothing of a dead connection is resent
behind its owner's back: a message counts as delivered when its PUBACK came
(``on_ack``), and its owner decides what to send again.

Threading model: paho's network thread (``loop_start``), one per
connection. ``publish`` only queues the packet and wakes that thread, so it
never blocks the caller on a slow link: the alert recorder publishes from
the edge's event loop, which carries ingestion, and the gateway's uplink
from the agent's. The same object serves threaded callers (the simulator's
workers, the demo's counter) without an event loop. The callbacks run on
the network thread, or, when ``loop`` is given, on that asyncio loop
(``call_soon_threadsafe``): then the owner's state is touched by one thread
only. The edge's source is loop-driven instead because it must pause
reading for back-pressure and send its acknowledgements in order with its
own processing; a publisher needs neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from .broker import PROTOCOLS, Broker, Protocol
from .errors import BrokerUnreachable, ConnectRefused, NoConnack, NotConnected, TransportError

__all__ = ["Message", "Publisher", "Received"]

#: PUBACK reason codes from 0x80 up: the broker refused the message.
REFUSED = 0x80
#: "Packet too large".
PACKET_TOO_LARGE = 0x95


def _accept_puback_packet_too_large() -> None:
    """Mosquitto 2.0 answers a PUBLISH over its ``message_size_limit`` with
    PUBACK reason 0x95 (packet too large), a code MQTT 5 allows only in
    CONNACK and DISCONNECT. paho takes that PUBACK for a malformed packet
    and drops the connection, so its sender never learns the reason and
    sends the same message again on the next connection, forever. Letting
    paho read 0x95 in a PUBACK turns it into a refused message (``on_ack``
    with 0x95), as the broker meant. Done once, at import; a paho whose
    table looks otherwise is left alone."""
    names = getattr(ReasonCode, "names", None)
    try:
        packets = names[PACKET_TOO_LARGE]["Packet too large"]  # type: ignore[index]
    except (KeyError, TypeError):
        return
    if isinstance(packets, list) and PacketTypes.PUBACK not in packets:
        packets.append(PacketTypes.PUBACK)


_accept_puback_packet_too_large()


@dataclass(frozen=True, slots=True)
class Message:
    """A message to publish (or to leave as the last will)."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    content_type: str | None


def _code(reason: Any) -> int:
    """An int from paho's ReasonCode (or a plain int)."""
    return int(getattr(reason, "value", reason) or 0)


def _varint_len(n: int) -> int:
    """Bytes of MQTT's variable byte integer for ``n``."""
    size = 1
    while n >= 128:
        n //= 128
        size += 1
    return size


def _props(packet: int, content_type: str | None) -> Properties | None:
    if content_type is None:
        return None
    props = Properties(packet)  # type: ignore[no-untyped-call]
    props.ContentType = content_type
    return props


class Publisher:
    """One MQTT connection (5 or 3.1.1) for publishing (QoS 0/1, retained, with a last
    will) and simple subscriptions.

    ``on_ack(mid, code)``: the broker's PUBACK for a QoS 1 message, or the
    hand-over of a QoS 0 one (code 0 success, 16 no matching subscribers,
    0x80 and up refused). ``on_lost(reason)``: the accepted connection
    ended (not called after :meth:`close`). ``on_message(Received)``: a
    message on a subscription."""

    def __init__(self, broker: Broker, *, client_id: str = "", keepalive_s: int = 30,
                 will: Message | None = None, max_inflight: int = 0,
                 protocol: Protocol = "5", persistent_session: bool = False,
                 loop: asyncio.AbstractEventLoop | None = None,
                 on_ack: Callable[[int, int], None] | None = None,
                 on_lost: Callable[[str], None] | None = None,
                 on_message: Callable[[Received], None] | None = None) -> None:
        self.broker = broker
        self.client_id = client_id
        self.keepalive_s = keepalive_s
        self.will = will
        #: In-flight QoS 1 messages paho sends before it queues (0: no limit).
        self.max_inflight = max_inflight
        if protocol not in PROTOCOLS:
            raise TransportError(f"MQTT protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if persistent_session and (protocol != "3.1.1" or not client_id):
            raise TransportError("a persistent session needs MQTT 3.1.1 and a client id")
        self.protocol: Protocol = protocol
        #: 3.1.1 only: clean session false (the broker keeps the session).
        self.persistent_session = persistent_session
        #: The broker's CONNACK said it had kept a session for this client id.
        self.session_present = False
        #: The largest packet the broker takes (its CONNACK's Maximum Packet
        #: Size, MQTT 5); None when it did not say.
        self.max_packet_size: int | None = None
        self._loop = loop
        self._on_ack = on_ack
        self._on_lost = on_lost
        self._on_message = on_message
        self._client: mqtt.Client | None = None
        self._connack = threading.Event()
        self._connack_reason: Any = None
        self._subacks: dict[int, list[int]] = {}
        self._suback = threading.Condition()
        self._closing = False
        #: True from the broker's CONNACK until the connection ends.
        self.connected = False
        #: Set when the connection ended (or never came up).
        self.lost = threading.Event()

    # -- connecting ------------------------------------------------------
    def connect(self, timeout: float = 30.0) -> None:
        """Connect and wait for the broker's CONNACK (blocks up to about
        ``timeout`` for the TCP/TLS connect and as long again for the
        CONNACK). Raises BrokerUnreachable or ConnectRefused, or
        TransportError for TLS files that cannot be read."""
        if self._client is not None:
            raise TransportError("a Publisher connects once: make another one to reconnect")
        v5 = self.protocol == "5"
        if v5:
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                            protocol=mqtt.MQTTv5, reconnect_on_failure=False)
        else:
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                            protocol=mqtt.MQTTv311, clean_session=not self.persistent_session,
                            reconnect_on_failure=False)
        self.broker.configure(c)
        if self.will is not None:
            w = self.will
            c.will_set(w.topic, w.payload, qos=w.qos, retain=w.retain,
                       properties=self._props(PacketTypes.WILLMESSAGE, w.content_type))
        c.max_inflight_messages_set(self.max_inflight)
        c.max_queued_messages_set(0)
        c.connect_timeout = timeout
        c.on_connect = self._cb_connect
        c.on_disconnect = self._cb_disconnect
        c.on_publish = self._cb_publish
        c.on_subscribe = self._cb_subscribe
        c.on_message = self._cb_message
        self._client = c
        where = f"{self.broker.host}:{self.broker.port}"
        try:
            if v5:
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = 0
                rc = c.connect(self.broker.host, self.broker.port, keepalive=self.keepalive_s,
                               clean_start=True, properties=props)
            else:
                rc = c.connect(self.broker.host, self.broker.port, keepalive=self.keepalive_s)
        except (OSError, ValueError) as exc:  # ssl.SSLError and timeouts are OSErrors
            self.lost.set()
            raise BrokerUnreachable(f"cannot reach {where}: {exc}") from None
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.lost.set()
            raise BrokerUnreachable(f"cannot reach {where}: {mqtt.error_string(rc)}")
        c.loop_start()
        if not self._connack.wait(timeout):
            self._stop()
            raise NoConnack(f"no CONNACK from {where} in {timeout:g} s")
        reason = self._connack_reason
        if reason is None:
            self._stop()
            raise NoConnack(f"{where} closed the connection before its CONNACK")
        if getattr(reason, "is_failure", False):
            self._stop()
            raise ConnectRefused(_code(reason), str(reason))
        if self._closing:  # closed while connecting (an abandoned aconnect)
            self._stop()
            raise NotConnected("closed while connecting")

    async def aconnect(self, wait_s: float = 30.0) -> None:
        """:meth:`connect` off the event loop. Cancelled, it closes the
        connection once the blocked connect returns."""
        fut = asyncio.get_running_loop().run_in_executor(None, self.connect, wait_s)
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            self._closing = True
            fut.add_done_callback(self._abandoned)
            raise

    def _abandoned(self, fut: asyncio.Future[None]) -> None:
        """The connect of a cancelled :meth:`aconnect` returned: close what it made."""
        if not fut.cancelled() and fut.exception() is None:
            threading.Thread(target=self.close, daemon=True).start()

    def _props(self, packet: int, content_type: str | None) -> Properties | None:
        """The content-type property (MQTT 5 only: 3.1.1 has no properties)."""
        return _props(packet, content_type) if self.protocol == "5" else None

    # -- sending ---------------------------------------------------------
    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                content_type: str | None = None) -> int:
        """Queue a message on this connection; returns its message id (the
        one ``on_ack`` names). Raises NotConnected when the connection is
        down: nothing is queued for a later one."""
        c = self._client
        if c is None or not self.connected:
            raise NotConnected(f"not connected to {self.broker.redacted}")
        info = c.publish(topic, payload, qos=qos, retain=retain,
                         properties=self._props(PacketTypes.PUBLISH, content_type))
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                raise NotConnected(f"not connected to {self.broker.redacted}")
            raise TransportError(f"publish on {topic} failed: {mqtt.error_string(info.rc)}")
        return int(info.mid)

    def packet_size(self, topic: str, payload: bytes, *, qos: int = 1,
                    content_type: str | None = None) -> int:
        """The bytes of this PUBLISH on the wire (what a broker's Maximum
        Packet Size is compared with)."""
        body = 2 + len(topic.encode()) + (2 if qos else 0) + len(payload)
        if self.protocol == "5":
            props = 0 if content_type is None else 3 + len(content_type.encode())
            body += _varint_len(props) + props
        return 1 + _varint_len(body) + body

    def publish_wait(self, message: Message, timeout: float) -> bool:
        """Publish and wait up to ``timeout`` for the broker to take it
        (PUBACK for QoS 1). False when it did not (or was not connected)."""
        c = self._client
        if c is None or not self.connected:
            return False
        m = message
        info = c.publish(m.topic, m.payload, qos=m.qos, retain=m.retain,
                         properties=self._props(PacketTypes.PUBLISH, m.content_type))
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        with contextlib.suppress(RuntimeError, ValueError):  # the connection went away
            info.wait_for_publish(timeout)
        return bool(info.is_published())

    def subscribe(self, filters: list[str], *, qos: int = 1, timeout: float = 10.0) -> list[int]:
        """Subscribe and wait for the SUBACK; returns its reason codes (the
        granted QoS, or 0x80 and up when refused)."""
        c = self._client
        if c is None or not self.connected:
            raise NotConnected(f"not connected to {self.broker.redacted}")
        with self._suback:
            if self.protocol == "5":
                rc, mid = c.subscribe([(f, SubscribeOptions(qos=qos)) for f in filters])
            else:
                rc, mid = c.subscribe([(f, qos) for f in filters])
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
                raise NotConnected(f"subscribe failed: {mqtt.error_string(rc)}")
            if not self._suback.wait_for(lambda: mid in self._subacks or self.lost.is_set(),
                                         timeout):
                raise TransportError(f"no SUBACK from {self.broker.redacted} in {timeout:g} s")
            if mid not in self._subacks:
                raise NotConnected("connection lost before the SUBACK")
            return self._subacks.pop(mid)

    # -- closing ---------------------------------------------------------
    def close(self, timeout: float = 5.0) -> None:
        """Disconnect (no last will then) and stop the network thread."""
        self._closing = True
        self._stop()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def _stop(self) -> None:
        c = self._client
        if c is None:
            return
        with contextlib.suppress(Exception):
            c.disconnect()
        with contextlib.suppress(Exception):
            c.loop_stop()
        self.connected = False
        self.lost.set()

    # -- paho callbacks (network thread) ---------------------------------
    def _deliver(self, fn: Callable[..., None] | None, *args: Any) -> None:
        if fn is None:
            return
        if self._loop is None:
            fn(*args)
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._loop.call_soon_threadsafe(fn, *args)

    def _cb_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        self._connack_reason = reason
        if not getattr(reason, "is_failure", False):
            self.session_present = bool(getattr(flags, "session_present", False))
            limit = getattr(properties, "MaximumPacketSize", None)
            self.max_packet_size = limit if isinstance(limit, int) and limit > 0 else None
            self.connected = True
        self._connack.set()

    def _cb_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        was = self.connected
        self.connected = False
        self.lost.set()
        self._connack.set()  # a connect still waiting sees no CONNACK
        with self._suback:
            self._suback.notify_all()
        if was and not self._closing:
            self._deliver(self._on_lost, str(reason))

    def _cb_publish(self, client: Any, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        self._deliver(self._on_ack, mid, _code(reason))

    def _cb_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any,
                      properties: Any) -> None:
        with self._suback:
            self._subacks[mid] = [_code(r) for r in reasons]
            self._suback.notify_all()

    def _cb_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        ctype = getattr(props, "ContentType", None) if props is not None else None
        self._deliver(self._on_message, Received(msg.topic, bytes(msg.payload), msg.qos,
                                                 bool(msg.retain), ctype))
