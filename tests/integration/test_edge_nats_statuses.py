"""The county-wide view of the edge's NATS source (farmedge/edge/nats_source.py)
on the real cluster: each edge reads only its own partitions, but hands the
alert engine's county-wide rules (mass offline) every other gateway's status
too, as the servers map it, and none of its own partitions twice."""

from __future__ import annotations

import asyncio
import time

import pytest

from farmedge.contract import encode_status, status_topic
from farmedge.edge.metrics import EdgeMetrics
from farmedge.edge.nats_source import NatsSource
from farmedge.records import StatusEvent
from farmedge.transport.nats import partition_of
from farmedge_dev.natscluster import NatsCluster
from tests.nats_support import Publisher, delete_consumers, source

pytestmark = [pytest.mark.servers, pytest.mark.slow]


async def test_each_edge_sees_the_statuses_of_the_partitions_it_does_not_own(
        nats_cluster: NatsCluster, county: str) -> None:
    cfg = source(nats_cluster)
    seen: dict[str, list[StatusEvent]] = {"edge-a": [], "edge-b": []}
    edges = {name: NatsSource(cfg, name, max_pending_bytes=1 << 20, metrics=EdgeMetrics(),
                              county_status=seen[name].append) for name in seen}
    for e in edges.values():
        e.start(asyncio.get_running_loop())
    pub = Publisher(nats_cluster.nodes[2].mqtt_port).connect()
    try:
        deadline = time.monotonic() + 60
        while not (all(e.owned and e._feed is not None for e in edges.values())
                   and sorted(p for e in edges.values() for p in e.owned)
                   == list(range(cfg.partitions))):
            assert time.monotonic() < deadline, {n: e.owned for n, e in edges.items()}
            await asyncio.sleep(0.1)
        farms = [f"farm-{i}" for i in range(16)]
        for i, f in enumerate(farms):  # payloads told apart (the publisher counts them)
            pub.publish(status_topic(county, f, "gw-1"),
                        encode_status(gateway="gw-1", online=False, reason="lost",
                                      uptime_s=float(i)).decode())
        assert await asyncio.to_thread(pub.wait_acked, len(farms), 60) == len(farms)
        def want() -> dict[str, list[str]]:
            # From the ownership of now: a rebalance meanwhile moves what each
            # edge should have been told of.
            owned = {n: set(e.owned) for n, e in edges.items()}
            return {n: sorted(f for f in farms
                              if partition_of(county, f, cfg.partitions) not in owned[n])
                    for n in edges}

        deadline = time.monotonic() + 60
        while any(not set(want()[n]) <= {ev.farm for ev in seen[n] if ev.county == county}
                  for n in edges):
            assert time.monotonic() < deadline, (seen, want())
            await asyncio.sleep(0.1)
        for n in edges:
            mine = [ev for ev in seen[n] if ev.county == county]
            assert all(ev.gateway == "gw-1" and not ev.status.online for ev in mine)
    finally:
        pub.close()
        for e in edges.values():
            await e.stop()
        await delete_consumers(nats_cluster, cfg)
