"""The edge's pure validation (farmedge/edge/validate.py), without servers:
topics, the registry, the id budget, clock placement, and the dead-letter
records and their lines. The clock is a fake passed by constructor; the
state is in memory (a file where a redelivery must find it)."""

from __future__ import annotations

import time
from pathlib import Path

from farmedge.contract import StatusReason
from farmedge.edge.settings import IngestSection
from farmedge.edge.state import IngestState
from farmedge.edge.validate import DEAD_LETTER_SLOTS, Rejected, Validator, dead_letter_line
from farmedge.registry import Farm, GatewayEntry, Plot, Registry, SensorMeta
from farmedge.transport.mqtt import Inbound
from tests.support import make_payload

NOW = 1_780_000_000_000
TOPIC = "farm/v1/c1/f1/gw-1/telemetry"


class FakeClock:
    def __init__(self, ms: int = NOW) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def _msg(payload: bytes, *, topic: str = TOPIC, received: int = NOW,
         retain: bool = False, dup: bool = False) -> Inbound:
    return Inbound(topic, payload, 1, 1, retain, None, received, time.monotonic(), 1, dup)


def _reading(sensor: str, ts: int = NOW - 1000, value: float = 21.5,
             **extra: object) -> dict[str, object]:
    return {"sensor": sensor, "kind": "soil_moisture", "ts": ts, "value": value, "unit": "%",
            **extra}


def _validator(registry: Registry | None = None, clock: FakeClock | None = None,
               **kw: int) -> Validator:
    return Validator(IngestSection(**kw), registry=registry, instance="edge-t",
                     now_ms=clock or FakeClock(), keep_readings=True)


def _registry() -> Registry:
    return Registry(farms=[Farm(
        county="c1", farm="f1", name="F1",
        plots={"p3": Plot(name="3", crop="maize", field_capacity=36, wilting_point=19)},
        gateways={
            "gw-1": GatewayEntry(sensors={"soil-1": SensorMeta(plot="p3", crop="maize")}),
            "gw-2": GatewayEntry(only_listed_sensors=True,
                                 sensors={"soil-9": SensorMeta(plot="p3")}),
        })])


def test_a_good_message_becomes_lines_and_one_accepted_record() -> None:
    v = _validator().validate(_msg(make_payload("gw-1", 1, [_reading("s1"), _reading("s2")])))
    assert v.rejected == []
    assert v.lines == [f"soil,county=c1,farm=f1,gateway=gw-1,sensor=s1 moisture=21.5 {NOW - 1000}",
                       f"soil,county=c1,farm=f1,gateway=gw-1,sensor=s2 moisture=21.5 {NOW - 1000}"]
    assert v.n_readings == 2
    assert v.accepted is not None
    assert (v.accepted.county, v.accepted.gateway, v.accepted.clock_ok) == ("c1", "gw-1", True)
    assert [r.sensor for r in v.accepted.readings] == ["s1", "s2"]


def test_a_bad_topic_is_one_rejected_record_with_the_ids_it_could_read() -> None:
    val = _validator()
    v = val.validate(_msg(b"{}", topic="farm/v1/c1/f1/gw 1/telemetry"))
    assert v.lines == [] and v.accepted is None
    [rej] = v.rejected
    assert (rej.reason, rej.county, rej.farm, rej.gateway) == ("bad_topic", "c1", "f1", "_")
    assert rej.topic == "farm/v1/c1/f1/gw 1/telemetry"
    assert val.counters.rejected == {"bad_topic": 1}


def test_a_payload_for_another_gateway_is_refused() -> None:
    v = _validator().validate(_msg(make_payload("gw-2", 1, [_reading("s1")])))
    assert [r.reason for r in v.rejected] == ["gateway_mismatch"]
    assert v.lines == []


def test_the_registry_tags_known_sensors_and_refuses_unknown_gateways_and_sensors() -> None:
    val = _validator(_registry())
    v = val.validate(_msg(make_payload("gw-1", 1, [_reading("soil-1")])))
    assert v.lines == [f"soil,county=c1,farm=f1,gateway=gw-1,sensor=soil-1,crop=maize,plot=p3 "
                       f"moisture=21.5 {NOW - 1000}"]
    assert v.accepted is not None and v.accepted.meta("soil-1").plot == "p3"
    v = val.validate(_msg(make_payload("gw-7", 1, [_reading("soil-1")]),
                          topic="farm/v1/c1/f1/gw-7/telemetry"))
    assert [r.reason for r in v.rejected] == ["unknown_gateway"]
    v = val.validate(_msg(make_payload("gw-2", 1, [_reading("soil-9"), _reading("other")]),
                          topic="farm/v1/c1/f1/gw-2/telemetry"))
    assert len(v.lines) == 1
    [rej] = v.rejected
    assert (rej.reason, rej.index, rej.gateway) == ("unknown_sensor", 1, "gw-2")


