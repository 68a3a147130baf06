"""Quiet hours: a contact's ``"21:00-07:00"`` in the farm's time zone. During
them only critical messages go out; the others wait for the end."""

from __future__ import annotations

from datetime import datetime, timedelta
from datetime import time as dtime
from functools import lru_cache
from zoneinfo import ZoneInfo

from .errors import AlertsError

__all__ = ["parse_quiet_hours", "release_time"]


@lru_cache(maxsize=256)
def parse_quiet_hours(spec: str) -> tuple[dtime, dtime]:
    """``"21:00-07:00"`` -> (start, end) local times."""
    try:
        a, b = (s.strip() for s in spec.split("-", 1))
        return dtime.fromisoformat(a), dtime.fromisoformat(b)
    except ValueError:
        raise AlertsError(f"quiet_hours {spec!r} is not HH:MM-HH:MM") from None


def release_time(spec: str, now: float, tz: ZoneInfo) -> float:
    """When a message made at ``now`` may go: ``now`` outside the quiet
    hours, their end inside them."""
    start, end = parse_quiet_hours(spec)
    local = datetime.fromtimestamp(now, tz)
    t = local.time()
    inside = (start <= t < end) if start < end else (t >= start or t < end)
    if not inside:
        return now
    release = local.replace(hour=end.hour, minute=end.minute, second=0, microsecond=0)
    if release <= local:
        release += timedelta(days=1)
    return release.timestamp()
