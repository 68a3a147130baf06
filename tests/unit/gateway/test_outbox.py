"""The outbox without a broker: durability across a crash, bounds, clock
correction, what it refuses, the batch rules the uplink sends by, and the
file an earlier version left. SQLite files in temporary directories."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from farmedge.contract import Quality, check_reading
from farmedge.gateway import FakeClock, Outbox, OutboxError, Sample
from farmedge.gateway.agent import check_sample
from farmedge.gateway.batching import ReplayProgress, next_batch
from farmedge.gateway.outbox import NewRow
from farmedge.gateway.outbox_full import Ledger
from farmedge.gateway.settings import UplinkSection

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "upgrade-168e95c" / "gateway"


def row(i: int, *, ts: int = 1_763_800_000_000, synced: bool = True, mono: int = 0) -> NewRow:
    return NewRow("soil-1", "soil_moisture", "%", float(i), Quality.OK, None, ts + i, mono + i,
                  synced)


def test_outbox_survives_reopen_and_only_committed_rows_persist(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db").open()
    ob.add([row(i) for i in range(10)], "b1")
    ob.commit()
    ob.add([row(i) for i in range(10, 15)], "b1")  # not committed
    ob.db.close()  # as if the process died here
    ob = Outbox(tmp_path / "o.db").open()
    assert ob.depth == 10
    assert [r.value for r in ob.peek(0, 100)] == [float(i) for i in range(10)]
    first = ob.peek(0, 4)
    ob.delete(first)
    ob.commit()
    assert [r.value for r in ob.peek(0, 2)] == [4.0, 5.0]
    assert ob.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert ob.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    ob.close()


def test_sequence_numbers_never_repeat_after_a_crash(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db").open()
    a = [ob.next_seq() for _ in range(5)]
    ob.db.close()  # as if the process died here
    ob = Outbox(tmp_path / "o.db").open()
    b = ob.next_seq()
    assert a == [0, 1, 2, 3, 4] and b > a[-1]
    ob.close()


def test_a_clean_stop_keeps_the_exact_next_sequence_number(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db").open()
    a = [ob.next_seq() for _ in range(5)]
    ob.close()  # a clean stop
    ob = Outbox(tmp_path / "o.db").open()
    b = [ob.next_seq() for _ in range(3)]
    ob.db.close()  # then a crash: the block reserved from 5 on is skipped, none repeated
    ob = Outbox(tmp_path / "o.db").open()
    c = ob.next_seq()
    ob.close()
    ob = Outbox(tmp_path / "o.db").open()
    d = ob.next_seq()
    ob.close()
    assert a == [0, 1, 2, 3, 4] and b == [5, 6, 7]
    assert c == 5 + 1000 and d == c + 1


def test_outbox_drops_the_oldest_beyond_its_size_and_counts_it(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", max_bytes=100 * 61).open()  # ~100 rows of 61 B
    ob.add([row(i) for i in range(250)], "b1")
    dropped = ob.enforce_bounds(None)
    ob.commit()
    assert dropped >= 150 and ob.dropped == dropped and ob.bytes <= ob.max_bytes
    assert ob.peek(0, 1)[0].value == float(dropped)  # the oldest went first
    ob.close()
    ob = Outbox(tmp_path / "o.db").open()
    assert ob.dropped == dropped and ob.depth == 250 - dropped  # persisted
    ob.close()


def test_outbox_drops_readings_older_than_its_age_bound(tmp_path: Path) -> None:
    now = 1_763_800_000_000
    ob = Outbox(tmp_path / "o.db", max_age_ms=3_600_000).open()
    ob.add([row(i, ts=now - 7_200_000) for i in range(5)]
           + [row(i, ts=now - 7_200_000, synced=False) for i in range(5, 7)]
           + [row(i, ts=now - 60_000) for i in range(7, 10)], "b1")
    assert ob.enforce_bounds(now) == 5
    assert ob.enforce_bounds(None) == 0
    assert [r.value for r in ob.peek(0, 100)] == [5.0, 6.0, 7.0, 8.0, 9.0]
    ob.close()


def test_clock_correction_uses_the_monotonic_clock_of_the_same_boot(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db").open()
    wrong = 946_684_800_000  # the Pi woke up in 2000
    ob.add([row(0, ts=wrong, synced=False, mono=10_000)], "old-boot")
    ob.add([row(1, ts=wrong, synced=False, mono=20_000)], "this-boot")
    fixed = ob.correct_clock("this-boot", now_wall_ms=1_763_800_000_000, now_mono_ms=80_001)
    assert fixed == 1 and ob.unsynced == 1
    old, new = ob.peek(0, 10)
    assert (old.synced, old.ts) == (False, wrong)  # another boot: cannot be re-dated
    assert (new.synced, new.ts) == (True, 1_763_800_000_000 - (80_001 - 20_001))
    ob.close()


def test_range_and_unit_checks_mark_quality() -> None:
    assert check_sample(Sample("soil_moisture", 23.4, "%")) is Quality.OK
    assert check_sample(Sample("soil_temperature", 85.0, "degC")) is Quality.ERROR
    assert check_sample(Sample("soil_moisture", 23.4, "kPa")) is Quality.ERROR
    assert check_sample(Sample("soil_moisture", 23.4, "%", Quality.SUSPECT)) is Quality.SUSPECT


# -- what it refuses ------------------------------------------------------------


def test_a_file_that_is_not_an_outbox_is_an_outbox_error(tmp_path: Path) -> None:
    bad = tmp_path / "o.db"
    bad.write_bytes(b"this is not a database, it is a shopping list" * 100)
    with pytest.raises(OutboxError, match=r"o\.db"):
        Outbox(bad).open()


def test_a_path_that_cannot_be_made_is_an_outbox_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutboxError, match="file"):
        Outbox(tmp_path / "file" / "sub" / "o.db").open()


def test_using_a_closed_outbox_is_an_outbox_error(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    with pytest.raises(OutboxError, match="not open"):
        ob.peek(0, 1)
    ob.open().close()
    with pytest.raises(OutboxError, match="not open"):
        ob.add([row(0)], "b1")


def test_a_damaged_database_is_not_opened(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    ob = Outbox(path).open()
    ob.add([row(i) for i in range(2000)], "b1")
    ob.close()
    data = bytearray(path.read_bytes())  # closed: the WAL is checkpointed
    for page in range(2, 6):  # b-tree page headers overwritten (pages of 4 KiB)
        data[(page - 1) * 4096:(page - 1) * 4096 + 8] = b"\x07" + b"\xff" * 7
    path.write_bytes(bytes(data))
    with pytest.raises(OutboxError, match=r"o\.db"):
        Outbox(path).open()


def test_discarded_readings_are_counted_and_gone_for_good(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db").open()
    ob.add([row(i) for i in range(5)], "b1")
    ob.discard(ob.peek(0, 2))
    ob.close()
    ob = Outbox(tmp_path / "o.db").open()
    assert (ob.depth, ob.dropped) == (3, 2)
    assert [r.value for r in ob.peek(0, 10)] == [2.0, 3.0, 4.0]
    ob.close()


def test_the_ledger_counts_a_lost_transaction() -> None:
    """A transaction the full disk undid: readings kept in memory are on
    their way, those it removed itself (acknowledged) are counted already,
    the rest are lost, and no id of them is used again."""
    led = Ledger(committed=100, id_high=100)
    led.added(10)  # ids 101..110
    led.tx_gone = 2  # two of them acknowledged and deleted
    assert led.lose(also_lost=3, kept=4) == 10 - 2 - 4 + 3
    assert led.tx_rows == 0 and led.id_high == 113
    led.resumed()
    assert led.committed == 113


# -- an outbox an earlier version wrote ---------------------------------------------


def test_the_outbox_an_earlier_version_left_opens_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    shutil.copy(FIXTURE / "outbox.sqlite3", path)
    for extra in ("-wal", "-shm"):
        if (FIXTURE / f"outbox.sqlite3{extra}").exists():
            shutil.copy(FIXTURE / f"outbox.sqlite3{extra}", tmp_path / f"outbox.sqlite3{extra}")
    # What the earlier version queued: tests/fixtures/upgrade-168e95c/manifest.json.
    queued = json.loads((FIXTURE.parent / "manifest.json").read_text())["gateway"]
    ob = Outbox(path).open()
    assert ob.depth == queued["depth"]
    rows = ob.peek(0, 1000)
    assert Counter(r.sensor for r in rows) == queued["queued"]
    for r in rows:  # every one can still go on the wire
        check_reading(r.wire())
    seq = ob.next_seq()
    ob.delete(rows[:10])
    ob.close()
    ob = Outbox(path).open()
    assert ob.depth == queued["depth"] - 10 and ob.next_seq() > seq
    ob.close()


# -- the batch rules ------------------------------------------------------------------


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.lines.append((event, kw))


UP = UplinkSection(batch_max=4, batch_max_wait_s=60, hold_unsynced_s=900)


def test_a_partial_batch_waits_then_goes(tmp_path: Path) -> None:
    clock = FakeClock(mono=1_000_000)
    ob = Outbox(tmp_path / "o.db").open()
    ob.add([row(i, mono=clock.mono) for i in range(3)], clock.boot)
    assert next_batch(ob, clock, UP, after_id=0, final=False, log=Log()) is None
    assert next_batch(ob, clock, UP, after_id=0, final=True, log=Log()) is not None
    clock.advance(60_000)
    rows, state = next_batch(ob, clock, UP, after_id=0, final=False, log=Log()) or ([], "")
    assert len(rows) == 3 and state == "synced"
    ob.add([row(i, mono=clock.mono) for i in range(3, 9)], clock.boot)
    rows, _ = next_batch(ob, clock, UP, after_id=0, final=False, log=Log()) or ([], "")
    assert len(rows) == 4  # full batches go at once
    assert next_batch(ob, clock, UP, after_id=rows[-1].id, final=False, log=Log())
    ob.close()


def test_unsynced_readings_are_held_then_redated_or_sent_marked(tmp_path: Path) -> None:
    clock = FakeClock(wall=946_684_800_000, mono=50_000, boot="now", is_synced=False)
    ob = Outbox(tmp_path / "o.db").open()
    ob.add([row(0, ts=clock.wall, synced=False, mono=10_000)], "earlier-boot")
    ob.add([row(i, ts=clock.wall, synced=False, mono=clock.mono) for i in (1, 2)], "now")
    log = Log()
    # An earlier boot's readings cannot be re-dated: they go at once, marked.
    rows, state = next_batch(ob, clock, UP, after_id=0, final=False, log=log) or ([], "")
    assert [r.value for r in rows] == [0.0] and state == "unsynced"
    # This boot's wait for NTP ...
    assert next_batch(ob, clock, UP, after_id=rows[-1].id, final=False, log=log) is None
    # ... and are re-dated by the boot clock once it is set.
    clock.is_synced, clock.wall = True, 1_763_800_000_000
    clock.advance(1_000)
    rows, state = next_batch(ob, clock, UP, after_id=1, final=True, log=log) or ([], "")
    assert state == "synced"
    assert [r.ts for r in rows] == [clock.wall - (clock.mono - (50_000 + i)) for i in (1, 2)]
    assert log.lines == [("gateway.clock_set_redated", {"readings": 2})]
    ob.close()


def test_held_readings_go_marked_after_hold_unsynced_s(tmp_path: Path) -> None:
    clock = FakeClock(mono=50_000, is_synced=False)
    ob = Outbox(tmp_path / "o.db").open()
    ob.add([row(i, synced=False, mono=clock.mono) for i in range(2)], clock.boot)
    assert next_batch(ob, clock, UP, after_id=0, final=False, log=Log()) is None
    clock.advance(900_001)
    rows, state = next_batch(ob, clock, UP, after_id=0, final=False, log=Log()) or ([], "")
    assert len(rows) == 2 and state == "unsynced"
    ob.close()


def test_replay_progress_is_logged_at_start_on_the_way_and_at_the_end() -> None:
    log = Log()
    p = ReplayProgress(log, batch_max=10, every_s=0.0)
    p.update(backlog=50, sent_total=0)  # small: no replay
    p.update(backlog=500, sent_total=0)
    p.update(backlog=300, sent_total=200)
    p.update(backlog=90, sent_total=410)
    events = [e for e, _ in log.lines]
    assert events == ["gateway.replaying_backlog", "gateway.replaying_backlog",
                      "gateway.backlog_replayed"]
    assert log.lines[1][1]["left"] == 300 and log.lines[2][1]["sent"] == 410
