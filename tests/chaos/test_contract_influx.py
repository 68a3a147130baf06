"""Everything the contract accepts, InfluxDB accepts.

Hypothesis generates payloads for every topic (telemetry as JSON, telemetry
in the compact encoding, status), mostly well formed but with hostile
values anywhere: NaN, infinities, 1e999, integers past int64, -0,
subnormals, huge and odd strings (U+2028, NUL, quotes, backslashes, lone
surrogates, invalid UTF-8), deep nesting. Each goes through the edge's real
conversion (``Validator.validate``, which validates with the contract and
builds the line protocol) and the lines are written to the real InfluxDB
1.6.7: none may be refused (400), readings, statuses and dead letters
alike, and handling never raises.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farmedge.contract import COMPACT, KINDS, MAX_EPOCH_MS, encode_json
from farmedge.contract.compact import MAGIC, SHARED_DICTIONARY
from farmedge.edge.settings import IngestSection
from farmedge.edge.validate import Validator
from farmedge.transport.mqtt import Inbound
from farmedge_dev.devservers import InfluxServer

pytestmark = [pytest.mark.servers, pytest.mark.chaos]

NOW = int(time.time() * 1000)
EXAMPLES = 120

# -- hostile atoms ----------------------------------------------------------


class Raw:
    """A JSON token written as is (json.dumps cannot write 1e999 or -0)."""

    def __init__(self, token: str) -> None:
        self.token = token


RAW_NUMBERS = [
    "1e999", "-1e999", "NaN", "Infinity", "-Infinity", "1e-400", "-0", "-0.0", "5e-324",
    "2.2250738585072014e-308", "1.7976931348623157e308", "1.7976931348623159e308",
    "9223372036854775807", "9223372036854775808", "-9223372036854775808",
    "-9223372036854775809", "18446744073709551616", "1" + "0" * 30, "1" + "0" * 5000,
    "0.1e1", "1E2", "00", "1.", ".5", "+1", "0x10",
]

hostile_floats = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True)
hostile_ints = st.one_of(st.integers(), st.integers(-(2**70), 2**70),
                         st.sampled_from([2**63 - 1, 2**63, -(2**63), 2**64, -1, 0]))
raw_numbers = st.sampled_from(RAW_NUMBERS).map(Raw)
#: Numbers InfluxDB cannot store, however a JSON parser reads them.
unstorable = st.one_of(
    st.sampled_from(["1e999", "-1e999", "NaN", "Infinity", "-Infinity", "1e400"]).map(Raw),
    st.sampled_from([2**63, 2**64, 10**30, -(2**63) - 1]),
    st.sampled_from([float("nan"), float("inf"), float("-inf")]))
numbers = st.one_of(hostile_floats, hostile_ints, raw_numbers, unstorable)

odd_chars = st.sampled_from(["\u2028", "\u2029", "\x00", "\x1f", "\x7f", '"', "\\", "\n", "\r",
                             "\t", " ", ",", "=", "\ufeff", "\u200b", "\ud800", "\udfff",
                             "𝔘", "绥", "é", "\U0010ffff"])
texts = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=()), max_size=30),
    st.lists(odd_chars, max_size=10).map("".join),
    st.sampled_from([40, 41, 64, 65, 1024, 100_000, 300_000]).map(lambda n: "x" * n),
)
ids = st.one_of(
    st.sampled_from(["gw-1", "soil-1", "绥化市.北林区", "a" * 64, "a" * 65, "", ".", "..",
                     "alerts", "status", "telemetry", "$SYS", "+", "#", "a/b", "a b", "a,b",
                     "a=b", "a\\", "cow\u2028", "ｇｗ", "x\u0301"]),
    st.from_regex(r"\A[\w.\-]{1,64}\Z"),
    texts,
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
trees = st.recursive(scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(texts, kids, max_size=4)), max_leaves=12)
deep = st.integers(1, 5000).map(lambda d: Raw("[" * d + "1" + "]" * d))
anything = st.one_of(scalars, trees, deep)


def maybe(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any] = anything
          ) -> st.SearchStrategy[Any]:
    """Mostly ``good`` (which holds the odd values the contract accepts),
    one time in sixteen anything: a message is usually accepted, or refused
    for one reason, so that both paths are taken often."""
    return st.integers(0, 15).flatmap(lambda i: bad if i == 5 else good)


def dump(obj: Any, ensure_ascii: bool) -> bytes:
    raws: list[str] = []

    def enc(o: Any) -> Any:
        if isinstance(o, Raw):
            raws.append(o.token)
            return f"\x01RAW{len(raws) - 1}\x01"
        if isinstance(o, dict):
            return {str(k): enc(v) for k, v in o.items()}
        if isinstance(o, list):
            return [enc(v) for v in o]
        return o

    text = json.dumps(enc(obj), ensure_ascii=ensure_ascii, allow_nan=True)
    for i, token in enumerate(raws):
        text = text.replace(f'"\\u0001RAW{i}\\u0001"', token)
        text = text.replace(f'"\x01RAW{i}\x01"', token)
    # Lone surrogates become invalid UTF-8, as a broken firmware would send.
    return text.encode("utf-8", "surrogatepass")


# -- payload strategies -------------------------------------------------------

PAIRS = [(k.name, k.unit) for k in KINDS.values()] + [
    (k.name, alias) for k in KINDS.values() for alias in k.aliases]
GW = "gw-1"

timestamps = st.one_of(st.integers(NOW - 10**9, NOW + 10**6),
                       st.sampled_from([0, 1, MAX_EPOCH_MS - 1, MAX_EPOCH_MS, 10**13]))
good_ids = st.one_of(st.sampled_from(["soil-1", "t-2", "绥化市.北林区", "a" * 64, "ｇｗ", "x_1.2"]),
                     st.from_regex(r"\A[\w.\-]{1,64}\Z"))


def values_of(kind: str) -> st.SearchStrategy[Any]:
    """Values in the kind's canonical range, its bounds, -0 and subnormals."""
    k = KINDS[kind]
    odd = [k.low, k.high, (k.low + k.high) / 2]
    if k.low <= 0 <= k.high:
        odd += [0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308]
    return st.one_of(st.floats(k.low, k.high), st.sampled_from(odd),
                     st.integers(int(k.low), int(k.high)))


