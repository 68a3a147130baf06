"""The one owner of the open batch.

The batcher's task takes messages from the source's inbox, has each
validated (:class:`~farmedge.edge.validate.Verdict`), and merges the verdict
into the open :class:`Batch`. Nothing else appends to it: other points (the
edge's own metrics, the registry's gateways, alert records) and the lines
InfluxDB refused are handed in with :meth:`Batcher.add_points` and
:meth:`Batcher.add_refused`, queued, and merged by the batcher's task.

A batch is shipped (handed to the delivery loop) when it holds
``batch_size`` lines, or when its oldest line is ``flush_interval_s`` old,
or ``linger_s`` old while the writer has nothing to do. At most two shipped
batches wait for the writer; the batcher waits behind them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from farmedge.logs import get_logger
from farmedge.records import Accepted, StatusEvent
from farmedge.storage.settings import InfluxSection
from farmedge.transport.mqtt import Inbound

from .sink import Refused
from .source import EdgeSource
from .validate import Validator

__all__ = ["Batch", "Batcher"]


@dataclass(slots=True)
class Batch:
    """Lines waiting to be written, and the messages they acknowledge."""

    #: Reading lines.
    readings: list[str] = field(default_factory=list)
    #: Every other line: dead letters, gateway status, the edge's own points,
    #: alert records.
    points: list[str] = field(default_factory=list)
    messages: list[Inbound] = field(default_factory=list)
    accepted: list[Accepted] = field(default_factory=list)
    statuses: list[StatusEvent] = field(default_factory=list)
    #: Readings its messages held (accepted or not).
    n_readings: int = 0
    created_mono: float = field(default_factory=time.monotonic)

    def lines(self) -> list[str]:
        """Readings first, then the other points."""
        return self.readings + self.points if self.points else self.readings

    def __bool__(self) -> bool:
        return bool(self.readings or self.points or self.messages)


#: Contained failures go here: (where, exception, topic).
OnInternal = Callable[[str, Exception, str], None]


class Batcher:
    def __init__(self, settings: InfluxSection, *, source: EdgeSource, validator: Validator,
                 on_internal: OnInternal) -> None:
        self._s = settings
        self._source = source
        self._validator = validator
        self._on_internal = on_internal
        self._log = get_logger("farmedge.edge.batcher")
        self._batch = Batch()
        self._extra: list[str] = []
        self._refused: list[Refused] = []
        self._ready: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=2)
        self._queued: deque[Batch] = deque()  # what _ready holds, for health
        self._writing: Batch | None = None
        self._wake = source.arrived
        #: No more messages: ship whatever is there at once.
        self._stopping = False
        #: No more anything: ship the rest and end.
        self._closing = False
        self._delivered = asyncio.Event()

    # -- handed in by other tasks ----------------------------------------
    def add_points(self, lines: list[str]) -> None:
        """Lines other than readings, for the next batch (any task)."""
        self._extra.extend(lines)
        self._wake.set()

    def add_refused(self, refused: list[Refused]) -> None:
        """Lines InfluxDB refused: dead-lettered in the next batch."""
        self._refused.extend(refused)
        self._wake.set()

    # -- the delivery loop's side ------------------------------------------
    async def next(self) -> Batch | None:
        """The next shipped batch (None: the batcher has ended). Call
        :meth:`delivered` when it is done with."""
        batch = await self._ready.get()
        if batch is not None:
            self._queued.popleft()
            self._writing = batch
        return batch

    def delivered(self) -> None:
        self._writing = None
        self._wake.set()  # the batch being filled may go now
        self._delivered.set()

    # -- stopping ----------------------------------------------------------
    def stop_messages(self) -> None:
        """The source takes no more messages: ship what comes at once."""
        self._stopping = True
        self._wake.set()

    def close(self) -> None:
        """Ship what is left and end (after the stages are closed, so that
        their last records go too)."""
        self._stopping = self._closing = True
        self._wake.set()

    async def drain(self, within_s: float) -> None:
        """Wait (at most ``within_s``) until :meth:`idle`."""
        deadline = time.monotonic() + within_s
        while not self.idle() and (left := deadline - time.monotonic()) > 0:
            self._delivered.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._delivered.wait(), min(left, 0.5))

    def idle(self) -> bool:
        """Nothing received is waiting: not in the inbox, the batch, the
        queue, or the writer."""
        return (not self._source.inbox and not self._batch and not self._extra
                and not self._refused and not self._queued and self._writing is None)

    # -- what is pending, for health ---------------------------------------
    def pending_messages(self) -> int:
        n = len(self._source.inbox) + len(self._batch.messages)
        if self._writing is not None:
            n += len(self._writing.messages)
        for b in self._queued:
            n += len(b.messages)
        return n

    def oldest_pending_age(self) -> float:
        candidates: list[float] = []
        for b in (self._writing, *self._queued, self._batch):
            if b is not None and b.messages:
                candidates.append(b.messages[0].received_mono)
        inbox = self._source.oldest_mono()
        if inbox is not None:
            candidates.append(inbox)
        return time.monotonic() - min(candidates) if candidates else 0.0

    # -- the batcher's task ------------------------------------------------
    def _flush_after(self) -> float:
        """How old the current batch may grow: flush_interval_s, or linger_s
        while the writer has nothing to do."""
        s = self._s
        if s.linger_s and self._writing is None and not self._queued:
            return min(s.linger_s, s.flush_interval_s)
        return s.flush_interval_s

    async def _ship(self) -> None:
        batch, self._batch = self._batch, Batch()
        # The times of its dead letters are on disk before they reach
        # InfluxDB, so a redelivery after a crash finds them (state.py).
        self._validator.state.flush()
        self._queued.append(batch)
        await self._ready.put(batch)

    def _merge_extra(self) -> None:
        b = self._batch
        if not b:
            b.created_mono = time.monotonic()
        if self._extra:
            b.points.extend(self._extra)
            self._extra = []
        if self._refused:
            refused, self._refused = self._refused, []
            for r in refused:
                if r.line.startswith("ingest_errors,"):
                    self._log.error("influx.dead_letter_refused", error=r.error[:300],
                                    line=r.line[:300])
                    continue
                b.points.append(self._validator.dead_letter_line(
                    self._validator.refused(r.line, r.status, r.error)))

    def _take(self, msg: Inbound) -> None:
        """Validate one message into the batch; a failure is contained to it."""
        b = self._batch
        validator = self._validator
        try:
            v = validator.validate(msg)
        except Exception as exc:
            # What it would have added is simply not merged.
            b.messages.append(msg)
            self._on_internal("ingest", exc, msg.topic)
            try:
                b.points.append(validator.dead_letter_line(validator.internal(msg, exc)))
            except Exception as exc2:  # the dead-letter path itself is broken
                self._on_internal("dead_letter", exc2, msg.topic)
            return
        b.messages.append(msg)
        if v.lines:
            b.readings += v.lines
        if v.points:
            b.points += v.points
        for rej in v.rejected:
            b.points.append(validator.dead_letter_line(rej))
        if v.accepted is not None:
            b.accepted.append(v.accepted)
        if v.status is not None:
            b.statuses.append(v.status)
        b.n_readings += v.n_readings

    async def run(self) -> None:
        s = self._s
        source = self._source
        inbox = source.inbox
        wake = self._wake
        while True:
            if not inbox:
                if self._extra or self._refused:
                    self._merge_extra()
                if self._closing:
                    break
                timeout = None
                if self._batch:
                    age = time.monotonic() - self._batch.created_mono
                    timeout = max(0.0, self._flush_after() - age)
                if timeout is None or timeout > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), timeout)
                wake.clear()
                if self._extra or self._refused:
                    self._merge_extra()
            n = 0
            batch_size = s.batch_size
            take, put = source.take, self._take
            while inbox:
                b = self._batch
                if not b.messages and not b.readings and not b.points:
                    b.created_mono = time.monotonic()
                put(take())
                n += 1
                if len(b.readings) + len(b.points) >= batch_size:
                    await self._ship()
                elif n % 250 == 0:
                    await asyncio.sleep(0)  # let acks, health and timers run
            b = self._batch
            if b and (time.monotonic() - b.created_mono >= self._flush_after()
                      or self._stopping):
                await self._ship()
        if self._batch:
            await self._ship()
        await self._ready.put(None)
