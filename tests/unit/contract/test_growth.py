"""How the contract grows (docs/protocol.md): an edge ignores optional fields
it does not know, in the JSON envelope, in readings and in a status, and
compact elements after the known eleven; known fields and every limit stay
strict, so an unknown key cannot carry more past the limits than any other
byte."""

from __future__ import annotations

import json
import time
import tracemalloc
import zlib
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farmedge.contract import (
    COMPACT,
    MessageRejected,
    decode_compact,
    encode_compact,
    parse_status,
    parse_telemetry,
)
from farmedge.contract.compact import (
    KNOWN_ELEMENTS,
    MAGIC,
    MAX_BODY_BYTES,
    MAX_EXTENSIONS,
    SHARED_DICTIONARY,
)
from farmedge.contract.models import (
    MAX_PAYLOAD_BYTES,
    GatewayStatus,
    Reading,
    TelemetryEnvelope,
)

T0 = 1763800000000


def reading(**over: object) -> dict[str, object]:
    r: dict[str, object] = {"sensor": "soil-1", "kind": "soil_moisture", "ts": T0,
                            "value": 23.4, "unit": "%"}
    r.update(over)
    return r


def telemetry(readings: list[dict[str, object]], /, **over: object) -> bytes:
    doc: dict[str, object] = {"v": 1, "gateway": "gw-1", "seq": 7, "sent": T0 + 500,
                              "clock": "synced", "readings": readings}
    doc.update(over)
    return json.dumps(doc, ensure_ascii=False).encode()


def status(**over: object) -> bytes:
    doc: dict[str, object] = {"v": 1, "gateway": "gw-1", "online": True, "ts": T0,
                              "uptime_s": 10, "outbox_depth": 0}
    doc.update(over)
    return json.dumps(doc).encode()


def body(doc: object, code: int = 0) -> bytes:
    raw: bytes = msgpack.packb(doc, use_bin_type=True)
    if code == 2:
        c = zlib.compressobj(9, zlib.DEFLATED, -15, zdict=SHARED_DICTIONARY)
        raw = c.compress(raw) + c.flush()
    return bytes([MAGIC, code]) + raw


GOOD = [1, "gw-1", 7, T0 + 500, 0, [["soil-1", "soil_moisture", "%"]], [0], [T0], [-1], [234],
        None]


def _compact(*ext: object, code: int = 0) -> bytes:
    return body([*GOOD, *ext], code)


# -- JSON: unknown keys are ignored --------------------------------------------


def test_unknown_envelope_keys_are_ignored() -> None:
    p = parse_telemetry(telemetry([reading()], battery_pct=87, site={"lat": 46.6, "lon": 126.9},
                                  tags=["a", "b"], note=None))
    assert [(r.sensor, r.value) for r in p.readings] == [("soil-1", 23.4)]
    assert p.rejected == []
    assert p.envelope.seq == 7


def test_unknown_reading_keys_are_ignored_and_neighbours_still_judged() -> None:
    p = parse_telemetry(telemetry([
        reading(sensor="a", depth_cm=10, calibration={"raw": 1234, "curve": [1, 2]}),
        reading(sensor="b", value="23", depth_cm=10),      # a known field, wrong type
        reading(sensor="c", future_flag=True),
    ], gateway_build="2027.1"))
    assert [r.sensor for r in p.readings] == ["a", "c"]
    [rej] = p.rejected
    assert (rej.index, rej.reason) == (1, "schema")
    assert "value" in rej.detail


def test_unknown_status_keys_are_ignored() -> None:
    st = parse_status(status(online=False, power_source="solar", battery_pct=87,
                             radio={"rssi": -71, "snr": 7.5}))
    assert (st.online, st.uptime_s, st.outbox_depth) == (False, 10.0, 0)
    # Nothing of the unknown keys is kept on the model.
    assert st.model_extra is None
    assert set(st.model_dump()) <= set(type(st).model_fields)


def test_the_smallest_last_will_with_an_unknown_key_is_accepted() -> None:
    st = parse_status(b'{"v":1,"gateway":"gw-1","online":false,"cause":"lost"}')
    assert st.online is False and st.ts is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=10)


def _unknown(known: set[str]) -> st.SearchStrategy[dict[str, object]]:
    return st.dictionaries(st.text(min_size=1, max_size=12).filter(lambda k: k not in known),
                           json_values, max_size=5)


@settings(max_examples=150, deadline=None)
@given(env_extra=_unknown(set(TelemetryEnvelope.model_fields)),
       reading_extra=_unknown(set(Reading.model_fields)),
       status_extra=_unknown(set(GatewayStatus.model_fields)))
