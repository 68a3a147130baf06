"""The gateway agent as a process (``farmedge gateway run``) against a real
Mosquitto, the edge process and InfluxDB: what a planned stop, a lost link,
a clean restart and a clock hold look like at the broker and in the
``gateway`` measurement (docs/gateway.md, docs/protocol.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from farmedge_dev.devservers import InfluxServer, MosquittoServer, influx_query
from tests.gateway_support import EdgeProcess, Subscriber, write_gateway_toml
from tests.support import eventually

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.servers


def write_config(path: Path, url: str, county: str, data: Path, *,
                 source: str = "trust", hold_unsynced_s: float = 900.0) -> None:
    write_gateway_toml(
        path, url, county, data, outbox={"commit_interval_s": 0.1},
        uplink={"batch_max_wait_s": 0.05, "hold_unsynced_s": hold_unsynced_s},
        status={"interval_s": 0.5}, clock={"source": source},
        sensors=[{"driver": "simulated", "id": "soil-1", "kinds": ["soil_moisture"],
                  "interval_s": 0.05}])


#: ``farmedge gateway run`` whose clock probe says "not set" (this machine's
#: clock is set; a Raspberry Pi's after a power cut is not).
UNSYNCED_SCRIPT = """
import sys
from farmedge.gateway import clock
clock._timedatectl_synced = lambda: False
from farmedge.cli import main
sys.exit(main(["gateway", "run", "--config", sys.argv[1]]))
"""


def start(cfg: Path, log: Path, script: Path | None = None) -> subprocess.Popen[bytes]:
    argv = ([sys.executable, str(script), str(cfg)] if script is not None
            else [sys.executable, "-m", "farmedge", "gateway", "run", "--config", str(cfg)])
    with log.open("ab") as out:
        return subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                stdout=out, stderr=subprocess.STDOUT)


def stop(p: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> int:
    p.send_signal(sig)
    try:
        return p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def gateway_points(url: str, db: str, county: str, fields: str) -> list[list[Any]]:
    try:
        series = influx_query(url, f'SELECT {fields} FROM "gateway" WHERE "county" = '
                              f"'{county}'", db)
    except Exception:  # not there yet (the database is made by the edge)
        return []
    return [list(v) for s in series for v in s["values"]]  # type: ignore[union-attr]


def log_events(log: Path, event: str) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if event in line:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return [e for e in out if e.get("event") == event]


def test_a_clean_restart_continues_the_sequence_without_a_gap(
        tmp_path: Path, mosquitto: MosquittoServer, county: str, influxdb: InfluxServer,
        influx_db: str) -> None:
    sub = Subscriber(mosquitto.url, county)
    edge = EdgeProcess(mosquitto.url, influxdb.url, influx_db, tmp_path / "edge")
    cfg = tmp_path / "gw.toml"
    write_config(cfg, mosquitto.url, county, tmp_path / "data")
    for run in range(3):
        p = start(cfg, tmp_path / "gw.log")
        try:
            before = len(sub.telemetry)
            eventually(lambda b=before: len(sub.telemetry) >= b + 5, timeout=30,
                       what=f"messages of run {run}")
        finally:
            assert stop(p) == 0
    seqs = sorted({m.envelope.seq for m in sub.telemetry})
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), seqs  # no number skipped
    n_readings = len({(s, t) for s, _, t, _ in sub.readings()})

    def all_stored() -> bool:
        pts = influx_query(influxdb.url, 'SELECT count("moisture") FROM "soil" WHERE '
                           f"\"county\" = '{county}'", influx_db)
        got = pts[0]["values"][0][1] if pts else 0  # type: ignore[index]
        assert got >= n_readings, (got, n_readings)
        return True

    eventually(all_stored, timeout=30, what="every reading in InfluxDB")
    assert gateway_points(influxdb.url, influx_db, county, '"seq_gap"') == []
    edge.stop()
    sub.close()


def test_a_planned_stop_says_stopping_and_a_killed_gateway_s_will_says_lost(
        tmp_path: Path, mosquitto: MosquittoServer, county: str, influxdb: InfluxServer,
        influx_db: str) -> None:
    sub = Subscriber(mosquitto.url, county)
    edge = EdgeProcess(mosquitto.url, influxdb.url, influx_db, tmp_path / "edge")
    cfg = tmp_path / "gw.toml"
    write_config(cfg, mosquitto.url, county, tmp_path / "data")

    def offline(reason: str) -> list[list[Any]]:
        rows = gateway_points(influxdb.url, influx_db, county, '"online", "reason"')
        return [r for r in rows if r[1] is False and r[2] == reason]

    p = start(cfg, tmp_path / "gw.log")
    try:
        eventually(lambda: len(sub.telemetry) >= 3, timeout=30, what="first messages")
    finally:
        assert stop(p) == 0  # SIGTERM
    eventually(lambda: offline("stopping"), timeout=30, what="stopping stored")
    assert sub.status[-1]["reason"] == "stopping" and "ts" in sub.status[-1]
    p = start(cfg, tmp_path / "gw.log")
    try:
        eventually(lambda: sub.status[-1].get("online") is True, timeout=30, what="back")
    finally:
        stop(p, signal.SIGKILL)
    eventually(lambda: offline("lost"), timeout=30, what="the will stored")
    assert sub.status[-1] == {"v": 1, "gateway": "gw-1", "online": False, "reason": "lost"}
    # The latest point says lost; the planned stop before it, stopping.
    rows = gateway_points(influxdb.url, influx_db, county, '"online", "reason"')
    assert [r[2] for r in rows if r[1] is False][-2:] == ["stopping", "lost"]
    edge.stop()
    sub.close()


def test_a_clock_hold_is_logged_and_in_the_stored_status(
        tmp_path: Path, mosquitto: MosquittoServer, county: str, influxdb: InfluxServer,
        influx_db: str) -> None:
    sub = Subscriber(mosquitto.url, county)
    edge = EdgeProcess(mosquitto.url, influxdb.url, influx_db, tmp_path / "edge")
    cfg = tmp_path / "gw.toml"
    write_config(cfg, mosquitto.url, county, tmp_path / "data", source="timedatectl",
                 hold_unsynced_s=3600)
    script = tmp_path / "gw.py"
    script.write_text(UNSYNCED_SCRIPT)
    log = tmp_path / "gw.log"
    p = start(cfg, log, script)
    try:
        warned = eventually(lambda: log_events(log, "gateway.holding_unsynced"), timeout=30,
                            what="the hold logged")[0]
        assert warned["level"] == "warning" and warned["readings"] > 0
        assert (warned["hold_unsynced_s"], warned["clock_source"]) == (3600.0, "timedatectl")

        def held() -> list[list[Any]]:
            rows = gateway_points(influxdb.url, influx_db, county,
                                  '"held_unsynced", "held_for_s", "clock"')
            return [r for r in rows if r[1] and r[1] > 0 and r[3] == "unsynced"]

        eventually(held, timeout=30, what="the hold in the stored status")
        assert sub.telemetry == []  # held: nothing sent yet
        assert any(st.get("held_unsynced", 0) > 0 and "held_for_s" in st for st in sub.status)
    finally:
        assert stop(p) == 0
    edge.stop()
    sub.close()
