"""Reading the partitions this instance owns: leases and consumers together.

:class:`PartitionedSource` is what an edge's NATS source is built on. It makes
the stream and the partition consumers if missing, checks that the servers
partition farms as ``[source] partitions`` says, takes its fair share of
leases (:class:`~farmedge.cluster.ownership.Ownership`), and for each
partition it owns runs a loop that fetches a batch, hands it to the caller's
``handler`` while "in progress" beats hold it against ``ack_wait``, and, when
the handler says the batch is durable, checks the lease (the fence) and only
then acknowledges it. A batch whose handler fails, or whose lease was lost
meanwhile, is not acknowledged: the partition's next owner gets it again
(the same points written twice are stored once).

A partition given back on a rebalance finishes its current batch first; one
lost (taken, expired) stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NatsClient

from farmedge.logs import get_logger
from farmedge.transport import nats as tn
from farmedge.transport.nats_settings import SourceSection

from .leases import Fenced, Lease, LeaseStore
from .ownership import Ownership

__all__ = ["Handler", "PartitionedSource"]

log = get_logger("farmedge.cluster.source")

#: Called with each batch and the lease it was read under; returns True once
#: the batch is durable (then acknowledged), False to have it delivered again.
Handler = Callable[[tn.Batch, Lease], Awaitable[bool]]


class PartitionedSource:
    def __init__(self, nc: NatsClient, cfg: SourceSection, instance: str, handler: Handler,
                 *, check_mapping: bool = True, retry_delay_s: float = 1.0) -> None:
        self.nc = nc
        self.cfg = cfg
        self.instance = instance
        self.handler = handler
        self.check_mapping = check_mapping
        self.retry_delay_s = retry_delay_s
        self.store = LeaseStore(nc.jetstream(), cfg, instance)
        self.ownership = Ownership(self.store, on_gained=self._gained, on_lost=self._lost)
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._draining: set[int] = set()
        #: Batches acknowledged, and refused by the fence, since the start.
        self.acked = 0
        self.fenced = 0

    async def start(self) -> PartitionedSource:
        js = self.nc.jetstream()
        await tn.ensure_stream(js, self.cfg)
        await tn.ensure_consumers(js, self.cfg)
        if self.check_mapping:
            await tn.check_partition_mapping(self.nc, self.cfg)
        await self.store.open()
        self.ownership.start()
        return self

    @property
    def owned(self) -> list[int]:
        return sorted(self.ownership.owned)

    async def lag(self) -> dict[int, int]:
        """Messages not yet delivered, per owned partition."""
        js = self.nc.jetstream()
        out: dict[int, int] = {}
        for p in self.owned:
            with contextlib.suppress(tn.NatsTransportError):
                out[p] = await tn.PartitionReader(js, self.cfg, p).pending()
        return out

    # ------------------------------------------------------------ partitions

    async def _gained(self, lease: Lease) -> None:
        p = lease.partition
        self._draining.discard(p)
        self._tasks[p] = asyncio.create_task(self._run(p), name=f"partition-{p}")

    async def _lost(self, partition: int, reason: str) -> None:
        task = self._tasks.pop(partition, None)
        if task is None:
            return
        if reason in ("rebalance", "stopped"):
            # Finish the batch in hand, then stop; bounded so that the
            # rebalance round renews the other leases in time (a batch cut
            # short is delivered again to the next owner).
            self._draining.add(partition)
            wait = min(self.cfg.ack_wait_s, self.cfg.lease_ttl_s / 3)
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), wait)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self, p: int) -> None:
        reader = tn.PartitionReader(self.nc.jetstream(), self.cfg, p)
        try:
            while p not in self._draining:
                try:
                    batch = await reader.fetch(timeout_s=1.0)
                except tn.NatsTransportError as exc:
                    log.warning("cluster.fetch_failed", partition=p, error=str(exc))
                    await asyncio.sleep(self.retry_delay_s)
                    continue
                if batch.deliveries:
                    await self._settle(batch)
        finally:
            await reader.close()

    async def _settle(self, batch: tn.Batch) -> None:
        p = batch.partition
        lease = self.ownership.owned.get(p)
        if lease is None:
            return  # lost meanwhile: not acknowledged, the next owner gets it
        async with batch.keep_alive(self.cfg.ack_wait_s / 3):
            try:
                durable = await self.handler(batch, lease)
            except Exception as exc:  # the caller's failure: deliver the batch again
                log.warning("cluster.handler_failed", partition=p, error=str(exc))
                durable = False
        if not durable:
            await batch.retry(self.retry_delay_s)
            return
        lease = self.ownership.owned.get(p, lease)
        try:
            await self.store.check(lease)
        except Fenced as exc:
            self.fenced += 1
            log.warning("cluster.ack_fenced", partition=p, error=str(exc))
            return
        try:
            await batch.durable()
            self.acked += 1
        except tn.NatsTransportError as exc:
            log.warning("cluster.ack_failed", partition=p, error=str(exc))

    # ------------------------------------------------------------ stopping

    async def stop(self, *, release: bool = True) -> None:
        """Stop reading; with ``release`` give the partitions back."""
        await self.ownership.stop(release=release)
        for p in list(self._tasks):
            await self._lost(p, "stopped" if release else "crashed")
