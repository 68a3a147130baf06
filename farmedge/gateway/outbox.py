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
stops on it.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from farmedge.contract import Quality
from farmedge.disk import is_disk_full
from farmedge.logs import get_logger

from .errors import OutboxError

__all__ = ["NewRow", "Outbox", "OutboxStats", "Row"]

_QUALITY = (Quality.OK, Quality.SUSPECT, Quality.ERROR)
_QCODE = {q: i for i, q in enumerate(_QUALITY)}
#: Per-row overhead in the size estimate (rowid, numbers, record header, index).
ROW_OVERHEAD = 48
SEQ_BLOCK = 1000
#: While full, try again once at least this much is free.
RESUME_FREE_BYTES = 1 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reading (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: ids keep the order taken
    sensor TEXT NOT NULL,
    kind TEXT NOT NULL,
    unit TEXT NOT NULL,
    value REAL NOT NULL,
    quality INTEGER NOT NULL,
    animal TEXT,
    ts INTEGER NOT NULL,      -- epoch ms, corrected once the clock is synced
    mono INTEGER NOT NULL,    -- CLOCK_BOOTTIME ms when taken
    boot INTEGER NOT NULL,    -- boot.id
    synced INTEGER NOT NULL,  -- 1: ts is from a synced clock
    size INTEGER NOT NULL     -- estimated bytes, for the size bound
);
CREATE TABLE IF NOT EXISTS boot (id INTEGER PRIMARY KEY, boot_id TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


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


class Outbox:
    """``open()`` it, ``add()`` readings, ``commit()`` every few seconds,
    ``peek()`` the oldest, ``delete()`` what the broker acknowledged."""

    def __init__(self, path: Path | str, *, max_bytes: int = 64 * 2**20,
                 max_age_ms: int = 30 * 86_400_000) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_age_ms = max_age_ms
        self._db: sqlite3.Connection | None = None
        self._in_tx = False
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
        #: Readings added in the open transaction (lost if it cannot commit,
        #: unless the uplink has taken them already).
        self._tx_rows = 0
        #: sqlite_sequence of ``reading`` at the last commit: the open
        #: transaction's readings have the ids after it.
        self._seq_committed = 0
        #: The highest reading id the uplink has published (mark_sent).
        self._sent_max = 0
        #: The highest reading id that may have been used (never reused).
        self._id_high = 0
        self._log = get_logger("farmedge.gateway.outbox")

    # -- life cycle ---------------------------------------------------------

    def open(self) -> Outbox:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._open(exclusive=False)
        except OutboxError:
            if self._free() >= RESUME_FREE_BYTES:
                raise
            # A full SD card (after a power cut, say): WAL mode needs a new
            # shared-memory file, which cannot be made. In exclusive locking
            # mode SQLite keeps that index in memory, so the outbox opens,
            # full, and sends what it holds; nothing else reads it meanwhile.
            self._open(exclusive=True)
            self.full = True
            self._log.error("outbox: disk full at start, not keeping readings until there "
                            "is room", path=str(self.path), depth=self.depth)
        return self

    def _free(self) -> int:
        try:
            return int(shutil.disk_usage(self.path.parent).free)
        except OSError:
            return RESUME_FREE_BYTES

    def _open(self, *, exclusive: bool) -> None:
        db: sqlite3.Connection | None = None
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            if exclusive:
                db.execute("PRAGMA locking_mode=EXCLUSIVE")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            # Checkpoint less often than the default 1000 pages: fewer fsyncs.
            db.execute("PRAGMA wal_autocheckpoint=2000")
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise OutboxError(f"{self.path}: database is damaged: {ok}")
            db.executescript(_SCHEMA)
            self.depth, total, self.unsynced = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(SUM(synced = 0), 0)"
                " FROM reading").fetchone()
            self.bytes = int(total)
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            self.dropped = int(meta.get("dropped", 0))
            # Sequence numbers are reserved in blocks, so a crash can skip
            # numbers (a gap the edge sees) but never repeat one.
            self._seq = self._seq_reserved = int(meta.get("seq_reserved", 0))
            self._boots = {b: i for i, b in db.execute("SELECT id, boot_id FROM boot")}
            seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'reading'").fetchone()
            self._seq_committed = self._id_high = int(seq[0]) if seq else 0
        except sqlite3.Error as exc:
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
            raise OutboxError(f"{self.path}: {exc}") from None
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self.commit()
            self._db.close()
            self._db = None

    @property
    def is_open(self) -> bool:
        return self._db is not None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError("the outbox is not open")
        return self._db

    def _begin(self) -> sqlite3.Connection:
        db = self.db
        if not self._in_tx:
            db.execute("BEGIN")
            self._in_tx = True
        return db

    # -- writing ------------------------------------------------------------

    def boot_key(self, boot_id: str) -> int:
        """The key of ``boot_id`` (-1, matching no reading, while the disk is
        full and it is new)."""
        key = self._boots.get(boot_id)
        if key is None:
            if self.full:
                return -1
            try:
                db = self._begin()
                cur = db.execute("INSERT INTO boot (boot_id) VALUES (?)", (boot_id,))
            except sqlite3.Error as exc:
                if not is_disk_full(exc):
                    raise
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
            db = self._begin()
            db.executemany(
                "INSERT INTO reading (sensor, kind, unit, value, quality, animal, ts, mono, boot,"
                " synced, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.sensor, r.kind, r.unit, float(r.value), _QCODE[r.quality], r.animal, r.ts,
                  r.mono, boot, int(r.synced), s) for r, s in zip(rows, sizes, strict=True)])
        except sqlite3.Error as exc:
            if not is_disk_full(exc):
                raise
            self._disk_full(exc, also_lost=len(rows))
            return
        self._tx_rows += len(rows)
        self._id_high = max(self._id_high, self._seq_committed + self._tx_rows)
        self.depth += len(rows)
        self.bytes += sum(sizes)
        self.unsynced += sum(1 for r in rows if not r.synced)

    # -- a full disk ----------------------------------------------------------

    def _disk_full(self, exc: BaseException, *, also_lost: int = 0) -> None:
        """The disk is full: give up the open transaction (it cannot commit),
        count its readings and ``also_lost`` as dropped, and stop taking
        readings until there is room again."""
        start = self._seq_committed
        # Readings of this transaction the uplink has taken are on their way.
        handed = max(0, min(self._sent_max, start + self._tx_rows) - start)
        lost = self._tx_rows - handed + also_lost
        self._id_high = max(self._id_high, start + self._tx_rows + also_lost,
                            self._sent_max)
        db = self.db
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        self._in_tx = False
        self._tx_rows = 0
        self.dropped += lost
        self._recount()
        self._boots = {b: i for i, b in db.execute("SELECT id, boot_id FROM boot")}
        if not self.full:
            self._log.error("outbox: disk full, not keeping readings until there is room",
                            error=str(exc), lost=lost, dropped_total=self.dropped,
                            path=str(self.path))
        self.full = True

    def _try_resume(self) -> None:
        free = self._free()
        if free < RESUME_FREE_BYTES:
            return
        db = self.db
        try:
            self._begin()  # deletes of acknowledged readings may be waiting in it
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('dropped', ?)",
                       (self.dropped,))
            # Ids of the readings given up are never used again: the uplink
            # may have passed them already.
            db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'reading' AND seq < ?",
                       (self._id_high, self._id_high))
            db.execute("INSERT INTO sqlite_sequence (name, seq) SELECT 'reading', ? WHERE NOT"
                       " EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'reading')",
                       (self._id_high,))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            self._in_tx = False
            if not is_disk_full(exc):
                raise OutboxError(f"{self.path}: {exc}") from None
            self._recount()
            return
        self._in_tx = False
        self.full = False
        self._seq_committed = max(self._seq_committed, self._id_high)
        self._log.warning("outbox: room again, keeping readings", free_bytes=free,
                          dropped_total=self.dropped)

    def delete(self, rows: Iterable[Row]) -> None:
        """Forget readings the broker acknowledged (durable at the next commit).
        On a full disk they stay, and are sent again (the edge stores a
        reading once)."""
        rows = list(rows)
        if not rows:
            return
        n = 0
        gone = 0
        try:
            db = self._begin()
            for i in range(0, len(rows), 500):
                chunk = rows[i:i + 500]
                cur = db.execute(
                    f"DELETE FROM reading WHERE id IN ({','.join('?' * len(chunk))})",
                    [r.id for r in chunk])
                n += cur.rowcount
                gone += len(chunk)
        except sqlite3.Error as exc:
            if not is_disk_full(exc):
                raise
            self._disk_full(exc)
            return
        if n == gone:
            self.depth -= n
            self.bytes -= sum(r.size for r in rows)
            self.unsynced -= sum(1 for r in rows if not r.synced)
        else:  # some were dropped meanwhile: recount
            self._recount()

    def discard(self, rows: Iterable[Row]) -> None:
        """Drop readings that can never be sent, counting them in ``dropped``
        (durable at the next commit)."""
        ids = [r.id for r in rows]
        if not ids or self.full:
            return
        try:
            db = self._begin()
            n = db.execute(f"DELETE FROM reading WHERE id IN ({','.join('?' * len(ids))})",
                           ids).rowcount
            self.dropped += n
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('dropped', ?)",
                       (self.dropped,))
        except sqlite3.Error as exc:
            if not is_disk_full(exc):
                raise OutboxError(f"{self.path}: {exc}") from None
            self._disk_full(exc)
            return
        self._recount()

    def _recount(self) -> None:
        self.depth, total, unsynced = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(SUM(synced = 0), 0)"
            " FROM reading").fetchone()
        self.bytes = int(total)
        self.unsynced = int(unsynced)

    def correct_clock(self, boot_id: str, now_wall_ms: int, now_mono_ms: int) -> int:
        """Re-date readings of this boot taken before the clock was set."""
        if not self.unsynced:
            return 0
        boot = self.boot_key(boot_id)
        if self.full:
            return 0
        try:
            db = self._begin()
            cur = db.execute("UPDATE reading SET ts = ? - (? - mono), synced = 1"
                             " WHERE synced = 0 AND boot = ?", (now_wall_ms, now_mono_ms, boot))
        except sqlite3.Error as exc:
            if not is_disk_full(exc):
                raise
            self._disk_full(exc)
            return 0
        self.unsynced -= cur.rowcount
        return int(cur.rowcount)

    def next_seq(self) -> int:
        if self._seq >= self._seq_reserved and not self.full:
            reserved = self._seq + SEQ_BLOCK
            try:
                self._begin().execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('seq_reserved', ?)",
                    (reserved,))
            except sqlite3.Error as exc:
                if not is_disk_full(exc):
                    raise
                self._disk_full(exc)
            else:
                self.commit()
                if not self.full:
                    self._seq_reserved = reserved
        # While the disk is full, numbers go on unreserved: after a crash the
        # edge may count a repeat (a duplicate), it loses nothing.
        seq = self._seq
        self._seq += 1
        return seq

    def enforce_bounds(self, now_wall_ms: int | None) -> int:
        """Drop the oldest readings beyond the size bound, and readings older
        than the age bound (judged only when the clock is set). Returns how
        many were dropped."""
        dropped = 0
        db = self.db
        if self.full:
            return 0
        while self.bytes > self.max_bytes and self.depth > 0:
            avg = max(1, self.bytes // max(1, self.depth))
            excess = max(1, (self.bytes - int(self.max_bytes * 0.95)) // avg)
            row = db.execute("SELECT id FROM reading ORDER BY id LIMIT 1 OFFSET ?",
                             (min(excess, self.depth) - 1,)).fetchone()
            if row is None:
                break
            dropped += self._drop_through(row[0])
        if now_wall_ms is not None:
            limit = now_wall_ms - self.max_age_ms
            while self.depth > 0:
                old = db.execute("SELECT id FROM (SELECT id, ts, synced FROM reading ORDER BY id"
                                 " LIMIT 1000) WHERE synced = 1 AND ts < ? ORDER BY id DESC"
                                 " LIMIT 1", (limit,)).fetchone()
                if old is None:
                    break
                dropped += self._drop_through(old[0])
        return dropped

    def _drop_through(self, last_id: int) -> int:
        db = self._begin()
        n, size, unsynced = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(SUM(synced = 0), 0)"
            " FROM reading WHERE id <= ?", (last_id,)).fetchone()
        db.execute("DELETE FROM reading WHERE id <= ?", (last_id,))
        self.depth -= n
        self.bytes -= int(size)
        self.unsynced -= int(unsynced)
        self.dropped += n
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('dropped', ?)",
                   (self.dropped,))
        return int(n)

    def commit(self) -> None:
        if self.full:
            self._try_resume()
            return
        if self._in_tx:
            try:
                self.db.execute("COMMIT")
            except sqlite3.Error as exc:
                if is_disk_full(exc):
                    self._disk_full(exc)
                    return
                raise OutboxError(f"{self.path}: commit failed: {exc}") from None
            self._in_tx = False
            self._seq_committed += self._tx_rows
            self._tx_rows = 0

    # -- reading ------------------------------------------------------------

    def peek(self, after_id: int, limit: int) -> list[Row]:
        """The oldest ``limit`` readings with an id above ``after_id``."""
        cur = self.db.execute(
            "SELECT id, sensor, kind, unit, value, quality, animal, ts, mono, boot, synced, size"
            " FROM reading WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))
        return [Row(i, s, k, u, v, _QUALITY[q], a, t, m, b, bool(sy), sz)
                for i, s, k, u, v, q, a, t, m, b, sy, sz in cur]

    def mark_sent(self, last_id: int) -> None:
        """The uplink has published the readings up to ``last_id``: if the
        disk fills before they are committed, they are on their way, not lost."""
        if last_id > self._sent_max:
            self._sent_max = last_id

    def oldest(self) -> Row | None:
        rows = self.peek(0, 1)
        return rows[0] if rows else None

    def stats(self) -> OutboxStats:
        old = self.oldest()
        return OutboxStats(self.depth, self.bytes, old.ts if old else None, self.dropped,
                           self.full)
