"""The edge's local spool: batches InfluxDB could not take, kept on disk
until it can.

A batch is appended (and fsynced) before the messages it holds are
acknowledged to the broker, so the spool is part of "durable". It survives
restarts, replays oldest first, and is bounded: past ``max_bytes`` the oldest
batches are dropped, and every dropped line is counted.

One file per batch (``<id>-<created_ms>-<lines>-r<readings>.zst``,
zstd-compressed lines, the first ``readings`` of them readings and the rest
other points; a file of an earlier version has no ``-r<readings>``, and
:attr:`SpooledBatch.readings` is then None), written as ``.tmp``, fsynced,
renamed into place and the directory fsynced. A file per batch because a
full disk must never stop the replay: removing a replayed batch is an
``unlink``, which needs no free space,
whereas deleting from a database needs room for its journal (SQLite answers
``database or disk is full`` to a DELETE on a full disk). An append that
meets a full disk leaves nothing behind and raises ``OSError(ENOSPC)``; the
service then holds the batch unacknowledged until there is room again.

A spool left by an earlier version (``spool.sqlite3``) is replayed first,
then removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import shutil
import sqlite3
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import zstandard

from farmedge.logs import get_logger

from .errors import SpoolError

__all__ = ["Spool", "SpooledBatch"]

_NAME = re.compile(r"(\d{12,})-(\d+)-(\d+)(?:-r(\d+))?\.zst")
_DROPPED = "dropped"
#: SQLITE_FULL: "database or disk is full"


@dataclass(frozen=True, slots=True)
class SpooledBatch:
    id: int
    lines: list[str]
    created_ms: int
    #: How many of ``lines`` (the first ones) are readings; None for a batch
    #: spooled by an earlier version, which did not say.
    readings: int | None = None


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    created_ms: int
    n_lines: int
    size: int
    readings: int | None = None


def _scan(directory: Path) -> tuple[OrderedDict[int, _Entry], int]:
    """The batch files in ``directory``, oldest first, and the next id; an
    append that never completed (``.tmp``, not acknowledged) is removed."""
    found: list[tuple[int, _Entry]] = []
    for e in os.scandir(directory):
        if e.name.endswith(".tmp"):
            with contextlib.suppress(OSError):
                os.unlink(e.path)
            continue
        m = _NAME.fullmatch(e.name)
        if m is None:
            continue
        n_lines = int(m[3])
        found.append((int(m[1]), _Entry(e.name, int(m[2]), n_lines, e.stat().st_size,
                                        min(int(m[4]), n_lines) if m[4] else None)))
    found.sort(key=lambda f: (f[0], f[1].created_ms, f[1].name))
    # Two names for one id ("0…01-" and "00…01-": files copied in from
    # another spool): each is replayed, the younger under an id of its own.
    spare = found[-1][0] + 1 if found else 1
    files: OrderedDict[int, _Entry] = OrderedDict()
    for bid, entry in found:
        if bid in files:
            bid, spare = spare, spare + 1
        files[bid] = entry
    return files, spare


class Spool:
    def __init__(self, directory: Path, *, max_bytes: int, legacy: Path | None = None) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        #: A spool.sqlite3 of an earlier version, replayed before the files.
        self.legacy_path = legacy
        self._legacy: sqlite3.Connection | None = None
        #: legacy row id -> (lines, bytes), oldest first
        self._legacy_rows: OrderedDict[int, tuple[int, int]] = OrderedDict()
        self._files: OrderedDict[int, _Entry] = OrderedDict()
        self._next_id = 1
        self._lock = asyncio.Lock()
        self._cctx = zstandard.ZstdCompressor(level=1)
        self._dctx = zstandard.ZstdDecompressor()
        self._log = get_logger("farmedge.storage.spool")
        self._dropped_fd: int | None = None
        self.lines = 0
        self.bytes = 0
        self.batches = 0
        self.dropped_lines = 0
        #: Batches that could not be read back (set aside as ``*.bad``).
        self.unreadable_batches = 0
        self.changed = asyncio.Event()

    # -- open / close ------------------------------------------------------
    def open(self) -> None:
        """Needs no free space: a spool on a full disk opens. Raises
        :class:`SpoolError` when its folder cannot be made or read."""
        try:
            self._open()
        except OSError as exc:
            raise SpoolError.wrap(exc) from exc

    def _open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._files, self._next_id = _scan(self.dir)
        self.batches = len(self._files)
        self.lines = sum(x.n_lines for x in self._files.values())
        self.bytes = sum(x.size for x in self._files.values())
        self._open_dropped()
        if self.legacy_path is not None and self.legacy_path.exists():
            self._open_legacy(self.legacy_path)

    def _open_dropped(self) -> None:
        path = self.dir / _DROPPED
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            self._log.error("spool.dropped_counter_unavailable", path=str(path), error=str(exc))
            return
        text = ""
        try:
            text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            self.dropped_lines = int(text) if text.isdigit() else 0
        except OSError:
            self.dropped_lines = 0
        self._dropped_fd = fd
        if not text:  # new: give it its size now, so updates never need a new block
            with contextlib.suppress(OSError):
                self._write_dropped()

    def _open_legacy(self, path: Path) -> None:
        try:
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            rows = db.execute("SELECT id, n_lines, length(body) FROM batch ORDER BY id").fetchall()
            meta = db.execute("SELECT value FROM meta WHERE key='dropped_lines'").fetchone()
        except sqlite3.Error as exc:
            self._log.error("spool.legacy_unreadable", path=str(path), error=str(exc))
            return
        self._legacy = db
        self._legacy_rows = OrderedDict((int(i), (int(n), int(b))) for i, n, b in rows)
        self.batches += len(rows)
        self.lines += sum(n for _, n, _ in rows)
        self.bytes += sum(b for _, _, b in rows)
        if meta and int(meta[0]) > self.dropped_lines:
            self.dropped_lines = int(meta[0])
            with contextlib.suppress(OSError):
                self._write_dropped()
        self._log.info("spool.legacy_found", path=str(path), batches=len(rows))
        if not rows:
            self._retire_legacy()

    def _retire_legacy(self) -> None:
        if self._legacy is not None:
            with contextlib.suppress(sqlite3.Error):
                self._legacy.close()
            self._legacy = None
        if self.legacy_path is not None:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(OSError):
                    os.unlink(f"{self.legacy_path}{suffix}")
            self._log.info("spool.legacy_replayed", path=str(self.legacy_path))

    def close(self) -> None:
        if self._dropped_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._dropped_fd)
            self._dropped_fd = None
        if self._legacy is not None:
            with contextlib.suppress(sqlite3.Error):
                self._legacy.close()
            self._legacy = None

    def free_bytes(self) -> int | None:
        """Free space on the spool's filesystem (for unprivileged users)."""
        try:
            return int(shutil.disk_usage(self.dir).free)
        except OSError:
            return None

    # -- append ------------------------------------------------------------
    async def append(self, lines: list[str], *, readings: int = 0) -> int:
        """Store ``lines`` durably (the first ``readings`` of them are
        readings, the rest other points); returns how many older lines had to
        be dropped to stay within max_bytes. Raises :class:`SpoolError`, an
        OSError (ENOSPC on a full disk), when they could not be stored; then
        nothing was."""
        body = self._cctx.compress("\n".join(lines).encode())
        readings = max(0, min(readings, len(lines)))
        async with self._lock:
            try:
                dropped = await asyncio.to_thread(self._append, body, len(lines), readings)
            except OSError as exc:
                raise SpoolError.wrap(exc) from exc
        self.changed.set()
        return dropped

    def _append(self, body: bytes, n: int, readings: int) -> int:
        dropped = 0
        while self.bytes + len(body) > self.max_bytes and self.batches > 0:
            dropped += self._drop_oldest()
        if dropped:
            self.dropped_lines += dropped
            try:
                self._write_dropped()
            except OSError as exc:
                self._log.error("spool.dropped_counter_not_saved", error=str(exc),
                                dropped_lines=self.dropped_lines)
        bid = self._next_id
        created = int(time.time() * 1000)
        name = f"{bid:012d}-{created}-{n}-r{readings}.zst"
        tmp = self.dir / f"{name}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(body)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.dir / name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._fsync_dir()
        self._next_id = bid + 1
        self._files[bid] = _Entry(name, created, n, len(body), readings)
        self.batches += 1
        self.lines += n
        self.bytes += len(body)
        return dropped

    def _fsync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write_dropped(self) -> None:
        """Overwrite the counter in place (fixed width: no new blocks needed)."""
        if self._dropped_fd is None:
            self._open_dropped()
            if self._dropped_fd is None:
                raise OSError(errno.EIO, "the dropped-lines counter file cannot be opened")
        os.pwrite(self._dropped_fd, f"{self.dropped_lines:020d}\n".encode(), 0)
        os.fsync(self._dropped_fd)

    def _drop_oldest(self) -> int:
        if self._legacy_rows:
            rid = next(iter(self._legacy_rows))
            n = self._legacy_rows[rid][0]
            self._forget_legacy(rid)
            return n
        bid, entry = next(iter(self._files.items()))
        self._forget_file(bid)
        return entry.n_lines

    # -- replay ------------------------------------------------------------
    async def oldest(self) -> SpooledBatch | None:
        """The oldest batch, or None. A batch that cannot be read is set
        aside and counted; :class:`SpoolError` only when the folder fails."""
        async with self._lock:
            try:
                return await asyncio.to_thread(self._oldest)
            except OSError as exc:
                raise SpoolError.wrap(exc) from exc

    def _oldest(self) -> SpooledBatch | None:
        while self._legacy_rows:
            rid = next(iter(self._legacy_rows))
            try:
                assert self._legacy is not None
                row = self._legacy.execute("SELECT body, created_ms FROM batch WHERE id=?",
                                           (rid,)).fetchone()
                text = self._dctx.decompress(row[0]).decode() if row else None
            except (sqlite3.Error, zstandard.ZstdError, UnicodeDecodeError,
                    AssertionError) as exc:
                self._unreadable(f"legacy batch {rid}", exc, self._legacy_rows[rid][0])
                self._forget_legacy(rid)
                continue
            if text is None:
                self._forget_legacy(rid)
                continue
            return SpooledBatch(-rid, text.split("\n") if text else [], int(row[1]))
        while self._files:
            bid, entry = next(iter(self._files.items()))
            path = self.dir / entry.name
            try:
                text = self._dctx.decompress(path.read_bytes()).decode()
            except FileNotFoundError:
                self._forget_file(bid)
                continue
            except (OSError, zstandard.ZstdError, UnicodeDecodeError) as exc:
                self._unreadable(entry.name, exc, entry.n_lines)
                with contextlib.suppress(OSError):
                    os.rename(path, self.dir / f"{entry.name}.bad")
                self._forget_file(bid)
                continue
            return SpooledBatch(bid, text.split("\n") if text else [], entry.created_ms,
                                entry.readings)
        return None

    def _unreadable(self, what: str, exc: BaseException, n_lines: int) -> None:
        self.unreadable_batches += 1
        self.dropped_lines += n_lines
        with contextlib.suppress(OSError):
            self._write_dropped()
        self._log.error("spool.batch_unreadable", batch=what, lines=n_lines,
                        error=f"{type(exc).__name__}: {exc}"[:300])

    async def delete(self, batch_id: int) -> None:
        """Forget a replayed batch. Needs no free space. :class:`SpoolError`
        when the file cannot be removed (the batch is then replayed again:
        the same points, stored once)."""
        async with self._lock:
            try:
                await asyncio.to_thread(self._delete, batch_id)
            except OSError as exc:
                raise SpoolError.wrap(exc) from exc
        self.changed.set()

    def _delete(self, batch_id: int) -> None:
        if batch_id < 0:
            self._forget_legacy(-batch_id)
        else:
            self._forget_file(batch_id)

    def _forget_file(self, bid: int) -> None:
        entry = self._files.pop(bid, None)
        if entry is None:
            return
        # Counted out first: a file that cannot be removed is no longer
        # this run's (it is replayed again after a restart).
        self.batches -= 1
        self.lines -= entry.n_lines
        self.bytes -= entry.size
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.dir / entry.name)

    def _forget_legacy(self, rid: int) -> None:
        row = self._legacy_rows.pop(rid, None)
        if row is None:
            return
        if self._legacy is not None:
            # On a full disk the DELETE may fail: the row is then replayed
            # again after a restart, which stores the same points again.
            with contextlib.suppress(sqlite3.Error):
                self._legacy.execute("DELETE FROM batch WHERE id=?", (rid,))
        self.batches -= 1
        self.lines -= row[0]
        self.bytes -= row[1]
        if not self._legacy_rows:
            self._retire_legacy()
