"""Benchmark of the alert engine. Prints:

1. rule evaluation cost per reading with the shipped profiles (a county of
   mixed farms: maize plots, dairy barns with boluses, THI and troughs, device
   rules on everything), CPU µs per reading, and the cost of one timer pass;
2. the engine alone on the edge benchmark's workload (50-reading messages of
   soil moisture, open enrollment, the device rules): CPU µs per reading of
   ``on_accepted``, the part of (3) the engine adds;
3. edge throughput with alerts off and on (bench/bench_ingest.py's load:
   MQTT → edge → InfluxDB), interleaved (off, on, on, off, ...), at least
   three runs each: the median of each, the runs, and the edge's CPU per
   reading (medians);
4. latency from the reading that completes a condition to the notifier being
   called (p50/p99/max), with the engine under the same background load.

The records are handed to the engine as the edge does, one
``farmedge.records.Accepted`` per message (``on_accepted``). To measure
another tree (the code before a change), put it first on PYTHONPATH: the
edge processes started here use the same path.

Run: python bench/bench_alerts.py [--farms 200] [--rounds 20] [--edge-repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# After PYTHONPATH, so that a tree put there is the one measured.
sys.path.append(str(Path(__file__).resolve().parent.parent))

from farmedge.alerts import AlertEngine, AlertsSettings, load_rules
from farmedge.contract.kinds import KINDS
from farmedge.contract.models import Quality
from farmedge.contract.parse import NormalizedReading
from farmedge.records import Accepted
from farmedge.registry import (
    Contact,
    Farm,
    GatewayEntry,
    Herd,
    Plot,
    Registry,
    SensorMeta,
)

COUNTY = "bench"
START = 1_780_000_000.0   # a June morning (2026-05-28), inside the crops' months


class NullNotifier:
    """Records when it was called (the latency end point); sends nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []
        self.called = asyncio.Event()

    async def send(self, url: str, *, title: str, body: str) -> None:
        self.calls.append((time.perf_counter(), body))
        self.called.set()

    async def wait_for(self, n: int) -> None:
        while len(self.calls) < n:
            self.called.clear()
            await self.called.wait()


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def county(farms: int) -> Registry:
    out = []
    for i in range(farms):
        soil = {f"soil-{k}": SensorMeta(plot=f"p{k % 3}", crop="maize", interval_s=600)
                for k in range(10)}
        barn = {f"bolus-{k}": SensorMeta(animal=f"cow-{k}", interval_s=600) for k in range(20)}
        for name in ("air-t", "air-h", "trough-1", "trough-2"):
            barn[name] = SensorMeta(interval_s=600)
        out.append(Farm(
            county=COUNTY, farm=f"f{i}", profile="maize-blacksoil",
            plots={f"p{k}": Plot(name=f"{k}号地", field_capacity=36, wilting_point=19)
                   for k in range(3)},
            herds={"dairy": Herd(profile="cattle-dairy", animals=[f"cow-{k}" for k in range(20)])},
            gateways={"gw-field": GatewayEntry(interval_s=600, sensors=soil),
                      "gw-barn": GatewayEntry(interval_s=600, profile="cattle-dairy",
                                              sensors=barn)},
            contacts=[Contact(name="farmer", notify=["json://127.0.0.1:9/sms"])],
            daily_message_budget=1000))
    return Registry(farms=out)


def _r(sensor: str, kind: str, ts_ms: int, value: float,
       animal: str | None = None) -> NormalizedReading:
    return NormalizedReading(sensor, KINDS[kind], ts_ms, value, Quality.OK, animal)


