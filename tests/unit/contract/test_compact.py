"""The compact encoding: lossless round trip, content type and magic byte,
malformed payloads rejected with a reason, and its size target."""

from __future__ import annotations

import contextlib
import json
import math
import random
import zlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farmedge.contract import (
    COMPACT,
    KINDS,
    MessageRejected,
    decode_compact,
    encode_compact,
    parse_telemetry,
)
from farmedge.contract.compact import COMPRESSIONS, MAGIC, SHARED_DICTIONARY

T0 = 1763800000000


def readings(n: int = 60, seed: int = 1) -> list[dict[str, object]]:
    rnd = random.Random(seed)
    out: list[dict[str, object]] = []
    kinds = [("soil_moisture", "%", 25.0, 1), ("soil_temperature", "degC", 12.0, 1),
             ("soil_ec", "uS/cm", 400, 0)]
    t = T0
    while len(out) < n:
        for s in range(10):
            for kind, unit, base, nd in kinds:
                v: float = round(base + rnd.gauss(0, 1), nd) if nd else int(base + rnd.gauss(0, 20))
                out.append({"sensor": f"soil-{s}", "kind": kind, "ts": t, "value": v,
                            "unit": unit, "quality": "ok"})
        t += 60_000
    return out[:n]


def encode(rs: list[dict[str, object]], **kw: object) -> bytes:
    args: dict[str, object] = {"gateway": "gw-0007", "seq": 42, "sent": T0 + 5000,
                               "clock": "synced", "readings": rs}
    args.update(kw)
    return encode_compact(**args)  # type: ignore[arg-type]


def key(r: dict[str, object]) -> tuple[object, ...]:
    return (r["sensor"], r["kind"], r["ts"], float(r["value"]),  # type: ignore[arg-type]
            r["unit"], r.get("quality", "ok"), r.get("animal"))


@pytest.mark.parametrize("compression", sorted(COMPRESSIONS))
def test_round_trip_through_parse_telemetry(compression: str) -> None:
    rs = readings()
    rs[5] = {**rs[5], "quality": "suspect"}
    rs.append({"sensor": "rfid-gate", "kind": "animal_presence", "ts": T0 + 1, "value": 3,
               "unit": "count", "animal": "982000123456789"})
    data = encode(rs, compression=compression)
    assert data[0] == MAGIC and data[1] == COMPRESSIONS[compression]
    for ct in (COMPACT, None, COMPACT + "; charset=binary"):
        p = parse_telemetry(data, content_type=ct)
        assert p.rejected == []
        assert (p.envelope.gateway, p.envelope.seq, p.envelope.sent) == ("gw-0007", 42, T0 + 5000)
        got = [(r.sensor, r.kind.name, r.ts_ms, r.value, r.kind.unit, r.quality.value, r.animal)
               for r in p.readings]
        assert got == [key(r) for r in rs]


def test_unsynced_clock_and_per_reading_rejects_survive() -> None:
    rs = readings(3)
    rs[1] = {**rs[1], "kind": "soil_colour"}
    p = parse_telemetry(encode(rs, clock="unsynced"))
    assert p.envelope.clock == "unsynced"
    assert [r.index for r in p.rejected] == [1] and p.rejected[0].reason == "unknown_kind"
    assert len(p.readings) == 2


def test_every_contract_kind_and_unit_is_in_the_shared_dictionary() -> None:
    for k in KINDS.values():
        assert k.name.encode() in SHARED_DICTIONARY and k.unit.encode() in SHARED_DICTIONARY


def test_sixty_readings_stay_well_under_twenty_bytes_each() -> None:
    rs = readings(60)
    size = len(encode(rs))
    one_json = sum(len(json.dumps({"v": 1, "gateway": "gw-0007", "seq": 1, "sent": T0,
                                   "clock": "synced", "readings": [r]})) for r in rs)
    assert size / 60 < 12, size
    assert one_json / 60 > 150


finite = st.floats(allow_nan=False, allow_infinity=False)
ident = st.from_regex(r"[a-z0-9][a-z0-9_.\-]{0,20}", fullmatch=True)
reading_st = st.fixed_dictionaries(
    {"sensor": ident, "kind": st.sampled_from(sorted(KINDS)), "ts": st.integers(0, 2**42),
     "value": st.one_of(finite, st.integers(-(2**63) + 1, 2**63 - 1)),
     "unit": st.text(max_size=8), "quality": st.sampled_from(["ok", "suspect", "error"])},
    optional={"animal": ident},
)


@settings(max_examples=150, deadline=None)
@given(st.lists(reading_st, min_size=1, max_size=80), st.sampled_from(sorted(COMPRESSIONS)),
       st.sampled_from(["synced", "unsynced"]))
def test_decode_inverts_encode(rs: list[dict[str, object]], compression: str, clock: str) -> None:
    doc = decode_compact(encode(rs, compression=compression, clock=clock))
    assert doc["clock"] == clock and doc["gateway"] == "gw-0007"
    assert len(doc["readings"]) == len(rs)
    for got, want in zip(doc["readings"], rs, strict=True):
        assert got["ts"] == want["ts"] and got["sensor"] == want["sensor"]
        assert got["unit"] == want["unit"] and got.get("animal") == want.get("animal")
        assert got.get("quality", "ok") == want["quality"]
        v, w = got["value"], want["value"]
        if isinstance(w, int) and abs(w) > 2**53:
            assert math.isclose(v, w, rel_tol=1e-15)
        else:
            assert v == w, (v, w)


