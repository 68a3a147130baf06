"""The batcher (farmedge/edge/batcher.py) without servers: it alone fills
the open batch, from the source's inbox and from what other tasks hand in,
ships it by size and by age, contains a failing validation to its message,
and dead-letters the lines InfluxDB refused. The MQTT client under the
source is a fake passed by constructor (the real one is covered by the
integration tests); validation is the real one."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from farmedge.edge.batcher import Batch, Batcher
from farmedge.edge.metrics import EdgeMetrics
from farmedge.edge.settings import InfluxSection, IngestSection, MqttSection
from farmedge.edge.sink import Refused
from farmedge.edge.source import Source
from farmedge.edge.validate import Validator, Verdict
from farmedge.transport.mqtt import Inbound
from tests.support import make_payload

NOW = int(time.time() * 1000)


class FakeMqtt:
    def __init__(self, settings: MqttSection, *, on_messages: Any) -> None:
        self.deliver = on_messages
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def _msg(seq: int, sensors: int = 1, *, gateway: str = "gw-1") -> Inbound:
    payload = make_payload(gateway, seq, [{"sensor": f"s{i}", "kind": "soil_moisture",
                                           "ts": NOW, "value": 20.0, "unit": "%"}
                                          for i in range(sensors)])
    return Inbound(f"farm/v1/c1/f1/{gateway}/telemetry", payload, seq, 1, False, None, NOW,
                   time.monotonic(), 1)


class _Failing(Validator):
    def validate(self, msg: Inbound) -> Verdict:
        v = super().validate(msg)
        if msg.mid == 2:
            raise ValueError("bug")
        return v


def _parts(validator: Validator | None = None, **influx: Any) -> tuple[Source, Batcher,
                                                                        list[tuple[str, str]]]:
    source = Source(MqttSection(), max_pending_bytes=1_000_000, metrics=EdgeMetrics(),
                    client=FakeMqtt)
    errors: list[tuple[str, str]] = []
    batcher = Batcher(InfluxSection(**influx), source=source,
                      validator=validator or Validator(IngestSection(), instance="t"),
                      on_internal=lambda where, exc, topic: errors.append((where, topic)))
    return source, batcher, errors


async def _next(batcher: Batcher) -> Batch:
    batch = await asyncio.wait_for(batcher.next(), 10)
    assert batch is not None
    batcher.delivered()
    return batch


async def test_messages_and_points_go_into_one_batch_readings_first() -> None:
    source, batcher, _ = _parts(flush_interval_s=0.05)
    task = asyncio.create_task(batcher.run())
    batcher.add_points(["edge,instance=t messages=1i 1"])
    source.mqtt.deliver([_msg(1, 3), _msg(2, 2)])  # type: ignore[attr-defined]
    batch = await _next(batcher)
    assert len(batch.readings) == 5 and all(x.startswith("soil,") for x in batch.readings)
    assert batch.points == ["edge,instance=t messages=1i 1"]
    assert batch.lines() == [*batch.readings, *batch.points]
    assert [m.mid for m in batch.messages] == [1, 2]
    assert batch.n_readings == 5 and len(batch.accepted) == 0  # no stage asked for records
    batcher.close()
    assert await asyncio.wait_for(batcher.next(), 10) is None
    await task


async def test_a_full_batch_ships_at_once_and_the_rest_follows() -> None:
    source, batcher, _ = _parts(batch_size=10, flush_interval_s=30, linger_s=0)
    task = asyncio.create_task(batcher.run())
    source.mqtt.deliver([_msg(i, 4) for i in range(1, 5)])  # type: ignore[attr-defined]
    first = await _next(batcher)
    assert len(first.readings) == 12, "shipped once it held batch_size lines"
    assert batcher.pending_messages() == 1
    batcher.close()
    second = await _next(batcher)
    assert len(second.readings) == 4
    await task


async def test_a_failing_validation_is_that_message_s_internal_dead_letter() -> None:
    source, batcher, errors = _parts(_Failing(IngestSection(), instance="t"),
                                     flush_interval_s=0.05)
    task = asyncio.create_task(batcher.run())
    source.mqtt.deliver([_msg(1, 2), _msg(2, 2), _msg(3, 2)])  # type: ignore[attr-defined]
    batch = await _next(batcher)
    assert len(batch.readings) == 4, "nothing of the failed message"
    assert [m.mid for m in batch.messages] == [1, 2, 3], "all acknowledged"
    [dead] = batch.points
    assert dead.startswith("ingest_errors,edge=t,reason=internal,")
    assert "ValueError: bug" in dead
    assert errors == [("ingest", "farm/v1/c1/f1/gw-1/telemetry")]
    batcher.close()
    await task


async def test_refused_lines_are_dead_lettered_in_the_next_batch_dead_letters_dropped() -> None:
    _, batcher, _ = _parts(flush_interval_s=0.05)
    task = asyncio.create_task(batcher.run())
    batcher.add_refused([Refused("soil,sensor=x moisture=1 1", 400, "field type conflict"),
                         Refused("ingest_errors,edge=t,reason=r,slot=0 count=1i 1", 400, "no")])
    batch = await _next(batcher)
    [dead] = batch.points
    assert dead.startswith("ingest_errors,edge=t,reason=influx_rejected,")
    assert "InfluxDB 400: field type conflict" in dead
    assert batch.readings == [] and batch.messages == []
    batcher.close()
    await task


async def test_back_pressure_pauses_the_source_until_half_is_taken() -> None:
    source = Source(MqttSection(), max_pending_bytes=1000, metrics=EdgeMetrics(),
                    client=FakeMqtt)
    mqtt: Any = source.mqtt
    mqtt.deliver([_msg(i, 3) for i in range(1, 8)])
    assert mqtt.paused
    while mqtt.paused:
        source.take()
    assert sum(len(m.payload) for m in source.inbox) < 500
