"""What the uplink sends next, and how fast: the batch rules (clock state,
holding unsynced readings for NTP, full or waited-long-enough batches), the
rate limit of a backlog replay, and the replay's progress in the log. No
MQTT here: the uplink publishes what :func:`next_batch` picks."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from .clock import ClockSource
from .outbox import Outbox, Row
from .settings import UplinkSection

__all__ = ["Batch", "RateLimit", "ReplayProgress", "next_batch"]

ClockState = Literal["synced", "unsynced"]
Batch = tuple[list[Row], ClockState]


def next_batch(outbox: Outbox, clock: ClockSource, up: UplinkSection, *, after_id: int,
               final: bool, log: Any) -> Batch | None:
    """The next message's readings (the oldest after ``after_id``) and its
    ``clock`` field, or None when nothing is to be sent yet.

    Once the clock is set, readings of this boot taken before are re-dated
    first. A message holds readings of one clock state only. Readings of
    this boot taken on an unsynced clock wait up to ``hold_unsynced_s`` for
    NTP (so they can be re-dated), then go marked "unsynced"; readings of an
    earlier boot cannot be re-dated and go at once. A batch goes when it is
    full, when its oldest reading waited ``batch_max_wait_s``, or when
    ``final`` (the agent is stopping: everything goes, held or not).
    """
    if clock.synced() and outbox.unsynced:
        n = outbox.correct_clock(clock.boot_id(), clock.wall_ms(), clock.mono_ms())
        if n:
            log.info("gateway.clock_set_redated", readings=n)
    rows = outbox.peek(after_id, up.batch_max)
    if not rows:
        return None
    boot = outbox.boot_key(clock.boot_id())
    now_mono = clock.mono_ms()
    hold_ms = up.hold_unsynced_s * 1000

    def state(r: Row) -> ClockState | Literal["hold"]:
        if r.synced:
            return "synced"
        if r.boot == boot and now_mono - r.mono < hold_ms and not final:
            return "hold"
        return "unsynced"

    first = state(rows[0])
    if first == "hold":
        return None
    take = [rows[0]]
    for r in rows[1:]:
        if state(r) != first:
            break
        take.append(r)
    complete = len(take) >= up.batch_max or len(take) < len(rows)
    waited = rows[0].boot != boot or now_mono - rows[0].mono >= up.batch_max_wait_s * 1000
    if not (complete or waited or final):
        return None
    return take, first


class RateLimit:
    """Token bucket: at most ``rate`` readings per second, bursts of ``burst``."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.tokens = self.burst
        self.t = time.monotonic()

    async def take(self, n: int) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        self.tokens -= n
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / self.rate)


class ReplayProgress:
    """Logs a backlog replay: when it starts (more than ten batches queued),
    every ``every_s`` while it goes on, and when it is done."""

    def __init__(self, log: Any, *, batch_max: int, every_s: float = 10.0) -> None:
        self.log = log
        self.threshold = 10 * batch_max
        self.every_s = every_s
        self._start: tuple[float, int] | None = None
        self._logged_at = 0.0

    def update(self, backlog: int, sent_total: int) -> None:
        now = time.monotonic()
        if backlog <= self.threshold:
            if self._start is not None:
                self.log.info("gateway.backlog_replayed", sent=sent_total - self._start[1],
                              seconds=round(now - self._start[0], 1))
                self._start = None
            return
        if self._start is None:
            self._start = (now, sent_total)
            self._logged_at = now
            self.log.info("gateway.replaying_backlog", backlog=backlog)
        elif now - self._logged_at >= self.every_s:
            t0, n0 = self._start
            done = sent_total - n0
            self.log.info("gateway.replaying_backlog", sent=done, left=backlog,
                          rate_per_s=round(done / max(now - t0, 1e-9), 1))
            self._logged_at = now
