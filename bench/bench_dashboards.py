"""How long the Grafana dashboards' queries take on a county's worth of data.

Fills a fresh InfluxDB 1.x (Debian's, started on a free port) with FARMS
simulated farms, every contract kind every 10 minutes for DAYS days (the
points the edge writes, registry tags included), then runs every panel query
of every dashboard the way Grafana expands it (all farms selected, the
dashboard's default time range) and prints the time each took, slowest first,
and each dashboard's total (what one page load costs the server when Grafana
runs the queries one after another; it runs them in parallel).

    python bench/bench_dashboards.py [--farms 50] [--days 7]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from farmedge.provision import dashboards as gen  # noqa: E402
from farmedge.simdata import make_farms  # noqa: E402
from farmedge.storage.schema import KIND_POINTS  # noqa: E402
from farmedge_dev.devservers import InfluxServer, influx_query  # noqa: E402
from tests.grafana_support import (  # noqa: E402
    Selection,
    expand,
    panel_interval_ms,
    parse_duration,
)

STEP_MS = 600_000


def fill(url: str, db: str, farms: int, days: int) -> int:
    now = int(time.time() * 1000)
    start = now - days * 86_400_000
    sims = make_farms(seed=3, county="bench", farms=farms, sensors=11, fever_rate=0.05)
    n = 0
    batch: list[str] = []

    def flush() -> None:
        req = urllib.request.Request(f"{url}/write?db={db}&precision=ms",
                                     data="\n".join(batch).encode(), method="POST")
        for attempt in range(10):
            try:
                with urllib.request.urlopen(req, timeout=60):
                    break
            except Exception:
                if attempt == 9:
                    raise
                time.sleep(0.5)
        batch.clear()

    for f in sims:
        gw = f.gateways[0]
        base = f"county={f.county},farm={f.farm},gateway={gw.gateway}"
        for t in range(start, now, STEP_MS):
            for r in gw.round(t, interval_ms=STEP_MS):
                k = KIND_POINTS[r.kind]
                tags = f"{base},sensor={r.sensor}"
                if r.kind.startswith("soil_"):
                    tags += f",crop=maize,plot=field-{r.sensor.rsplit('-', 1)[1]}"
                if r.animal:
                    tags += f",animal={r.animal}"
                batch.append(f"{k.measurement},{tags} {k.field}={float(r.value)} {r.ts}")
                n += 1
            if t % 3_600_000 < STEP_MS:
                batch.append(f"gateway,{base} online=true,uptime_s=3600.0,outbox_depth=0i,"
                             f'dropped=0i,clock="synced",clock_synced=true,'
                             f"cpu_temperature=50.0,disk_free_mb=1000.0,"
                             f"outbox_oldest_age_s=0.0 {t}")
            if len(batch) >= 5000:
                flush()
    for k in range(0, days * 8640, 6):  # the edge's own points, every minute here
        batch.append(f"edge,instance=edge-1 messages={k}i,readings={k * 10}i,spool_lines=0i,"
                     f"spool_dropped=0i,pending=0i,write_p50_ms=5.0,write_p99_ms=20.0 "
                     f"{now - k * 10_000}")
        if len(batch) >= 5000:
            flush()
    if batch:
        flush()
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--farms", type=int, default=50)
    ap.add_argument("--days", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = InfluxServer(Path(tmp) / "influxdb").start()
        try:
            server.create_database("bench")
            t0 = time.monotonic()
            n = fill(server.url, "bench", args.farms, args.days)
            print(f"filled {n:,} readings ({args.farms} farms x 11 channels x {args.days} d "
                  f"every 10 min) in {time.monotonic() - t0:.1f} s")
            now = int(time.time() * 1000)
            rows: list[tuple[float, str, str]] = []
            totals: dict[str, float] = {}
            for doc in gen.dashboards().values():
                variables = {v["name"]: v for v in doc["templating"]["list"]}
                sel = {name: (Selection(values=[v["current"]["value"]])
                              if v["type"] == "custom" else Selection(all=True))
                       for name, v in variables.items()}
                span = parse_duration(doc["time"]["from"].removeprefix("now-"))
                start = now - span
                for p in doc["panels"]:
                    for t in p.get("targets", []):
                        interval = panel_interval_ms(start, now, min_interval=p.get("interval"),
                                                     datasource_interval="10s")
                        q = expand(t["query"], start_ms=start, end_ms=now,
                                   interval_ms=interval, variables=variables, selections=sel)
                        t1 = time.monotonic()
                        influx_query(server.url, q, "bench")
                        dt = time.monotonic() - t1
                        rows.append((dt, doc["title"], f"{p['title']} [{t['refId']}]"))
                        totals[doc["title"]] = totals.get(doc["title"], 0.0) + dt
            print("\nslowest panel queries (s):")
            for dt, board, panel in sorted(rows, reverse=True)[:10]:
                print(f"  {dt:7.3f}  {board} / {panel}")
            print("\nper dashboard, all queries one after another (s):")
            for board, total in totals.items():
                print(f"  {total:7.3f}  {board}")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
