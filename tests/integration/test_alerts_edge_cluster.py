"""Alert handover end to end: two edges as processes (``farmedge edge run``
with ``[source] kind = "nats"`` and the alert engine on) on the real
three-node cluster, a gateway publishing MQTT 3.1.1 through a node, real
InfluxDB, messages through Apprise to a local HTTP receiver.

A dry reading makes an alert pending on the edge that owns the farm's
partition (its state is then in the key-value bucket); that edge is killed
with SIGKILL, or cut off from the cluster with its process running (its
NATS connections go through TCP proxies that are cut: a network partition);
the other takes the partition over, loads the state and sends the alert,
exactly once. The cut-off edge's leases lapse by its own clock, so it sends
nothing, neither while cut off nor after the link comes back.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from pathlib import Path

import pytest

from farmedge.cluster.alertstate import PREFIX
from farmedge.contract import telemetry_topic
from farmedge.transport import nats as tn
from farmedge.transport.nats_settings import SourceSection
from farmedge_dev.devservers import InfluxServer
from farmedge_dev.natscluster import NatsCluster
from tests.alerts_support import ThreadedReceiver, soil_dry_rules
from tests.conftest import NATS_PARTITIONS
from tests.edgeproc import EdgeProcess
from tests.nats_support import Publisher, delete_consumers
from tests.netproxy import Proxy
from tests.support import eventually, make_payload

pytestmark = [pytest.mark.servers, pytest.mark.slow, pytest.mark.cluster]

RULES = soil_dry_rules(8)
FARM = "wang-12"


def _rows(cfg: SourceSection, partition: int) -> int:
    """Alert state rows of the partition in the bucket (rule states)."""
    async def count() -> int:
        nc = await tn.connect(cfg, "test-kv")
        try:
            kv = await nc.jetstream().key_value(cfg.alert_bucket)
            try:
                keys = await kv.keys()
            except Exception:
                return 0
            return len([k for k in keys if k.startswith(f"{PREFIX}.{partition}.states.")])
        finally:
            await nc.close()
    return asyncio.run(count())


@pytest.mark.parametrize("lost", ["killed", "cut_off"])
def test_an_alert_pending_when_its_edge_is_lost_fires_once_from_the_other(
        nats_cluster: NatsCluster, influxdb: InfluxServer, influx_db: str, county: str,
        threaded_http: ThreadedReceiver, tmp_path: Path, lost: str) -> None:
    receiver = threaded_http
    tag = uuid.uuid4().hex[:8]
    cfg = SourceSection(kind="nats", nats_urls=nats_cluster.urls, partitions=NATS_PARTITIONS,
                        consumer_prefix=f"t{tag}-p", lease_bucket=f"t{tag}",
                        alert_bucket=f"a{tag}")
    partition = tn.partition_of(county, FARM, NATS_PARTITIONS)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    reg = tmp_path / "registry.yaml"
    reg.write_text(f"""
farms:
  - county: {county}
    farm: {FARM}
    name: 王家农场
    profile: test-dry
    plots: {{field-3: {{name: 3号地, crop: maize}}}}
    gateways:
      gw-1:
        interval_s: 600
        sensors: {{soil-1: {{plot: field-3, crop: maize, interval_s: 600}}}}
    contacts:
      - {{name: 王建国, notify: ["{receiver.http.url('sms')}"]}}
center_contacts:
  - {{name: 值班, notify: ["{receiver.http.url('ops')}"]}}
