"""The state file: a restart goes on from it (nothing sent twice, nothing
forgotten), rules removed from the rule files are forgotten quietly, and a
file written by the previous version (rows dumped by the code of commit
ffa6708 in data/state_ffa6708.json, in that version's table layout) loads."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from farmedge.alerts.delivery import Delivery
from farmedge.registry import Contact, Farm, GatewayEntry, Plot, Registry, SensorMeta

from .support import DRY_RULES, SimClock, farm_registry, local_ts, make_rig, rules_file

DATA = Path(__file__).parent / "data"
SMS = "json://127.0.0.1:9/sms"
NIGHT = "json://127.0.0.1:9/night"


async def test_restart_while_firing_sends_nothing_twice(tmp_path: Path) -> None:
    reg = farm_registry(sensors=1, contacts=[Contact(name="王", notify=[SMS])])
    state = tmp_path / "alerts.sqlite"
    rules = rules_file(tmp_path, device=False)
    clock = SimClock(local_ts(2026, 6, 10, 10))
    rig = make_rig(reg, rules=rules, start=0, clock=clock, state_path=state)
    for _ in range(4):
        rig.feed({"soil-1": 15})
        await rig.step(600)
    assert len(rig.notifier.sent) == 1
    rig.close()
    rig = make_rig(reg, rules=rules, start=0, clock=clock, state_path=state)
    assert rig.engine.firing() == [("test-dry/soil-dry", "sensor:gw-1/soil-1", "firing")]
    for v in (14, 15, 14, 15):
        rig.feed({"soil-1": v})
        await rig.step(600)
    assert rig.notifier.sent == []
    for _ in range(4):
        rig.feed({"soil-1": 26})
        await rig.step(600)
    assert rig.notifier.messages() == ["3号地土壤水分已恢复：含水量26%。"]
    rig.close()


async def test_a_held_message_survives_a_restart_and_goes_once(tmp_path: Path) -> None:
    reg = farm_registry(sensors=1, contacts=[
        Contact(name="王", notify=[SMS], quiet_hours="21:00-07:00")])
    state = tmp_path / "alerts.sqlite"
    rules = rules_file(tmp_path, device=False)
    clock = SimClock(local_ts(2026, 6, 10, 22))
    rig = make_rig(reg, rules=rules, start=0, clock=clock, state_path=state)
    for _ in range(3):
        rig.feed({"soil-1": 15})
        await rig.step(600)
    assert rig.events("held") == ["held"] and rig.notifier.sent == []
    rig.close()
    rig = make_rig(reg, rules=rules, start=0, clock=clock, state_path=state)
    [d] = rig.engine.outbox.items.values()
    assert isinstance(d, Delivery) and d.event == "raise" and d.contact == "王"
    clock.t = local_ts(2026, 6, 11, 7, 1)
    await rig.step()
    await rig.step(60)
    assert rig.notifier.messages() == ["3号地土壤偏干：含水量15%（适宜22–30%），请24小时内灌溉。"]
    assert rig.engine.outbox.items == {}
    rig.close()


async def test_restart_with_a_rule_removed_forgets_its_alerts(tmp_path: Path) -> None:
    reg = farm_registry(sensors=1, contacts=[Contact(name="王", notify=[SMS])])
    state = tmp_path / "alerts.sqlite"
    clock = SimClock(local_ts(2026, 6, 10, 10))
    rig = make_rig(reg, rules=rules_file(tmp_path), start=0, clock=clock, state_path=state)
    for _ in range(3):
        rig.feed({"soil-1": 15})
        await rig.step(600)
    assert len(rig.notifier.sent) == 1
    rig.close()
    other = tmp_path / "other.yaml"
    other.write_text(DRY_RULES.replace("      - id: soil-dry", "      - id: soil-dry-2"))
    rig = make_rig(reg, rules=other, start=0, clock=clock, state_path=state)
    rig.feed({"soil-1": 30})
    await rig.step(600)
    assert rig.engine.firing() == [] and rig.notifier.sent == []
    rig.close()


def _old_state_file(path: Path) -> dict[str, object]:
    """The state file as the previous version wrote it: its tables, its rows."""
    dump = json.loads((DATA / "state_ffa6708.json").read_text())
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    for table, rows in dump["tables"].items():
        db.execute(f"CREATE TABLE {table} (key TEXT PRIMARY KEY, data TEXT NOT NULL)")
        db.executemany(f"INSERT INTO {table} (key, data) VALUES (?, ?)",
                       [(k, json.dumps(v, ensure_ascii=False)) for k, v in rows.items()])
    db.close()
    return dump  # type: ignore[no-any-return]


def _old_registry() -> Registry:
    """The registry the file was written with."""
    return Registry(farms=[Farm(
        county="c1", farm="wang-12", name="王家农场", profile="test-dry",
        plots={"field-3": Plot(name="3号地", crop="maize", field_capacity=36, wilting_point=19)},
        gateways={"gw-1": GatewayEntry(interval_s=600, sensors={
            "soil-1": SensorMeta(plot="field-3", crop="maize", interval_s=600),
            "soil-2": SensorMeta(plot="field-4", crop="maize", interval_s=600)})},
        contacts=[Contact(name="王", notify=[SMS]),
                  Contact(name="李", notify=[NIGHT], quiet_hours="09:00-23:00")],
        daily_message_budget=10)])


async def test_state_written_by_the_previous_version_loads(tmp_path: Path) -> None:
    state = tmp_path / "alerts.sqlite"
    dump = _old_state_file(state)
    clock = SimClock(float(dump["clock"]))  # type: ignore[arg-type]
    rig = make_rig(_old_registry(), rules=DATA / "rules_ffa6708.yaml", start=0, clock=clock,
                   state_path=state)
    e = rig.engine
    # Firing (its raise sent before the upgrade), a message held by quiet
    # hours, today's budget and the hourly history: all there.
    assert e.firing() == [("test-dry/soil-dry", "sensor:gw-1/soil-1", "firing")]
    [held] = e.outbox.items.values()
    assert isinstance(held, Delivery) and held.contact == "李" and held.event == "raise"
    assert held.due == local_ts(2026, 6, 10, 23)
    assert e.router.budget == {"c1/wang-12/2026-06-10": 1}
    assert e.history.hourly == {"c1/wang-12/gw-1/trough/water_level": {494738: [280, 4.0]}}
    # Still dry: nothing is sent again.
    for _ in range(3):
        rig.feed({"soil-1": 15, "soil-2": 25})
        rig.feed({"trough": 70}, "water_level")
        await rig.step(600)
    assert rig.notifier.sent == []
    # 23:00: the held raise goes to 李, once.
    clock.t = local_ts(2026, 6, 10, 23)
    rig.feed({"soil-1": 15, "soil-2": 25})
    rig.feed({"trough": 70}, "water_level")
    await rig.step()
    assert [(s.url, s.body) for s in rig.notifier.sent] == [
        (NIGHT, "3号地土壤偏干：含水量15%（适宜22–30%），请24小时内灌溉。")]
    # Wet again past clear_for: one clear to each contact.
    for _ in range(4):
        rig.feed({"soil-1": 28, "soil-2": 25})
        rig.feed({"trough": 70}, "water_level")
        await rig.step(600)
    assert sorted(s.url for s in rig.notifier.sent[1:]) == [NIGHT, SMS]
    assert all(s.body == "3号地土壤水分已恢复：含水量28%。" for s in rig.notifier.sent[1:])
    assert e.firing() == [] and e.outbox.items == {}
    rig.close()
    # What the new version wrote reads back the same way.
    db = sqlite3.connect(state)
    assert {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")} == {
        "states", "groups", "outbox", "budget", "history"}
    db.close()
