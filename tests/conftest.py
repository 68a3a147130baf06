"""Fixtures that start the real servers: Mosquitto and InfluxDB from Debian's
packages, on free ports, with their data in pytest's temp folders.

``mosquitto`` and ``influxdb`` are shared by a whole session (each test takes
its own database via ``influx_db`` and its own county via ``county``, so tests
do not see each other's data). Tests that stop or restart a server use the
``*_factory`` fixtures and get servers of their own.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from farmedge_dev.devservers import InfluxServer, MosquittoServer


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    server = MosquittoServer(tmp_path_factory.mktemp("mosquitto")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    server = InfluxServer(tmp_path_factory.mktemp("influxdb")).start()
    yield server
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


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[[], MosquittoServer]]:
    made: list[MosquittoServer] = []

    def make() -> MosquittoServer:
        s = MosquittoServer(tmp_path / f"mosquitto{len(made)}").start()
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


@pytest.fixture
def influx_factory(tmp_path: Path) -> Iterator[Callable[[], InfluxServer]]:
    made: list[InfluxServer] = []

    def make() -> InfluxServer:
        s = InfluxServer(tmp_path / f"influxdb{len(made)}").start()
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()
