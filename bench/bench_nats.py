"""The NATS path: a real three-node cluster on this machine (natscluster),
gateways publishing QoS 1 over MQTT 3.1.1 to all three nodes, and one, two or
three edges reading their partitions (farmedge.cluster.PartitionedSource)
with a handler that only counts (no InfluxDB: this is the cluster's and the
source's own cost).

Prints, for 1, 2 and 3 edges: messages/s PUBACKed and messages/s handed to
the edges (first publish to last message handled); then the failover of one
of two edges killed without a word (SIGKILL-like: no release, connection
dropped): time until every partition is owned again and until the first
message of one of its partitions is handled by the survivor.

    .venv/bin/python bench/bench_nats.py [--messages 20000] [--gateways 20]
        [--size 1200] [--ttl 15] [--rebalance 5]

On a shared two-core machine the cluster, the publishers and the edges share
the cores: the figures show overhead and failover, not scale.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from nats.aio.client import Client as NatsClient

from farmedge.cluster import Lease, PartitionedSource
from farmedge.contract import telemetry_topic
from farmedge.transport import nats as tn
from farmedge.transport.nats_settings import SourceSection
from farmedge_dev.natscluster import NatsCluster

PARTITIONS = 16


async def _poll(cond: Callable[[], bool], limit_s: float, step_s: float = 0.01) -> bool:
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if cond():
            return True
        await asyncio.sleep(step_s)
    return cond()


class Gateways:
    """``n`` MQTT 3.1.1 clients, spread over the nodes, counting PUBACKs."""

    def __init__(self, cluster: NatsCluster, n: int, county: str) -> None:
        self.county = county
        self.acked = 0
        self.lock = threading.Lock()
        self.clients: list[mqtt.Client] = []
        for i in range(n):
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{county}-{i}",
                            protocol=mqtt.MQTTv311, clean_session=False)
            c.max_inflight_messages_set(100)
            c.max_queued_messages_set(0)
            c.on_publish = self._on_publish
            node = cluster.nodes[i % len(cluster.nodes)]
            c.connect("127.0.0.1", node.mqtt_port, keepalive=30)
            c.loop_start()
            self.clients.append(c)

    def _on_publish(self, *_: object) -> None:
        with self.lock:
            self.acked += 1

    def publish(self, count: int, payload: bytes, pace_s: float = 0.0) -> None:
        for i in range(count):
            g = i % len(self.clients)
            self.clients[g].publish(telemetry_topic(self.county, f"farm-{g}", f"gw-{g}"),
                                    payload, qos=1)
            if pace_s:
                time.sleep(pace_s)

    def close(self) -> None:
        for c in self.clients:
            c.loop_stop()
            c.disconnect()


class Edges:
    def __init__(self, cfg: SourceSection) -> None:
        self.cfg = cfg
        self.handled = 0
        self.first_after: dict[int, float] = {}
        self.watch: set[int] = set()
        self.running: list[tuple[NatsClient, PartitionedSource]] = []

    async def handle(self, batch: tn.Batch, lease: Lease) -> bool:
        self.handled += len(batch)
        if batch.partition in self.watch and batch.partition not in self.first_after:
            self.first_after[batch.partition] = time.monotonic()
        return True

    async def start(self, name: str) -> PartitionedSource:
        nc = await tn.connect(self.cfg, name)
        src = await PartitionedSource(nc, self.cfg, name, self.handle).start()
        self.running.append((nc, src))
        return src

    def all_owned(self) -> bool:
        owned = [set(s.owned) for _, s in self.running]
        return sum(map(len, owned)) == self.cfg.partitions and \
            set().union(*owned) == set(range(self.cfg.partitions))

    async def wait_owned(self, limit_s: float = 120.0) -> float:
        started = time.monotonic()
        if not await _poll(self.all_owned, limit_s, 0.02):
            raise RuntimeError("partitions not all owned")
        return time.monotonic() - started

    async def stop(self) -> None:
        for nc, src in self.running:
            await src.stop()
            await nc.close()
        self.running.clear()
        # The consumers are the interest of the MQTT stream: remove them.
        nc = await tn.connect(self.cfg, "bench-cleanup")
        js = nc.jetstream()
        for p in range(self.cfg.partitions):
            try:
                await js.delete_consumer(self.cfg.stream, self.cfg.consumer_name(p))
            except Exception:  # already gone
                continue
        await nc.close()


def _cfg(cluster: NatsCluster, args: argparse.Namespace) -> SourceSection:
    return SourceSection(kind="nats", nats_urls=cluster.urls, partitions=PARTITIONS,
                         consumer_prefix="b" + uuid.uuid4().hex[:8] + "-p",
                         lease_bucket="b" + uuid.uuid4().hex[:10], lease_ttl_s=args.ttl,
                         rebalance_s=args.rebalance, fetch_batch=500)


async def throughput(cluster: NatsCluster, args: argparse.Namespace, n_edges: int) -> None:
    cfg = _cfg(cluster, args)
    edges = Edges(cfg)
    for i in range(n_edges):
        await edges.start(f"edge-{i}")
    await edges.wait_owned()
    county = "b" + uuid.uuid4().hex[:8]
    gws = Gateways(cluster, args.gateways, county)
    payload = b"x" * args.size
    started = time.monotonic()
    await asyncio.to_thread(gws.publish, args.messages, payload)
    await _poll(lambda: gws.acked >= args.messages, 300)
    acked_at = time.monotonic()
    await _poll(lambda: edges.handled >= args.messages, 300)
    done = time.monotonic()
    gws.close()
    print(f"{n_edges} edge(s): {args.messages} messages of {args.size} B from {args.gateways} "
          f"gateways: PUBACKed {args.messages / (acked_at - started):,.0f}/s, handled "
          f"{edges.handled} at {edges.handled / (done - started):,.0f}/s "
          f"({done - started:.1f}s)")
    await edges.stop()


async def failover(cluster: NatsCluster, args: argparse.Namespace) -> None:
    cfg = _cfg(cluster, args)
    edges = Edges(cfg)
    await edges.start("edge-a")
    b = await edges.start("edge-b")
    await _poll(lambda: edges.all_owned() and len(b.owned) == cfg.partitions // 2,
                4 * cfg.takeover_bound_s, 0.05)
    county = "b" + uuid.uuid4().hex[:8]
    gws = Gateways(cluster, args.gateways, county)
    stop = threading.Event()

    def steady() -> None:
        while not stop.is_set():
            gws.publish(args.gateways, b"x" * args.size)
            time.sleep(0.05)

    t = threading.Thread(target=steady, daemon=True)
    t.start()
    await asyncio.sleep(2)
    orphaned = set(b.owned)
    nc_b, src_b = edges.running.pop()
    edges.watch = orphaned
    killed = time.monotonic()
    await src_b.stop(release=False)
    await nc_b.close()
    owned_again = await edges.wait_owned()
    await _poll(lambda: len(edges.first_after) >= len(orphaned), 120, 0.02)
    first = min(edges.first_after.values()) - killed if edges.first_after else float("nan")
    last = max(edges.first_after.values()) - killed if edges.first_after else float("nan")
    stop.set()
    t.join()
    gws.close()
    print(f"failover (lease_ttl_s={cfg.lease_ttl_s}, rebalance_s={cfg.rebalance_s}, bound "
          f"{cfg.takeover_bound_s:.0f}s): edge-b's {len(orphaned)} partitions owned again "
          f"after {owned_again:.1f}s; first message of one handled after {first:.1f}s, of "
          f"the last after {last:.1f}s")
    await edges.stop()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--gateways", type=int, default=20)
    ap.add_argument("--size", type=int, default=1200,
                    help="bytes per message (about a 20-reading JSON message)")
    ap.add_argument("--ttl", type=int, default=15)
    ap.add_argument("--rebalance", type=float, default=5.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d, \
            NatsCluster(Path(d), partitions=PARTITIONS) as cluster:
        for n in (1, 2, 3):
            await throughput(cluster, args, n)
        await failover(cluster, args)


if __name__ == "__main__":
    asyncio.run(main())
