"""The gateway agent process (``python -m farmedge gateway run``) in MQTT 3.1.1
mode (``[mqtt] protocol = "3.1.1"``): against the real Mosquitto, its
readings stored by the real edge in InfluxDB with no content type on the
wire (compact and JSON told apart by their first byte), the retained status
and the last will; and against the real three-node NATS cluster, whose MQTT
listener refuses MQTT 5, through a list of URLs: the node the gateway
publishes to is killed, the gateway moves to another node and goes on, and
the server's JetStream stream holds every reading the gateway had
acknowledged (docs/gateway.md, "MQTT 3.1.1 and broker clusters")."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from farmedge.contract import parse_telemetry
from farmedge.transport import nats as tn
from farmedge.transport.broker import BrokerRing, parse_broker_urls
from farmedge_dev.devservers import InfluxServer, MosquittoServer
from farmedge_dev.natscluster import NatsCluster
from tests.gateway_support import EdgeProcess, Subscriber, influx_points
from tests.nats_support import drain_data, prepare
from tests.support import eventually

pytestmark = [pytest.mark.servers, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def gateway_config(path: Path, county: str, gateway: str, data: Path, mqtt_keys: str, *,
                   encoding: str = "compact", interval_s: float = 0.05) -> Path:
    path.write_text(f"""
county = "{county}"
farm = "farm-1"
gateway = "{gateway}"
data_dir = "{data}"
log_level = "debug"
log_format = "json"
[mqtt]
{mqtt_keys}
protocol = "3.1.1"
keepalive_s = 5
backoff_min_s = 0.2
backoff_max_s = 1.0
connect_timeout_s = 5
[outbox]
commit_interval_s = 0.1
[uplink]
encoding = "{encoding}"
batch_max = 20
batch_max_wait_s = 0.1
[status]
interval_s = 1.0
[clock]
source = "trust"
[[sensors]]
driver = "simulated"
id = "s-{gateway}"
kinds = ["soil_moisture", "air_temperature"]
interval_s = {interval_s}
""")
    return path


#: The agent's own ``gateway run`` with the simulated driver replaced by a
#: counter (a test driver): values 0, 1, 2, ... so that every reading is
#: told apart by its value alone.
COUNTER_SCRIPT = """
import sys, time
from farmedge.gateway import drivers
from farmedge.gateway.drivers.base import Sample

class Counter:
    def __init__(self, cfg, ctx):
        self.n = 0
    def read(self):
        self.n += 1
        return [Sample("animal_activity", float(self.n - 1), "steps/h")]
    def close(self):
        pass

drivers.DRIVERS["simulated"] = Counter
from farmedge.cli import main
sys.exit(main(["gateway", "run", "--config", sys.argv[1]]))
"""


class GatewayProcess:
    """``python -m farmedge gateway run --config ...`` (``counter``: with the
    counter driver); its JSON log parsed."""

    def __init__(self, config: Path, log: Path, *, counter: bool = False) -> None:
        self.log_path = log
        argv = (["-c", COUNTER_SCRIPT, str(config)] if counter
                else ["-m", "farmedge", "gateway", "run", "--config", str(config)])
        with log.open("ab") as f:
            self.proc = subprocess.Popen(
                [sys.executable, *argv],
                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=f,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if isinstance(e, dict) and (name is None or e.get("event") == name):
                out.append(e)
        return out

    def acked(self) -> int:
        """Readings the broker acknowledged (PUBACK), by the agent's log."""
        return sum(int(e["n"]) for e in self.events("gateway.acked"))

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


def outbox_rows(data: Path) -> int:
    db = sqlite3.connect(f"file:{data / 'outbox.sqlite3'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM reading").fetchone()[0])
    finally:
        db.close()


# -- Mosquitto ------------------------------------------------------------------


