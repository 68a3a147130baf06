"""Grafana's query interpolation for the InfluxDB (InfluxQL) data source,
reimplemented for the tests: no Grafana server runs here.

What Grafana does, and these functions copy:
- ``$timeFilter`` becomes ``time >= <from>ms and time <= <to>ms``;
- ``$__interval`` / ``$interval`` become the panel interval: the time range
  divided by the panel's max data points, rounded to a "nice" interval
  (Grafana's ``rangeutil.roundInterval``) and raised to the panel's minimum
  interval (``interval``) and the data source's ``timeInterval``;
  ``$__interval_ms`` the same in milliseconds;
- a template variable becomes its value; for a multi-value or include-All
  variable each value is regex-escaped and several are joined as
  ``(a|b)``, and All becomes the variable's ``allValue`` (``.*`` here) as is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Grafana's roundInterval table: (upper bound of the raw interval in ms, result).
_ROUND: tuple[tuple[int, int], ...] = (
    (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1500, 1000),
    (3500, 2000), (7500, 5000), (12500, 10000), (17500, 15000), (25000, 20000),
    (45000, 30000), (90000, 60000), (210000, 120000), (450000, 300000), (750000, 600000),
    (1050000, 900000), (1500000, 1200000), (2700000, 1800000), (5400000, 3600000),
    (9000000, 7200000), (16200000, 10800000), (32400000, 21600000), (86400000, 43200000),
    (604800000, 86400000), (1814400000, 604800000), (3628800000, 2592000000),
)
_UNITS = {"ms": 1, "s": 1000, "m": 60000, "h": 3600000, "d": 86400000, "w": 604800000}
# Grafana's escapeRegex: the characters that mean something in a regex, and "/".
_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")


def parse_duration(text: str) -> int:
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d|w)", text.strip())
    if not m:
        raise ValueError(f"not a Grafana interval: {text!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


def round_interval(ms: int) -> int:
    for bound, result in _ROUND:
        if ms < bound:
            return result
    return 31536000000


def format_interval(ms: int) -> str:
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNITS[unit]
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def panel_interval_ms(start_ms: int, end_ms: int, *, max_data_points: int = 800,
                      min_interval: str | None = None,
                      datasource_interval: str | None = "1m") -> int:
    raw = round_interval(max(1, (end_ms - start_ms) // max_data_points))
    for low in (min_interval, datasource_interval):
        if low:
            raw = max(raw, parse_duration(low))
    return raw


def regex_escape(value: str) -> str:
    return _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), value)


@dataclass(frozen=True)
class Selection:
    """A variable's current value: ``all`` or a list of values."""

    values: Sequence[str] = ()
    all: bool = False


def format_variable(variable: Mapping[str, Any], sel: Selection) -> str:
    if sel.all:
        allv = variable.get("allValue")
        if allv:
            return str(allv)
        sel = Selection(values=list(variable.get("_all_values", ())))
    multi = variable.get("multi") or variable.get("includeAll")
    if not multi:
        assert len(sel.values) == 1, "a single-value variable has exactly one value"
        return str(sel.values[0])
    escaped = [regex_escape(v) for v in sel.values]
    if len(escaped) == 1:
        return escaped[0]
    return "(" + "|".join(escaped) + ")"


def expand(query: str, *, start_ms: int, end_ms: int, interval_ms: int,
           variables: Mapping[str, Mapping[str, Any]],
           selections: Mapping[str, Selection]) -> str:
    """The query as Grafana sends it to InfluxDB."""
    out = query.replace("$timeFilter", f"time >= {start_ms}ms and time <= {end_ms}ms")
    out = out.replace("$__interval_ms", str(interval_ms))
    out = out.replace("$__interval", format_interval(interval_ms))
    out = re.sub(r"\$interval\b", format_interval(interval_ms), out)

    def var(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in variables:
            return m.group(0)
        return format_variable(variables[name], selections[name])

    # $name and ${name}; longest names first is implied by \w+ greediness.
    out = re.sub(r"\$\{(\w+)\}|\$(\w+)", var, out)
    leftover = re.findall(r"\$\w+", out)
    assert not leftover, f"unexpanded macros {leftover} in {out}"
    return out
