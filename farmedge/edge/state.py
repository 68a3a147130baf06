"""What ingestion must remember across restarts, in a small SQLite file
(``<data_dir>/ingest.sqlite3``):

* ``known_id``: the sensor and animal ids each gateway has introduced, for
  the cardinality budget (docs/edge.md, "Cardinality budget");
* ``clock_segment``: how the readings of gateways with unsynced clocks were
  placed on the edge's clock, so a message delivered again after a restart
  lands on exactly the same time (docs/protocol.md, "Clock");
* ``status_seen``: the digest and time of each gateway's last stored status,
  so a retained or redelivered status lands on the same point;
* ``dead_letter``: the time and slot of the last dead letters (the most
  recent :data:`MAX_DEAD_LETTERS`), so a message the broker delivers again
  (DUP flag) after a SIGKILL is dead-lettered on the same point, not twice.

Everything but the dead letters is loaded into dicts at start; the hot path
reads them and queues what it learns (a new id, a clock segment, a status).
:meth:`IngestState.flush` commits the queue in one transaction before each
batch is written (WAL, ``synchronous=NORMAL``: a commit survives the edge
being killed; a power cut may lose the last ones, which only makes the edge
re-learn them). Nothing here raises: when the disk refuses a write the edge
goes on from memory and logs it (throttled).
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from farmedge.logs import get_logger

__all__ = ["ClockSegment", "IngestState"]

GatewayKey = tuple[str, str, str]
#: Clock segments kept per gateway.
MAX_SEGMENTS = 16
#: Dead letters remembered for redeliveries: more than the edge holds
#: unacknowledged at any time (``[ingest] max_pending_mb`` of messages).
MAX_DEAD_LETTERS = 200_000


@dataclass(slots=True)
class ClockSegment:
    """Messages of one gateway whose ``seq`` and ``sent`` fall in these
    ranges were placed with ``offset_ms`` (edge clock - gateway clock)."""

    n: int
    seq_lo: int
    seq_hi: int
    sent_lo: int
    sent_hi: int
    offset_ms: int

    def holds(self, seq: int, sent: int) -> bool:
        return self.seq_lo <= seq <= self.seq_hi and self.sent_lo <= sent <= self.sent_hi


class IngestState:
    """The persistent part of the ingestor's memory. ``path=None`` keeps it
    in memory only (unit tests, benchmarks of the pure CPU path)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._log = get_logger("farmedge.edge.state")
        self._db: sqlite3.Connection | None = None
        self._failed_at = 0.0
        self.write_errors = 0
        self.known: dict[GatewayKey, set[tuple[str, str]]] = {}
        self.segments: dict[GatewayKey, list[ClockSegment]] = {}
        self.statuses: dict[GatewayKey, tuple[bytes, int]] = {}
        self._dead_inserts = 0
        self._pending_dead: dict[bytes, tuple[int, int]] = {}
        self._pending_sql: list[tuple[str, tuple[object, ...]]] = []
        #: Why the state file could not be opened (the edge runs from memory).
        self.unavailable: str | None = None
        if path is not None:
            self._open_any(path)

    def _open_any(self, path: Path) -> None:
        """Open the file; on a full disk in exclusive locking mode; when that
        fails too, or the file cannot be used at all (read-only, corrupt), go
        on from memory and say so: the edge must not die (and crash-loop)
        for its ingest state."""
        try:
            self._open(path)
            return
        except (sqlite3.Error, OSError) as exc:
            self.close()
            error: Exception = exc
            try:
                free = shutil.disk_usage(path.parent).free
            except OSError:
                free = 0
        if _is_corrupt(error) and free >= 1 << 20 and self._set_aside(path, error):
            # What it held is learnt again (ids, offsets, status times); a
            # file that can never be opened would lose it at every restart.
            for d in (self.known, self.segments, self.statuses):
                d.clear()
            try:
                self._open(path)
                return
            except (sqlite3.Error, OSError) as exc:
                self.close()
                error = exc
        if free < 1 << 20:
            # A full disk: WAL mode cannot make its shared-memory file; in
            # exclusive locking mode SQLite keeps that index in memory.
            for d in (self.known, self.segments, self.statuses):
                d.clear()
            try:
                self._open(path, exclusive=True)
            except (sqlite3.Error, OSError) as exc:
                self.close()
                error = exc
            else:
                return
        for d in (self.known, self.segments, self.statuses):
            d.clear()
        self.unavailable = f"{type(error).__name__}: {error}"[:200]
        self._log.error("ingest_state.unavailable", path=str(path), error=str(error)[:200],
                        hint="budgets, unsynced clock offsets and status times are kept in "
                             "memory only until the edge restarts")

    def _set_aside(self, path: Path, error: Exception) -> bool:
        """Rename an unreadable state file (and its WAL) out of the way."""
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        try:
            path.rename(aside)
            for ext in ("-wal", "-shm"):
                side = path.with_name(path.name + ext)
                if side.exists():
                    side.rename(aside.with_name(aside.name + ext))
        except OSError:
            return False
        self._log.error("ingest_state.corrupt_set_aside", path=str(path), moved_to=str(aside),
                        error=str(error)[:200],
                        hint="started afresh: id budgets, unsynced clock offsets and status "
                             "times are learnt again")
        return True

    def _open(self, path: Path, *, exclusive: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db = db  # closed by close() even when what follows fails
        if exclusive:
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE IF NOT EXISTS known_id (county TEXT, farm TEXT, gateway TEXT,"
                   " sensor TEXT, animal TEXT, first_ms INTEGER,"
                   " PRIMARY KEY (county, farm, gateway, sensor, animal))")
        db.execute("CREATE TABLE IF NOT EXISTS clock_segment (county TEXT, farm TEXT,"
                   " gateway TEXT, n INTEGER, seq_lo INTEGER, seq_hi INTEGER, sent_lo INTEGER,"
                   " sent_hi INTEGER, offset_ms INTEGER,"
                   " PRIMARY KEY (county, farm, gateway, n))")
        db.execute("CREATE TABLE IF NOT EXISTS status_seen (county TEXT, farm TEXT,"
                   " gateway TEXT, digest BLOB, ts INTEGER,"
                   " PRIMARY KEY (county, farm, gateway))")
        db.execute("CREATE TABLE IF NOT EXISTS dead_letter (id INTEGER PRIMARY KEY,"
                   " digest BLOB UNIQUE, ms INTEGER, slot INTEGER)")
        for c, f, g, s, a in db.execute(
                "SELECT county, farm, gateway, sensor, animal FROM known_id"):
            self.known.setdefault((c, f, g), set()).add((s, a))
        for c, f, g, n, sl, sh, tl, th, off in db.execute(
                "SELECT county, farm, gateway, n, seq_lo, seq_hi, sent_lo, sent_hi, offset_ms"
                " FROM clock_segment ORDER BY n"):
            self.segments.setdefault((c, f, g), []).append(
                ClockSegment(n, sl, sh, tl, th, off))
        for c, f, g, d, ts in db.execute(
                "SELECT county, farm, gateway, digest, ts FROM status_seen ORDER BY ts"):
            self.statuses[(c, f, g)] = (bytes(d), ts)

    def close(self) -> None:
        self.flush()
        if self._db is not None:
            self._db.close()
            self._db = None

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        """Queue a statement for the next :meth:`flush` (one transaction)."""
        if self._db is None:
            return
        self._pending_sql.append((sql, params))
        if len(self._pending_sql) >= 20_000:
            self.flush()

    def _failed(self, what: str, exc: sqlite3.Error) -> None:
        self.write_errors += 1
        now = time.monotonic()
        if now - self._failed_at > 10:
            self._failed_at = now
            self._log.error("ingest_state.write_failed", what=what[:80], error=str(exc)[:200],
                            path=str(self.path), write_errors=self.write_errors,
                            hint="the edge goes on from memory; free disk space")

    # -- cardinality -------------------------------------------------------
    def ids(self, key: GatewayKey) -> set[tuple[str, str]]:
        known = self.known.get(key)
        if known is None:
            known = self.known[key] = set()
        return known

    def admit(self, key: GatewayKey, ident: tuple[str, str], now_ms: int) -> None:
        self.ids(key).add(ident)
        self._write("INSERT OR IGNORE INTO known_id VALUES (?, ?, ?, ?, ?, ?)",
                    (*key, *ident, now_ms))

    # -- unsynced clocks ---------------------------------------------------
    def clock_segments(self, key: GatewayKey) -> list[ClockSegment]:
        segs = self.segments.get(key)
        if segs is None:
            segs = self.segments[key] = []
        return segs

    def save_segment(self, key: GatewayKey, seg: ClockSegment) -> None:
        segs = self.clock_segments(key)
        if seg not in segs:
            segs.append(seg)
        self._write("INSERT OR REPLACE INTO clock_segment VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*key, seg.n, seg.seq_lo, seg.seq_hi, seg.sent_lo, seg.sent_hi,
                     seg.offset_ms))
        if len(segs) > MAX_SEGMENTS:
            old = segs.pop(0)
            self._write("DELETE FROM clock_segment WHERE county = ? AND farm = ? AND"
                        " gateway = ? AND n = ?", (*key, old.n))

    # -- status ------------------------------------------------------------
    def last_status(self, key: GatewayKey) -> tuple[bytes, int] | None:
        """Digest and time of the last status stored for this gateway."""
        return self.statuses.get(key)

    def save_status(self, key: GatewayKey, digest: bytes, ts: int) -> None:
        self.statuses[key] = (digest, ts)
        self._write("INSERT OR REPLACE INTO status_seen VALUES (?, ?, ?, ?, ?)",
                    (*key, digest, ts))

    # -- dead letters ------------------------------------------------------
    def dead_letter_time(self, digest: bytes) -> tuple[int, int] | None:
        """(ms, slot) a dead letter with this digest was written at, if any."""
        pending = self._pending_dead.get(digest)
        if pending is not None or self._db is None:
            return pending
        try:
            row = self._db.execute("SELECT ms, slot FROM dead_letter WHERE digest = ?",
                                   (digest,)).fetchone()
        except sqlite3.Error:
            return None
        return (int(row[0]), int(row[1])) if row is not None else None

    def save_dead_letter(self, digest: bytes, ms: int, slot: int) -> None:
        """Remembered in memory until :meth:`flush`, which the service calls
        before the batch holding the dead letter goes to InfluxDB."""
        if self._db is None:
            return
        self._pending_dead[digest] = (ms, slot)
        if len(self._pending_dead) >= 20_000:
            self.flush()

    def flush(self) -> None:
        """Commit what was learnt since the last flush, in one transaction
        (about 2 µs a row). The service calls it before each batch goes to
        InfluxDB or the spool, so whatever a batch's lines were derived from
        is on disk before the lines are anywhere."""
        if self._db is None or not (self._pending_dead or self._pending_sql):
            return
        statements, self._pending_sql = self._pending_sql, []
        rows = [(d, ms, slot) for d, (ms, slot) in self._pending_dead.items()]
        self._pending_dead.clear()
        self._dead_inserts += len(rows)
        db = self._db
        try:
            db.execute("BEGIN")
            for sql, params in statements:
                db.execute(sql, params)
            if rows:
                db.executemany("INSERT OR REPLACE INTO dead_letter (digest, ms, slot)"
                               " VALUES (?, ?, ?)", rows)
            if self._dead_inserts >= 10_000:
                self._dead_inserts = 0
                db.execute("DELETE FROM dead_letter WHERE id <= (SELECT max(id) FROM"
                           " dead_letter) - ?", (MAX_DEAD_LETTERS,))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            self._failed("flush", exc)


def _is_corrupt(exc: BaseException) -> bool:
    """SQLite says the file is not a database or is damaged (not: busy,
    read-only, full)."""
    return isinstance(exc, sqlite3.DatabaseError) and any(
        m in str(exc) for m in ("file is not a database", "malformed", "file is encrypted"))
