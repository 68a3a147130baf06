"""What the outbox keeps when the disk is full (docs/gateway.md, "Outbox and
what a power cut costs"): the :class:`Ledger` of the open transaction's
reading ids, so a transaction the full disk undid is counted right, and
:class:`Unwritten`, the readings held in memory meanwhile (published ones
awaiting a PUBACK, and the undone transaction's), sent from there and
written back once there is room."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import OutboxError
from .outbox_db import QUALITY_CODE, DiskFull

if TYPE_CHECKING:
    from .outbox import Outbox, Row

__all__ = ["HELD_MAX", "RESUME_FREE_BYTES", "FullDisk", "Ledger", "Unwritten", "free_bytes"]

#: At most this many readings held in memory while the disk is full.
HELD_MAX = 20_000
#: While full, try again once at least this much is free.
RESUME_FREE_BYTES = 1 << 20


@dataclass(slots=True)
class Ledger:
    """Which reading ids the open transaction holds, so that a transaction
    lost to a full disk is counted right: its readings kept in memory are
    still on their way, those it removed itself (acknowledged, dropped)
    are counted already, the others are lost, and none of their ids is
    used again."""

    #: sqlite_sequence of ``reading`` at the last commit: the open
    #: transaction's readings have the ids after it.
    committed: int = 0
    #: Readings added in the open transaction.
    tx_rows: int = 0
    #: Readings of the open transaction it removed again (acknowledged,
    #: discarded, dropped by the bounds): counted where that was done.
    tx_gone: int = 0
    #: The highest reading id that may have been used (never reused).
    id_high: int = 0

    def added(self, n: int) -> None:
        self.tx_rows += n
        self.id_high = max(self.id_high, self.committed + self.tx_rows)

    def commit(self) -> None:
        self.committed += self.tx_rows
        self.tx_rows = 0
        self.tx_gone = 0

    def lose(self, also_lost: int, kept: int = 0) -> int:
        """The open transaction is given up, ``kept`` of its readings are
        held in memory; how many readings are lost."""
        lost = max(0, self.tx_rows - self.tx_gone - kept) + also_lost
        self.id_high = max(self.id_high, self.committed + self.tx_rows + also_lost)
        self.tx_rows = 0
        self.tx_gone = 0
        return lost

    def resumed(self) -> None:
        self.committed = max(self.committed, self.id_high)


class Unwritten:
    """Readings only memory holds: ``sent``, those of the open transaction
    the uplink published and the broker has not acknowledged (should the
    transaction be lost, they are kept), and ``held``, those of a lost
    transaction (at most ``limit``)."""

    def __init__(self, limit: int = HELD_MAX) -> None:
        self.limit = limit
        self.sent: dict[int, Row] = {}
        self.held: dict[int, Row] = {}

    def mark_sent(self, rows: Iterable[Row], committed: int) -> None:
        for r in rows:
            if r.id > committed:  # those up to it are on disk for good
                self.sent[r.id] = r

    def sent_between(self, start: int, end: int) -> list[Row]:
        return [r for i, r in self.sent.items() if start < i <= end]

    def prune_sent(self, last_id: int) -> None:
        for i in [i for i in self.sent if i <= last_id]:
            del self.sent[i]

    def keep(self, rows: Iterable[Row]) -> int:
        """Hold ``rows`` (up to the limit); how many more are held."""
        kept = 0
        for r in rows:
            if len(self.held) >= self.limit:
                break
            if r.id not in self.held:
                self.held[r.id] = r
                kept += 1
        return kept

    def forget(self, rows: Iterable[Row]) -> tuple[list[Row], list[Row]]:
        """Take ``rows`` out: (those not held, those that were)."""
        on_disk: list[Row] = []
        held: list[Row] = []
        for r in rows:
            self.sent.pop(r.id, None)
            (held if self.held.pop(r.id, None) is not None else on_disk).append(r)
        return on_disk, held

    def after(self, after_id: int) -> list[Row]:
        return [r for i, r in self.held.items() if i > after_id]

    def rows(self) -> list[Row]:
        return sorted(self.held.values(), key=lambda r: r.id)

    def totals(self) -> tuple[int, int, int]:
        """Held readings, their estimated bytes, how many are unsynced."""
        h = self.held.values()
        return len(h), sum(r.size for r in h), sum(1 for r in h if not r.synced)


class FullDisk:
    """The outbox's moves on a full disk: losing the open transaction
    (keeping what it can in memory, counting the rest), trying for room
    again, and what a stop while full still owes."""

    def __init__(self, outbox: Outbox) -> None:
        self.ob = outbox

    def hit(self, exc: BaseException, *, also_lost: int = 0) -> None:
        """The disk is full: give up the open transaction (it cannot commit),
        keep its readings in memory (bounded), count the others and
        ``also_lost`` as dropped, and stop taking readings until there is
        room again."""
        ob = self.ob
        kept = self._keep_open_transaction()
        lost = ob._ids.lose(also_lost, kept)
        ob.file.rollback()
        ob._mem.sent.clear()
        ob.dropped += lost
        ob._boots = ob.file.boots()
        ob._recount()
        if not ob.full:
            ob._log.error("gateway.outbox_full", error=str(exc), lost=lost,
                          held=len(ob._mem.held), dropped_total=ob.dropped, path=str(ob.path))
        ob.full = True

    def _keep_open_transaction(self) -> int:
        """Before the rollback: the open transaction's readings into memory
        (all of them when SQLite still has the transaction, else those
        published, mark_sent); how many were kept."""
        ob = self.ob
        start, end = ob._ids.committed, ob._ids.committed + ob._ids.tx_rows
        rows: list[Row] = []
        if ob._ids.tx_rows and ob.file.connection.in_transaction:
            with contextlib.suppress(OutboxError):
                rows = [r for r in ob._peek_db(start, ob._ids.tx_rows) if r.id <= end]
        return ob._mem.keep(rows or ob._mem.sent_between(start, end))

    def try_resume(self) -> None:
        """Room again (1 MiB free and a small write succeeds): write back
        what memory holds and take readings again."""
        ob = self.ob
        free = free_bytes(ob.path.parent)
        if free < RESUME_FREE_BYTES:
            return
        f = ob.file
        held = ob._mem.rows()
        try:
            f.begin()  # deletes of acknowledged readings may be waiting in it
            f.set_meta("dropped", ob.dropped)
            # Ids of the readings given up are never used again: the uplink
            # may have passed them already.
            f.raise_reading_id(ob._ids.id_high)
            if held:  # back on disk with their own ids
                f.insert_with_ids([(r.id, r.sensor, r.kind, r.unit, r.value,
                                    QUALITY_CODE[r.quality], r.animal, r.ts, r.mono, r.boot,
                                    int(r.synced), r.size) for r in held])
            f.commit()
        except DiskFull:
            f.rollback()
            ob._recount()
            return
        except OutboxError:
            f.rollback()
            raise
        ob.full = False
        ob._mem.held.clear()
        ob._ids.resumed()
        ob._recount()
        ob._log.warning("gateway.outbox_room_again", free_bytes=free,
                        dropped_total=ob.dropped, held_written=len(held))

    def forget_held(self, rows: Iterable[Row]) -> list[Row]:
        """Take ``rows`` out of memory; those that are on disk."""
        on_disk, held = self.ob._mem.forget(rows)
        self.ob.depth -= len(held)
        self.ob.bytes -= sum(r.size for r in held)
        self.ob.unsynced -= sum(1 for r in held if not r.synced)
        return on_disk

    def delete_rows(self, rows: list[Row]) -> int:
        """Delete these readings from the file; how many there were (those
        of the open transaction counted as gone from it)."""
        start = self.ob._ids.committed
        new = [r.id for r in rows if r.id > start]
        old = [r.id for r in rows if r.id <= start]
        n_new = self.ob.file.delete_ids(new) if new else 0
        self.ob._ids.tx_gone += n_new
        return n_new + (self.ob.file.delete_ids(old) if old else 0)

    def gone(self, rows: list[Row]) -> None:
        start = self.ob._ids.committed
        self.ob._ids.tx_gone += sum(1 for r in rows if r.id > start)

    def at_close(self) -> None:
        """A stop while full: readings only memory holds are counted in
        ``dropped``, which is written if the disk lets it."""
        ob = self.ob
        if ob._mem.held:
            n = len(ob._mem.held)
            ob._mem.held.clear()
            ob.dropped += n
            ob._log.error("gateway.outbox_held_lost", readings=n, dropped_total=ob.dropped,
                          path=str(ob.path), why="the disk is still full at the stop")
        if not ob.full:
            return
        f = ob.file
        try:
            f.begin()
            f.set_meta("dropped", ob.dropped)
            f.commit()
        except DiskFull:
            f.rollback()
            ob._log.error("gateway.outbox_count_not_saved", dropped_total=ob.dropped,
                          path=str(ob.path))


def free_bytes(path: Path) -> int:
    try:
        return int(shutil.disk_usage(path).free)
    except OSError:
        return RESUME_FREE_BYTES
