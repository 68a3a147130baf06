"""What a gateway's PUBACK covers on a NATS cluster (docs/scaling.md, "What a
PUBACK covers"): a QoS 1 PUBLISH over MQTT 3.1.1 to one node, the
leader of the stream killed (SIGKILL) right after the PUBACKs or while they
come, and what the stream holds counted after a new leader is elected.

* ``$MQTT_msgs``, the server's stream of QoS 1 messages, with the edge's
  partition consumers on it: the server stores a message there before its
  PUBACK, so every PUBACKed message is there.
* A stream of one's own capturing the same subjects: the server delivers
  the message to it as a plain NATS message and sends the PUBACK without
  waiting; while the stream has no leader it is stored nowhere, PUBACKed all
  the same.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from farmedge.contract import telemetry_topic
from farmedge.transport import nats as tn
from farmedge_dev.natscluster import NatsCluster
from tests.nats_support import (
    Publisher,
    connect_any,
    delete_consumers,
    drain,
    prepare,
    source,
    step_down_until,
    stream_leader,
)

pytestmark = [pytest.mark.servers, pytest.mark.slow]


async def test_every_pubacked_message_is_in_the_mqtt_stream_when_its_leader_dies(
        nats_cluster: NatsCluster, county: str) -> None:
    cfg = source(nats_cluster)
    await prepare(cfg)
    leader = await stream_leader(nats_cluster, tn.MQTT_STREAM)
    li = nats_cluster.index_of(leader)
    # Publish to another node, so that the kill does not end the connection.
    pub = Publisher(nats_cluster.nodes[(li + 1) % 3].mqtt_port, inflight=100).connect()
    n = 3000
    try:
        for i in range(n):
            pub.publish(telemetry_topic(county, f"farm.{i % 11}", "gw-1"), f"m{i}")
        assert pub.wait_acked(n) == n
        nats_cluster.kill(li)
    finally:
        pub.close()
    got = await drain(source(nats_cluster, urls=nats_cluster.running_urls(),
                             consumer_prefix=cfg.consumer_prefix), county)
    print(f"PUBACKed {n}, leader {leader} killed, the stream gave {len(got)} "
          f"({len(set(got))} distinct)")
    assert set(got) == pub.acked
    await delete_consumers(nats_cluster, cfg)


async def test_nothing_pubacked_is_lost_when_the_mqtt_streams_leader_dies_mid_stream(
        nats_cluster: NatsCluster, county: str) -> None:
    cfg = source(nats_cluster)
    await prepare(cfg)
    pub_node = nats_cluster.nodes[0]
    leader = await step_down_until(nats_cluster, tn.MQTT_STREAM, avoid=[pub_node.name])
    pub = Publisher(pub_node.mqtt_port).connect()
    n, kill_at = 2000, 300
    try:
        for i in range(n):
            pub.publish(telemetry_topic(county, f"farm.{i % 11}", "gw-1"), f"m{i}")
            if i == kill_at:
                nats_cluster.kill(nats_cluster.index_of(leader))
            await asyncio.sleep(0.002)
        acked = pub.wait_acked(n, timeout=90)
    finally:
        pub.close()
    got = await drain(source(nats_cluster, urls=nats_cluster.running_urls(),
                             consumer_prefix=cfg.consumer_prefix), county)
    print(f"published {n}, PUBACKed {acked}, leader {leader} killed at {kill_at}, the stream "
          f"gave {len(got)} ({len(set(got))} distinct)")
    assert acked == n
    assert pub.acked <= set(got), f"{len(pub.acked - set(got))} PUBACKed messages lost"
    await delete_consumers(nats_cluster, cfg)


async def test_a_stream_of_ones_own_loses_what_is_pubacked_while_it_has_no_leader(
        nats_cluster: NatsCluster, county: str) -> None:
    cfg = source(nats_cluster, stream="T" + county)
    try:
        await _own_stream_case(nats_cluster, county, cfg)
    finally:
        nc = await connect_any(nats_cluster)
        try:
            await nc.jetstream().delete_stream(cfg.stream)
        finally:
            await nc.close()


async def _own_stream_case(nats_cluster: NatsCluster, county: str,
                           cfg: tn.SourceSection) -> None:
    await prepare(cfg)
    pub_node = nats_cluster.nodes[0]
    # The MQTT listener is publishing to node 1; the server's MQTT stream is
    # led elsewhere and stays up; the stream of our own loses its leader.
    mqtt_leader = await step_down_until(nats_cluster, tn.MQTT_STREAM, avoid=[pub_node.name])
    own = await step_down_until(nats_cluster, cfg.stream, avoid=[pub_node.name, mqtt_leader])
    pub = Publisher(pub_node.mqtt_port).connect()
    sent = 0
    try:
        for i in range(300):
            pub.publish(telemetry_topic(county, f"farm.{i % 11}", "gw-1"), f"m{sent}")
            sent += 1
        assert pub.wait_acked(sent) == sent
        nats_cluster.kill(nats_cluster.index_of(own))
        killed = time.monotonic()
        # Publish on for 4 s after the kill: the election takes longer.
        while time.monotonic() - killed < 4.0:
            pub.publish(telemetry_topic(county, f"farm.{sent % 11}", "gw-1"), f"m{sent}")
            sent += 1
            await asyncio.sleep(0.005)
        acked = pub.wait_acked(sent, timeout=60)
    finally:
        pub.close()
    await stream_leader(nats_cluster, cfg.stream)
    got = await drain(source(nats_cluster, urls=nats_cluster.running_urls(), stream=cfg.stream,
                             consumer_prefix=cfg.consumer_prefix), county)
    lost = pub.acked - set(got)
    print(f"own stream {cfg.stream}: published {sent}, PUBACKed {acked}, leader {own} killed "
          f"after 300, the stream gave {len(set(got))}, PUBACKed but lost {len(lost)}")
    assert acked == sent
    assert lost, "every PUBACKed message reached the stream of our own: docs/scaling.md is wrong"
