"""The outbox's SQLite file: its schema, how it is opened (WAL,
``synchronous=NORMAL``, a checked file), one write transaction at a time,
and every sqlite3 error translated where the call is made: a full disk
(SQLITE_FULL, ENOSPC) is :class:`DiskFull`, anything else
:class:`~farmedge.gateway.errors.OutboxError`.

The schema is the one every earlier version wrote, so an outbox left by one
opens and is sent as it is.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from farmedge.contract import Quality
from farmedge.disk import is_disk_full

from .errors import OutboxError

__all__ = ["QUALITIES", "QUALITY_CODE", "SCHEMA", "DiskFull", "OutboxDb"]

#: ``reading.quality`` in the file: the index in this tuple.
QUALITIES = (Quality.OK, Quality.SUSPECT, Quality.ERROR)
QUALITY_CODE = {q: i for i, q in enumerate(QUALITIES)}

SCHEMA = """
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

#: Readings the broker refused for themselves, set aside (outbox_aside.py).
#: Made at the first one, not at open: an outbox an earlier version left
#: opens unchanged, also on a full disk.
REFUSED_SCHEMA = """
CREATE TABLE IF NOT EXISTS refused (
    id INTEGER PRIMARY KEY,   -- the reading's id
    sensor TEXT NOT NULL, kind TEXT NOT NULL, unit TEXT NOT NULL, value REAL NOT NULL,
    quality INTEGER NOT NULL, animal TEXT, ts INTEGER NOT NULL, mono INTEGER NOT NULL,
    boot INTEGER NOT NULL, synced INTEGER NOT NULL, size INTEGER NOT NULL,
    code INTEGER NOT NULL,    -- the broker's PUBACK reason code
    refused_at INTEGER NOT NULL  -- epoch ms (the gateway's clock)
);
"""
_COLUMNS = "id, sensor, kind, unit, value, quality, animal, ts, mono, boot, synced, size"


class DiskFull(OutboxError):
    """The disk (SD card) is full: SQLITE_FULL or ENOSPC."""


