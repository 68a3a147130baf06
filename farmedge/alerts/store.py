"""Alert state on disk (SQLite): rule states, groups, the message outbox,
daily budgets and the per-entity history behind baselines.

The engine keeps everything in memory and writes what changed in one
transaction per pass of its loop, before any message of that pass is handed
to a notifier. So a restart neither re-sends an alert that was already sent
nor forgets one that was firing or a message still waiting (quiet hours,
retries). WAL with synchronous=NORMAL keeps SD-card and disk writes low.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import StateError

__all__ = ["Changes", "StateStore"]

_TABLES = ("states", "groups", "outbox", "budget", "history")


class Changes:
    """What changed since the last commit, per table: key -> the live object
    (a dataclass, or a plain value) or None for a delete."""

    def __init__(self) -> None:
        self.states: dict[str, Any] = {}
        self.groups: dict[str, Any] = {}
        self.outbox: dict[str, Any] = {}
        self.budget: dict[str, Any] = {}

    def rows(self) -> dict[str, dict[str, Any]]:
        """The rows to write (dataclasses as dicts)."""
        out: dict[str, dict[str, Any]] = {}
        for table in ("states", "groups", "outbox", "budget"):
            rows: dict[str, Any] = getattr(self, table)
            if rows:
                out[table] = {k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v)
                                  and not isinstance(v, type) else v)
                              for k, v in rows.items()}
        return out

    def clear(self) -> None:
        """After a successful write (on a failed one the changes wait)."""
        for table in ("states", "groups", "outbox", "budget"):
            getattr(self, table).clear()


class StateStore:
    """Key -> JSON tables in one SQLite file (``:memory:`` for none)."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        if self._db is not None:
            return
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            try:
                self._db = self._connect(exclusive=False)
            except sqlite3.Error:
                if self.path == ":memory:" or _free(self.path) >= 1 << 20:
                    raise
                # A full disk: WAL mode cannot make its shared-memory file; in
                # exclusive locking mode SQLite keeps that index in memory.
                self._db = self._connect(exclusive=True)
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"alert state {self.path}: cannot open: {exc}") from exc

    def _connect(self, *, exclusive: bool) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            if exclusive:
                db.execute("PRAGMA locking_mode=EXCLUSIVE")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            for t in _TABLES:
                db.execute(f"CREATE TABLE IF NOT EXISTS {t} (key TEXT PRIMARY KEY,"
                           " data TEXT NOT NULL)")
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def load(self, table: str) -> dict[str, Any]:
        assert self._db is not None and table in _TABLES
        try:
            return {k: json.loads(v)
                    for k, v in self._db.execute(f"SELECT key, data FROM {table}")}
        except (sqlite3.Error, ValueError) as exc:
            raise StateError(f"alert state {self.path}: cannot read {table}: {exc}") from exc

    def write(self, changes: Mapping[str, Mapping[str, Any | None]]) -> None:
        """``{table: {key: data or None (delete)}}`` in one transaction;
        StateError (its cause the SQLite or OS error) when it fails."""
        try:
            self._write(changes)
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"alert state {self.path}: cannot write: {exc}") from exc

    def _write(self, changes: Mapping[str, Mapping[str, Any | None]]) -> None:
        assert self._db is not None
        if not any(changes.values()):
            return
        db = self._db
        db.execute("BEGIN")
        try:
            for table, rows in changes.items():
                assert table in _TABLES
                dels: list[tuple[str]] = []
                puts: list[tuple[str, str]] = []
                for k, v in rows.items():
                    if v is None:
                        dels.append((k,))
                    else:
                        puts.append((k, json.dumps(v, ensure_ascii=False, separators=(",", ":"))))
                if dels:
                    db.executemany(f"DELETE FROM {table} WHERE key = ?", dels)
                if puts:
                    db.executemany(f"INSERT OR REPLACE INTO {table} (key, data) VALUES (?, ?)",
                                   puts)
            db.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (a full disk does): then a
            # ROLLBACK fails and would hide the real error.
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise

    def keys(self, table: str) -> Iterable[str]:
        assert self._db is not None and table in _TABLES
        return [r[0] for r in self._db.execute(f"SELECT key FROM {table}")]


def _free(path: str) -> int:
    try:
        return int(shutil.disk_usage(Path(path).parent).free)
    except OSError:
        return 1 << 62
