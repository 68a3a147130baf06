"""The partition hooks of farmedge/cluster/source.py (the alert engine's
partition_gained and partition_lost) against the real cluster: a hook that
never returns does not hold up the renewal of the other leases (two edges
each believed they owned every partition when a blocked callback delayed
renewal), and for each partition an edge calls on_gained before its reader
hands in a batch and on_lost after the last one."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.aio.client import Client as NatsClient

from farmedge.cluster import Lease, PartitionedSource
from farmedge.contract import telemetry_topic
from farmedge.transport import nats as tn
from farmedge_dev.natscluster import NatsCluster
from tests.nats_support import Publisher, delete_consumers, source

pytestmark = [pytest.mark.servers, pytest.mark.slow]


async def test_a_hung_hook_holds_up_no_lease_and_hooks_bracket_the_batches(
        nats_cluster: NatsCluster, county: str) -> None:
    # Bounded as a whole: a wait that never ends fails with where it was.
    await asyncio.wait_for(_hung_hooks(nats_cluster, county), 300)


async def _hung_hooks(nats_cluster: NatsCluster, county: str) -> None:
    cfg = source(nats_cluster, lease_ttl_s=3, rebalance_s=0.5)
    events: list[tuple[str, str, int]] = []
    never = asyncio.Event()
    running: list[tuple[NatsClient, PartitionedSource]] = []

    def make(name: str, hang: bool) -> PartitionedSource:
        async def handle(batch: tn.Batch, lease: Lease) -> bool:
            events.append((name, "batch", batch.partition))
            return True

        async def gained(p: int) -> None:
            events.append((name, "gained", p))
            if hang and p % 2 == 0:
                await never.wait()  # a stage that hangs loading its state

        async def lost(p: int) -> None:
            events.append((name, "lost", p))

        return PartitionedSource(running[-1][0], cfg, name, handle, on_gained=gained,
                                 on_lost=lost)

    async def start(name: str, hang: bool) -> PartitionedSource:
        nc = await tn.connect(cfg, name)
        running.append((nc, None))  # type: ignore[arg-type]
        src = make(name, hang)
        running[-1] = (nc, src)
        return await src.start()

    lapsed: list[int] = []

    async def watch(src: PartitionedSource) -> None:
        """Every lease held stays valid by the holder's own clock."""
        while True:
            lapsed.extend(p for p, lease in src.ownership.owned.items() if not lease.valid())
            await asyncio.sleep(0.05)

    pub = Publisher(nats_cluster.nodes[1].mqtt_port).connect()
    watching: list[asyncio.Task[None]] = []
    try:
        a = await start("edge-a", hang=True)
        watching.append(asyncio.create_task(watch(a)))
        deadline = time.monotonic() + 30
        while len(a.owned) < cfg.partitions:
            assert time.monotonic() < deadline, a.owned
            await asyncio.sleep(0.1)
        changes = a.ownership.changes
        # Three lease lifetimes with half the hooks hung: every lease renewed.
        for i in range(200):
            pub.publish(telemetry_topic(county, f"farm-{i % 16}", "gw-1"), f"a{i}")
        await asyncio.sleep(0)
        deadline = time.monotonic() + 3 * cfg.lease_ttl_s
        while time.monotonic() < deadline:
            assert len(a.owned) == cfg.partitions
            await asyncio.sleep(0.2)
        assert a.ownership.changes == changes, "a lease lapsed while a hook hung"
        assert lapsed == [], f"leases not renewed in time while hooks hung: {set(lapsed)}"
        for p in range(cfg.partitions):
            held = await a.store.holder(p)
            assert held is not None and held.owner == "edge-a"
        # A partition whose on_gained hangs is never read; the others are.
        read = {p for n, what, p in events if n == "edge-a" and what == "batch"}
        assert read and all(p % 2 == 1 for p in read), read

        # A second edge joins: edge-a gives back half, also partitions
        # whose hook still hangs; no partition has two owners meanwhile.
        b = await start("edge-b", hang=False)
        watching.append(asyncio.create_task(watch(b)))
        deadline = time.monotonic() + 60
        while not (a.owned and b.owned and set(a.owned) | set(b.owned)
                   == set(range(cfg.partitions))):
            assert not set(a.owned) & set(b.owned)
            assert time.monotonic() < deadline, (a.owned, b.owned)
            await asyncio.sleep(0.1)
        for i in range(200):
            pub.publish(telemetry_topic(county, f"farm-{i % 16}", "gw-1"), f"b{i}")
        assert await asyncio.to_thread(pub.wait_acked, 400, 60) == 400
        deadline = time.monotonic() + 60
        while not {p for n, what, p in events if n == "edge-b" and what == "batch"}:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert not set(a.owned) & set(b.owned)
        assert lapsed == [], f"leases not renewed in time while hooks hung: {set(lapsed)}"
        for name in ("edge-a", "edge-b"):
            mine = [(what, p) for n, what, p in events if n == name]
            for p in range(cfg.partitions):
                seq = [what for what, q in mine if q == p]
                owned = False
                for what in seq:  # gained (batch)* lost, repeated
                    if what == "gained":
                        assert not owned, (name, p, seq)
                        owned = True
                    elif what == "lost":
                        assert owned, (name, p, seq)
                        owned = False
                    else:
                        assert owned, f"{name} read partition {p} outside gained..lost: {seq}"
    finally:
        for t in watching:
            t.cancel()
        never.set()
        pub.close()
        for nc, src in running:
            if src is not None:
                await src.stop()
            await nc.close()
        await delete_consumers(nats_cluster, cfg)
