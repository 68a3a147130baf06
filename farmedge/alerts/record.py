"""Where alert events go besides people: InfluxDB (measurement ``alerts``,
for Grafana annotations) and the MQTT topic ``farm/v1/{county}/{farm}/alerts``.

On the alerts topic an edge publishes with :class:`MqttRecorder` to its
``[mqtt]`` broker (MQTT 5), and, in cluster mode (``[source] kind =
"nats"``), with :class:`NatsRecorder` over its own NATS connection to the
cluster, whose MQTT listeners hand the events to the topic's subscribers
(the edge's NATS user may not connect over MQTT: docs/scaling.md, "Trust on
NATS").

Inside the edge, events go to InfluxDB as lines through the edge's own sink
(:class:`SinkRecorder` over a :class:`RecordSink`): the same writer, retries
and spool as readings, so they survive an InfluxDB outage.
:class:`InfluxRecorder` writes them with a client of its own, for an engine
run without the edge.

Every raise, clear, reminder, escalation, delivery, failed attempt, message
held for quiet hours and message suppressed by the daily budget is one
:class:`AlertEvent`. Recorders never block the engine: ``record`` queues, and
the recorder's own task does the I/O. docs/alerts.md has the schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from farmedge.backoff import Backoff
from farmedge.contract.topics import alerts_topic
from farmedge.logs import get_logger
from farmedge.storage.lineproto import field_str, float_field, int_field, line
from farmedge.storage.schema import AlertField, Measurement, Tag
from farmedge.storage.settings import InfluxSection
from farmedge.transport.broker import parse_broker_url
from farmedge.transport.publisher import REFUSED, Publisher
from farmedge.transport.reconnect import reconnect_forever

__all__ = ["AlertEvent", "InfluxRecorder", "MemoryRecorder", "MqttRecorder", "NatsRecorder",
           "RecordSink", "Recorder", "SinkRecorder", "line_protocol"]

log = get_logger("farmedge.alerts.record")


@dataclass(frozen=True, slots=True)
class AlertEvent:
    ts_ms: int
    #: raise | worse | clear | remind | escalate | delivered | failed | held | suppressed |
    #: dropped (docs/alerts.md)
    event: str
    county: str
    farm: str
    rule: str              # "<profile>/<rule id>"
    family: str
    severity: str
    scope: str             # sensor | plot | animal | gateway | farm
    scope_id: str
    group: str
    count: int = 1
    value: float | None = None
    text: dict[str, str] = field(default_factory=dict)   # language -> text
    contact: str = ""
    channel: str = ""      # Apprise scheme
    attempt: int = 0
    error: str = ""
    entities: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        d = asdict(self)
        d["v"] = 1
        d["entities"] = list(self.entities)
        d = {k: v for k, v in d.items() if v not in ("", None, ())}
        return json.dumps(d, ensure_ascii=False, separators=(",", ":")).encode()


class Recorder(Protocol):
    def record(self, ev: AlertEvent) -> None: ...

    async def run(self) -> None: ...


def _str(v: str) -> str:
    """A text field: line breaks as spaces (a Grafana annotation's line)."""
    return field_str(v.replace("\r", " ").replace("\n", " "))


def line_protocol(ev: AlertEvent) -> str:
    """The event's line of the ``alerts`` measurement (farmedge/storage/schema.py),
    through the one encoder: free text (a contact's name, a URL's scheme)
    cannot break the line. An empty tag is written ``-``; a value that is
    not a finite number is left out."""
    t, a = Tag, AlertField
    tags = {
        t.COUNTY: ev.county, t.FARM: ev.farm, t.EVENT: ev.event, t.RULE: ev.rule,
        t.FAMILY: ev.family, t.SEVERITY: ev.severity, t.SCOPE: ev.scope, t.SCOPE_ID: ev.scope_id,
    }
    if ev.channel:
        tags[t.CHANNEL] = ev.channel
    if ev.contact:
        tags[t.CONTACT] = ev.contact
    fields: dict[str, str] = {
        a.GROUP: _str(ev.group),
        a.COUNT: int_field(ev.count),
        a.TITLE: _str(f"{ev.event} {ev.rule}"),
        a.TEXT: _str(ev.text.get("zh") or ev.text.get("en") or ev.error or ev.event),
    }
    if "en" in ev.text:
        fields[a.TEXT_EN] = _str(ev.text["en"])
    if ev.value is not None and math.isfinite(ev.value):
        fields[a.VALUE] = float_field(ev.value)
    if ev.attempt:
        fields[a.ATTEMPT] = int_field(ev.attempt)
    if ev.error:
        fields[a.ERROR] = _str(ev.error[:500])
    return line(Measurement.ALERTS, [(k, v or "-") for k, v in tags.items()], fields,
                ev.ts_ms)


class RecordSink(Protocol):
    """Takes line-protocol lines to make durable (the edge's batcher)."""

    def add_points(self, lines: list[str]) -> None: ...


class SinkRecorder:
    """Hands each event, as an ``alerts`` line, to a :class:`RecordSink`
    (the edge's: written with the readings, spooled while InfluxDB is down,
    replayed when it is back). ``record`` only queues the line there."""

    def __init__(self, sink: RecordSink) -> None:
        self._sink = sink
        self.recorded = 0

    def record(self, ev: AlertEvent) -> None:
        self._sink.add_points([line_protocol(ev)])
        self.recorded += 1

    async def run(self) -> None:
        await asyncio.Event().wait()


class MemoryRecorder:
    """Keeps events in a list (tests, the benchmark, ``farmedge alerts`` tools)."""

    def __init__(self) -> None:
        self.events: list[AlertEvent] = []

    def record(self, ev: AlertEvent) -> None:
        self.events.append(ev)

    async def run(self) -> None:
        await asyncio.Event().wait()


class InfluxRecorder:
    """Writes events to InfluxDB with the edge's writer
    (:class:`~farmedge.storage.influx.InfluxWriter`: the ``[influx]``
    section's v1 or v2 API, credentials and gzip), in batches, retrying what
    the writer calls retryable (429, 5xx, no answer) with backoff. A bounded
    queue: past ``max_queue`` events the oldest are dropped and counted."""

    def __init__(self, influx: InfluxSection, *, flush_s: float = 1.0,
                 max_queue: int = 10_000, max_attempts: int = 5) -> None:
        # aiohttp is imported only when a recorder of its own is used
        from farmedge.storage.influx import InfluxWriter

        self._writer = InfluxWriter(influx)
        self.flush_s = flush_s
        self.max_attempts = max_attempts
        self._q: deque[str] = deque(maxlen=max_queue)
        self._wake = asyncio.Event()
        self.dropped = 0
        self.written = 0

    def record(self, ev: AlertEvent) -> None:
        if len(self._q) == self._q.maxlen:
            self.dropped += 1
        self._q.append(line_protocol(ev))
        self._wake.set()

    async def _write(self, lines: list[str]) -> bool:
        body = "\n".join(lines).encode()
        delay = 0.2
        for _ in range(self.max_attempts):
            res = await self._writer.write(body)
            if res.ok:
                return True
            if not res.retryable:
                log.warning("alerts.influx_rejected", events=len(lines), status=res.status,
                            error=res.error)
                return False
            log.debug("alerts.influx_write_failed", status=res.status, error=res.error)
            await asyncio.sleep(min(res.retry_after_s or delay, 5.0))
            delay = min(delay * 2, 5.0)
        return False

    async def run(self) -> None:
        await self._writer.start()
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.flush_s):
                        await self._wake.wait()
                self._wake.clear()
                await self._flush()
        finally:
            try:
                await asyncio.shield(self._flush())
            finally:
                await self._writer.close()

    async def _flush(self) -> None:
        while self._q:
            batch = [self._q.popleft() for _ in range(min(len(self._q), 1000))]
            if await self._write(batch):
                self.written += len(batch)
            else:
                self.dropped += len(batch)


