"""``farmedge demo``: the whole main job on one machine, with a live summary.

Starts a real Mosquitto broker and a real InfluxDB (Debian's packages, on
free local ports, data under ``var/demo``), the edge service as a child
process, and simulated farms publishing over MQTT. Every couple of seconds it
shows what reached InfluxDB: readings per second, each farm's latest soil
moisture, soil temperature and cattle body temperature, rejected readings by
reason, and alerts; and the messages that reached farmers and the service
center's operators, as a local inbox received them.

So that a real alert shows within the first minute, two devices of the first
farm carry an accelerated problem (:class:`farmedge.simdata.Episode`: a plot
that dries out, a cow that runs a fever, each within ``--episode-s``), and
the shipped crop and livestock rules run with their durations divided by
``--alert-speedup`` (``for: 1h`` holds 10 s). Thresholds and message texts
are the shipped ones.

Ctrl-C, SIGTERM, SIGHUP (the terminal closed) or ``--duration`` stops the
farms, lets the edge write what it holds, stops the edge and the servers, and
prints a final summary. Works without a terminal too (one line per refresh
and one per message).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

__all__ = ["ALERT_SPEEDUP", "EPISODE_S", "Demo", "DemoError", "add_parser",
           "write_demo_rules"]

DATABASE = "farmedge"
COUNTY = "demo"
#: The shipped crop and livestock rules' durations are divided by this in the
#: demo (``for: 1h`` holds 10 s, a reminder after 24 h comes after 4 min).
ALERT_SPEEDUP = 360.0
#: Seconds in which the first farm's dry plot and fevered cow develop.
EPISODE_S = 20.0
#: The rule keys that are durations of the alert's life (not data windows).
_RULE_DURATIONS = ("for", "clear_for", "remind_after", "escalate_after")
#: The shipped profile of each crop the demo's plots grow.
_CROP_PROFILES = {"maize": "maize-blacksoil", "soybean": "soybean-blacksoil"}
#: The path segment of the service center's contacts on the demo's inbox.
CENTER = "center"


class DemoError(RuntimeError):
    """A part of the demo could not start or stopped unexpectedly."""


class _Stopped(Exception):
    """A stop was asked for while the demo was still starting."""


def _q(name: str) -> str:
    return '"' + name.replace('"', '\\"') + '"'


@dataclass
class Snapshot:
    """What InfluxDB holds, as the live summary shows it."""

    stored: int = 0
    per_farm: dict[str, dict[str, tuple[float, int]]] = field(default_factory=dict)
    rejected: Counter[str] = field(default_factory=Counter)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    alerts_raised: int = 0


# (label, kind) of the per-farm columns.
_COLUMNS = (("soil moisture %", "soil_moisture"), ("soil temp °C", "soil_temperature"),
            ("body temp °C", "animal_body_temperature"))


class Demo:
    """Build it with the options, then :meth:`run` it."""

    def __init__(self, *, root: Path, farms: int = 5, gateways_per_farm: int = 2,
                 sensors: int = 11, interval: float = 1.0, bad_rate: float = 0.01,
                 seed: int = 0, keep_data: bool = False, refresh: float = 2.0,
                 out: TextIO | None = None, live_screen: bool | None = None,
                 episodes: bool = True, episode_s: float = EPISODE_S,
                 alert_speedup: float = ALERT_SPEEDUP) -> None:
        self.root = root.resolve()
        self.farms = farms
        self.gateways_per_farm = gateways_per_farm
        self.sensors = sensors
        self.interval = interval
        self.bad_rate = bad_rate
        self.seed = seed
        self.keep_data = keep_data
        self.refresh = refresh
        self.episodes = episodes
        self.episode_s = episode_s
        self.alert_speedup = alert_speedup
        self.out = out or sys.stdout
        self.live_screen = self.out.isatty() if live_screen is None else live_screen
        self._procs: list[Any] = []
        self._edge: subprocess.Popen[bytes] | None = None
        self._influx_url = ""
        self._started_ms = 0
        self._sim: Any = None
        self._sim_thread: threading.Thread | None = None
        self._sim_error: BaseException | None = None
        self._sim_stop = threading.Event()
        self._inbox = _Inbox()
        self._farms_stopped_ms: int | None = None
        self._t0 = time.monotonic()
        self._shown_messages = 0
        self._stop = threading.Event()

    # -- output ------------------------------------------------------------
    def _write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):
            # The terminal or the reader went away: carry on (and stop
            # everything in order) without output.
            if self.out is sys.stdout:
                with contextlib.suppress(OSError):
                    fd = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(fd, sys.stdout.fileno())
                    os.close(fd)
            self.out = io.StringIO()
            self.live_screen = False

    def _say(self, text: str) -> None:
        self._write(text + "\n")

    # -- lifecycle ---------------------------------------------------------
    def run(self, stop: threading.Event, *, duration: float | None = None) -> int:
        """Run until ``stop`` is set or ``duration`` seconds passed; 0 when
        every part started and stopped cleanly."""
        code = 0
        self._t0 = time.monotonic()
        self._stop = stop
        try:
            self._start_servers()
            self._check_stop()
            self._start_edge()
            self._check_stop()
            self._start_farms()
            self._loop(stop, duration)
        except _Stopped:
            self._say("farmedge demo: stopping while starting")
        except DemoError as exc:
            self._say(f"farmedge demo: {exc}")
            code = 1
        finally:
            code = self._shutdown() or code
        return code

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise _Stopped

    def _start_servers(self) -> None:
        from farmedge_dev.devservers import InfluxServer, MosquittoServer, ServerError

        if self.root.exists() and not self.keep_data:
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._say(f"farmedge demo: data in {self.root}")
        try:
            mq = MosquittoServer(self.root / "mosquitto")
            self._procs.append(mq)
            mq.start()
            ix = InfluxServer(self.root / "influxdb")
            self._procs.append(ix)
            ix.start()
            ix.create_database(DATABASE)
        except ServerError as exc:
            raise DemoError(str(exc)) from None
        self._mqtt_url = mq.url
        self._influx_url = ix.url
        self._say(f"  broker   {mq.url}  Mosquitto pid {_pid(mq)}  (log {mq.log_path})")
        self._say(f"  InfluxDB {ix.url}  database {DATABASE!r}  influxd pid {_pid(ix)}  "
                  f"(log {ix.log_path})")

    def _registry(self) -> Path:
        """A gateway registry for the simulated farms: plots with their soil
        constants and crop, the herd, and contacts whose messages the demo's
        own receiver collects (json:// is Apprise's JSON-over-HTTP target)."""
        import yaml

        from farmedge.simdata import make_farms

        base = f"json://127.0.0.1:{self._inbox.port}/sms"
        # Silence and offline rules wait 3 intervals: give them some slack
        # over the gateways' one-second uploads and the edge's batching.
        sensor_interval = max(self.interval, 5.0)
        gateway_interval = max(self.interval, 10.0)
        farms = []
        for i, fs in enumerate(make_farms(seed=self.seed, county=COUNTY, farms=self.farms,
                                          gateways_per_farm=self.gateways_per_farm,
                                          sensors=self.sensors), start=1):
            crop = "maize" if i % 3 else "soybean"
            plots: dict[str, Any] = {}
            animals: list[str] = []
            gateways: dict[str, Any] = {}
            for gw in fs.gateways:
                sensors: dict[str, Any] = {}
                for s in gw.sensors:
                    meta: dict[str, Any] = {"interval_s": sensor_interval}
                    soil = s.soil_constants()
                    if soil is not None:
                        plot = s.sensor.replace("soil", "field")
                        # The plot names its crop's profile: the farm's own
                        # profile (the trough's) would come before the crop's.
                        plots[plot] = {"name": plot.replace("field-", "") + "号地", "crop": crop,
                                       "profile": _CROP_PROFILES[crop],
                                       "field_capacity": soil[0], "wilting_point": soil[1]}
                        meta.update(plot=plot, crop=crop, depth_cm=10)
                    if s.animal is not None:
                        meta["animal"] = s.animal
                        if s.animal not in animals:
                            animals.append(s.animal)
                    sensors.setdefault(s.sensor, {}).update(meta)
                gateways[gw.gateway] = {"interval_s": gateway_interval, "sensors": sensors}
            # Plots get their crop's profile, the herd a cattle profile, and the
            # rest of the farm (the trough) this one.
            farm: dict[str, Any] = {
                "county": COUNTY, "farm": fs.farm, "name": f"示范农场 {i}",
                "language": "zh", "profile": "water-trough", "gateways": gateways,
                "plots": plots,
                "contacts": [{"name": f"farmer {i}", "language": "zh" if i % 2 else "en",
                              "notify": [f"{base}/{fs.farm}"]}],
            }
            if animals and _has_herds():
                farm["herds"] = {"cattle": {"name": "肉牛", "profile": "cattle-beef",
                                            "animals": animals}}
            farms.append(farm)
        doc = {"farms": farms, "center_contacts": [
            {"name": "county agronomist", "language": "en", "role": "agronomist",
             "notify": [f"{base}/{CENTER}"]}]}
        path = self.root / "registry.yaml"
        path.write_text("## Gateway registry of the demo's simulated farms, written by "
                        "'farmedge demo'.\n"
                        + yaml.safe_dump(doc, allow_unicode=True, sort_keys=False),
                        encoding="utf-8")
        return path

    def _edge_config(self, http_port: int) -> Path:
        path = self.root / "edge.toml"
        registry = self._registry()
        rules = ""
        if self.alert_speedup != 1:
            rules_path = write_demo_rules(self.root / "rules.yaml", self.alert_speedup)
            rules = ("\n[alerts]\n"
                     f"## The shipped crop and livestock profiles, durations / "
                     f"{self.alert_speedup:g}.\n"
                     f"rules = [{json.dumps(str(rules_path))}]\n")
        path.write_text(
            "## Edge service configuration written by 'farmedge demo'\n"
            "## (config.example.toml documents every key).\n"
            f"data_dir = {json.dumps(str(self.root / 'edge'))}\n"
            f"registry = {json.dumps(str(registry))}\n\n"
            "[mqtt]\n"
            f"url = {json.dumps(self._mqtt_url)}\n\n"
            "[influx]\n"
            f"url = {json.dumps(self._influx_url)}\n"
            f"database = {json.dumps(DATABASE)}\n\n"
            "[http]\n"
            f"port = {http_port}\n" + rules,
            encoding="utf-8",
        )
        return path

    def _start_edge(self) -> None:
        from farmedge_dev.devservers import free_port

        self._inbox.start(self.root / "inbox.jsonl")
        port = free_port()
        config = self._edge_config(port)
        log_path = self.root / "edge.log"
        # The demo's own config, not whatever FARMEDGE_* the caller exported.
        env = {k: v for k, v in os.environ.items() if not k.startswith("FARMEDGE_")}
        env["PYTHONUNBUFFERED"] = "1"
        with log_path.open("ab") as log:
            # Its own session: a Ctrl-C in the terminal reaches only the demo,
            # which then stops the edge in order (SIGTERM: flush, ack, exit).
            self._edge = subprocess.Popen(
                [sys.executable, "-m", "farmedge", "edge", "run", "--config", str(config)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True)
        health = f"http://127.0.0.1:{port}/healthz"
        deadline = time.monotonic() + 60
        while True:
            if self._edge.poll() is not None:
                raise DemoError(f"the edge service exited with {self._edge.returncode}:\n"
                                + _tail(log_path))
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(health, timeout=1) as r:
                    if r.status == 200:
                        break
            if time.monotonic() > deadline:
                raise DemoError(f"the edge service is not healthy after 60 s ({health}):\n"
                                + _tail(log_path))
            if self._stop.wait(0.2):
                raise _Stopped
        self._say(f"  edge     pid {self._edge.pid}  {health}  (config {config}, log {log_path})")

    def _start_farms(self) -> None:
        # Real gateway agent processes (farmedge gateway run) with the
        # simulated driver, publishing to the real broker.
        from farmedge_dev.simfleet import SimulatedFleet

        self._started_ms = int(time.time() * 1000)
        episodes = self._episodes(self._started_ms)
        self._sim = SimulatedFleet(
            root=self.root / "gateways", mqtt_url=self._mqtt_url, county=COUNTY,
            farms=self.farms, gateways_per_farm=self.gateways_per_farm, sensors=self.sensors,
            interval=self.interval, bad_rate=self.bad_rate, seed=self.seed,
            episodes=episodes)

        def run() -> None:
            try:
                self._sim.run(self._sim_stop)
            except BaseException as exc:  # reported by the main loop
                self._sim_error = exc

        self._sim_thread = threading.Thread(target=run, name="farms", daemon=True)
        self._sim_thread.start()
        deadline = time.monotonic() + 90
        while not self._sim.ready.wait(0.2):
            self._check_stop()
            if self._sim_error is not None:
                raise DemoError(f"the simulated farms stopped: {self._sim_error}")
            if time.monotonic() > deadline:
                raise DemoError(f"the gateway agents did not come online within 90 s "
                                f"(logs in {self.root / 'gateways'})")
        n = self.farms * self.gateways_per_farm
        self._say(f"  farms    {self.farms} simulated farms, {n} gateway agent processes, "
                  f"{n * self.sensors} sensors every {self.interval:g} s, "
                  f"{self.bad_rate:.1%} bad values injected")
        for (farm, sensor), _ep in sorted(episodes.items()):
            what = ("its plot dries out" if sensor.startswith("soil")
                    else "its cow runs a fever")
            self._say(f"  episode  {farm} {sensor}: {what} within {self.episode_s:g} s")
        if self.alert_speedup != 1:
            self._say(f"  alerts   shipped rules, durations / {self.alert_speedup:g} "
                      f"(for 1 h holds {3600 / self.alert_speedup:g} s); messages go to a "
                      f"local inbox ({self.root / 'inbox.jsonl'})")
        self._say("Ctrl-C stops the demo.")

    def _episodes(self, start_ms: int) -> dict[tuple[str, str], Any]:
        """The first farm's first soil probe dries out and its first bolus's
        cow runs a fever (when the farm has them and episodes are on)."""
        from farmedge.simdata import Episode, make_farms

        if not self.episodes:
            return {}
        first = make_farms(seed=self.seed, county=COUNTY, farms=1,
                           gateways_per_farm=self.gateways_per_farm, sensors=self.sensors)[0]
        out: dict[tuple[str, str], Any] = {}
        for want in ("soil_moisture", "animal_body_temperature"):
            for s in first.gateways[0].sensors:
                if s.kind == want:
                    out[(first.farm, s.sensor)] = Episode(start_ms, self.episode_s)
                    break
        return out

    def _loop(self, stop: threading.Event, duration: float | None) -> None:
        t0 = self._t0
        last_stored, last_t = 0, time.monotonic()
        rate = 0.0
        while not stop.wait(self.refresh):
            now = time.monotonic()
            if self._edge is not None and self._edge.poll() is not None:
                raise DemoError(f"the edge service exited with {self._edge.returncode}:\n"
                                + _tail(self.root / "edge.log"))
            if self._sim_error is not None:
                raise DemoError(f"the simulated farms stopped: {self._sim_error}")
            snap = self.snapshot()
            rate = (snap.stored - last_stored) / max(now - last_t, 1e-6)
            last_stored, last_t = snap.stored, now
            self._show(snap, rate, now - t0)
            if duration and now - t0 >= duration:
                break

    def _shutdown(self) -> int:
        code = 0
        stats = None
        if self._sim_thread is not None:
            # Gateways that stop say "offline", and the alert engine rightly
            # raises that: the summary shows what happened before this moment.
            self._farms_stopped_ms = int(time.time() * 1000)
            self._sim_stop.set()
            self._sim_thread.join(60)
            stats = self._sim.stats
        snap: Snapshot | None = None
        if stats is not None and self._edge is not None and self._edge.poll() is None:
            # Let the edge write what it holds before the summary counts it.
            good = stats.readings - stats.bad
            deadline = time.monotonic() + 20
            while True:
                with contextlib.suppress(Exception):
                    snap = self.snapshot()
                if (snap and snap.stored >= good) or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
        if self._edge is not None and self._edge.poll() is None:
            self._edge.send_signal(signal.SIGTERM)
            try:
                rc = self._edge.wait(30)
            except subprocess.TimeoutExpired:
                self._edge.kill()
                rc = self._edge.wait(5)
                self._say("farmedge demo: the edge did not stop within 30 s; killed it")
            if rc != 0:
                self._say(f"farmedge demo: the edge exited with {rc}")
                code = 1
        if stats is not None:
            self._final(stats, snap)
        for p in reversed(self._procs):
            with contextlib.suppress(Exception):
                p.stop()
        self._inbox.stop()
        if not self.keep_data and self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)
            self._say(f"Removed {self.root} (--keep-data keeps it).")
        elif self.root.exists():
            self._say(f"Data kept in {self.root}.")
        return code

    # -- what InfluxDB holds -----------------------------------------------
    def _query(self, q: str) -> list[dict[str, Any]]:
        from farmedge_dev.devservers import influx_query

        return influx_query(self._influx_url, q, DATABASE)

    def snapshot(self) -> Snapshot:
        from farmedge.storage.schema import KIND_POINTS, DeadLetterField, Measurement, Tag

        snap = Snapshot()
        since = f"time > {self._started_ms - 3_600_000}ms"
        measurements = sorted({p.measurement for p in KIND_POINTS.values()})
        q = f"SELECT count(*) FROM {', '.join(_q(m) for m in measurements)} WHERE {since}"
        for s in self._query(q):
            values = s.get("values") or [[0]]
            snap.stored += sum(int(v) for v in values[0][1:] if v)
        for _label, kind in _COLUMNS:
            k = KIND_POINTS[kind]
            q = (f"SELECT last({_q(k.field)}) FROM {_q(k.measurement)} WHERE {since} "
                 f"GROUP BY {_q(Tag.FARM)}")
            for s in self._query(q):
                farm = str((s.get("tags") or {}).get(Tag.FARM, "?"))
                ts, value = s["values"][0][0], s["values"][0][1]
                snap.per_farm.setdefault(farm, {})[kind] = (float(value), int(ts))
        q = (f"SELECT sum({_q(DeadLetterField.COUNT)}) FROM {_q(Measurement.INGEST_ERRORS)} "
             f"WHERE {since} GROUP BY {_q(Tag.REASON)}")
        with contextlib.suppress(Exception):
            for s in self._query(q):
                reason = str((s.get("tags") or {}).get(Tag.REASON, "?"))
                snap.rejected[reason] += int(s["values"][0][1] or 0)
        with contextlib.suppress(Exception):
            until = (f" AND time < {self._farms_stopped_ms}ms"
                     if self._farms_stopped_ms is not None else "")
            rows = self._query(f"SELECT * FROM {_q(Measurement.ALERTS)} WHERE {since}{until} "
                               f"AND {_q(Tag.EVENT)} = 'raise' ORDER BY time DESC LIMIT 200")
            for s in rows:
                cols = s.get("columns") or []
                for v in s.get("values") or []:
                    snap.alerts.append(dict(zip(cols, v, strict=False)))
            snap.alerts_raised = len(snap.alerts)
        return snap

    # -- screens -----------------------------------------------------------
    def _farm_lines(self, snap: Snapshot, limit: int = 12) -> list[str]:
        head = f"  {'farm':<10}" + "".join(f"{label:>17}" for label, _ in _COLUMNS)
        lines = [head]
        farms = sorted(snap.per_farm)
        for farm in farms[:limit]:
            row = f"  {farm:<10}"
            for _label, kind in _COLUMNS:
                v = snap.per_farm[farm].get(kind)
                row += f"{v[0]:>17.1f}" if v else f"{'-':>17}"
            lines.append(row)
        if len(farms) > limit:
            lines.append(f"  ... and {len(farms) - limit} more farms")
        return lines

    def _alert_lines(self, snap: Snapshot, limit: int = 5) -> list[str]:
        lines = []
        for a in snap.alerts[:limit]:
            text = a.get("text_en") or a.get("text") or a.get("title") or ""
            lines.append(f"  [{a.get('severity', '?')}] {a.get('farm', '?')}: {text}"[:120])
        return lines

    def _message_lines(self, limit: int = 3) -> list[str]:
        got = self._inbox.messages(before_ms=self._farms_stopped_ms)
        lines = []
        for label, center in (("messages to farmers  ", False), ("messages to operators", True)):
            mine = [m for m in got if (m.to == CENTER) == center]
            lines.append(f"  {label} {len(mine)}" + (" (latest first)" if mine else ""))
            for m in reversed(mine[-limit:]):
                lines.append(f"    -> {m.to} {m.title}: {m.one_line()}")
        return lines

    def _new_message_lines(self) -> list[str]:
        """One line per message that arrived since the last call."""
        got = self._inbox.messages()
        new, self._shown_messages = got[self._shown_messages:], len(got)
        return [f"  -> message to {'operators' if m.to == CENTER else 'farmers'} ({m.to}, "
                f"{m.title or 'no title'}) at {m.t_ms / 1000 - self._t_start_s():.0f} s: "
                f"{m.one_line()}" for m in new]

    def _t_start_s(self) -> float:
        """The demo's start, as a wall-clock epoch second."""
        return time.time() - (time.monotonic() - self._t0)

    def _show(self, snap: Snapshot, rate: float, elapsed: float) -> None:
        stats = self._sim.stats if self._sim else None
        rejected = sum(snap.rejected.values())
        reasons = ", ".join(f"{r} {n}" for r, n in snap.rejected.most_common()) or "none"
        if not self.live_screen:
            got = self._inbox.messages()
            to_center = sum(1 for m in got if m.to == CENTER)
            self._say(f"[{elapsed:5.0f} s] {rate:6.0f} readings/s written, {snap.stored} stored, "
                      f"{rejected} rejected ({reasons}), {snap.alerts_raised} alerts, "
                      f"{len(got) - to_center} messages to farmers, {to_center} to operators")
            for line in self._new_message_lines():
                self._say(line)
            return
        lines = [
            f"farmedge demo  {time.strftime('%H:%M:%S')}  running {elapsed:.0f} s"
            "   (Ctrl-C stops)",
            "",
            f"  written to InfluxDB  {rate:8.0f} readings/s   {snap.stored} readings stored",
        ]
        if stats is not None:
            lines.append(f"  published (acked)    {stats.published} messages, "
                         f"{stats.readings} readings, {stats.bad} bad values injected")
        lines += ["", *self._farm_lines(snap), "",
                  f"  rejected by the edge {rejected}: {reasons}", "",
                  f"  alerts raised        {snap.alerts_raised}"]
        lines += self._alert_lines(snap)
        lines += ["", *self._message_lines()]
        self._write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")

    def _final(self, stats: Any, snap: Snapshot | None) -> None:
        good = stats.readings - stats.bad
        self._say("")
        self._say(f"farmedge demo: finished after {stats.elapsed:.0f} s")
        self._say(f"  farms published {stats.published} messages with {stats.readings} "
                  f"readings ({stats.bad} bad values injected); "
                  f"{stats.published} of {stats.sent} acknowledged by the broker")
        if snap is None:
            self._say("  InfluxDB could not be queried")
            return
        verdict = ("every good reading stored" if snap.stored == good
                   else f"{good} good readings published, {good - snap.stored} not stored")
        self._say(f"  stored in InfluxDB {snap.stored} readings ({verdict})")
        reasons = ", ".join(f"{r} {n}" for r, n in snap.rejected.most_common()) or "none"
        self._say(f"  rejected by the edge {sum(snap.rejected.values())} ({reasons})")
        self._say(f"  alerts raised {snap.alerts_raised}")
        for line in self._alert_lines(snap):
            self._say(line)
        for line in self._message_lines():
            self._say(line)
        for line in self._farm_lines(snap):
            self._say(line)


def _has_herds() -> bool:
    from farmedge.registry import Farm

    return "herds" in Farm.model_fields


@dataclass(frozen=True, slots=True)
class Message:
    """One message as the inbox received it."""

    t_ms: int
    to: str          # the farm, or "center" for the service center's contacts
    title: str
    text: str

    def one_line(self, width: int = 110) -> str:
        return " ".join(self.text.split())[:width]


class _Inbox:
    """A local HTTP endpoint standing in for the SMS gateway: the registry's
    contacts notify ``json://127.0.0.1:<port>/sms/<farm>`` and the center's
    ``.../sms/center`` (Apprise posts ``{"title": ..., "message": ...}``, as
    :mod:`farmedge.alerts.inbox` prints them); the demo shows what arrived
    and appends each message to a JSON-lines file."""

    def __init__(self) -> None:
        self._got: list[Message] = []
        self._lock = threading.Lock()
        self._server: Any = None
        self._log: Path | None = None
        self.port = 0

    def start(self, log: Path | None = None) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        inbox = self
        self._log = log

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                title, text = "", ""
                try:
                    doc = json.loads(body)
                    title = str(doc.get("title") or "")
                    text = str(doc.get("message") or doc.get("body") or title)
                except (ValueError, AttributeError):
                    text = body.decode("utf-8", "replace")
                inbox.add(Message(int(time.time() * 1000), self.path.rsplit("/", 1)[-1],
                                  title, text))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, name="inbox", daemon=True).start()

    def add(self, m: Message) -> None:
        with self._lock:
            self._got.append(m)
            if self._log is not None:
                with contextlib.suppress(OSError), self._log.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"ts_ms": m.t_ms, "to": m.to, "title": m.title,
                                        "message": m.text}, ensure_ascii=False) + "\n")

    def messages(self, *, before_ms: int | None = None) -> list[Message]:
        """What arrived (before ``before_ms``), oldest first."""
        with self._lock:
            return [m for m in self._got if before_ms is None or m.t_ms < before_ms]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def write_demo_rules(path: Path, speedup: float) -> Path:
    """The shipped crop and livestock profiles with the durations of an
    alert's life (``for``, ``clear_for``, ``remind_after``,
    ``escalate_after``) divided by ``speedup``, and the season of the soil
    water rules lifted (the demo's dry plot dries in any month). Same names,
    so they replace the shipped ones; thresholds, data windows, device rules
    and the message texts stay as shipped."""
    import yaml

    from farmedge.alerts.rules import SHIPPED_DIR, parse_duration

    profiles: dict[str, Any] = {}
    for name in ("crops.yaml", "livestock.yaml"):
        doc = yaml.safe_load((SHIPPED_DIR / name).read_text(encoding="utf-8")) or {}
        for pname, prof in (doc.get("profiles") or {}).items():
            for rule in prof.get("rules") or []:
                for key in _RULE_DURATIONS:
                    if rule.get(key) is not None:
                        rule[key] = round(parse_duration(rule[key]) / speedup, 3)
                if rule.get("family") == "soil-water":
                    rule.pop("months", None)
            profiles[pname] = prof
    path.write_text(
        "## Written by 'farmedge demo': the shipped crop and livestock profiles with\n"
        f"## every for, clear_for, remind_after and escalate_after divided by {speedup:g},\n"
        "## and the soil water rules active in every month. Demo only.\n"
        + yaml.safe_dump({"profiles": profiles}, allow_unicode=True, sort_keys=False),
        encoding="utf-8")
    return path


