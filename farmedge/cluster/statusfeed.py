"""Every gateway's status, whichever partition it is in: for the county-wide
alert rules (mass offline), which must see the whole county while each edge
reads only its own partitions (docs/scaling.md, "Alert state and handover").

A pull consumer of the edge's own (ephemeral, no acknowledgements, from
the messages stored after it starts, replicated as the stream) on the status subjects of every
partition. It only reads: the partition's owner still reads, stores and
acknowledges each status through its own consumer. Made again when it is
lost (a node, the connection); statuses stored meanwhile may be
missed, which costs at most a late or missed mass-offline notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from farmedge.logs import get_logger
from farmedge.transport import nats as tn
from farmedge.transport.nats_settings import SourceSection

__all__ = ["StatusFeed"]

log = get_logger("farmedge.cluster.statusfeed")

#: Called with where a status was stored (partition, county, farm, gateway) and its payload.
OnStatus = Callable[[tn.StoredSubject, bytes], None]


class StatusFeed:
    def __init__(self, nc: NatsClient, cfg: SourceSection, on_status: OnStatus, *,
                 retry_s: float = 1.0, idle_check_s: float = 10.0) -> None:
        self.nc = nc
        self.cfg = cfg
        self.on_status = on_status
        self.retry_s = retry_s
        #: After this long without a status, the feed checks that its
        #: consumer still exists (and makes it again if not).
        self.idle_check_s = idle_check_s
        self.received = 0
        self._sub: JetStreamContext.PullSubscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._consumer: str | None = None

    @property
    def subject(self) -> str:
        return f"{tn.filter_prefix(self.cfg)}{tn.PARTITIONED_PREFIX}.*.*.*.*.status"

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        # Not an ordered consumer: an interest stream ($MQTT_msgs) wants its
        # consumers replicated as it is.
        config = ConsumerConfig(deliver_policy=DeliverPolicy.NEW, ack_policy=AckPolicy.NONE,
                                num_replicas=self.cfg.replicas, inactive_threshold=60.0,
                                description="farmedge: every status, for county-wide rules")
        sub = await self.nc.jetstream().pull_subscribe(self.subject, stream=self.cfg.stream,
                                                       config=config)
        self._consumer = config.name
        return sub

    async def start(self) -> StatusFeed:
        try:
            self._sub = await self._subscribe()
        except nats.errors.Error as exc:
            raise tn.NatsTransportError(f"status feed: {exc}") from None
        self._task = asyncio.create_task(self._run(), name="status-feed")
        return self

    async def _run(self) -> None:
        idle_since = time.monotonic()
        while True:
            try:
                if self._sub is None:
                    self._sub = await self._subscribe()
                    idle_since = time.monotonic()
                msgs = await self._sub.fetch(batch=256, timeout=1.0)
                idle_since = time.monotonic()
            except nats.errors.TimeoutError:
                if time.monotonic() - idle_since > self.idle_check_s:
                    # Quiet, or a consumer that is gone (removed for
                    # inactivity while the connection was away, lost with
                    # its nodes) and times out for ever: ask the servers.
                    idle_since = time.monotonic()
                    try:
                        await self._sub.consumer_info()  # type: ignore[union-attr]
                    except nats.errors.Error as exc:
                        log.warning("cluster.status_feed_lost", error=str(exc)[:300])
                        self._sub = None
                continue
            except nats.errors.Error as exc:
                log.warning("cluster.status_feed_lost", error=str(exc)[:300])
                self._sub = None
                await asyncio.sleep(self.retry_s)
                continue
            for m in msgs:
                self._msg(m)

    def _msg(self, msg: Msg) -> None:
        try:
            where = tn.parse_stored_subject(msg.subject)
        except tn.NatsTransportError:
            return
        self.received += 1
        try:
            self.on_status(where, msg.data)
        except Exception as exc:  # the caller's: never stop the feed
            log.warning("cluster.status_feed_failed", error=str(exc)[:300])

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        if self._consumer is not None and not self.nc.is_closed:
            with contextlib.suppress(nats.errors.Error):
                await self.nc.jetstream().delete_consumer(self.cfg.stream, self._consumer)