class _Queued:
    """The bounded queue of a recorder that publishes in the background:
    ``record`` only queues; past ``max_queue`` the oldest event is dropped
    and counted."""

    def __init__(self, max_queue: int) -> None:
        self._q: deque[AlertEvent] = deque(maxlen=max_queue)
        self._wake = asyncio.Event()
        self.published = 0
        self.dropped = 0

    def record(self, ev: AlertEvent) -> None:
        if len(self._q) == self._q.maxlen:
            self.dropped += 1
        self._q.append(ev)
        self._wake.set()


class MqttRecorder(_Queued):
    """Publishes each event as JSON (QoS 1, not retained) on the farm's alerts
    topic through the transport's :class:`~farmedge.transport.publisher.Publisher`
    (MQTT 5; paho's network thread, so publishing never blocks the edge's
    loop) and its reconnect loop with the shared back-off. ``record`` only
    queues (bounded: past ``max_queue`` the oldest are dropped and counted);
    an event leaves the recorder on its PUBACK, and what a lost connection
    had in flight goes again, first, on the next one."""

    def __init__(self, *, url: str, client_id: str = "", qos: int = 1,
                 username: str | None = None, password: str | None = None,
                 ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, max_queue: int = 10_000,
                 max_inflight: int = 500) -> None:
        self.broker = parse_broker_url(url, username=username, password=password,
                                       ca_file=ca_file, cert_file=cert_file, key_file=key_file)
        self.client_id = client_id
        self.qos = qos
        self.max_inflight = max_inflight
        super().__init__(max_queue)
        self._inflight: dict[int, AlertEvent] = {}
        self._gone = asyncio.Event()
        self._gen = 0
        self._log = get_logger("farmedge.alerts.record", broker=self.broker.redacted)

    async def run(self) -> None:
        await reconnect_forever(self._connect, self._session, backoff=Backoff(1.0, 30.0),
                                stop=asyncio.Event(), log=self._log)

    async def _connect(self) -> Publisher:
        self._gen += 1
        gen = self._gen
        pub = Publisher(self.broker, client_id=self.client_id, loop=asyncio.get_running_loop(),
                        on_ack=lambda mid, code: self._acked(gen, mid, code),
                        on_lost=lambda reason: self._lost(gen))
        self._gone.clear()
        await pub.aconnect(10.0)
        return pub

    def _acked(self, gen: int, mid: int, code: int) -> None:
        ev = self._inflight.pop(mid, None) if gen == self._gen else None
        if ev is None:
            return
        if code < REFUSED:
            self.published += 1
        else:  # the broker refused it (its ACL): sending it again would not help
            self.dropped += 1
            self._log.warning("alerts.publish_refused", topic=alerts_topic(ev.county, ev.farm),
                              rc=code)
        self._wake.set()

    def _lost(self, gen: int) -> None:
        if gen == self._gen:
            self._gone.set()
            self._wake.set()

    async def _session(self, pub: Publisher) -> None:
        try:
            while not self._gone.is_set():
                while self._q and len(self._inflight) < self.max_inflight:
                    ev = self._q[0]
                    mid = pub.publish(alerts_topic(ev.county, ev.farm), ev.to_json(),
                                      qos=self.qos)
                    self._q.popleft()
                    if self.qos:
                        self._inflight[mid] = ev
                    else:
                        self.published += 1
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await self._wake.wait()
        finally:
            self._gen += 1  # a late PUBACK of this connection counts for nothing
            lost, self._inflight = list(self._inflight.values()), {}
            self._q.extendleft(reversed(lost))
            await asyncio.shield(pub.aclose())


