"""``farmedge demo`` end to end: real Mosquitto, InfluxDB, edge service and
simulated farms, run without a terminal as ``scripts/demo`` would."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support import eventually

pytestmark = [pytest.mark.slow, pytest.mark.servers]

ROOT = Path(__file__).resolve().parents[2]


def _demo(tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARMEDGE_")}
    return subprocess.Popen(
        [sys.executable, "-m", "farmedge", "demo", "--data-dir", str(tmp_path / "demo"),
         "--farms", "2", "--refresh", "1", *extra],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env=env)


def _check_final(out: str, tmp_path: Path) -> None:
    m = re.search(r"farms published (\d+) messages with (\d+) readings \((\d+) bad", out)
    assert m, out
    readings, bad = int(m[2]), int(m[3])
    assert readings > 0
    assert f"stored in InfluxDB {readings - bad} readings (every good reading stored)" in out
    assert f"rejected by the edge {bad} " in out
    assert re.search(r"farm-002 +\d+\.\d +-?\d+\.\d +3\d\.\d", out), out
    assert not (tmp_path / "demo").exists()  # removed without --keep-data


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_demo_runs_for_a_duration_and_exits_0(tmp_path: Path) -> None:
    proc = _demo(tmp_path, "--duration", "5", "--bad-rate", "0.05")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert re.search(r"readings/s written, \d+ stored", out), out
    _check_final(out, tmp_path)


def test_demo_stops_everything_on_sigint(tmp_path: Path) -> None:
    proc = _demo(tmp_path, "--bad-rate", "0.05")
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if "readings/s written" in line:
            break
    edge_pid = int(re.search(r"edge +pid (\d+)", "".join(lines))[1])  # type: ignore[index]
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    out = "".join(lines) + rest
    assert proc.returncode == 0, out
    _check_final(out, tmp_path)
    eventually(lambda: _gone(edge_pid), timeout=30, what="the edge process gone")


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[tuple[float, str | None]]:
    """The demo's output lines as they come, each with the monotonic time it
    was read (None at the end)."""
    q: queue.Queue[tuple[float, str | None]] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            q.put((time.monotonic(), line))
        q.put((time.monotonic(), None))

    threading.Thread(target=read, daemon=True).start()
    return q


def _until(q: queue.Queue[tuple[float, str | None]], pattern: str, deadline: float,
           seen: list[str]) -> tuple[float, re.Match[str]]:
    while True:
        try:
            t, line = q.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no line matching {pattern!r} in time:\n"
                                 f"{''.join(seen)}") from None
        if line is None:
            raise AssertionError(f"the demo ended before {pattern!r}:\n{''.join(seen)}")
        seen.append(line)
        if m := re.search(pattern, line):
            return t, m


def _rest(q: queue.Queue[tuple[float, str | None]], seen: list[str]) -> str:
    while (item := q.get(timeout=120))[1] is not None:
        seen.append(item[1])
    return "".join(seen)


def _stop(proc: subprocess.Popen[str]) -> None:
    """After a failed assertion: let the demo stop what it started (SIGTERM),
    kill it only if it does not."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_demo_shows_a_farmer_message_and_its_text_within_60_s(tmp_path: Path) -> None:
    """The first farm's dry plot and fevered cow bring a real alert, and the
    farmer's exact message is on screen within a minute of the demo's start
    (and the inbox received that very text)."""
    t0 = time.monotonic()
    proc = _demo(tmp_path, "--duration", "75", "--keep-data")
    q, seen = _lines(proc), list[str]()
    try:
        t, m = _until(q, r"-> message to farmers \((farm-\d+), [^)]*\) at \d+ s: (.+)$",
                      t0 + 90, seen)
        assert t - t0 <= 60, f"first farmer message after {t - t0:.0f} s:\n{''.join(seen)}"
        farm, text = m[1], m[2].strip()
        proc.send_signal(signal.SIGINT)
        out = _rest(q, seen)
        assert proc.wait(60) == 0, out
    finally:
        _stop(proc)
    assert re.search(r"alerts raised [1-9]", out), out
    assert re.search(r"messages to farmers +[1-9]", out), out
    assert "messages to operators" in out
    got = [json.loads(line) for line in
           (tmp_path / "demo" / "inbox.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {"to": farm, "message": text} in [{"to": g["to"], "message": g["message"]}
                                             for g in got], (text, got)
    # The shipped rule's text: the value, the target and what to do.
    assert re.search(r"(含水量|体温)\d+(\.\d)?", text), text


def _started_under(root: Path, demo_pid: int) -> dict[int, str]:
    """pid -> name of every process but the demo whose command line names
    ``root`` (the demo's servers, edge and gateway agents all take their
    config from it)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            name = (d / "comm").read_text().strip()
        except OSError:
            continue
        if str(root) in cmd and int(d.name) not in (demo_pid, os.getpid()):
            out[int(d.name)] = name
    return out


def test_sighup_stops_everything_the_demo_started(tmp_path: Path) -> None:
    """The terminal closing (SIGHUP) stops the demo in order: no Mosquitto,
    influxd, edge or gateway agent is left running, and it exits 0."""
    proc = _demo(tmp_path)
    q, seen = _lines(proc), list[str]()
    children: dict[int, str] = {}
    try:
        _until(q, r"readings/s written", time.monotonic() + 120, seen)
        children = _started_under(tmp_path / "demo", proc.pid)
        names = set(children.values())
        assert {"mosquitto", "influxd"} <= names, children
        assert len(children) >= 7, children  # and the edge, 4 gateway agents
        proc.send_signal(signal.SIGHUP)
        out = _rest(q, seen)
        assert proc.wait(60) == 0, out
        for pid, name in children.items():
            eventually(lambda pid=pid: _gone(pid), timeout=30,  # type: ignore[misc]
                       what=f"{name} (pid {pid}) gone")
        assert _started_under(tmp_path / "demo", proc.pid) == {}
    finally:
        _stop(proc)
        for pid in children:  # whatever is left, so that nothing outlives the test
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
