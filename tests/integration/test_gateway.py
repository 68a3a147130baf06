"""The gateway agent against a real Mosquitto: delivery only after PUBACK,
broker outages, clock correction (with a fake clock source injected through
the constructor), retained status and last will, and the configuration
files. The outbox and the agent's checks without a broker are in
tests/unit/gateway/."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from farmedge.backoff import Backoff
from farmedge.contract import GatewayStatus, Quality
from farmedge.gateway import FakeClock, Outbox, Sample
from farmedge.gateway.outbox import NewRow
from farmedge_dev.devservers import InfluxServer, MosquittoServer, influx_query
from tests.gateway_support import (
    AgentThread,
    EdgeProcess,
    Subscriber,
    gw_settings,
    influx_points,
    write_gateway_toml,
)
from tests.support import eventually

ROOT = Path(__file__).resolve().parents[2]


class CounterDriver:
    """Reads 0, 1, 2, ... (soil moisture); a test fake passed through the
    Agent constructor. With a clock it advances it one second per read and
    remembers the monotonic time of each value."""

    def __init__(self, per_read: int = 1, clock: FakeClock | None = None) -> None:
        self.n = 0
        self.per_read = per_read
        self.clock = clock
        self.mono: dict[int, int] = {}
        self.last = 0
        self.lock = threading.Lock()

    def read(self) -> list[Sample]:
        with self.lock:
            if self.clock is not None:
                self.clock.advance(1000)
            out = []
            for _ in range(self.per_read):
                mono = None
                if self.clock is not None:
                    self.mono[self.n] = self.clock.mono
                else:
                    # Each reading on its own millisecond, 3 ms apart (the
                    # stamp wall - (mono - m) may move by one between reads):
                    # InfluxDB keeps one point per series and time.
                    now = time.clock_gettime_ns(time.CLOCK_BOOTTIME) // 1_000_000
                    mono = self.last = max(now, self.last + 3)
                out.append(Sample("soil_moisture", float(self.n % 100), "%", mono_ms=mono))
                self.n += 1
            return out

    def close(self) -> None:
        pass


def row(i: int, *, ts: int = 1_763_800_000_000, synced: bool = True, mono: int = 0) -> NewRow:
    return NewRow("soil-1", "soil_moisture", "%", float(i), Quality.OK, None, ts + i, mono + i,
                  synced)


def test_backoff_is_capped_and_jittered() -> None:
    b = Backoff(1.0, 60.0, random.Random(7))
    waits = [b.next() for _ in range(12)]
    assert 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 2.0
    assert all(30.0 <= w <= 60.0 for w in waits[6:])
    assert len({round(w, 3) for w in waits[6:]}) == 6  # spread, not in lock step
    b.reset()
    assert b.next() <= 1.0


# -- agent against the broker -------------------------------------------------


@pytest.mark.servers
def test_readings_arrive_compact_in_order_and_status_is_retained(
        tmp_path: Path, mosquitto: MosquittoServer, county: str) -> None:
    sub = Subscriber(mosquitto.url, county)
    drv = CounterDriver(per_read=3)
    s = gw_settings(tmp_path, mosquitto.url, county,
                    sensors=[{"driver": "simulated", "id": "soil-1", "interval_s": 0.05}])
    agent = AgentThread(s, drivers={"soil-1": drv}).start()
    try:
        eventually(lambda: len(sub.readings()) >= 60, what="60 readings")
        st = eventually(lambda: [x for x in sub.status if x.get("online")], what="status")[-1]
        for key in ("uptime_s", "version", "outbox_depth", "outbox_oldest_age_s", "dropped",
                    "clock", "disk_free_mb", "ts"):
            assert key in st, key
        assert st["clock"] == "synced" and st["gateway"] == "gw-1"
        GatewayStatus.model_validate(st)  # the contract's model
        assert set(st) <= set(GatewayStatus.model_fields), st  # no key it does not know
    finally:
        agent.stop()
    # Clean stop: everything stored was sent, then "offline". The broker may
    # still be delivering the last of it to the subscriber. (A read still in
    # its thread when the samplers are cancelled counts in drv.n but is never
    # stored: compare with what the outbox took, not with what was read.)
    stored = agent.agent.samples
    assert drv.n - 3 <= stored <= drv.n
    eventually(lambda: len(sub.readings()) >= stored, what="every reading delivered")
    got = sub.readings()
    assert [v for *_, v in got] == [float(i % 100) for i in range(stored)]
    ts = [t for _, _, t, _ in got]
    assert ts == sorted(ts)
    assert set(sub.content_types) == {"application/vnd.farmedge.v1+compact"}
    eventually(lambda: sub.status[-1]["online"] is False, what="offline status")
    GatewayStatus.model_validate(sub.status[-1])
    assert agent.agent.outbox.depth == 0
    sub.close()


@pytest.mark.servers
@pytest.mark.slow
def test_broker_down_while_sampling_then_everything_arrives_in_order(
        tmp_path: Path, mosquitto_factory: Callable[[], MosquittoServer], county: str,
        influxdb: InfluxServer, influx_db: str) -> None:
    """Checked at the broker (a subscriber) and in InfluxDB through the edge."""
    mq = mosquitto_factory()
    sub = Subscriber(mq.url, county)
    edge = EdgeProcess(mq.url, influxdb.url, influx_db, tmp_path / "edge")
    drv = CounterDriver()  # one reading per read: each has its own time stamp
    s = gw_settings(tmp_path, mq.url, county, uplink={"encoding": "json", "max_rate": 300},
                    sensors=[{"driver": "simulated", "id": "soil-1", "interval_s": 0.01}])
    agent = AgentThread(s, drivers={"soil-1": drv}).start()
    try:
        eventually(lambda: len(sub.readings()) >= 20, what="first readings")
        mq.stop()  # SIGTERM: Mosquitto saves the subscriber's session
        down_from = time.time() * 1000
        eventually(lambda: drv.n >= len(sub.readings()) + 300, what="sampling while down")
        assert agent.agent.outbox.depth >= 200
        down_to = time.time() * 1000
        mq.start()
        eventually(lambda: len({r[3] for r in sub.readings()}) >= 100
                   and agent.agent.outbox.depth < 50, timeout=30, what="backlog sent")
    finally:
        agent.stop()
    got = sub.readings()
    # At least once: a message in flight when the broker went away may come
    # twice. Keep the first of each; then nothing is missing and all in order.
    seen: set[tuple[str, int, float]] = set()
    firsts = []
    for sensor, _, t, v in got:
        if (sensor, t, v) not in seen:
            seen.add((sensor, t, v))
            firsts.append((t, v))
    # Every reading taken arrives. A read still in its thread when the agent
    # stopped is not a reading: it counts in drv.n, not in samples.
    taken = agent.agent.samples
    assert drv.n - 1 <= taken <= drv.n
    assert [v for _, v in firsts] == [float(i % 100) for i in range(taken)]
    assert [t for t, _ in firsts] == sorted(t for t, _ in firsts)
    during = [t for t, _ in firsts if down_from + 200 < t < down_to - 200]
    assert len(during) > 100  # taken while the broker was down, sent with their own time
    sub.close()
    # In InfluxDB: every reading once, at its own time.
    want = sorted(firsts)
    def all_stored() -> bool:
        got = [(t, v) for t, v, _ in influx_points(influxdb.url, influx_db, "soil", "moisture")]
        missing = sorted(set(want) - set(got))
        assert not missing, (len(missing), missing[:5])
        return True

    eventually(all_stored, timeout=30, what="all readings in InfluxDB")
    # The edge stored the agent's status, through the outage and after.
    status = influx_query(influxdb.url, 'SELECT "online", "outbox_depth", "clock" FROM "gateway"'
                          f" WHERE \"county\" = '{county}'", influx_db)
    rows = status[0]["values"] if status else []
    assert any(r[1] is True and r[3] == "synced" for r in rows)  # type: ignore[index,union-attr]
    assert any(r[2] and r[2] > 100 for r in rows)  # type: ignore[index,union-attr]  # backlog
    edge.stop()
    assert [(t, v) for t, v, _ in influx_points(influxdb.url, influx_db, "soil", "moisture")
            ] == want


@pytest.mark.servers
def test_readings_of_an_unsynced_clock_are_held_then_redated(
        tmp_path: Path, mosquitto: MosquittoServer, county: str) -> None:
    clock = FakeClock(wall=946_684_800_000, mono=50_000, boot="boot-A", is_synced=False)
    drv = CounterDriver(clock=clock)
    sub = Subscriber(mosquitto.url, county)
    s = gw_settings(tmp_path, mosquitto.url, county, uplink={"hold_unsynced_s": 3600},
                    sensors=[{"driver": "simulated", "id": "soil-1", "interval_s": 0.05}])
    agent = AgentThread(s, clock=clock, drivers={"soil-1": drv}).start()
    try:
        eventually(lambda: agent.agent.outbox.depth >= 10, what="readings while unsynced")
        eventually(lambda: [x for x in sub.status if x.get("clock") == "unsynced"],
                   what="status says unsynced")
        assert sub.readings() == []  # held, waiting for the clock
        with drv.lock:  # NTP sets the clock: the wall clock jumps 26 years
            clock.wall = 1_763_800_000_000
            clock.is_synced = True
            offset = clock.wall - clock.mono
        eventually(lambda: len(sub.readings()) >= drv.n - 2 and drv.n > 20, what="sent")
    finally:
        agent.stop()
    got = sub.readings()
    assert all(p.envelope.clock == "synced" for p in sub.telemetry)
    for _, _, ts, v in got:
        n = next(k for k, m in drv.mono.items() if float(k % 100) == v)
        assert ts == drv.mono[n] + offset, (v, ts)
    sub.close()


@pytest.mark.servers
def test_readings_of_an_earlier_unsynced_boot_are_sent_marked_unsynced(
        tmp_path: Path, mosquitto: MosquittoServer, county: str) -> None:
    s = gw_settings(tmp_path, mosquitto.url, county)
    ob = Outbox(s.outbox_path).open()
    ob.add([row(i, ts=946_684_800_000, synced=False) for i in range(3)], "boot-before-cut")
    ob.add([row(i) for i in range(3, 5)], "boot-before-cut")
    ob.close()
    sub = Subscriber(mosquitto.url, county)
    agent = AgentThread(s, clock=FakeClock(boot="boot-now"), drivers={}).start()
    try:
        eventually(lambda: len(sub.readings()) == 5, what="backlog")
    finally:
        agent.stop()
    assert [(p.envelope.clock.value, len(p.readings)) for p in sub.telemetry] == [
        ("unsynced", 3), ("synced", 2)]
    sub.close()


# -- the real process: SIGKILL, last will, config files -----------------------

KILL_SCRIPT = """
import sys, time
from farmedge.gateway import drivers
from farmedge.gateway.drivers.base import Sample

