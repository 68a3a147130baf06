"""docs/install.md, followed on this machine: every ```sh block of the guide,
in order, taken from the document itself so that the guide cannot drift.

Only ports and paths are changed: the guide's ports (1883, 8883, 8086, 8080,
8000) become free ones, and its absolute paths (/etc/farmedge, /opt/farmedge,
/etc/mosquitto, /var/lib/influxdb, ...) folders under one temporary root,
in the blocks and in the copy of this checkout that stands for
/opt/farmedge. The root first gets what Debian's mosquitto and influxdb
packages install there (their config files, their data folders owned by
their users), as `apt-get install` leaves a machine.

No systemd runs here, so ``systemctl``, ``journalctl``, ``apt-get`` and
``sudo`` are stand-ins (tests/units_support.py, first on PATH): `systemctl
start X` runs the unit's ExecStartPre= and ExecStart= lines the way systemd
would, as the unit's User=, for the shipped units and for Debian's own
mosquitto.service and influxdb.service; `apt-get install` installs only what
is missing; we are root, so `sudo` runs the command. Everything else is
real: Mosquitto (dropping to its user, reading what provisioning wrote),
InfluxDB with authentication, `pip install` into a new venv, the edge and
the gateway agent as the user farmedge, Apprise posting to the guide's
stand-in inbox, whose output must show the guide's expected lines.

A block preceded by ``<!-- install-test: skip (reason) -->`` is not run;
``<!-- install-test: background NAME -->`` starts one that runs until the
end (a second terminal); ``<!-- install-test: expect NAME -->`` before a
```text block waits (with a deadline) until NAME's output shows its lines,
times of day aside. FARMEDGE_GUIDE_VERBOSE=1 (with pytest -s) prints what
each block printed.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from farmedge.provision.influx import read_dotenv
from farmedge_dev.devservers import free_port
from tests.stack_support import ROOT
from tests.units_support import BASE_PATH, Sandbox

GUIDE = ROOT / "docs" / "install.md"
PORTS = ("1883", "8883", "8086", "8080", "8000")
#: The guide's absolute paths, each moved under the test's root.
PATHS = ("/opt/farmedge", "/etc/farmedge", "/etc/mosquitto", "/etc/influxdb",
         "/etc/default", "/etc/systemd/system", "/var/lib/farmedge", "/var/lib/mosquitto",
         "/var/lib/influxdb", "/var/log/mosquitto", "/run/mosquitto")
MARKER = re.compile(r"<!--\s*install-test:\s*(\w+)\s*(.*?)\s*-->")

pytestmark = [pytest.mark.servers, pytest.mark.slow]


@dataclass
class Block:
    lang: str
    text: str
    line: int
    action: str  # "run", "skip", "background", "expect", "show"
    arg: str


def guide_blocks(text: str) -> list[Block]:
    """The fenced blocks of the guide with their markers."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.fullmatch(r"```(\S*)\s*", lines[i])
        if not m:
            i += 1
            continue
        lang, start = m.group(1), i
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        prev = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
        mk = MARKER.fullmatch(prev.strip())
        action, arg = (mk.group(1), mk.group(2)) if mk else (
            "run" if lang == "sh" else "show", "")
        blocks.append(Block(lang, "\n".join(lines[start + 1:j]), start + 1, action, arg))
        i = j + 1
    return blocks


def test_guide_blocks_are_all_accounted_for() -> None:
    """Commands only in ```sh blocks (each run unless skipped with a reason);
    no untested shell blocks under another name."""
    blocks = guide_blocks(GUIDE.read_text())
    assert not [b.line for b in blocks if b.lang in {"bash", "shell", "console", "shell-session"}]
    assert all(b.arg for b in blocks if b.action == "skip")
    assert {b.action for b in blocks} <= {"run", "skip", "background", "expect", "show"}
    assert sum(b.action == "run" for b in blocks) >= 8
    assert [b.arg for b in blocks if b.action == "background"] == ["inbox"]


# -- the machine ---------------------------------------------------------------


def _copy_checkout(dest: Path) -> None:
    """The checkout's files (tracked, and new ones not ignored), as a clone
    or a release would have them; symlinks kept."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if not (src.exists() or src.is_symlink()):
            continue  # deleted, not yet committed
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out, follow_symlinks=False)