class NatsRecorder(_Queued):
    """Cluster mode (``[source] kind = "nats"``): publishes each event as JSON
    on the farm's alerts subject (``farm.v1.<county>.<farm>.alerts``,
    :func:`farmedge.transport.nats.alerts_subject`) through the edge's own
    NATS connection, ``client()`` (a nats-py client, or None while the edge
    has none). The cluster's MQTT listeners deliver it to the subscribers of
    ``farm/v1/<county>/<farm>/alerts``, as QoS 0: a message published over
    NATS carries no MQTT QoS. The edge's NATS user may publish there and
    may not connect over MQTT (docs/scaling.md, "Trust on NATS"), so this,
    not an MQTT client, is how the alerts topic reaches a cluster.

    ``record`` only queues (bounded: past ``max_queue`` the oldest are
    dropped and counted). An event leaves the recorder once the server has
    it (the flush after its batch was answered); a batch whose publishing or
    flush failed goes again, first, once the client is connected (so an
    event may be published twice, as with QoS 1)."""

    def __init__(self, client: Callable[[], Any], *, max_queue: int = 10_000,
                 batch: int = 500, flush_timeout_s: float = 5.0) -> None:
        # nats-py (the nats extra) is imported only in cluster mode
        from farmedge.transport.nats import alerts_subject

        super().__init__(max_queue)
        self._client = client
        self._subject = alerts_subject
        self.batch = batch
        self.flush_timeout_s = flush_timeout_s
        self._failing = False

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await self._wake.wait()
            self._wake.clear()
            await self._send()

    async def _send(self) -> None:
        while self._q:
            nc = self._client()
            if nc is None or not nc.is_connected:
                return  # kept until the edge's connection is up
            batch = [self._q.popleft() for _ in range(min(len(self._q), self.batch))]
            try:
                for ev in batch:
                    await nc.publish(self._subject(ev.county, ev.farm), ev.to_json())
                await nc.flush(timeout=self.flush_timeout_s)
            except Exception as exc:  # nats-py's errors, a timeout: sent again later
                self._q.extendleft(reversed(batch))
                if not self._failing:
                    log.warning("alerts.nats_publish_failed", events=len(batch),
                                error=f"{type(exc).__name__}: {exc}"[:300])
                self._failing = True
                return
            if self._failing:
                log.info("alerts.nats_publishing_again")
            self._failing = False
            self.published += len(batch)
