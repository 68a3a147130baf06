"""Fixtures that start the real servers: Mosquitto and InfluxDB from Debian's
packages, on free ports, with their data in pytest's temp folders.

``nats_cluster`` is a three-node NATS cluster (PyPI's nats-server), started
the same way when a test first asks for it.

``mosquitto`` and ``influxdb`` are shared by a whole session (each test takes
its own database via ``influx_db`` and its own county via ``county``, so tests
do not see each other's data). Tests that stop or restart a server use the
``*_factory`` fixtures and get servers of their own. ``http`` is a local
HTTP server for the alert engine's json:// messages, one per test.
"""

from __future__ import annotations

import contextlib
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from farmedge_dev.devservers import InfluxServer, MosquittoServer

if TYPE_CHECKING:
    from farmedge_dev.natscluster import NatsCluster
    from tests.alerts_support import HttpReceiver, ThreadedReceiver

S = TypeVar("S", MosquittoServer, InfluxServer)


def pytest_configure(config: pytest.Config) -> None:
    """A SIGTERM or SIGHUP (a CI job's or a shell's timeout, a closed
    terminal) ends the run the way Ctrl-C does: the fixtures' teardown stops
    the servers they started. By default Python dies at once on these, and
    the servers, each in a session of its own, outlive it. A repeat signal
    does nothing, so that the teardown is not cut short (a handler, not
    SIG_IGN: processes started meanwhile would inherit SIG_IGN)."""

    def ignore(signum: int, frame: object) -> None:
        pass

    def interrupt(signum: int, frame: object) -> None:
        for s in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, ignore)
        pytest.exit(f"{signal.Signals(signum).name}: stopping the servers",
                    returncode=128 + signum)

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, interrupt)


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    server = MosquittoServer(tmp_path_factory.mktemp("mosquitto"))
    try:  # stopped even when start() fails after spawning it
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    server = InfluxServer(tmp_path_factory.mktemp("influxdb"))
    try:  # stopped even when start() fails after spawning it
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def influx_db(influxdb: InfluxServer) -> Iterator[str]:
    """A fresh database on the shared InfluxDB, dropped afterwards."""
    name = "t_" + uuid.uuid4().hex[:12]
    influxdb.create_database(name)
    yield name
    with contextlib.suppress(Exception):
        influxdb.query(f'DROP DATABASE "{name}"')


@pytest.fixture
def county() -> str:
    """A county id of this test's own, so topics never cross between tests."""
    return "c" + uuid.uuid4().hex[:10]


def _made(cls: Callable[..., S], workdir: Callable[[int], Path]) -> Iterator[Callable[..., S]]:
    """A factory of started servers, each stopped at teardown (also one whose
    start() failed after spawning it). Keywords go to the server's class
    (``mosquitto_factory(extra_conf="message_size_limit 400\\n")``)."""
    made: list[S] = []

    def make(**kw: Any) -> S:
        s = cls(workdir(len(made)), **kw)
        made.append(s)
        s.start()
        return s

    try:
        yield make
    finally:
        for s in made:
            s.stop()


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., MosquittoServer]]:
    yield from _made(MosquittoServer, lambda i: tmp_path / f"mosquitto{i}")


@pytest.fixture
def influx_factory(tmp_path: Path) -> Iterator[Callable[..., InfluxServer]]:
    yield from _made(InfluxServer, lambda i: tmp_path / f"influxdb{i}")


@pytest.fixture
async def http() -> AsyncIterator[HttpReceiver]:
    """A local HTTP server taking the alert engine's json:// messages."""
    from tests.alerts_support import HttpReceiver

    r = await HttpReceiver().start()
    try:
        yield r
    finally:
        await r.stop()


@pytest.fixture
def threaded_http() -> Iterator[ThreadedReceiver]:
    """:func:`http` for tests that are not async: its server on a thread of its own."""
    from tests.alerts_support import ThreadedReceiver

    r = ThreadedReceiver()
    try:
        yield r
    finally:
        r.stop()


# ---------------------------------------------------------------- NATS

#: Partitions of the test cluster's subject mapping ([source] partitions).
NATS_PARTITIONS = 8


@pytest.fixture(scope="session")
def _nats_cluster_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    from farmedge_dev.natscluster import NatsCluster

    cluster = NatsCluster(tmp_path_factory.mktemp("nats"), partitions=NATS_PARTITIONS)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def nats_cluster(_nats_cluster_session: NatsCluster) -> Iterator[NatsCluster]:
    """A real three-node NATS cluster (JetStream, MQTT listeners, routes) on
    free ports, started at the first test that asks for it and stopped at
    the end of the session. Every node is running and ready when a test
    starts: a node a test killed is restarted first. Tests share the
    cluster, so each uses its own county, consumers and buckets; what a
    test made (streams, buckets, consumers) is removed after it, so that
    the cluster does not carry hundreds of replicated groups into the
    later tests of a session."""
    from tests.nats_support import clear_test_assets

    cluster = _nats_cluster_session
    for i, node in enumerate(cluster.nodes):
        if not node.running():
            cluster.restart(i)
    cluster.wait_ready()
    yield cluster
    import asyncio

    asyncio.run(clear_test_assets(cluster))
