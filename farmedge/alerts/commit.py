"""Writing what changed: once per pass, before any message of the pass is
handed to a notifier (store.py; in cluster mode a partition's rows go to
its partition store, partitions.py)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from farmedge.disk import is_disk_full
from farmedge.logs import get_logger

from .errors import StateError

if TYPE_CHECKING:
    from .engine import AlertEngine

__all__ = ["HISTORY_SAVE_S", "StateWriter"]

log = get_logger("farmedge.alerts")

HISTORY_SAVE_S = 300.0          # how often hourly history goes to disk (real seconds)


class StateWriter:
    def __init__(self, engine: AlertEngine) -> None:
        self.engine = engine
        self._history_saved = time.monotonic()

    def _rows(self, history: bool) -> dict[str, dict[str, Any]]:
        e = self.engine
        changes = e._changes.rows()
        if history or time.monotonic() - self._history_saved > HISTORY_SAVE_S:
            changes["history"] = e.history.changed_rows()
            self._history_saved = time.monotonic()
        return changes

    def commit(self, *, history: bool = False) -> None:
        """Into the state file (one edge; tools and tests)."""
        changes = self._rows(history)
        if changes:
            self.engine._store.write(changes)
        self.engine._changes.clear()

    async def commit_async(self, *, history: bool = False) -> None:
        """As :meth:`commit`; in cluster mode a partition's rows go to its store."""
        cluster = self.engine.cluster
        if cluster is None:
            return self.commit(history=history)
        changes = self._rows(history)
        if changes:
            await cluster.write(changes)
        self.engine._changes.clear()
        return None

    async def commit_or_hold(self) -> None:
        """Commit; when the state cannot be written (a full disk, a
        read-only or failing one) keep the changes in memory (they are
        written at a later tick), go on alerting, and say so: in
        ``disk_full`` for a full disk, in ``state_error`` for the rest."""
        e = self.engine
        try:
            await self.commit_async()
        except StateError as exc:
            full = exc.__cause__ is not None and is_disk_full(exc.__cause__)
            if full and not e.disk_full:
                log.error("alerts.disk_full", error=str(exc),
                          detail="state kept in memory until there is room")
            elif not full and e.state_error is None:
                log.error("alerts.state_write_failed", error=str(exc),
                          detail="state kept in memory until it can be written")
            e.disk_full = full
            e.state_error = None if full else str(exc)
            return
        if e.disk_full:
            log.warning("alerts.disk_room_again")
        elif e.state_error is not None:
            log.warning("alerts.state_written_again")
        e.disk_full = False
        e.state_error = None
