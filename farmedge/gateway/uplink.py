"""The uplink: publish the outbox's readings in batches with QoS 1, delete
them only on PUBACK, reconnect with capped, jittered backoff, keep a retained
status with a last will.

paho-mqtt runs its network loop in its own thread; its callbacks cross into
asyncio only through ``loop.call_soon_threadsafe``. A fresh paho client is
made for every connection, so nothing of a dead connection (queued or
in-flight messages) is resent behind the outbox's back: after a reconnect the
outbox is read again from its oldest reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from farmedge.contract import Encoded, EncodeError, encode_telemetry, status_topic, telemetry_topic
from farmedge.logs import get_logger

from .batching import Batch, RateLimit, ReplayProgress, next_batch
from .clock import ClockSource
from .errors import UplinkError
from .outbox import Outbox, Row
from .settings import GatewaySettings

__all__ = ["Backoff", "Uplink", "UplinkStats"]


@dataclass
class Backoff:
    """Capped exponential backoff with "equal jitter": the n-th wait is drawn
    uniformly from [d/2, d] with d = min(max, min * 2**n), so gateways that
    lost the broker together do not come back together."""

    min_s: float
    max_s: float
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next(self) -> float:
        d = min(self.max_s, self.min_s * 2 ** min(self.attempt, 30))
        self.attempt += 1
        return self.rng.uniform(d / 2, d)

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class UplinkStats:
    messages: int = 0
    readings: int = 0
    bytes: int = 0
    connects: int = 0
    refused: int = 0


class _Disconnected(Exception):
    pass


class Uplink:
    def __init__(self, settings: GatewaySettings, outbox: Outbox, clock: ClockSource, *,
                 status_payload: Callable[[bool], bytes],
                 rng: random.Random | None = None) -> None:
        self.s = settings
        self.outbox = outbox
        self.clock = clock
        #: online -> the status payload (the contract's encode_status).
        self.status_payload = status_payload
        self.topic = telemetry_topic(settings.county, settings.farm, settings.gateway)
        self.status_topic = status_topic(settings.county, settings.farm, settings.gateway)
        self.backoff = Backoff(settings.mqtt.backoff_min_s, settings.mqtt.backoff_max_s,
                               rng or random.Random())
        self.stats = UplinkStats()
        self.connected = False
        self.flushing = False
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._acks: list[tuple[int, int]] = []
        self._connack: asyncio.Future[int] | None = None
        self._gone = asyncio.Event()
        self._inflight: dict[int, list[Row]] = {}
        self._gen = 0
        self._cursor = 0
        self._bucket = RateLimit(settings.uplink.max_rate, settings.uplink.batch_max)
        # Made here, not at import: logging is set up after the imports.
        self.log = get_logger("farmedge.gateway.uplink", gateway=settings.gateway)
        self._replay = ReplayProgress(self.log, batch_max=settings.uplink.batch_max)

    # -- paho callbacks (network thread) --------------------------------------

    def _callbacks(self, client: Any, gen: int) -> None:
        """Wire paho's callbacks to this connection's generation: message ids
        restart with every client, so a late PUBACK of a dead connection must
        never be taken for one of the next."""
        loop = self._loop
        assert loop is not None

        def on_connect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
            code = int(getattr(rc, "value", rc))
            if self._connack is not None:
                loop.call_soon_threadsafe(_set_result, self._connack, code)

        def on_disconnect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
            loop.call_soon_threadsafe(self._lost, gen)

        def on_publish(c: Any, u: Any, mid: int, rc: Any, props: Any) -> None:
            code = int(getattr(rc, "value", rc) or 0)
            loop.call_soon_threadsafe(self._acked, gen, mid, code)

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish

    # -- loop side --------------------------------------------------------------

    def _lost(self, gen: int) -> None:
        if gen == self._gen:
            self._gone.set()
            self._wake.set()

    def _acked(self, gen: int, mid: int, code: int) -> None:
        if gen == self._gen:
            self._acks.append((mid, code))
            self._wake.set()

    def _make_client(self) -> Any:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        m = self.s.mqtt
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=m.client_id or self.s.gateway,
                             protocol=mqtt.MQTTv5, reconnect_on_failure=False)
        u = urlsplit(m.url)
        user = m.username or u.username
        password = m.password.get_secret_value() if m.password else u.password
        if user:
            client.username_pw_set(user, password)
        if u.scheme == "mqtts":
            ctx = ssl.create_default_context(cafile=str(m.ca_file) if m.ca_file else None)
            client.tls_set_context(ctx)
        client.will_set(self.status_topic, self.status_payload(False), qos=1, retain=True)
        client.max_inflight_messages_set(self.s.uplink.max_inflight + 4)
        client.max_queued_messages_set(0)
        self._gen += 1
        self._callbacks(client, self._gen)
        return client

    async def _connect(self) -> Any:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        m = self.s.mqtt
        u = urlsplit(m.url)
        host = u.hostname or "127.0.0.1"
        port = u.port or (8883 if u.scheme == "mqtts" else 1883)
        client = self._make_client()
        self._gone.clear()
        loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0
        try:
            await asyncio.wait_for(
                asyncio.to_thread(client.connect, host, port, m.keepalive_s, clean_start=True,
                                  properties=props),
                m.connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            raise _Disconnected(f"cannot reach {host}:{port}: {exc}") from None
        client.loop_start()
        try:
            code = await asyncio.wait_for(self._connack, m.connect_timeout_s)
        except TimeoutError:
            await self._close(client)
            raise _Disconnected("no CONNACK") from None
        if code >= 0x80:
            self.stats.refused += 1
            await self._close(client)
            raise _Disconnected(f"broker refused the connection (reason code {code:#x})")
        return client

    async def _close(self, client: Any) -> None:
        with contextlib.suppress(Exception):
            client.disconnect()
        await asyncio.to_thread(client.loop_stop)

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, publish, reconnect, until ``stop`` is set and (when
        ``flushing`` is set by the agent) the outbox is empty or the drain
        time is over."""
        self._loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                client = await self._connect()
            except _Disconnected as exc:
                wait = self.backoff.next()
                self.log.warning("mqtt connect failed", reason=str(exc), retry_in_s=round(wait, 1))
                await _wait(stop, wait)
                continue
            self._client = client
            self.connected = True
            self.stats.connects += 1
            self.backoff.reset()
            self.log.info("mqtt connected", url=_redact(self.s.mqtt.url),
                          backlog=self.outbox.depth)
            self.publish_status()
            try:
                await self._pump(stop)
            except _Disconnected as exc:
                self.log.warning("mqtt connection lost", reason=str(exc))
            finally:
                self.connected = False
                self._client = None
            if not stop.is_set():
                await self._close(client)
            # PUBACKs that came in before the connection died still count.
            await asyncio.sleep(0)
            with contextlib.suppress(_Disconnected):
                self._handle_acks()
            self._gen += 1  # anything later of this connection is ignored
            self._inflight.clear()
            self._acks.clear()
            self._cursor = 0
            if stop.is_set():
                with contextlib.suppress(Exception):
                    info = client.publish(self.status_topic, self.status_payload(False),
                                          qos=1, retain=True)
                    await asyncio.to_thread(info.wait_for_publish, 2.0)
                await self._close(client)
                break
            wait = self.backoff.next()
            self.log.info("reconnecting", retry_in_s=round(wait, 1))
            await _wait(stop, wait)

    def publish_status(self) -> None:
        client = self._client
        if client is None or not self.connected:
            return
        payload = self.status_payload(True)
        client.publish(self.status_topic, payload, qos=1, retain=True)

    async def _pump(self, stop: asyncio.Event) -> None:
        up = self.s.uplink
        while True:
            if self._gone.is_set():
                raise _Disconnected("connection closed")
            self._handle_acks()
            if stop.is_set() and (not self.flushing or (not self._inflight
                                  and self._next_batch(final=True) is None)):
                return
            if len(self._inflight) < up.max_inflight:
                batch = self._next_batch(final=self.flushing)
                if batch is not None:
                    rows, clock_state = batch
                    await self._bucket.take(len(rows))
                    self._send(rows, clock_state)
                    continue
            self._wake.clear()
            if not self._acks and not self._gone.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 0.5)

    def _handle_acks(self) -> None:
        acks, self._acks = self._acks, []
        for mid, code in acks:
            rows = self._inflight.pop(mid, None)
            if rows is None:
                continue
            if code >= 0x80:
                self.stats.refused += 1
                raise _Disconnected(f"broker refused a message (reason code {code:#x})")
            self.log.debug("gateway.acked", mid=mid, gen=self._gen, n=len(rows))
            self.outbox.delete(rows)
            self.stats.readings += len(rows)
        self._progress()

    def _progress(self) -> None:
        self._replay.update(self.outbox.depth, self.stats.readings)

    def _next_batch(self, *, final: bool) -> Batch | None:
        return next_batch(self.outbox, self.clock, self.s.uplink, after_id=self._cursor,
                          final=final, log=self.log)

    def _send(self, rows: list[Row], clock_state: str) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        seq = self.outbox.next_seq()
        enc = self._encode(rows, seq, clock_state)
        if enc is None:  # nothing of the batch can be sent
            return
        payload = enc.payload
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ContentType = enc.content_type
        info = self._client.publish(self.topic, payload, qos=1, properties=props)
        if info.rc != 0:
            raise _Disconnected(f"publish failed (rc {info.rc})")
        self._inflight[info.mid] = rows
        self.log.debug("sent", mid=info.mid, gen=self._gen, n=len(rows), seq=seq,
                       first=f"{rows[0].sensor}={rows[0].value:g}",
                       last=f"{rows[-1].sensor}={rows[-1].value:g}")
        self._cursor = rows[-1].id
        self.outbox.mark_sent(self._cursor)
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


def _set_result(fut: asyncio.Future[int], code: int) -> None:
    if not fut.done():
        fut.set_result(code)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _redact(url: str) -> str:
    from farmedge.logs import redact_url

    return redact_url(url)
