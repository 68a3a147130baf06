"""The edge against a broker that refuses it: it backs off (capped, jittered)
instead of hammering the broker, says why in /healthz, and comes back when
the broker takes it again. Real Mosquitto with a password file, real edge
process."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from farmedge_dev.devservers import InfluxServer, MosquittoServer
from tests.edgeproc import EdgeProcess
from tests.support import eventually

pytestmark = [pytest.mark.servers, pytest.mark.slow]

REFUSED = "disconnected, not authorised."


def _passwd(path: Path, password: str, *, create: bool = False) -> None:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd is not installed (Debian package mosquitto)")
    argv = [tool, "-b", *(["-c"] if create else []), str(path), "edge", password]
    subprocess.run(argv, check=True, capture_output=True)


def _refusals(log: Path) -> int:
    """Connections the broker refused, from its log file (written at once,
    unlike its buffered stdout)."""
    return log.read_text(errors="replace").count(REFUSED) if log.exists() else 0


def test_edge_backs_off_when_the_broker_refuses_it(
        tmp_path: Path, influxdb: InfluxServer, influx_db: str) -> None:
    pw = tmp_path / "passwd"
    _passwd(pw, "right", create=True)
    log = tmp_path / "broker.log"
    broker = MosquittoServer(tmp_path / "mosquitto", extra_conf=(
        f"allow_anonymous false\npassword_file {pw}\nlog_dest file {log}\n")).start()
    edge = EdgeProcess(mqtt_url=broker.url, influx_url=influxdb.url, database=influx_db,
                       data_dir=tmp_path / "edge", extra_env={
                           "FARMEDGE_MQTT_USERNAME": "edge",
                           "FARMEDGE_MQTT_PASSWORD": "right",
                           "FARMEDGE_MQTT_RECONNECT_MAX_S": "4",
                           "FARMEDGE_ALERTS_ENABLED": "false"})
    try:
        edge.start()
        # A connection that held longer than the back-off's reset period
        # (30 s): the refusals that follow must still be spaced out.
        held_until = time.monotonic() + 32
        while time.monotonic() < held_until:
            # ({} when /healthz did not answer in time on a loaded machine)
            assert edge.health().get("mqtt_connected", True), edge.log_tail()
            time.sleep(0.5)

        _passwd(pw, "changed")  # the broker no longer knows the edge's password
        assert broker.proc is not None
        broker.proc.send_signal(1)  # SIGHUP: the broker drops the edge and refuses it

        def refused() -> str:
            h = edge.health()
            return next((r for r in h.get("reasons", []) if "refused" in r), "")

        reason = eventually(refused, timeout=30, what="/healthz saying the broker refused")
        assert "not authorized (rc 135)" in reason, reason
        assert "username and password" in reason, reason
        assert edge.health()["http_status"] == 503

        first = _refusals(log)
        assert first >= 1
        window = 12.0
        end = time.monotonic() + window
        while time.monotonic() < end:
            assert not edge.health().get("mqtt_connected")
            time.sleep(0.5)
        attempts = _refusals(log) - first
        # Waits of 0.5-1, 1-2, 2-4, then 2-4 s (capped at 4): 3 to 8 attempts
        # in 12 s. Without back-off the edge tried every 0.25-0.5 s (24-48).
        assert 3 <= attempts <= 8, f"{attempts} refused connects in {window:.0f} s"

        _passwd(pw, "right")
        broker.proc.send_signal(1)
        eventually(lambda: edge.health().get("mqtt_subscribed"), timeout=30,
                   what="the edge back once the broker takes its password again")
        h = edge.health()
        assert not any("refused" in r for r in h["reasons"]), h
        assert h["mqtt_connect_attempts"] >= attempts + 2
    finally:
        edge.stop()
        broker.stop()
