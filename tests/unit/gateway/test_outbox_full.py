"""The outbox on a full disk, made full by SQLite's ``max_page_count``
pragma (no root, no small filesystem: the file may not grow past its pages
now, and SQLite says SQLITE_FULL exactly as for a full SD card). Every
reading taken must end delivered, still in the outbox (on disk or held in
memory), or counted in ``dropped``."""

from __future__ import annotations

from pathlib import Path

from farmedge.contract import Quality
from farmedge.gateway import Outbox
from farmedge.gateway.outbox import NewRow, Row


def row(i: int) -> NewRow:
    return NewRow("soil-1", "soil_moisture", "%", float(i % 100), Quality.OK, None,
                  1_763_800_000_000 + i, i, True)


def fill(ob: Outbox) -> None:
    """No page more for the file: the next write that needs one fails."""
    pages = ob.db.execute("PRAGMA page_count").fetchone()[0]
    ob.db.execute(f"PRAGMA max_page_count = {pages}")


def room(ob: Outbox) -> None:
    ob.db.execute("PRAGMA max_page_count = 1073741823")


def add_until_full(ob: Outbox, start: int) -> int:
    """Add readings one at a time until the outbox says it is full; how many were taken."""
    i = start
    while not ob.full:
        ob.add([row(i)], "b1")
        i += 1
        assert i - start < 100_000, "the disk never filled"
    return i - start


def drain(ob: Outbox) -> set[int]:
    """What the broker gets: everything the outbox still has, oldest first."""
    got: set[int] = set()
    while rows := ob.peek(0, 50):
        got.update(r.ts for r in rows)
        ob.delete(rows)
        ob.commit()
    return got


def test_a_batch_in_flight_when_the_disk_fills_is_not_lost_uncounted(tmp_path: Path) -> None:
    """Published, no PUBACK yet, the connection lost (a broker outage); then
    the disk fills and the open transaction holding the batch is undone.
    The batch never reached the broker: it must be sent again, or counted."""
    ob = Outbox(tmp_path / "o.db").open()
    ob.add([row(i) for i in range(20)], "b1")
    ob.commit()
    ob.add([row(i) for i in range(20, 30)], "b1")  # the open transaction
    batch: list[Row] = ob.peek(0, 30)
    ob.mark_sent(batch)  # published; the connection dies before the PUBACK
    fill(ob)
    taken = 30 + add_until_full(ob, 30)
    assert {r.id for r in batch} <= {r.id for r in ob.peek(0, 100)}, "sent again from memory"
    assert ob.depth == 30 and ob.held == 10
    room(ob)
    ob.commit()  # room again: what memory held is written back
    assert not ob.full and ob.held == 0
    ob.close()
    ob = Outbox(tmp_path / "o.db").open()
    delivered = drain(ob)
    assert len(delivered) + ob.dropped == taken, (len(delivered), ob.dropped, taken)
    ob.close()


def test_a_puback_that_comes_after_the_transaction_was_undone_counts_once(
        tmp_path: Path) -> None:
    """The batch's PUBACK comes after the disk filled: it was delivered,
    and it is neither sent again nor counted as dropped."""
    ob = Outbox(tmp_path / "o.db").open()
    ob.add([row(i) for i in range(10)], "b1")
    ob.commit()
    ob.add([row(i) for i in range(10, 20)], "b1")
    batch = ob.peek(0, 20)
    ob.mark_sent(batch)
    fill(ob)
    taken = 20 + add_until_full(ob, 20)
    ob.delete(batch)  # the PUBACK
    delivered = {r.ts for r in batch}
    room(ob)
    ob.commit()
    again = drain(ob)
    assert not again & delivered, "nothing delivered is sent again"
    assert len(delivered | again) + ob.dropped == taken
    ob.close()


def test_a_delete_after_the_puback_that_fills_the_disk_loses_nothing_uncounted(
        tmp_path: Path) -> None:
    """The PUBACK's delete is the write that finds the disk full: the open
    transaction (new readings, another batch in flight) is undone."""
    ob = Outbox(tmp_path / "o.db").open()
    ob.add([row(i) for i in range(200)], "b1")
    ob.commit()
    ob.add([row(i) for i in range(200, 260)], "b1")
    first, second = ob.peek(0, 100), ob.peek(100, 160)
    ob.mark_sent(first)
    ob.mark_sent(second)  # ids up to 260: the open transaction's too
    fill(ob)
    taken = 260
    ob.delete(first)  # may or may not need a page
    while not ob.full:
        taken += 1
        ob.add([row(taken - 1)], "b1")
    delivered = {r.ts for r in first}
    # the connection is lost: the second batch's PUBACK never comes
    room(ob)
    ob.commit()
    again = drain(ob)
    assert len(delivered | again) + ob.dropped == taken, (len(delivered | again), ob.dropped,
                                                          taken)
    ob.close()


def test_readings_held_in_memory_at_a_stop_on_a_full_disk_are_counted(tmp_path: Path) -> None:
    """Still full at the stop: what only memory held is counted in ``dropped``
    (kept on disk for the next start) and logged."""
    ob = Outbox(tmp_path / "o.db").open()
    ob.add([row(i) for i in range(10)], "b1")
    ob.commit()
    ob.add([row(i) for i in range(10, 20)], "b1")
    ob.mark_sent(ob.peek(0, 20))
    fill(ob)
    taken = 20 + add_until_full(ob, 20)
    ob.close()
    ob = Outbox(tmp_path / "o.db").open()
    delivered = drain(ob)
    assert len(delivered) + ob.dropped == taken, (len(delivered), ob.dropped, taken)
    ob.close()
