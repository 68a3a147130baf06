"""The edge's local spool on a real SQLite file: durable across reopen,
replayed oldest first, bounded with every dropped line counted."""

from __future__ import annotations

from pathlib import Path

from farmedge.edge.spool import Spool


async def test_spool_survives_reopen_and_replays_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
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
    path = tmp_path / "spool.sqlite3"
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
