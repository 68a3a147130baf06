"""The line-protocol encoder against InfluxDB's parsing rules.

No server here: :func:`parse` reimplements how InfluxDB 1.x's parser
(models/points.go) scans and unescapes a line, as InfluxDB 1.6.7 was seen to
behave (tests/integration/test_lineproto_influx.py writes the same values to
the real server and reads them back): a special character preceded by a
backslash is escaped, whatever comes before that backslash; unescaping
removes the backslash of ``\\,``, ``\\ `` and ``\\=`` only (in a measurement
``\\,`` and ``\\ ``); a string field unescapes ``\\\\`` and ``\\"``."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farmedge.storage.lineproto import (
    bool_field,
    escape_field_key,
    escape_measurement,
    escape_tag,
    field_str,
    float_field,
    int_field,
    line,
    series_key,
)


class ParseError(ValueError):
    pass


def _split(text: str, sep: str, *, fields: bool = False) -> list[str]:
    """Split on ``sep``. In the measurement and tags a character is escaped
    when a backslash precedes it; in the fields (``fields``) a backslash and
    the character after it are a pair, and ``sep`` inside a quoted string
    does not count (there only ``\\"`` and ``\\\\`` are pairs)."""
    out, start, quoted, i = [], 0, False, 0
    while i < len(text):
        c = text[i]
        if fields and c == "\\" and (not quoted or text[i + 1:i + 2] in ('"', "\\")):
            i += 2
            continue
        if fields and c == '"':
            quoted = not quoted
        elif c == sep and not quoted and (fields or i == 0 or text[i - 1] != "\\"):
            out.append(text[start:i])
            start = i + 1
        i += 1
    out.append(text[start:])
    return out


def _unescape(text: str, chars: str) -> str:
    for c in chars:
        text = text.replace("\\" + c, c)
    return text


def _unescape_string(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in '\\"':
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _field_value(raw: str) -> object:
    if raw.startswith('"'):
        if len(raw) < 2 or not raw.endswith('"'):
            raise ParseError(f"bad string {raw!r}")
        return _unescape_string(raw[1:-1])
    if raw in ("true", "false"):
        return raw == "true"
    if raw.endswith("i"):
        return int(raw[:-1])
    return float(raw)


def parse(text: str) -> tuple[str, dict[str, str], dict[str, object], int]:
    if "\n" in text:
        raise ParseError("a line break ends the line")
    # The key ends at the first unescaped space (quotes mean nothing there);
    # in the fields, a quoted string may hold spaces.
    key = _split(text, " ")[0]
    rest = text[len(key) + 1:]
    parts = _split(rest, " ", fields=True)
    if len(parts) != 2:
        raise ParseError(f"{len(parts) + 1} sections")
    fields_part, ts = parts
    keys = _split(key, ",")
    measurement = _unescape(keys[0], ", ")
    if not measurement:
        raise ParseError("no measurement")
    tags: dict[str, str] = {}
    for kv in keys[1:]:
        pair = _split(kv, "=")
        if len(pair) != 2 or not pair[0] or not pair[1]:
            raise ParseError(f"invalid tag format {kv!r}")
        tags[_unescape(pair[0], ",= ")] = _unescape(pair[1], ",= ")
    fields: dict[str, object] = {}
    for kv in _split(fields_part, ",", fields=True):
        pair = _split(kv, "=", fields=True)
        if len(pair) < 2 or not pair[0]:
            raise ParseError(f"invalid field format {kv!r}")
        fields[_unescape(pair[0], ",= ")] = _field_value("=".join(pair[1:]))
    return measurement, tags, fields, int(ts)


def stored_field_key(value: str) -> str:
    """A field key is stored as a tag is, but with backslashes before a
    special character doubled."""
    return re.sub(r"(\\+)(?=[,= ])", lambda m: m[0] * 2, stored_tag(value))


def stored_tag(value: str) -> str:
    """What InfluxDB stores for a tag value we were given: line breaks
    become spaces, a trailing backslash ``_``; the rest as it was."""
    v = value.replace("\n", " ").replace("\r", " ")
    stripped = v.rstrip("\\")
    return stripped + "_" * (len(v) - len(stripped))


NASTY = ["plain", "a b", "a,b", "a=b", "a\\b", "a\\\\b", "a\\", "a\\\\", "\\", "a\\,b",
         "a\\ ", "a\\=", '"q"', "x\ny", "x\r\ny", "中文 名", "a\\ b,c=d\\"]


@pytest.mark.parametrize("value", NASTY)
def test_a_tag_value_is_stored_as_it_was(value: str) -> None:
    text = line("m", {"t": value, "k": "v"}, {"f": "1i"}, 5)
    assert parse(text) == ("m", {"t": stored_tag(value), "k": "v"}, {"f": 1}, 5)


@pytest.mark.parametrize("value", NASTY)
def test_keys_are_escaped_too(value: str) -> None:
    text = line("m", {value: "v"}, {value: field_str(value)}, 5)
    _, tags, fields, _ = parse(text)
    assert tags == {stored_tag(value): "v"}
    assert fields == {stored_field_key(value): value.replace("\n", "\\n").replace("\r", "\\r")}


def test_a_trailing_backslash_would_escape_the_separator() -> None:
    """InfluxDB 1.6.7 refuses ``t=a\\\\ f=1`` ("invalid tag format"): the
    space after a backslash is escaped, however many come before it."""
    with pytest.raises(ParseError):
        parse("m,t=a\\\\ f=1 5")
    assert escape_tag("a\\") == "a_"


def test_a_backslash_before_a_comma_in_a_field_key() -> None:
    """InfluxDB 1.6.7 refuses ``m a\\\\,b=1i`` ("invalid field format"):
    in the fields a backslash and the character after it are a pair."""
    with pytest.raises(ParseError):
        parse("m a\\\\,b=1i 5")
    assert escape_field_key("a\\,b") == "a\\\\\\,b"


@given(st.text(min_size=1, max_size=40))
def test_any_tag_value_round_trips(value: str) -> None:
    text = series_key("m", [("t", value)]) + " f=1.0 7"
    assert parse(text)[1] == {"t": stored_tag(value)}


@given(st.text(max_size=80))
def test_any_string_field_round_trips_but_line_breaks(value: str) -> None:
    text = f"m s={field_str(value)} 1"
    assert "\n" not in text and "\r" not in text
    assert parse(text)[2] == {"s": value.replace("\n", "\\n").replace("\r", "\\r")}


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_a_float_stays_a_float(value: float) -> None:
    enc = float_field(value)
    assert "i" not in enc and ("." in enc or "e" in enc)
    assert parse(f"m f={enc} 1")[2]["f"] == value


def test_values_that_are_no_float() -> None:
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="NaN or infinity"):
            float_field(bad)
    with pytest.raises(ValueError, match="64-bit"):
        int_field(2**63)
    assert int_field(-(2**63)) == f"{-(2**63)}i"
    assert (bool_field(True), bool_field(False)) == ("true", "false")


@pytest.mark.parametrize("value", [v for v in NASTY if not re.search(r"\\[,= ]", v)])
def test_a_measurement_is_escaped(value: str) -> None:
    """Measurements: farmedge's are plain names (test_schema.py). A backslash
    before a special character in one is not stored the same way by every
    InfluxDB (1.6.7 drops it, however many there are), so not here."""
    assert parse(line(value, {}, {"f": "1i"}, 5))[0] == stored_tag(value)


def test_series_key_leaves_out_empty_tags_and_keeps_the_order() -> None:
    assert series_key("soil", [("county", "c"), ("plot", ""), ("farm", "f")]) == \
        "soil,county=c,farm=f"
    assert escape_measurement("a,b c=d") == "a\\,b\\ c=d"


def test_a_line_needs_a_field() -> None:
    with pytest.raises(ValueError, match="at least one field"):
        line("m", {}, {}, 1)