def test_gateway_in_3_1_1_mode_through_mosquitto_to_influxdb(
        tmp_path: Path, mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str,
        county: str) -> None:
    """Two gateways, compact and JSON, in 3.1.1 mode; one killed with SIGKILL
    (its last will says offline, retained) and started again (the broker
    kept its session); both stopped cleanly: every reading the subscriber
    saw is in InfluxDB once, and no message carried a content type."""
    sub = Subscriber(mosquitto.url, county)
    edge = EdgeProcess(mosquitto.url, influxdb.url, influx_db, tmp_path / "edge")
    keys = f'url = "{mosquitto.url}"'
    cfg = {g: gateway_config(tmp_path / f"{g}.toml", county, g, tmp_path / g, keys,
                             encoding=enc)
           for g, enc in (("gw-c", "compact"), ("gw-j", "json"))}
    gws = {g: GatewayProcess(c, tmp_path / f"{g}.log") for g, c in cfg.items()}
    again: GatewayProcess | None = None
    try:
        def readings_of(sensor: str) -> int:
            return len({(r.kind.name, r.ts_ms) for p in list(sub.telemetry)
                        for r in p.readings if r.sensor == sensor})

        for g in gws:
            eventually(lambda g=g: readings_of(f"s-{g}") >= 20, timeout=60,
                       what=f"{g}'s readings at the subscriber")
        online = eventually(lambda: [s for s in sub.status if s["gateway"] == "gw-c"
                                     and s["online"]], what="gw-c online")
        assert online
        gws["gw-c"].kill()  # no DISCONNECT: the broker sends the will
        eventually(lambda: [s for s in sub.status if s["gateway"] == "gw-c"
                            and s["online"] is False and s.get("reason", "lost") == "lost"],
                   what="gw-c's last will")
        [first] = gws["gw-c"].events("gateway.connected")
        assert first["protocol"] == "3.1.1" and first["session_present"] is False
        again = GatewayProcess(cfg["gw-c"], tmp_path / "gw-c-again.log")
        seen = readings_of("s-gw-c")
        eventually(lambda: readings_of("s-gw-c") >= seen + 20, timeout=60,
                   what="gw-c's readings after the restart")
        [second] = again.events("gateway.connected")
        assert second["session_present"] is True, second  # clean session false, same id
        assert again.stop() == 0, again.tail()
        assert gws["gw-j"].stop() == 0, gws["gw-j"].tail()
    finally:
        for p in (*gws.values(), *([again] if again else [])):
            p.kill()
    assert outbox_rows(tmp_path / "gw-c") == 0 and outbox_rows(tmp_path / "gw-j") == 0
    # Everything stored was sent before the clean stops (the outboxes are
    # empty): the subscriber sees the offline status last.
    for g in gws:
        eventually(lambda g=g: [s for s in sub.status if s["gateway"] == g][-1]["online"]
                   is False, what=f"{g} offline")
    assert set(sub.content_types) == {None}  # 3.1.1: no properties on the wire
    assert len(sub.content_types) == len(sub.telemetry)

    want = sorted({(r.sensor, r.kind.name, r.ts_ms, r.value)
                   for p in sub.telemetry for r in p.readings})
    kinds = {"soil_moisture": ("soil", "moisture"), "air_temperature": ("weather", "temperature")}
    assert {k for _, k, _, _ in want} <= set(kinds), {k for _, k, _, _ in want}

    def stored() -> list[tuple[str, str, int, float]]:
        out = []
        for kind, (measurement, field) in kinds.items():
            out += [(s, kind, t, v) for t, v, s in influx_points(
                influxdb.url, influx_db, measurement, field, f"county = '{county}'")]
        return sorted(out)

    def all_stored() -> bool:
        missing = sorted(set(want) - set(stored()))
        assert not missing, (len(missing), missing[:5])
        return True

    eventually(all_stored, timeout=60, interval=0.5, what="every reading in InfluxDB")
    edge.stop()
    got = stored()
    assert len(got) == len(set(got)) == len(want)
    sub.close()


# -- NATS -----------------------------------------------------------------------


def _source(cluster: NatsCluster, urls: list[str] | None = None,
            prefix: str | None = None) -> tn.SourceSection:
    from tests.nats_support import source

    return source(cluster, urls=urls, **({"consumer_prefix": prefix} if prefix else {}))