def round_of(reg: Registry, ts_ms: int, rnd: random.Random) -> list[Accepted]:
    """One reporting interval of every sensor, values around normal: one
    message per gateway, with the gateway's registry entry as the edge
    resolves it."""
    out: list[Accepted] = []
    for f in reg.farms:
        field = [_r(f"soil-{k}", kind, ts_ms, base + rnd.uniform(-spread, spread))
                 for k in range(10)
                 for kind, base, spread in (("soil_moisture", 29, 2),
                                            ("soil_temperature", 18, 1))]
        field.append(_r("soil-0", "battery_voltage", ts_ms, 3.6 + rnd.uniform(0, 0.05)))
        barn = [_r(f"bolus-{k}", kind, ts_ms, base + rnd.uniform(-spread, spread))
                for k in range(20)
                for kind, base, spread in (("animal_body_temperature", 38.5, 0.3),
                                           ("animal_activity", 300, 50))]
        barn.append(_r("air-t", "air_temperature", ts_ms, 19 + rnd.uniform(-1, 1)))
        barn.append(_r("air-h", "air_humidity", ts_ms, 55 + rnd.uniform(-3, 3)))
        barn += [_r(t, "water_level", ts_ms, 70 + rnd.uniform(-5, 5))
                 for t in ("trough-1", "trough-2")]
        for gw, rs in (("gw-field", field), ("gw-barn", barn)):
            out.append(Accepted(COUNTY, f.farm, gw, ts_ms, True, 0, rs, f.gateways[gw]))
    return out


def readings_in(records: list[Accepted]) -> int:
    return sum(len(r.readings) for r in records)


async def evaluation_cost(args: argparse.Namespace, state: Path) -> dict[str, float]:
    clock = Clock(START)
    reg = county(args.farms)
    engine = AlertEngine(rules=load_rules(), registry=reg,
                         notifier=NullNotifier(), state_path=state, clock=clock,
                         settings=AlertsSettings(tick_s=3600))
    await engine.start()
    rnd = random.Random(1)
    n = 0
    cpu = 0.0
    for _ in range(args.rounds):
        records = round_of(reg, int(clock.t * 1000), rnd)
        t0 = time.process_time()
        for j in range(0, len(records), 10):       # the edge's batches: many messages
            engine.on_accepted(records[j:j + 10])
        cpu += time.process_time() - t0
        n += readings_in(records)
        clock.t += 600
        await asyncio.sleep(0)
    t0 = time.process_time()
    for _ in range(5):
        engine._pass(clock.t)
    pass_ms = (time.process_time() - t0) / 5 * 1000
    sensors = sum(len(g.sensors) for f in engine.registry.farms for g in f.gateways.values()) \
        if engine.registry else 0
    await engine.close()
    return {"readings": n, "us_per_reading": cpu / n * 1e6, "pass_ms": pass_ms,
            "sensors": sensors}


