"""Values a rule can test (its ``value:``), one function each, chosen by name
from :data:`DERIVE`. A function gets the reading being evaluated for one rule
and returns the value to compare, or None when it cannot be computed yet
(no field capacity, not enough history, no humidity to pair with).

To add one: write the function here, add it to :data:`DERIVE` and to the
``Derived`` names in ``rules.py`` (the loader refuses unknown names), and
describe it in docs/alerts.md ("Values a rule can test").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .history import THI_PAIR_S, History
from .rules import Rule

__all__ = ["DERIVE", "Derive", "Input"]

GKey = tuple[str, str, str]


@dataclass(slots=True)
class Input:
    """One reading as one rule sees it."""

    value: float                    # the reading, canonical unit
    ts: float                       # its time (epoch s; the engine's when unsynced)
    kind: str
    series: str                     # county/farm/gateway/sensor/kind
    entity: str                     # county/farm/<entity>:<id>, the rule's entity
    gateway: GKey
    history: History
    #: history series this reading already went into (once per reading)
    seen: set[str]
    rule: Rule = None  # type: ignore[assignment]
    params: Mapping[str, float] = None  # type: ignore[assignment]


Derive = Callable[[Input], float | None]


def reading(x: Input) -> float | None:
    return x.value


def relative_moisture(x: Input) -> float | None:
    """100 × VWC / field capacity (% FC)."""
    fc = x.params.get("field_capacity")
    return 100.0 * x.value / fc if fc else None


def depletion(x: Input) -> float | None:
    """Share of the available water used, FAO-56: 100 × (FC − VWC) / (FC − WP)."""
    fc, wp = x.params.get("field_capacity"), x.params.get("wilting_point")
    return 100.0 * (fc - x.value) / (fc - wp) if fc and wp is not None and fc > wp else None


def depth_cm(x: Input) -> float | None:
    """Paddy water depth from a level gauge in %."""
    p = x.params
    return x.value / 100.0 * p.get("gauge_span_cm", 100.0) - p.get("gauge_zero_cm", 0.0)


def _windowed(x: Input, what: str) -> float | None:
    if x.series not in x.seen:
        x.history.add(x.series, x.ts, x.value)
        x.seen.add(x.series)
    return x.history.windowed(x.series, what, x.rule.window or 3600.0, x.ts)


def rate_per_h(x: Input) -> float | None:
    return _windowed(x, "rate_per_h")


def rolling_mean(x: Input) -> float | None:
    return _windowed(x, "rolling_mean")


def _baseline(x: Input) -> float | None:
    key = f"{x.entity}/{x.kind}"
    p = x.params
    base = x.history.baseline(key, x.ts, x.rule.window or 864000.0,
                              bool(p.get("baseline_by_hour", 0)), p.get("baseline_min_h", 48.0))
    if key not in x.seen:
        x.history.add(key, x.ts, x.value, p.get("baseline_exclude_below"), base)
        x.seen.add(key)
    return base


def baseline_delta(x: Input) -> float | None:
    base = _baseline(x)
    return None if base is None else x.value - base


def baseline_ratio(x: Input) -> float | None:
    base = _baseline(x)
    return 100.0 * x.value / base if base is not None and base > 0 else None


def thi(x: Input) -> float | None:
    """Temperature-humidity index from the gateway's latest air temperature
    and humidity, at most 30 min apart: 0.8·T + RH·(T − 14.4) + 46.4."""
    air = x.history.air.setdefault(x.gateway, {})
    air[x.kind] = (x.ts, x.value)
    t, rh = air.get("air_temperature"), air.get("air_humidity")
    if t is None or rh is None or abs(t[0] - rh[0]) > THI_PAIR_S:
        return None
    return 0.8 * t[1] + rh[1] / 100.0 * (t[1] - 14.4) + 46.4


#: value name -> function. THI is computed per gateway, not aggregated.
DERIVE: dict[str, Derive] = {
    "reading": reading,
    "relative_moisture": relative_moisture,
    "depletion": depletion,
    "rate_per_h": rate_per_h,
    "rolling_mean": rolling_mean,
    "baseline_delta": baseline_delta,
    "baseline_ratio": baseline_ratio,
    "thi": thi,
    "depth_cm": depth_cm,
}
#: Values that are not averaged over a plot, farm or gateway.
NOT_AGGREGATED = frozenset({"thi"})
