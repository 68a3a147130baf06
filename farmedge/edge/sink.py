"""The edge's write policy over farmedge/storage: make lines durable.

A batch's lines go to InfluxDB (:class:`farmedge.storage.influx.InfluxWriter`)
with retries and capped, jittered back-off (honouring ``Retry-After``) for up
to ``retry_for_s``; a 413 splits the batch; lines InfluxDB refuses (400) come
back to the caller as :class:`Refused` records (the batcher dead-letters
them); 401/403/404, or a write still failing at the deadline, puts the lines
in the spool (:class:`farmedge.storage.spool.Spool`), and later batches go
straight there until InfluxDB answers again. While the spool's disk is full
the batch is held (not durable, so its messages are not acknowledged), and
the spool and InfluxDB are tried again in turn. The replay loop writes the
spooled batches back, oldest first.

A batch's lines are its readings first, then its other points; the spool
keeps how many are readings, so replay counts the readings it wrote without
reading the lines. docs/edge.md, "InfluxDB failures".
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from farmedge.backoff import jittered
from farmedge.disk import is_disk_full
from farmedge.logs import Throttle, get_logger
from farmedge.storage.influx import WriteKind, WriteResult
from farmedge.storage.schema import READING_MEASUREMENTS
from farmedge.storage.settings import InfluxSection
from farmedge.storage.spool import Spool, SpooledBatch

from .errors import EdgeError
from .metrics import EdgeMetrics

__all__ = ["Delivery", "Refused", "Sink", "Writer"]


class Writer(Protocol):
    """What the sink needs of a writer: :class:`farmedge.storage.influx.InfluxWriter`
    (a fake in the unit tests)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def write(self, body: bytes) -> WriteResult: ...

    async def ping(self) -> bool: ...

    async def ensure_database(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Refused:
    """A line InfluxDB refused (400/422, or 413 for a single line)."""

    line: str
    status: int
    error: str


@dataclass(slots=True)
class Delivery:
    """What became of a batch's lines."""

    #: In InfluxDB or in the spool (False: the edge stopped while the disk was
    #: full; the messages are not acknowledged and the broker keeps them).
    durable: bool
    refused: list[Refused] = field(default_factory=list)


#: Only the batches spooled by an earlier version, which did not record how
#: many of their lines are readings, are counted by looking at the lines.
_READINGS = tuple(f"{m}," for m in READING_MEASUREMENTS)


def _legacy_readings(lines: list[str]) -> int:
    return sum(1 for x in lines if x.startswith(_READINGS))


Ranges = list[tuple[int, int]]


class Sink:
    def __init__(self, settings: InfluxSection, *, writer: Writer, spool: Spool,
                 metrics: EdgeMetrics, spool_max_mb: float = 0.0, hold: bool = False) -> None:
        self._s = settings
        #: Hold a batch InfluxDB cannot take, instead of spooling it, until
        #: InfluxDB takes it ([source] ack_when = "influx": the stream keeps
        #: the backlog, so a dead edge strands nothing in its spool).
        self.hold = hold
        self.writer = writer
        self.spool = spool
        self._m = metrics
        self._spool_max_mb = spool_max_mb
        self._log = get_logger("farmedge.edge.sink")
        self._throttle = Throttle()
        #: Set when the service stops: a held batch is then given up.
        self.stopping = False
        self.influx_down = False
        self.influx_error = ""
        #: InfluxDB refused the credentials, database or bucket (401/403/404).
        self.auth_alarm = ""
        self.last_write_ok = 0.0
        #: Why the spool cannot take a batch now (disk full), or None.
        self.disk_error: str | None = None
        self._disk_since = 0.0
        #: Totals for the `edge` self-metrics point.
        self.written = 0
        self.spooled = 0
        self.latency_ms: deque[float] = deque(maxlen=2048)

    # -- lifespan --------------------------------------------------------
    async def start(self) -> None:
        """Raises EdgeError when the spool cannot be opened."""
        try:
            await asyncio.to_thread(self.spool.open)
        except OSError as exc:
            raise EdgeError(f"the spool at {self.spool.dir} cannot be opened: "
                            f"{exc.strerror or exc}") from exc
        if self.spool.lines:
            self._log.info("spool.found", lines=self.spool.lines, batches=self.spool.batches)
        await self.writer.start()
        if not await self.writer.ensure_database():
            self._log.warning("influx.create_database_failed", database=self._s.database)

    async def close(self) -> None:
        await self.writer.close()
        self.spool.close()

    # -- delivery ----------------------------------------------------------
    async def deliver(self, lines: list[str], readings: int, n_readings: int) -> Delivery:
        """Make ``lines`` durable; the first ``readings`` of them are
        readings. ``n_readings`` is what the written counter counts when the
        batch goes to InfluxDB whole."""
        out = Delivery(True)
        if not lines:
            return out
        if self.influx_down:
            left: Ranges = [(0, len(lines))]
        else:
            left = await self._write(lines, 0, len(lines),
                                     time.monotonic() + self._s.retry_for_s, out.refused)
        if not left:
            self._m.readings_written.inc(n_readings)
            return out
        self._m.readings_written.inc(readings - _overlap(left, readings))
        if self.hold:
            out.durable = await _hold(self, lines, readings, left, out.refused)
        else:
            out.durable = await self._spool_or_hold(lines, readings, left, out.refused)
        return out

    async def _spool_or_hold(self, lines: list[str], readings: int, left: Ranges,
                             refused: list[Refused]) -> bool:
        """Make what is ``left`` of ``lines`` durable in the spool. While the
        disk is full (or the spool cannot be written), hold it: its messages
        are not acknowledged, so processing stops behind this batch and the
        broker keeps what comes next; retry the spool, and InfluxDB (which
        needs no disk), until one of them takes the lines. Returns False when
        the service stops meanwhile (the broker redelivers them)."""
        delay = 0.25
        while True:
            rest = [x for lo, hi in left for x in lines[lo:hi]]
            try:
                await self._to_spool(rest, _overlap(left, readings))
            except OSError as exc:
                self._disk_trouble(exc)
            else:
                self._disk_ok()
                return True
            if self.stopping:
                return False
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)
            if not self.influx_down or await self.writer.ping():
                deadline = time.monotonic() + self._s.retry_for_s
                before = _overlap(left, readings)
                again: Ranges = []
                for lo, hi in left:
                    again += await self._write(lines, lo, hi, deadline, refused)
                left = again
                self._m.readings_written.inc(before - _overlap(left, readings))
                if not left:
                    self._disk_ok()
                    return True

    async def _to_spool(self, lines: list[str], readings: int) -> None:
        dropped = await self.spool.append(lines, readings=readings)
        self.spooled += len(lines)
        self._m.spooled_lines.inc(len(lines))
        if dropped:
            self._m.spool_dropped.inc(dropped)
            self._log.error("spool.full_dropped_oldest", dropped_lines=dropped,
                            total_dropped=self.spool.dropped_lines, max_mb=self._spool_max_mb)
        self.update_gauges()

    def update_gauges(self) -> None:
        self._m.spool_depth.set(self.spool.lines)
        self._m.spool_bytes.set(self.spool.bytes)

    def _disk_trouble(self, exc: OSError) -> None:
        free = self.spool.free_bytes()
        full = is_disk_full(exc)
        what = "disk full" if full else "spool cannot be written"
        reason = (f"{what}: {exc.strerror or exc} ({free if free is not None else '?'} bytes "
                  f"free at {self.spool.dir}); not acknowledging messages, the broker "
                  "holds them")
        if self.disk_error is None:
            self._log.error("spool.disk_full" if full else "spool.write_failed",
                            error=f"{type(exc).__name__}: {exc}"[:300], free_bytes=free,
                            path=str(self.spool.dir))
            self._disk_since = time.monotonic()
        self.disk_error = reason
        self._m.disk_full.set(1)
        if free is not None:
            self._m.disk_free.set(free)

    def _disk_ok(self) -> None:
        if self.disk_error is not None:
            self._log.info("spool.disk_available_again",
                           seconds=round(time.monotonic() - self._disk_since, 1),
                           free_bytes=self.spool.free_bytes())
            self.disk_error = None
            self._m.disk_full.set(0)

    # -- InfluxDB ----------------------------------------------------------
    def backoff(self, attempt: int, retry_after: float | None) -> float:
        s = self._s
        delay = jittered(attempt, s.backoff_min_s, s.backoff_max_s)
        if retry_after is not None:
            delay = max(delay, min(retry_after, s.backoff_max_s * 4))
        return delay

    def mark_down(self, error: str) -> None:
        if not self.influx_down:
            self._log.error("influx.unavailable_spooling", error=error[:300],
                            holding=self.hold)
        self.influx_down = True
        self.influx_error = error
        self._m.influx_up.set(0)

    def _mark_up(self) -> None:
        if self.influx_down:
            self._log.info("influx.available_again", spool_lines=self.spool.lines)
        self.influx_down = False
        self.influx_error = ""
        self.last_write_ok = time.monotonic()
        self._m.influx_up.set(1)

    async def _write(self, lines: list[str], lo: int, hi: int, deadline: float,
                     refused: list[Refused]) -> Ranges:
        """Write ``lines[lo:hi]``; returns the ranges that could not be
        written before ``deadline`` (for the spool). Lines InfluxDB refuses
        are added to ``refused``; 413 splits the batch."""
        m = self._m
        body = "\n".join(lines[lo:hi]).encode()
        attempt = 0
        while True:
            res = await self.writer.write(body)
            if res.elapsed_s:
                m.write_latency.observe(res.elapsed_s)
                self.latency_ms.append(res.elapsed_s * 1000)
            if res.ok:
                m.batch_size.observe(hi - lo)
                self.written += hi - lo
                self._mark_up()
                self.auth_alarm = ""
                return []
            m.write_failures.labels(str(res.status)).inc()
            if res.kind in (WriteKind.TOO_LARGE, WriteKind.REJECTED):
                if hi - lo > 1:
                    mid = lo + (hi - lo) // 2
                    left = await self._write(lines, lo, mid, deadline, refused)
                    return left + await self._write(lines, mid, hi, deadline, refused)
                refused.append(Refused(lines[lo], res.status, res.error))
                self._mark_up()
                return []
            if res.kind is WriteKind.AUTH:
                alarm = f"InfluxDB answered {res.status}: {res.error[:200]}"
                if self.auth_alarm != alarm:
                    self._log.error("influx.refused", status=res.status, error=res.error,
                                    hint="check [influx] credentials, database or bucket")
                self.auth_alarm = alarm
                self.mark_down(alarm)
                return [(lo, hi)]
            # transient: retry with capped, jittered back-off until the deadline
            delay = self.backoff(attempt, res.retry_after_s)
            if time.monotonic() + delay > deadline:
                self.mark_down(f"{res.status or 'network'}: {res.error}")
                return [(lo, hi)]
            self._log.warning("influx.retry", status=res.status, error=res.error[:200],
                              attempt=attempt + 1, delay_s=round(delay, 2))
            attempt += 1
            await asyncio.sleep(delay)

    async def probe(self) -> None:
        """When nothing was written for 10 s: is InfluxDB still there?"""
        if not self.influx_down and time.monotonic() - self.last_write_ok > 10:
            if await self.writer.ping():
                self.last_write_ok = time.monotonic()
                self._m.influx_up.set(1)
            else:
                self.mark_down("InfluxDB does not answer /ping")

    # -- replay ------------------------------------------------------------
    async def replay(self, on_refused: Callable[[list[Refused]], None]) -> None:
        """Write the spool back, oldest batch first, for as long as the
        service runs. Lines InfluxDB refuses go to ``on_refused``."""
        progress = _Progress(self._log)
        attempt = 0
        spool = self.spool
        while True:
            if not spool.lines:
                progress.done()
                spool.changed.clear()
                await spool.changed.wait()
                continue
            if self.influx_down:
                await asyncio.sleep(self.backoff(attempt, None))
                attempt += 1
                # After a 401/403/404 try a batch anyway: the credentials or
                # the database may have been fixed in InfluxDB meanwhile.
                if not self.auth_alarm and not await self.writer.ping():
                    continue
            try:
                batch = await spool.oldest()
            except OSError as exc:
                await self._replay_trouble(exc)
                continue
            if batch is None:
                await asyncio.sleep(0.5)  # counts out of step: never spin
                continue
            progress.start(spool)
            refused: list[Refused] = []
            left = await self._write(batch.lines, 0, len(batch.lines),
                                     time.monotonic() + self._s.retry_for_s, refused)
            if refused:
                on_refused(refused)
            if left:
                continue
            attempt = 0
            try:
                await spool.delete(batch.id)
            except OSError as exc:  # written, not forgotten: replayed again, same points
                await self._replay_trouble(exc)
                continue
            self._m.readings_written.inc(_readings_of(batch))
            self.update_gauges()
            progress.step(len(batch.lines), spool)

    async def _replay_trouble(self, exc: OSError) -> None:
        if self._throttle.allow(("replay", type(exc).__name__)) is not None:
            self._log.error("spool.replay_io_error", error=f"{type(exc).__name__}: {exc}"[:300],
                            path=str(self.spool.dir))
        await asyncio.sleep(1.0)

    # -- health ------------------------------------------------------------
    def trouble(self) -> list[str]:
        """Why /healthz should answer 503, as far as writing goes."""
        out: list[str] = []
        if self.auth_alarm:
            out.append(self.auth_alarm)
        elif self.influx_down:
            out.append(f"InfluxDB unavailable, spooling: {self.influx_error[:200]}")
        if self.disk_error is not None:
            out.append(self.disk_error)
        return out


