"""``farmedge demo`` end to end: real Mosquitto, InfluxDB, edge service and
simulated farms, run without a terminal as ``scripts/demo`` would."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
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
    eventually(lambda: _gone(edge_pid), timeout=5, what="the edge process gone")
