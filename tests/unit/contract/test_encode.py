"""Encoding: what the encoders build, the decoder reads back as it was; what
the decoder refuses as a whole, the encoders refuse to build; the examples
of docs/protocol.md are what the encoders write."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from farmedge.contract import (
    COMPACT,
    JSON,
    KINDS,
    MAX_EPOCH_MS,
    MAX_INT,
    MAX_READINGS,
    ContractError,
    EncodeError,
    MessageRejected,
    encode_json,
    encode_status,
    encode_telemetry,
    is_valid_id,
    is_valid_topic_id,
    parse_status,
    parse_telemetry,
)
from farmedge.contract.compact import COMPRESSIONS
from farmedge.contract.models import Reading, Telemetry

PROTOCOL = Path(__file__).resolve().parents[3] / "docs" / "protocol.md"
T0 = 1763800000000

# -- strategies ---------------------------------------------------------------

_id_chars = st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."
                            "绥化市北林区éßж")
ids = st.text(_id_chars, min_size=1, max_size=64).filter(is_valid_id)
topic_ids = ids.filter(is_valid_topic_id)
epoch_ms = st.integers(min_value=0, max_value=MAX_EPOCH_MS - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)
qualities = st.sampled_from(["ok", "suspect", "error"])


@st.composite
def schema_readings(draw: st.DrawFn) -> dict[str, Any]:
    """Readings the reading rules allow (any kind and unit string: those are
    checked later, one reading at a time)."""
    r: dict[str, Any] = {
        "sensor": draw(ids),
        "kind": draw(st.text(min_size=1, max_size=64).filter(_utf8)),
        "ts": draw(epoch_ms),
        "value": draw(finite | st.integers(min_value=-(2**53), max_value=2**53)),
        "unit": draw(st.text(max_size=20).filter(_utf8)),
    }
    q = draw(st.none() | qualities)
    if q is not None:
        r["quality"] = q
    a = draw(st.none() | ids)
    if a is not None:
        r["animal"] = a
    return r


@st.composite
def contract_readings(draw: st.DrawFn) -> dict[str, Any]:
    """Readings the edge stores: a known kind in its canonical unit, in range."""
    kind = KINDS[draw(st.sampled_from(sorted(KINDS)))]
    r = {"sensor": draw(ids), "kind": kind.name, "ts": draw(epoch_ms),
         "value": draw(st.floats(min_value=kind.low, max_value=kind.high)),
         "unit": kind.unit, "quality": draw(qualities)}
    if draw(st.booleans()):
        r["animal"] = draw(ids)
    return r


def _utf8(s: str) -> bool:
    try:
        s.encode()
    except UnicodeEncodeError:
        return False
    return True


def envelope(**over: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"gateway": "gw-0007", "seq": 18231, "sent": T0 + 123,
                            "clock": "synced",
                            "readings": [{"sensor": "soil-1", "kind": "soil_moisture",
                                          "ts": T0, "value": 23.4, "unit": "%"}]}
    args.update(over)
    return args


# -- round trips ----------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(gateway=topic_ids, seq=st.integers(min_value=0, max_value=MAX_INT - 1), sent=epoch_ms,
       clock=st.sampled_from(["synced", "unsynced"]),
       readings=st.lists(schema_readings(), min_size=1, max_size=8))
def test_json_round_trip_through_the_decoders_models(gateway: str, seq: int, sent: int,
                                                     clock: str,
                                                     readings: list[dict[str, Any]]) -> None:
    data = encode_json(gateway=gateway, seq=seq, sent=sent, clock=clock, readings=readings)
    back = Telemetry.model_validate_json(data)
    assert (back.gateway, back.seq, back.sent, back.clock) == (gateway, seq, sent, clock)
    assert len(back.readings) == len(readings)
    for r, b in zip(readings, back.readings, strict=True):
        assert (b.sensor, b.kind, b.ts, b.unit, b.animal) == (
            r["sensor"], r["kind"], r["ts"], r["unit"], r.get("animal"))
        assert b.quality == r.get("quality", "ok")
        assert b.value == float(r["value"]) and math.copysign(1, b.value) == math.copysign(
            1, float(r["value"]))


@settings(max_examples=60, deadline=None)
@given(readings=st.lists(contract_readings(), min_size=1, max_size=12),
       encoding=st.sampled_from(["json", "compact"]),
       compression=st.sampled_from(sorted(COMPRESSIONS)))
def test_round_trip_through_parse_telemetry(readings: list[dict[str, Any]], encoding: str,
                                            compression: str) -> None:
    enc = encode_telemetry(gateway="gw-1", seq=7, sent=T0, clock="unsynced", readings=readings,
                           encoding=encoding, compression=compression)  # type: ignore[arg-type]
    assert enc.content_type == (JSON if encoding == "json" else COMPACT)
    p = parse_telemetry(enc.payload, content_type=enc.content_type)
    assert p.rejected == []
    assert (p.envelope.gateway, p.envelope.seq, p.envelope.sent, p.envelope.clock) == (
        "gw-1", 7, T0, "unsynced")
    got = [(n.sensor, n.kind.name, n.ts_ms, n.value, n.quality.value, n.animal)
           for n in p.readings]
    want = [(r["sensor"], r["kind"], r["ts"], r["value"], r["quality"], r.get("animal"))
            for r in readings]
    assert got == want
    # Without a content type too (MQTT 3.1.1): JSON starts with "{", compact
    # with its magic byte.
    assert parse_telemetry(enc.payload).readings == p.readings


@settings(max_examples=60, deadline=None)
@given(fields=st.fixed_dictionaries({}, optional={
    "ts": epoch_ms,
    "uptime_s": st.floats(min_value=0, allow_infinity=False),
    "version": st.text(max_size=40).filter(_utf8),
    "outbox_depth": st.integers(min_value=0, max_value=MAX_INT - 1),
    "outbox_oldest_age_s": st.floats(min_value=0, allow_infinity=False),
    "dropped": st.integers(min_value=0, max_value=MAX_INT - 1),
    "clock": st.sampled_from(["synced", "unsynced"]),
    "cpu_temperature": finite,
    "disk_free_mb": st.floats(min_value=0, allow_infinity=False),
    "outbox_full": st.booleans(),
    "reason": st.sampled_from(["stopping", "lost"]),
    "held_unsynced": st.integers(min_value=0, max_value=MAX_INT - 1),
    "held_for_s": st.floats(min_value=0, allow_infinity=False),
}), gateway=topic_ids, online=st.booleans())
def test_status_round_trip(fields: dict[str, Any], gateway: str, online: bool) -> None:
    data = encode_status(gateway=gateway, online=online, **fields)
    st_ = parse_status(data)
    assert (st_.gateway, st_.online) == (gateway, online)
    for k, v in fields.items():
        if k == "outbox_full":
            assert st_.outbox_full is (True if v else None)
        else:
            assert getattr(st_, k) == v, k
    # Fields not given are not written; "outbox_full" only when true.
    assert set(json.loads(data)) == {"v", "gateway", "online", *fields} - (
        set() if fields.get("outbox_full") else {"outbox_full"})


# -- the same limits as the decoder ---------------------------------------------


@settings(max_examples=100, deadline=None)
@given(seq=st.integers(min_value=-(2**64), max_value=2**64),
       sent=st.integers(min_value=-(2**50), max_value=2**50),
       gateway=st.text(max_size=70).filter(_utf8),
       n=st.integers(min_value=0, max_value=3))
def test_the_encoder_refuses_exactly_what_the_decoder_refuses(seq: int, sent: int,
                                                               gateway: str, n: int) -> None:
    readings = [{"sensor": f"s{i}", "kind": "soil_ph", "ts": T0, "value": 7, "unit": "pH"}
                for i in range(n)]
    doc = {"v": 1, "gateway": gateway, "seq": seq, "sent": sent, "clock": "synced",
           "readings": readings}
    try:
        parse_telemetry(json.dumps(doc, ensure_ascii=False).encode())
    except MessageRejected:
        refused = True
    else:
        refused = False
    try:
        encode_json(gateway=gateway, seq=seq, sent=sent, clock="synced", readings=readings)
    except EncodeError as exc:
        assert refused, f"the encoder refused what the decoder takes: {exc}"
        assert exc.reason == "schema"
    else:
        assert not refused, "the encoder built what the decoder refuses"


@pytest.mark.parametrize(("over", "detail"), [
    ({"gateway": "status"}, "gateway"),
    ({"gateway": "gw 1"}, "gateway"),
    ({"seq": -1}, "seq"),
    ({"seq": MAX_INT}, "seq"),
    ({"seq": True}, "seq"),
    ({"sent": MAX_EPOCH_MS}, "sent"),
    ({"clock": "ntp"}, "clock"),
    ({"readings": []}, "readings"),
    ({"readings": [{"sensor": "s", "kind": "soil_ph", "ts": T0, "value": 7, "unit": "pH"}]
      * (MAX_READINGS + 1)}, "readings"),
])
def test_a_bad_envelope_is_never_built(over: dict[str, Any], detail: str) -> None:
    for encoding in ("json", "compact"):
        with pytest.raises(EncodeError) as exc:
            encode_telemetry(**envelope(**over), encoding=encoding)
        assert exc.value.reason == "schema" and exc.value.index is None
        assert detail in str(exc.value)
        # Nor with the readings unchecked: the envelope is always checked.
        with pytest.raises(EncodeError):
            encode_telemetry(**envelope(**over), encoding=encoding, check_readings=False)


GOOD = {"sensor": "s1", "kind": "soil_ph", "ts": T0, "value": 6.5, "unit": "pH"}


@pytest.mark.parametrize(("bad", "detail"), [
    ({"value": float("nan")}, "not JSON compliant"),
    ({"value": float("inf")}, "not JSON compliant"),
    ({"value": "7"}, "value"),
    ({"value": True}, "value"),
    ({"sensor": "soil 1"}, "sensor"),
    ({"sensor": ""}, "sensor"),
    ({"animal": "a/b"}, "animal"),
    ({"kind": "k" * 65}, "kind"),
    ({"unit": "u" * 21}, "unit"),
    ({"ts": -1}, "ts"),
    ({"ts": MAX_EPOCH_MS}, "ts"),
    ({"ts": 1.5}, "ts"),
    ({"quality": "bad"}, "quality"),
])
def test_a_reading_the_decoder_would_reject_is_named(bad: dict[str, Any], detail: str) -> None:
    readings = [GOOD, {**GOOD, **bad}]
    for encoding in ("json", "compact"):
        with pytest.raises(EncodeError) as exc:
            encode_telemetry(**envelope(readings=readings), encoding=encoding)
        assert exc.value.index == 1, exc.value
        assert detail in str(exc.value)
    # The decoder agrees: it rejects that reading (or, for NaN, which JSON
    # has no word for, the whole message).
    with pytest.raises(ValidationError):
        Reading.model_validate_json(json.dumps({**GOOD, **bad}))
    assert issubclass(EncodeError, ContractError)


def test_a_key_the_contract_does_not_name_is_not_sent() -> None:
    """The edge ignores it ("How the contract grows"), but an edge from
    before that rule refuses the message: nothing this version does not
    name is sent."""
    for encoding in ("json", "compact"):
        with pytest.raises(EncodeError, match="reading 1: colour: not a field"):
            encode_telemetry(**envelope(readings=[GOOD, {**GOOD, "colour": "red"}]),
                             encoding=encoding)
    assert parse_telemetry(encode_json(**envelope(readings=[{**GOOD, "colour": "red"}]),
                                       check_readings=False)).rejected == []


def test_a_missing_key_is_named() -> None:
    with pytest.raises(EncodeError, match="reading 0: value: Field required"):
        encode_json(**envelope(readings=[{k: v for k, v in GOOD.items() if k != "value"}]))


def test_readings_the_edge_rejects_one_by_one_are_still_sent() -> None:
    """Unknown kinds and units and values out of range are the edge's to
    reject, reading by reading (a gateway flags them "error" and sends them)."""
    rs = [{**GOOD, "kind": "vibes"}, {**GOOD, "unit": "furlong"}, {**GOOD, "value": 99}, GOOD]
    p = parse_telemetry(encode_json(**envelope(readings=rs)))
    assert [r.reason for r in p.rejected] == ["unknown_kind", "unknown_unit", "out_of_range"]
    assert len(p.readings) == 1


def test_unchecked_readings_are_written_as_they_are() -> None:
    rs: list[Any] = [GOOD, {**GOOD, "value": "wet"}, "not a reading", {"sensor": "s"}]
    data = encode_json(**envelope(readings=rs), check_readings=False)
    p = parse_telemetry(data)
    assert [r.index for r in p.rejected] == [1, 2, 3] and len(p.readings) == 1
    assert json.loads(data)["readings"][1:] == rs[1:]


def test_too_large_is_refused() -> None:
    r = {**GOOD, "unit": "", "kind": "k" * 64, "sensor": "s" * 64, "animal": "a" * 64}
    with pytest.raises(EncodeError) as exc:
        encode_json(**envelope(readings=[r] * MAX_READINGS))
    assert exc.value.reason == "too_large"
    # The compact form of the same message is small: it is what goes out.
    enc = encode_telemetry(**envelope(readings=[r] * MAX_READINGS), encoding="compact")
    assert len(parse_telemetry(enc.payload).rejected) == MAX_READINGS  # kind "kkk..."


def test_a_string_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(EncodeError) as exc:
        encode_json(**envelope(readings=[{**GOOD, "unit": "\ud800"}]))
    assert exc.value.index == 0


@pytest.mark.parametrize("over", [
    {"uptime_s": -1.0}, {"cpu_temperature": float("nan")}, {"version": "v" * 41},
    {"dropped": -1}, {"outbox_depth": MAX_INT}, {"clock": "ntp"}, {"ts": -5},
    {"gateway": "alerts"}, {"reason": "rebooting"}, {"reason": "x" * 33},
    {"held_unsynced": -1}, {"held_unsynced": MAX_INT}, {"held_for_s": float("inf")},
])
def test_a_bad_status_is_never_built(over: dict[str, Any]) -> None:
    args: dict[str, Any] = {"gateway": "gw-1", "online": True, **over}
    with pytest.raises(EncodeError) as exc:
        encode_status(**args)
    assert exc.value.reason == "bad_status"


def test_bad_encoding_names() -> None:
    with pytest.raises(EncodeError, match="encoding"):
        encode_telemetry(**envelope(), encoding="xml")  # type: ignore[arg-type]
    with pytest.raises(EncodeError, match="compression"):
        encode_telemetry(**envelope(), encoding="compact", compression="lz4")


# -- the protocol document ---------------------------------------------------------


def _examples() -> list[str]:
    return re.findall(r"```json\n(.*?)```", PROTOCOL.read_text(), flags=re.S)


def test_the_protocol_examples_are_what_the_encoders_write() -> None:
    """Each JSON example of docs/protocol.md, encoded from its fields, is the
    same message with its keys in the same order (white space aside, and a
    reading's "quality": "ok", the default, which the encoders leave out)."""
    examples = [json.loads(x) for x in _examples()]
    telemetry = [x for x in examples if "readings" in x]
    status = [x for x in examples if "online" in x]
    assert len(telemetry) == 2 and len(status) == 1
    for doc in telemetry:
        fields = {k: v for k, v in doc.items() if k != "v"}
        data = encode_json(**fields)
        assert parse_telemetry(data).rejected == []
        want = {**doc, "readings": [{k: v for k, v in r.items() if (k, v) != ("quality", "ok")}
                                    for r in doc["readings"]]}
        assert data == json.dumps(want, ensure_ascii=False, separators=(",", ":")).encode()
        # The compact form decodes to the same readings.
        enc = encode_telemetry(**fields, encoding="compact")
        assert parse_telemetry(enc.payload).readings == parse_telemetry(data).readings
    for doc in status:
        data = encode_status(**{k: v for k, v in doc.items() if k != "v"})
        assert data == json.dumps(doc, separators=(",", ":")).encode()
    # The last will as the document spells it.
    assert encode_status(gateway="gw-0007", online=False) == (
        b'{"v":1,"gateway":"gw-0007","online":false}')


def test_everything_the_contract_raises_is_a_contract_error() -> None:
    from farmedge.contract import (
        check_topic_id,
        decode_compact,
        encode_compact,
        normalize,
        parse_gateway_topic,
    )

    calls: list[Any] = [
        lambda: parse_telemetry(b"{not json"),
        lambda: parse_status(b"{}"),
        lambda: decode_compact(b"\xfe\x09"),
        lambda: decode_compact(b"{}"),
        lambda: encode_compact(gateway="gw", seq=1, sent=1, clock="ntp", readings=[GOOD]),
        lambda: encode_compact(gateway="gw", seq=1, sent=1, clock="synced", readings=[GOOD],
                               compression="lz4"),
        lambda: check_topic_id("status"),
        lambda: parse_gateway_topic("farm/v2/a/b/c/telemetry"),
        lambda: normalize("soil_ph", 7, "furlong"),
        lambda: normalize("soil_ph", 99, "pH"),
        lambda: encode_json(**envelope(readings=[])),
        lambda: encode_status(gateway="gw", online=True, dropped=-1),
    ]
    for call in calls:
        with pytest.raises(ContractError):
            call()
