"""The edge put together (farmedge/edge/app.py), without servers: what it
cannot start says so as an EdgeError naming the cause, and a stage's last
records are written when the edge stops. Nothing answers on the MQTT port
here, and InfluxDB is either absent or a fake writer passed by constructor
(the edge with the real servers is in tests/integration/ and tests/chaos/)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from pathlib import Path

import pytest

from farmedge.alerts import RecordSink
from farmedge.edge.app import EdgeService
from farmedge.edge.errors import EdgeError, EdgeFatal
from farmedge.edge.settings import EdgeSettings, HttpSection, InfluxSection, MqttSection
from farmedge.records import Accepted, StatusEvent
from farmedge.records import Stage as Observer
from farmedge.storage.influx import WriteKind, WriteResult
from farmedge_dev.devservers import free_port
from tests.alerts_support import until


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


class _Writer:
    """Takes every write (a fake InfluxDB; the real one: tests/integration/)."""

    def __init__(self) -> None:
        self.stored: list[str] = []

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def write(self, body: bytes) -> WriteResult:
        self.stored += body.decode().split("\n")
        return WriteResult(WriteKind.OK, 204)

    async def ping(self) -> bool:
        return True

    async def ensure_database(self) -> bool:
        return True


class _Closing:
    """A stage that records a point when it is closed, as the alert engine
    records its last events."""

    def __init__(self, records: RecordSink) -> None:
        self.records = records
        self.started = False

    async def start(self) -> None:
        self.started = True

    def on_accepted(self, records: Sequence[Accepted]) -> None:
        pass

    def on_status(self, event: StatusEvent) -> None:
        pass

    async def close(self) -> None:
        self.records.add_points(["alerts,county=c,farm=f,event=closed count=1i 1"])


async def test_the_stages_close_before_the_sink_and_their_last_records_are_written(
        tmp_path: Path) -> None:
    writer = _Writer()
    stages: list[_Closing] = []

    def build(records: RecordSink) -> list[Observer]:
        stages.append(_Closing(records))
        return list(stages)

    svc = EdgeService(_settings(tmp_path, 0), observers=build, writer=writer)
    stop = asyncio.Event()
    task = asyncio.create_task(svc.run(stop))
    await until(lambda: stages[0].started, what="the stage started")
    stop.set()
    await asyncio.wait_for(task, 60)
    assert "alerts,county=c,farm=f,event=closed count=1i 1" in writer.stored
    assert svc.spool.lines == 0


def test_the_alerts_topic_goes_through_the_broker_the_edge_reads(tmp_path: Path) -> None:
    """With [source] kind = "mqtt" the alerts topic is an MQTT client of
    [mqtt]'s broker; with "nats" it is the edge's NATS connection to the
    cluster, and no MQTT client at all (the cluster's MQTT listeners refuse
    MQTT 5, and the edge's NATS user may not use MQTT)."""
    from farmedge.alerts import AlertEngine, AlertsSettings, MqttRecorder, NatsRecorder
    from farmedge.transport.nats_settings import SourceSection

    def engine_of(svc: EdgeService) -> AlertEngine:
        [engine] = svc.observers
        assert isinstance(engine, AlertEngine)
        return engine

    def recorders(svc: EdgeService) -> list[str]:
        return [type(r).__name__ for r in engine_of(svc).recorders]

    alerts = AlertsSettings(rules=[])
    mqtt_edge = EdgeService(_settings(tmp_path, 0).model_copy(update={"alerts": alerts}))
    assert recorders(mqtt_edge) == [MqttRecorder.__name__, "SinkRecorder"]
    nats_edge = EdgeService(_settings(tmp_path, 0).model_copy(
        update={"alerts": alerts, "source": SourceSection(kind="nats")}))
    assert recorders(nats_edge) == [NatsRecorder.__name__, "SinkRecorder"]
    [rec, _] = engine_of(nats_edge).recorders
    assert isinstance(rec, NatsRecorder)
    assert nats_edge.nats is not None and rec._client() is None   # not connected yet
    nats_edge.nats.nc = marker = object()
    assert rec._client() is marker            # the source's connection, whenever it has one
    off = EdgeService(_settings(tmp_path, 0).model_copy(update={
        "alerts": AlertsSettings(rules=[], publish_mqtt=False),
        "source": SourceSection(kind="nats")}))
    assert recorders(off) == ["SinkRecorder"]