def _pid(server: Any) -> str:
    proc = getattr(server, "proc", None)
    return str(proc.pid) if proc is not None else "?"


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# --- command line -------------------------------------------------------


def add_parser(subparsers: Any) -> None:
    from farmedge_dev.simulate import fraction, non_negative, positive_int, positive_number

    p = subparsers.add_parser(
        "demo", help="run broker, InfluxDB, the edge and simulated farms with a live summary",
        description=(
            "Start Mosquitto and InfluxDB on free local ports (data under --data-dir), the "
            "edge service and simulated farms, and show what reaches InfluxDB every couple "
            "of seconds. Ctrl-C stops everything."),
        epilog="examples:\n  farmedge demo\n  farmedge demo --farms 2 --duration 60 --keep-data\n"
               "  farmedge demo --no-episodes --alert-speedup 1\n"
               "    (the value model and the rules as shipped)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--farms", type=positive_int, default=5, help="simulated farms (default 5)")
    p.add_argument("--gateways-per-farm", type=positive_int, default=2,
                   help="gateways on each farm (default 2)")
    p.add_argument("--sensors", type=positive_int, default=11, help="sensor channels per gateway")
    p.add_argument("--interval", type=positive_number, default=1.0,
                   help="seconds between two readings of a sensor (default 1)")
    p.add_argument("--bad-rate", type=fraction, default=0.01,
                   help="share of readings replaced by bad values (default 0.01)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the simulated values: same seed, same values (default 0)")
    p.add_argument("--duration", type=non_negative, default=0,
                   help="stop after this many seconds (default 0: until Ctrl-C)")
    p.add_argument("--refresh", type=positive_number, default=2.0, help="seconds between summaries")
    p.add_argument("--data-dir", type=Path, default=Path("var/demo"),
                   help="where the servers and the edge keep their data (default var/demo)")
    p.add_argument("--keep-data", action="store_true",
                   help="keep the data folder afterwards (and reuse it next time)")
    p.add_argument("--no-episodes", dest="episodes", action="store_false",
                   help="no accelerated problems: only what the value model brings "
                        "(by default the first farm's first plot dries out and its first "
                        "bolus's cow runs a fever, within --episode-s)")
    p.add_argument("--episode-s", type=positive_number, default=EPISODE_S,
                   help=f"seconds in which those problems develop (default {EPISODE_S:g})")
    p.add_argument("--alert-speedup", type=positive_number, default=ALERT_SPEEDUP,
                   help="divide the shipped crop and livestock rules' durations (for, "
                        "clear_for, remind_after, escalate_after) by this; 1 runs them as "
                        f"shipped (default {ALERT_SPEEDUP:g}: 'for 1h' holds "
                        f"{3600 / ALERT_SPEEDUP:g} s)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from farmedge.cli import stop_on_signals

    stop = stop_on_signals()
    _stop_on_hangup(stop)
    demo = Demo(root=args.data_dir, farms=args.farms, gateways_per_farm=args.gateways_per_farm,
                sensors=args.sensors, interval=args.interval, bad_rate=args.bad_rate,
                seed=args.seed, keep_data=args.keep_data, refresh=args.refresh,
                episodes=args.episodes, episode_s=args.episode_s,
                alert_speedup=args.alert_speedup)
    return demo.run(stop, duration=args.duration or None)


def _stop_on_hangup(stop: threading.Event) -> None:
    """SIGHUP (the terminal closed) stops the demo like Ctrl-C: the servers and
    the edge run in sessions of their own, so nothing else would stop them.
    What went to that terminal now goes nowhere (a write to a hung-up
    terminal fails); a file or pipe keeps getting the output."""

    # Asked now: once the terminal hung up, it no longer answers as one.
    ttys = [fd for fd in (1, 2) if os.isatty(fd)]

    def on_hangup(signum: int, frame: Any) -> None:
        stop.set()
        with contextlib.suppress(OSError):
            null = os.open(os.devnull, os.O_WRONLY)
            for fd in ttys:
                os.dup2(null, fd)
            os.close(null)

    signal.signal(signal.SIGHUP, on_hangup)