class Counter:
    # 10 readings a read, each on its own millisecond (InfluxDB keeps one
    # point per series and time).
    def __init__(self, cfg, ctx):
        self.n = 0
        self.last = 0
    def read(self):
        # 3 ms apart: wall - (mono - m) may move by a millisecond between reads.
        now = time.clock_gettime_ns(time.CLOCK_BOOTTIME) // 1_000_000
        first = max(now - 27, self.last + 3)
        out = [Sample("animal_activity", float(self.n + i), "steps/h", mono_ms=first + 3 * i)
               for i in range(10)]
        self.n += 10
        self.last = first + 27
        return out
    def close(self):
        pass

drivers.DRIVERS["simulated"] = Counter
from farmedge.cli import main
sys.exit(main(["gateway", "run", "--config", sys.argv[1]]))
"""


def write_config(path: Path, url: str, county: str, data: Path, sensor: str) -> None:
    write_gateway_toml(path, url, county, data, outbox={"commit_interval_s": 0.1},
                       uplink={"batch_max_wait_s": 0.05},
                       sensors=[{"driver": "simulated", "id": sensor, "interval_s": 0.02}])


@pytest.mark.servers
@pytest.mark.slow
def test_sigkill_while_writing_loses_nothing_committed(
        tmp_path: Path, mosquitto: MosquittoServer, county: str, influxdb: InfluxServer,
        influx_db: str) -> None:
    """Kill -9 the agent eight times while it writes; then every committed
    reading is at the broker and exactly once in InfluxDB (through the edge)."""
    import sqlite3

    sub = Subscriber(mosquitto.url, county)
    edge = EdgeProcess(mosquitto.url, influxdb.url, influx_db, tmp_path / "edge")
    script = tmp_path / "gw.py"
    script.write_text(KILL_SCRIPT)
    data = tmp_path / "data"
    rnd = random.Random(3)
    committed: dict[str, set[float]] = {}
    runs = 8
    for r in range(runs + 1):
        sensor = f"k{r}"
        cfg = tmp_path / f"gw{r}.toml"
        write_config(cfg, mosquitto.url, county, data, sensor)
        log = (tmp_path / f"gw{r}.log").open("wb")
        p = subprocess.Popen([sys.executable, str(script), str(cfg)], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)},
                             stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            if r == runs:  # the last run drains the backlog and stops cleanly
                def backlog_sent(sensor: str = sensor) -> bool:
                    db = sqlite3.connect(f"file:{data / 'outbox.sqlite3'}?mode=ro", uri=True)
                    try:
                        return db.execute("SELECT COUNT(*) FROM reading WHERE sensor != ?",
                                          (sensor,)).fetchone()[0] == 0
                    except sqlite3.OperationalError:
                        return False
                    finally:
                        db.close()

                eventually(backlog_sent, timeout=60, interval=0.2, what="backlog sent")
                p.terminate()
                assert p.wait(30) == 0

                def all_committed_arrived() -> bool:
                    assert not sub.errors, sub.errors[:3]
                    for k, vals in committed.items():
                        missing = vals - sub.values.get(k, set())
                        assert not missing, (k, len(missing), sorted(missing)[:5])
                    return True

                eventually(all_committed_arrived, timeout=30, interval=0.2,
                           what="every committed reading at the broker")
                break
            eventually(lambda s=sensor: s in sub.values, what="started")
            time.sleep(rnd.uniform(0.05, 0.6))  # kill at a random moment while writing
            p.kill()
            p.wait(10)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        db = sqlite3.connect(data / "outbox.sqlite3")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        for s, v in db.execute("SELECT sensor, value FROM reading"):
            committed.setdefault(s, set()).add(v)
        committed.setdefault(sensor, set())
        db.close()
    got = sub.readings()
    for r in range(runs):
        sensor = f"k{r}"
        values = [v for s, _, _, v in got if s == sensor]
        distinct = set(values)
        top = max(distinct)
        # Sent in order and nothing skipped: every reading up to the last one
        # that left the gateway arrived; what was still committed arrived too.
        assert distinct == {float(i) for i in range(int(top) + 1)}, sensor
        assert committed[sensor] <= distinct, sensor
    # The broker published the last will while the process was dead, then
    # the clean stop said offline again.
    assert any(st == {"v": 1, "gateway": "gw-1", "online": False, "reason": "lost"}
               for st in sub.status)
    assert sub.status[-1]["reason"] == "stopping"
    sub.close()
    # Exactly once in InfluxDB: one point per distinct reading, duplicates
    # from resends after a kill landed on the same series and time.
    want = sorted((s, v) for s, vals in sub.values.items() for v in vals)

    def stored() -> list[tuple[str, float]]:
        pts = influx_points(influxdb.url, influx_db, "livestock", "activity")
        return sorted((sensor, v) for _, v, sensor in pts)

    def all_stored() -> bool:
        missing = sorted(set(want) - set(stored()))
        assert not missing, (len(missing), missing[:5])
        return True

    eventually(all_stored, timeout=60, interval=0.5, what="every reading in InfluxDB")
    edge.stop()
    assert stored() == want


def test_check_config_accepts_the_example_and_names_line_and_key(tmp_path: Path) -> None:
    def run(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "farmedge", "gateway", "check-config",
                               "--config", str(path)], cwd=ROOT, capture_output=True, text=True,
                              timeout=60)

    ok = run(ROOT / "gateway.example.toml")
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('county = "c1"\nfarm = "f1"\ngateway = "gw 1"\n[uplink]\nbatch_max = 0\n')
    out = run(bad)
    assert out.returncode == 2
    assert "bad.toml:3: gateway:" in out.stderr
    assert "bad.toml:5: [uplink] batch_max:" in out.stderr
