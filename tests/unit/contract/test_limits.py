"""The contract's limits: decoders bounded while they decode, numbers and
timestamps InfluxDB can store, units matched exactly, reserved topic ids.
(Pure unit tests; tests/chaos/ shows the same against the real servers.)"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import msgpack
import pytest

from farmedge.contract import (
    COMPACT,
    MAX_EPOCH_MS,
    MAX_PAYLOAD_BYTES,
    InvalidId,
    MessageRejected,
    TopicError,
    check_topic_id,
    encode_compact,
    is_valid_id,
    is_valid_topic_id,
    parse_gateway_topic,
    parse_status,
    parse_telemetry,
    reserved_id_reason,
)
from farmedge.contract.compact import MAGIC, MAX_BODY_BYTES
from tests.hostile import deflate_bomb, nested_arrays, zstd_bomb

ROOT = Path(__file__).resolve().parents[3]
T0 = 1763800000000
GiB = 1024**3


def telemetry(readings: list[dict[str, object]], **over: object) -> bytes:
    doc: dict[str, object] = {"v": 1, "gateway": "gw-1", "seq": 1, "sent": T0,
                              "clock": "synced", "readings": readings}
    doc.update(over)
    return json.dumps(doc).encode()


def reading(**over: object) -> dict[str, object]:
    r: dict[str, object] = {"sensor": "soil-1", "kind": "soil_moisture", "ts": T0,
                            "value": 23.4, "unit": "%"}
    r.update(over)
    return r


# -- decompression bombs ----------------------------------------------------


def test_zstd_bombs_are_refused_while_decompressing_in_little_time_and_memory() -> None:
    """A 32 KiB zstd frame of 1 GiB (with or without the dictionary, the size
    declared, left out or lied about) is refused as ``too_large`` or
    ``bad_encoding`` within milliseconds, and the process never holds more
    than a few MB for it. Run in a child process to measure its peak RSS."""
    script = textwrap.dedent("""
        import json, resource, sys, time
        from farmedge.contract import MessageRejected, parse_telemetry
        from tests.hostile import zstd_bomb
        GiB = 1024 ** 3
        cases = {
            "declared": zstd_bomb(GiB),
            "undeclared": zstd_bomb(GiB, declare=False),
            "declared, dictionary": zstd_bomb(GiB, dictionary=True),
            "undeclared, dictionary": zstd_bomb(GiB, declare=False, dictionary=True),
            "declares 1000 bytes": zstd_bomb(GiB, declare=1000),
            "7.9 GiB, undeclared": zstd_bomb(7_900 * 1024**2, declare=False),
        }
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = {}
        for name, payload in cases.items():
            t = time.monotonic()
            try:
                parse_telemetry(payload)
                out[name] = ["accepted", 0, len(payload)]
            except MessageRejected as exc:
                out[name] = [exc.reason, time.monotonic() - t, len(payload)]
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"cases": out, "rss_growth_kb": rss - base}))
    """)
    p = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(p.stdout)
    for name, (reason, elapsed, size) in res["cases"].items():
        assert size <= MAX_PAYLOAD_BYTES, name
        expected = "bad_encoding" if name == "declares 1000 bytes" else "too_large"
        assert reason == expected, (name, reason)
        assert elapsed < 1.0, (name, elapsed)
    # A 1 GiB bomb took the process to 1 GB before; now a few MB at most.
    assert res["rss_growth_kb"] < 64 * 1024, res


def test_a_deflate_bomb_is_too_large() -> None:
    bomb = deflate_bomb(64 * 1024 * 1024)
    assert len(bomb) < MAX_PAYLOAD_BYTES
    with pytest.raises(MessageRejected) as err:
        parse_telemetry(bomb)
    assert err.value.reason == "too_large"
    assert "decompresses to more than" in err.value.detail


def test_bodies_of_exactly_the_limit_decode_and_one_byte_more_is_too_large() -> None:
    # Zero bytes are not MessagePack (extra data), but they pass the size rule.
    for declare in (True, False):
        with pytest.raises(MessageRejected) as err:
            parse_telemetry(zstd_bomb(MAX_BODY_BYTES, declare=declare))
        assert err.value.reason == "bad_encoding"
        with pytest.raises(MessageRejected) as err:
            parse_telemetry(zstd_bomb(MAX_BODY_BYTES + 1, declare=declare))
        assert err.value.reason == "too_large"


def test_nested_arrays_do_not_make_a_million_lists() -> None:
    """A 2 KiB payload whose body (under 1 MiB) is a million nested
    MessagePack arrays: refused before Python builds them (it took 70 MB and
    140 ms)."""
    bomb = nested_arrays()
    assert len(bomb) < 10_000
    tracemalloc.start()
    try:
        with pytest.raises(MessageRejected) as err:
            parse_telemetry(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.reason == "bad_encoding"
    assert peak < 8 * 1024 * 1024, peak


def test_a_compact_message_of_more_than_1000_readings_is_refused_while_unpacking() -> None:
    rs = [reading(ts=T0 + i) for i in range(1001)]
    payload = encode_compact(gateway="gw-1", seq=1, sent=T0, clock="synced", readings=rs)
    with pytest.raises(MessageRejected) as err:
        parse_telemetry(payload, content_type=COMPACT)
    assert err.value.reason == "bad_encoding"
    assert "at most 1000 readings" in err.value.detail
    ok = encode_compact(gateway="gw-1", seq=1, sent=T0, clock="synced", readings=rs[:1000])
    assert len(parse_telemetry(ok).readings) == 1000


def test_deep_json_is_refused_quickly() -> None:
    depth = (MAX_PAYLOAD_BYTES - 200) // 2
    payload = telemetry([]).replace(b"[]", b"[" + b"[" * depth + b"]" * depth + b"]")
    assert len(payload) <= MAX_PAYLOAD_BYTES
    t = time.monotonic()
    with pytest.raises(MessageRejected) as err:
        parse_telemetry(payload)
    assert err.value.reason == "bad_json"
    assert time.monotonic() - t < 1.0
    with pytest.raises(MessageRejected) as err:
        parse_status(b'{"v":1,"gateway":"gw-1","online":true,"version":'
                     + b"[" * depth + b"]" * depth + b"}")
    assert err.value.reason == "bad_status"


def test_compact_values_that_are_not_finite_are_rejected_per_reading() -> None:
    doc = [1, "gw-1", 1, T0, 0, [["s1", "soil_ph", "pH"]], [0, 0, 0], [T0, 1, 1], [None],
           [float("nan"), float("inf"), 7.0], None]
    payload = bytes([MAGIC, 0]) + msgpack.packb(doc)
    p = parse_telemetry(payload)
    assert [r.value for r in p.readings] == [7.0]
    assert [r.reason for r in p.rejected] == ["schema", "schema"]


# -- status: numbers InfluxDB can store -----------------------------------

STATUS = '{"v":1,"gateway":"gw-2","online":true,%s}'


@pytest.mark.parametrize("field", [
    '"cpu_temperature":1e999',
    '"cpu_temperature":-1e999',
    '"cpu_temperature":NaN',
    '"cpu_temperature":Infinity',
    '"uptime_s":1e400',
    '"outbox_oldest_age_s":Infinity',
    '"disk_free_mb":NaN',
    '"dropped":9223372036854775808',
    '"outbox_depth":100000000000000000000000000000',
    '"dropped":-1',
    '"ts":9223372036855',
    '"version":"' + "x" * 41 + '"',
    '"uptime_s":"inf"',
])
def test_status_numbers_influxdb_cannot_store_are_bad_status(field: str) -> None:
    with pytest.raises(MessageRejected) as err:
        parse_status((STATUS % field).encode())
    assert err.value.reason == "bad_status"


@pytest.mark.parametrize("doc", [
    '{"v":1,"gateway":"gw-2","online":"yes"}',
    '{"v":1,"gateway":"gw-2","online":1}',
    '{"v":1,"gateway":"gw-2","online":true,"dropped":true}',
    '{"v":1,"gateway":"gw-2","online":true,"outbox_depth":"7"}',
    '{"v":1,"gateway":"gw-2","online":true,"outbox_depth":5.0}',
    '{"v":1,"gateway":"gw-2","online":true,"cpu_temperature":"7"}',
    '{"v":1,"gateway":"gw-2","online":true,"uptime_s":true}',
    '{"v":1,"gateway":"gw-2","online":true,"outbox_full":"false"}',
])
def test_status_fields_of_the_wrong_json_type_are_bad_status_not_guessed(doc: str) -> None:
    """As for readings, the edge does not guess: a string or boolean where a
    number belongs (or the reverse) is refused, not converted."""
    with pytest.raises(MessageRejected) as err:
        parse_status(doc.encode())
    assert err.value.reason == "bad_status"


def test_status_decimals_may_be_written_as_integers() -> None:
    st = parse_status(b'{"v":1,"gateway":"gw-2","online":true,"uptime_s":100,'
                      b'"disk_free_mb":0,"cpu_temperature":-3}')
    assert (st.uptime_s, st.disk_free_mb, st.cpu_temperature) == (100.0, 0.0, -3.0)


@pytest.mark.parametrize("field", [
    '"dropped":9223372036854775807',
    '"outbox_depth":0',
    '"cpu_temperature":-0.0',
    '"cpu_temperature":5e-324',
    '"disk_free_mb":1.7976931348623157e308',
    '"ts":9223372036854',
    '"version":"' + "版" * 40 + '"',
])
def test_status_numbers_at_the_limits_are_accepted(field: str) -> None:
    st = parse_status((STATUS % field).encode())
    assert st.online is True


def test_a_status_larger_than_the_payload_limit_is_too_large() -> None:
    payload = (STATUS % '"version":"1"').encode() + b" " * MAX_PAYLOAD_BYTES
    with pytest.raises(MessageRejected) as err:
        parse_status(payload)
    assert err.value.reason == "too_large"


def test_the_status_example_of_the_protocol_document_parses() -> None:
    st = parse_status(b'{"v": 1, "gateway": "gw-0007", "online": true, "ts": 1763800000123, '
                      b'"uptime_s": 86400, "version": "0.1.0", "outbox_depth": 0, '
                      b'"outbox_oldest_age_s": 0, "dropped": 0, "clock": "synced", '
                      b'"cpu_temperature": 51.2, "disk_free_mb": 900}')
    assert (st.gateway, st.cpu_temperature, st.dropped) == ("gw-0007", 51.2, 0)


# -- timestamps -------------------------------------------------------------


def test_the_latest_timestamp_is_the_last_millisecond_influxdb_stores() -> None:
    assert MAX_EPOCH_MS - 1 == 9_223_372_036_854  # 2262-04-11T23:47:16.854Z
    assert (MAX_EPOCH_MS - 1) * 1_000_000 <= 2**63 - 2 < MAX_EPOCH_MS * 1_000_000
    p = parse_telemetry(telemetry([reading(ts=MAX_EPOCH_MS - 1), reading(ts=MAX_EPOCH_MS)]))
    assert [r.ts_ms for r in p.readings] == [MAX_EPOCH_MS - 1]
    assert [r.reason for r in p.rejected] == ["schema"]
    with pytest.raises(MessageRejected) as err:
        parse_telemetry(telemetry([reading()], sent=MAX_EPOCH_MS))
    assert err.value.reason == "schema"


# -- units ------------------------------------------------------------------


@pytest.mark.parametrize("unit", [" %", "% ", "%\n", "degC ", " m3/m3", "\t%"])
def test_units_are_matched_exactly(unit: str) -> None:
    kind = "soil_temperature" if unit.strip() == "degC" else "soil_moisture"
    value = 0.2 if "m3" in unit else 20
    p = parse_telemetry(telemetry([reading(kind=kind, unit=unit, value=value)]))
    assert p.readings == []
    assert [r.reason for r in p.rejected] == ["unknown_unit"]


# -- reserved topic ids -----------------------------------------------------


@pytest.mark.parametrize("word", ["alerts", "telemetry", "status"])
def test_ids_that_are_topic_levels_are_refused_as_county_farm_or_gateway(word: str) -> None:
    assert reserved_id_reason(word) is not None
    assert not is_valid_topic_id(word)
    assert is_valid_id(word)  # still a fine sensor or animal id
    with pytest.raises(InvalidId, match="topic level"):
        check_topic_id(word, what="gateway id")
    for topic in (f"farm/v1/c1/f1/{word}/telemetry", f"farm/v1/c1/{word}/gw-1/status",
                  f"farm/v1/{word}/f1/gw-1/telemetry"):
        with pytest.raises(TopicError, match="topic level"):
            parse_gateway_topic(topic)
    with pytest.raises(MessageRejected) as err:
        parse_telemetry(telemetry([reading()], gateway=word))
    assert err.value.reason == "schema"
    with pytest.raises(MessageRejected):
        parse_status(f'{{"v":1,"gateway":"{word}","online":false}}'.encode())


@pytest.mark.parametrize("value", ["$SYS", "+", "#", "gw+1", "a/b", "$share"])
def test_topic_syntax_is_named_in_the_reason(value: str) -> None:
    reason = reserved_id_reason(value)
    assert reason is not None and repr(value)[:10] in reason
    with pytest.raises(InvalidId):
        check_topic_id(value)


@pytest.mark.parametrize("value", ["gw-1", "Alerts", "alerts-2", "status.1", "绥化市"])
def test_ordinary_ids_are_not_reserved(value: str) -> None:
    assert reserved_id_reason(value) is None
    assert check_topic_id(value) == value
    assert parse_gateway_topic(f"farm/v1/c1/f1/{value}/telemetry").gateway == value


@pytest.mark.parametrize("where", ["county", "farm", "gateway"])
def test_the_registry_and_the_gateway_refuse_reserved_topic_ids(where: str) -> None:
    from pydantic import ValidationError

    from farmedge.gateway.settings import GatewaySettings
    from farmedge.registry import Registry

    ids = {"county": "c1", "farm": "f1", "gateway": "gw-1"}
    ids[where] = "alerts"
    with pytest.raises(ValidationError, match="topic level"):
        Registry.model_validate({"farms": [{"county": ids["county"], "farm": ids["farm"],
                                            "gateways": {ids["gateway"]: {}}}]})
    with pytest.raises(ValidationError, match="topic level"):
        GatewaySettings(**ids)


def test_dead_letter_excerpts_escape_characters_as_python_does() -> None:
    from farmedge.contract import excerpt

    assert excerpt("a\u2028b") == "a\\u2028b"  # was "a\\x28b"
    assert excerpt(b"x\xe2\x80\xa9\x00y") == "x\\u2029\\x00y"
    assert excerpt("\U000e0001") == "\\U000e0001"
    assert excerpt("绥化 ok") == "绥化 ok"
    assert len(excerpt("\u2028" * 1000)) == 200
