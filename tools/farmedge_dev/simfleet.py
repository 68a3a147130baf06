"""Real gateway agent processes for simulated farms (``farmedge demo``); not
to be confused with ``farmedge fleet`` (:mod:`farmedge.fleet`), the
operator's view of the real fleet.

:class:`SimulatedFleet` writes one ``gateway.toml`` per gateway of
:func:`farmedge.simdata.make_farms` (the simulated driver, same sensors,
animals and seed as ``farmedge simulate``), starts ``farmedge gateway run``
for each, and counts at the broker what they publish. It has the interface
of :class:`farmedge_dev.simulate.Simulator` that the demo uses: ``run(stop)``
and ``stats``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from farmedge.contract import COMPACT, STATUS_FILTER, TELEMETRY_FILTER, decode_compact
from farmedge.simdata import Episode, make_farms
from farmedge.transport.broker import parse_broker_url
from farmedge.transport.publisher import Publisher, Received

__all__ = ["SimulatedFleet"]


class SimulatedFleet:
    def __init__(self, *, root: Path, mqtt_url: str, county: str, farms: int,
                 gateways_per_farm: int, sensors: int, interval: float, bad_rate: float,
                 seed: int, episodes: Mapping[tuple[str, str], Episode] | None = None) -> None:
        from farmedge_dev.simulate import SimStats

        self.root = root
        self.mqtt_url = mqtt_url
        self.county = county
        self.interval = interval
        self.bad_rate = bad_rate
        self.seed = seed
        #: (farm, sensor id) -> the accelerated problem that device shows.
        self.episodes = dict(episodes or {})
        self.farms = make_farms(seed=seed, county=county, farms=farms,
                                gateways_per_farm=gateways_per_farm, sensors=sensors)
        self.stats = SimStats()
        self.procs: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()
        self._online: set[str] = set()
        #: Set once every agent said "online" on its status topic.
        self.ready = threading.Event()

    def _config(self, farm: str, gateway: str, sensors: Any) -> Path:
        by_id: dict[str, dict[str, Any]] = {}
        for s in sensors:
            entry = by_id.setdefault(s.sensor, {"kinds": [], "animal": s.animal})
            entry["kinds"].append(s.kind)
        lines = [
            "## Written by 'farmedge demo' (gateway.example.toml documents every key).",
            f"county = {json.dumps(self.county)}", f"farm = {json.dumps(farm)}",
            f"gateway = {json.dumps(gateway)}",
            f"data_dir = {json.dumps(str(self.root / gateway))}", 'log_format = "json"',
            "[mqtt]", f"url = {json.dumps(self.mqtt_url)}",
            "[outbox]", "commit_interval_s = 1.0",
            "[uplink]", f"batch_max_wait_s = {max(0.5, self.interval):g}",
            "[status]", "interval_s = 10.0",
            "[clock]", 'source = "trust"',
        ]
        for sid, e in by_id.items():
            lines += ["[[sensors]]", 'driver = "simulated"', f"id = {json.dumps(sid)}",
                      f"kinds = {json.dumps(e['kinds'])}", f"interval_s = {self.interval:g}",
                      f"seed = {self.seed}", f"bad_rate = {self.bad_rate:g}"]
            if e["animal"]:
                lines.append(f"animal = {json.dumps(e['animal'])}")
            ep = self.episodes.get((farm, sid))
            if ep is not None:
                lines += [f"episode_start = {ep.start_ms / 1000:.3f}",
                          f"episode_s = {ep.develop_s:g}"]
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{gateway}.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def _count(self, msg: Received) -> None:
        if msg.topic.endswith("/status"):
            try:
                doc = json.loads(msg.payload)
            except ValueError:
                return
            if doc.get("online"):
                self._online.add(str(doc.get("gateway")))
                if len(self._online) >= sum(len(f.gateways) for f in self.farms):
                    self.ready.set()
            return
        try:
            ct = msg.content_type
            doc = decode_compact(msg.payload) if ct == COMPACT else json.loads(msg.payload)
            readings = doc["readings"]
        except Exception:
            return
        bad = sum(1 for r in readings if r.get("quality", "ok") != "ok")
        with self._lock:
            self.stats.sent += 1
            self.stats.published += 1
            self.stats.readings += len(readings)
            self.stats.bad += bad

    def run(self, stop: threading.Event) -> None:
        counter = Publisher(parse_broker_url(self.mqtt_url),
                            client_id=f"farmedge-demo-count-{uuid.uuid4().hex[:6]}",
                            on_message=self._count)
        counter.connect(10)
        counter.subscribe([TELEMETRY_FILTER.replace("+", self.county, 1),
                           STATUS_FILTER.replace("+", self.county, 1)], qos=1)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FARMEDGE_")}
        try:
            for farm in self.farms:
                for gw in farm.gateways:
                    cfg = self._config(farm.farm, gw.gateway, gw.sensors)
                    with (self.root / f"{gw.gateway}.log").open("ab") as log:
                        self.procs.append(subprocess.Popen(
                            [sys.executable, "-m", "farmedge", "gateway", "run", "--config",
                             str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, start_new_session=True))
            while not stop.wait(0.5):
                for p in self.procs:
                    if p.poll() is not None:
                        raise RuntimeError(f"a gateway agent exited with {p.returncode} "
                                           f"(logs in {self.root})")
        finally:
            # SIGTERM: each agent commits, sends what is left and says offline.
            for p in self.procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in self.procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
            time.sleep(0.5)  # the last messages on their way to the counter
            counter.close()
            self.stats.finished = time.monotonic()