def test_the_id_budget_refuses_new_ids_past_it_and_keeps_known_ones() -> None:
    val = _validator(max_ids_per_gateway=2)
    v = val.validate(_msg(make_payload("gw-1", 1, [_reading(f"s{i}") for i in range(4)])))
    assert len(v.lines) == 2
    assert [(r.reason, r.index) for r in v.rejected] == [("cardinality_budget", 2),
                                                         ("cardinality_budget", 3)]
    assert "max_ids_per_gateway = 2" in v.rejected[0].detail
    v = val.validate(_msg(make_payload("gw-1", 2, [_reading("s0"), _reading("s1")])))
    assert len(v.lines) == 2 and v.rejected == []


def test_readings_too_far_ahead_of_the_edge_s_clock_are_refused() -> None:
    val = _validator(max_future_s=300)
    v = val.validate(_msg(make_payload("gw-1", 1, [_reading("s1", ts=NOW + 301_000),
                                                   _reading("s2", ts=NOW + 299_000)])))
    assert [(r.reason, r.index) for r in v.rejected] == [("ts_in_future", 0)]
    assert len(v.lines) == 1


def test_an_unsynced_gateway_s_readings_are_placed_on_the_edge_s_clock() -> None:
    val = _validator()
    sent = 50_000  # the gateway's clock started at 1970 when it booted
    payload = make_payload("gw-1", 1, [_reading("s1", ts=sent - 2000)], sent=sent,
                           clock="unsynced")
    v = val.validate(_msg(payload, received=NOW))
    [line] = v.lines
    assert line.endswith(f" {NOW - 2000}")
    assert "moisture_time_estimated=true" in line
    assert v.accepted is not None
    assert (v.accepted.clock_ok, v.accepted.offset_ms) == (False, NOW - sent)
    # The next message, 10 s later on both clocks, keeps the same offset.
    payload = make_payload("gw-1", 2, [_reading("s1", ts=sent + 9000)], sent=sent + 10_000,
                           clock="unsynced")
    v = val.validate(_msg(payload, received=NOW + 10_400))
    assert v.lines[0].endswith(f" {NOW + 9000}")


def test_a_sequence_gap_is_a_gateway_point_not_a_reading() -> None:
    val = _validator()
    val.validate(_msg(make_payload("gw-1", 1, [_reading("s1")])))
    v = val.validate(_msg(make_payload("gw-1", 5, [_reading("s1")])))
    assert v.points == [f"gateway,county=c1,farm=f1,gateway=gw-1 seq_gap=3i {NOW}"]
    assert val.counters.seq_gaps == 3


def test_a_sequence_starting_over_is_a_restart_point_not_a_gap() -> None:
    val = _validator()
    val.validate(_msg(make_payload("gw-1", 5000, [_reading("s1")])))
    v = val.validate(_msg(make_payload("gw-1", 0, [_reading("s1")])))  # a new outbox
    assert v.points == [f"gateway,county=c1,farm=f1,gateway=gw-1 seq_restart=1i {NOW}"]
    v = val.validate(_msg(make_payload("gw-1", 1, [_reading("s1")])))
    assert v.points == []
    assert (val.counters.seq_restarts, val.counters.seq_gaps,
            val.counters.seq_duplicates) == (1, 0, 0)


def test_a_status_is_a_point_and_a_status_record() -> None:
    v = _validator().validate(_msg(b'{"v":1,"gateway":"gw-1","online":true}',
                                   topic="farm/v1/c1/f1/gw-1/status"))
    assert v.lines == []
    [point] = v.points
    assert point.startswith("gateway,county=c1,farm=f1,gateway=gw-1 online=true")
    assert v.status is not None and v.status.status.online is True


def test_a_status_s_reason_and_clock_hold_are_stored_in_the_gateway_point() -> None:
    val = _validator()
    topic = "farm/v1/c1/f1/gw-1/status"
    for said, stored, record in [
        (',"reason":"stopping"', "stopping", StatusReason.STOPPING),
        (',"reason":"lost"', "lost", StatusReason.LOST),
        ("", "unknown", None),  # an older gateway's will
        (',"reason":"rebooting"', "unknown", None),  # a reason newer than this edge
    ]:
        payload = f'{{"v":1,"gateway":"gw-1","online":false{said}}}'.encode()
        v = val.validate(_msg(payload, topic=topic))
        [point] = v.points
        assert f'online=false,reason="{stored}" ' in point, point
        assert v.status is not None and v.status.status.reason is record
    v = val.validate(_msg(b'{"v":1,"gateway":"gw-1","online":true,"clock":"unsynced",'
                          b'"held_unsynced":120,"held_for_s":305.5}', topic=topic))
    [point] = v.points
    assert "held_for_s=305.5," in point and "held_unsynced=120i," in point
    assert "reason" not in point