async def _hold(sink: Sink, lines: list[str], readings: int, left: Ranges,
                refused: list[Refused]) -> bool:
    """Try InfluxDB again (after its /ping answers) until it takes what
    is ``left`` of ``lines``; processing waits behind this batch
    meanwhile. Returns False when the service stops first (the messages
    are not acknowledged: the stream delivers them again)."""
    delay = 0.25
    while True:
        if sink.stopping:
            return False
        await asyncio.sleep(delay)
        delay = min(5.0, delay * 2)
        if sink.influx_down and not await sink.writer.ping():
            continue
        deadline = time.monotonic() + sink._s.retry_for_s
        before = _overlap(left, readings)
        again: Ranges = []
        for lo, hi in left:
            again += await sink._write(lines, lo, hi, deadline, refused)
        left = again
        sink._m.readings_written.inc(before - _overlap(left, readings))
        if not left:
            return True


def _readings_of(batch: SpooledBatch) -> int:
    return batch.readings if batch.readings is not None else _legacy_readings(batch.lines)


def _overlap(ranges: Ranges, readings: int) -> int:
    """How many lines of ``ranges`` are among the first ``readings``."""
    return sum(max(0, min(hi, readings) - lo) for lo, hi in ranges)


class _Progress:
    """``spool.replay_start`` / ``_progress`` (every 5 s) / ``_done``."""

    def __init__(self, log: Any) -> None:
        self._log = log
        self.started_lines = 0
        self.started_at = 0.0
        self.lines = 0
        self.logged_at = 0.0

    def start(self, spool: Spool) -> None:
        if not self.started_lines:
            self.started_lines = spool.lines
            self.started_at = time.monotonic()
            self._log.info("spool.replay_start", lines=spool.lines,
                           batches=spool.batches)

    def step(self, n: int, spool: Spool) -> None:
        self.lines += n
        now = time.monotonic()
        if now - self.logged_at < 5:
            return
        self.logged_at = now
        rate = self.lines / max(1e-6, now - self.started_at)
        total = self.lines + spool.lines
        self._log.info(
            "spool.replay_progress", done=self.lines, remaining=spool.lines,
            percent=round(100 * self.lines / max(1, total), 1), lines_per_s=round(rate),
            eta_s=round(spool.lines / rate) if rate else None)

    def done(self) -> None:
        if self.started_lines:
            self._log.info("spool.replay_done", lines=self.lines,
                           seconds=round(time.monotonic() - self.started_at, 1))
            self.started_lines = self.lines = 0
