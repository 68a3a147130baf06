"""The edge's local spool on real files: durable across reopen, replayed
oldest first, bounded with every dropped line counted, replayable on a full
disk, and a spool of the earlier SQLite format replayed after an upgrade."""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from farmedge.disk import is_disk_full
from farmedge.storage import StorageError
from farmedge.storage.errors import SpoolError
from farmedge.storage.spool import Spool
from tests.disks import fill_disk, small_tmpfs


async def test_spool_survives_reopen_and_replays_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    s = Spool(path, max_bytes=10_000_000)
    s.open()
    assert await s.append(["a 1", "b 2"]) == 0
    assert await s.append(["c 3"]) == 0
    s.close()

    s2 = Spool(path, max_bytes=10_000_000)
    s2.open()
    assert (s2.lines, s2.batches) == (3, 2)
    first = await s2.oldest()
    assert first is not None
    assert first.lines == ["a 1", "b 2"]
    await s2.delete(first.id)
    second = await s2.oldest()
    assert second is not None
    assert second.lines == ["c 3"]
    await s2.delete(second.id)
    assert await s2.oldest() is None
    assert (s2.lines, s2.bytes) == (0, 0)
    s2.close()


async def test_a_full_spool_drops_the_oldest_and_counts_it(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    s = Spool(path, max_bytes=4000)
    s.open()
    dropped = 0
    for i in range(40):
        # incompressible-ish lines so that the bound is reached
        dropped += await s.append([f"soil,sensor=s{i}-{j} moisture={i * 7919 % 1000 + j} {i}"
                                   for j in range(20)])
    assert dropped > 0
    assert s.bytes <= 4000
    assert s.dropped_lines == dropped
    assert s.lines + dropped == 40 * 20
    oldest = await s.oldest()
    assert oldest is not None
    assert "sensor=s0-" not in oldest.lines[0], "the oldest batches went first"
    s.close()
    s2 = Spool(path, max_bytes=4000)
    s2.open()
    assert s2.dropped_lines == dropped, "the drop count is kept on disk"
    s2.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, mounted for the test."""
    with small_tmpfs(tmp_path, "1m", "disk") as mnt:
        yield mnt


def _lines(i: int) -> list[str]:
    return [f"soil,sensor=s{i}-{j} moisture={(i * 7919 + j * 104729) % 100003} {i}"
            for j in range(200)]


async def test_on_a_full_disk_append_fails_cleanly_and_replay_still_deletes(
        small_disk: Path) -> None:
    s = Spool(small_disk / "spool", max_bytes=100_000_000)
    s.open()
    for i in range(5):
        await s.append(_lines(i))
    fill_disk(small_disk)
    with pytest.raises(SpoolError, match="No space left") as e:
        await s.append(_lines(5))
    assert is_disk_full(e.value) and isinstance(e.value, OSError | StorageError)
    assert not [p for p in (small_disk / "spool").iterdir() if p.name.endswith(".tmp")]
    held = s.lines
    s.close()
    # a restart on the full disk opens the spool, and replay frees space
    s2 = Spool(small_disk / "spool", max_bytes=100_000_000)
    s2.open()
    assert s2.lines == held
    while (b := await s2.oldest()) is not None:
        await s2.delete(b.id)
    assert (s2.lines, s2.batches, s2.bytes) == (0, 0, 0)
    assert await s2.append(_lines(1000)) == 0, "room again"
    s2.close()


async def test_a_spool_of_the_earlier_sqlite_format_is_replayed_then_removed(
        tmp_path: Path) -> None:
    legacy = tmp_path / "spool.sqlite3"
    db = sqlite3.connect(legacy, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE batch (id INTEGER PRIMARY KEY AUTOINCREMENT,"
               " created_ms INTEGER NOT NULL, n_lines INTEGER NOT NULL, body BLOB NOT NULL)")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER)")
    c = zstandard.ZstdCompressor()
    for i in range(3):
        db.execute("INSERT INTO batch (created_ms, n_lines, body) VALUES (?,?,?)",
                   (i, 2, c.compress(f"old {i}a\nold {i}b".encode())))
    db.execute("INSERT INTO meta VALUES ('dropped_lines', 7)")
    db.close()
    s = Spool(tmp_path / "spool", max_bytes=10_000_000, legacy=legacy)
    s.open()
    await s.append(["new 1"])
    assert (s.lines, s.batches, s.dropped_lines) == (7, 4, 7)
    seen = []
    while (b := await s.oldest()) is not None:
        seen += b.lines
        await s.delete(b.id)
    assert seen == ["old 0a", "old 0b", "old 1a", "old 1b", "old 2a", "old 2b", "new 1"]
    assert not legacy.exists()
    s.close()
    s2 = Spool(tmp_path / "spool", max_bytes=10_000_000, legacy=legacy)
    s2.open()
    assert (s2.lines, s2.dropped_lines) == (0, 7)
    s2.close()


async def test_an_unreadable_batch_is_set_aside_and_counted(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool", max_bytes=10_000_000)
    s.open()
    await s.append(["a 1", "b 2"])
    await s.append(["c 3"])
    first = sorted((tmp_path / "spool").glob("*.zst"))[0]
    first.write_bytes(b"not zstd")
    b = await s.oldest()
    assert b is not None
    assert b.lines == ["c 3"]
    assert s.dropped_lines == 2
    assert s.unreadable_batches == 1
    assert (tmp_path / "spool" / f"{first.name}.bad").exists()
    s.close()


async def test_a_batch_that_cannot_be_removed_is_counted_out(tmp_path: Path) -> None:
    """The delete says so, as a SpoolError (the file stays and is replayed
    again after a restart: the same points); the spool's counts no longer
    hold it, so they come down to 0 (they used to keep it until a restart).
    A directory in the batch file's place makes the unlink fail, for root too."""
    path = tmp_path / "spool"
    s = Spool(path, max_bytes=10_000_000)
    s.open()
    await s.append(["a 1"])
    b = await s.oldest()
    assert b is not None
    [f] = path.glob("*.zst")
    f.unlink()
    f.mkdir()
    with pytest.raises(SpoolError) as e:
        await s.delete(b.id)
    assert isinstance(e.value, StorageError) and e.value.errno in (errno.EISDIR, errno.EPERM)
    assert (s.lines, s.batches, s.bytes) == (0, 0, 0)
    assert await s.oldest() is None
    s.close()


def _batch_file(path: Path, name: str, lines: list[str]) -> None:
    (path / name).write_bytes(zstandard.ZstdCompressor().compress("\n".join(lines).encode()))


async def test_two_files_of_one_id_are_both_replayed(tmp_path: Path) -> None:
    """Files copied in from another spool can name the same batch id twice
    ("000000000001-" and "0000000000001-"): the spool opens, replays both,
    and counts them out (it used to stop the edge with a TypeError)."""
    path = tmp_path / "spool"
    path.mkdir()
    _batch_file(path, "000000000001-1000-1-r1.zst", ["a 1"])
    _batch_file(path, "0000000000001-2000-2-r2.zst", ["b 2", "c 3"])
    s = Spool(path, max_bytes=10_000_000)
    s.open()
    assert (s.batches, s.lines) == (2, 3)
    await s.append(["d 4"], readings=1)
    seen: list[list[str]] = []
    while (b := await s.oldest()) is not None:
        seen.append(b.lines)
        await s.delete(b.id)
    assert seen == [["a 1"], ["b 2", "c 3"], ["d 4"]]
    assert (s.lines, s.batches, s.bytes) == (0, 0, 0)
    assert not list(path.glob("*.zst"))
    s.close()


async def test_a_name_claiming_more_readings_than_lines_is_held_to_its_lines(
        tmp_path: Path) -> None:
    """``-r<readings>`` past the batch's lines (a name edited by hand) counts
    no more readings than the batch has lines."""
    path = tmp_path / "spool"
    path.mkdir()
    _batch_file(path, "000000000001-1000-2-r99.zst", ["a 1", "b 2"])
    s = Spool(path, max_bytes=10_000_000)
    s.open()
    b = await s.oldest()
    assert b is not None and b.readings == 2
    s.close()
