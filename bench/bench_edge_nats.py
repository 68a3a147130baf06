"""The edge on NATS, end to end: a real three-node cluster (natscluster), a
real InfluxDB 1.6, and one, two or three edge processes (``farmedge edge
run`` with ``[source] kind = "nats"``, alerts off) reading their partitions.

Prints, for 1, 2 and 3 edges: readings/s from the first publish until every
reading is in InfluxDB (20 gateways publishing MQTT 3.1.1 QoS 1, spread over
the three nodes, as fast as the cluster PUBACKs), and the PUBACK rate; then
the failover of one of two edges killed with SIGKILL under a steady stream:
time until every partition is owned again (the survivor's /healthz), and
until the first reading published after the kill to one of the dead edge's
partitions is stored in InfluxDB.

    .venv/bin/python bench/bench_edge_nats.py [--messages 2000] [--per 20]
        [--ttl 15] [--rebalance 5] [--ack-wait 30]

On a shared two-core machine the cluster, InfluxDB, the publishers and the
edges share the cores: the figures show overhead and failover, not scale.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from farmedge.contract import encode_json, telemetry_topic
from farmedge.transport.nats import partition_of
from farmedge_dev.devservers import InfluxServer, free_port, influx_query
from farmedge_dev.natscluster import NatsCluster

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 16
GATEWAYS = 20


def poll(cond: Callable[[], bool], limit_s: float, step_s: float = 0.1) -> bool:
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step_s)
    return cond()


def count(ix: InfluxServer, db: str, where: str = "") -> int:
    try:
        s = influx_query(ix.url, f'SELECT count("moisture") FROM "soil" {where}', db)
    except Exception:  # 1.6.7 answers 500 now and then under writes: ask again
        return -1
    return int(s[0]["values"][0][1]) if s else 0  # type: ignore[index]


class Edge:
    def __init__(self, cluster: NatsCluster, ix: InfluxServer, db: str, data: Path,
                 name: str, src: dict[str, str]) -> None:
        self.name = name
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FARMEDGE_")}
        env.update(FARMEDGE_INFLUX_URL=ix.url, FARMEDGE_INFLUX_DATABASE=db,
                   FARMEDGE_DATA_DIR=str(data / name), FARMEDGE_HTTP_PORT=str(self.port),
                   FARMEDGE_LOG_LEVEL="info", FARMEDGE_LOG_FORMAT="json",
                   FARMEDGE_INSTANCE=name,
                   FARMEDGE_ALERTS_ENABLED="false", PYTHONPATH=str(ROOT),
                   FARMEDGE_MQTT_URL=cluster.nodes[0].mqtt_url, **src)
        (data / name).mkdir(parents=True, exist_ok=True)
        self.log = data / name / "edge.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "farmedge", "edge", "run"],
                                         env=env, stdout=out, stderr=subprocess.STDOUT)
        atexit.register(self.proc.kill)  # a benchmark that fails must not leave it running

    def health(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz",
                                        timeout=2) as r:
                return dict(json.loads(r.read()))
        except urllib.error.HTTPError as e:
            return dict(json.loads(e.read()))
        except OSError:
            return {}

    def owned(self) -> set[int]:
        return set(self.health().get("partitions_owned") or [])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise RuntimeError(f"{self.name} did not stop in 90 s: {self.log}") from None


class Gateways:
    """MQTT 3.1.1 clients, one farm each, spread over the nodes, counting PUBACKs."""

    def __init__(self, cluster: NatsCluster, county: str, per: int) -> None:
        self.county = county
        self.per = per
        self.acked = 0
        self.lock = threading.Lock()
        self.seq = [0] * GATEWAYS
        #: Readings stamped now (failover) or a second apart per message of
        #: a gateway from an hour ago (every reading a point of its own).
        self.now_ts = False
        self.base_ts = int(time.time() * 1000) - 3_600_000
        self.clients: list[mqtt.Client] = []
        for i in range(GATEWAYS):
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{county}-gw-{i}",
                            protocol=mqtt.MQTTv311, clean_session=False)
            c.max_inflight_messages_set(100)
            c.max_queued_messages_set(0)
            c.on_publish = self._on_publish
            c.connect("127.0.0.1", cluster.nodes[i % 3].mqtt_port, keepalive=30)
            c.loop_start()
            self.clients.append(c)

    def _on_publish(self, *_: object) -> None:
        with self.lock:
            self.acked += 1

    def publish(self, n: int, pace_s: float = 0.0, first: int = 0) -> None:
        for i in range(n):
            g = (first + i) % GATEWAYS
            seq = self.seq[g] = self.seq[g] + 1
            now = int(time.time() * 1000)
            ts = now if self.now_ts else self.base_ts + seq * 1000
            readings = [{"sensor": f"s{j}", "kind": "soil_moisture", "ts": ts,
                         "value": 20.0 + j * 0.1, "unit": "%"} for j in range(self.per)]
            self.clients[g].publish(
                telemetry_topic(self.county, f"farm-{g}", f"gw-{g}"),
                encode_json(gateway=f"gw-{g}", seq=seq, sent=now, clock="synced",
                            readings=readings), qos=1)
            if pace_s:
                time.sleep(pace_s)

    def close(self) -> None:
        for c in self.clients:
            c.loop_stop()
            c.disconnect()


class Run:
    def __init__(self, cluster: NatsCluster, ix: InfluxServer, tmp: Path,
                 args: argparse.Namespace) -> None:
        tag = uuid.uuid4().hex[:8]
        self.cluster, self.ix, self.tmp = cluster, ix, tmp
        self.db = f"b{tag}"
        ix.create_database(self.db)
        self.prefix = f"b{tag}-p"
        self.src = {
            "FARMEDGE_SOURCE_KIND": "nats",
            "FARMEDGE_SOURCE_NATS_URLS": json.dumps(cluster.urls),
            "FARMEDGE_SOURCE_PARTITIONS": str(PARTITIONS),
            "FARMEDGE_SOURCE_CONSUMER_PREFIX": self.prefix,
            "FARMEDGE_SOURCE_LEASE_BUCKET": f"b{tag}",
            "FARMEDGE_SOURCE_ALERT_BUCKET": f"b{tag}-alerts",
            "FARMEDGE_SOURCE_LEASE_TTL_S": str(args.ttl),
            "FARMEDGE_SOURCE_REBALANCE_S": str(args.rebalance),
            "FARMEDGE_SOURCE_ACK_WAIT_S": str(args.ack_wait),
        }
        self.edges: list[Edge] = []

    def start(self, n: int) -> None:
        for i in range(n):
            self.edges.append(Edge(self.cluster, self.ix, self.db, self.tmp / self.db,
                                   f"edge-{i}", self.src))
        if not poll(self.all_owned, 120, 0.2):
            raise RuntimeError("the partitions were not shared out")

    def all_owned(self, edges: list[Edge] | None = None) -> bool:
        owned = [e.owned() for e in edges or self.edges]
        return sorted(p for o in owned for p in o) == list(range(PARTITIONS))

    def close(self) -> None:
        for e in self.edges:
            e.stop()
        subprocess.run([sys.executable, "-c", _DELETE, json.dumps(self.cluster.running_urls()),
                        self.prefix, str(PARTITIONS)], check=False, timeout=120)


#: The consumers are the interest of the MQTT stream: remove them after a run.
_DELETE = """
import asyncio, json, sys, nats
async def main():
    nc = await nats.connect(servers=json.loads(sys.argv[1]))
    js = nc.jetstream()
    for p in range(int(sys.argv[3])):
        try:
            await js.delete_consumer("$MQTT_msgs", f"{sys.argv[2]}{p}")
        except Exception:
            pass
    await nc.close()
