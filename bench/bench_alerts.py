"""Benchmark of the alert engine. Prints:

1. rule evaluation cost per reading with the shipped profiles (a county of
   mixed farms: maize plots, dairy barns with boluses, THI and troughs, device
   rules on everything), CPU µs per reading, and the cost of one timer pass;
2. the extra CPU the engine adds to ingestion: with the edge's benchmark
   (bench/bench_ingest.py) present, edge throughput with alerts off and on,
   side by side in one run; otherwise the engine's share of one core at a
   given ingest rate;
3. latency from the reading that completes a condition to the notifier being
   called (p50/p99/max), with the engine under the same background load.

Run: python bench/bench_alerts.py [--farms 200] [--rounds 30] [--trials 300]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from farmedge.alerts import AlertEngine, AlertsSettings, load_rules
from farmedge.edge.events import AcceptedReading
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


def round_of(farms: int, ts_ms: int, rnd: random.Random) -> list[AcceptedReading]:
    """One reporting interval of every sensor, values around normal."""
    out: list[AcceptedReading] = []
    for i in range(farms):
        f = f"f{i}"
        for k in range(10):
            tags = {"plot": f"p{k % 3}", "crop": "maize"}
            out.append(AcceptedReading(COUNTY, f, "gw-field", f"soil-{k}", "soil_moisture",
                                       ts_ms, 29 + rnd.uniform(-2, 2), "%", "ok", tags))
            out.append(AcceptedReading(COUNTY, f, "gw-field", f"soil-{k}", "soil_temperature",
                                       ts_ms, 18 + rnd.uniform(-1, 1), "degC", "ok", tags))
        out.append(AcceptedReading(COUNTY, f, "gw-field", "soil-0", "battery_voltage", ts_ms,
                                   3.6 + rnd.uniform(0, 0.05), "V", "ok"))
        for k in range(20):
            out.append(AcceptedReading(COUNTY, f, "gw-barn", f"bolus-{k}",
                                       "animal_body_temperature", ts_ms,
                                       38.5 + rnd.uniform(-0.3, 0.3), "degC", "ok",
                                       {"animal": f"cow-{k}"}))
            out.append(AcceptedReading(COUNTY, f, "gw-barn", f"bolus-{k}", "animal_activity",
                                       ts_ms, 300 + rnd.uniform(-50, 50), "steps/h", "ok",
                                       {"animal": f"cow-{k}"}))
        out.append(AcceptedReading(COUNTY, f, "gw-barn", "air-t", "air_temperature", ts_ms,
                                   19 + rnd.uniform(-1, 1), "degC", "ok"))
        out.append(AcceptedReading(COUNTY, f, "gw-barn", "air-h", "air_humidity", ts_ms,
                                   55 + rnd.uniform(-3, 3), "%RH", "ok"))
        for t in ("trough-1", "trough-2"):
            out.append(AcceptedReading(COUNTY, f, "gw-barn", t, "water_level", ts_ms,
                                       70 + rnd.uniform(-5, 5), "%", "ok"))
    return out


async def evaluation_cost(args: argparse.Namespace, state: Path) -> dict[str, float]:
    clock = Clock(START)
    engine = AlertEngine(rules=load_rules(), registry=county(args.farms),
                         notifier=NullNotifier(), state_path=state, clock=clock,
                         settings=AlertsSettings(tick_s=3600))
    await engine.start()
    rnd = random.Random(1)
    n = 0
    cpu = 0.0
    batch = 50
    for _ in range(args.rounds):
        readings = round_of(args.farms, int(clock.t * 1000), rnd)
        t0 = time.process_time()
        for j in range(0, len(readings), batch):
            engine.on_readings(readings[j:j + batch])
        cpu += time.process_time() - t0
        n += len(readings)
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
            "sensors": sensors, "evaluations": engine.stats["evaluations"] / n}


async def latency(args: argparse.Namespace, state: Path) -> list[float]:
    """Background load of every sensor reporting; each trial a frost reading on
    a fresh farm completes a 30-min condition (pending since 30 min before)."""
    clock = Clock(START)
    notifier = NullNotifier()
    engine = AlertEngine(rules=load_rules(), registry=county(args.farms), notifier=notifier,
                         state_path=state, clock=clock, settings=AlertsSettings(tick_s=1.0))
    await engine.start()
    rnd = random.Random(2)
    background = round_of(args.farms, int(clock.t * 1000), rnd)
    lat: list[float] = []
    bg = 0
    for trial in range(args.trials):
        farm = f"f{trial % args.farms}"
        gw = f"gw-x{trial}"
        ts = int(clock.t * 1000)
        first = AcceptedReading(COUNTY, farm, gw, "air", "air_temperature", ts, -3.0, "degC",
                                "ok")
        engine.on_readings([first])
        for _ in range(4):             # some background between the two readings
            engine.on_readings(background[bg:bg + 50])
            bg = (bg + 50) % len(background)
        await asyncio.sleep(0)
        clock.t += 1800                # the frost rule's `for` (maize: 30 min)
        done = len(notifier.calls)
        t0 = time.perf_counter()
        engine.on_readings([AcceptedReading(COUNTY, farm, gw, "air", "air_temperature",
                                            int(clock.t * 1000), -3.5, "degC", "ok")])
        await notifier.wait_for(done + 1)
        lat.append(notifier.calls[done][0] - t0)
        # The alert clears so the next trial's messages are the only ones.
        clock.t += 1
        engine.on_readings([AcceptedReading(COUNTY, farm, gw, "air", "air_temperature",
                                            int(clock.t * 1000), 5.0, "degC", "ok")])
        await notifier.wait_for(done + 2)
    await engine.close()
    return lat


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def edge_comparison(args: argparse.Namespace) -> str | None:
    """Edge throughput with alerts off and on, if the edge benchmark exists."""
    path = Path(__file__).with_name("bench_ingest.py")
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("bench_ingest", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    run = getattr(mod, "alerts_on_off", None)
    if run is None:
        return None
    out: Any = run(args)
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--farms", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=30, help="reporting intervals to evaluate")
    ap.add_argument("--trials", type=int, default=300, help="latency trials")
    ap.add_argument("--ingest-rate", type=float, default=10_000,
                    help="readings/s to express the engine's CPU share against")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        ev = asyncio.run(evaluation_cost(args, Path(d) / "a.sqlite"))
        lat = asyncio.run(latency(args, Path(d) / "b.sqlite"))
    print(f"farms {args.farms}, registry sensors {ev['sensors']:.0f}, shipped profiles "
          f"(maize-blacksoil fields, cattle-dairy barns, device rules)")
    print(f"rule evaluation: {ev['us_per_reading']:.1f} µs CPU per reading "
          f"({ev['evaluations']:.1f} rules per reading, {ev['readings']:.0f} readings); "
          f"one core evaluates {1e6 / ev['us_per_reading']:,.0f} readings/s")
    print(f"timer pass (silence/offline/pending/reminders over all entities): "
          f"{ev['pass_ms']:.1f} ms CPU")
    share = ev["us_per_reading"] * args.ingest_rate / 1e6 * 100
    print(f"engine CPU at {args.ingest_rate:,.0f} readings/s: {share:.1f} % of one core")
    cmp_ = edge_comparison(args)
    if cmp_ is not None:
        print(cmp_)
    else:
        print("edge throughput alerts off vs on: bench/bench_ingest.py not present")
    print(f"latency completing reading -> notifier called, {len(lat)} trials: "
          f"p50 {_pct(lat, 50) * 1000:.1f} ms, p99 {_pct(lat, 99) * 1000:.1f} ms, "
          f"max {max(lat) * 1000:.1f} ms (mean {statistics.fmean(lat) * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
