"""Edges reading their partitions (farmedge/cluster/source.py) against the
real cluster: gateways publish over MQTT 3.1.1 while one edge crashes and
another joins; every PUBACKed message is handed to a handler, no partition is
handled by two edges at once, and the partitions end owned by the live edges."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from nats.aio.client import Client as NatsClient

from farmedge.cluster import Handler, Lease, PartitionedSource
from farmedge.contract import telemetry_topic
from farmedge.transport import nats as tn
from farmedge.transport.nats_settings import SourceSection
from farmedge_dev.natscluster import NatsCluster
from tests.nats_support import Publisher, delete_consumers, source

pytestmark = [pytest.mark.servers, pytest.mark.slow]


class Edges:
    """Edges sharing one record of what each handled (the "InfluxDB")."""

    def __init__(self, cfg: SourceSection, county: str) -> None:
        self.cfg = cfg
        self.county = county
        self.handled: list[str] = []
        self.by: Counter[str] = Counter()
        self.active: dict[int, str] = {}
        self.overlaps: list[tuple[int, str, str]] = []
        self.running: dict[str, tuple[NatsClient, PartitionedSource]] = {}

    def handler(self, name: str) -> Handler:
        async def handle(batch: tn.Batch, lease: Lease) -> bool:
            p = batch.partition
            other = self.active.get(p)
            if other is not None and other != name:
                self.overlaps.append((p, other, name))
            self.active[p] = name
            try:
                await asyncio.sleep(0.01)  # the write
                mine = [d.data.decode() for d in batch.deliveries
                        if d.where.county == self.county]
                self.handled.extend(mine)
                self.by[name] += len(mine)
                return True
            finally:
                self.active.pop(p, None)
        return handle

    async def start(self, name: str) -> PartitionedSource:
        nc = await tn.connect(self.cfg, name)
        src = await PartitionedSource(nc, self.cfg, name, self.handler(name)).start()
        self.running[name] = (nc, src)
        return src

    async def crash(self, name: str) -> None:
        nc, src = self.running.pop(name)
        await src.stop(release=False)
        await nc.close()

    async def stop_all(self) -> None:
        for name in list(self.running):
            nc, src = self.running.pop(name)
            await src.stop()
            await nc.close()

    def owners(self) -> list[set[int]]:
        return [set(src.owned) for _, src in self.running.values()]


async def test_edges_crash_and_join_while_gateways_publish(
        nats_cluster: NatsCluster, county: str) -> None:
    cfg = source(nats_cluster)
    edges = Edges(cfg, county)
    pub = Publisher(nats_cluster.nodes[0].mqtt_port).connect()
    try:
        a = await edges.start("edge-a")
        await edges.start("edge-b")
        deadline = time.monotonic() + 30
        while set().union(*edges.owners()) != set(range(cfg.partitions)):
            assert time.monotonic() < deadline, edges.owners()
            await asyncio.sleep(0.05)
        n = 1200
        for i in range(n):
            pub.publish(telemetry_topic(county, f"farm-{i % 13}", "gw-1"), f"m{i}")
            if i == 400:
                await edges.crash("edge-b")
            if i == 800:
                c = await edges.start("edge-c")
            await asyncio.sleep(0.003)
        acked = await asyncio.to_thread(pub.wait_acked, n, 60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if pub.acked <= set(edges.handled):
                break
            await asyncio.sleep(0.2)
        owners = edges.owners()
        print(f"PUBACKed {acked} of {n}; handled {len(edges.handled)} "
              f"({len(edges.handled) - len(set(edges.handled))} again) by {dict(edges.by)}; "
              f"edge-a owns {a.owned}, edge-c owns {c.owned}")
        assert acked == n
        assert pub.acked <= set(edges.handled), \
            f"{len(pub.acked - set(edges.handled))} PUBACKed, never handled"
        assert edges.overlaps == []
        assert not owners[0] & owners[1]
        assert owners[0] | owners[1] == set(range(cfg.partitions))
        assert edges.by["edge-c"] > 0
    finally:
        pub.close()
        await edges.stop_all()
        await delete_consumers(nats_cluster, cfg)


async def test_a_consumer_removed_by_hand_is_made_again(nats_cluster: NatsCluster,
                                                       county: str) -> None:
    """An operator removes a partition's consumer while its edge reads it
    (``nats consumer rm``). Its fetches would time out for ever and, on the
    interest stream ``$MQTT_msgs``, nothing published to the partition would
    be kept, PUBACKs and all. The reader notices within ``idle_check_s`` of
    quiet, says so (cluster.consumer_missing), makes it again, and what is
    published afterwards is handled."""
    from structlog.testing import capture_logs

    cfg = source(nats_cluster)
    got: list[str] = []

    async def handle(batch: tn.Batch, lease: Lease) -> bool:
        got.extend(d.data.decode() for d in batch.deliveries if d.where.county == county)
        return True

    nc = await tn.connect(cfg, "edge-a")
    src = PartitionedSource(nc, cfg, "edge-a", handle, idle_check_s=1.0)
    pub = Publisher(nats_cluster.nodes[0].mqtt_port).connect()
    try:
        with capture_logs() as logs:
            await src.start()
            deadline = time.monotonic() + 30
            while len(src.owned) < cfg.partitions:
                assert time.monotonic() < deadline, src.owned
                await asyncio.sleep(0.1)
            p = tn.partition_of(county, "farm-1", cfg.partitions)
            await nc.jetstream().delete_consumer(cfg.stream, cfg.consumer_name(p))
            deadline = time.monotonic() + 30
            while src.consumers_made < 1:
                assert time.monotonic() < deadline, "the consumer was not made again"
                await asyncio.sleep(0.1)
            pub.publish(telemetry_topic(county, "farm-1", "gw-1"), "after")
            assert await asyncio.to_thread(pub.wait_acked, 1, 30) == 1
            deadline = time.monotonic() + 30
            while "after" not in got:
                assert time.monotonic() < deadline, got
                await asyncio.sleep(0.1)
        missing = [e for e in logs if e["event"] == "cluster.consumer_missing"]
        assert [e["partition"] for e in missing] == [p]
        assert missing[0]["log_level"] == "error"
    finally:
        pub.close()
        await src.stop()
        await nc.close()
        await delete_consumers(nats_cluster, cfg)