asyncio.run(main())
"""


def throughput(cluster: NatsCluster, ix: InfluxServer, tmp: Path, args: argparse.Namespace,
               n_edges: int) -> None:
    run = Run(cluster, ix, tmp, args)
    try:
        run.start(n_edges)
        gws = Gateways(cluster, "b" + uuid.uuid4().hex[:6], args.per)
        total = args.messages * args.per
        t0 = time.monotonic()
        gws.publish(args.messages)
        poll(lambda: gws.acked >= args.messages, 600)
        acked = time.monotonic() - t0
        if not poll(lambda: count(ix, run.db) >= total, 900, 0.25):
            raise RuntimeError(f"only {count(ix, run.db)} of {total} readings stored")
        done = time.monotonic() - t0
        gws.close()
        print(f"{n_edges} edge(s): {args.messages} messages x {args.per} readings from "
              f"{GATEWAYS} gateways: PUBACKed {args.messages / acked:,.0f} msg/s; "
              f"{count(ix, run.db)} readings in InfluxDB at {total / done:,.0f} readings/s "
              f"({done:.1f} s)", flush=True)
    finally:
        run.close()


def failover(cluster: NatsCluster, ix: InfluxServer, tmp: Path,
             args: argparse.Namespace) -> None:
    run = Run(cluster, ix, tmp, args)
    try:
        run.start(2)
        poll(lambda: all(len(e.owned()) == PARTITIONS // 2 for e in run.edges), 120, 0.2)
        county = "b" + uuid.uuid4().hex[:6]
        gws = Gateways(cluster, county, args.per)
        gws.now_ts = True
        stop = threading.Event()

        def steady() -> None:  # every gateway once a second
            while not stop.is_set():
                gws.publish(GATEWAYS, pace_s=1.0 / GATEWAYS)

        t = threading.Thread(target=steady, daemon=True)
        t.start()
        time.sleep(5)
        victim, survivor = run.edges[1], run.edges[0]
        orphaned = victim.owned()
        farms = [f"farm-{g}" for g in range(GATEWAYS)
                 if partition_of(county, f"farm-{g}", PARTITIONS) in orphaned]
        killed = time.monotonic()
        killed_ms = int(time.time() * 1000)
        victim.stop(signal.SIGKILL)
        run.edges.remove(victim)
        poll(lambda: run.all_owned([survivor]), 300, 0.1)
        owned_again = time.monotonic() - killed
        where = (f"WHERE time > {killed_ms}ms AND ("
                 + " OR ".join(f"\"farm\" = '{f}'" for f in farms) + ")")
        poll(lambda: count(ix, run.db, where) > 0, 300, 0.1)
        first = time.monotonic() - killed
        stop.set()
        t.join()
        gws.close()
        print(f"failover (lease_ttl_s={args.ttl}, rebalance_s={args.rebalance}, "
              f"ack_wait_s={args.ack_wait}; bound {args.ttl + args.rebalance:g} s): edge-1 "
              f"SIGKILLed, its {len(orphaned)} partitions ({len(farms)} of the gateways) owned "
              f"by edge-0 after {owned_again:.1f} s; first reading published after the kill "
              f"to one of them stored after {first:.1f} s", flush=True)
    finally:
        run.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--per", type=int, default=20, help="readings per message")
    ap.add_argument("--ttl", type=int, default=15)
    ap.add_argument("--rebalance", type=float, default=5.0)
    ap.add_argument("--ack-wait", type=float, default=30.0)
    ap.add_argument("--edges", default="1,2,3", help="edge counts to measure")
    ap.add_argument("--no-failover", action="store_true")
    ap.add_argument("--tmp", default=None, help="folder for the servers' and edges' files")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.tmp) as d, \
            NatsCluster(Path(d) / "nats", partitions=PARTITIONS) as cluster:
        ix = InfluxServer(Path(d) / "ix").start()
        try:
            for n in (int(x) for x in args.edges.split(",")):
                throughput(cluster, ix, Path(d), args, n)
            if not args.no_failover:
                failover(cluster, ix, Path(d), args)
        finally:
            ix.stop()


if __name__ == "__main__":
    main()
