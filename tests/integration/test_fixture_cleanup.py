"""The servers that the fixtures start (each in a session of its own) are
stopped when the test run itself is stopped with SIGTERM or SIGHUP, as a
CI job's or a shell's timeout and a closed terminal stop it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import eventually

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.servers

HANGING_TEST = """
import os
import threading
from pathlib import Path


def test_hangs(mosquitto, mosquitto_factory):
    pids = [mosquitto.proc.pid, mosquitto_factory().proc.pid]
    Path(os.environ["PIDS_FILE"]).write_text(" ".join(map(str, pids)))
    threading.Event().wait()
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone too (its parent, the test run, has not reaped it yet).
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_stopped_test_run_stops_the_servers_it_started(tmp_path: Path,
                                                         sig: signal.Signals) -> None:
    (tmp_path / "test_hang.py").write_text(HANGING_TEST)
    pids_file = tmp_path / "pids"
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "--basetemp", str(tmp_path / "base"),
         str(tmp_path / "test_hang.py")],
        cwd=ROOT, env={**os.environ, "PIDS_FILE": str(pids_file)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pids: list[int] = []
    try:
        eventually(lambda: pids_file.exists() and pids_file.read_text(), timeout=120,
                   what="the hanging test's servers started")
        pids = [int(p) for p in pids_file.read_text().split()]
        run.send_signal(sig)
        out = run.communicate(timeout=120)[0].decode(errors="replace")
        eventually(lambda: not any(_alive(p) for p in pids), timeout=30,
                   what="the servers stopped")
        assert run.returncode == 128 + sig, out[-2000:]
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(30)
        for p in pids:  # what the run left behind (the failure above says so)
            if _alive(p):
                os.kill(p, signal.SIGKILL)
