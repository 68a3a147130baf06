"""The compact encoding of wire contract v1, for metered links.

A compact payload carries the same envelope and readings as JSON, but batched
column by column, with every id and unit sent once per message, values as
decimal integers delta-coded per series, and the whole body compressed.
docs/protocol.md ("Compact encoding") specifies it byte by byte for
third-party firmware; this module is the reference implementation.

Layout::

    byte 0     magic 0xFE (never white space or "{", so it is told from JSON
               without a content type)
    byte 1     compression: 0 none, 1 zstd, 2 deflate with the shared
               dictionary, 3 zstd with the shared dictionary
    bytes 2..  the (compressed) MessagePack body:
               [1, gateway, seq, sent, clock, series, idx, ts, exps, vals, quality,
                ...extension elements]

Extension rule (docs/protocol.md, "How the contract grows"): a body may
carry up to MAX_EXTENSIONS elements after the 11 known ones, each a scalar
(nil, boolean, integer, float, string) or a flat array of scalars; a
receiver checks their shape and size and ignores them.

MQTT 5 content type: ``application/vnd.farmedge.v1+compact``.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from .codec import Codec, PayloadTooLarge, register
from .errors import ContractError
from .models import MAX_READINGS

__all__ = [
    "COMPACT",
    "COMPRESSIONS",
    "KNOWN_ELEMENTS",
    "MAGIC",
    "MAX_BODY_BYTES",
    "MAX_EXTENSIONS",
    "MAX_ZSTD_WINDOW",
    "SHARED_DICTIONARY",
    "decode_compact",
    "encode_compact",
]

COMPACT = "application/vnd.farmedge.v1+compact"
MAGIC = 0xFE
#: A decompressed body larger than this is refused, as soon as decompression
#: passes it (decompression bombs).
MAX_BODY_BYTES = 1024 * 1024
#: zstd frames needing a larger window are refused (RFC 8878 asks decoders
#: to support 8 MiB; a body is at most 1 MiB anyway).
MAX_ZSTD_WINDOW = 8 * 1024 * 1024
#: Most readings (and so series) in one message: the contract's limit.
_MAX_ARRAY = MAX_READINGS
#: Elements of the body this version knows; a later one may send more.
KNOWN_ELEMENTS = 11
#: At most this many extension elements after them (each a scalar or a flat
#: array of scalars); a body with more is refused.
MAX_EXTENSIONS = 16
# Arrays in a well-formed body: the body, series, one per series, idx, ts,
# exps, vals, quality, and one per extension element.
_MAX_ARRAYS = _MAX_ARRAY + 7 + MAX_EXTENSIONS

NONE, ZSTD, DEFLATE_DICT, ZSTD_DICT = 0, 1, 2, 3
COMPRESSIONS: dict[str, int] = {
    "none": NONE, "zstd": ZSTD, "deflate-dict": DEFLATE_DICT, "zstd-dict": ZSTD_DICT,
}

_QUALITY = ("ok", "suspect", "error")
_CLOCK = ("synced", "unsynced")
# Values whose decimal mantissa does not fit a signed 64-bit integer are sent
# as floats instead.
_INT64 = 2**63 - 1
_MAX_EXP = 30


def _shared_dictionary() -> bytes:
    """The shared dictionary: the strings a payload most often holds.

    It is the UTF-8 bytes of the canonical kind names, each followed by its
    canonical unit, joined with no separator, in the order of the contract's
    kinds table, followed by a few common words. docs/protocol.md
    prints the exact bytes; changing them is a new compression code.
    """
    names = (
        "soil_moisture", "%", "soil_temperature", "degC", "soil_ec", "uS/cm", "soil_ph", "pH",
        "soil_nitrogen", "mg/kg", "soil_phosphorus", "mg/kg", "soil_potassium", "mg/kg",
        "air_temperature", "degC", "air_humidity", "%RH", "rainfall", "mm",
        "animal_body_temperature", "degC", "animal_activity", "steps/h",
        "animal_presence", "count", "water_level", "%", "battery_voltage", "V",
        "soil-", "gw-", "farm-", "rfid-", "trough-", "gate-",
    )
    return "".join(names).encode()


SHARED_DICTIONARY: bytes = _shared_dictionary()


class _Bad(ContractError):
    pass


# -- encoding ---------------------------------------------------------------


def _decimal(value: float) -> tuple[int, int] | None:
    """(mantissa, exponent) of the shortest decimal that reads back as value."""
    if isinstance(value, int):
        return (value, 0) if -_INT64 <= value <= _INT64 else None
    if not math.isfinite(value):
        raise ContractError("value must be finite")
    sign, digits, exp = Decimal(repr(value)).as_tuple()
    assert isinstance(exp, int)
    m = 0
    for d in digits:
        m = m * 10 + d
    # Strip trailing zeros so that 20.0 is (2, 1) and shares an exponent.
    while m and m % 10 == 0:
        m //= 10
        exp += 1
    if m == 0:
        exp = 0
    if -_MAX_EXP <= exp <= _MAX_EXP and m <= _INT64:
        return (-m if sign else m), exp
    return None


def encode_compact(
    *,
    gateway: str,
    seq: int,
    sent: int,
    clock: str,
    readings: Sequence[Mapping[str, Any]],
    compression: str = "deflate-dict",
    level: int = 19,
) -> bytes:
    """Encode one telemetry message. ``readings`` are mappings with the keys
    of a JSON reading (``sensor kind ts value unit`` and optional ``quality``,
    ``animal``); their order is kept."""
    code = COMPRESSIONS.get(compression)
    if code is None:
        raise ContractError(f"compression {compression!r} is not one of {sorted(COMPRESSIONS)}")
    if clock not in _CLOCK:
        raise ContractError(f"clock {clock!r} is not one of {_CLOCK}")
    series: list[list[Any]] = []
    index: dict[tuple[Any, ...], int] = {}
    idx: list[int] = []
    decs: list[tuple[int, int] | None] = []
    for r in readings:
        key = (r["sensor"], r["kind"], r.get("unit", ""), r.get("animal"))
        i = index.get(key)
        if i is None:
            i = index[key] = len(series)
            series.append(list(key[:3]) if key[3] is None else list(key))
        idx.append(i)
        decs.append(_decimal(r["value"]))
    # One decimal exponent per series: the smallest its values need.
    exps: list[int | None] = [None] * len(series)
    floats = [False] * len(series)
    for i, d in zip(idx, decs, strict=True):
        if d is None:
            floats[i] = True
        else:
            e = exps[i]
            exps[i] = d[1] if e is None else min(e, d[1])
    # A series whose values cannot share one exponent within int64 (5.96e-08
    # next to 1.0: the larger mantissa overflows), mantissa or delta, is sent
    # as floats instead: found in one pass, before any value is written.
    mants: list[int | None] = []
    last: dict[int, int] = {}
    for i, d in zip(idx, decs, strict=True):
        e = exps[i]
        if floats[i] or d is None or e is None:
            mants.append(None)
            continue
        m = d[0] * 10 ** (d[1] - e)
        if abs(m) > _INT64 or abs(m - last.get(i, 0)) > _INT64:
            floats[i] = True
        last[i] = m
        mants.append(m)
    vals: list[int | float] = []
    last.clear()
    for i, m, r in zip(idx, mants, readings, strict=True):
        if floats[i] or m is None:
            vals.append(float(r["value"]))
            continue
        vals.append(m - last.get(i, 0))
        last[i] = m
    for i, f in enumerate(floats):
        if f:
            exps[i] = None
    ts: list[int] = []
    prev = 0
    for r in readings:
        t = int(r["ts"])
        ts.append(t - prev)
        prev = t
    qual: list[int] | None = [_QUALITY.index(str(r.get("quality", "ok"))) for r in readings]
    if qual is not None and not any(qual):
        qual = None
    body = packb([1, gateway, seq, sent, _CLOCK.index(clock), series, idx, ts, exps, vals, qual])
    return bytes([MAGIC, code]) + _compress(code, body, level)


def packb(obj: Any) -> bytes:
    """MessagePack bytes of ``obj`` (None, bool, int, float, str and lists of
    them), the same bytes as ``msgpack.packb(obj, use_bin_type=True)``.

    The encoder needs nothing but the standard library, so a gateway installs
    without msgpack (which has no armv7l wheel on PyPI); decoding, on the
    edge, uses msgpack.
    """
    out: list[bytes] = []
    _pack(obj, out)
    return b"".join(out)


def _pack(obj: Any, out: list[bytes]) -> None:
    if obj is None:
        out.append(b"\xc0")
    elif obj is True:
        out.append(b"\xc3")
    elif obj is False:
        out.append(b"\xc2")
    elif isinstance(obj, int):
        out.append(_pack_int(obj))
    elif isinstance(obj, float):
        out.append(b"\xcb" + struct.pack(">d", obj))
    elif isinstance(obj, str):
        b = obj.encode("utf-8")
        n = len(b)
        if n < 32:
            out.append(bytes([0xA0 | n]))
        elif n < 0x100:
            out.append(b"\xd9" + bytes([n]))
        elif n < 0x10000:
            out.append(b"\xda" + struct.pack(">H", n))
        else:
            out.append(b"\xdb" + struct.pack(">I", n))
        out.append(b)
    elif isinstance(obj, (list, tuple)):
        n = len(obj)
        if n < 16:
            out.append(bytes([0x90 | n]))
        elif n < 0x10000:
            out.append(b"\xdc" + struct.pack(">H", n))
        else:
            out.append(b"\xdd" + struct.pack(">I", n))
        for item in obj:
            _pack(item, out)
    else:
        raise TypeError(f"cannot pack {type(obj).__name__}")


def _pack_int(v: int) -> bytes:
    if v >= 0:
        if v < 0x80:
            return bytes([v])
        if v < 0x100:
            return b"\xcc" + bytes([v])
        if v < 0x10000:
            return b"\xcd" + struct.pack(">H", v)
        if v < 0x100000000:
            return b"\xce" + struct.pack(">I", v)
        if v < 0x10000000000000000:
            return b"\xcf" + struct.pack(">Q", v)
        raise OverflowError("integer out of range for MessagePack")
    if v >= -32:
        return struct.pack(">b", v)
    if v >= -0x80:
        return b"\xd0" + struct.pack(">b", v)
    if v >= -0x8000:
        return b"\xd1" + struct.pack(">h", v)
    if v >= -0x80000000:
        return b"\xd2" + struct.pack(">i", v)
    if v >= -0x8000000000000000:
        return b"\xd3" + struct.pack(">q", v)
    raise OverflowError("integer out of range for MessagePack")


def _compress(code: int, body: bytes, level: int) -> bytes:
    if code == NONE:
        return body
    if code == DEFLATE_DICT:
        c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY,
                             zdict=SHARED_DICTIONARY)
        return c.compress(body) + c.flush()
    import zstandard

    params = zstandard.ZstdCompressionParameters.from_level(
        level, write_checksum=False, write_content_size=True, write_dict_id=False)
    d = _zstd_dict() if code == ZSTD_DICT else None
    return zstandard.ZstdCompressor(compression_params=params, dict_data=d).compress(body)


_ZDICT: Any = None


def _zstd_dict() -> Any:
    global _ZDICT
    if _ZDICT is None:
        import zstandard

        _ZDICT = zstandard.ZstdCompressionDict(
            SHARED_DICTIONARY, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return _ZDICT


# -- decoding ---------------------------------------------------------------


def _decompress(code: int, data: bytes) -> bytes:
    """The body, never more than MAX_BODY_BYTES: each decompressor stops as
    soon as its output passes the limit (PayloadTooLarge), so a bomb costs
    about a megabyte and a millisecond, whatever it claims to hold."""
    if code == NONE:
        body = data
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"body is too large: more than {MAX_BODY_BYTES} bytes")
    elif code == DEFLATE_DICT:
        d = zlib.decompressobj(-15, zdict=SHARED_DICTIONARY)
        try:
            body = d.decompress(data, MAX_BODY_BYTES + 1)
        except zlib.error as exc:
            raise _Bad(f"deflate data is corrupt: {exc}") from None
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLarge(
                f"body is too large: deflate data decompresses to more than {MAX_BODY_BYTES} bytes")
        if not d.eof:
            raise _Bad("deflate data is truncated")
        if d.unused_data:
            raise _Bad("bytes follow the deflate stream")
    elif code in (ZSTD, ZSTD_DICT):
        body = _unzstd(data, _zstd_dict() if code == ZSTD_DICT else None)
    else:
        raise _Bad(f"compression code {code} is unknown")
    return body


def _unzstd(data: bytes, dict_data: Any) -> bytes:
    import zstandard

    try:
        size = zstandard.get_frame_parameters(data).content_size
    except zstandard.ZstdError as exc:
        raise _Bad(f"zstd data is corrupt: frame header: {exc}") from None
    unknown = size == zstandard.CONTENTSIZE_UNKNOWN
    if not unknown and size > MAX_BODY_BYTES:
        # Refused on the header alone: a 32 KiB frame may declare 1 GiB.
        raise PayloadTooLarge(
            f"body is too large: the zstd frame holds {size} bytes, the limit is {MAX_BODY_BYTES}")
    dctx = zstandard.ZstdDecompressor(dict_data=dict_data, max_window_size=MAX_ZSTD_WINDOW)
    try:
        # With a content size in the header (at most the limit) zstd writes
        # into a buffer of exactly that size and fails if the frame holds
        # more; without one, into a buffer of the limit + 1.
        body: bytes = dctx.decompress(data, max_output_size=MAX_BODY_BYTES + 1,
                                      allow_extra_data=False)
    except zstandard.ZstdError as exc:
        if unknown and _zstd_output_passes_limit(dctx, data):
            raise PayloadTooLarge(f"body is too large: zstd data decompresses to more than "
                                  f"{MAX_BODY_BYTES} bytes") from None
        text = str(exc)
        if "unused data" in text:
            raise _Bad("bytes follow the zstd frame") from None
        if "full frame" in text:
            raise _Bad("zstd frame is truncated") from None
        raise _Bad(f"zstd data is corrupt: {text}") from None
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(
            f"body is too large: zstd data decompresses to more than {MAX_BODY_BYTES} bytes")
    return body


def _zstd_output_passes_limit(dctx: Any, data: bytes) -> bool:
    """Whether a frame without a content size decompresses to more than the
    limit: reads at most the limit + 1 bytes of it to find out."""
    import zstandard

    got = 0
    try:
        with dctx.stream_reader(data, read_across_frames=False) as reader:
            while got <= MAX_BODY_BYTES:
                chunk = reader.read(MAX_BODY_BYTES + 1 - got)
                if not chunk:
                    break
                got += len(chunk)
    except zstandard.ZstdError:
        return False
    return got > MAX_BODY_BYTES


def _list(x: Any, what: str, n: int | None = None) -> list[Any]:
    if not isinstance(x, list):
        raise _Bad(f"{what} must be an array")
    if n is not None and len(x) != n:
        raise _Bad(f"{what} has {len(x)} entries, expected {n}")
    return x


def _int(x: Any, what: str) -> int:
    if not isinstance(x, int) or isinstance(x, bool):
        raise _Bad(f"{what} must be an integer")
    return x


def _scalar(x: Any) -> bool:
    return x is None or isinstance(x, bool | int | float | str)


def _check_extensions(ext: list[Any]) -> None:
    """Elements after the known ones: each a scalar or a flat array of
    scalars (sizes are already bounded by the unpacker: strings, array
    lengths, arrays in all, the body). Their content is not read."""
    for j, x in enumerate(ext, start=KNOWN_ELEMENTS):
        if _scalar(x):
            continue
        if isinstance(x, list) and all(_scalar(y) for y in x):
            continue
        raise _Bad(f"extension element {j} must be nil, a boolean, a number, a string "
                   f"or an array of those")


def decode_compact(payload: bytes) -> dict[str, Any]:
    """The JSON-equivalent message of a compact payload. Raises ValueError
    with the reason when the payload is not a well-formed compact message."""
    import msgpack

    if len(payload) < 3 or payload[0] != MAGIC:
        raise _Bad("payload does not start with the compact magic byte 0xFE")
    body = _decompress(payload[1], payload[2:])
    arrays = 0

    def count_arrays(a: list[Any]) -> list[Any]:
        # A body of nested arrays (b"\x91" * 1000, repeated) would make a
        # million lists of one megabyte: stop past what a message can hold.
        nonlocal arrays
        arrays += 1
        if arrays > _MAX_ARRAYS:
            raise _Bad(f"body holds more than {_MAX_ARRAYS} arrays")
        return a

    try:
        doc = msgpack.unpackb(
            body, raw=False, strict_map_key=True, use_list=True, list_hook=count_arrays,
            max_str_len=1024, max_bin_len=0, max_array_len=_MAX_ARRAY, max_map_len=0,
            max_ext_len=0,
        )
    except _Bad:
        raise
    except Exception as exc:  # msgpack raises several unrelated types
        if "exceeds max_array_len" in str(exc):
            raise _Bad(f"an array of the body has more than {_MAX_ARRAY} entries "
                       f"(at most {MAX_READINGS} readings a message)") from None
        raise _Bad(f"body is not MessagePack: {type(exc).__name__}: {exc}"[:200]) from None
    top = _list(doc, "body")
    if not KNOWN_ELEMENTS <= len(top) <= KNOWN_ELEMENTS + MAX_EXTENSIONS:
        raise _Bad(f"body has {len(top)} entries, expected {KNOWN_ELEMENTS} "
                   f"(and at most {MAX_EXTENSIONS} extension elements after them)")
    _check_extensions(top[KNOWN_ELEMENTS:])
    ver, gateway, seq, sent, clock, series, idx, ts, exps, vals, qual = top[:KNOWN_ELEMENTS]
    if ver != 1:
        raise _Bad(f"body version {ver!r} is not 1")
    clock_i = _int(clock, "clock")
    if clock_i not in (0, 1):
        raise _Bad("clock must be 0 (synced) or 1 (unsynced)")
    series = _list(series, "series")
    for j, s in enumerate(series):
        s = _list(s, f"series[{j}]")
        if len(s) not in (3, 4) or not all(isinstance(p, str) for p in s):
            raise _Bad(f"series[{j}] must be [sensor, kind, unit] or [sensor, kind, unit, animal]")
    idx = _list(idx, "idx")
    n = len(idx)
    ts = _list(ts, "ts", n)
    exps = _list(exps, "exps", len(series))
    vals = _list(vals, "vals", n)
    if qual is not None:
        qual = _list(qual, "quality", n)
    for j, e in enumerate(exps):
        if e is not None and not (-_MAX_EXP <= _int(e, f"exps[{j}]") <= _MAX_EXP):
            raise _Bad(f"exps[{j}] is outside -{_MAX_EXP}..{_MAX_EXP}")
    readings: list[dict[str, Any]] = []
    last: dict[int, int] = {}
    t = 0
    for k in range(n):
        i = _int(idx[k], f"idx[{k}]")
        if not 0 <= i < len(series):
            raise _Bad(f"idx[{k}] = {i} names no series")
        t += _int(ts[k], f"ts[{k}]")
        e = exps[i]
        v = vals[k]
        value: float
        if e is None:
            if not isinstance(v, float):
                raise _Bad(f"vals[{k}] must be a float (its series has no exponent)")
            value = v
        else:
            m = last.get(i, 0) + _int(v, f"vals[{k}]")
            last[i] = m
            value = float(f"{m}e{e}")
        s = series[i]
        r: dict[str, Any] = {"sensor": s[0], "kind": s[1], "ts": t, "value": value, "unit": s[2]}
        if qual is not None:
            q = _int(qual[k], f"quality[{k}]")
            if not 0 <= q < len(_QUALITY):
                raise _Bad(f"quality[{k}] = {q} is not 0, 1 or 2")
            r["quality"] = _QUALITY[q]
        if len(s) == 4:
            r["animal"] = s[3]
        readings.append(r)
    return {"v": 1, "gateway": gateway, "seq": seq, "sent": sent, "clock": _CLOCK[clock_i],
            "readings": readings}


register(Codec(COMPACT, MAGIC, decode_compact))
