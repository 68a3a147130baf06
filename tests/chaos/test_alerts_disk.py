"""The alert engine's state on a full disk (a 2 MiB tmpfs mounted by the
test): alerts are still raised and sent, the state waits in memory and is
written once there is room, and an engine started on the full disk starts.
The edge's /healthz says "disk full" meanwhile (the engine's ``disk_full``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from farmedge.registry import Contact
from tests.alerts_support import HttpReceiver, SimClock, farm_registry, local_ts, until
from tests.disks import fill_disk, small_tmpfs
from tests.integration.test_alerts import DRY_RULES, make_rig

pytestmark = [pytest.mark.chaos]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path, "2m", "disk") as mnt:
        yield mnt


async def test_the_alert_engine_goes_on_when_its_disk_is_full(
        small_disk: Path, http: HttpReceiver, county: str, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(DRY_RULES)
    state = small_disk / "alerts.sqlite"
    reg = farm_registry(county, sensors=1, contacts=[Contact(name="王", notify=[http.url()])])
    clock = SimClock(local_ts(2026, 6, 10, 10))
    rig = await make_rig(county=county, registry=reg, rules_path=rules, start=0, clock=clock,
                         state_path=state)
    filler = fill_disk(small_disk)
    try:
        for _ in range(3):
            await rig.feed({"soil-1": 15})
            await rig.step(600)
        await until(lambda: len(http.posts) == 1, what="the alert sent on a full disk")
        await until(lambda: rig.engine.disk_full, what="the engine says its disk is full")
        assert rig.engine._task is not None and not rig.engine._task.done()
    finally:
        await rig.stop()
    # started on the full disk, it starts
    rig = await make_rig(county=county, registry=reg, rules_path=rules, start=0, clock=clock,
                         state_path=state)
    try:
        filler.unlink()
        await rig.feed({"soil-1": 30})
        await rig.step(600)
        await until(lambda: not rig.engine.disk_full, what="room again")
        assert rig.engine._task is not None and not rig.engine._task.done()
    finally:
        await rig.stop()
