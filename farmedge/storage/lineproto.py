"""InfluxDB line protocol: the one encoder, written by hand for speed.

The rules are InfluxDB 1.x's parser's (the 2.x and 3.x parsers accept what
it accepts), checked against InfluxDB 1.6.7 by
tests/integration/test_lineproto_influx.py:

- In a measurement, commas and spaces are escaped with a backslash; in tag
  keys, tag values and field keys also equal signs. In the measurement and
  tags InfluxDB takes a special character after a backslash as escaped,
  however many backslashes come before it, and removes only the backslash
  of such a pair: so other backslashes are written as they are and stored
  as they are. In field keys it reads a backslash and any character after it
  as a pair, so there a backslash before a special character is doubled
  (and stored doubled; farmedge's field keys have none).
- A name may not end in a backslash (it would escape the separator after
  it): a trailing backslash is written as ``_``. Line breaks, which end a
  line, are written as spaces. Nothing else is changed.
- A string field value is quoted; backslashes and double quotes in it are
  escaped (InfluxDB stores them as they were), line breaks are written as
  ``\\n`` and ``\\r`` (two characters each: the edge's spool keeps one line
  per line).
- Floats are always written with a decimal point or an exponent, integers
  with ``i``, so a field never changes type between points.

Hot paths build the start of a line once with :func:`series_key` and cache
it; :func:`line` is for everything else.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

__all__ = ["bool_field", "escape_field_key", "escape_measurement", "escape_tag", "field_str",
           "float_field", "int_field", "line", "series_key"]

_NEEDS_TAG = re.compile(r"[,= \\\n\r]")
_NEEDS_MEASUREMENT = re.compile(r"[, \\\n\r]")
_TAG_SPECIAL = re.compile(r"([,= ])")
_MEASUREMENT_SPECIAL = re.compile(r"([, ])")
_TRAILING_BACKSLASHES = re.compile(r"\\+$")


def _trailing(m: re.Match[str]) -> str:
    return "_" * len(m[0])


def _escape(value: str, special: re.Pattern[str]) -> str:
    value = value.replace("\n", " ").replace("\r", " ")
    value = _TRAILING_BACKSLASHES.sub(_trailing, value)
    return special.sub(r"\\\1", value)


def escape_tag(value: str) -> str:
    """A tag key or value."""
    return _escape(value, _TAG_SPECIAL) if _NEEDS_TAG.search(value) else value


_NEEDS_FIELD_KEY = _NEEDS_TAG
_BACKSLASHES_BEFORE_SPECIAL = re.compile(r"(\\+)(?=[,= ])")


def _double(m: re.Match[str]) -> str:
    return m[0] * 2


def escape_field_key(value: str) -> str:
    """A field key. In the fields InfluxDB reads a backslash and the
    character after it as a pair, whatever the character: a backslash before
    a special character is doubled (and stored doubled)."""
    if not _NEEDS_FIELD_KEY.search(value):
        return value
    value = value.replace("\n", " ").replace("\r", " ")
    value = _TRAILING_BACKSLASHES.sub(_trailing, value)
    value = _BACKSLASHES_BEFORE_SPECIAL.sub(_double, value)
    return _TAG_SPECIAL.sub(r"\\\1", value)


def escape_measurement(value: str) -> str:
    return _escape(value, _MEASUREMENT_SPECIAL) if _NEEDS_MEASUREMENT.search(value) else value


def field_str(value: str) -> str:
    """A quoted string field value."""
    value = value.replace("\\", "\\\\").replace('"', '\\"')
    value = value.replace("\n", "\\n").replace("\r", "\\r")
    return f'"{value}"'


def float_field(value: float) -> str:
    """Always a float to InfluxDB (never an integer), so a field never
    changes type between readings."""
    if not math.isfinite(value):
        raise ValueError("InfluxDB cannot store NaN or infinity")
    r = repr(float(value))
    return r if ("." in r or "e" in r or "n" in r) else r + ".0"


def int_field(value: int) -> str:
    """A signed 64-bit integer field value."""
    n = int(value)
    if not -(2**63) <= n < 2**63:
        raise ValueError("InfluxDB integers are 64-bit")
    return f"{n}i"


def bool_field(value: bool) -> str:
    return "true" if value else "false"


def series_key(measurement: str, tags: Iterable[tuple[str, str]]) -> str:
    """``measurement,key=value,...``: the start of a line, which callers that
    write many lines of one series cache. Tags with an empty value are left
    out (InfluxDB stores no empty tag)."""
    return escape_measurement(measurement) + "".join(
        f",{escape_tag(k)}={escape_tag(v)}" for k, v in tags if v)


def line(measurement: str, tags: Mapping[str, str] | Iterable[tuple[str, str]],
         fields: Mapping[str, str], ts: int) -> str:
    """One line; ``fields`` values are already encoded (float_field, field_str,
    int_field, bool_field); ``ts`` in the writer's precision (milliseconds)."""
    if not fields:
        raise ValueError("a line needs at least one field")
    pairs = tags.items() if isinstance(tags, Mapping) else tags
    field_part = ",".join(f"{escape_field_key(k)}={v}" for k, v in fields.items())
    return f"{series_key(measurement, pairs)} {field_part} {int(ts)}"
