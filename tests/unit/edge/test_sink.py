"""The edge's write policy (farmedge/edge/sink.py) against a fake writer
passed by constructor, and the real spool in a temp folder: retries, the
split of refused lines, spooling on failure, replay, and the readings count
kept with each spooled batch (a batch spooled by the previous version, which
did not keep it, still replays). The real InfluxDB, its failures and a full
disk are covered by the integration and chaos tests
(tests/integration/test_edge_influx_errors.py, test_edge_durability.py,
tests/chaos/test_disk.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import zstandard

from farmedge.edge.metrics import EdgeMetrics
from farmedge.edge.settings import InfluxSection
from farmedge.edge.sink import Refused, Sink
from farmedge.storage.influx import WriteKind, WriteResult
from farmedge.storage.spool import Spool
from tests.alerts_support import until

READINGS = ["soil,sensor=a moisture=1.0 1", "soil,sensor=b moisture=2.0 1"]
POINTS = ["alerts,county=c,farm=f,event=raise count=1i 1"]


class FakeWriter:
    """Answers each write by ``answer(lines)``; records what was written."""

    def __init__(self, answer: Callable[[list[str]], WriteResult] | None = None) -> None:
        self.answer = answer or (lambda lines: WriteResult(WriteKind.OK, 204))
        self.stored: list[str] = []
        self.requests = 0
        self.up = True

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def write(self, body: bytes) -> WriteResult:
        self.requests += 1
        lines = body.decode().split("\n")
        res = self.answer(lines)
        if res.ok:
            self.stored += lines
        return res

    async def ping(self) -> bool:
        return self.up

    async def ensure_database(self) -> bool:
        return True


def _down(lines: list[str]) -> WriteResult:
    return WriteResult(WriteKind.RETRY, 503, "down")


def _sink(tmp_path: Path, writer: FakeWriter, **influx: float) -> tuple[Sink, EdgeMetrics]:
    metrics = EdgeMetrics()
    settings = InfluxSection(retry_for_s=influx.pop("retry_for_s", 0.3), backoff_min_s=0.01,
                             backoff_max_s=0.05, **influx)  # type: ignore[arg-type]
    spool = Spool(tmp_path / "spool", max_bytes=10_000_000)
    return Sink(settings, writer=writer, spool=spool, metrics=metrics), metrics


def _written(metrics: EdgeMetrics) -> float:
    return metrics.registry.get_sample_value("farmedge_readings_written_total") or 0.0


async def test_a_batch_is_written_and_its_readings_counted(tmp_path: Path) -> None:
    writer = FakeWriter()
    sink, metrics = _sink(tmp_path, writer)
    await sink.start()
    done = await sink.deliver(READINGS + POINTS, 2, 2)
    assert done.durable and done.refused == []
    assert writer.stored == READINGS + POINTS
    assert _written(metrics) == 2 and sink.written == 3
    await sink.close()


async def test_refused_lines_come_back_as_records_and_the_rest_is_written(
        tmp_path: Path) -> None:
    def answer(lines: list[str]) -> WriteResult:
        if any("bad" in x for x in lines):
            return WriteResult(WriteKind.REJECTED, 400, "field type conflict")
        return WriteResult(WriteKind.OK, 204)

    writer = FakeWriter(answer)
    sink, _ = _sink(tmp_path, writer)
    await sink.start()
    lines = [*READINGS, "soil,sensor=bad moisture=\"x\" 1", *POINTS]
    done = await sink.deliver(lines, 3, 3)
    assert done.durable
    assert done.refused == [Refused("soil,sensor=bad moisture=\"x\" 1", 400,
                                    "field type conflict")]
    assert writer.stored == [*READINGS, *POINTS]
    assert sink.spool.lines == 0
    await sink.close()


async def test_a_failing_write_is_spooled_with_its_readings_count_and_replayed(
        tmp_path: Path) -> None:
    writer = FakeWriter(_down)
    sink, metrics = _sink(tmp_path, writer)
    await sink.start()
    done = await sink.deliver(READINGS + POINTS, 2, 2)
    assert done.durable, "in the spool"
    assert sink.influx_down
    assert sink.trouble() == ["InfluxDB unavailable, spooling: 503: down"]
    assert [p.name.endswith("-3-r2.zst") for p in (tmp_path / "spool").glob("*.zst")] == [True]
    assert _written(metrics) == 0
    # The next batch goes straight to the spool, without a request.
    before = writer.requests
    assert (await sink.deliver(POINTS, 0, 0)).durable
    assert writer.requests == before and sink.spool.lines == 4
    # InfluxDB is back: replay writes both, oldest first, and counts 2 readings.
    writer.answer = lambda lines: WriteResult(WriteKind.OK, 204)
    refused: list[list[Refused]] = []
    replay = asyncio.create_task(sink.replay(refused.append))
    await until(lambda: sink.spool.lines == 0, what="replayed")
    replay.cancel()
    assert writer.stored == [*READINGS, *POINTS, *POINTS]
    assert _written(metrics) == 2
    assert not sink.influx_down and refused == []
    await sink.close()


async def test_a_batch_spooled_by_the_previous_version_replays(tmp_path: Path) -> None:
    """The previous version named its files ``<id>-<created_ms>-<lines>.zst``
    and kept no readings count: the readings are then told by measurement."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    old = ["soil,sensor=a moisture=1.0 1", "gateway,county=c,farm=f,gateway=g seq_gap=1i 1",
           "weather,sensor=t temperature=20.5 1", "ingest_errors,edge=e,reason=r,slot=0 count=1i 1",
           "edge,instance=e messages=1i 1"]
    body = zstandard.ZstdCompressor(level=1).compress("\n".join(old).encode())
    (spool_dir / f"{1:012d}-{int(time.time() * 1000)}-{len(old)}.zst").write_bytes(body)
    writer = FakeWriter()
    sink, metrics = _sink(tmp_path, writer)
    await sink.start()
    assert (sink.spool.lines, sink.spool.batches) == (5, 1)
    replay = asyncio.create_task(sink.replay(lambda refused: None))
    await until(lambda: sink.spool.lines == 0, what="replayed")
    replay.cancel()
    assert writer.stored == old
    assert _written(metrics) == 2, "soil and weather: readings; the rest are not"
    assert list(spool_dir.glob("*.zst")) == []
    await sink.close()