def test_unknown_keys_never_change_what_is_read(env_extra: dict[str, object],
                                                reading_extra: dict[str, object],
                                                status_extra: dict[str, object]) -> None:
    """Whatever the unknown keys are called and hold, the message reads as it
    does without them."""
    rs = [reading(sensor="a"), reading(sensor="b", value="x"), reading(sensor="c", ts=T0 + 1)]
    want = parse_telemetry(telemetry(rs))
    got = parse_telemetry(telemetry([{**reading_extra, **r} for r in rs], **env_extra))
    assert got.readings == want.readings
    assert [(r.index, r.reason) for r in got.rejected] == [(1, "schema")]
    assert got.envelope.model_dump(exclude={"readings"}) == \
        want.envelope.model_dump(exclude={"readings"})
    st_want = parse_status(status())
    st_got = parse_status(json.dumps({**status_extra, **json.loads(status())}).encode())
    assert st_got == st_want


# -- known fields stay strict --------------------------------------------------


@pytest.mark.parametrize("over", [
    {"v": 2},                          # a new version is not a new field
    {"seq": "7"},
    {"clock": "gps"},                  # a new value of a known field is not ignored
    {"readings": []},
    {"gateway": "gw/1"},
])
def test_an_unknown_key_does_not_excuse_a_bad_known_field(over: dict[str, object]) -> None:
    with pytest.raises(MessageRejected) as err:
        parse_telemetry(telemetry([reading()], extra_field=1, **over))
    assert err.value.reason == "schema"


@pytest.mark.parametrize("drop", ["v", "gateway", "seq", "sent", "clock", "readings"])
def test_required_envelope_fields_stay_required(drop: str) -> None:
    doc = json.loads(telemetry([reading()], newer=1))
    del doc[drop]
    with pytest.raises(MessageRejected) as err:
        parse_telemetry(json.dumps(doc).encode())
    assert err.value.reason == "schema"


@pytest.mark.parametrize("over", [{"quality": "great"}, {"ts": -1}, {"unit": "x" * 21}])
def test_known_reading_fields_stay_strict(over: dict[str, object]) -> None:
    p = parse_telemetry(telemetry([reading(**over, newer=1)]))
    assert p.readings == [] and p.rejected[0].reason == "schema"


@pytest.mark.parametrize("over", [{"online": "yes"}, {"dropped": -1}, {"version": "x" * 41},
                                  {"v": 2}])
def test_known_status_fields_stay_strict(over: dict[str, object]) -> None:
    with pytest.raises(MessageRejected) as err:
        parse_status(status(newer=1, **over))
    assert err.value.reason == "bad_status"


def test_a_status_needs_its_required_fields_whatever_else_it_holds() -> None:
    with pytest.raises(MessageRejected) as err:
        parse_status(b'{"v":1,"gateway":"gw-1","state":"offline"}')
    assert err.value.reason == "bad_status"


# -- unknown keys still count toward every limit -------------------------------


def _padded(make: Any, size: int) -> bytes:
    """``make(pad=...)`` grown with an unknown key to exactly ``size`` bytes."""
    base = make(pad="")
    out: bytes = make(pad="x" * (size - len(base)))
    assert len(out) == size
    return out


def test_an_unknown_key_cannot_pass_the_payload_limit() -> None:
    def tele(pad: str) -> bytes:
        return telemetry([reading()], pad=pad)

    def stat(pad: str) -> bytes:
        return status(pad=pad)

    assert len(parse_telemetry(_padded(tele, MAX_PAYLOAD_BYTES)).readings) == 1
    with pytest.raises(MessageRejected) as err:
        parse_telemetry(_padded(tele, MAX_PAYLOAD_BYTES + 1))
    assert err.value.reason == "too_large"
    assert parse_status(_padded(stat, MAX_PAYLOAD_BYTES)).online is True
    with pytest.raises(MessageRejected) as err:
        parse_status(_padded(stat, MAX_PAYLOAD_BYTES + 1))
    assert err.value.reason == "too_large"


