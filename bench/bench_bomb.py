"""Decompression bombs against the edge: event-loop stall, /healthz latency
and peak memory while the edge receives them.

Starts its own Mosquitto and InfluxDB 1.6.7 in a temp folder and an edge
service in a child process whose event loop also runs a task that ticks
every 10 ms and records how late each tick is (the stall: how long the loop
was busy with something else). Then, for ``--seconds`` each:

  baseline   good telemetry only (20 messages of 50 readings a second);
  bombs      the same telemetry plus ``--rate`` bombs a second, round robin:
             zstd 32 KiB -> 1 GiB with the size in the frame header, zstd
             -> 1 GiB without it (with and without the shared dictionary),
             DEFLATE 200 KiB -> 200 MiB, and 2 KiB of MessagePack that
             would be a million nested arrays.

/healthz is polled every 50 ms from a thread of this process throughout.
It prints, per phase: the largest and 99th-percentile tick lag, /healthz
p50/max latency, and at the end the edge's peak RSS (VmHWM), how many bombs
became dead letters and how many readings were stored. Usage:

    python bench/bench_bomb.py [--seconds 15] [--rate 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
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

from farmedge.contract import encode_json  # noqa: E402
from farmedge_dev.devservers import (  # noqa: E402
    free_port,
    influx_query,
    process_stats,
    running_servers,
    wait_edge_subscribed,
)
from tests.hostile import deflate_bomb, nested_arrays, zstd_bomb  # noqa: E402
from tests.support import Publisher  # noqa: E402

GiB = 1024**3
TICK_S = 0.01


# -- the child: the edge service plus a ticking task --------------------------


def child(lag_file: Path) -> int:
    from farmedge.checks import check_edge
    from farmedge.edge.app import EdgeService
    from farmedge.logs import setup_logging

    report, settings, registry = check_edge(None)
    if settings is None or report.errors:
        report.print("bench_bomb edge")
        return 2
    setup_logging("warning", "json")
    samples: list[tuple[float, float]] = []

    async def tick() -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + TICK_S
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            now = loop.time()
            samples.append((time.time(), now - due))
            due = now + TICK_S

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        ticker = asyncio.create_task(tick())
        try:
            await EdgeService(settings, registry=registry).run(stop)
        finally:
            ticker.cancel()

    try:
        asyncio.run(main())
    finally:
        lag_file.write_text(json.dumps(samples))
    return 0


# -- the parent -------------------------------------------------------------


class HealthPoller(threading.Thread):
    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/healthz"
        self.samples: list[tuple[float, float, int]] = []
        self.running = True

    def run(self) -> None:
        while self.running:
            t = time.time()
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=10) as r:
                    r.read()
                    code = r.status
            except urllib.error.HTTPError as e:
                code = e.code
            except OSError:
                code = 0
            self.samples.append((t, time.monotonic() - t0, code))
            time.sleep(0.05)


def good_message(gw: str, seq: int, ts: int) -> bytes:
    return encode_json(gateway=gw, seq=seq, sent=ts, clock="synced",
                       readings=[{"sensor": f"s{i}", "kind": "soil_moisture", "ts": ts,
                                  "value": 20.5, "unit": "%"} for i in range(50)])


def bombs() -> list[tuple[str, bytes]]:
    return [
        ("zstd 32 KiB -> 1 GiB, size declared", zstd_bomb(GiB)),
        ("zstd -> 1 GiB, size not declared", zstd_bomb(GiB, declare=False)),
        ("zstd + dictionary -> 1 GiB, not declared",
         zstd_bomb(GiB, declare=False, dictionary=True)),
        ("deflate 200 KiB -> 200 MiB", deflate_bomb(200 * 1024 * 1024)),
        ("msgpack: a million nested arrays", nested_arrays()),
    ]


def phase(pub: Publisher, county: str, seconds: float, rate: float, seq0: int,
          ts0: int) -> tuple[float, float, int, int]:
    """Publish for ``seconds``; returns (start, end, messages, bombs)."""
    kinds = bombs()
    start = time.time()
    t0 = time.monotonic()
    sent = n_bombs = 0
    next_good = next_bomb = t0
    while time.monotonic() - t0 < seconds:
        now = time.monotonic()
        if now >= next_good:
            seq = seq0 + sent
            pub.publish(f"farm/v1/{county}/farm-1/gw-good/telemetry",
                        good_message("gw-good", seq, ts0 + seq), wait=False)
            sent += 1
            next_good += 0.05
        if rate and now >= next_bomb:
            _, payload = kinds[n_bombs % len(kinds)]
            pub.publish(f"farm/v1/{county}/farm-1/gw-bomb/telemetry", payload, wait=False)
            n_bombs += 1
            next_bomb += 1 / rate
        time.sleep(max(0.0, min(next_good, next_bomb if rate else next_good)
                       - time.monotonic()))
    return start, time.time(), sent, n_bombs


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def count(url: str, db: str, q: str) -> int:
    try:
        s = influx_query(url, q, db)
    except Exception:
        return 0
    return int(s[0]["values"][0][1]) if s else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    ap.add_argument("--rate", type=float, default=20.0, help="bombs a second")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child)

    county = "bench"
    with tempfile.TemporaryDirectory(prefix="bench-bomb-") as tmp, \
            running_servers(Path(tmp)) as (mq, ix):
        db = "bomb"
        ix.create_database(db)
        port = free_port()
        lag_file = Path(tmp) / "lags.json"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FARMEDGE_")}
        env.update(FARMEDGE_MQTT_URL=mq.url, FARMEDGE_INFLUX_URL=ix.url,
                   FARMEDGE_INFLUX_DATABASE=db, FARMEDGE_DATA_DIR=str(Path(tmp) / "edge"),
                   FARMEDGE_HTTP_PORT=str(port), FARMEDGE_ALERTS_ENABLED="false",
                   FARMEDGE_MQTT_CLIENT_ID="edge-bench-bomb",
                   FARMEDGE_MQTT_TOPICS=json.dumps([f"farm/v1/{county}/+/+/telemetry"]),
                   PYTHONPATH=str(ROOT))
        log = (Path(tmp) / "edge.log").open("wb")
        edge = subprocess.Popen([sys.executable, __file__, "--child", str(lag_file)], env=env,
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_edge_subscribed(port, proc=edge)
            poller = HealthPoller(port)
            poller.start()
            pub = Publisher(mq.url)
            ts0 = int(time.time() * 1000) - 3_600_000
            base = phase(pub, county, args.seconds, 0, 0, ts0)
            bomb = phase(pub, county, args.seconds, args.rate, base[2], ts0)
            total_msgs = base[2] + bomb[2]
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and (
                    count(ix.url, db, 'SELECT count("moisture") FROM soil') < total_msgs * 50
                    or count(ix.url, db, 'SELECT count("count") FROM ingest_errors')
                    < bomb[3]):
                time.sleep(0.2)
            stats = process_stats(edge.pid)
            poller.running = False
            pub.close()
            stored = count(ix.url, db, 'SELECT count("moisture") FROM soil')
            letters: list[Any] = influx_query(
                ix.url, 'SELECT count("count") FROM ingest_errors GROUP BY reason', db)
        finally:
            edge.send_signal(signal.SIGTERM)
            try:
                edge.wait(30)
            except subprocess.TimeoutExpired:
                edge.kill()
        lags: list[tuple[float, float]] = json.loads(lag_file.read_text())

    def report(name: str, window: tuple[float, float, int, int]) -> None:
        a, b, msgs, n_bombs = window
        lag = [x for t, x in lags if a <= t <= b]
        hz = [d for t, d, _ in poller.samples if a <= t <= b]
        bad = sum(1 for t, _, c in poller.samples if a <= t <= b and c != 200)
        print(f"{name:9s}: {msgs} good messages, {n_bombs} bombs in {b - a:.0f} s | "
              f"loop stall max {max(lag, default=0) * 1000:.0f} ms, "
              f"p99 {pct(lag, 0.99) * 1000:.0f} ms | /healthz p50 "
              f"{statistics.median(hz) * 1000 if hz else float('nan'):.0f} ms, max "
              f"{max(hz, default=float('nan')) * 1000:.0f} ms ({len(hz)} polls, "
              f"{bad} not 200)")

    print(f"bombs (round robin): {'; '.join(f'{n} ({len(p):,} B)' for n, p in bombs())}")
    report("baseline", base)
    report("bombs", bomb)
    by_reason = {str(ser["tags"]["reason"]): int(ser["values"][0][1]) for ser in letters}
    print(f"dead letters: {by_reason} (bombs published: {bomb[3]})")
    print(f"readings stored: {stored:,} of {total_msgs * 50:,}")
    print(f"edge peak RSS (VmHWM): {stats.peak_rss_kb / 1024:.0f} MB, "
          f"RSS at the end {stats.rss_kb / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