@st.composite
def json_reading(draw: st.DrawFn) -> dict[str, Any]:
    kind, unit = draw(st.sampled_from(PAIRS))
    value = st.just(draw(values_of(kind))) if unit == KINDS[kind].unit else values_of(kind)
    r: dict[str, Any] = {
        "sensor": draw(maybe(good_ids, ids)),
        "kind": draw(maybe(st.just(kind), texts)),
        "ts": draw(maybe(timestamps, numbers)),
        "value": draw(maybe(value, numbers)),
        "unit": draw(maybe(st.just(unit), texts)),
    }
    if draw(st.booleans()):
        r["quality"] = draw(maybe(st.sampled_from(["ok", "suspect", "error"]), texts))
    if draw(st.booleans()):
        r["animal"] = draw(maybe(good_ids, ids))
    if draw(st.integers(0, 15)) == 5:
        r[draw(texts)] = draw(anything)
    return r


@st.composite
def json_telemetry(draw: st.DrawFn) -> tuple[bytes, str]:
    gw = draw(maybe(good_ids, ids))
    doc: dict[str, Any] = {
        "v": draw(maybe(st.just(1), numbers)),
        "gateway": draw(maybe(st.just(gw), ids)),
        "seq": draw(maybe(st.integers(0, 2**63 - 1), numbers)),
        "sent": draw(maybe(timestamps, numbers)),
        "clock": draw(maybe(st.sampled_from(["synced", "unsynced"]), texts)),
        "readings": draw(maybe(st.lists(maybe(json_reading()), min_size=1, max_size=6),
                               st.lists(anything, max_size=3))),
    }
    if draw(st.integers(0, 15)) == 5:
        del doc[draw(st.sampled_from(sorted(doc)))]
    return dump(doc, draw(st.booleans())), gw


def _compress(code: int, body: bytes) -> bytes:
    if code == 0:
        return body
    if code == 2:
        c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY,
                             zdict=SHARED_DICTIONARY)
        return c.compress(body) + c.flush()
    import zstandard

    d = (zstandard.ZstdCompressionDict(SHARED_DICTIONARY,
                                       dict_type=zstandard.DICT_TYPE_RAWCONTENT)
         if code == 3 else None)
    return zstandard.ZstdCompressor(level=3, dict_data=d).compress(body)