def test_an_unknown_key_in_every_reading_is_bounded_by_the_payload() -> None:
    per = (MAX_PAYLOAD_BYTES // 1000) - len(json.dumps(reading())) - 20
    ok = telemetry([reading(ts=T0 + i, pad="y" * per) for i in range(1000)])
    assert len(ok) <= MAX_PAYLOAD_BYTES
    assert len(parse_telemetry(ok).readings) == 1000
    big = telemetry([reading(ts=T0 + i, pad="y" * (per + 100)) for i in range(1000)])
    with pytest.raises(MessageRejected) as err:
        parse_telemetry(big)
    assert err.value.reason == "too_large"


def test_deep_nesting_in_an_unknown_key_is_refused_quickly() -> None:
    depth = (MAX_PAYLOAD_BYTES - 400) // 2
    deep = "[" * depth + "]" * depth
    t = time.monotonic()
    for raw in (telemetry([reading()]).replace(b'"readings"', b'"x": ' + deep.encode()
                                               + b', "readings"'),
                telemetry([reading()]).replace(b'"unit"', b'"x": ' + deep.encode()
                                               + b', "unit"')):
        assert len(raw) <= MAX_PAYLOAD_BYTES
        with pytest.raises(MessageRejected) as err:
            parse_telemetry(raw)
        assert err.value.reason == "bad_json"
    with pytest.raises(MessageRejected) as err:
        parse_status(status().replace(b'"ts"', b'"x": ' + deep.encode() + b', "ts"'))
    assert err.value.reason == "bad_status"
    assert time.monotonic() - t < 2.0


def test_an_ignored_value_is_not_kept_in_memory() -> None:
    """A status the edge keeps per gateway (the alerts engine holds the
    latest) must not hold on to a 250 KiB unknown value."""
    raw = status(blob="z" * (MAX_PAYLOAD_BYTES - 200))
    tracemalloc.start()
    try:
        kept = [parse_status(raw) for _ in range(20)]
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(kept) == 20
    assert current < 20 * MAX_PAYLOAD_BYTES // 4, current
    assert all("blob" not in s.__dict__ for s in kept)


# -- compact: trailing elements ------------------------------------------------


def test_old_style_compact_body_still_parses() -> None:
    [r] = parse_telemetry(_compact(), content_type=COMPACT).readings
    assert (r.sensor, r.ts_ms, r.value) == ("soil-1", T0, 23.4)


@pytest.mark.parametrize("ext", [
    [None],
    [True, 3, -1.5, "next"],
    [[1, 2, 3]],                              # a per-reading column
    [[None, "a", 1.0, False]],
    ["s" * 1024],
    [[0] * 1000],
    [0] * MAX_EXTENSIONS,
    [[i] for i in range(MAX_EXTENSIONS)],
])
def test_extension_elements_are_ignored(ext: list[object]) -> None:
    doc = decode_compact(_compact(*ext))
    assert doc == decode_compact(_compact())
    p = parse_telemetry(_compact(*ext, code=2))
    assert [(r.sensor, r.value) for r in p.readings] == [("soil-1", 23.4)]


def test_encoded_messages_with_extensions_read_like_the_json_one() -> None:
    rs = [reading(ts=T0 + i * 60_000, value=20 + i / 10) for i in range(30)]
    plain = encode_compact(gateway="gw-1", seq=7, sent=T0 + 500, clock="synced", readings=rs,
                           compression="none")
    doc = msgpack.unpackb(plain[2:])
    assert len(doc) == KNOWN_ELEMENTS
    newer = body([*doc, [1] * 30, "fw-2"], 2)
    got = parse_telemetry(newer)
    want = parse_telemetry(telemetry(rs))
    assert got.readings == want.readings


@pytest.mark.parametrize(("ext", "reason"), [
    ([0] * (MAX_EXTENSIONS + 1), "at most 16 extension elements"),
    ([[[1]]], "extension element 11"),
    ([[1], [2, [3]]], "extension element 12"),
    (["s" * 1025], "MessagePack"),
    ([[0] * 1001], "more than 1000 entries"),
    ([{"k": 1}], "MessagePack"),
    ([b"bytes"], "MessagePack"),
])
def test_extension_elements_are_bounded(ext: list[object], reason: str) -> None:
    with pytest.raises(MessageRejected) as err:
        parse_telemetry(_compact(*ext), content_type=COMPACT)
    assert err.value.reason == "bad_encoding"
    assert reason in err.value.detail


def test_a_body_missing_a_known_element_is_still_refused() -> None:
    with pytest.raises(MessageRejected) as err:
        parse_telemetry(body(GOOD[:10]), content_type=COMPACT)
    assert err.value.reason == "bad_encoding"
    assert "body has 10 entries" in err.value.detail


def test_extension_elements_cannot_pass_the_body_limit() -> None:
    """Sixteen arrays of a thousand 1 KiB strings (16 MiB, compressing to a
    few KiB) are refused while decompressing, past 1 MiB."""
    ext = [["e" * 1024] * 1000 for _ in range(MAX_EXTENSIONS)]
    raw = _compact(*ext, code=2)
    assert len(raw) < MAX_PAYLOAD_BYTES
    tracemalloc.start()
    try:
        with pytest.raises(MessageRejected) as err:
            parse_telemetry(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.reason == "too_large"
    assert peak < 8 * MAX_BODY_BYTES, peak


def test_extension_elements_count_toward_the_arrays_limit() -> None:
    # A full series table (1000 series, 1000 arrays) plus sixteen extension
    # arrays is the most a body holds; the arrays are counted while unpacking.
    series = [[f"s{i}", "soil_moisture", "%"] for i in range(1000)]
    doc = [1, "gw-1", 7, T0, 0, series, list(range(1000)), [T0] + [0] * 999, [0] * 1000,
           [1] * 1000, None]
    ok = body([*doc, *([[1]] * MAX_EXTENSIONS)], 2)
    assert len(parse_telemetry(ok).readings) == 1000
