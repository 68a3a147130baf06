"""The edge's source on a NATS JetStream cluster (``[source] kind = "nats"``):
the partitions this edge owns, as :class:`Inbound` records in an inbox, the
same as :class:`~farmedge.edge.source.Source` offers the batcher.

Built on :class:`farmedge.cluster.PartitionedSource` (leases, one reader per
owned partition, the fence before an acknowledgement). Each batch a reader
fetches is put in the inbox as one :class:`Inbound` per message (its MQTT
topic rebuilt from the stored subject, so validation is the same as for
MQTT), and the reader waits while the batcher validates and the sink writes
them; "in progress" beats hold the batch against ``ack_wait`` meanwhile.
When :meth:`NatsSource.ack` has been called for every message of the batch
(its lines are in InfluxDB; with ``[source] ack_when = "durable"``, in
InfluxDB or the spool), the reader checks its lease and acknowledges the
batch to the stream. With ``ack_when = "influx"`` (the default) the sink
holds a batch InfluxDB cannot take instead of spooling it, so the stream
keeps the backlog while InfluxDB is down. A message the edge never
acknowledges (it died, its lease was lost) is delivered again to the
partition's next owner; the same points written twice are stored once by
InfluxDB.

A bad payload is no exception: validation makes it a dead letter, a line of
the same batch, so it is acknowledged once the dead letter is durable.

At most one batch per owned partition is in the edge at a time (up to
``[source] fetch_batch`` messages each); past ``[ingest] max_pending_mb`` of
payloads a reader waits before it hands its next batch in.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from farmedge.backoff import Backoff
from farmedge.cluster import Lease, PartitionedSource
from farmedge.cluster.statusfeed import StatusFeed
from farmedge.contract import MessageRejected, parse_status, status_topic, telemetry_topic
from farmedge.logs import get_logger, redact_url
from farmedge.records import StatusEvent
from farmedge.transport import nats as tn
from farmedge.transport.mqtt import Inbound
from farmedge.transport.nats_settings import SourceSection

from .metrics import EdgeMetrics

__all__ = ["NatsSource", "PartitionHooks"]

#: The edge's partition hooks: told of a partition gained (before its reader
#: starts) and lost (after it stopped).
PartitionHooks = tuple[Callable[[int], Awaitable[None]], Callable[[int], Awaitable[None]]]
#: Told of the status of a gateway in a partition another edge owns.
CountyStatus = Callable[[StatusEvent], None]


@dataclass(slots=True)
class _Ticket:
    """One fetched batch in the edge: done when every message is durable."""

    left: int
    done: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class NatsSource:
    """``start``, then the batcher takes from ``inbox`` and the delivery loop
    calls ``ack`` with what is durable."""

    def __init__(self, settings: SourceSection, instance: str, *, max_pending_bytes: int,
                 metrics: EdgeMetrics, hooks: PartitionHooks | None = None,
                 county_status: CountyStatus | None = None) -> None:
        self.cfg = settings
        self.instance = instance
        self.inbox: deque[Inbound] = deque()
        #: Set whenever something arrives (the batcher waits on it).
        self.arrived = asyncio.Event()
        self._bytes = 0
        self._max_bytes = max_pending_bytes
        self._room = asyncio.Event()
        self._room.set()
        self._metrics = metrics
        self._hooks = hooks
        self._county_status = county_status
        self._feed: StatusFeed | None = None
        self._tickets: dict[int, _Ticket] = {}
        self._accepting = True
        self._log = get_logger("farmedge.edge.nats", instance=instance)
        self.nc: Any = None
        self.partitioned: PartitionedSource | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        #: Why the last start failed (for /healthz), or "".
        self.error = ""
        self.disconnected_since: float | None = time.monotonic()
        self.connects = 0
        #: Messages pending per owned partition, refreshed by :meth:`refresh_lag`.
        self.lag: dict[int, int] = {}
        self._lag_task: asyncio.Task[None] | None = None
        self._fenced_seen = 0

    # -- what the batcher takes ------------------------------------------
    def take(self) -> Inbound:
        """The oldest message of the inbox (which must not be empty)."""
        msg = self.inbox.popleft()
        self._bytes -= len(msg.payload)
        if self._bytes < self._max_bytes // 2:
            self._room.set()
        return msg

    def oldest_mono(self) -> float | None:
        return self.inbox[0].received_mono if self.inbox else None

    def ack(self, messages: list[Inbound]) -> int:
        """These messages are durable; a batch all of whose messages are is
        acknowledged to the stream (after the fence). Returns how many were
        this source's."""
        n = 0
        for m in messages:
            ticket = self._tickets.pop(id(m), None)
            if ticket is None:
                continue
            n += 1
            ticket.left -= 1
            if ticket.left <= 0 and not ticket.done.done():
                ticket.done.set_result(True)
        return n

    # -- a partition's batch -------------------------------------------------
    async def _handle(self, batch: tn.Batch, lease: Lease) -> bool:
        if not self._accepting:
            return False
        while self._bytes > self._max_bytes:
            self._room.clear()
            await self._room.wait()
        now_ms, now_mono = int(time.time() * 1000), time.monotonic()
        items: list[Inbound] = []
        for d in batch.deliveries:
            w = d.where
            topic = (telemetry_topic(w.county, w.farm, w.gateway) if w.channel == "telemetry"
                     else status_topic(w.county, w.farm, w.gateway))
            items.append(Inbound(topic=topic, payload=d.data, mid=d.stream_seq, qos=1,
                                 retain=False, content_type=None, received_ms=now_ms,
                                 received_mono=now_mono, generation=0, dup=d.delivered > 1))
        if not items:
            return True
        ticket = _Ticket(len(items))
        for m in items:
            self._tickets[id(m)] = ticket
        self.inbox.extend(items)
        self._bytes += sum(len(m.payload) for m in items)
        self._metrics.messages.inc(len(items))
        self.arrived.set()
        try:
            return await ticket.done
        finally:
            # Cancelled (the partition stops): its messages still in the edge
            # are written, but no longer acknowledge anything.
            for m in items:
                self._tickets.pop(id(m), None)

    async def _gained(self, partition: int) -> None:
        self._metrics.lease_changes.labels("gained").inc()
        if self._hooks is not None:
            await self._hooks[0](partition)

    async def _lost(self, partition: int) -> None:
        self._metrics.lease_changes.labels("lost").inc()
        self.lag.pop(partition, None)
        with contextlib.suppress(KeyError):
            self._metrics.partition_lag.remove(str(partition))
        if self._hooks is not None:
            await self._hooks[1](partition)

    # -- the cluster -------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._task = loop.create_task(self._run(), name="nats")

    async def _run(self) -> None:
        """Connect and take the share of partitions, trying again with
        back-off until it works; then stay (the client reconnects itself)."""
        backoff = Backoff(0.5, 30.0)
        while self.partitioned is None:
            try:
                nc = await tn.connect(self.cfg, f"farmedge-edge-{self.instance}")
            except tn.NatsTransportError as exc:
                self.error = str(exc)
                self._log.warning("nats.unreachable", error=self.error[:300])
                await asyncio.sleep(backoff.next())
                continue
            try:
                ps = PartitionedSource(nc, self.cfg, self.instance, self._handle,
                                       on_gained=self._gained, on_lost=self._lost)
                await ps.start()
            except Exception as exc:  # the stream, consumers, mapping or bucket: say why
                self.error = str(exc)
                self._log.error("nats.start_failed", error=self.error[:500])
                with contextlib.suppress(Exception):
                    await nc.close()
                await asyncio.sleep(backoff.next())
                continue
            self.nc, self.partitioned, self.error = nc, ps, ""
            self.connects += 1
            self._log.info("nats.started", servers=[redact_url(u) for u in self.cfg.nats_urls],
                           stream=self.cfg.stream, partitions=self.cfg.partitions)
        while self._county_status is not None and self._feed is None:
            try:
                await self._watch_statuses(self.nc)
            except tn.NatsTransportError as exc:  # county-wide rules see only our partitions
                self._log.warning("nats.status_feed_failed", error=str(exc)[:300])
                await asyncio.sleep(backoff.next())
        await asyncio.Event().wait()  # until cancelled by stop()

    async def _watch_statuses(self, nc: Any) -> None:
        """Every gateway's status (farmedge/cluster/statusfeed.py: a read-only
        consumer on every partition's status subjects), for the county-wide
        rules of the alert engine; those of partitions this edge owns come
        through its own readers, as every message does."""

        def on_status(w: tn.StoredSubject, data: bytes) -> None:
            if self.partitioned is None or w.partition in self.partitioned.ownership.owned:
                return
            try:
                st = parse_status(data)
            except MessageRejected:
                return  # its owner dead-letters it
            if st.gateway != w.gateway:
                return
            assert self._county_status is not None
            self._county_status(StatusEvent(w.county, w.farm, w.gateway, st,
                                            int(time.time() * 1000)))

        self._feed = await StatusFeed(nc, self.cfg, on_status).start()

    def stop_accepting(self) -> None:
        self._accepting = False

    async def stop(self) -> None:
        """Stop the readers and give the partitions back (once)."""
        if self._stopped:
            return
        self._stopped = True
        self._accepting = False
        if self._lag_task is not None:
            self._lag_task.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if self._feed is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._feed.stop(), 5)
        if self.partitioned is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.partitioned.stop(), 30)
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), 5)

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    # -- state for health and metrics ---------------------------------------
    @property
    def connected(self) -> bool:
        ok = self.nc is not None and bool(self.nc.is_connected)
        if ok:
            self.disconnected_since = None
        elif self.disconnected_since is None:
            self.disconnected_since = time.monotonic()
        return ok

    @property
    def owned(self) -> list[int]:
        return self.partitioned.owned if self.partitioned is not None else []

    def trouble(self, now: float | None = None) -> str | None:
        if self.connected:
            return None
        now = time.monotonic() if now is None else now
        since = self.disconnected_since or now
        if self.error:
            return f"NATS: {self.error[:300]} (for {now - since:.0f} s)"
        if now - since > 10:
            return f"NATS cluster unreachable for {now - since:.0f} s"
        return None

    def details(self) -> dict[str, Any]:
        ps = self.partitioned
        return {
            "source": "nats",
            "nats_connected": self.connected,
            "nats_server": (redact_url(str(self.nc.connected_url.geturl()))
                            if self.connected and self.nc.connected_url else None),
            "instance": self.instance,
            "partitions": self.cfg.partitions,
            "partitions_owned": self.owned,
            "partition_lag": {str(p): n for p, n in sorted(self.lag.items())},
            "instances": ps.ownership.instances if ps is not None else [],
            "lease_changes": ps.ownership.changes if ps is not None else 0,
            "batches_acked": ps.acked if ps is not None else 0,
            "acks_fenced": ps.fenced if ps is not None else 0,
            "consumers_made_again": ps.consumers_made if ps is not None else 0,
        }

    def update_gauges(self) -> None:
        """Owned partitions now; the lag is refreshed in the background
        (a request per partition, never waited for here)."""
        m = self._metrics
        m.nats_connected.set(1 if self.connected else 0)
        m.partitions_owned.set(len(self.owned))
        ps = self.partitioned
        if ps is not None and ps.fenced > self._fenced_seen:
            m.acks_fenced.inc(ps.fenced - self._fenced_seen)
            self._fenced_seen = ps.fenced
        if ps is not None and self.connected and (self._lag_task is None
                                                   or self._lag_task.done()):
            self._lag_task = asyncio.create_task(self._refresh_lag(ps), name="nats-lag")

    async def _refresh_lag(self, ps: PartitionedSource) -> None:
        try:
            lag = await asyncio.wait_for(ps.lag(), 10)
        except Exception as exc:  # a slow or failed round: the last figures stay
            self._log.debug("nats.lag_failed", error=str(exc)[:200])
            return
        owned = set(self.owned)
        self.lag = {p: n for p, n in lag.items() if p in owned}
        for p, n in self.lag.items():
            self._metrics.partition_lag.labels(str(p)).set(n)