""")
    env = {
        "FARMEDGE_SOURCE_KIND": "nats",
        "FARMEDGE_SOURCE_NATS_URLS": json.dumps(nats_cluster.urls),
        "FARMEDGE_SOURCE_PARTITIONS": str(NATS_PARTITIONS),
        "FARMEDGE_SOURCE_CONSUMER_PREFIX": cfg.consumer_prefix,
        "FARMEDGE_SOURCE_LEASE_BUCKET": cfg.lease_bucket,
        "FARMEDGE_SOURCE_ALERT_BUCKET": cfg.alert_bucket,
        "FARMEDGE_SOURCE_LEASE_TTL_S": "5",
        "FARMEDGE_SOURCE_REBALANCE_S": "1.0",
        "FARMEDGE_SOURCE_ACK_WAIT_S": "6.0",
        "FARMEDGE_INFLUX_FLUSH_INTERVAL_S": "0.2",
        "FARMEDGE_ALERTS_ENABLED": "true",
        "FARMEDGE_ALERTS_RULES": json.dumps([str(rules)]),
        "FARMEDGE_ALERTS_TICK_S": "0.2",
        "FARMEDGE_REGISTRY": str(reg),
    }
    edges: dict[str, EdgeProcess] = {}
    #: Each edge reaches every node through a proxy of its own (cut_off).
    proxies: dict[str, list[Proxy]] = {}

    def start(name: str) -> None:
        proxies[name] = [Proxy("127.0.0.1", n.client_port) for n in nats_cluster.nodes]
        urls = [f"nats://127.0.0.1:{x.port}" for x in proxies[name]]
        e = EdgeProcess(mqtt_url=nats_cluster.nodes[0].mqtt_url, influx_url=influxdb.url,
                        database=influx_db, data_dir=tmp_path / name,
                        extra_env={**env, "FARMEDGE_INSTANCE": name,
                                   "FARMEDGE_SOURCE_NATS_URLS": json.dumps(urls)})
        e.start(wait_subscribed=False)
        edges[name] = e

    def owned(name: str) -> set[int]:
        h = edges[name].health()
        return set(h.get("partitions_owned") or []) if h else set()

    pub = Publisher(nats_cluster.nodes[1].mqtt_port)
    try:
        start("edge-a")
        start("edge-b")
        eventually(lambda: owned("edge-a") | owned("edge-b") == set(range(NATS_PARTITIONS))
                   and owned("edge-a") and owned("edge-b")
                   and not owned("edge-a") & owned("edge-b"),
                   timeout=90, interval=0.5, what="the partitions shared out")
        owner = "edge-a" if partition in owned("edge-a") else "edge-b"
        other = "edge-b" if owner == "edge-a" else "edge-a"
        pub.connect()
        now = int(time.time() * 1000)
        pub.publish(telemetry_topic(county, FARM, "gw-1"), make_payload("gw-1", 1, [
            {"sensor": "soil-1", "kind": "soil_moisture", "ts": now, "value": 12.0,
             "unit": "%"}]).decode())
        assert pub.wait_acked(1) == 1
        eventually(lambda: _rows(cfg, partition) == 1, timeout=60, interval=0.5,
                   what="the pending alert's state in the bucket")
        assert receiver.messages("sms") == []     # still pending (for: 8s)
        if lost == "killed":
            edges[owner].stop(signal.SIGKILL)
        else:
            for x in proxies[owner]:
                x.cut()
        eventually(lambda: partition in owned(other), timeout=60, interval=0.5,
                   what=f"{other} took the partition over")
        eventually(lambda: receiver.messages("sms"), timeout=60, interval=0.2,
                   what="the alert sent by the new owner")
        if lost == "cut_off":
            # The fenced edge lives on, owns nothing by its own clock, and
            # sends nothing; back on the cluster it takes its share again.
            assert owned(owner) == set()
            for x in proxies[owner]:
                x.restore()
            eventually(lambda: owned(owner) and owned(other)
                       and owned(owner) | owned(other) == set(range(NATS_PARTITIONS))
                       and not owned(owner) & owned(other),
                       timeout=90, interval=0.5, what=f"{owner} back with its share")
            assert '"alerts.partition_loaded"' in edges[other].log_tail(1_000_000)
        time.sleep(3)     # anything more would come now (ticks of 0.2 s)
        sms = receiver.messages("sms")
        assert len(sms) == 1 and "3号地" in sms[0] and "12%" in sms[0], sms
        # The operators hear of the edges' (re)starts and, when one was cut
        # off, of its outage ("中心...中断": the center's own fault, told to
        # the operators, never to the farm).
        center = ("边缘服务已重启",) + (("中心",) if lost == "cut_off" else ())
        ops = receiver.messages("ops")
        assert all(m.startswith(center) for m in ops), ops
        log = edges[other].log_tail(1_000_000)
        assert '"alerts.partition_loaded"' in log
    finally:
        pub.close()
        for e in edges.values():
            e.stop()
        for xs in proxies.values():
            for x in xs:
                x.close()
        asyncio.run(delete_consumers(nats_cluster, cfg))
