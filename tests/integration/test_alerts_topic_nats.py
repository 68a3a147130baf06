"""The alerts topic in cluster mode: a ``farmedge edge run`` process with
``[source] kind = "nats"`` and the alert engine on, on the real three-node
cluster, a gateway publishing MQTT 3.1.1 through node 1, real InfluxDB,
Apprise to a local HTTP receiver, and an MQTT 3.1.1 subscriber on node 3's
MQTT listener.

The edge's [mqtt] url names node 1's MQTT listener, as a cluster edge's
configuration may: the recorder must not talk MQTT 5 to it (the listener
refuses MQTT 5, and the edge's NATS user may not use MQTT at all). The alert
events reach the subscriber on ``farm/v1/<county>/<farm>/alerts`` through
the edge's NATS connection, and nothing logs a refused connect.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from farmedge.contract import alerts_topic, telemetry_topic
from farmedge.transport.nats_settings import SourceSection
from farmedge_dev.devservers import InfluxServer
from farmedge_dev.natscluster import NatsCluster
from tests.alerts_support import ThreadedReceiver, soil_dry_rules
from tests.conftest import NATS_PARTITIONS
from tests.edgeproc import EdgeProcess
from tests.nats_support import Publisher, delete_consumers
from tests.support import eventually, make_payload

pytestmark = [pytest.mark.servers, pytest.mark.slow, pytest.mark.cluster]

#: A dot in the farm id: the subject token is ``wang//12``, the topic level ``wang.12``.
FARM = "wang.12"


class Subscriber:
    """An MQTT 3.1.1 client subscribed (QoS 1) to one topic, keeping what comes."""

    def __init__(self, port: int, topic: str) -> None:
        self.topic = topic
        self.got: list[tuple[str, bytes]] = []
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id="alerts-sub-" + uuid.uuid4().hex[:8],
                                  protocol=mqtt.MQTTv311, clean_session=True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, ud: object, flags: object, rc: object,
                    props: object) -> None:
        client.subscribe(self.topic, qos=1)

    def _on_message(self, client: object, ud: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.got.append((msg.topic, bytes(msg.payload)))

    def events(self) -> list[dict[str, object]]:
        with self._lock:
            return [json.loads(p) for _, p in self.got]

    def topics(self) -> set[str]:
        with self._lock:
            return {t for t, _ in self.got}

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_alert_events_reach_the_clusters_mqtt_subscribers_on_the_alerts_topic(
        nats_cluster: NatsCluster, influxdb: InfluxServer, influx_db: str, county: str,
        threaded_http: ThreadedReceiver, tmp_path: Path) -> None:
    receiver = threaded_http
    tag = uuid.uuid4().hex[:8]
    cfg = SourceSection(kind="nats", nats_urls=nats_cluster.urls, partitions=NATS_PARTITIONS,
                        consumer_prefix=f"t{tag}-p", lease_bucket=f"t{tag}",
                        alert_bucket=f"a{tag}")
    rules = tmp_path / "rules.yaml"
    rules.write_text(soil_dry_rules(1))
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
""")
    edge = EdgeProcess(
        mqtt_url=nats_cluster.nodes[0].mqtt_url, influx_url=influxdb.url, database=influx_db,
        data_dir=tmp_path / "edge", extra_env={
            "FARMEDGE_SOURCE_KIND": "nats",
            "FARMEDGE_SOURCE_NATS_URLS": json.dumps(nats_cluster.urls),
            "FARMEDGE_SOURCE_PARTITIONS": str(NATS_PARTITIONS),
            "FARMEDGE_SOURCE_CONSUMER_PREFIX": cfg.consumer_prefix,
            "FARMEDGE_SOURCE_LEASE_BUCKET": cfg.lease_bucket,
            "FARMEDGE_SOURCE_ALERT_BUCKET": cfg.alert_bucket,
            "FARMEDGE_SOURCE_LEASE_TTL_S": "5",
            "FARMEDGE_SOURCE_REBALANCE_S": "1.0",
            "FARMEDGE_INFLUX_FLUSH_INTERVAL_S": "0.2",
            "FARMEDGE_INSTANCE": "edge-a",
            "FARMEDGE_ALERTS_ENABLED": "true",
            "FARMEDGE_ALERTS_RULES": json.dumps([str(rules)]),
            "FARMEDGE_ALERTS_TICK_S": "0.2",
            "FARMEDGE_REGISTRY": str(reg),
        })
    sub = Subscriber(nats_cluster.nodes[2].mqtt_port, alerts_topic(county, FARM))
    pub = Publisher(nats_cluster.nodes[0].mqtt_port)
    try:
        assert sub.subscribed.wait(30), "no SUBACK from node 3"
        edge.start(wait_subscribed=False)
        eventually(lambda: len(edge.health().get("partitions_owned") or []) == NATS_PARTITIONS,
                   timeout=90, interval=0.5, what="the edge owning every partition")
        pub.connect()
        pub.publish(telemetry_topic(county, FARM, "gw-1"), make_payload("gw-1", 1, [
            {"sensor": "soil-1", "kind": "soil_moisture", "ts": int(time.time() * 1000),
             "value": 12.0, "unit": "%"}]).decode())
        assert pub.wait_acked(1) == 1
        eventually(lambda: receiver.messages("sms"), timeout=60, interval=0.2,
                   what="the alert sent to the farmer")
        eventually(lambda: {"raise", "delivered"} <= {e["event"] for e in sub.events()},
                   timeout=30, interval=0.2,
                   what="the raise and delivered events on the alerts topic")
        assert sub.topics() == {f"farm/v1/{county}/{FARM}/alerts"}
        raised = next(e for e in sub.events() if e["event"] == "raise")
        assert (raised["v"], raised["county"], raised["farm"], raised["rule"]) == (
            1, county, FARM, "test-dry/soil-dry")
        assert raised["value"] == 12.0 and raised["scope"] == "plot"
        log = edge.log_tail(10_000_000)
        assert "connect_refused" not in log, log[-3000:]
        assert '"mqtt.' not in log, log[-3000:]    # no MQTT client of the edge's at all
        assert '"alerts.nats_publish_failed"' not in log, log[-3000:]
    finally:
        sub.close()
        pub.close()
        edge.stop()
        asyncio.run(delete_consumers(nats_cluster, cfg))
