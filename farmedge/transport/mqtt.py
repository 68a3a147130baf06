"""The MQTT side of the edge: paho-mqtt 2.x driven by the asyncio event loop,
with manual acknowledgement, so a message is PUBACKed only once its readings
are durable.

paho runs without a thread of its own: its socket is registered with the
event loop (:class:`~farmedge.transport.onloop.LoopSocket`), so messages and
acknowledgements never cross threads. Reconnection is the
transport's one loop (:func:`farmedge.transport.reconnect.reconnect_forever`)
with the one :class:`farmedge.backoff.Backoff`; the broker URL, credentials
and TLS come from :mod:`farmedge.transport.broker`. Only paho's public API
is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from farmedge.backoff import Backoff
from farmedge.logs import get_logger

from .errors import BrokerUnreachable, ConnectionLost, ConnectRefused
from .onloop import LoopSocket
from .reconnect import reconnect_forever
from .settings import MqttSection

__all__ = ["Inbound", "MqttSource"]
#: MQTT 5 CONNACK reason codes that a retry alone will not cure.
_CREDENTIAL_CODES = {134, 135, 138, 140}


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
    #: MQTT DUP flag: the broker sent this message before (to a connection
    #: that did not acknowledge it), so it may have been handled already.
    dup: bool = False


class MqttSource:
    def __init__(self, settings: MqttSection, *,
                 on_messages: Callable[[list[Inbound]], None]) -> None:
        self._s = settings
        self._on_messages = on_messages
        self._broker = settings.broker
        self._log = get_logger("farmedge.transport.mqtt", broker=self._broker.redacted)
        self._backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
        self._sock: LoopSocket | None = None
        self._pending: list[Inbound] = []
        self._generation = 0
        self._accepting = True
        self._closing = False
        self._lost = asyncio.Event()
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._connack: asyncio.Future[None] | None = None
        self._misc_task: asyncio.Task[None] | None = None
        #: PUBLISH packets read (to tell a read packet from an empty socket).
        self._publishes = 0
        self.connected = False
        #: True once the broker granted the subscriptions on this connection.
        self.subscribed = False
        self.disconnected_since: float | None = time.monotonic()
        self.connects = 0
        #: Connection attempts since start (TCP connect and MQTT CONNECT).
        self.attempts = 0
        #: Why the broker refused the last attempt, for /healthz (None once
        #: a connection is accepted).
        self.refused: str | None = None
        self.refused_hint = ""
        self._client = self._build_client()

    def _build_client(self) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self._s.client_id,
                        protocol=mqtt.MQTTv5, manual_ack=True, reconnect_on_failure=False)
        self._broker.configure(c)
        c.max_queued_messages_set(0)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        return c

    # -- lifecycle -------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sock = LoopSocket(self._client, loop, progress=lambda: self._publishes,
                                after_read=self._deliver, on_closed=self._mark_lost)
        self._task = loop.create_task(self._run())

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The reconnect loop's task (None before :meth:`start`)."""
        return self._task

    async def _run(self) -> None:
        """Connect, stay connected, and reconnect with the capped, jittered
        back-off until stopped. The back-off starts over only after a
        connection that held for Backoff.stable_after_s: a broker that refuses the
        edge (bad credentials, not authorised) or drops it at once sees
        longer and longer waits, up to reconnect_max_s."""
        await reconnect_forever(self._connect, self._session, backoff=self._backoff,
                                stop=self._stopped, log=self._log)

    @property
    def closing(self) -> bool:
        return self._closing

    async def _connect(self) -> None:
        """Returns once the broker accepted the connection (CONNACK); raises
        BrokerUnreachable or ConnectRefused."""
        self._lost.clear()
        self.attempts += 1
        loop = asyncio.get_running_loop()
        # The CONNACK can come (or the socket close, or stop) while the
        # connect is still in the thread: the future is there before it and
        # belongs to this attempt only.
        self._connack = connack = loop.create_future()
        try:
            await self._attempt(loop, connack)
        finally:
            self._connack = None
            if connack.done() and not connack.cancelled():
                connack.exception()  # a loss or stop after a failed connect is no news

    async def _attempt(self, loop: asyncio.AbstractEventLoop,
                       connack: asyncio.Future[None]) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._s.session_expiry_s
        props.ReceiveMaximum = self._s.receive_maximum
        self._log.info("mqtt.connecting", client_id=self._s.client_id)
        b = self._broker
        try:
            # The TCP (and TLS) connect blocks: do it off the loop.
            rc = await loop.run_in_executor(None, functools.partial(
                self._client.connect, b.host, b.port, keepalive=self._s.keepalive_s,
                clean_start=False, properties=props))
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self.refused = None  # not a refusal: the broker cannot be reached
            raise BrokerUnreachable(f"{type(exc).__name__}: {exc}") from None
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.refused = None
            raise BrokerUnreachable(f"connect failed: {mqtt.error_string(rc)}")
        assert self._sock is not None
        self._misc_task = asyncio.create_task(self._sock.misc())
        try:
            await connack
        except BaseException:
            self._misc_task.cancel()
            # Let the broker's close of a refused connection land before the
            # next attempt, so that it cannot be taken for the next one's.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), 5)
            self._sock.force_close()
            raise

    async def _session(self, _: None) -> None:
        try:
            await self._lost.wait()
        finally:
            if self._misc_task is not None:
                self._misc_task.cancel()

    def stop_accepting(self) -> None:
        """Messages that arrive from now on are neither processed nor
        acknowledged: the broker keeps them for the session."""
        self._accepting = False

    async def stop(self) -> None:
        self._accepting = False
        self._closing = True
        self._stopped.set()  # the reconnect loop ends with this connection
        if self._sock is not None:
            if self.connected:
                self._client.disconnect()
                await self._sock.flush(5)
            self._sock.force_close()
        self._lost.set()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(ConnectionLost("stopping"))
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._task, 15)
        self.connected = False

    # -- acknowledgement -------------------------------------------------
    def ack(self, messages: list[Inbound]) -> int:
        """PUBACK what is durable. A message from an earlier connection is not
        acknowledged here: the broker redelivers it and the idempotent write
        stores it once. Returns how many were acknowledged."""
        gen = self._generation
        if not self.connected:
            return 0
        n = 0
        ack = self._client.ack
        for m in messages:
            if m.qos > 0 and m.generation == gen:
                ack(m.mid, m.qos)
                n += 1
        return n

    # -- flow control ----------------------------------------------------
    def pause_reading(self) -> None:
        """Stop reading from the broker (TCP back-pressure keeps the rest at
        the broker); acknowledgements still go out."""
        if self._sock is not None:
            self._sock.pause()

    def resume_reading(self) -> None:
        if self._sock is not None:
            self._sock.resume()

    def _deliver(self) -> None:
        if self._pending:
            items, self._pending = self._pending, []
            self._on_messages(items)

    def _mark_lost(self) -> None:
        was = self.connected
        self.connected = False
        self.subscribed = False
        if self.disconnected_since is None or was:
            self.disconnected_since = time.monotonic()
        self._lost.set()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(ConnectionLost("connection closed before CONNACK"))

    # -- paho callbacks (on the event loop) ------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any,
                    reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            code = int(reason_code.value)
            refused = ConnectRefused(code, str(reason_code), (
                "check [mqtt] username and password, and the broker's account for the edge"
                if code in _CREDENTIAL_CODES else ""))
            self.refused = str(refused)
            self.refused_hint = refused.hint
            if self._connack is not None and not self._connack.done():
                self._connack.set_exception(refused)
            return
        self.refused = None
        self._generation += 1
        self.connected = True
        self.connects += 1
        self.disconnected_since = None
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(None)
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
        self._mark_lost()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._publishes += 1
        if not self._accepting:
            return
        props = getattr(msg, "properties", None)
        ctype = getattr(props, "ContentType", None) if props is not None else None
        self._pending.append(Inbound(
            msg.topic, bytes(msg.payload), msg.mid, msg.qos, bool(msg.retain), ctype,
            int(time.time() * 1000), time.monotonic(), self._generation, bool(msg.dup)))

