"""What ``/healthz`` says: :class:`Health` (status, reasons, details) from
the parts of the edge, :class:`ClockWatch`, which judges the edge's own
clock from the readings it takes (docs/edge.md, "Health and metrics"), and
:class:`CenterWatch`, which turns the edge's state into the
:class:`~farmedge.records.CenterEvent` records the stages get."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from farmedge.records import BrokerKind, CenterEvent

if TYPE_CHECKING:
    from .batcher import Batcher
    from .settings import HttpSection
    from .sink import Sink
    from .source import EdgeSource
    from .validate import Validator

__all__ = ["CenterWatch", "ClockWatch", "Health", "HealthCheck"]

#: Clock check: readings sampled per batch (the most recent as many are
#: judged), the window, and how far ahead of the edge's clock recent
#: readings must be to say it looks behind.
_CLOCK_SAMPLES = 32
_CLOCK_WINDOW_S = 60.0
_CLOCK_AHEAD_MS = 30_000


@dataclass(slots=True)
class Health:
    ok: bool
    reasons: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    #: The edge works, but something looks wrong (its clock): /healthz 503
    #: with status "degraded" when there are no ``reasons``.
    degraded: list[str] = field(default_factory=list)


class ClockWatch:
    """Per batch, never per reading: how many of its readings were rejected
    as ts_in_future, and how far ahead of the edge's clock a few sampled
    readings of synced gateways are stamped."""

    def __init__(self) -> None:
        #: (monotonic, readings, of which ts_in_future so far) per batch
        self._batches: deque[tuple[float, int, int]] = deque(maxlen=4096)
        #: (monotonic, ms a sampled reading is ahead of the edge's clock)
        self._samples: deque[tuple[float, float]] = deque(maxlen=512)

    def note(self, readings: list[str], n_readings: int, future_total: int) -> None:
        now_mono = time.monotonic()
        if n_readings:
            self._batches.append((now_mono, n_readings, future_total))
        if not readings:
            return
        now_ms = time.time() * 1000
        step = max(1, len(readings) // _CLOCK_SAMPLES)
        samples = self._samples
        for line in readings[::step]:
            if "_time_estimated" in line:
                continue  # placed on our clock already
            try:
                ts = int(line[line.rindex(" ") + 1:])
            except ValueError:
                continue
            samples.append((now_mono, ts - now_ms))

    def trouble(self, now_mono: float) -> list[str]:
        window = _CLOCK_WINDOW_S
        out: list[str] = []
        total = future = 0
        for t, n, f in reversed(self._batches):
            if now_mono - t > window:
                break
            total += n
            future += f
        if future >= 20 and future * 2 >= total:
            out.append(f"clock: {future} of {total} readings in the last {window:.0f} s were "
                       f"rejected as ts_in_future: check the edge's clock (NTP), or the "
                       "gateways'")
        recent = [a for t, a in self._samples if now_mono - t <= window]
        ahead = sorted(recent[-_CLOCK_SAMPLES:])
        if len(ahead) >= 20:
            low, median = ahead[len(ahead) // 10], ahead[len(ahead) // 2]
            limit = _CLOCK_AHEAD_MS
            if median >= limit and low >= limit / 2:
                out.append(f"clock: the most recent readings are stamped {median / 1000:.0f} s "
                           "ahead of the edge's clock: the edge's clock looks behind "
                           "(check NTP)")
        return out


class CenterWatch:
    """Turns the edge's state, looked at every second, into
    :class:`CenterEvent` records: only changes, ``edge_started`` first."""

    def __init__(self, spool_alert_share: float = 0.8, broker: BrokerKind = "mqtt") -> None:
        self._last: tuple[bool, bool, bool, bool] | None = None
        #: What the edge receives from ([source] kind), named in broker events.
        self.broker: BrokerKind = broker
        #: [spool] alert_share: filling from this share, ok again 5 points below.
        self.spool_alert_share = spool_alert_share
        self.filling = False

    @staticmethod
    def fill(used: int, cap: int, free: int | None) -> float:
        """How full the spool is toward its bound ``cap`` (0..1): its own
        bytes, or, when the disk has less room left than the spool's bound
        allows, the share the disk's free space leaves (the disk fills
        first)."""
        if cap <= 0:
            return 0.0
        share = used / cap
        if free is not None:
            share = max(share, 1.0 - free / cap)
        return min(1.0, max(0.0, share))

    def started(self, at_ms: int, detail: str = "") -> list[CenterEvent]:
        """The edge took its stages up and is about to connect."""
        self._last = (False, True, False, False)
        self.filling = False
        return [CenterEvent("edge_started", at_ms, detail)]

    def poll(self, *, connected: bool, influx_up: bool, replaying: bool, at_ms: int,
             detail: str = "", disk_full: bool = False,
             spool: tuple[int, int, int | None] | None = None) -> list[CenterEvent]:
        """``spool``: the spool's (bytes, max_bytes, free bytes of its disk)."""
        if self._last is None:
            return []
        was = self._last
        self._last = (connected, influx_up, replaying, disk_full)
        out: list[CenterEvent] = []
        if spool is not None:
            used, cap, free = spool
            share = self.fill(used, cap, free)
            limit = self.spool_alert_share - (0.05 if self.filling else 0.0)
            if (share >= limit) != self.filling:
                self.filling = not self.filling
                mb = f"spool {used / 2**20:.0f} of {cap / 2**20:.0f} MB" + (
                    "" if free is None else f", disk free {free / 2**20:.0f} MB")
                out.append(CenterEvent("spool_filling" if self.filling else "spool_ok", at_ms,
                                       mb, round(share * 100, 1)))
        if connected != was[0]:
            out.append(CenterEvent("broker_up" if connected else "broker_down", at_ms,
                                   broker=self.broker))
        if influx_up != was[1]:
            out.append(CenterEvent("influx_up" if influx_up else "influx_down", at_ms,
                                   "" if influx_up else detail))
        if replaying != was[2]:
            out.append(CenterEvent("replay_started" if replaying else "replay_done", at_ms))
        if disk_full != was[3]:
            out.append(CenterEvent("disk_full" if disk_full else "disk_ok", at_ms))
        return out


