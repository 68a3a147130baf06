"""Start real Mosquitto and InfluxDB 1.x servers on free local ports.

Used by the test fixtures, the demo (``farmedge demo``) and the benchmarks,
so that all three run against the same real servers from Debian's packages
(``mosquitto``, ``influxdb``), each with its data in its own folder.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

__all__ = [
    "DYNSEC_PLUGIN_PATHS",
    "InfluxServer",
    "MosquittoServer",
    "ServerError",
    "broker_user",
    "dynsec_plugin_path",
    "free_port",
    "influx_query",
    "wait_edge_subscribed",
    "wait_for_port",
]


class ServerError(RuntimeError):
    """A server could not be started."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None,
                  log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise ServerError(f"server exited with {proc.returncode} before listening:\n{tail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise ServerError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


def wait_edge_subscribed(http_port: int, timeout: float = 60.0,
                         proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until the edge service whose health endpoint is on ``http_port``
    says it is subscribed to the broker (so nothing published now is missed)."""
    import json

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"the edge exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=2) as r:
                if json.loads(r.read()).get("mqtt_subscribed"):
                    return
        except urllib.error.HTTPError as exc:  # 503 while it connects
            if json.loads(exc.read() or b"{}").get("mqtt_subscribed"):
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise ServerError(f"the edge on port {http_port} did not subscribe in {timeout:.0f}s")


@dataclass(frozen=True, slots=True)
class ProcessStats:
    rss_kb: int       # resident memory now
    peak_rss_kb: int  # high-water mark (VmHWM)
    cpu_s: float      # user + system CPU seconds so far


def process_stats(pid: int) -> ProcessStats:
    """Memory and CPU of a running process, from /proc (for the benchmarks)."""
    rss = hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return ProcessStats(rss, hwm, cpu)


def _binary(name: str, *candidates: str) -> str:
    for c in (shutil.which(name), *candidates):
        if c and os.access(c, os.X_OK):
            return c
    raise ServerError(
        f"{name} is not installed: run 'sudo apt-get install -y mosquitto influxdb' "
        "(or ./scripts/bootstrap)"
    )


@dataclass
class _Proc:
    """A server process of ours: spawned in its own session with its output
    in ``workdir/server.log``, stopped with SIGTERM (SIGKILL after
    ``stop_timeout`` seconds)."""

    workdir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    stop_timeout: ClassVar[float] = 10.0

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    def _spawn(self, argv: list[str]) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        logf = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        logf.close()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, *, kill: bool = False, timeout: float | None = None) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


#: Where Mosquitto's dynamic security plugin is: Debian's package (per
#: architecture), then the eclipse-mosquitto image and source installs.
DYNSEC_PLUGIN_PATHS = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/arm-linux-gnueabihf/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)


def dynsec_plugin_path() -> str:
    """The dynamic security plugin of this host's Mosquitto
    ($FARMEDGE_DYNSEC_PLUGIN, else the first of DYNSEC_PLUGIN_PATHS)."""
    env = os.environ.get("FARMEDGE_DYNSEC_PLUGIN")
    for c in ((env,) if env else DYNSEC_PLUGIN_PATHS):
        if c and os.path.exists(c):
            return c
    raise ServerError(
        "Mosquitto's dynamic security plugin (mosquitto_dynamic_security.so) was not found "
        f"in {', '.join(DYNSEC_PLUGIN_PATHS)}: set FARMEDGE_DYNSEC_PLUGIN to its path"
    )


def broker_user() -> str:
    """The user a test broker runs as: an unprivileged one ("mosquitto", as
    Debian's package runs it, else "nobody") when started as root, else the
    user we are (who cannot switch)."""
    if os.geteuid() == 0:
        for name in ("mosquitto", "nobody"):
            with contextlib.suppress(KeyError):
                pwd.getpwnam(name)
                return name
        return "root"
    return pwd.getpwuid(os.geteuid()).pw_name


@dataclass
class MosquittoServer(_Proc):
    """A Mosquitto broker with persistence, tuned so that nothing is dropped.

    Mosquitto's defaults drop QoS 1 messages silently past 1000 queued per
    client (``max_queued_messages``) and hold at most 20 in flight; both are
    lifted here and in the shipped broker config (deploy/mosquitto/).
    """

    extra_conf: str = ""

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def conf_text(self) -> str:
        data = self.workdir / "data"
        # Started as root, Mosquitto drops to the "mosquitto" user, which
        # cannot write its persistence file in our folder: sessions and queued
        # messages would then be lost on restart. Stay the user we are.
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
        return (
            user
            + f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {data}/\n"
            "autosave_interval 5\n"
            "max_queued_messages 0\n"
            "max_queued_bytes 0\n"
            "max_inflight_messages 0\n"
            "max_packet_size 1048576\n"
            "log_dest stdout\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            + self.extra_conf
        )

    def start(self, timeout: float = 15.0) -> MosquittoServer:
        if self.running():
            return self
        if not self.port:
            self.port = free_port()
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.conf_text())
        self._spawn([_binary("mosquitto", "/usr/sbin/mosquitto"), "-c", str(conf)])
        wait_for_port(self.port, timeout, self.proc, self.log_path)
        return self


@dataclass
class InfluxServer(_Proc):
    """An InfluxDB 1.x server (v1 HTTP API) with its data in ``workdir``.

    ``max_series_per_database`` and ``max_values_per_tag`` lower InfluxDB's
    cardinality limits (defaults 1,000,000 and 100,000, kept when None), for
    tests of what happens at the limit.
    """

    rpc_port: int = 0
    max_series_per_database: int | None = None
    max_values_per_tag: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def conf_text(self) -> str:
        d = self.workdir
        limits = ""
        if self.max_series_per_database is not None:
            limits += f"  max-series-per-database = {int(self.max_series_per_database)}\n"
        if self.max_values_per_tag is not None:
            limits += f"  max-values-per-tag = {int(self.max_values_per_tag)}\n"
        return f"""
reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"
[meta]
  dir = "{d}/meta"
  logging-enabled = false
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
  trace-logging-enabled = false
  wal-fsync-delay = "0s"
{limits}[coordinator]
  log-queries-after = "0s"
[retention]
  enabled = true
[monitor]
  store-enabled = false
[subscriber]
  enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{self.port}"
  auth-enabled = false
  log-enabled = false
  max-body-size = 0
[logging]
  level = "warn"
[continuous_queries]
  log-enabled = false
"""

    def start(self, timeout: float = 30.0) -> InfluxServer:
        if self.running():
            return self
        if not self.port:
            self.port = free_port()
        if not self.rpc_port:
            self.rpc_port = free_port()
        conf = self.workdir / "influxdb.conf"
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf.write_text(self.conf_text())
        self._spawn([_binary("influxd", "/usr/bin/influxd"), "-config", str(conf)])
        wait_for_port(self.port, timeout, self.proc, self.log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as r:
                    if r.status == 204:
                        return self
            time.sleep(0.05)
        raise ServerError("InfluxDB did not answer /ping")

    def query(self, q: str, db: str | None = None) -> list[dict[str, object]]:
        return influx_query(self.url, q, db)

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"')


def influx_query(url: str, q: str, db: str | None = None) -> list[dict[str, object]]:
    """Run InfluxQL over the v1 HTTP API; return the list of series (may be empty)."""
    import json

    params = {"q": q, "epoch": "ms"}
    if db:
        params["db"] = db
    body = urllib.parse.urlencode(params).encode()
    req = urllib.request.Request(f"{url}/query", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        doc = json.loads(r.read())
    series: list[dict[str, object]] = []
    for res in doc.get("results", []):
        if "error" in res:
            raise ServerError(f"InfluxQL error: {res['error']}")
        series.extend(res.get("series", []))
    return series


@contextlib.contextmanager
def running_servers(root: Path) -> Iterator[tuple[MosquittoServer, InfluxServer]]:
    """Start both servers under ``root`` and stop them on exit."""
    mq = MosquittoServer(root / "mosquitto").start()
    try:
        ix = InfluxServer(root / "influxdb").start()
        try:
            yield mq, ix
        finally:
            ix.stop()
    finally:
        mq.stop()
