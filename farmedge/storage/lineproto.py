"""InfluxDB line protocol, written by hand for speed.

Tag values are contract ids (letters, digits, ``-_.``), which need no
escaping; they are still escaped here so that nothing a registry file holds
can break a line. String fields are escaped and stripped of line breaks.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

__all__ = ["escape_tag", "field_str", "float_field", "line", "series_key"]

_TAG_ESC = re.compile(r"([,= \\])")


def escape_tag(value: str) -> str:
    value = value.replace("\n", " ").replace("\r", " ")
    if _TAG_ESC.search(value):
        value = _TAG_ESC.sub(r"\\\1", value)
    return value


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


def series_key(measurement: str, tags: Iterable[tuple[str, str]]) -> str:
    """``measurement,key=value,...``: the start of a line, which callers that
    write many lines of one series cache. Tags with an empty value are left
    out (InfluxDB stores no empty tag)."""
    return measurement + "".join(f",{k}={escape_tag(v)}" for k, v in tags if v)


def line(measurement: str, tags: Mapping[str, str], fields: Mapping[str, str], ts: int) -> str:
    """One line; ``fields`` values are already encoded (float_field, field_str,
    ``true``/``false``, or ``<n>i``)."""
    field_part = ",".join(f"{k}={v}" for k, v in fields.items())
    return f"{series_key(measurement, tags.items())} {field_part} {ts}"
