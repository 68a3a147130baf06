"""Blast radius of one message: a failure while handling one message (or in
an observer) becomes that message's dead letter (reason ``internal``), is
counted and logged once, and everything else goes on. A failure outside the
handling of one message is fatal: the edge exits non-zero within 5 s, with
one ``edge.fatal`` log line naming the cause."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import structlog

from farmedge.contract import encode_status
from farmedge.edge.app import EdgeService
from farmedge.edge.validate import Validator, Verdict
from farmedge.records import Accepted, AcceptedReading, StatusEvent
from farmedge.transport.mqtt import Inbound
from farmedge_dev.devservers import InfluxServer, MosquittoServer, influx_query
from tests.alerts_support import until
from tests.edgeproc import EdgeProcess, edge_settings
from tests.support import Publisher, count, eventually, make_payload

pytestmark = [pytest.mark.servers, pytest.mark.chaos]


def _readings(prefix: str, n: int, ts: int) -> list[dict[str, object]]:
    return [{"sensor": f"{prefix}{i}", "kind": "soil_moisture", "ts": ts, "value": 20.5,
             "unit": "%"} for i in range(n)]


def _dead_letters(influxdb: InfluxServer, db: str) -> list[list[object]]:
    series = influx_query(influxdb.url, "SELECT reason, detail, topic FROM ingest_errors", db)
    return list(series[0]["values"]) if series else []


class _BuggyValidator(Validator):
    """Fails on every message that holds a sensor named ``boom``, after it has
    already made that message's lines."""

    def validate(self, msg: Inbound) -> Verdict:
        v = super().validate(msg)
        if b'"boom' in msg.payload:
            raise KeyError("boom")
        return v


class _BuggyObserver:
    def on_accepted(self, records: Sequence[Accepted]) -> None:
        raise ZeroDivisionError("observer bug")

    def on_status(self, event: StatusEvent) -> None:
        raise ZeroDivisionError("observer bug")


class _Recorder:
    def __init__(self) -> None:
        self.readings: list[AcceptedReading] = []
        self.statuses: list[StatusEvent] = []

    def on_accepted(self, records: Sequence[Accepted]) -> None:
        for rec in records:
            self.readings.extend(rec.each())

    def on_status(self, event: StatusEvent) -> None:
        self.statuses.append(event)




async def test_a_failing_handler_or_observer_is_contained_to_its_message(
        mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str, county: str,
        tmp_path: Path) -> None:
    """The handler and an observer are made to fail (injected through the
    constructor); the servers are real."""
    s = edge_settings(mosquitto.url, influxdb.url, influx_db, county, tmp_path)
    recorder = _Recorder()
    validator = _BuggyValidator(s.ingest, keep_readings=True)
    svc = EdgeService(s, observers=[_BuggyObserver(), recorder], validator=validator)
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(svc.run(stop))
        await until(lambda: svc.mqtt.subscribed, timeout=45, what="subscribed")
        now = int(time.time() * 1000)

        def publish() -> None:
            p = Publisher(mosquitto.url)
            for seq in range(6):
                if seq % 2:  # 3 messages fail inside the edge, 3 do not
                    readings = [*_readings("ok", 4, now + seq), *_readings("boom", 1, now)]
                else:
                    readings = _readings("good", 10, now + seq)
                p.publish(f"farm/v1/{county}/f/gw-1/telemetry",
                          make_payload("gw-1", seq, readings))
            p.publish(f"farm/v1/{county}/f/gw-1/status",
                      encode_status(gateway="gw-1", online=True))
            p.close()

        await asyncio.to_thread(publish)
        await until(lambda: count(influxdb.url, influx_db, "soil", "moisture") >= 30
                    and len(_dead_letters(influxdb, influx_db)) >= 3, timeout=45, what="stored")
        await until(lambda: recorder.statuses, timeout=45, what="status observed")
        assert not task.done(), "the service goes on"
        stop.set()
        await task
    assert count(influxdb.url, influx_db, "soil", "moisture") == 30, \
        "only the good messages' readings, none of a failed message's"
    dead = _dead_letters(influxdb, influx_db)
    assert [d[1] for d in dead] == ["internal"] * 3
    assert all("KeyError" in str(d[2]) for d in dead)
    assert all(d[3] == f"farm/v1/{county}/f/gw-1/telemetry" for d in dead)
    assert len(recorder.readings) == 30, "the other observer got every good reading"
    metrics = svc.metrics.registry
    assert metrics.get_sample_value("farmedge_internal_errors_total", {"where": "ingest"}) == 3
    assert (metrics.get_sample_value("farmedge_internal_errors_total", {"where": "observer"})
            or 0) >= 2
    assert metrics.get_sample_value("farmedge_rejected_total", {"reason": "internal"}) == 3
    internal = [e for e in logs if e["event"] == "edge.internal_error"]
    assert [e["where"] for e in internal].count("ingest") == 1, "logged once (throttled)"
    assert internal[0]["exc_info"] is not None, "with the traceback"
    assert svc.fatal is None