async def latency(args: argparse.Namespace, state: Path) -> list[float]:
    """Every sensor of the county reporting (background load); each trial is a
    frost reading that completes a 30-minute condition (the maize profile's
    `for`) on its own gateway, pending since the previous round."""
    clock = Clock(START)
    notifier = NullNotifier()
    reg = county(args.farms)
    engine = AlertEngine(rules=load_rules(), registry=reg, notifier=notifier,
                         state_path=state, clock=clock, settings=AlertsSettings(tick_s=1.0))
    await engine.start()
    rnd = random.Random(2)

    def frost(trial: int, value: float) -> Accepted:
        ts = int(clock.t * 1000)
        return Accepted(COUNTY, f"f{trial % args.farms}", f"gw-x{trial}", ts, True, 0,
                        [_r("air", "air_temperature", ts, value)])

    def full_round() -> None:
        rs = round_of(reg, int(clock.t * 1000), rnd)
        for j in range(0, len(rs), 10):
            engine.on_accepted(rs[j:j + 10])

    t0_sim = clock.t
    full_round()
    for trial in range(args.trials):     # frost starts: pending, 5 s apart
        clock.t = t0_sim + 5 * trial
        engine.on_accepted([frost(trial, -3.0)])
    await asyncio.sleep(0.1)
    clock.t = t0_sim + 1790
    full_round()
    await asyncio.sleep(0.1)
    background = round_of(reg, int(clock.t * 1000), rnd)
    lat: list[float] = []
    bg = 0
    for trial in range(args.trials):
        for _ in range(4):             # background between two trials: 4 messages
            engine.on_accepted([background[bg]])
            bg = (bg + 1) % len(background)
        await asyncio.sleep(0)
        done = len(notifier.calls)
        # This trial's 30 min are up now; the reading completes the condition.
        clock.t = t0_sim + 1800 + 5 * trial
        t0 = time.perf_counter()
        engine.on_accepted([frost(trial, -3.5)])
        await notifier.wait_for(done + 1)
        lat.append(notifier.calls[done][0] - t0)
    await engine.close()
    return lat


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def edge_workload_cost(args: argparse.Namespace, state: Path) -> float:
    """The engine alone on bench_ingest.py's workload, as the edge hands it
    (one Accepted per 50-reading message, open enrollment: no registry entry,
    the device rules): CPU µs per reading of on_accepted, best of 5 rounds."""
    clock = Clock(START)
    engine = AlertEngine(rules=load_rules(), registry=None, notifier=NullNotifier(),
                         state_path=state, clock=clock,
                         settings=AlertsSettings(tick_s=3600, max_reading_age_s=1e9))

    async def run() -> float:
        await engine.start()
        soil = KINDS["soil_moisture"]
        per, gateways, n_msgs = 50, 16, 4000
        records = []
        for i in range(n_msgs):     # bench_ingest.payloads: the same ids and values
            g, seq = i % gateways, i // gateways
            ts = int(START * 1000) - 86_400_000 + seq * 1000
            rs = [NormalizedReading(f"s{j}", soil, ts, 20.0 + (seq % 97) * 0.1 + j * 0.01,
                                    Quality.OK) for j in range(per)]
            records.append(Accepted(COUNTY, f"farm-{g % 50}", f"gw-{g}", ts, True, 0, rs))
        best = float("inf")
        for _ in range(5):
            t0 = time.process_time()
            for j in range(0, n_msgs, 20):      # 20 messages per durable batch
                engine.on_accepted(records[j:j + 20])
            best = min(best, time.process_time() - t0)
            clock.t += 1
            await asyncio.sleep(0)
        await engine.close()
        return best / (n_msgs * per) * 1e6

    return asyncio.run(run())


def loop_thread_times(pid: int) -> tuple[float, float]:
    """(on a CPU, runnable but waiting for one) in seconds, of the process's
    main thread (the edge's event loop), from /proc/PID/schedstat (Linux
    with schedstats; (0, 0) elsewhere)."""
    try:
        run_ns, wait_ns, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return 0.0, 0.0
    return int(run_ns) / 1e9, int(wait_ns) / 1e9


