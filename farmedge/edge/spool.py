"""The edge's local spool: batches InfluxDB could not take, kept on disk
until it can.

A batch is appended (and fsynced) before the messages it holds are
acknowledged to the broker, so the spool is part of "durable". It survives
restarts, replays oldest first, and is bounded: past ``max_bytes`` the oldest
batches are dropped, and every dropped line is counted.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import zstandard

__all__ = ["Spool", "SpooledBatch"]


@dataclass(frozen=True, slots=True)
class SpooledBatch:
    id: int
    lines: list[str]
    created_ms: int


class Spool:
    def __init__(self, path: Path, *, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()
        self._cctx = zstandard.ZstdCompressor(level=1)
        self._dctx = zstandard.ZstdDecompressor()
        self.lines = 0
        self.bytes = 0
        self.batches = 0
        self.dropped_lines = 0
        self.changed = asyncio.Event()

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        # The spool is acknowledged data: a commit must survive a power cut.
        db.execute("PRAGMA synchronous=FULL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS batch ("
            " id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " created_ms INTEGER NOT NULL,"
            " n_lines INTEGER NOT NULL,"
            " body BLOB NOT NULL)"
        )
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER)")
        row = db.execute(
            "SELECT count(*), coalesce(sum(n_lines),0), coalesce(sum(length(body)),0) FROM batch"
        ).fetchone()
        self.batches, self.lines, self.bytes = int(row[0]), int(row[1]), int(row[2])
        dropped = db.execute("SELECT value FROM meta WHERE key='dropped_lines'").fetchone()
        self.dropped_lines = int(dropped[0]) if dropped else 0
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("Spool.open() was not called")
        return self._db

    async def append(self, lines: list[str]) -> int:
        """Store ``lines`` durably; returns how many older lines had to be
        dropped to stay within max_bytes."""
        body = self._cctx.compress("\n".join(lines).encode())
        async with self._lock:
            dropped = await asyncio.to_thread(self._append, body, len(lines))
        self.changed.set()
        return dropped

    def _append(self, body: bytes, n: int) -> int:
        db = self.db
        dropped = 0
        db.execute("BEGIN IMMEDIATE")
        try:
            while self.bytes + len(body) > self.max_bytes and self.batches > 0:
                row = db.execute(
                    "SELECT id, n_lines, length(body) FROM batch ORDER BY id LIMIT 1"
                ).fetchone()
                db.execute("DELETE FROM batch WHERE id=?", (row[0],))
                dropped += int(row[1])
                self.batches -= 1
                self.lines -= int(row[1])
                self.bytes -= int(row[2])
            db.execute("INSERT INTO batch (created_ms, n_lines, body) VALUES (?,?,?)",
                       (int(time.time() * 1000), n, body))
            if dropped:
                self.dropped_lines += dropped
                db.execute("INSERT OR REPLACE INTO meta VALUES ('dropped_lines', ?)",
                           (self.dropped_lines,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.batches += 1
        self.lines += n
        self.bytes += len(body)
        return dropped

    async def oldest(self) -> SpooledBatch | None:
        async with self._lock:
            row = await asyncio.to_thread(
                lambda: self.db.execute(
                    "SELECT id, body, created_ms FROM batch ORDER BY id LIMIT 1"
                ).fetchone()
            )
        if row is None:
            return None
        text = self._dctx.decompress(row[1]).decode()
        return SpooledBatch(int(row[0]), text.split("\n") if text else [], int(row[2]))

    async def delete(self, batch_id: int) -> None:
        async with self._lock:
            await asyncio.to_thread(self._delete, batch_id)
        self.changed.set()

    def _delete(self, batch_id: int) -> None:
        row = self.db.execute("SELECT n_lines, length(body) FROM batch WHERE id=?",
                              (batch_id,)).fetchone()
        if row is None:
            return
        self.db.execute("DELETE FROM batch WHERE id=?", (batch_id,))
        self.batches -= 1
        self.lines -= int(row[0])
        self.bytes -= int(row[1])
