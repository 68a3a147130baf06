"""The edge's NATS source adapter (farmedge/transport/nats.py) against the
real three-node cluster: gateways' MQTT 3.1.1 messages read back from the
partition consumers on another node, ids intact; a batch acknowledged only
when the caller says so, kept by "in progress" past ack_wait, delivered again
when never acknowledged; and a node killed while messages flow."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from nats.js import JetStreamContext

from farmedge.contract import status_topic, telemetry_topic
from farmedge.transport import nats as tn
from farmedge.transport.nats_settings import SourceSection
from farmedge_dev.natscluster import NatsCluster
from tests.nats_support import Publisher, delete_consumers, prepare, source, step_down_until

pytestmark = [pytest.mark.servers]


async def test_mqtt_on_node_1_is_read_from_its_partition_on_node_3(
        nats_cluster: NatsCluster, county: str) -> None:
    cfg = source(nats_cluster, urls=[nats_cluster.nodes[2].url])
    await prepare(cfg)
    gateways = [("farm.7", "gw-1"), ("农场二", "网关-3"), ("f_9", "g.x.y")]
    pub = Publisher(nats_cluster.nodes[0].mqtt_port).connect()
    try:
        for farm, gw in gateways:
            pub.publish(telemetry_topic(county, farm, gw), f"t:{farm}:{gw}")
            pub.publish(status_topic(county, farm, gw), f"s:{farm}:{gw}")
        assert pub.wait_acked(2 * len(gateways)) == 2 * len(gateways)
    finally:
        pub.close()
    nc = await tn.connect(cfg, "test-read")
    try:
        js = nc.jetstream()
        seen: dict[str, tn.StoredSubject] = {}
        deadline = time.monotonic() + 30
        while len(seen) < 2 * len(gateways) and time.monotonic() < deadline:
            for p in range(cfg.partitions):
                batch = await tn.PartitionReader(js, cfg, p).fetch(100, timeout_s=0.2)
                for d in batch.deliveries:
                    if d.where.county == county:
                        assert d.where.partition == p
                        seen[d.data.decode()] = d.where
                await batch.durable()
    finally:
        await nc.close()
    for farm, gw in gateways:
        for channel in ("telemetry", "status"):
            where = seen[f"{channel[0]}:{farm}:{gw}"]
            assert (where.county, where.farm, where.gateway, where.channel) == (
                county, farm, gw, channel)
            assert where.partition == tn.partition_of(county, farm, cfg.partitions)
    await delete_consumers(nats_cluster, cfg)


async def _one_partition_batch(cfg: SourceSection, js: JetStreamContext, county: str,
                               farm: str, at_least: int = 1) -> tn.Batch:
    """What the partition delivers, fetched until it holds ``at_least``
    messages (a loaded server hands redeliveries over a few at a time)."""
    p = tn.partition_of(county, farm, cfg.partitions)
    reader = tn.PartitionReader(js, cfg, p)
    got = tn.Batch(p, [])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        batch = await reader.fetch(100, timeout_s=0.5)
        got.deliveries.extend(batch.deliveries)
        if len(got.deliveries) >= at_least:
            return got
    raise AssertionError(f"{len(got.deliveries)} of {at_least} delivered")


async def test_a_batch_is_delivered_again_unless_acknowledged_and_in_progress_holds_it(
        nats_cluster: NatsCluster, county: str) -> None:
    cfg = source(nats_cluster, ack_wait_s=2.0)
    await prepare(cfg)
    pub = Publisher(nats_cluster.nodes[1].mqtt_port).connect()
    try:
        for i in range(5):
            pub.publish(telemetry_topic(county, "farm-a", "gw-1"), f"a{i}")
        assert pub.wait_acked(5) == 5
    finally:
        pub.close()
    nc = await tn.connect(cfg, "test-acks")
    try:
        js = nc.jetstream()
        # Never acknowledged: delivered again after ack_wait.
        first = await _one_partition_batch(cfg, js, county, "farm-a", at_least=5)
        assert sorted(d.data for d in first.deliveries) == [b"a0", b"a1", b"a2", b"a3", b"a4"]
        assert {d.delivered for d in first.deliveries} == {1}
        again = await _one_partition_batch(cfg, js, county, "farm-a", at_least=5)
        assert sorted(d.data for d in again.deliveries) == sorted(d.data for d in first.deliveries)
        assert {d.delivered for d in again.deliveries} == {2}
        # Written for 3 x ack_wait with "in progress" beats: not delivered again.
        p = again.partition
        other = tn.PartitionReader(js, cfg, p)
        async with again.keep_alive(every_s=cfg.ack_wait_s / 3):
            until = time.monotonic() + 3 * cfg.ack_wait_s
            while time.monotonic() < until:
                stolen = await other.fetch(100, timeout_s=0.5)
                assert stolen.deliveries == [], "delivered again while in progress"
        await again.durable()
        # Acknowledged: never again.
        until = time.monotonic() + 2 * cfg.ack_wait_s
        while time.monotonic() < until:
            late = await other.fetch(100, timeout_s=0.5)
            assert late.deliveries == [], "delivered again after the acknowledgement"
    finally:
        await nc.close()
    await delete_consumers(nats_cluster, cfg)


async def test_a_node_killed_mid_stream_loses_nothing_pubacked(
        nats_cluster: NatsCluster, county: str) -> None:
    cfg = source(nats_cluster)
    await prepare(cfg)
    pub_node = nats_cluster.nodes[0]
    leader = await step_down_until(nats_cluster, tn.MQTT_STREAM, avoid=[pub_node.name])
    stored: list[str] = []  # what the "edge" made durable, then acknowledged
    stop = asyncio.Event()

    async def consume() -> None:
        nc = await tn.connect(cfg, "test-consumer")
        try:
            readers = [tn.PartitionReader(nc.jetstream(), cfg, p) for p in range(cfg.partitions)]
            while not stop.is_set():
                for r in readers:
                    try:
                        batch = await r.fetch(200, timeout_s=0.1)
                    except tn.NatsTransportError:
                        await asyncio.sleep(0.2)  # the stream is electing a leader
                        continue
                    stored.extend(d.data.decode() for d in batch.deliveries
                                  if d.where.county == county)
                    with contextlib.suppress(tn.NatsTransportError):
                        await batch.durable()
        finally:
            await nc.close()

    task = asyncio.create_task(consume())
    pub = Publisher(pub_node.mqtt_port).connect()
    n = 1500
    try:
        for i in range(n):
            pub.publish(telemetry_topic(county, f"farm-{i % 13}", "gw-1"), f"m{i}")
            if i == 400:
                nats_cluster.kill(nats_cluster.index_of(leader))
            await asyncio.sleep(0.002)
        acked = await asyncio.to_thread(pub.wait_acked, n, 90)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if pub.acked <= set(stored):
                break
            await asyncio.sleep(0.2)
    finally:
        pub.close()
        stop.set()
        await task
    print(f"published {n}, PUBACKed {acked}, {leader} killed at 400, consumed {len(stored)} "
          f"({len(stored) - len(set(stored))} again)")
    assert acked == n
    assert pub.acked <= set(stored), f"{len(pub.acked - set(stored))} PUBACKed and lost"
    await delete_consumers(nats_cluster, cfg)
