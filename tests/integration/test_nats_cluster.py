"""The three-node NATS cluster the NATS tests run on (tools/farmedge_dev/natscluster.py):
routes, JetStream with a meta leader, an MQTT listener on every node, the
partition mapping, and a node killed and restarted on its ports and data."""

from __future__ import annotations

import asyncio
import time
import uuid

import nats
import nats.errors
import pytest
from nats.js.api import StreamConfig

from farmedge.transport import nats as tn
from farmedge_dev.natscluster import MIN_VERSION, NatsCluster, nats_server_version
from tests.conftest import NATS_PARTITIONS
from tests.nats_support import source

pytestmark = [pytest.mark.servers]


def test_the_server_is_one_whose_mqtt_takes_dots_and_whose_kv_has_key_ttls() -> None:
    assert nats_server_version() >= MIN_VERSION


async def test_three_nodes_routed_with_jetstream_and_mqtt(nats_cluster: NatsCluster) -> None:
    names = {n.name for n in nats_cluster.nodes}
    assert len(names) == 3
    for node in nats_cluster.nodes:
        assert node.routed_to() == names - {node.name}
        status, _ = node.monitor("/healthz")
        assert status == 200
    assert nats_cluster.jetstream_leader() in names
    # Every node maps the gateways' subjects to the test's partition count.
    for url in nats_cluster.urls:
        nc = await nats.connect(url)
        try:
            await tn.check_partition_mapping(nc, source(nats_cluster, urls=[url]))
        finally:
            await nc.close()


async def test_a_wrong_partition_count_is_refused(nats_cluster: NatsCluster) -> None:
    cfg = source(nats_cluster, partitions=NATS_PARTITIONS + 1)
    nc = await tn.connect(cfg, "test")
    try:
        with pytest.raises(tn.NatsTransportError, match="partition farms differently"):
            await tn.check_partition_mapping(nc, cfg)
    finally:
        await nc.close()


async def test_a_killed_node_comes_back_on_its_ports_with_its_data(
        nats_cluster: NatsCluster) -> None:
    name = "KEEP" + uuid.uuid4().hex[:8]
    nc = await nats.connect(servers=nats_cluster.urls, max_reconnect_attempts=-1)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=name, subjects=[f"keep.{name}"], num_replicas=3))
        try:
            ack = await js.publish(f"keep.{name}", b"kept")
            node = nats_cluster.nodes[2]
            ports = (node.client_port, node.mqtt_port)
            nats_cluster.kill(2)
            assert not node.running()
            await asyncio.to_thread(nats_cluster.restart, 2)
            assert node.running() and (node.client_port, node.mqtt_port) == ports
            # Through the restarted node, the stream answers again (once it
            # has a leader: the killed node may have led it).
            nc3 = await nats.connect(node.url)
            try:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        msg = await nc3.jetstream().get_msg(name, ack.seq)
                        break
                    except nats.errors.Error:
                        assert time.monotonic() < deadline, "the stream never answered"
                        await asyncio.sleep(0.2)
                assert msg.data == b"kept"
            finally:
                await nc3.close()
        finally:
            await js.delete_stream(name)
    finally:
        await nc.close()
