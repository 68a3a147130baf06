"""The edge put together (farmedge/edge/app.py), without servers: what it
cannot start says so as an EdgeError naming the cause. Nothing answers on
the InfluxDB and MQTT ports here (the edge with the real servers is in
tests/integration/ and tests/chaos/)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from farmedge.edge.app import EdgeService
from farmedge.edge.errors import EdgeError, EdgeFatal
from farmedge.edge.settings import EdgeSettings, HttpSection, InfluxSection, MqttSection
from farmedge_dev.devservers import free_port


def _settings(tmp_path: Path, http_port: int) -> EdgeSettings:
    return EdgeSettings(data_dir=tmp_path / "edge",
                        mqtt=MqttSection(url=f"mqtt://127.0.0.1:{free_port()}"),
                        influx=InfluxSection(url=f"http://127.0.0.1:{free_port()}",
                                             timeout_s=2),
                        http=HttpSection(port=http_port))


async def test_a_port_in_use_for_http_is_an_edge_error_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        svc = EdgeService(_settings(tmp_path, port), observers=[])
        with pytest.raises(EdgeError, match=f"cannot listen on 127.0.0.1:{port}"):
            await asyncio.wait_for(svc.run(asyncio.Event()), 30)


async def test_a_spool_that_cannot_be_opened_is_an_edge_error(tmp_path: Path) -> None:
    (tmp_path / "edge").mkdir()
    (tmp_path / "edge" / "spool").write_text("a file where the spool's folder goes")
    svc = EdgeService(_settings(tmp_path, 0), observers=[])
    with pytest.raises(EdgeError, match=r"the spool at .* cannot be opened") as info:
        await asyncio.wait_for(svc.run(asyncio.Event()), 30)
    assert not isinstance(info.value, EdgeFatal)