def test_dead_letters_in_one_millisecond_get_distinct_slots_and_a_bounded_line() -> None:
    clock = FakeClock()
    val = _validator(clock=clock)
    rejected = [val.reject(topic=TOPIC, reason="bad_json", detail="x" * 2000, raw=b"\x00" * 5000,
                           key=("c1", "f1", "gw-1")) for _ in range(DEAD_LETTER_SLOTS + 1)]
    assert [r.slot for r in rejected[:3]] == [0, 1, 2]
    assert {r.ms for r in rejected[:DEAD_LETTER_SLOTS]} == {NOW}
    assert (rejected[-1].ms, rejected[-1].slot) == (NOW + 1, 0), "past the slots: next ms"
    line = val.dead_letter_line(rejected[0])
    assert line.startswith("ingest_errors,edge=edge-t,reason=bad_json,slot=0 county=\"c1\"")
    assert line.endswith(f",count=1i {NOW}")
    assert len(line) < 2000, "detail and excerpt are bounded"
    clock.ms += 5
    assert val.reject(topic="", reason="r", detail="", raw="").ms == NOW + 5


def test_a_redelivered_bad_message_is_dead_lettered_on_the_same_point(tmp_path: Path) -> None:
    clock = FakeClock()
    val = Validator(IngestSection(), instance="edge-t", now_ms=clock,
                    state=IngestState(tmp_path / "ingest.sqlite3"))
    [first] = val.validate(_msg(b"{not json")).rejected
    clock.ms += 1000
    [again] = val.validate(_msg(b"{not json", dup=True)).rejected
    assert (again.ms, again.slot) == (first.ms, first.slot)
    [resent] = val.validate(_msg(b"{not json")).rejected
    assert resent.ms == NOW + 1000


def test_the_records_of_a_failure_and_of_a_refused_line() -> None:
    val = _validator()
    msg = _msg(b"{}")
    internal = val.internal(msg, KeyError("boom"))
    assert (internal.reason, internal.gateway, internal.topic) == ("internal", "gw-1", TOPIC)
    assert internal.detail == "KeyError: 'boom'"
    refused = val.refused("soil,sensor=x moisture=1 1", 400, "partial write")
    assert (refused.reason, refused.topic, refused.index) == ("influx_rejected", "", None)
    assert refused.detail == "InfluxDB 400: partial write"
    assert "soil,sensor=x" in refused.excerpt
    line = dead_letter_line(Rejected("r", "d", "t", None, None, None, 3, "e", 7, 1), "e\\ 1")
    assert line == ('ingest_errors,edge=e\\ 1,reason=r,slot=1 county="_",farm="_",gateway="_",'
                    'topic="t",detail="d",excerpt="e",count=1i,reading_index=3i 7')


def test_open_enrollment_takes_at_most_max_open_gateways() -> None:
    """Without a registry every new gateway id was taken: a client inventing
    ids grew the edge's state and InfluxDB's series without end. Past the
    limit a new gateway's messages are dead letters; known ones go on."""
    val = _validator(max_open_gateways=2)
    for gw in ("gw-1", "gw-2"):
        v = val.validate(_msg(make_payload(gw, 1, [_reading("s1")]),
                              topic=f"farm/v1/c1/f1/{gw}/telemetry"))
        assert len(v.lines) == 1
    v = val.validate(_msg(make_payload("gw-3", 1, [_reading("s1")]),
                          topic="farm/v1/c1/f1/gw-3/telemetry"))
    assert v.lines == []
    [rej] = v.rejected
    assert (rej.reason, rej.gateway) == ("open_enrollment_full", "gw-3")
    assert "max_open_gateways" in rej.detail
    v = val.validate(_msg(make_payload("gw-1", 2, [_reading("s2")])))
    assert len(v.lines) == 1 and v.rejected == []


def test_a_flood_of_invented_gateway_ids_writes_a_bounded_number_of_lines() -> None:
    """Each new id passes the per-gateway throttle once: 500 invented ids
    were 500 log lines in a second. Past the per-reason budget they are
    counted, not written; every message is still its own dead letter."""
    from structlog.testing import capture_logs

    val = _validator(max_open_gateways=1)
    with capture_logs() as logs:
        rejected = []
        for i in range(500):
            gw = f"x-{i}"
            rejected += val.validate(_msg(make_payload(gw, 1, [_reading("s1")]),
                                          topic=f"farm/v1/c1/f1/{gw}/telemetry")).rejected
    assert len(rejected) == 499
    assert {r.reason for r in rejected} == {"open_enrollment_full"}
    lines = [e for e in logs if e["event"] == "ingest.rejected"]
    assert 1 <= len(lines) <= 20, len(lines)
    assert lines[0]["gateway"] == "x-1"