class HealthCheck:
    """Builds :class:`Health` from the parts, on each ``/healthz``."""

    def __init__(self, settings: HttpSection, *, source: EdgeSource, sink: Sink, batcher: Batcher,
                 validator: Validator, clock: ClockWatch,
                 stage_trouble: Callable[[], list[str]], version: str) -> None:
        self._s = settings
        self._source = source
        self._sink = sink
        self._batcher = batcher
        self._validator = validator
        self._clock = clock
        self._stage_trouble = stage_trouble
        self._version = version
        self._started = time.monotonic()
        #: The ingest state's write errors seen, and when the last one was.
        self._state_errors = 0
        self._state_error_at = 0.0

    def note_state_errors(self) -> None:
        errors = int(getattr(self._validator.state, "write_errors", 0) or 0)
        if errors > self._state_errors:
            self._state_errors = errors
            self._state_error_at = time.monotonic()

    def __call__(self) -> Health:
        now = time.monotonic()
        source, sink, spool = self._source, self._sink, self._sink.spool
        reasons: list[str] = []
        mqtt = source.trouble(now)
        if mqtt is not None:
            reasons.append(mqtt)
        reasons += sink.trouble()
        reasons += self._stage_trouble()
        age = self._batcher.oldest_pending_age()
        if age > self._s.stall_after_s:
            reasons.append(f"ingestion stalled: a message has waited {age:.0f} s")
        counters = self._validator.counters
        details = {
            **source.details(),
            "influx_up": not sink.influx_down,
            "pending_messages": self._batcher.pending_messages(),
            "oldest_pending_s": round(age, 1),
            "spool_lines": spool.lines,
            "spool_bytes": spool.bytes,
            "spool_dropped_lines": spool.dropped_lines,
            "disk_full": sink.disk_error is not None,
            "disk_free_bytes": spool.free_bytes(),
            "messages": counters.messages,
            "readings": counters.readings,
            "lines_written": sink.written,
            "uptime_s": round(now - self._started, 1),
            "version": self._version,
        }
        degraded = self._clock.trouble(now)
        self.note_state_errors()
        state = self._validator.state
        if state.unavailable is not None:
            degraded.append(f"ingest state unavailable ({state.unavailable}): "
                            "the edge runs from memory, a restart forgets id budgets, "
                            "unsynced clock offsets and status times")
        if self._state_error_at and now - self._state_error_at < 15:
            degraded.append(f"ingest state not saved ({self._state_errors} write errors, "
                            f"{spool.free_bytes()} bytes free): the edge goes on from "
                            "memory, a restart forgets what it learnt meanwhile")
        return Health(ok=not reasons and not degraded, reasons=reasons, details=details,
                      degraded=degraded)
