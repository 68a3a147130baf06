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

The caller's partition hooks (``on_gained``, ``on_lost``: the alert engine
loading and persisting a partition's state) run in order per partition:
``on_gained(p)`` before the partition's reader fetches anything,
``on_lost(p)`` after its reader stopped, and a partition gained again waits
for the ``on_lost`` before it. They never hold up the ownership round that
renews the other leases: each runs as a task of its own. The round does not
wait for an ``on_gained`` at all (the partition's reader starts when it
ends); it waits for an ``on_lost`` at most ``hook_wait_s`` before the lease
is released, and partitions given back in one round are given back side by
side, so a round lasts about one partition's stop, not the sum of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
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
#: Told of a partition gained (before its reader starts) or lost (after it stopped).
PartitionHook = Callable[[int], Awaitable[None]]


class PartitionedSource:
    def __init__(self, nc: NatsClient, cfg: SourceSection, instance: str, handler: Handler,
                 *, check_mapping: bool = True, retry_delay_s: float = 1.0,
                 on_gained: PartitionHook | None = None,
                 on_lost: PartitionHook | None = None,
                 idle_check_s: float = 10.0) -> None:
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
        self.on_gained = on_gained
        self.on_lost = on_lost
        #: The last hook task of each partition (the next one waits for it).
        self._hooks: dict[int, asyncio.Task[None]] = {}
        self._background: set[asyncio.Future[None]] = set()
        #: When the lease of each owned partition was gained (time.time()).
        self.gained_at: dict[int, float] = {}
        #: Batches acknowledged, and refused by the fence, since the start.
        self.acked = 0
        self.fenced = 0
        #: Partition consumers found missing and made again.
        self.consumers_made = 0
        #: After this long without a message a reader checks that its
        #: partition's consumer still exists.
        self.idle_check_s = idle_check_s

    @property
    def _bound_s(self) -> float:
        return min(self.cfg.ack_wait_s, self.cfg.lease_ttl_s / 6)

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

    @property
    def hook_wait_s(self) -> float:
        """How long an ownership round waits for a partition hook."""
        return min(2.0, self.cfg.lease_ttl_s / 10)

    def _hook(self, p: int, hook: PartitionHook | None, what: str,
              after: asyncio.Task[None] | None = None) -> asyncio.Task[None]:
        """Run ``hook(p)`` after the partition's previous hook (and after
        ``after``), as a task."""
        waits = {t for t in (self._hooks.get(p), after) if t is not None}

        async def run() -> None:
            if waits:
                await asyncio.wait(waits)
            if hook is None:
                return
            try:
                await hook(p)
            except Exception as exc:  # the caller's failure: logged, the partition goes on
                log.warning("cluster.partition_hook_failed", hook=what, partition=p,
                            error=f"{type(exc).__name__}: {exc}"[:300])

        task = asyncio.create_task(run(), name=f"partition-{p}-{what}")
        self._hooks[p] = task
        task.add_done_callback(lambda t: self._hooks.pop(p, None)
                               if self._hooks.get(p) is t else None)
        return task

    async def _gained(self, lease: Lease) -> None:
        p = lease.partition
        self._draining.discard(p)
        self.gained_at[p] = time.time()
        hook = self._hook(p, self.on_gained, "on_gained")
        # Not waited for here: the partition's reader waits for it, and the
        # round that gained this partition goes on to renew and take others
        # (16 slow hooks waited for in turn outlasted the leases).
        self._tasks[p] = asyncio.create_task(self._run(p, hook), name=f"partition-{p}")

    async def _lost(self, partition: int, reason: str) -> None:
        task = self._tasks.pop(partition, None)
        self.gained_at.pop(partition, None)
        if task is None:
            return
        try:
            await self._stop_reader(partition, task, reason)
        finally:
            # After the reader stopped (or was given up on: bounded).
            hook = self._hook(partition, self.on_lost, "on_lost", after=task)
            await asyncio.wait({hook}, timeout=self.hook_wait_s)

    async def _stop_reader(self, partition: int, task: asyncio.Task[None], reason: str) -> None:
        if reason in ("rebalance", "stopped"):
            # Finish the batch in hand, then stop; bounded so that the
            # rebalance round renews the other leases in time (a batch cut
            # short is delivered again to the next owner).
            self._draining.add(partition)
            await asyncio.wait({task}, timeout=self._bound_s)
        task.cancel()
        # Bounded: a partition's loop must never hold up the rebalance round
        # that renews the other leases (asyncio.wait does not wait past it).
        await asyncio.wait({task}, timeout=self._bound_s)
        if not task.done():
            log.warning("cluster.partition_stop_slow", partition=partition)

    async def _run(self, p: int, gained: asyncio.Task[None] | None = None) -> None:
        if gained is not None:
            await asyncio.wait({gained})  # the partition's state first
        reader = tn.PartitionReader(self.nc.jetstream(), self.cfg, p)
        quiet_since = time.monotonic()
        try:
            while p not in self._draining:
                try:
                    batch = await reader.fetch(timeout_s=1.0)
                except tn.NatsTransportError as exc:
                    log.warning("cluster.fetch_failed", partition=p, error=str(exc))
                    await asyncio.sleep(self.retry_delay_s)
                    continue
                if batch.deliveries:
                    quiet_since = time.monotonic()
                    await self._settle(batch)
                elif time.monotonic() - quiet_since > self.idle_check_s:
                    quiet_since = time.monotonic()
                    await self._check_consumer(reader)
        finally:
            closing = asyncio.ensure_future(reader.close())
            await asyncio.wait({closing}, timeout=self._bound_s)

    async def _check_consumer(self, reader: tn.PartitionReader) -> None:
        """A quiet partition, or one whose consumer is gone (removed by hand:
        its fetches time out for ever, and on the interest stream
        ``$MQTT_msgs`` a partition without a consumer keeps nothing, PUBACKs
        and all): ask the servers, and make it again if it is gone."""
        try:
            if await reader.exists():
                return
        except tn.NatsTransportError:
            return  # the cluster unreachable: the fetches say so
        self.consumers_made += 1
        log.error("cluster.consumer_missing", partition=reader.partition,
                  consumer=self.cfg.consumer_name(reader.partition), stream=self.cfg.stream,
                  action="made again; messages stored while it was gone may be lost")
        try:
            await tn.ensure_consumer(self.nc.jetstream(), self.cfg, reader.partition)
        except tn.NatsTransportError as exc:
            log.warning("cluster.consumer_make_failed", partition=reader.partition,
                        error=str(exc))
        await reader.close()  # bound again at the next fetch

    async def _settle(self, batch: tn.Batch) -> None:
        p = batch.partition
        lease = self.ownership.owned.get(p)
        if lease is None:
            return  # lost meanwhile: not acknowledged, the next owner gets it
        async with batch.keep_alive(self.cfg.ack_wait_s / 3):
            try:
                durable = await self.handler(batch, lease)
            except asyncio.CancelledError:
                # The partition stops (lost, given back, the edge stopping):
                # give the batch back now rather than after ack_wait.
                giving_back = asyncio.ensure_future(batch.retry())
                self._background.add(giving_back)
                giving_back.add_done_callback(self._background.discard)
                raise
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
        if release and self._tasks:
            # Every reader finishes its batch in hand at once, not one
            # partition after the other as they are given back below.
            self._draining.update(self._tasks)
            await asyncio.wait(list(self._tasks.values()), timeout=self._bound_s)
        await self.ownership.stop(release=release)
        for p in list(self._tasks):
            await self._lost(p, "stopped" if release else "crashed")
        hooks = list(self._hooks.values())
        if hooks:  # the last on_lost of each partition, bounded
            await asyncio.wait(hooks, timeout=max(self.hook_wait_s, 5.0))