mp_ints = st.one_of(st.integers(-(2**63), 2**64 - 1),
                    st.sampled_from([2**63 - 1, 2**63, -(2**63), 2**64 - 1]))
mp_texts = st.text(max_size=30).filter(lambda s: len(s.encode()) <= 1024)
mp_scalars = st.one_of(st.none(), st.booleans(), mp_ints, hostile_floats, mp_texts)
mp_any = st.recursive(mp_scalars, lambda kids: st.lists(kids, max_size=4), max_leaves=8)


def mp_maybe(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.integers(0, 31).flatmap(lambda i: mp_any if i == 5 else good)


@st.composite
def compact_telemetry(draw: st.DrawFn) -> tuple[bytes, str]:
    import msgpack

    n_series = draw(st.integers(1, 4))
    series = []
    for _ in range(n_series):
        kind, unit = draw(st.sampled_from(PAIRS))
        s: list[Any] = [draw(mp_maybe(good_ids)), draw(mp_maybe(st.just(kind))),
                        draw(mp_maybe(st.just(unit)))]
        if draw(st.booleans()):
            s.append(draw(mp_maybe(good_ids)))
        series.append(s)
    n = draw(st.integers(1, 6))
    idx = [draw(mp_maybe(st.integers(0, n_series - 1))) for _ in range(n)]
    first = draw(timestamps)
    ts = [first] + [draw(mp_maybe(st.integers(-(10**6), 10**6))) for _ in range(n - 1)]
    exps = [draw(mp_maybe(st.one_of(st.none(), st.integers(-30, 30)))) for _ in range(n_series)]
    vals: list[Any] = []
    for k in range(n):
        i = idx[k] if isinstance(idx[k], int) and 0 <= idx[k] < n_series else 0
        kind = series[i][1] if isinstance(series[i][1], str) and series[i][1] in KINDS \
            else "soil_ph"
        if exps[i] is None:
            good = st.one_of(values_of(kind).map(float), hostile_floats)
            vals.append(draw(mp_maybe(good)))
        else:
            vals.append(draw(mp_maybe(st.one_of(st.integers(-100, 100), mp_ints))))
    qual = draw(st.one_of(st.none(), st.lists(mp_maybe(st.integers(0, 2)), min_size=n,
                                              max_size=n)))
    gw = draw(good_ids)
    body = [draw(mp_maybe(st.just(1))), draw(mp_maybe(st.just(gw))),
            draw(mp_maybe(st.integers(0, 2**63 - 1))), draw(mp_maybe(timestamps)),
            draw(mp_maybe(st.integers(0, 1))), series, idx, ts, exps, vals, qual]
    raw = msgpack.packb(body, use_bin_type=True)
    code = draw(st.integers(0, 3))
    return bytes([MAGIC, code]) + _compress(code, raw), gw


@st.composite
def status(draw: st.DrawFn) -> tuple[bytes, str]:
    gw = draw(maybe(good_ids, ids))
    doc: dict[str, Any] = {
        "v": draw(maybe(st.just(1), numbers)),
        "gateway": draw(maybe(st.just(gw), ids)),
        "online": draw(maybe(st.booleans())),
    }
    nonneg = st.one_of(st.floats(0, 1e12), st.integers(0, 2**63 - 1), st.just(5e-324))
    optional: dict[str, st.SearchStrategy[Any]] = {
        "ts": timestamps,
        "uptime_s": nonneg,
        "version": st.one_of(st.sampled_from(["0.1.0", "v" * 40, "版本1.2"]),
                             st.text(st.characters(codec=None, exclude_categories=()),
                                     max_size=40),
                             st.lists(odd_chars, max_size=40).map("".join)),
        "outbox_depth": st.integers(0, 2**63 - 1),
        "outbox_oldest_age_s": nonneg,
        "dropped": st.integers(0, 2**63 - 1),
        "clock": st.sampled_from(["synced", "unsynced"]),
        "cpu_temperature": st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                                     st.sampled_from([-0.0, 5e-324, -1.7976931348623157e308])),
        "disk_free_mb": nonneg,
        "outbox_full": st.booleans(),
    }
    for name, good in optional.items():
        if draw(st.booleans()):
            # Numbers are what a status holds: one InfluxDB cannot store
            # one time in four, any hostile number or anything else one in
            # eight each.
            doc[name] = draw(st.integers(0, 7).flatmap(
                lambda i, good=good: unstorable if i in (2, 5) else numbers if i == 3
                else anything if i == 6 else good))
    return dump(doc, draw(st.booleans())), gw