def _as_debian_installs(sb: Sandbox, root: Path, rpc_port: int) -> None:
    """What `apt-get install mosquitto influxdb` puts on a machine, under root."""
    etc_mq = Path(sb.subst("/etc/mosquitto"))
    for d in ("conf.d", "certs", "ca_certificates"):
        (etc_mq / d).mkdir(parents=True, exist_ok=True)
    (etc_mq / "mosquitto.conf").write_text(sb.subst(Path("/etc/mosquitto/mosquitto.conf")
                                                    .read_text()))
    etc_ix = Path(sb.subst("/etc/influxdb"))
    etc_ix.mkdir(parents=True)
    # The meta service's own port (8088 by default), not in the guide.
    (etc_ix / "influxdb.conf").write_text(
        f'bind-address = "127.0.0.1:{rpc_port}"\n'
        + sb.subst(Path("/etc/influxdb/influxdb.conf").read_text()))
    Path(sb.subst("/etc/default")).mkdir(parents=True, exist_ok=True)
    Path(sb.subst("/etc/systemd/system")).mkdir(parents=True, exist_ok=True)
    for user, d in (("mosquitto", "/var/lib/mosquitto"), ("influxdb", "/var/lib/influxdb")):
        p = Path(sb.subst(d))
        p.mkdir(parents=True)
        shutil.chown(p, user, user)
    for p in root.rglob("*"):
        if p.is_dir():
            p.chmod(p.stat().st_mode | 0o755)


def _requirements() -> str | None:
    if os.geteuid() != 0:
        return "the guide's commands need root (sudo)"
    for path in ("/usr/sbin/mosquitto", "/usr/bin/influxd", "/lib/systemd/system/mosquitto.service",
                 "/lib/systemd/system/influxdb.service", "/etc/mosquitto/mosquitto.conf",
                 "/etc/influxdb/influxdb.conf", "/usr/bin/python3", "/usr/sbin/runuser"):
        if not Path(path).exists():
            return f"{path} is missing (Debian packages mosquitto, influxdb, python3-venv)"
    if subprocess.run(["/usr/bin/python3", "-c", "import venv, ensurepip"],
                      capture_output=True, check=False).returncode:
        return "Debian's python3 has no venv (python3-venv)"
    return None


@pytest.fixture
def machine() -> Iterator[tuple[Path, Sandbox, dict[str, str]]]:
    why = _requirements()
    if why:
        pytest.skip(why)
    root = Path(tempfile.mkdtemp(prefix="farmedge-install-"))
    root.chmod(0o755)
    ports = {p: str(free_port()) for p in PORTS}
    pairs = [[p, str(root / p.lstrip("/"))] for p in PATHS] + [[a, b] for a, b in ports.items()]
    (root / "substitutions.json").write_text(json.dumps(pairs))
    sb = Sandbox(root)
    _as_debian_installs(sb, root, free_port())
    opt = Path(sb.subst("/opt/farmedge"))
    _copy_checkout(opt)
    for p in (opt / "deploy").rglob("*"):
        if p.is_file() and not p.is_symlink():
            p.write_text(sb.subst(p.read_text()))
    shim = root / "shim"
    shim.mkdir()
    for cmd in ("systemctl", "journalctl", "apt-get", "sudo"):
        (shim / cmd).write_text(
            f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m tests.units_support "
            f"{cmd} \"$@\"\n")
        (shim / cmd).chmod(0o755)
    env = {"PATH": f"{shim}:{BASE_PATH}", "HOME": "/root", "LANG": "C.UTF-8",
           "FARMEDGE_INSTALL_TEST_ROOT": str(root), "TERM": "dumb"}
    try:
        yield root, sb, env
    finally:
        sb.stop_all()
        shutil.rmtree(root, ignore_errors=True)


