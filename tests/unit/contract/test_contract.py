"""Wire contract v1: ids, topics, units, whole-message vs per-reading rejects."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farmedge.contract import (
    KINDS,
    MessageRejected,
    TopicError,
    is_valid_id,
    parse_gateway_topic,
    parse_telemetry,
    telemetry_topic,
)


def payload(readings: list[dict[str, object]], **over: object) -> bytes:
    doc: dict[str, object] = {"v": 1, "gateway": "gw-0007", "seq": 18231, "sent": 1763800000123,
                              "clock": "synced", "readings": readings}
    doc.update(over)
    return json.dumps(doc, ensure_ascii=False).encode()


def reading(**over: object) -> dict[str, object]:
    r: dict[str, object] = {"sensor": "soil-1", "kind": "soil_moisture", "ts": 1763799990000,
                            "value": 23.4, "unit": "%", "quality": "ok"}
    r.update(over)
    return r


def test_example_from_the_protocol_document_parses() -> None:
    p = parse_telemetry(payload([reading()]))
    assert p.envelope.gateway == "gw-0007" and p.envelope.seq == 18231
    [r] = p.readings
    assert (r.sensor, r.kind.name, r.kind.unit, r.ts_ms, r.value) == (
        "soil-1", "soil_moisture", "%", 1763799990000, 23.4)
    assert p.rejected == []


@pytest.mark.parametrize(("kind", "value", "unit", "expected"), [
    ("soil_moisture", 0.234, "m3/m3", 23.4),
    ("soil_temperature", 68.0, "degF", 20.0),
    ("soil_temperature", 20.0, "°C", 20.0),
    ("soil_ec", 1.5, "mS/cm", 1500.0),
    ("soil_ec", 1.5, "dS/m", 1500.0),
    ("battery_voltage", 3700, "mV", 3.7),
    ("air_humidity", 55, "%", 55.0),
])
def test_unit_aliases_are_converted(kind: str, value: float, unit: str, expected: float) -> None:
    [r] = parse_telemetry(payload([reading(kind=kind, value=value, unit=unit)])).readings
    assert math.isclose(r.value, expected, rel_tol=1e-9)
    assert r.kind.unit == KINDS[kind].unit


@pytest.mark.parametrize(("over", "reason"), [
    ({"unit": "furlongs"}, "unknown_unit"),
    ({"kind": "soil_vibes"}, "unknown_kind"),
    ({"value": 140.0}, "out_of_range"),
    ({"value": "12"}, "schema"),
    ({"value": True}, "schema"),
    ({"sensor": "a b"}, "schema"),
    ({"quality": "great"}, "schema"),
])
def test_one_bad_reading_does_not_drop_its_neighbours(over: dict[str, object],
                                                       reason: str) -> None:
    p = parse_telemetry(payload([reading(sensor="ok-1"), reading(**over), reading(sensor="ok-2")]))
    assert [r.sensor for r in p.readings] == ["ok-1", "ok-2"]
    [rej] = p.rejected
    assert (rej.index, rej.reason) == (1, reason)
    assert rej.detail


def test_nan_and_infinity_are_rejected() -> None:
    raw = payload([reading()]).replace(b"23.4", b"NaN")
    p = parse_telemetry(raw)
    assert p.readings == [] and p.rejected[0].reason == "schema"


@pytest.mark.parametrize(("raw", "reason"), [
    (b"{not json", "bad_json"),
    (b"", "bad_json"),
    (payload([]), "schema"),
    (payload([reading()] * 1001), "schema"),
    (payload([reading()], v=2), "schema"),
    (payload([reading()], clock="maybe"), "schema"),
    (payload([reading()], gateway="gw/1"), "schema"),
    (b"{" + b" " * (256 * 1024) + b"}", "too_large"),
])
def test_whole_message_rejects(raw: bytes, reason: str) -> None:
    with pytest.raises(MessageRejected) as info:
        parse_telemetry(raw)
    assert info.value.reason == reason


def test_unknown_content_type_is_rejected() -> None:
    with pytest.raises(MessageRejected) as info:
        parse_telemetry(payload([reading()]), content_type="text/csv")
    assert info.value.reason == "bad_encoding"


@pytest.mark.parametrize("good", ["gw-0007", "黑龙江", "绥化市.北林区", "a_b-c.d", "x" * 64])
def test_valid_ids(good: str) -> None:
    assert is_valid_id(good)


@pytest.mark.parametrize("bad", ["", "x" * 65, "a b", "a,b", "a=b", 'a"b', "a\\b", "a\nb",
                                 "a/b", "+", "#", ".", "..", "a\u200bb", "a\x00"])
def test_invalid_ids(bad: str) -> None:
    assert not is_valid_id(bad)


def test_topics_round_trip() -> None:
    t = parse_gateway_topic(telemetry_topic("suihua", "farm-12", "gw-0007"))
    assert (t.county, t.farm, t.gateway, t.channel) == ("suihua", "farm-12", "gw-0007",
                                                        "telemetry")
    for bad in ["farm/v2/a/b/c/telemetry", "farm/v1/a/b/telemetry", "farm/v1/a/b/c/other",
                "farm/v1/a b/b/c/telemetry"]:
        with pytest.raises(TopicError):
            parse_gateway_topic(bad)


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash_the_parser(data: bytes) -> None:
    try:
        p = parse_telemetry(data)
    except MessageRejected as exc:
        assert exc.reason in {"bad_json", "schema", "too_large", "bad_encoding"}
    else:
        assert p.readings or p.rejected


@given(st.dictionaries(st.text(max_size=10), st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=10), max_size=8))
def test_arbitrary_reading_objects_are_accepted_or_rejected_with_a_reason(
        obj: dict[str, object]) -> None:
    p = parse_telemetry(payload([obj]))
    assert len(p.readings) + len(p.rejected) == 1
    for rej in p.rejected:
        assert rej.reason and rej.detail and len(rej.excerpt) <= 200
