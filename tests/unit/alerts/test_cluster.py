"""The alert engine in cluster mode, without servers: the fence before a
send, partitions gained and lost, the rows of a partition. The fence and the
partition store are fakes passed by constructor (the real ones, over
JetStream's key-value store, are tested in
tests/integration/test_alerts_cluster.py)."""

from __future__ import annotations

from pathlib import Path

from farmedge.alerts.cluster import farm_of_row

from .support import farm_registry, local_ts, make_rig, rules_file

SMS = "json://127.0.0.1:9/sms"


class FakeFence:
    """Every farm in partition 3; ``ours`` says whether the lease is held."""

    def __init__(self, ours: bool = True) -> None:
        self.ours = ours
        self.checks: list[int] = []

    def partition_of(self, county: str, farm: str) -> int:
        return 3

    def owned(self) -> frozenset[int]:
        return frozenset({3}) if self.ours else frozenset()

    async def check(self, partition: int) -> bool:
        self.checks.append(partition)
        return self.ours


def _dry_rig(tmp_path: Path):  # type: ignore[no-untyped-def]
    from farmedge.registry import Contact
    reg = farm_registry(sensors=1, contacts=[Contact(name="王", notify=[SMS])])
    return make_rig(reg, rules=rules_file(tmp_path), start=local_ts(2026, 6, 10, 10))


async def test_a_fenced_engine_sends_nothing_and_keeps_the_message(tmp_path: Path) -> None:
    rig = _dry_rig(tmp_path)
    fence = FakeFence(ours=False)
    rig.engine.attach_fence(fence)
    for _ in range(4):
        rig.feed({"soil-1": 12})
        await rig.step(600)
    assert rig.events("raise") == ["raise"]
    assert rig.notifier.sent == []
    assert fence.checks and set(fence.checks) == {3}
    assert len(rig.engine.outbox.items) == 1
    assert rig.engine.stats["fenced"] >= 1
    # The fence lets it through again (the lease was ours after all): sent once.
    fence.ours = True
    await rig.step(10)
    assert rig.notifier.messages(SMS) == [
        "3号地土壤偏干：含水量12%（适宜22–30%），请24小时内灌溉。"]
    assert rig.engine.outbox.items == {}
    rig.close()


async def test_an_engine_with_its_lease_sends_as_without_a_fence(tmp_path: Path) -> None:
    rig = _dry_rig(tmp_path)
    fence = FakeFence(ours=True)
    rig.engine.attach_fence(fence)
    await rig.engine.partition_gained(3)
    for _ in range(4):
        rig.feed({"soil-1": 12})
        await rig.step(600)
    assert len(rig.notifier.sent) == 1 and fence.checks == [3]
    await rig.engine.partition_lost(3)
    rig.close()


def test_each_row_of_the_state_names_its_farm_or_none() -> None:
    assert farm_of_row("states", "crops/soil-dry|c1/wang-12|sensor:gw-1/s1", {}) == \
        ("c1", "wang-12")
    assert farm_of_row("states", "center/broker-down|_center/_center|farm:mqtt", {}) is None
    assert farm_of_row("states", "center/mass|黑龙江/_center|farm:mass:黑龙江", {}) is None
    assert farm_of_row("groups", "c1/wang.12|soil-dry|plot:field-3", {}) == ("c1", "wang.12")
    assert farm_of_row("outbox", "x", {"county": "c1", "farm": "f"}) == ("c1", "f")
    assert farm_of_row("outbox", "x", {"county": "_center", "farm": "_center"}) is None
    assert farm_of_row("outbox", "x", None) is None
    assert farm_of_row("budget", "c1/f/2026-06-10", 3) == ("c1", "f")
    assert farm_of_row("budget", "_center/2026-06-10", 3) is None
    assert farm_of_row("budget", "officer:张/2026-06-10", 3) is None
    assert farm_of_row("history", "c1/f/gw-1/s1/soil_moisture", {}) == ("c1", "f")