class RetainedStatus:
    """An MQTT 3.1.1 subscriber on one node: the retained status it is given."""

    def __init__(self, port: int, topic: str) -> None:
        self.got: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="st-" + uuid.uuid4().hex[:8],
                             protocol=mqtt.MQTTv311)
        self.c.on_message = self._on
        self.c.on_connect = lambda c, ud, flags, rc, props: c.subscribe(topic, qos=1)
        self.c.connect("127.0.0.1", port, keepalive=10)
        self.c.loop_start()

    def _on(self, client: Any, ud: Any, msg: Any) -> None:
        with self._lock:
            self.got.append({"retain": bool(msg.retain), "topic": msg.topic,
                             **json.loads(msg.payload)})

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def consumers(nats_cluster: NatsCluster) -> Iterator[tn.SourceSection]:
    """Partition consumers of this test's own on the server's MQTT stream
    (made before the gateway publishes: the stream keeps messages by
    interest), removed afterwards."""
    import asyncio

    from tests.nats_support import delete_consumers

    cfg = _source(nats_cluster)
    asyncio.run(prepare(cfg))
    yield cfg
    asyncio.run(delete_consumers(nats_cluster, cfg))


def test_gateway_moves_to_another_nats_node_when_its_node_dies(
        tmp_path: Path, nats_cluster: NatsCluster, consumers: tn.SourceSection,
        county: str) -> None:
    import asyncio
    import tomllib

    from farmedge.cli import main
    from farmedge.provision.nats_auth import gateway_client_id

    nodes = nats_cluster.nodes
    mqtt_urls = [n.mqtt_url for n in nodes]
    # Each gateway starts at a node of its own (from its client id): one
    # whose own node is not the first listed, so that the test tells that
    # from starting at the first.
    gateway, ring = next(
        (g, r) for g in (f"gw-{i}" for i in range(1, 50))
        if (r := BrokerRing(parse_broker_urls(mqtt_urls),
                            key=gateway_client_id(county, "farm-1", g))).index != 0)
    home, then = ring.order[0], ring.order[1]
    # Its [mqtt] as `farmedge provision gateway --cluster-url` writes it
    # (this cluster takes any user: the users are tested in test_nats_trust.py).
    provisioned = tmp_path / "provisioned.toml"
    assert main(["provision", "gateway", "--county", county, "--farm", "farm-1",
                 "--gateway", gateway, *[a for u in mqtt_urls for a in ("--cluster-url", u)],
                 "--registry", str(tmp_path / "registry.yaml"),
                 "--nats-dir", str(tmp_path / "nats"), "-o", str(provisioned)]) == 0
    mq = tomllib.loads(provisioned.read_text())["mqtt"]
    assert mq["urls"] == mqtt_urls and mq["protocol"] == "3.1.1"
    keys = "\n".join(f"{k} = {json.dumps(mq[k], ensure_ascii=False)}"
                     for k in ("urls", "username", "password", "client_id"))
    data = tmp_path / "gw"
    cfg = gateway_config(tmp_path / "gw.toml", county, gateway, data, keys, interval_s=0.02)
    gw = GatewayProcess(cfg, tmp_path / "gw.log", counter=True)
    try:
        eventually(lambda: gw.acked() >= 100, timeout=90, what="100 readings acknowledged "
                   f"through node {home + 1}")
        [first] = gw.events("gateway.connected")
        assert first["node"] == f"{home + 1}/3" and first["protocol"] == "3.1.1", first
        assert first["url"] == mqtt_urls[home], first
        before_kill = gw.acked()
        killed = time.monotonic()
        nats_cluster.kill(home)  # the gateway's node (SIGKILL)
        moved = eventually(lambda: gw.events("gateway.connected")[1:], timeout=60,
                           what="the gateway connected to another node")[0]
        moved_after_s = time.monotonic() - killed
        assert moved["node"] != f"{home + 1}/3", moved
        # It tried the next node of its own order first.
        hops = gw.events("gateway.next_broker")
        assert hops and hops[0]["next"] == mqtt_urls[then], (hops, gw.tail())
        eventually(lambda: gw.acked() >= before_kill + 200, timeout=90,
                   what="200 more readings acknowledged on the new node")
        assert gw.stop() == 0, gw.tail()
    finally:
        gw.kill()
    assert outbox_rows(data) == 0  # everything it took was acknowledged
    acked = gw.acked()
    payloads = asyncio.run(drain_data(
        _source(nats_cluster, urls=nats_cluster.running_urls(),
                prefix=consumers.consumer_prefix),
        lambda d: d.where.county == county and d.where.channel == "telemetry",
        quiet_s=3.0, deadline_s=120.0))
    readings = [r.value for p in payloads for r in parse_telemetry(p, content_type=None).readings]
    distinct = set(readings)
    print(f"gateway {gateway}: {acked} readings acknowledged ({before_kill} through node "
          f"{home + 1} before its "
          f"kill), connected to node {moved['node']} {moved_after_s:.1f} s after the kill; "
          f"the stream gave {len(payloads)} messages, {len(readings)} readings, "
          f"{len(distinct)} distinct")
    # Nothing acknowledged lost: the outbox is empty, so every reading taken
    # (values 0 .. acked-1, each deleted on its PUBACK once) is in the
    # stream; resends after the kill are duplicates.
    missing = set(map(float, range(acked))) - distinct
    assert not missing, (len(missing), sorted(missing)[:10])
    assert distinct == set(map(float, range(acked)))
    # The clean stop left "offline" retained, readable on the other nodes.
    # The cluster's subject mapping applies to what MQTT clients publish, so
    # the server keeps it under the partitioned topic, not under farm/v1/.
    # Each node learns retained messages from the server's stream on its own
    # time (a subscription made too early on a node gets none): ask again
    # with a fresh subscription until one gives it.
    part = tn.partition_of(county, "farm-1", consumers.partitions)
    topic = f"farmp/v1/{part}/{county}/farm-1/{gateway}/status"
    tries: list[int] = []
    alive = [i for i in range(len(nodes)) if i != home]

    def retained() -> dict[str, Any] | None:
        node = alive[len(tries) % 2]
        tries.append(node + 1)
        st = RetainedStatus(nodes[node].mqtt_port, topic)
        try:
            got = eventually(lambda: st.got, timeout=2, what="a retained status", interval=0.1)
            return got[-1]
        except AssertionError:
            return None
        finally:
            st.close()

    last = eventually(retained, timeout=60, what="the retained status on a live node")
    print(f"retained status from node {tries[-1]} at subscription {len(tries)}")
    assert last is not None
    assert last["retain"] and last["online"] is False and last["topic"] == topic, last