# -- the property -----------------------------------------------------------


def _write(influxdb: InfluxServer, db: str, lines: list[str]) -> tuple[int, str]:
    """POST the lines as the edge does (precision ms); retries InfluxDB
    1.6's occasional 500 under concurrent writes."""
    url = f"{influxdb.url}/write?" + urllib.parse.urlencode({"db": db, "precision": "ms"})
    body = "\n".join(lines).encode()
    for _ in range(5):
        req = urllib.request.Request(url, data=body, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, ""
        except urllib.error.HTTPError as e:
            if e.code >= 500:
                continue
            return e.code, e.read().decode(errors="replace")
    return 500, "InfluxDB kept answering 500"


def _handle_and_write(influxdb: InfluxServer, db: str, topic: str, payload: bytes,
                      content_type: str | None, received_ms: int) -> None:
    validator = Validator(IngestSection(), instance="edge-prop")
    msg = Inbound(topic=topic, payload=payload, mid=1, qos=1, retain=False,
                  content_type=content_type, received_ms=received_ms,
                  received_mono=time.monotonic(), generation=1)
    v = validator.validate(msg)  # must never raise
    assert v.msg is msg
    accepted = [*v.lines, *v.points]
    dead = [validator.dead_letter_line(r) for r in v.rejected]
    assert not [ln for ln in accepted if ln.startswith("ingest_errors")]
    assert all(ln.startswith("ingest_errors,") for ln in dead)
    if accepted:
        status_code, error = _write(influxdb, db, accepted)
        assert status_code == 204, f"InfluxDB refused what the contract accepted: " \
                                   f"{status_code} {error}\n{accepted!r}"
    if dead:
        status_code, error = _write(influxdb, db, dead)
        assert status_code == 204, f"InfluxDB refused a dead letter: {status_code} " \
                                   f"{error}\n{dead!r}"


# The edge's clock: today, or as late as a reading at InfluxDB's last
# millisecond can be accepted (max_future_s ahead of it).
received = st.one_of(st.just(NOW), st.just(MAX_EPOCH_MS - 1 - 300_000))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])


@PROPERTY
@given(msg=json_telemetry(), received_ms=received)
def test_json_telemetry_the_contract_accepts_influxdb_stores(
        influxdb: InfluxServer, influx_db: str, msg: tuple[bytes, str], received_ms: int) -> None:
    payload, gw = msg
    _handle_and_write(influxdb, influx_db, f"farm/v1/c1/farm-1/{gw}/telemetry", payload, None,
                      received_ms)


@PROPERTY
@given(msg=compact_telemetry(), received_ms=received, tell=st.booleans())
def test_compact_telemetry_the_contract_accepts_influxdb_stores(
        influxdb: InfluxServer, influx_db: str, msg: tuple[bytes, str], received_ms: int,
        tell: bool) -> None:
    payload, gw = msg
    _handle_and_write(influxdb, influx_db, f"farm/v1/c1/farm-1/{gw}/telemetry", payload,
                      COMPACT if tell else None, received_ms)


@PROPERTY
@given(msg=status())
def test_status_the_contract_accepts_influxdb_stores(
        influxdb: InfluxServer, influx_db: str, msg: tuple[bytes, str]) -> None:
    payload, gw = msg
    _handle_and_write(influxdb, influx_db, f"farm/v1/c1/farm-1/{gw}/status", payload, None,
                      NOW)


def test_readings_at_influxdb_s_time_limits_are_stored_and_read_back(
        influxdb: InfluxServer, influx_db: str) -> None:
    """The contract's first and last timestamps are InfluxDB's: a reading at
    2262-04-11T23:47:16.854Z is stored and read back."""
    late = MAX_EPOCH_MS - 1
    payload = encode_json(gateway=GW, seq=1, sent=late, clock="synced",
                          readings=[{"sensor": "s1", "kind": "soil_ph", "ts": late, "value": 7,
                                     "unit": "pH"}])
    _handle_and_write(influxdb, influx_db, f"farm/v1/c1/farm-1/{GW}/telemetry", payload, None,
                      late - 300_000)
    rows = influxdb.query("SELECT ph FROM soil", influx_db)
    assert rows and rows[0]["values"][-1][1] == 7.0
