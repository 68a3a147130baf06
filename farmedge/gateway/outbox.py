"""The durable outbox: every reading goes into SQLite before it is sent, and
leaves it only once the broker acknowledged it (PUBACK).

SD cards wear under small frequent writes, so the outbox keeps one write
transaction open and commits it every ``commit_interval_s`` (WAL mode,
``synchronous=NORMAL``: a commit is an append to the WAL, synced to flash
only at checkpoints). A power cut or SIGKILL loses the readings of the last
interval at most; what was committed survives and is sent exactly as stored.

The outbox is bounded by an estimate of its size and by age; when full, the
oldest readings are dropped and counted (persisted across restarts).

A full SD card (SQLITE_FULL, ENOSPC) is the same case: the outbox stops
taking readings (``full`` is true, the agent says so in its status), counts
those it could not keep in ``dropped`` (the readings taken since the last
commit too: that transaction cannot be committed), and, at each commit
while full, tries whether there is room again (a small write); then it takes
readings again. It never raises for a full disk, so no task of the agent
stops on it. Any other SQLite failure is an
:class:`~farmedge.gateway.errors.OutboxError` (the file itself is
:mod:`~farmedge.gateway.outbox_db`).
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from farmedge.contract import Quality
from farmedge.logs import get_logger

from .errors import OutboxError
from .outbox_db import DiskFull, OutboxDb

__all__ = ["NewRow", "Outbox", "OutboxStats", "Row"]

_QUALITY = (Quality.OK, Quality.SUSPECT, Quality.ERROR)
_QCODE = {q: i for i, q in enumerate(_QUALITY)}
#: Per-row overhead in the size estimate (rowid, numbers, record header, index).
ROW_OVERHEAD = 48
SEQ_BLOCK = 1000
#: While full, try again once at least this much is free.
RESUME_FREE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class NewRow:
    sensor: str
    kind: str
    unit: str
    value: float
    quality: Quality
    animal: str | None
    ts: int
    mono: int
    synced: bool

    def wire(self) -> dict[str, object]:
        """The reading as the contract's encoders take it."""
        return _wire(self)


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    sensor: str
    kind: str
    unit: str
    value: float
    quality: Quality
    animal: str | None
    ts: int
    mono: int
    boot: int
    synced: bool
    size: int

    def wire(self) -> dict[str, object]:
        return _wire(self)


def _wire(r: NewRow | Row) -> dict[str, object]:
    d: dict[str, object] = {"sensor": r.sensor, "kind": r.kind, "ts": r.ts, "value": r.value,
                            "unit": r.unit}
    if r.quality is not Quality.OK:
        d["quality"] = r.quality.value
    if r.animal is not None:
        d["animal"] = r.animal
    return d


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    bytes: int
    oldest_ts: int | None
    dropped: int
    #: The disk is full: readings are not being kept.
    full: bool = False


def _size(r: NewRow) -> int:
    return (ROW_OVERHEAD + len(r.sensor) + len(r.kind) + len(r.unit)
            + (len(r.animal) if r.animal else 0))


@dataclass(slots=True)
class _Ledger:
    """Which reading ids the open transaction holds, so that a transaction
    lost to a full disk is counted right: its readings the uplink has
    published are on their way, the others are lost, and none of their ids
    is used again."""

    #: sqlite_sequence of ``reading`` at the last commit: the open
    #: transaction's readings have the ids after it.
    committed: int = 0
    #: Readings added in the open transaction.
    tx_rows: int = 0
    #: The highest reading id the uplink has published (mark_sent).
    sent_max: int = 0
    #: The highest reading id that may have been used (never reused).
    id_high: int = 0

    def added(self, n: int) -> None:
        self.tx_rows += n
        self.id_high = max(self.id_high, self.committed + self.tx_rows)

    def commit(self) -> None:
        self.committed += self.tx_rows
        self.tx_rows = 0

    def lose(self, also_lost: int) -> int:
        """The open transaction is given up; how many readings are lost."""
        start = self.committed
        handed = max(0, min(self.sent_max, start + self.tx_rows) - start)
        lost = self.tx_rows - handed + also_lost
        self.id_high = max(self.id_high, start + self.tx_rows + also_lost, self.sent_max)
        self.tx_rows = 0
        return lost

    def resumed(self) -> None:
        self.committed = max(self.committed, self.id_high)


