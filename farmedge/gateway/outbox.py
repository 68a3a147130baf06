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

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from farmedge.contract import Quality
from farmedge.logs import get_logger

from .errors import OutboxError
from .outbox_aside import Aside
from .outbox_db import QUALITIES, QUALITY_CODE, DiskFull, OutboxDb
from .outbox_full import RESUME_FREE_BYTES, FullDisk, Ledger, Unwritten, free_bytes

__all__ = ["NewRow", "Outbox", "OutboxStats", "Row"]

#: Per-row overhead in the size estimate (rowid, numbers, record header, index).
ROW_OVERHEAD = 48
SEQ_BLOCK = 1000


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
    #: Readings the broker refused for themselves, set aside (kept).
    refused: int = 0


def _size(r: NewRow) -> int:
    return (ROW_OVERHEAD + len(r.sensor) + len(r.kind) + len(r.unit)
            + (len(r.animal) if r.animal else 0))


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
        self._ids = Ledger()
        #: Readings the full disk would not keep, held in memory.
        self._mem = Unwritten()
        self._fulldisk = FullDisk(self)
        self.aside = Aside(self)  # readings the broker refused for themselves
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
            if free_bytes(self.path.parent) >= RESUME_FREE_BYTES:
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
            self._ids = Ledger(committed=last, id_high=last)
        except OutboxError:
            f.close()
            raise

    def close(self) -> None:
        """Commit and close, keeping the exact next ``seq`` (a restart: no gap).
        Readings only memory holds (the disk still full) are counted in
        ``dropped``, which is written if the disk lets it."""
        if self.file.is_open:
            if not self.full and self._seq != self._seq_reserved:
                self._reserve(self._seq)
            self.commit()
            self._fulldisk.at_close()
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
                [(r.sensor, r.kind, r.unit, float(r.value), QUALITY_CODE[r.quality], r.animal, r.ts,
                  r.mono, boot, int(r.synced), s) for r, s in zip(rows, sizes, strict=True)])
        except DiskFull as exc:
            self._disk_full(exc, also_lost=len(rows))
            return
        self._ids.added(len(rows))
        self.depth += len(rows)
        self.bytes += sum(sizes)
        self.unsynced += sum(1 for r in rows if not r.synced)

    # -- a full disk (outbox_full.FullDisk) -------------------------------------

    def _disk_full(self, exc: BaseException, *, also_lost: int = 0) -> None:
        self._fulldisk.hit(exc, also_lost=also_lost)

    def delete(self, rows: Iterable[Row]) -> None:
        """Forget readings the broker acknowledged (durable at the next commit).
        On a full disk they stay, sent again (the edge stores a reading once)."""
        rows = self._fulldisk.forget_held(rows)
        if not rows:
            return
        try:
            self.file.begin()
            n = self._fulldisk.delete_rows(rows)
        except DiskFull as exc:
            # These were delivered: of the transaction about to be undone,
            # they are neither kept nor lost.
            self._fulldisk.gone(rows)
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
        rows = list(rows)
        if not rows:
            return
        given = len(rows)
        rows = self._fulldisk.forget_held(rows)
        self.dropped += given - len(rows)
        if not rows or self.full:
            return
        try:
            self.file.begin()
            self.dropped += self._fulldisk.delete_rows(rows)
            self.file.set_meta("dropped", self.dropped)
        except DiskFull as exc:
            self._disk_full(exc)
            return
        self._recount()

    def _recount(self) -> None:
        n, size, unsynced = self.file.counts()
        hn, hsize, hunsynced = self._mem.totals()
        self.depth, self.bytes, self.unsynced = n + hn, size + hsize, unsynced + hunsynced

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
        start = self._ids.committed
        if last_id > start:
            self._ids.tx_gone += f.counts("WHERE id > ? AND id <= ?", (start, last_id))[0]
        self._mem.prune_sent(last_id)
        n, size, unsynced = f.delete_through(last_id)
        self.depth -= n
        self.bytes -= size
        self.unsynced -= unsynced
        self.dropped += n
        f.set_meta("dropped", self.dropped)
        return n

    def commit(self) -> None:
        if self.full:
            self._fulldisk.try_resume()
            return
        if self.file.in_transaction:
            try:
                self.file.commit()
            except DiskFull as exc:
                self._disk_full(exc)
                return
            self._ids.commit()
            self._mem.sent.clear()  # on disk now: nothing to keep in memory

    # -- reading ------------------------------------------------------------

    def peek(self, after_id: int, limit: int) -> list[Row]:
        """The oldest ``limit`` readings with an id above ``after_id`` (on
        disk, or held in memory while the disk is full)."""
        rows = self._peek_db(after_id, limit)
        if self._mem.held:
            rows = sorted([*rows, *self._mem.after(after_id)], key=lambda r: r.id)[:limit]
        return rows

    def _peek_db(self, after_id: int, limit: int) -> list[Row]:
        return [Row(i, s, k, u, v, QUALITIES[q], a, t, m, b, bool(sy), sz)
                for i, s, k, u, v, q, a, t, m, b, sy, sz in self.file.readings(after_id, limit)]

    def mark_sent(self, rows: Iterable[Row]) -> None:
        """The uplink has published ``rows``: should the disk fill before
        they are committed or acknowledged, they are kept in memory and sent
        again, not lost."""
        self._mem.mark_sent(rows, self._ids.committed)

    @property
    def held(self) -> int:
        """Readings held in memory only (a transaction the full disk undid)."""
        return len(self._mem.held)

    def stats(self) -> OutboxStats:
        old = self.peek(0, 1)
        return OutboxStats(self.depth, self.bytes, old[0].ts if old else None, self.dropped,
                           self.full, self.aside.count)