def body(doc: object, code: int = 0) -> bytes:
    raw = msgpack.packb(doc, use_bin_type=True)
    if code == 2:
        c = zlib.compressobj(9, zlib.DEFLATED, -15, zdict=SHARED_DICTIONARY)
        raw = c.compress(raw) + c.flush()
    return bytes([MAGIC, code]) + raw


GOOD = [1, "gw-1", 1, T0, 0, [["s1", "soil_moisture", "%"]], [0], [T0], [-1], [234], None]


def with_(i: int, v: object) -> list[object]:
    d: list[object] = list(GOOD)
    d[i] = v
    return d


def test_the_hand_built_good_body_parses() -> None:
    [r] = parse_telemetry(body(GOOD), content_type=COMPACT).readings
    assert (r.sensor, r.ts_ms, r.value) == ("s1", T0, 23.4)


@pytest.mark.parametrize(("raw", "reason"), [
    (bytes([MAGIC]), "magic"),
    (bytes([MAGIC, 9]) + b"xx", "compression code 9"),
    (bytes([MAGIC, 1]) + b"not zstd", "zstd data is corrupt"),
    (bytes([MAGIC, 2]) + b"\xff\xff\xff", "deflate"),
    (body(GOOD, 2)[:-3], "deflate data is truncated"),
    (body(GOOD) + b"\x00", "MessagePack"),
    (body([1, 2, 3]), "body has 3 entries"),
    (body(with_(0, 2)), "body version"),
    (body(with_(4, 7)), "clock must be"),
    (body(with_(6, [0, 0])), "ts has 1 entries"),
    (body(with_(6, [5])), "names no series"),
    (body(with_(9, [1.5])), "vals[0] must be an integer"),
    (body(with_(8, [None])), "must be a float"),
    (body(with_(8, [400])), "exps[0] is outside"),
    (body(with_(10, [7])), "quality[0]"),
    (body(with_(5, [["s1", 3, "%"]])), "series[0]"),
    (body({"v": 1}), "MessagePack"),
])
def test_malformed_compact_payloads_are_rejected_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(MessageRejected) as err:
        parse_telemetry(raw, content_type=COMPACT)
    assert err.value.reason == "bad_encoding"
    assert reason in err.value.detail


def test_a_decompression_bomb_is_refused() -> None:
    c = zlib.compressobj(9, zlib.DEFLATED, -15, zdict=SHARED_DICTIONARY)
    bomb = bytes([MAGIC, 2]) + c.compress(b"\x00" * (4 * 1024 * 1024)) + c.flush()
    assert len(bomb) < 10_000
    with pytest.raises(MessageRejected, match=r"too large|truncated"):
        parse_telemetry(bomb, content_type=COMPACT)


def test_envelope_errors_are_schema_rejects() -> None:
    with pytest.raises(MessageRejected) as err:
        parse_telemetry(body(with_(1, "bad id!")), content_type=COMPACT)
    assert err.value.reason == "schema"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_compact_bytes_never_crash(data: bytes) -> None:
    for code in range(4):
        with contextlib.suppress(MessageRejected):
            parse_telemetry(bytes([MAGIC, code]) + data, content_type=COMPACT)


def test_the_example_of_the_protocol_document() -> None:
    doc = [1, "gw-0007", 18231, 1763800000123, 0,
           [["soil-1", "soil_moisture", "%"],
            ["rfid-gate", "animal_presence", "count", "982000123456789"]],
           [0, 0, 1], [1763799940000, 60000, -30000], [-1, 0], [234, -3, 3], None]
    p = parse_telemetry(body(doc, 2), content_type=COMPACT)
    assert [(r.sensor, r.ts_ms, r.value, r.animal) for r in p.readings] == [
        ("soil-1", 1763799940000, 23.4, None), ("soil-1", 1763800000000, 23.1, None),
        ("rfid-gate", 1763799970000, 3.0, "982000123456789")]


@pytest.mark.parametrize("values", [
    [5.960464477539063e-08, 1.0],          # one shared exponent overflows the larger mantissa
    [1e-300, 1e300],
    [9.0e18, -9.0e18],                     # the delta overflows though each value fits
])
def test_a_series_whose_values_cannot_share_an_exponent_goes_as_floats(
        values: list[float]) -> None:
    rs = [{"sensor": "s", "kind": "soil_ec", "ts": 1_780_000_000_000 + i, "value": v,
           "unit": "uS/cm"} for i, v in enumerate(values)]
    payload = encode_compact(gateway="g", seq=1, sent=1_780_000_001_000, clock="synced",
                             readings=rs)
    parsed = parse_telemetry(payload, content_type=None)
    assert [r.value for r in parsed.readings] + [x.reason for x in parsed.rejected] \
        == [v for v in values if 0 <= v <= 50000] + ["out_of_range"] * \
        sum(1 for v in values if not 0 <= v <= 50000)