class Outbox:
    """``open()`` it, ``add()`` readings, ``commit()`` every few seconds,
    ``peek()`` the oldest, ``delete()`` what the broker acknowledged."""

    def __init__(self, path: Path | str, *, max_bytes: int = 64 * 2**20,
                 max_age_ms: int = 30 * 86_400_000) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_age_ms = max_age_ms
        self.file = OutboxDb(self.path)
        self.depth = 0
        self.bytes = 0
        self.dropped = 0
        self.unsynced = 0
        self._seq = 0
        self._seq_reserved = 0
        self._boots: dict[str, int] = {}
        #: True while the disk is full: readings are counted in ``dropped``,
        #: not kept.
        self.full = False
        self._ids = _Ledger()
        self._log = get_logger("farmedge.gateway.outbox")

    # -- life cycle ---------------------------------------------------------

    def open(self) -> Outbox:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(f"{self.path.parent}: {exc.strerror or exc}") from None
        try:
            self._open(exclusive=False)
        except OutboxError:
            if _free_bytes(self.path.parent) >= RESUME_FREE_BYTES:
                raise
            # A full SD card (after a power cut, say): WAL mode needs a new
            # shared-memory file, which cannot be made. In exclusive locking
            # mode SQLite keeps that index in memory, so the outbox opens,
            # full, and sends what it holds; nothing else reads it meanwhile.
            self._open(exclusive=True)
            self.full = True
            self._log.error("gateway.outbox_full", at_start=True, path=str(self.path),
                            depth=self.depth)
        return self

    def _open(self, *, exclusive: bool) -> None:
        f = self.file
        f.open(exclusive=exclusive)
        try:
            self.depth, self.bytes, self.unsynced = f.counts()
            meta = f.meta()
            self.dropped = meta.get("dropped", 0)
            # Sequence numbers are reserved in blocks, so a crash can skip
            # numbers (a gap the edge sees) but never repeat one; a clean
            # stop keeps the exact next one here (close()).
            self._seq = self._seq_reserved = meta.get("seq_reserved", 0)
            self._boots = f.boots()
            last = f.last_reading_id()
            self._ids = _Ledger(committed=last, id_high=last)
        except OutboxError:
            f.close()
            raise

    def close(self) -> None:
        """Commit and close, keeping the exact next ``seq`` (a restart: no gap)."""
        if self.file.is_open:
            if not self.full and self._seq != self._seq_reserved:
                self._reserve(self._seq)
            self.commit()
            self.file.close()

    @property
    def is_open(self) -> bool:
        return self.file.is_open

    @property
    def db(self) -> sqlite3.Connection:  # to look at the file; write through the methods
        return self.file.connection

    # -- writing ------------------------------------------------------------

    def boot_key(self, boot_id: str) -> int:
        """The key of ``boot_id`` (-1, matching no reading, while the disk is
        full and it is new)."""
        key = self._boots.get(boot_id)
        if key is None:
            if self.full:
                return -1
            try:
                self.file.begin()
                cur = self.file.execute("INSERT INTO boot (boot_id) VALUES (?)", (boot_id,))
            except DiskFull as exc:
                self._disk_full(exc)
                return -1
            key = self._boots[boot_id] = int(cur.lastrowid or 0)
        return key

    def add(self, rows: Sequence[NewRow], boot_id: str) -> None:
        if not rows:
            return
        if self.full:
            self.dropped += len(rows)
            return
        boot = self.boot_key(boot_id)
        if boot < 0:  # the disk filled just now
            self.dropped += len(rows)
            return
        sizes = [_size(r) for r in rows]
        try:
            self.file.begin()
            self.file.executemany(
                "INSERT INTO reading (sensor, kind, unit, value, quality, animal, ts, mono, boot,"
                " synced, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.sensor, r.kind, r.unit, float(r.value), _QCODE[r.quality], r.animal, r.ts,
                  r.mono, boot, int(r.synced), s) for r, s in zip(rows, sizes, strict=True)])
        except DiskFull as exc:
            self._disk_full(exc, also_lost=len(rows))
            return
        self._ids.added(len(rows))
        self.depth += len(rows)
        self.bytes += sum(sizes)
        self.unsynced += sum(1 for r in rows if not r.synced)

    # -- a full disk ----------------------------------------------------------

    def _disk_full(self, exc: BaseException, *, also_lost: int = 0) -> None:
        """The disk is full: give up the open transaction (it cannot commit),
        count its readings and ``also_lost`` as dropped, and stop taking
        readings until there is room again."""
        lost = self._ids.lose(also_lost)
        self.file.rollback()
        self.dropped += lost
        self._recount()
        self._boots = self.file.boots()
        if not self.full:
            self._log.error("gateway.outbox_full", error=str(exc), lost=lost,
                            dropped_total=self.dropped, path=str(self.path))
        self.full = True

    def _try_resume(self) -> None:
        free = _free_bytes(self.path.parent)
        if free < RESUME_FREE_BYTES:
            return
        f = self.file
        try:
            f.begin()  # deletes of acknowledged readings may be waiting in it
            f.set_meta("dropped", self.dropped)
            # Ids of the readings given up are never used again: the uplink
            # may have passed them already.
            f.raise_reading_id(self._ids.id_high)
            f.commit()
        except DiskFull:
            f.rollback()
            self._recount()
            return
        except OutboxError:
            f.rollback()
            raise
        self.full = False
        self._ids.resumed()
        self._log.warning("gateway.outbox_room_again", free_bytes=free,
                          dropped_total=self.dropped)

    def delete(self, rows: Iterable[Row]) -> None:
        """Forget readings the broker acknowledged (durable at the next commit).
        On a full disk they stay, sent again (the edge stores a reading once)."""
        rows = list(rows)
        if not rows:
            return
        try:
            self.file.begin()
            n = self.file.delete_ids([r.id for r in rows])
        except DiskFull as exc:
            self._disk_full(exc)
            return
        if n == len(rows):
            self.depth -= n
            self.bytes -= sum(r.size for r in rows)
            self.unsynced -= sum(1 for r in rows if not r.synced)
        else:  # some were dropped meanwhile: recount
            self._recount()

    def discard(self, rows: Iterable[Row]) -> None:
        """Drop readings that can never be sent, counted in ``dropped``."""
        ids = [r.id for r in rows]
        if not ids or self.full:
            return
        try:
            self.file.begin()
            self.dropped += self.file.delete_ids(ids)
            self.file.set_meta("dropped", self.dropped)
        except DiskFull as exc:
            self._disk_full(exc)
            return
        self._recount()

    def _recount(self) -> None:
        self.depth, self.bytes, self.unsynced = self.file.counts()

    def correct_clock(self, boot_id: str, now_wall_ms: int, now_mono_ms: int) -> int:
        """Re-date readings of this boot taken before the clock was set."""
        if not self.unsynced:
            return 0
        boot = self.boot_key(boot_id)
        if self.full:
            return 0
        try:
            self.file.begin()
            cur = self.file.execute(
                "UPDATE reading SET ts = ? - (? - mono), synced = 1 WHERE synced = 0 AND boot = ?",
                (now_wall_ms, now_mono_ms, boot))
        except DiskFull as exc:
            self._disk_full(exc)
            return 0
        self.unsynced -= cur.rowcount
        return int(cur.rowcount)

    def next_seq(self) -> int:
        if self._seq >= self._seq_reserved and not self.full:
            self._reserve(self._seq + SEQ_BLOCK)
        # While the disk is full, numbers go on unreserved: after a crash the
        # edge may count a repeat (a duplicate), it loses nothing.
        self._seq += 1
        return self._seq - 1

    def _reserve(self, upto: int) -> None:  # the first seq not to use again
        try:
            self.file.begin()
            self.file.set_meta("seq_reserved", upto)
        except DiskFull as exc:
            self._disk_full(exc)
            return
        self.commit()
        if not self.full:
            self._seq_reserved = upto

    def enforce_bounds(self, now_wall_ms: int | None) -> int:
        """Drop the oldest readings beyond the size bound, and those older than
        the age bound (judged only when the clock is set); how many."""
        dropped = 0
        if self.full:
            return 0
        f = self.file
        try:
            while self.bytes > self.max_bytes and self.depth > 0:
                avg = max(1, self.bytes // max(1, self.depth))
                excess = max(1, (self.bytes - int(self.max_bytes * 0.95)) // avg)
                last = f.nth_oldest_id(min(excess, self.depth) - 1)
                if last is None:
                    break
                dropped += self._drop_through(last)
            if now_wall_ms is not None:
                while self.depth > 0:
                    last = f.last_expired_id(now_wall_ms - self.max_age_ms)
                    if last is None:
                        break
                    dropped += self._drop_through(last)
        except DiskFull as exc:
            self._disk_full(exc)
        return dropped

    def _drop_through(self, last_id: int) -> int:
        f = self.file
        f.begin()
        n, size, unsynced = f.delete_through(last_id)
        self.depth -= n
        self.bytes -= size
        self.unsynced -= unsynced
        self.dropped += n
        f.set_meta("dropped", self.dropped)
        return n

    def commit(self) -> None:
        if self.full:
            self._try_resume()
            return
        if self.file.in_transaction:
            try:
                self.file.commit()
            except DiskFull as exc:
                self._disk_full(exc)
                return
            self._ids.commit()

    # -- reading ------------------------------------------------------------

    def peek(self, after_id: int, limit: int) -> list[Row]:
        """The oldest ``limit`` readings with an id above ``after_id``."""
        return [Row(i, s, k, u, v, _QUALITY[q], a, t, m, b, bool(sy), sz)
                for i, s, k, u, v, q, a, t, m, b, sy, sz in self.file.readings(after_id, limit)]

    def mark_sent(self, last_id: int) -> None:
        """The uplink has published the readings up to ``last_id``: if the
        disk fills before they are committed, they are on their way, not lost."""
        self._ids.sent_max = max(self._ids.sent_max, last_id)

    def stats(self) -> OutboxStats:
        old = self.peek(0, 1)
        return OutboxStats(self.depth, self.bytes, old[0].ts if old else None, self.dropped,
                           self.full)


def _free_bytes(path: Path) -> int:
    try:
        return int(shutil.disk_usage(path).free)
    except OSError:
        return RESUME_FREE_BYTES
