"""Readings the broker refuses for themselves, set aside so that the rest
of the outbox flows (farmedge/gateway/refusal.py decides when).

"Nothing acknowledged is lost": the outbox took the reading, so it is not
deleted. It moves into the outbox file's ``refused`` table, with the
broker's reason code and the time, and is counted (``count``, the status's
``refused``, the log's ``gateway.reading_set_aside``); it is not counted in
``dropped``, which means readings the gateway could not keep. A refusal
for the reading itself is often the broker's set-up (a message size limit
lower than the gateway's messages, a plugin's rule): once that is fixed,
``farmedge gateway requeue-refused`` puts them back into the outbox, sent
first. The table is bounded (``MAX_REFUSED``): beyond it the oldest are
deleted and those counted in ``dropped``, logged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .outbox_db import DiskFull

if TYPE_CHECKING:
    from .outbox import Outbox, Row

__all__ = ["MAX_REFUSED", "Aside"]

#: At most this many readings set aside.
MAX_REFUSED = 10_000


class Aside:
    def __init__(self, outbox: Outbox, *, limit: int = MAX_REFUSED) -> None:
        self.ob = outbox
        self.limit = limit

    @property
    def count(self) -> int:
        """Readings set aside (in the file's ``refused`` table; 0 when the
        outbox is not open)."""
        if not self.ob.is_open:
            return 0
        return self.ob.file.refused_count()

    def put(self, row: Row, code: int, at_ms: int) -> bool:
        """Set ``row`` aside (``code``: the broker's reason); True when it
        is kept. A reading only memory holds (the disk is full) cannot be
        kept: it is counted in ``dropped``, logged."""
        ob = self.ob
        on_disk = ob._fulldisk.forget_held([row])
        if not on_disk or ob.full:
            if not on_disk:
                ob.dropped += 1
            ob._log.error("gateway.refused_not_kept", sensor=row.sensor, ts=row.ts, code=code,
                          why="the disk is full", dropped_total=ob.dropped)
            return False
        f = ob.file
        # Not counted as gone from the open transaction: should the full
        # disk undo it, a reading of it set aside is lost with it, counted.
        try:
            f.begin()
            n = f.set_aside(row.id, code, at_ms)
            over = f.drop_oldest_refused(self.limit) if self.count > self.limit else 0
            if over:
                ob.dropped += over
                f.set_meta("dropped", ob.dropped)
        except DiskFull as exc:
            ob._disk_full(exc)
            return False
        ob._recount()
        if over:
            ob._log.error("gateway.refused_dropped_oldest", dropped=over, limit=self.limit,
                          dropped_total=ob.dropped)
        return n > 0

    def list(self) -> list[tuple[str, str, int, int]]:
        """(sensor, kind, ts, code) of every reading set aside, oldest first."""
        if not self.count:
            return []
        return [(str(a), str(b), int(c), int(d)) for a, b, c, d in self.ob.file.execute(
            "SELECT sensor, kind, ts, code FROM refused ORDER BY id")]

    def requeue(self) -> int:
        """Every reading set aside back into the outbox; how many."""
        f = self.ob.file
        f.begin()
        n = f.requeue_refused()
        f.commit()
        self.ob._recount()
        return n
