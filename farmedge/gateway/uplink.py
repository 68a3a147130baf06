"""The uplink: publish the outbox's readings in batches with QoS 1, delete
them only on PUBACK, reconnect with capped, jittered backoff, keep a retained
status with a last will.

The MQTT client is the transport's :class:`~farmedge.transport.publisher.Publisher`
(paho's network thread; its callbacks reach this loop through
``call_soon_threadsafe``), and reconnection its shared loop with the shared
:class:`~farmedge.backoff.Backoff`. A fresh connection (and paho client) is
made every time, so nothing of a dead connection (queued or in-flight
messages) is resent behind the outbox's back: after a reconnect the outbox
is read again from its oldest reading.

``[mqtt] protocol = "3.1.1"`` (brokers that refuse MQTT 5, NATS's MQTT
listener among them) connects with a persistent session (clean session
false, the stable client id) and no properties: the compact encoding is
told from JSON by its first byte. With ``[mqtt] urls`` (a cluster's nodes)
each connect goes to one node; after a failed connect or a lost connection
the next one is tried (round robin, the back-off between attempts). The
order is the gateway's own, from its client id (BrokerRing): each gateway
starts at its own node, always the same one, and a fleet spreads evenly
over the nodes, also over the survivors when one dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass

from farmedge.backoff import Backoff
from farmedge.contract import Encoded, EncodeError, encode_telemetry, status_topic, telemetry_topic
from farmedge.logs import get_logger
from farmedge.transport.broker import BrokerRing
from farmedge.transport.errors import BrokerUnreachable, ConnectRefused, TransportError
from farmedge.transport.publisher import Message, Publisher
from farmedge.transport.reconnect import reconnect_forever

from .batching import Batch, ClockState, RateLimit, ReplayProgress, next_batch
from .clock import ClockSource
from .errors import UplinkError
from .outbox import Outbox, Row
from .refusal import Refusals, reason_name
from .resend import Resend
from .settings import GatewaySettings

__all__ = ["Uplink", "UplinkStats"]


@dataclass
class UplinkStats:
    messages: int = 0
    readings: int = 0
    bytes: int = 0
    connects: int = 0
    #: Connects the broker refused (refused messages: Uplink.resend).
    refused: int = 0


class _Disconnected(TransportError):
    pass


class Uplink:
    def __init__(self, settings: GatewaySettings, outbox: Outbox, clock: ClockSource, *,
                 status_payload: Callable[[bool, str | None], bytes],
                 rng: random.Random | None = None) -> None:
        self.s = settings
        self.outbox = outbox
        self.clock = clock
        #: (online, reason) -> the status payload (the contract's encode_status).
        self.status_payload = status_payload
        self.topic = telemetry_topic(settings.county, settings.farm, settings.gateway)
        self.status_topic = status_topic(settings.county, settings.farm, settings.gateway)
        self.backoff = Backoff(settings.mqtt.backoff_min_s, settings.mqtt.backoff_max_s,
                               rng or random.Random())
        self.stats = UplinkStats()
        #: The brokers, tried in turn, in an order of this gateway's own (from
        #: its client id): the fleet spreads over a cluster's nodes.
        self.ring = BrokerRing(settings.mqtt.brokers,
                               key=settings.mqtt.client_id or settings.gateway)
        self.connected = False
        self.flushing = False
        self._client: Publisher | None = None
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._acks: list[tuple[int, int]] = []
        self._gone = asyncio.Event()
        self._inflight: dict[int, Batch] = {}
        self._sizes: dict[int, int] = {}  # of the messages in flight, bytes
        self._status_mids: set[int] = set()
        self._gen = 0
        self._cursor = 0
        self._bucket = RateLimit(settings.uplink.max_rate, settings.uplink.batch_max)
        # Made here, not at import: logging is set up after the imports.
        self.log = get_logger("farmedge.gateway.uplink", gateway=settings.gateway)
        self._replay = ReplayProgress(self.log, batch_max=settings.uplink.batch_max)
        #: What a refused message leads to (refusal.py), with a back-off of its own.
        self.refusals = Refusals(Backoff(settings.mqtt.backoff_min_s, settings.mqtt.backoff_max_s,
                                         rng or random.Random()), self.log)
        self.resend = Resend(self.refusals, outbox, clock, self.log)

    # -- connection callbacks (run on the loop) ------------------------------

    def _lost(self, gen: int) -> None:
        if gen == self._gen:
            self._gone.set()
            self._wake.set()

    def _acked(self, gen: int, mid: int, code: int) -> None:
        if gen == self._gen:
            self._acks.append((mid, code))
            self._wake.set()

    def _make_publisher(self) -> Publisher:
        """A connection of its own generation: message ids restart with
        every connection, so a late PUBACK of a dead one must never be taken
        for one of the next."""
        m = self.s.mqtt
        self._gen += 1
        gen = self._gen
        return Publisher(
            self.ring.current, client_id=m.client_id or self.s.gateway,
            keepalive_s=m.keepalive_s,
            will=Message(self.status_topic, self.status_payload(False, "lost"), qos=1,
                         retain=True),
            max_inflight=self.s.uplink.max_inflight + 4, protocol=m.protocol,
            persistent_session=m.protocol == "3.1.1", loop=self._loop,
            on_ack=lambda mid, code: self._acked(gen, mid, code),
            on_lost=lambda reason: self._lost(gen))

    async def _connect(self) -> Publisher:
        m = self.s.mqtt
        pub = self._make_publisher()
        self._gone.clear()
        if len(self.ring) > 1:
            self.log.info("gateway.connecting", url=pub.broker.redacted, node=self.ring.where())
        try:
            # connect_timeout_s for the TCP/TLS connect, as long for the CONNACK.
            await asyncio.wait_for(pub.aconnect(m.connect_timeout_s),
                                   2 * m.connect_timeout_s + 5)
        except ConnectRefused:
            self.stats.refused += 1
            self._next_broker(pub, "refused")
            raise
        except TimeoutError:
            self._next_broker(pub, "no CONNACK")
            raise BrokerUnreachable("no CONNACK") from None
        except TransportError as exc:
            self._next_broker(pub, str(exc))
            raise
        return pub

    def _next_broker(self, pub: Publisher, why: str) -> None:
        """The next attempt goes to the next node (with several URLs)."""
        if len(self.ring) > 1:
            nxt = self.ring.advance()
            self.log.warning("gateway.next_broker", failed=pub.broker.redacted, why=why,
                             next=nxt.redacted, node=self.ring.where())

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, publish, reconnect, until ``stop`` is set and (when
        ``flushing`` is set by the agent) the outbox is empty or the drain
        time is over."""
        self._loop = asyncio.get_running_loop()
        self._stop = stop
        await reconnect_forever(self._connect, self._session, backoff=self.backoff, stop=stop,
                                log=self.log)

    async def _session(self, pub: Publisher) -> None:
        stop = self._stop
        self._client = pub
        self.connected = True
        self.stats.connects += 1
        self.log.info("gateway.connected", url=pub.broker.redacted, backlog=self.outbox.depth,
                      protocol=pub.protocol, session_present=pub.session_present,
                      node=self.ring.where())
        self.publish_status()
        try:
            await self._pump(stop)
        except _Disconnected as exc:
            self.log.warning("gateway.connection_lost", reason=str(exc), url=pub.broker.redacted)
        finally:
            self.connected = False
            self._client = None
        if not stop.is_set():
            self._next_broker(pub, "connection lost")
        if not stop.is_set():
            await pub.aclose()
        # PUBACKs that came in before the connection died still count.
        await asyncio.sleep(0)
        with contextlib.suppress(_Disconnected):
            self._handle_acks()
        self._gen += 1  # anything later of this connection is ignored
        self._inflight.clear()
        self._sizes.clear()
        self._status_mids.clear()
        self.resend.connection_ended()  # the outbox is read again from its oldest
        self._acks.clear()
        self._cursor = 0
        if stop.is_set():
            offline = Message(self.status_topic, self.status_payload(False, "stopping"), qos=1,
                              retain=True)
            await asyncio.to_thread(pub.publish_wait, offline, 2.0)
            await pub.aclose()

    def publish_status(self) -> None:
        client = self._client
        if client is None or not self.connected:
            return
        payload = self.status_payload(True, None)
        with contextlib.suppress(TransportError):  # lost: the next connection sends it
            self._status_mids.add(client.publish(self.status_topic, payload, qos=1,
                                                 retain=True))

    async def _pump(self, stop: asyncio.Event) -> None:
        up = self.s.uplink
        while True:
            if self._gone.is_set():
                raise _Disconnected("connection closed")
            self._handle_acks()
            if stop.is_set() and (not self.flushing or (not self._inflight and not self.resend.retry
                                  and self._next_batch(final=True) is None)):
                return
            wait = self.refusals.waiting()
            if not wait and len(self._inflight) < up.max_inflight:
                batch = self._take()
                if batch is not None:
                    rows, clock_state = batch
                    await self._bucket.take(len(rows))
                    self._send(rows, clock_state)
                    continue
            self._wake.clear()
            if not self._acks and not self._gone.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), min(0.5, wait) if wait else 0.5)

    def _handle_acks(self) -> None:
        acks, self._acks = self._acks, []
        for mid, code in acks:
            batch = self._inflight.pop(mid, None)
            if batch is None:
                if mid in self._status_mids:
                    self._status_mids.discard(mid)
                    if code >= 0x80:
                        self.log.warning("gateway.status_refused", code=code,
                                         reason=reason_name(code))
                continue
            rows = batch[0]
            size = self._sizes.pop(mid, None)
            if code >= 0x80:
                self.resend.refused(batch, code, size=size)
                continue
            self.log.debug("gateway.acked", mid=mid, gen=self._gen, n=len(rows))
            self.resend.accepted()
            self.outbox.delete(rows)
            self.stats.readings += len(rows)
        self._progress()

    def _take(self) -> Batch | None:
        """What to send next: a part of a refused message, else the
        outbox's next batch; no more readings than a "packet too large"
        left as the limit (the rest is after the cursor)."""
        again = self.resend.take()
        if again is not None:
            return again
        batch = self._next_batch(final=self.flushing)
        limit = self.refusals.batch_limit
        if batch is not None and limit is not None and len(batch[0]) > limit:
            return batch[0][:limit], batch[1]
        return batch

    def _progress(self) -> None:
        self._replay.update(self.outbox.depth, self.stats.readings)

    def _next_batch(self, *, final: bool) -> Batch | None:
        return next_batch(self.outbox, self.clock, self.s.uplink, after_id=self._cursor,
                          final=final, log=self.log)

    def _send(self, rows: list[Row], clock_state: ClockState) -> None:
        seq = self.outbox.next_seq()
        enc = self._encode(rows, seq, clock_state)
        if enc is None:  # nothing of the batch can be sent
            return
        payload = enc.payload
        client = self._client
        if client is None:
            raise _Disconnected("not connected")
        size = client.packet_size(self.topic, payload, content_type=enc.content_type)
        if self.resend.too_big(size, client.max_packet_size):
            self._cursor = max(self._cursor, rows[-1].id)
            self.resend.not_sent((rows, clock_state), size, client.max_packet_size)
            return
        try:
            mid = client.publish(self.topic, payload, qos=1, content_type=enc.content_type)
        except TransportError as exc:
            raise _Disconnected(f"publish failed: {exc}") from None
        self._inflight[mid] = (rows, clock_state)
        self._sizes[mid] = size
        self.log.debug("gateway.sent", mid=mid, gen=self._gen, n=len(rows), seq=seq,
                       first=f"{rows[0].sensor}={rows[0].value:g}",
                       last=f"{rows[-1].sensor}={rows[-1].value:g}")
        self._cursor = max(self._cursor, rows[-1].id)
        self.outbox.mark_sent(rows)
        self.stats.messages += 1
        self.stats.bytes += len(payload)


    def _encode(self, rows: list[Row], seq: int, clock_state: str) -> Encoded | None:
        """The batch's payload, through the contract. A reading the contract
        does not allow (one kept by an older version, say: it would be
        refused at every try and block the outbox) is dropped, counted in
        ``dropped`` and logged; ``rows`` loses it. None when no reading is
        left."""
        up = self.s.uplink
        while rows:
            try:
                return encode_telemetry(gateway=self.s.gateway, seq=seq,
                                        sent=self.clock.wall_ms(), clock=clock_state,
                                        readings=[r.wire() for r in rows],
                                        encoding=up.encoding, compression=up.compression)
            except EncodeError as exc:
                if exc.index is None:
                    raise UplinkError(f"cannot encode a message: {exc}") from exc
                bad = rows.pop(exc.index)
                self.outbox.discard([bad])
                self.log.error("gateway.reading_unsendable", sensor=bad.sensor, kind=bad.kind,
                               ts=bad.ts, error=str(exc), dropped_total=self.outbox.dropped)
        return None
