"""The shipped systemd units (deploy/*/*.service): `systemd-analyze verify`
accepts them, their hardening is what docs/install.md says, and each unit's
ExecStartPre= and ExecStart= run as its User= against the real broker and
InfluxDB, then stop cleanly on KillSignal=. No systemd runs on these
machines, so tests/units_support.py starts the lines the way systemd would
(user, groups, environment, state folder); sandboxing options are checked
statically, not enforced."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from farmedge_dev.devservers import InfluxServer, MosquittoServer, free_port
from tests.stack_support import DEPLOY, ROOT, Client
from tests.support import eventually
from tests.units_support import Sandbox, Service, Unit, UnitError, exec_lines

UNITS = sorted(DEPLOY.glob("*/*.service"))
VENV = "/opt/farmedge/venv"


def test_there_are_units_for_the_edge_and_the_gateway() -> None:
    assert {u.name for u in UNITS} >= {"farmedge-edge.service", "farmedge-gateway.service"}


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify(path: Path, tmp_path: Path) -> None:
    """`systemd-analyze verify` on the unit, its venv path pointed at this
    one's (it checks that ExecStart's program exists); any complaint, also a
    mere warning such as an unknown key, fails."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd; "
                    "scripts/bootstrap installs it)")
    copy = tmp_path / path.name
    copy.write_text(path.read_text().replace(VENV, sys.prefix))
    r = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                       timeout=60, check=False, cwd=tmp_path)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def test_edge_unit_hardening() -> None:
    u = Unit.load(DEPLOY / "edge" / "farmedge-edge.service")
    assert u.get("User") == "farmedge" and u.get("Group") == "farmedge"
    assert u.get("Restart") == "on-failure"
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                       "ProtectHome": "yes", "PrivateTmp": "yes",
                       "PrivateDevices": "yes"}.items():
        assert u.get(key, "unset") == value, key
    assert ("CapabilityBoundingSet", "") in u.sections["Service"]  # no capabilities
    data_dir = dict(v.split("=", 1) for v in u.all("Environment"))["FARMEDGE_DATA_DIR"]
    assert u.get("StateDirectory") == data_dir.removeprefix("/var/lib/")
    assert data_dir in u.get("ReadWritePaths").split()


def test_gateway_unit_names_no_host_specific_group() -> None:
    """SupplementaryGroups=gpio stopped the unit on hosts without a gpio group
    (systemd: 216/GROUP); group membership belongs to the user instead."""
    u = Unit.load(DEPLOY / "gateway" / "farmedge-gateway.service")
    assert not u.all("SupplementaryGroups")
    data_dir = dict(v.split("=", 1) for v in u.all("Environment"))["FARMEDGE_DATA_DIR"]
    assert u.get("StateDirectory") == data_dir.removeprefix("/var/lib/")
    assert data_dir in u.get("ReadWritePaths").split()


# -- running them as their user ---------------------------------------------


