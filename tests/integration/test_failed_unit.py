"""A dead edge is reported from outside it: the command systemd's
OnFailure= unit runs (deploy/edge/farmedge-failed@.service) tells the
registry's center contacts, for real, through Apprise ``json://`` to a local
HTTP receiver; it holds back repeats, survives a registry that does not
validate, and fails loudly when nobody could be told."""

from __future__ import annotations

import asyncio
import os
import shlex
import socket
import sys
from pathlib import Path

from tests.alerts_support import HttpReceiver
from tests.stack_support import DEPLOY
from tests.units_support import Unit, exec_lines

MONITOR = {"MONITOR_UNIT": "farmedge-edge.service", "MONITOR_SERVICE_RESULT": "exit-code",
           "MONITOR_EXIT_CODE": "exited", "MONITOR_EXIT_STATUS": "1"}


def _registry(path: Path, rx: HttpReceiver, *, broken: bool = False) -> Path:
    path.write_text(f"""
farms:
  - county: demo
    farm: wang-12
    contacts:
      - name: Wang
        notify: ["{rx.url('farmer')}"]
center_contacts:
  - name: 县中心值班
    language: zh
    notify: ["{rx.url('ops-zh')}"]
  - name: Night operator
    language: en
    notify: ["{rx.url('ops-en')}"]
{"  - name: x" + chr(10) + "    notfiy: []" if broken else ""}
""")
    return path


async def _run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("MONITOR_", "STATE_DIR"))}
    full.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "farmedge.alerts.failed_unit", *args, env=full,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_the_center_contacts_are_told_once_in_their_language(tmp_path: Path) -> None:
    rx = await HttpReceiver().start()
    try:
        reg = _registry(tmp_path / "registry.yaml", rx)
        state = tmp_path / "state"
        rc, out = await _run("--registry", str(reg), "--state-dir", str(state), env=MONITOR)
        assert rc == 0, out
        host = socket.gethostname()
        [zh] = rx.messages("ops-zh")
        [en] = rx.messages("ops-en")
        assert zh.startswith(
            f"{host}上的farmedge-edge已停止（exit-code, status 1），农户收不到告警")
        assert "journalctl -u farmedge-edge" in zh
        assert en.startswith(f"farmedge-edge on {host} has stopped (exit-code, status 1): "
                             "farms get no alerts")
        assert rx.messages("farmer") == []
        assert {p["title"] for p in rx.posts} == {"farmedge服务故障", "farmedge service failed"}
        assert "told 县中心值班 (json)" in out and "told Night operator (json)" in out
        # Failing again within --min-interval: held back, counted.
        rc, out = await _run("--registry", str(reg), "--state-dir", str(state), env=MONITOR)
        assert rc == 0 and "held back" in out, out
        assert len(rx.posts) == 2
        # Past it (an interval of 0 here): told again, with the count.
        rc, out = await _run("--registry", str(reg), "--state-dir", str(state),
                             "--min-interval", "0", env={
                                 **MONITOR, "MONITOR_SERVICE_RESULT": "signal",
                                 "MONITOR_EXIT_CODE": "killed", "MONITOR_EXIT_STATUS": "KILL"})
        assert rc == 0, out
        assert rx.messages("ops-en")[-1].startswith(
            f"farmedge-edge on {host} has stopped (signal, killed KILL) (1 more failures "
            "before)")
        assert "（此前又失败1次）" in rx.messages("ops-zh")[-1]
    finally:
        await rx.stop()


async def test_a_registry_that_does_not_validate_still_names_the_operators(
        tmp_path: Path) -> None:
    rx = await HttpReceiver().start()
    try:
        reg = _registry(tmp_path / "registry.yaml", rx, broken=True)
        rc, out = await _run("--registry", str(reg), "--unit", "farmedge-edge")
        assert rc == 0, out
        assert "the registry does not validate" in out
        assert len(rx.messages("ops-zh")) == 1 and len(rx.messages("ops-en")) == 1
        assert rx.messages("farmer") == []
    finally:
        await rx.stop()


async def test_nobody_to_tell_or_nobody_reached_is_a_failure(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("farms: []\n")
    rc, out = await _run("--registry", str(empty), "--unit", "farmedge-edge")
    assert rc == 1 and "nobody to tell" in out, out
    rc, out = await _run("--registry", str(tmp_path / "missing.yaml"), "--unit", "x")
    assert rc == 1 and "cannot read the registry" in out, out
    rx = await HttpReceiver().start()
    try:
        rx.fail_next = 10
        state = tmp_path / "state"
        rc, out = await _run("--url", rx.url("ops"), "--unit", "farmedge-edge",
                             "--state-dir", str(state))
        assert rc == 1 and "could not tell --url (json)" in out, out
        # Nothing was sent, so the next failure is not held back.
        rx.fail_next = 0
        rc, out = await _run("--url", rx.url("ops"), "--unit", "farmedge-edge",
                             "--state-dir", str(state))
        assert rc == 0, out
        assert rx.messages("ops")[0].startswith("farmedge-edge on ")
    finally:
        await rx.stop()


async def test_the_units_exec_line_runs_the_notifier(tmp_path: Path) -> None:
    """The ExecStart= of farmedge-failed@.service as systemd would run it for
    farmedge-failed@farmedge-edge.service (%i expanded, STATE_DIRECTORY and
    MONITOR_* set), with this checkout's Python and a test registry."""
    unit = Unit.load(DEPLOY / "edge" / "farmedge-failed@.service")
    [(argv, _)] = exec_lines(unit, "ExecStart")
    assert argv[0] == "/opt/farmedge/venv/bin/python"
    rx = await HttpReceiver().start()
    try:
        reg = _registry(tmp_path / "registry.yaml", rx)
        line = shlex.join(argv[1:]).replace("/etc/farmedge/registry.yaml", str(reg)) \
            .replace("%i", "farmedge-edge")
        state = tmp_path / "var/lib/farmedge/notify"
        args = shlex.split(line)
        assert args[:2] == ["-m", "farmedge.alerts.failed_unit"]
        rc, out = await _run(*args[2:], env={**MONITOR, "STATE_DIRECTORY": str(state)})
        assert rc == 0, out
        assert len(rx.messages("ops-zh")) == 1 and len(rx.messages("ops-en")) == 1
        assert (state / "failed-unit-notices.json").exists()
        edge = Unit.load(DEPLOY / "edge" / "farmedge-edge.service")
        assert edge.get("OnFailure", section="Unit") == "farmedge-failed@%N.service"
        # Restarts used up within 10 min: 5 failures, 5 s apart, fit.
        assert edge.get("StartLimitBurst", section="Unit") == "5"
        assert edge.get("StartLimitIntervalSec", section="Unit") == "10min"
    finally:
        await rx.stop()