async def test_refused_credentials_spool_and_raise_the_alarm_until_a_write_succeeds(
        tmp_path: Path) -> None:
    writer = FakeWriter(lambda lines: WriteResult(WriteKind.AUTH, 401, "authorization failed"))
    writer.up = False
    sink, _ = _sink(tmp_path, writer, retry_for_s=5)
    await sink.start()
    assert (await sink.deliver(READINGS, 2, 2)).durable
    assert writer.requests == 1, "no retries for 401"
    assert sink.trouble() == ["InfluxDB answered 401: authorization failed"]
    writer.answer = lambda lines: WriteResult(WriteKind.OK, 204)  # the account was fixed
    replay = asyncio.create_task(sink.replay(lambda refused: None))
    await until(lambda: sink.spool.lines == 0, what="replayed")
    replay.cancel()
    assert sink.trouble() == [] and writer.stored == READINGS
    await sink.close()


async def test_a_batch_split_and_partly_spooled_counts_the_readings_written(
        tmp_path: Path) -> None:
    """413 splits the batch; InfluxDB takes the first half, then refuses the
    credentials (401) for the second, which goes to the spool. The readings
    of the first half are counted as written when they are (they used to be
    counted nowhere), the spooled one when it is replayed."""
    readings = [f"soil,sensor=s{i} moisture=1.0 1" for i in range(4)]

    def answer(lines: list[str]) -> WriteResult:
        if len(lines) == 6:
            return WriteResult(WriteKind.TOO_LARGE, 413, "request entity too large")
        if lines[0] == readings[0]:
            return WriteResult(WriteKind.OK, 204)
        return WriteResult(WriteKind.AUTH, 401, "authorization failed")

    writer = FakeWriter(answer)
    sink, metrics = _sink(tmp_path, writer)
    await sink.start()
    assert (await sink.deliver(readings + POINTS * 2, 4, 4)).durable
    assert writer.stored == readings[:3]
    assert sink.spool.lines == 3
    assert _written(metrics) == 3
    writer.answer = lambda lines: WriteResult(WriteKind.OK, 204)
    replay = asyncio.create_task(sink.replay(lambda refused: None))
    await until(lambda: sink.spool.lines == 0, what="replayed")
    replay.cancel()
    assert _written(metrics) == 4
    await sink.close()


async def test_holding_waits_for_influxdb_and_spools_nothing(tmp_path: Path) -> None:
    """[source] ack_when = "influx": a batch InfluxDB cannot take is held
    (not spooled) until InfluxDB takes it."""
    calls = {"n": 0}

    def answer(lines: list[str]) -> WriteResult:
        calls["n"] += 1
        return _down(lines) if calls["n"] <= 8 else WriteResult(WriteKind.OK, 204)

    writer = FakeWriter(answer)
    writer.up = False
    sink, metrics = _sink(tmp_path, writer, retry_for_s=0.05)
    sink.hold = True
    await sink.start()
    task = asyncio.ensure_future(sink.deliver(READINGS + POINTS, 2, 2))
    await until(lambda: sink.influx_down, timeout=5)
    assert not task.done() and sink.spool.lines == 0
    writer.up = True
    done = await asyncio.wait_for(task, 30)
    assert done.durable and sink.spool.lines == 0
    assert writer.stored == READINGS + POINTS
    assert _written(metrics) == 2
    await sink.close()


async def test_a_held_batch_is_not_durable_when_the_edge_stops(tmp_path: Path) -> None:
    writer = FakeWriter(_down)
    writer.up = False
    sink, _ = _sink(tmp_path, writer, retry_for_s=0.05)
    sink.hold = True
    await sink.start()
    task = asyncio.ensure_future(sink.deliver(READINGS, 2, 2))
    await until(lambda: sink.influx_down, timeout=5)
    sink.stopping = True
    done = await asyncio.wait_for(task, 10)
    assert not done.durable and sink.spool.lines == 0
    await sink.close()