def ensure_user(name: str) -> None:
    """The user the units run as, created as docs/install.md does."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--home-dir",
                        "/var/lib/farmedge", "--shell", "/usr/sbin/nologin", name], check=True)


def _public_dir(prefix: str) -> Path:
    """A temporary folder other users can enter (pytest's own are private)."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    d.chmod(0o755)
    return d


@pytest.fixture(scope="session")
def venv() -> Iterator[Path]:
    """farmedge installed the way docs/install.md does it: Debian's python3, a
    venv, `pip install` of this checkout (the test's own .venv may use a
    Python the service user cannot run)."""
    if os.geteuid() != 0:
        pytest.skip("running a unit as its User= needs root (to switch users)")
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("Debian's python3 is not installed")
    d = _public_dir("farmedge-units-venv-")
    try:
        subprocess.run([python, "-m", "venv", str(d / "venv")], check=True, timeout=120)
        r = subprocess.run([str(d / "venv/bin/pip"), "install", "-q",
                            f"{ROOT}[gateway,edge,alerts]"], capture_output=True, text=True,
                           timeout=600, check=False)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        yield d / "venv"
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def root(venv: Path) -> Iterator[Path]:
    """A folder standing for / (etc/farmedge, var/lib), the venv in place of
    /opt/farmedge/venv."""
    ensure_user("farmedge")
    d = _public_dir("farmedge-units-")
    (d / "substitutions.json").write_text(json.dumps([
        [VENV, str(venv)], ["/etc/farmedge", str(d / "etc/farmedge")],
        ["/var/lib", str(d / "var/lib")]]))
    (d / "etc/farmedge").mkdir(parents=True)
    shutil.chown(d / "etc/farmedge", "root", "farmedge")
    (d / "etc/farmedge").chmod(0o750)
    yield d
    Sandbox(d).stop_all()
    shutil.rmtree(d, ignore_errors=True)


def _write(path: Path, text: str, mode: int = 0o640) -> None:
    path.write_text(text)
    shutil.chown(path, "root", "farmedge")
    path.chmod(mode)


def _service(root: Path, name: str) -> Service:
    sb = Sandbox(root)
    unit = Unit.load(DEPLOY / name.split("-")[1].removesuffix(".service") / name, sb.subst)
    return Service(unit, sb.subst, root / f"{name}.log")


def _owned_by_farmedge(path: Path) -> bool:
    return path.exists() and pwd.getpwuid(path.stat().st_uid).pw_name == "farmedge"


def test_edge_unit_runs_as_farmedge(root: Path, mosquitto: MosquittoServer,
                                    influxdb: InfluxServer, influx_db: str, county: str) -> None:
    port = free_port()
    _write(root / "etc/farmedge/edge.toml", f"""
[mqtt]
  url = "{mosquitto.url}"
  client_id = "edge-units-{county}"
  topics = ["farm/v1/{county}/+/+/telemetry", "farm/v1/{county}/+/+/status"]
[influx]
  url = "{influxdb.url}"
  database = "{influx_db}"
[http]
  port = {port}
""")
    # Read by systemd (root) only; the service gets the variables.
    _write(root / "etc/farmedge/edge.env", "FARMEDGE_INSTANCE=edge-units\n", 0o600)
    svc = _service(root, "farmedge-edge.service")
    assert [a[1:3] for a, _ in exec_lines(svc.unit, "ExecStartPre")] == [
        ["edge", "check-config"]]
    proc = svc.start()
    try:
        def healthy() -> bool:
            assert proc.poll() is None, svc.log.read_text() if svc.log else ""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        eventually(healthy, timeout=60, what="edge healthy")
        status = Path(f"/proc/{proc.pid}/status").read_text()
        uid = pwd.getpwnam("farmedge").pw_uid
        assert f"Uid:\t{uid}\t{uid}" in status
        groups = next(ln for ln in status.splitlines() if ln.startswith("Groups:"))
        assert "0" not in groups.split()[1:], groups  # root's group dropped
    finally:
        proc.send_signal(svc.kill_signal())
        rc = proc.wait(svc.stop_timeout())
    assert rc == 0, svc.log.read_text() if svc.log else ""
    state = root / "var/lib/farmedge/edge"
    assert oct(state.stat().st_mode & 0o777) == "0o750" and _owned_by_farmedge(state)
    assert any(_owned_by_farmedge(p) for p in state.iterdir()), list(state.iterdir())


def test_gateway_unit_runs_as_farmedge(root: Path, mosquitto: MosquittoServer,
                                       county: str) -> None:
    _write(root / "etc/farmedge/gateway.toml", f"""
county = "{county}"
farm = "farm-1"
gateway = "gw-1"
[mqtt]
  url = "{mosquitto.url}"
[status]
  interval_s = 5
[[sensors]]
  driver = "simulated"
  id = "soil-1"
  interval_s = 1
""")
    watch = Client(mosquitto.port)
    assert watch.connect() == 0
    watch.subscribe(f"farm/v1/{county}/farm-1/gw-1/status")
    svc = _service(root, "farmedge-gateway.service")
    proc = svc.start()
    try:
        def status(online: bool) -> bool:
            assert proc.poll() is None or not online, svc.log.read_text() if svc.log else ""
            while not watch.messages.empty():
                if json.loads(watch.messages.get().payload).get("online") is online:
                    return True
            return False

        eventually(lambda: status(True), timeout=60, what="gateway online")
    finally:
        proc.send_signal(svc.kill_signal())
        rc = proc.wait(svc.stop_timeout())
    eventually(lambda: status(False), timeout=30, what="gateway said offline")
    watch.close()
    assert rc == 0, svc.log.read_text() if svc.log else ""
    assert _owned_by_farmedge(root / "var/lib/farmedge/outbox.sqlite3")


def test_missing_supplementary_group_fails_like_systemd(root: Path) -> None:
    """What the gateway unit did on a host without a gpio group."""
    unit = Unit.parse("x.service", "[Service]\nUser=farmedge\n"
                      "SupplementaryGroups=dialout no-such-group-farmedge\nExecStart=/bin/true\n")
    with pytest.raises(UnitError, match="216/GROUP"):
        Service(unit).credentials()


def test_edge_unit_exposure(tmp_path: Path) -> None:
    """`systemd-analyze security` rates the edge unit's sandbox (0 best,
    10 worst); it stays "OK" (under 3.0) with the hardening it has."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    copy = tmp_path / "farmedge-edge.service"
    copy.write_text((DEPLOY / "edge" / "farmedge-edge.service").read_text()
                    .replace(VENV, sys.prefix))
    r = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(copy)],
                       capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    if m is None:
        pytest.skip(f"this systemd-analyze cannot rate a unit offline: {r.stderr[-300:]}")
    assert float(m.group(1)) < 3.0, r.stdout


def test_failed_unit_tells_the_operators_as_farmedge(root: Path) -> None:
    """farmedge-failed@farmedge-edge.service, as systemd starts it when the
    edge fails for good: its ExecStart= as the user farmedge (%i expanded,
    its state folder created), reading the root-owned registry, posting to
    the center contact's json:// URL (the install guide's stand-in inbox)."""
    port = free_port()
    inbox = subprocess.Popen([sys.executable, "-m", "farmedge.alerts.inbox", "--port", str(port)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert inbox.stdout is not None
        assert "waiting for messages" in inbox.stdout.readline()
        _write(root / "etc/farmedge/registry.yaml", f"""
center_contacts:
  - name: Night operator
    language: en
    notify: ["json://127.0.0.1:{port}/ops"]
""")
        sb = Sandbox(root)
        unit = Unit.load(DEPLOY / "edge" / "farmedge-failed@.service",
                         lambda s: sb.subst(s).replace("%i", "farmedge-edge"))
        svc = Service(unit, sb.subst, root / "failed.log")
        rc = svc.start().wait(120)
        log = svc.log.read_text() if svc.log else ""
        assert rc == 0, log
        assert "told Night operator (json)" in log
        line = inbox.stdout.readline()
        assert "/ops farmedge service failed: farmedge-edge on " in line, line
        assert "has stopped (failed): farms get no alerts" in line
        state = root / "var/lib/farmedge/notify"
        assert _owned_by_farmedge(state) and oct(state.stat().st_mode & 0o777) == "0o750"
        assert _owned_by_farmedge(state / "failed-unit-notices.json")
    finally:
        inbox.terminate()
        inbox.wait(10)