class OutboxDb:
    """One SQLite connection, in autocommit mode with explicit transactions
    (``begin`` opens one if none is open; ``commit`` ends it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._in_tx = False

    def _error(self, exc: sqlite3.Error, what: str = "") -> OutboxError:
        cls = DiskFull if is_disk_full(exc) else OutboxError
        return cls(f"{self.path}: {what}{exc}")

    # -- life cycle ---------------------------------------------------------

    def open(self, *, exclusive: bool) -> None:
        """Open and check the file, creating its tables if they are missing.
        ``exclusive``: SQLite's exclusive locking mode, which needs no
        shared-memory file (so it opens on a full disk)."""
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
            db.executescript(SCHEMA)
        except (sqlite3.Error, OutboxError) as exc:
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
            if isinstance(exc, OutboxError):
                raise
            raise OutboxError(f"{self.path}: {exc}") from None
        self._db = db
        self._in_tx = False

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
            self._in_tx = False

    @property
    def is_open(self) -> bool:
        return self._db is not None

    @property
    def connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError("the outbox is not open")
        return self._db

    # -- statements -----------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        try:
            return self.connection.execute(sql, params)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> sqlite3.Cursor:
        try:
            return self.connection.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The first row of a query, or None."""
        return self.execute(sql, params).fetchone()

    # -- the write transaction --------------------------------------------------

    @property
    def in_transaction(self) -> bool:
        return self._in_tx

    def begin(self) -> None:
        if not self._in_tx:
            self.execute("BEGIN")
            self._in_tx = True

    def commit(self) -> None:
        if self._in_tx:
            try:
                self.connection.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._error(exc, "commit failed: ") from exc
            self._in_tx = False

    def rollback(self) -> None:
        """Give up the open transaction (a failed one may be gone already)."""
        db = self._db
        if db is not None and db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        self._in_tx = False

    # -- what the file holds ----------------------------------------------------

    def counts(self, where: str = "", params: Sequence[Any] = ()) -> tuple[int, int, int]:
        """Readings, their estimated bytes and how many are unsynced."""
        n, size, unsynced = self.one(
            "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(SUM(synced = 0), 0)"
            f" FROM reading {where}", params)
        return int(n), int(size), int(unsynced)

    def meta(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.execute("SELECT key, value FROM meta")}

    def set_meta(self, key: str, value: int) -> None:
        self.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def boots(self) -> dict[str, int]:
        return {str(b): int(i) for i, b in self.execute("SELECT id, boot_id FROM boot")}

    def last_reading_id(self) -> int:
        """The highest reading id ever used (AUTOINCREMENT's sequence)."""
        row = self.one("SELECT seq FROM sqlite_sequence WHERE name = 'reading'")
        return int(row[0]) if row else 0

    def raise_reading_id(self, to: int) -> None:
        """Make ids up to ``to`` never used again."""
        self.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'reading' AND seq < ?",
                     (to, to))
        self.execute("INSERT INTO sqlite_sequence (name, seq) SELECT 'reading', ? WHERE NOT"
                     " EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'reading')", (to,))

    def insert_with_ids(self, rows: Sequence[Sequence[Any]]) -> None:
        """Readings back on disk with their own ids (every column in the
        schema's order; ids already there are left as they are)."""
        self.executemany(f"INSERT OR IGNORE INTO reading ({_COLUMNS})"
                         " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def refused_count(self) -> int:
        """Readings in the ``refused`` table (0 while there is none)."""
        if self.one("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'refused'"
                    ) is None:
            return 0
        return int(self.one("SELECT COUNT(*) FROM refused")[0])

    def set_aside(self, reading_id: int, code: int, at_ms: int) -> int:
        """Move a reading into the ``refused`` table; 1, or 0 when it was not there."""
        self.execute(REFUSED_SCHEMA)
        cur = self.execute(f"INSERT OR REPLACE INTO refused ({_COLUMNS}, code, refused_at)"
                           f" SELECT {_COLUMNS}, ?, ? FROM reading WHERE id = ?",
                           (code, at_ms, reading_id))
        self.execute("DELETE FROM reading WHERE id = ?", (reading_id,))
        return int(cur.rowcount)

    def drop_oldest_refused(self, keep: int) -> int:
        """Delete the oldest set-aside readings beyond ``keep``; how many."""
        return int(self.execute("DELETE FROM refused WHERE id IN (SELECT id FROM refused"
                                " ORDER BY id DESC LIMIT -1 OFFSET ?)", (keep,)).rowcount)

    def requeue_refused(self) -> int:
        """Every set-aside reading back into the outbox (its own id: sent
        first, oldest first); how many."""
        if not self.refused_count():
            return 0
        n = self.execute(f"INSERT OR IGNORE INTO reading ({_COLUMNS}) SELECT {_COLUMNS}"
                         " FROM refused").rowcount
        self.execute("DELETE FROM refused")
        return int(n)

    def readings(self, after_id: int, limit: int) -> sqlite3.Cursor:
        """The oldest ``limit`` readings with an id above ``after_id``, every
        column in the schema's order."""
        return self.execute(
            "SELECT id, sensor, kind, unit, value, quality, animal, ts, mono, boot, synced, size"
            " FROM reading WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))

    def first_id_of_boot(self, boot_id: str) -> int:
        """A reading id no reading of boot ``boot_id`` is below: its oldest
        reading's, or the next id when it has none (a scan of the table:
        ask once, the answer stays true as readings come and go)."""
        row = self.one("SELECT MIN(id) FROM reading WHERE boot ="
                       " (SELECT id FROM boot WHERE boot_id = ?)", (boot_id,))
        return int(row[0]) if row and row[0] is not None else self.last_reading_id() + 1

    def held(self, boot_id: str, mono_after: int, from_id: int) -> tuple[int, int | None, int]:
        """Unsynced readings of boot ``boot_id`` taken after ``mono_after``
        (CLOCK_BOOTTIME ms), among ids from ``from_id`` on (the primary key's
        range: only this boot's readings are read): how many, the ``mono``
        of the oldest, and an id no such reading is below, now or later
        (``mono_after`` only grows, a reading never turns unsynced, ids are
        never reused): the lowest held one's, or the next id when none is
        held. The next look starts there, so it reads the hold's readings,
        not the whole boot's."""
        n, oldest, first = self.one(
            "SELECT COUNT(*), MIN(mono), MIN(id) FROM reading WHERE id >= ? AND boot ="
            " (SELECT id FROM boot WHERE boot_id = ?) AND synced = 0 AND mono > ?",
            (from_id, boot_id, mono_after))
        if not n:
            return 0, None, max(from_id, self.last_reading_id() + 1)
        return int(n), int(oldest), int(first)

    def nth_oldest_id(self, n: int) -> int | None:
        row = self.one("SELECT id FROM reading ORDER BY id LIMIT 1 OFFSET ?", (n,))
        return int(row[0]) if row else None

    def last_expired_id(self, before_ms: int) -> int | None:
        """The newest synced reading older than ``before_ms`` among the
        oldest thousand (dropping through it drops them all)."""
        row = self.one("SELECT id FROM (SELECT id, ts, synced FROM reading ORDER BY id"
                       " LIMIT 1000) WHERE synced = 1 AND ts < ? ORDER BY id DESC LIMIT 1",
                       (before_ms,))
        return int(row[0]) if row else None

    def delete_ids(self, ids: Sequence[int]) -> int:
        """Delete these readings; how many there were."""
        n = 0
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            n += self.execute(f"DELETE FROM reading WHERE id IN ({','.join('?' * len(chunk))})",
                              chunk).rowcount
        return n

    def delete_through(self, last_id: int) -> tuple[int, int, int]:
        """Delete the readings up to ``last_id``; their counts (as ``counts``)."""
        gone = self.counts("WHERE id <= ?", (last_id,))
        self.execute("DELETE FROM reading WHERE id <= ?", (last_id,))
        return gone