def test_gateway_last_will_on_the_nats_cluster(tmp_path: Path, nats_cluster: NatsCluster,
                                               consumers: tn.SourceSection,
                                               county: str) -> None:
    """The agent killed with SIGKILL while its node lives: the node publishes
    its last will, kept retained (under the partitioned topic) and read on
    another node."""
    nodes = nats_cluster.nodes
    data = tmp_path / "gw"
    cfg = gateway_config(tmp_path / "gw.toml", county, "gw-1", data,
                         f'urls = ["{nodes[1].mqtt_url}"]')
    part = tn.partition_of(county, "farm-1", consumers.partitions)
    topic = f"farmp/v1/{part}/{county}/farm-1/gw-1/status"

    def retained_on(node: int) -> dict[str, Any] | None:
        st = RetainedStatus(nodes[node].mqtt_port, topic)
        try:
            return eventually(lambda: st.got, timeout=2, interval=0.1, what="a status")[-1]
        except AssertionError:
            return None
        finally:
            st.close()

    gw = GatewayProcess(cfg, tmp_path / "gw.log")
    try:
        eventually(lambda: gw.acked() >= 20, timeout=90, what="20 readings acknowledged")
        online = eventually(lambda: (st := retained_on(2)) and st["online"] and st,
                            timeout=60, what="the online status on node 3")
        assert online["retain"]
        gw.kill()  # no DISCONNECT: node 2 publishes the will
        will = eventually(lambda: (st := retained_on(2)) and st["online"] is False and st,
                          timeout=60, what="the last will, retained, on node 3")
        assert will["retain"] and will["reason"] == "lost", will
    finally:
        gw.kill()