def edge_comparison(args: argparse.Namespace) -> list[str] | None:
    """Edge throughput (MQTT → edge → InfluxDB, bench_ingest.py's workload:
    50-reading messages from its simulated gateways, open enrollment) with
    alerts off and on, interleaved (off, on, on, off, off, on, ...), in one
    run. With alerts on every reading is evaluated (max_reading_age_s raised:
    the workload's readings are a day old), against the device rules (the
    workload has no registry). Reports medians and every run.

    With ``--edge-tree NAME=PATH`` (twice or more) the edges of each tree
    (PATH: what to put first on PYTHONPATH) run in turn within each round,
    so that trees meet the same load on a shared machine."""
    path = Path(__file__).with_name("bench_ingest.py")
    if not path.exists() or args.edge_readings <= 0:
        return None
    spec = importlib.util.spec_from_file_location("bench_ingest", path)
    assert spec and spec.loader
    bi: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bi)
    from farmedge_dev.devservers import InfluxServer, MosquittoServer, process_stats

    tmp = Path(tempfile.mkdtemp(prefix="farmedge-bench-alerts-"))
    mq = MosquittoServer(tmp / "mq").start()
    ix = InfluxServer(tmp / "ix").start()
    # The edge runs the tree this process imports (PYTHONPATH first), or each
    # tree given.
    trees: list[tuple[str, str]] = []
    for spec_ in args.edge_tree or []:
        name, _, tree_path = spec_.partition("=")
        trees.append((name, tree_path))
    if not trees:
        trees = [("", os.environ.get("PYTHONPATH", ""))]
    rates: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    # the loop thread's wall time split: on a CPU, waiting for one, blocked
    splits: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    n = args.edge_repeats
    # `python -m` puts the working directory first on sys.path, before
    # PYTHONPATH: start the edges from a folder without a farmedge in it.
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        for rep in range(n):
            for tree, tree_path in trees:
                path_env = os.pathsep.join(p for p in (tree_path, str(bi.ROOT)) if p)
                for mode in (("off", "on") if rep % 2 == 0 else ("on", "off")):
                    db = f"alerts_{tree or 'x'}_{mode}_{rep}"
                    ix.create_database(db)
                    extra = {"FARMEDGE_ALERTS_ENABLED": "true" if mode == "on" else "false",
                             "FARMEDGE_ALERTS_MAX_READING_AGE_S": "1e9",
                             "PYTHONPATH": path_env}
                    edge = bi.Edge(mq, ix, db, tmp / db, extra=extra)
                    per = 50
                    n_msgs = args.edge_readings // per
                    pubs = bi.CPublishers(mq.port, f"c{tree}{mode}{rep}", n_msgs, per,
                                          bi.GATEWAYS, tmp)
                    c0 = process_stats(edge.proc.pid).cpu_s
                    r0, w0 = loop_thread_times(edge.proc.pid)
                    t0 = time.monotonic()
                    pubs.start()
                    while bi.metric(edge.port, "farmedge_readings_written_total") < n_msgs * per:
                        time.sleep(0.05)
                        if time.monotonic() - t0 > 600:
                            raise RuntimeError("the edge did not finish in 10 minutes")
                    wall = time.monotonic() - t0
                    rate = n_msgs * per / wall
                    cpu = (process_stats(edge.proc.pid).cpu_s - c0) * 1e6 / (n_msgs * per)
                    r1, w1 = loop_thread_times(edge.proc.pid)
                    split = (r1 - r0, w1 - w0, max(0.0, wall - (r1 - r0) - (w1 - w0)))
                    splits.setdefault((tree, mode), []).append(split)
                    rates.setdefault((tree, mode), []).append(rate)
                    cpus.setdefault((tree, mode), []).append(cpu)
                    pubs.wait(60)
                    edge.stop()
                    print(f"  edge run {rep + 1} {tree} alerts {mode}: {rate:,.0f} readings/s, "
                          f"{cpu:.1f} µs CPU/reading; loop thread {split[0]:.2f} s on a CPU, "
                          f"{split[1]:.2f} s waiting for one, {split[2]:.2f} s blocked",
                          file=sys.stderr, flush=True)
    finally:
        os.chdir(cwd)
        ix.stop()
        mq.stop()
    med = statistics.median

    def runs(xs: list[float], f: str) -> str:
        return ", ".join(format(x, f) for x in xs)

    out = [f"edge, {args.edge_readings:,} readings in 50-reading messages, bench_ingest.py's "
           f"load, alerts off and on interleaved, {n} runs each"
           + (f", trees {' and '.join(t for t, _ in trees)} in turn:" if len(trees) > 1
              else ":")]
    for tree, _ in trees:
        label = f"{tree}: " if tree else ""
        ro, rn = rates[(tree, "off")], rates[(tree, "on")]
        co, cn = cpus[(tree, "off")], cpus[(tree, "on")]
        off, on, coff, con = med(ro), med(rn), med(co), med(cn)
        out += [f"  {label}runs alerts off: {runs(ro, ',.0f')} readings/s; "
                f"CPU {runs(co, '.1f')} µs/reading",
                f"  {label}runs alerts on:  {runs(rn, ',.0f')} readings/s; "
                f"CPU {runs(cn, '.1f')} µs/reading",
                f"  {label}throughput alerts off {off:,.0f}/s, on {on:,.0f}/s (medians of {n}): "
                f"{(1 - on / off) * 100:.1f} % lower with alerts on (target ≤ 10 %)",
                f"  {label}edge CPU per reading alerts off {coff:.1f} µs, on {con:.1f} µs "
                f"(medians): {con - coff:+.1f} µs, {(con / coff - 1) * 100:+.1f} %"]
        so, sn = splits[(tree, "off")], splits[(tree, "on")]

        def part(xs: list[tuple[float, float, float]], i: int) -> str:
            return runs([x[i] for x in xs], ".2f")

        # Without the time spent runnable but waiting for a CPU (the other
        # work on the machine), as if the edge had a core of its own.
        n_r = (args.edge_readings // 50) * 50
        own_o = [n_r / (x[0] + x[2]) for x in so if x[0] + x[2] > 0]
        own_n = [n_r / (x[0] + x[2]) for x in sn if x[0] + x[2] > 0]
        for m, xs in (("off", so), ("on", sn)):
            out.append(f"  {label}loop thread alerts {m}: on a CPU {part(xs, 0)} s; waiting for "
                       f"a CPU {part(xs, 1)} s; blocked {part(xs, 2)} s")
        if own_o and own_n:
            oo, on_ = med(own_o), med(own_n)
            out.append(f"  {label}throughput without the wait for a CPU: alerts off {oo:,.0f}/s, "
                       f"on {on_:,.0f}/s (medians): {(1 - on_ / oo) * 100:.1f} % lower with "
                       "alerts on")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--farms", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=20, help="reporting intervals to evaluate")
    ap.add_argument("--trials", type=int, default=200, help="latency trials")
    ap.add_argument("--ingest-rate", type=float, default=10_000,
                    help="readings/s to express the engine's CPU share against")
    ap.add_argument("--edge-readings", type=int, default=300_000,
                    help="readings per edge run, alerts off and on (0 skips)")
    ap.add_argument("--edge-repeats", type=int, default=3,
                    help="edge runs with alerts off and with alerts on (at least 3)")
    ap.add_argument("--edge-tree", action="append", metavar="NAME=PYTHONPATH",
                    help="run the edges of this tree too, in turn with the others "
                         "(e.g. before=/tmp/before:/tmp/before/tools); twice or more")
    ap.add_argument("--edge-only", action="store_true",
                    help="only the edge throughput runs")
    args = ap.parse_args()
    args.trials = min(args.trials, args.farms)   # one frost group per farm and trial
    import farmedge

    print(f"farmedge from {Path(farmedge.__file__).parent}")
    if args.edge_only:
        for line in edge_comparison(args) or ["edge throughput alerts off vs on: skipped"]:
            print(line, flush=True)
        return
    with tempfile.TemporaryDirectory() as d:
        ev = asyncio.run(evaluation_cost(args, Path(d) / "a.sqlite"))
        lat = asyncio.run(latency(args, Path(d) / "b.sqlite"))
        wl = edge_workload_cost(args, Path(d) / "c.sqlite")
    print(f"farms {args.farms}, registry sensors {ev['sensors']:.0f}, shipped profiles "
          f"(maize-blacksoil fields, cattle-dairy barns, device rules)")
    print(f"rule evaluation: {ev['us_per_reading']:.1f} µs CPU per reading "
          f"({ev['readings']:.0f} readings, contexts built in the first round); "
          f"one core evaluates {1e6 / ev['us_per_reading']:,.0f} readings/s")
    print(f"timer pass (silence/offline/pending/reminders over all entities): "
          f"{ev['pass_ms']:.1f} ms CPU")
    share = ev["us_per_reading"] * args.ingest_rate / 1e6 * 100
    print(f"engine CPU at {args.ingest_rate:,.0f} readings/s: {share:.1f} % of one core")
    print(f"engine on bench_ingest.py's workload (on_accepted, 50-reading messages, device "
          f"rules): {wl:.2f} µs CPU per reading (best of 5)")
    cmp_ = edge_comparison(args)
    for line in cmp_ or ["edge throughput alerts off vs on: skipped"]:
        print(line, flush=True)
    print(f"latency completing reading -> notifier called, {len(lat)} trials: "
          f"p50 {_pct(lat, 50) * 1000:.1f} ms, p99 {_pct(lat, 99) * 1000:.1f} ms, "
          f"max {max(lat) * 1000:.1f} ms (mean {statistics.fmean(lat) * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