def test_a_status_the_edge_cannot_store_does_not_stop_it(
        mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str, county: str,
        tmp_path: Path) -> None:
    """A retained status whose value InfluxDB cannot store (1e999 reads as
    infinity) used to kill the processing task, at every restart."""
    pub = Publisher(mosquitto.url)
    status_topic = f"farm/v1/{county}/f/gw-2/status"
    pub.publish(status_topic, b'{"v":1,"gateway":"gw-2","online":true,"cpu_temperature":1e999}',
                retain=True)
    kw = dict(mqtt_url=mosquitto.url, influx_url=influxdb.url, database=influx_db,
              data_dir=tmp_path / "edge", county=county)
    edge = EdgeProcess(**kw).start()  # type: ignore[arg-type]
    try:
        now = int(time.time() * 1000)
        for seq in range(3):
            pub.publish(f"farm/v1/{county}/f/gw-1/telemetry",
                        make_payload("gw-1", seq, _readings(f"m{seq}-", 10, now)))
        eventually(lambda: count(influxdb.url, influx_db, "soil", "moisture") == 30,
                   timeout=30, what="telemetry behind the status stored")
        dead = eventually(lambda: _dead_letters(influxdb, influx_db), timeout=30,
                          what="the status dead-lettered")
        assert [d[3] for d in dead] == [status_topic]
        assert dead[0][1] in ("internal", "bad_status")
        assert edge.health()["http_status"] == 200
        # and again after a restart: the retained status comes again
        assert edge.stop() == 0
        edge = EdgeProcess(**kw).start()  # type: ignore[arg-type]
        pub.publish(f"farm/v1/{county}/f/gw-1/telemetry",
                    make_payload("gw-1", 3, _readings("after-", 10, now)))
        eventually(lambda: count(influxdb.url, influx_db, "soil", "moisture") == 40,
                   timeout=30, what="telemetry after a restart stored")
    finally:
        pub.publish(status_topic, b"", retain=True)  # clear the retained message
        pub.close()
        assert edge.stop() == 0, edge.log_tail()


class _Unstartable(_Recorder):
    async def start(self) -> None:
        raise OSError(5, "Input/output error", "alerts.sqlite")


async def test_an_observer_that_fails_to_start_leaves_ingestion_running(
        mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str, county: str,
        tmp_path: Path) -> None:
    """The observer's start is made to fail (injected through the
    constructor); the servers are real."""
    s = edge_settings(mosquitto.url, influxdb.url, influx_db, county, tmp_path)
    recorder = _Recorder()
    svc = EdgeService(s, observers=[_Unstartable(), recorder])
    stop = asyncio.Event()
    task = asyncio.create_task(svc.run(stop))
    try:
        await until(lambda: svc.mqtt.subscribed, timeout=45, what="subscribed")

        def publish() -> None:
            p = Publisher(mosquitto.url)
            p.publish(f"farm/v1/{county}/f/gw-1/telemetry",
                      make_payload("gw-1", 1, _readings("s", 10, int(time.time() * 1000))))
            p.close()

        await asyncio.to_thread(publish)
        await until(lambda: count(influxdb.url, influx_db, "soil", "moisture") == 10,
                    timeout=45, what="stored")
        await until(lambda: len(recorder.readings) == 10, timeout=45,
                    what="the other observer fed")
        h = svc.health()
        assert not h.ok
        assert any("_Unstartable is not running" in r and "Input/output error" in r
                   for r in h.reasons), h.reasons
    finally:
        stop.set()
        await task


_BROKEN_WRITER = """
import sys
from farmedge.storage import influx

async def broken(self, body):
    raise RuntimeError("injected bug in the InfluxDB writer")

influx.InfluxWriter.write = broken
from farmedge.cli import main
sys.exit(main(["edge", "run"]))
"""


def test_a_fatal_failure_exits_non_zero_within_5_seconds(
        mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str, county: str,
        tmp_path: Path) -> None:
    """No message can stop a task any more, so the fatal failure is a bug put
    into the edge process at its start (the writer raises)."""
    edge = EdgeProcess(mqtt_url=mosquitto.url, influx_url=influxdb.url, database=influx_db,
                       data_dir=tmp_path / "edge", county=county,
                       argv=[sys.executable, "-c", _BROKEN_WRITER]).start()
    try:
        pub = Publisher(mosquitto.url)
        pub.publish(f"farm/v1/{county}/f/gw-1/telemetry",
                    make_payload("gw-1", 1, _readings("s", 3, int(time.time() * 1000))))
        pub.close()
        t0 = time.monotonic()
        assert edge.proc is not None
        rc = edge.proc.wait(30)
        took = time.monotonic() - t0
        log = edge.log_tail(100_000)
        assert rc != 0, log
        assert took < 5, f"exited after {took:.1f} s"
        fatal = [json.loads(ln) for ln in log.splitlines()
                 if ln.startswith("{") and '"edge.fatal"' in ln]
        assert len(fatal) == 1, log
        assert "RuntimeError: injected bug in the InfluxDB writer" in fatal[0]["cause"]
        assert "writer" in fatal[0]["cause"]
    finally:
        edge.stop()
