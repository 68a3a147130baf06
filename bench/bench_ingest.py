"""Edge ingestion benchmark: prints its figures and the ratios.

(1) the ceiling: raw InfluxDB ingest of pre-built 5,000-line batches;
(2) farmedge end to end (MQTT → edge → InfluxDB), with 50-reading and with
    1-reading messages;
(3) a naive ingestor (one synchronous InfluxDB write per message, as
    tutorials do) on the same workload;
(4) p50/p99 latency from publish to queryable, at a steady 10 % of (2);
(5) the edge's resident memory.

All on this machine, in one run, against the real Mosquitto and InfluxDB
(started here in a temp folder). Usage:

    python bench/bench_ingest.py [--readings 1000000] [--quick]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from farmedge.contract import encode_json  # noqa: E402
from farmedge_dev.devservers import (  # noqa: E402
    InfluxServer,
    MosquittoServer,
    free_port,
    influx_query,
    process_stats,
    wait_edge_subscribed,
)

BASE_TS = int(time.time() * 1000) - 86_400_000
#: Simulated gateways, one mosquitto_pub process each.
GATEWAYS = 16


def payloads(county: str, n_messages: int, per_message: int, gateways: int,
             first: int = 0) -> list[tuple[str, bytes]]:
    out = []
    for i in range(first, first + n_messages):
        g = i % gateways
        seq = i // gateways
        ts = BASE_TS + seq * 1000
        readings = [{"sensor": f"s{j}", "kind": "soil_moisture", "ts": ts,
                     "value": 20.0 + (seq % 97) * 0.1 + j * 0.01, "unit": "%"}
                    for j in range(per_message)]
        body = encode_json(gateway=f"gw-{g}", seq=seq, sent=ts + 500, clock="synced",
                           readings=readings)
        out.append((f"farm/v1/{county}/farm-{g % 50}/gw-{g}/telemetry", body))
    return out


class CPublishers:
    """The load, from Debian's C client (mosquitto_pub -l, QoS 1), one process
    per gateway, so that the publisher does not take the CPU the edge is
    measured on (on a farm the gateways are other machines)."""

    def __init__(self, port: int, county: str, n_msgs: int, per: int, gateways: int,
                 tmp: Path, rate: float = 0.0) -> None:
        msgs = payloads(county, n_msgs, per, gateways)
        self.files: list[tuple[str, Path]] = []
        by_topic: dict[str, list[bytes]] = {}
        for topic, body in msgs:
            by_topic.setdefault(topic, []).append(body)
        for k, (topic, bodies) in enumerate(by_topic.items()):
            f = tmp / f"{county}-{k}.jsonl"
            f.write_bytes(b"\n".join(bodies) + b"\n")
            self.files.append((topic, f))
        self.port, self.rate, self.county = port, rate, county
        self.procs: list[subprocess.Popen[bytes]] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        per_proc_rate = self.rate / len(self.files) if self.rate else 0.0
        for k, (topic, f) in enumerate(self.files):
            argv = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(self.port), "-q", "1", "-l",
                    "-t", topic, "-i", f"bench-{self.county}-{k}"]
            if not per_proc_rate:
                with f.open("rb") as stdin:
                    self.procs.append(subprocess.Popen(argv, stdin=stdin))
                continue
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE)
            self.procs.append(proc)

            def feed(proc: subprocess.Popen[bytes] = proc, f: Path = f) -> None:
                assert proc.stdin is not None
                t0 = time.monotonic()
                for i, line in enumerate(f.read_bytes().splitlines(keepends=True)):
                    delay = t0 + i / per_proc_rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    try:
                        proc.stdin.write(line)
                        proc.stdin.flush()
                    except BrokenPipeError:
                        return
                proc.stdin.close()

            t = threading.Thread(target=feed, daemon=True)
            t.start()
            self._threads.append(t)

    def wait(self, timeout: float = 900) -> None:
        for p in self.procs:
            p.wait(timeout)

    def kill(self) -> None:
        for p in self.procs:
            p.kill()


def count(url: str, db: str, where: str = "") -> int:
    s = influx_query(url, f'SELECT count("moisture") FROM "soil" {where}', db)
    return int(s[0]["values"][0][1]) if s else 0  # type: ignore[index]


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


class Edge:
    def __init__(self, mq: MosquittoServer, ix: InfluxServer, db: str, data: Path,
                 extra: dict[str, str] | None = None) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FARMEDGE_")}
        env.update(FARMEDGE_MQTT_URL=mq.url, FARMEDGE_INFLUX_URL=ix.url,
                   FARMEDGE_INFLUX_DATABASE=db, FARMEDGE_DATA_DIR=str(data),
                   FARMEDGE_HTTP_PORT=str(self.port), FARMEDGE_LOG_LEVEL="warning",
                   FARMEDGE_MQTT_CLIENT_ID=f"bench-edge-{db}", PYTHONPATH=str(ROOT),
                   # ingestion alone; bench_alerts.py measures the engine on and off
                   FARMEDGE_ALERTS_ENABLED="false")
        env.update(extra or {})
        self.proc = subprocess.Popen([sys.executable, "-m", "farmedge", "edge", "run"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # a benchmark that fails half way must not leave its edge running
        atexit.register(self.proc.kill)
        wait_edge_subscribed(self.port, 30, self.proc)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def ceiling(ix: InfluxServer, points: int) -> float:
    db = "ceiling"
    ix.create_database(db)
    lines = []
    # the same series and line shape as the end-to-end runs write
    for i in range(points):
        g = (i // 50) % GATEWAYS
        lines.append(f"soil,county=c,farm=farm-{g % 50},gateway=gw-{g},sensor=s{i % 50} "
                     f"moisture={20 + (i % 97) * 0.1} {BASE_TS + (i // (50 * GATEWAYS)) * 1000}")
    batches = ["\n".join(lines[k:k + 5000]).encode() for k in range(0, len(lines), 5000)]
    url = f"{ix.url}/write?db={db}&precision=ms"
    t0 = time.perf_counter()
    for b in batches:
        for _attempt in range(20):
            try:
                with urllib.request.urlopen(urllib.request.Request(url, data=b, method="POST"),
                                            timeout=60) as r:
                    if r.status == 204:
                        break
            except urllib.error.HTTPError as e:  # 1.6.7 answers 500 now and then
                if e.code < 500:
                    raise
            time.sleep(0.05)
    return points / (time.perf_counter() - t0)


def farmedge_e2e(mq: MosquittoServer, ix: InfluxServer, tmp: Path, readings: int, per: int,
                 tag: str) -> tuple[float, int, int, float]:
    db = f"e2e_{tag}"
    ix.create_database(db)
    edge = Edge(mq, ix, db, tmp / db)
    n_msgs = readings // per
    pubs = CPublishers(mq.port, f"c{tag}", n_msgs, per, GATEWAYS, tmp)
    c0 = process_stats(edge.proc.pid).cpu_s
    t0 = time.monotonic()
    pubs.start()
    while metric(edge.port, "farmedge_readings_written_total") < n_msgs * per:
        time.sleep(0.1)
        if time.monotonic() - t0 > 900:
            raise RuntimeError("farmedge did not finish in 15 minutes")
    elapsed = time.monotonic() - t0
    cpu_us = (process_stats(edge.proc.pid).cpu_s - c0) * 1e6 / (n_msgs * per)
    pubs.wait(60)
    peak = process_stats(edge.proc.pid).peak_rss_kb
    edge.stop()
    stored = count(ix.url, db)
    return n_msgs * per / elapsed, peak, stored, cpu_us


def naive(mq: MosquittoServer, ix: InfluxServer, tmp: Path, seconds: float, per: int) -> float:
    """One synchronous InfluxDB write per message, as tutorials do."""
    db = f"naive{per}"
    ix.create_database(db)
    written = [0]
    stop = threading.Event()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        doc = json.loads(msg.payload)
        _, _, county, farm, gw, _ = msg.topic.split("/")
        body = "\n".join(
            f"soil,county={county},farm={farm},gateway={gw},sensor={r['sensor']} "
            f"moisture={float(r['value'])} {r['ts']}" for r in doc["readings"])
        req = urllib.request.Request(f"{ix.url}/write?db={db}&precision=ms",
                                     data=body.encode(), method="POST")
        try:
            urllib.request.urlopen(req, timeout=30).close()
            written[0] += len(doc["readings"])
        except OSError:
            pass

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-naive{per}",
                      protocol=mqtt.MQTTv5)
    sub.on_message = on_message
    sub.connect("127.0.0.1", mq.port)
    sub.subscribe(f"farm/v1/cnaive{per}/+/+/telemetry", qos=1)
    sub.loop_start()
    time.sleep(0.5)
    n_msgs = int(seconds * 2000) + 4000  # more than it can take in `seconds`
    pubs = CPublishers(mq.port, f"cnaive{per}", n_msgs, per, GATEWAYS, tmp)
    pubs.start()
    time.sleep(2)  # warm up
    w0, t0 = written[0], time.monotonic()
    time.sleep(seconds)
    rate = (written[0] - w0) / (time.monotonic() - t0)
    stop.set()
    sub.disconnect()
    sub.loop_stop()
    pubs.kill()
    return rate


def latency(mq: MosquittoServer, ix: InfluxServer, tmp: Path, rate_readings: float,
            seconds: float) -> tuple[float, float, int]:
    db = "latency"
    ix.create_database(db)
    edge = Edge(mq, ix, db, tmp / db)
    per = 50
    bg_rate = rate_readings / per
    pubs = CPublishers(mq.port, "clat", int(bg_rate * (seconds + 5)), per, GATEWAYS, tmp,
                       rate=bg_rate)
    pubs.start()
    probe = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-probe",
                        protocol=mqtt.MQTTv5)
    probe.connect("127.0.0.1", mq.port)
    probe.loop_start()
    sent: dict[int, float] = {}
    seen: dict[int, float] = {}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set() or len(seen) < len(sent):
            s = influx_query(ix.url, "SELECT moisture FROM soil WHERE gateway='probe' "
                                     "AND time > now() - 10m", db)
            now = time.monotonic()
            for row in (s[0]["values"] if s else []):  # type: ignore[index]
                i = round((row[1] - 1) * 1000)
                seen.setdefault(i, now)
            if stop.is_set() and time.monotonic() > deadline:
                break
            time.sleep(0.02)

    deadline = time.monotonic() + seconds + 30
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    t_end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < t_end:
        now_ms = int(time.time() * 1000)
        body = encode_json(gateway="probe", seq=i, sent=now_ms, clock="synced", readings=[
            {"sensor": "p", "kind": "soil_moisture", "ts": now_ms, "value": 1 + i / 1000,
             "unit": "%"}])
        sent[i] = time.monotonic()
        probe.publish("farm/v1/clat/farm-p/probe/telemetry", body, qos=1)
        i += 1
        time.sleep(0.1)
    stop.set()
    poller.join(40)
    lat = sorted(seen[k] - sent[k] for k in sent if k in seen)
    pubs.kill()
    edge.stop()
    probe.disconnect()
    probe.loop_stop()
    if not lat:
        return float("nan"), float("nan"), 0
    p50 = statistics.median(lat)
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    return p50, p99, len(lat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readings", type=int, default=1_000_000,
                    help="readings per end-to-end run (default 1,000,000)")
    ap.add_argument("--single-readings", type=int, default=300_000,
                    help="readings for the 1-reading-message run (default 300,000)")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = ap.parse_args()
    if args.quick:
        args.readings, args.single_readings = 100_000, 30_000
    if shutil.which("mosquitto_pub") is None:
        sys.exit("bench_ingest needs mosquitto_pub: apt-get install mosquitto-clients "
                 "(scripts/bootstrap installs it)")
    tmp = Path(tempfile.mkdtemp(prefix="farmedge-bench-"))
    mq = MosquittoServer(tmp / "mq").start()
    ix = InfluxServer(tmp / "ix").start()
    print(f"machine: {os.cpu_count()} cores; InfluxDB 1.x and Mosquitto from Debian; "
          f"Python {sys.version.split()[0]}", flush=True)
    try:
        c = ceiling(ix, args.readings)
        print(f"(1) ceiling, raw InfluxDB 5,000-line batches : {c:>12,.0f} points/s", flush=True)
        e50, rss50, stored50, cpu50 = farmedge_e2e(mq, ix, tmp, args.readings, 50, "m50")
        print(f"(2) farmedge, 50-reading messages            : {e50:>12,.0f} readings/s "
              f"({stored50:,} of {args.readings:,} stored; edge CPU {cpu50:.1f} µs/reading)",
              flush=True)
        e1, rss1, stored1, cpu1 = farmedge_e2e(mq, ix, tmp, args.single_readings, 1, "m1")
        print(f"(2) farmedge, 1-reading messages             : {e1:>12,.0f} readings/s "
              f"({stored1:,} of {args.single_readings:,} stored; edge CPU {cpu1:.1f} µs/reading)",
              flush=True)
        secs = 10 if not args.quick else 4
        nv = naive(mq, ix, tmp, secs, 50)
        print(f"(3) naive ingestor, 50-reading messages      : {nv:>12,.0f} readings/s",
              flush=True)
        nv1 = naive(mq, ix, tmp, secs, 1)
        print(f"(3) naive ingestor, 1-reading messages       : {nv1:>12,.0f} readings/s",
              flush=True)
        p50, p99, n = latency(mq, ix, tmp, 0.1 * e50, 30 if not args.quick else 10)
        print(f"(4) latency publish→queryable at 10% load    : p50 {p50 * 1000:,.0f} ms, "
              f"p99 {p99 * 1000:,.0f} ms ({n} probes)", flush=True)
        print(f"(5) edge peak RSS                            : {rss50 / 1024:,.0f} MB "
              f"(50/msg run), {rss1 / 1024:,.0f} MB (1/msg run)")
        print(f"ratio (2)/(1), 50-reading messages           : {e50 / c:.2f}  (target ≥ 0.50)")
        print(f"ratio (2)/(3), 50-reading messages           : {e50 / nv:,.1f}×  (target ≥ 100×)")
        print(f"ratio (2)/(3), 1-reading messages            : {e1 / nv1:,.1f}×")
        print(f"1-reading messages                           : {e1:,.0f}/s  (target ≥ 10,000)")
        print(f"p99 latency                                  : {p99:.2f} s  (target ≤ 1.5 s)")
        print(f"RSS                                          : {max(rss50, rss1) / 1024:.0f} MB "
              "(target ≤ 120 MB)")
    finally:
        ix.stop()
        mq.stop()


if __name__ == "__main__":
    main()