def _untimed(line: str) -> str:
    return re.sub(r"^\d\d:\d\d:\d\d ", "", line.strip())


def _journal(root: Path) -> str:
    out = []
    for log in sorted((root / "journal").glob("*.log")) if (root / "journal").exists() else []:
        out.append(f"--- {log.name}\n{log.read_text(errors='replace')[-2500:]}")
    for log in sorted(root.glob("background-*.log")):
        out.append(f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}")
    mq = root / "var/log/mosquitto/mosquitto.log"
    if mq.exists():
        out.append(f"--- mosquitto.log\n{mq.read_text(errors='replace')[-2500:]}")
    return "\n".join(out)


def test_install_guide_to_the_first_alert(
        machine: tuple[Path, Sandbox, dict[str, str]]) -> None:
    root, sb, env = machine
    background: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    timings: list[tuple[int, float]] = []
    t0 = time.monotonic()
    try:
        for block in guide_blocks(GUIDE.read_text()):
            started = time.monotonic()
            if block.action == "run":
                r = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", sb.subst(block.text)],
                                   cwd=root, env=env, capture_output=True, text=True,
                                   timeout=600, check=False)
                if os.environ.get("FARMEDGE_GUIDE_VERBOSE"):
                    print(f"--- docs/install.md:{block.line}\n{r.stdout}{r.stderr}")
                assert r.returncode == 0, (
                    f"docs/install.md:{block.line}: exit {r.returncode}\n{block.text}\n"
                    f"--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}\n"
                    + _journal(root))
            elif block.action == "background":
                log = root / f"background-{block.arg}.log"
                with log.open("wb") as out:
                    proc = subprocess.Popen(
                        ["bash", "-e", "-c", f"exec {sb.subst(block.text)}"], cwd=root,
                        env={**env, "PYTHONUNBUFFERED": "1"}, stdout=out,
                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                        start_new_session=True)
                background[block.arg] = (proc, log)
            elif block.action == "expect":
                proc, log = background[block.arg]
                want = [_untimed(sb.subst(ln)) for ln in block.text.splitlines() if ln.strip()]
                deadline = time.monotonic() + 60
                while True:
                    got = [_untimed(ln) for ln in log.read_text(errors="replace").splitlines()]
                    missing = [w for w in want if w not in got]
                    if not missing:
                        break
                    assert proc.poll() is None and time.monotonic() < deadline, (
                        f"docs/install.md:{block.line}: {block.arg} did not show {missing}; "
                        f"it showed {got}\n" + _journal(root))
                    time.sleep(0.2)
            else:
                continue
            timings.append((block.line, time.monotonic() - started))
    finally:
        for proc, _ in background.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(10)
    total = time.monotonic() - t0
    print(f"\ndocs/install.md followed in {total:.1f} s; slowest blocks: "
          + ", ".join(f"line {ln} {s:.1f} s" for ln, s in
                      sorted(timings, key=lambda t: -t[1])[:4]))
    # What the guide promised along the way, on disk.
    influx_env = Path(sb.subst("/etc/farmedge/influx.env"))
    assert oct(influx_env.stat().st_mode & 0o777) == "0o600"
    edge_env = Path(sb.subst("/etc/farmedge/edge.env"))
    assert oct(edge_env.stat().st_mode & 0o777) == "0o600"
    assert {"FARMEDGE_MQTT_PASSWORD", "FARMEDGE_INFLUX_USERNAME", "FARMEDGE_INFLUX_PASSWORD"} \
        <= set(read_dotenv(edge_env))
    broker_dir = Path(sb.subst("/etc/mosquitto/farmedge"))
    dynsec = broker_dir / "dynamic-security.json"
    # Rewritten by the broker itself after the live changes: still its own.
    assert pwd.getpwuid(dynsec.stat().st_uid).pw_name == "mosquitto"
    admin = Path(sb.subst("/etc/mosquitto/farmedge-admin.toml"))
    assert oct(admin.stat().st_mode & 0o777) == "0o600" and admin.stat().st_uid == 0
