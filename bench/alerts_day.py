"""A county operator's day, compressed: what farmers and operators are sent.

A small center from the docs: a real Mosquitto and InfluxDB (devservers), the
edge service as a process with alerts on, and two real gateway agent
processes (``farmedge gateway run``, the simulated driver), each on a farm of
its own: one Chinese-speaking farmer, one English-speaking farmer, both on
Apprise ``json://`` endpoints served by a local HTTP receiver, and the
service center's operators (``center_contacts``) on another. The first
farm's plot dries out (:class:`farmedge.simdata.Episode`): the one real crop
alert. Over ``--minutes`` (15), at fixed shares of the run:

- a planned 3-second restart of the first gateway (SIGTERM, start again);
- the second gateway killed (SIGKILL), back after a while (longer than the
  last will's grace when the run is long enough: then its offline and back
  messages are real);
- the center's broker stopped for 20 s and started again;
- the second gateway's clock held unsynced (its clock probe says "not set",
  readings wait in its outbox), then started with a set clock;
- the edge restarted (SIGTERM, start again, same state).

At the end it prints every message to each farmer (who, text, time), every
message to operators, and the counts: real alerts delivered to farmers,
false ones to farmers (target 0), operator messages. The shortened grace
periods and rule durations are printed at the start.

    .venv/bin/python bench/alerts_day.py --minutes 15
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from farmedge.simdata import Episode, make_farms  # noqa: E402
from farmedge_dev.demo import CENTER, _Inbox, write_demo_rules  # noqa: E402
from farmedge_dev.devservers import InfluxServer, MosquittoServer, free_port  # noqa: E402

COUNTY = "day"
DATABASE = "farmedge"
#: Seconds between two readings of a sensor, and the registry's intervals.
READING_S = 5.0
SENSOR_INTERVAL_S = 5.0
GATEWAY_INTERVAL_S = 10.0
#: The shipped crop rules' durations are divided by this (for 1h holds 60 s,
#: a reminder after 24 h comes after 24 min: none within 15 minutes).
SPEEDUP = 60.0
#: Seconds in which the first farm's plot dries out.
EPISODE_S = 30.0
#: [alerts] keys shortened so that the run fits its minutes (defaults: 300,
#: 900, 60).
ALERTS = {"offline_will_grace_s": 60.0, "planned_stop_grace_s": 120.0,
          "reconnect_grace_s": 30.0}
BROKER_DOWN_S = 20.0
RESTART_S = 3.0

UNSYNCED_SCRIPT = """
import sys
from farmedge.gateway import clock
clock._timedatectl_synced = lambda: False
from farmedge.cli import main
sys.exit(main(["gateway", "run", "--config", sys.argv[1]]))
"""


@dataclass
class Gw:
    farm: str
    gateway: str
    sensors: list[Any]
    language: str
    proc: subprocess.Popen[bytes] | None = None


class Day:
    def __init__(self, root: Path, minutes: float) -> None:
        self.root = root
        self.minutes = minutes
        self.inbox = _Inbox()
        self.t0 = time.time()
        self.events: list[tuple[float, str]] = []
        self.edge: subprocess.Popen[bytes] | None = None
        self.http_port = free_port()
        farms = make_farms(seed=0, county=COUNTY, farms=2, gateways_per_farm=1, sensors=2)
        self.gws = [Gw(f.farm, f.gateways[0].gateway, list(f.gateways[0].sensors), lang)
                    for f, lang in zip(farms, ("zh", "en"), strict=True)]
        self.dry_plot = "3号地"
        self.episode = Episode(int(self.t0 * 1000), EPISODE_S)
        self.mq = MosquittoServer(root / "mosquitto")
        self.ix = InfluxServer(root / "influxdb")
        #: (start, end) of the second gateway's real outage.
        self.killed: tuple[float, float] | None = None

    # -- helpers ----------------------------------------------------------
    def at(self) -> float:
        return time.time() - self.t0

    def note(self, what: str) -> None:
        self.events.append((self.at(), what))
        print(f"[{self.at():6.1f} s] {what}", flush=True)

    def registry(self) -> Path:
        import yaml

        base = f"json://127.0.0.1:{self.inbox.port}/sms"
        farms = []
        for i, g in enumerate(self.gws, start=1):
            sensors: dict[str, Any] = {}
            plots: dict[str, Any] = {}
            for s in g.sensors:
                meta: dict[str, Any] = {"interval_s": SENSOR_INTERVAL_S}
                soil = s.soil_constants()
                if soil is not None:
                    plot = "field-3"
                    plots[plot] = {"name": self.dry_plot if i == 1 else "north field",
                                   "crop": "maize", "profile": "maize-blacksoil",
                                   "field_capacity": soil[0], "wilting_point": soil[1]}
                    meta.update(plot=plot, crop="maize", depth_cm=10)
                sensors.setdefault(s.sensor, {}).update(meta)
            name = "王家农场" if g.language == "zh" else "Miller farm"
            who = "王建国" if g.language == "zh" else "Tom Miller"
            farms.append({
                "county": COUNTY, "farm": g.farm, "name": name, "language": g.language,
                "gateways": {g.gateway: {"interval_s": GATEWAY_INTERVAL_S,
                                         "sensors": sensors}},
                "plots": plots,
                "contacts": [{"name": who, "language": g.language,
                              "notify": [f"{base}/{g.farm}"]}]})
        doc = {"farms": farms, "center_contacts": [
            {"name": "县服务中心", "language": "zh", "notify": [f"{base}/{CENTER}"]}]}
        path = self.root / "registry.yaml"
        path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False),
                        encoding="utf-8")
        return path

    def edge_config(self) -> Path:
        rules = write_demo_rules(self.root / "rules.yaml", SPEEDUP)
        path = self.root / "edge.toml"
        alerts = "".join(f"{k} = {v}\n" for k, v in ALERTS.items())
        path.write_text(
            f"data_dir = {json.dumps(str(self.root / 'edge'))}\n"
            f"registry = {json.dumps(str(self.registry()))}\n\n"
            f"[mqtt]\nurl = {json.dumps(self.mq.url)}\n\n"
            f"[influx]\nurl = {json.dumps(self.ix.url)}\ndatabase = {json.dumps(DATABASE)}\n\n"
            f"[http]\nport = {self.http_port}\n\n"
            f"[alerts]\nrules = [{json.dumps(str(rules))}]\n" + alerts,
            encoding="utf-8")
        return path

    def start_edge(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FARMEDGE_")}
        env["PYTHONUNBUFFERED"] = "1"
        with (self.root / "edge.log").open("ab") as log:
            self.edge = subprocess.Popen(
                [sys.executable, "-m", "farmedge", "edge", "run", "--config",
                 str(self.root / "edge.toml")], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            if self.edge.poll() is not None:
                raise SystemExit(f"the edge exited with {self.edge.returncode} "
                                 f"(log {self.root / 'edge.log'})")
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz",
                                            timeout=1) as r:
                    if r.status == 200:
                        return
            if time.monotonic() > deadline:
                raise SystemExit("the edge is not healthy after 60 s")
            time.sleep(0.2)

    def stop_edge(self) -> None:
        if self.edge is not None and self.edge.poll() is None:
            self.edge.send_signal(signal.SIGTERM)
            try:
                self.edge.wait(60)
            except subprocess.TimeoutExpired:
                self.edge.kill()
                self.edge.wait(10)

    def gw_config(self, g: Gw, *, unsynced: bool) -> Path:
        lines = [
            f"county = {json.dumps(COUNTY)}", f"farm = {json.dumps(g.farm)}",
            f"gateway = {json.dumps(g.gateway)}",
            f"data_dir = {json.dumps(str(self.root / g.gateway))}", 'log_format = "json"',
            "[mqtt]", f"url = {json.dumps(self.mq.url)}", "backoff_min_s = 0.5",
            "backoff_max_s = 2.0",
            "[outbox]", "commit_interval_s = 1.0",
            "[uplink]", "batch_max_wait_s = 1.0",
            f"hold_unsynced_s = {3600.0 if unsynced else 900.0}",
            "[status]", f"interval_s = {GATEWAY_INTERVAL_S}",
            "[clock]", f"source = {json.dumps('timedatectl' if unsynced else 'trust')}",
        ]
        by_id: dict[str, list[str]] = {}
        for s in g.sensors:
            by_id.setdefault(s.sensor, []).append(s.kind)
        for sid, kinds in by_id.items():
            lines += ["[[sensors]]", 'driver = "simulated"', f"id = {json.dumps(sid)}",
                      f"kinds = {json.dumps(kinds)}", f"interval_s = {READING_S}",
                      "seed = 0", "bad_rate = 0"]
            if g is self.gws[0] and sid.startswith("soil"):
                lines += [f"episode_start = {self.episode.start_ms / 1000:.3f}",
                          f"episode_s = {self.episode.develop_s:g}"]
        path = self.root / f"{g.gateway}{'-unsynced' if unsynced else ''}.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def start_gw(self, g: Gw, *, unsynced: bool = False) -> None:
        cfg = self.gw_config(g, unsynced=unsynced)
        if unsynced:
            script = self.root / "gw_unsynced.py"
            script.write_text(UNSYNCED_SCRIPT)
            argv = [sys.executable, str(script), str(cfg)]
        else:
            argv = [sys.executable, "-m", "farmedge", "gateway", "run", "--config", str(cfg)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("FARMEDGE_")}
        with (self.root / f"{g.gateway}.log").open("ab") as log:
            g.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=env,
                                      start_new_session=True)

    def stop_gw(self, g: Gw, sig: signal.Signals = signal.SIGTERM) -> None:
        if g.proc is None or g.proc.poll() is not None:
            return
        g.proc.send_signal(sig)
        try:
            g.proc.wait(30)
        except subprocess.TimeoutExpired:
            g.proc.kill()
            g.proc.wait(10)

    def sleep_until(self, share: float) -> None:
        end = self.t0 + share * self.minutes * 60
        while time.time() < end:
            time.sleep(min(1.0, max(0.0, end - time.time())))

    # -- the day ----------------------------------------------------------
    def run(self) -> None:
        self.mq.start()
        self.ix.start()
        self.ix.create_database(DATABASE)
        self.inbox.start(self.root / "inbox.jsonl")
        self.edge_config()
        self.start_edge()
        self.t0 = time.time()
        self.episode = Episode(int(self.t0 * 1000), EPISODE_S)
        a, b = self.gws
        for g in self.gws:
            self.start_gw(g)
        self.note(f"started: broker, InfluxDB, edge, {a.gateway} ({a.farm}, zh farmer, "
                  f"{self.dry_plot} dries out within {EPISODE_S:g} s), "
                  f"{b.gateway} ({b.farm}, en farmer)")
        self.sleep_until(0.15)
        self.note(f"planned restart of {a.gateway}: SIGTERM, {RESTART_S:g} s, start")
        self.stop_gw(a)
        time.sleep(RESTART_S)
        self.start_gw(a)
        self.sleep_until(0.25)
        self.note(f"{b.gateway} killed (SIGKILL)")
        k0 = self.at()
        self.stop_gw(b, signal.SIGKILL)
        self.sleep_until(0.40)
        self.start_gw(b)
        self.killed = (k0, self.at())
        self.note(f"{b.gateway} back after {self.killed[1] - k0:.0f} s")
        self.sleep_until(0.50)
        self.note(f"center broker stopped for {BROKER_DOWN_S:g} s")
        self.mq.stop()
        time.sleep(BROKER_DOWN_S)
        self.mq.start()
        self.note("center broker started again")
        self.sleep_until(0.60)
        self.note(f"{b.gateway} restarted with its clock unsynced (readings held)")
        self.stop_gw(b)
        self.start_gw(b, unsynced=True)
        self.sleep_until(0.75)
        self.note(f"{b.gateway} restarted with its clock set (held readings sent)")
        self.stop_gw(b)
        self.start_gw(b)
        self.sleep_until(0.82)
        self.note("edge restarted (SIGTERM, start again)")
        self.stop_edge()
        self.start_edge()
        self.sleep_until(1.0)
        self.note("end of the run")

    def close(self) -> None:
        for g in self.gws:
            with contextlib.suppress(Exception):
                self.stop_gw(g)
        with contextlib.suppress(Exception):
            self.stop_edge()
        self.inbox.stop()
        for s in (self.mq, self.ix):
            with contextlib.suppress(Exception):
                s.stop()

    # -- the figures -------------------------------------------------------
    def is_real(self, to: str, text: str, t: float) -> bool:
        a, b = self.gws
        low = text.lower()
        if to == a.farm and self.dry_plot in text and any(
                w in low for w in ("干", "旱", "灌溉", "dry", "drought", "irrigat")):
            return True
        if (to == b.farm and self.killed is not None
                and self.killed[1] - self.killed[0] > ALERTS["offline_will_grace_s"]):
            k0, k1 = self.killed
            return k0 <= t <= k1 + 60
        return False

    def report(self) -> None:
        got = self.inbox.messages()
        print()
        print(f"alerts_day: {self.minutes:g} minutes, county {COUNTY!r}, data in {self.root}")
        print("  shortened: [alerts] " + ", ".join(f"{k} = {v:g}" for k, v in ALERTS.items())
              + f"; crop rules' for/clear_for/remind_after/escalate_after / {SPEEDUP:g} "
              f"(for 1h holds {3600 / SPEEDUP:g} s), soil-water rules in every month; "
              f"registry interval gateway {GATEWAY_INTERVAL_S:g} s, sensor "
              f"{SENSOR_INTERVAL_S:g} s; everything else as shipped")
        print("  timeline:")
        for t, what in self.events:
            print(f"    {t:6.1f} s  {what}")
        real = false = 0
        for g in self.gws:
            mine = [m for m in got if m.to == g.farm]
            print(f"  messages to the farmer of {g.farm} ({g.language}): {len(mine)}")
            for m in mine:
                t = m.t_ms / 1000 - self.t0
                ok = self.is_real(m.to, m.text, t)
                real += ok
                false += not ok
                print(f"    {t:6.1f} s  [{'real' if ok else 'FALSE'}] {m.title}: "
                      f"{' '.join(m.text.split())}")
        ops = [m for m in got if m.to == CENTER]
        print(f"  messages to operators: {len(ops)}")
        for m in ops:
            print(f"    {m.t_ms / 1000 - self.t0:6.1f} s  {m.title}: {' '.join(m.text.split())}")
        print(f"  real alerts delivered to farmers: {real}")
        print(f"  false alerts to farmers: {false} (target 0)")
        print(f"  operator messages: {len(ops)}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=15.0, help="length of the run (default 15)")
    p.add_argument("--keep", action="store_true", help="keep the data folder")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="farmedge-alerts-day-"))
    day = Day(root, args.minutes)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        day.run()
    except KeyboardInterrupt:
        day.note("interrupted")
    finally:
        day.close()
        day.report()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "alerts_day"
    sys.exit(main())
