"""The readings behind derived values: raw points for short windows, hourly
buckets (sum, count) for baselines and long rolling means, the gateway's
latest air temperature and humidity (THI), and the latest value of each
sensor in a plot or farm aggregate.

Hourly buckets are persisted (table ``history``); raw points and the rest
are rebuilt from the readings after a restart.
"""

from __future__ import annotations

from collections import deque

__all__ = ["FRESH_S", "RAW_MAX_S", "THI_PAIR_S", "History"]

RAW_MAX_S = 6 * 3600.0           # raw points kept for short windows
FRESH_S = 2 * 3600.0             # latest values that count in a plot/farm aggregate
THI_PAIR_S = 1800.0              # temperature and humidity at most this far apart

GKey = tuple[str, str, str]


class History:
    def __init__(self) -> None:
        #: series -> {hour: [sum, count]}
        self.hourly: dict[str, dict[int, list[float]]] = {}
        self.raw: dict[str, deque[tuple[float, float]]] = {}
        #: aggregate key -> {sensor: (clock time, value)}
        self.latest: dict[str, dict[str, tuple[float, float]]] = {}
        #: gateway -> {kind: (ts, value)} for THI
        self.air: dict[GKey, dict[str, tuple[float, float]]] = {}
        self.dirty: set[str] = set()
        self._base_cache: dict[str, tuple[int, float | None]] = {}

    def add(self, series: str, ts: float, v: float, exclude_below: float | None = None,
            base: float | None = None) -> None:
        raw = self.raw.get(series)
        if raw is None:
            raw = self.raw[series] = deque()
        if not raw or ts >= raw[-1][0]:
            raw.append((ts, v))
        while raw and raw[0][0] < ts - RAW_MAX_S:
            raw.popleft()
        if exclude_below is not None and base is not None and v < base - exclude_below:
            return
        h = int(ts // 3600)
        buckets = self.hourly.setdefault(series, {})
        b = buckets.get(h)
        if b is None:
            buckets[h] = [v, 1.0]
        else:
            b[0] += v
            b[1] += 1
        self.dirty.add(series)

    def baseline(self, series: str, ts: float, window: float, by_hour: bool,
                 min_h: float) -> float | None:
        """Mean over ``window`` in hourly buckets, the current hour excluded
        (``by_hour``: the same hour of day only); None with fewer than
        ``min_h`` hours."""
        h = int(ts // 3600)
        cached = self._base_cache.get(series)
        if cached is not None and cached[0] == h:
            return cached[1]
        buckets = self.hourly.get(series, {})
        lo = h - int(window // 3600)
        for k in [k for k in buckets if k < lo - 24]:
            del buckets[k]
        hours = [k for k in buckets if lo <= k < h]
        base: float | None = None
        if len(hours) >= min_h:
            sel = [k for k in hours if (k - h) % 24 == 0] if by_hour else hours
            n = sum(buckets[k][1] for k in sel)
            if n > 0:
                base = sum(buckets[k][0] for k in sel) / n
        self._base_cache[series] = (h, base)
        return base

    def windowed(self, series: str, what: str, window: float, ts: float) -> float | None:
        """``rolling_mean`` or ``rate_per_h`` over ``window`` (raw points up to
        six hours, hourly buckets past that); None with under half the window."""
        if window <= RAW_MAX_S:
            raw = self.raw.get(series)
            if not raw:
                return None
            pts = [(t, x) for t, x in raw if t >= ts - window]
            if not pts or ts - pts[0][0] < window / 2:
                return None
            if what == "rolling_mean":
                return sum(x for _, x in pts) / len(pts)
            t0, x0 = pts[0]
            t1, x1 = pts[-1]
            return (x1 - x0) / (t1 - t0) * 3600.0 if t1 > t0 else None
        buckets = self.hourly.get(series, {})
        h = int(ts // 3600)
        lo = h - int(window // 3600)
        sel = [k for k in buckets if lo < k <= h]
        if not sel or h - min(sel) < window / 7200:
            return None
        if what == "rolling_mean":
            n = sum(buckets[k][1] for k in sel)
            return sum(buckets[k][0] for k in sel) / n
        a, b = min(sel), max(sel)
        if a == b:
            return None
        return (buckets[b][0] / buckets[b][1] - buckets[a][0] / buckets[a][1]) / (b - a)

    def aggregate(self, key: str, member: str, now: float, value: float) -> float:
        """The mean of the latest value of each member (fresh ones only)."""
        latest = self.latest.setdefault(key, {})
        latest[member] = (now, value)
        vals = [x for t0, x in latest.values() if now - t0 <= FRESH_S]
        return sum(vals) / len(vals)

    def load(self, rows: dict[str, dict[str, list[float]]]) -> None:
        for k, v in rows.items():
            self.hourly[k] = {int(h): b for h, b in v.items()}

    def changed_rows(self) -> dict[str, dict[str, list[float]]]:
        """The hourly buckets of series changed since the last call."""
        out = {k: {str(h): b for h, b in self.hourly[k].items()}
               for k in self.dirty if k in self.hourly}
        self.dirty.clear()
        return out
