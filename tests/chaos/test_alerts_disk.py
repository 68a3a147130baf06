"""The alert engine's state on a full disk (a 2 MiB tmpfs mounted by the
test): alerts are still raised and sent, the state waits in memory and is
written once there is room, and an engine started on the full disk starts.
The edge's /healthz says "disk full" meanwhile (the engine's ``disk_full``)."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from farmedge.registry import Contact
from tests.alerts_support import HttpReceiver, SimClock, local_ts, until
from tests.test_alerts import DRY_RULES, farm_registry, make_rig

pytestmark = [pytest.mark.chaos]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
async def http() -> AsyncIterator[HttpReceiver]:
    r = await HttpReceiver().start()
    yield r
    await r.stop()


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for size in (65536, 4096, 512, 1):
            chunk = b"x" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


async def test_the_alert_engine_goes_on_when_its_disk_is_full(
        small_disk: Path, http: HttpReceiver, county: str, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(DRY_RULES)
    state = small_disk / "alerts.sqlite"
    reg = farm_registry(county, sensors=1, contacts=[Contact(name="王", notify=[http.url()])])
    clock = SimClock(local_ts(2026, 6, 10, 10))
    rig = await make_rig(county=county, registry=reg, rules_path=rules, start=0, clock=clock,
                         state_path=state)
    filler = fill(small_disk)
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
