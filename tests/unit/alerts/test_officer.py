"""A farm's extension officer (a farm contact with ``role: officer``): copied
on the farm's alerts, never on the center's incidents, with a daily budget
of their own (``[alerts] officer_daily_message_budget``, key
``officer:<name>/<date>``). The notifier is the fake of support.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from farmedge.alerts import AlertsSettings
from farmedge.checks import Report, _check_registry_warnings
from farmedge.records import AcceptedReading, CenterEvent
from farmedge.registry import Contact, Registry

from .support import Rig, farm_registry, local_ts, make_rig, rules_file

FARMER = "json://127.0.0.1:9/farmer"
OFFICER = "json://127.0.0.1:9/officer"
CENTER = "json://127.0.0.1:9/center"
DRY = "3号地土壤偏干：含水量15%（适宜22–30%），请24小时内灌溉。"


def _registry(budget: int = 10) -> Registry:
    return farm_registry(sensors=1, budget=budget, contacts=[
        Contact(name="王", notify=[FARMER]),
        Contact(name="农技员李", role="officer", notify=[OFFICER])],
        center=[Contact(name="县中心", notify=[CENTER])])


def _plot9(rig: Rig, value: float) -> None:
    rig.engine.on_readings([AcceptedReading("c1", "wang-12", "gw-1", "soil-9", "soil_moisture",
                                            rig.clock.ms, value, "%", "ok", {"plot": "field-9"})])


async def _dry(rig: Rig) -> None:
    for i in range(3):
        if i:
            await rig.step(600)
        rig.feed({"soil-1": 15})
    await rig.step(61)


async def test_officer_gets_the_farms_alert_and_not_the_centers_incidents(
        tmp_path: Path) -> None:
    rig = make_rig(_registry(), rules=rules_file(tmp_path), start=local_ts(2026, 6, 10, 10))
    await _dry(rig)
    assert rig.notifier.messages(FARMER) == [DRY]
    assert rig.notifier.messages(OFFICER) == [DRY]
    # The broker blips: a center incident, the operators' only.
    rig.engine.on_center(CenterEvent("broker_down", rig.clock.ms))
    await rig.step(20)
    rig.engine.on_center(CenterEvent("broker_up", rig.clock.ms))
    await rig.step(61)
    assert rig.notifier.messages(CENTER) == ["中心MQTT服务器中断20s后已恢复，未向农户发离线告警。"]
    assert rig.notifier.messages(OFFICER) == [DRY]
    assert rig.notifier.messages(FARMER) == [DRY]
    rig.close()


async def test_officer_has_a_budget_of_their_own(tmp_path: Path) -> None:
    # The farm's budget of 1 is used by the first warning; the officer's 2
    # is apart, so the officer gets the second warning too.
    rig = make_rig(_registry(budget=1), rules=rules_file(tmp_path),
                   start=local_ts(2026, 6, 10, 10),
                   settings=AlertsSettings(backoff_s=60, officer_daily_message_budget=2))
    await _dry(rig)
    _plot9(rig, 10)
    await rig.step(1300)
    _plot9(rig, 10)
    await rig.step(61)
    assert len(rig.notifier.messages(FARMER)) == 1
    assert len(rig.notifier.messages(OFFICER)) == 2
    date = "2026-06-10"
    assert rig.engine.router.budget[f"officer:农技员李/{date}"] == 2
    assert rig.engine.router.budget[f"c1/wang-12/{date}"] == 1
    rig.close()


async def test_officer_budget_spent(tmp_path: Path) -> None:
    rig = make_rig(_registry(), rules=rules_file(tmp_path), start=local_ts(2026, 6, 10, 10),
                   settings=AlertsSettings(backoff_s=60, officer_daily_message_budget=1))
    await _dry(rig)
    _plot9(rig, 10)
    await rig.step(1300)
    _plot9(rig, 10)
    await rig.step(61)
    assert len(rig.notifier.messages(FARMER)) == 2
    assert rig.notifier.messages(OFFICER) == [DRY]
    assert any(e.event == "suppressed" and "officer 农技员李" in (e.error or "")
               for e in rig.memory.events)
    rig.close()


def test_check_config_on_roles() -> None:
    old = Contact(name="agro", agronomist=True, notify=[CENTER])
    assert old.is_agronomist and Contact(name="a", role="agronomist").is_agronomist
    reg = Registry(farms=_registry().farms, center_contacts=[
        old, Contact(name="misplaced", role="officer", notify=[CENTER])])
    report = Report()
    _check_registry_warnings(report, reg, lambda loc: "")
    assert any("agronomist: true is the old spelling" in w for w in report.warnings)
    assert any("misplaced" in e and "role officer" in e for e in report.errors)
    with pytest.raises(ValueError, match="disagree"):
        Contact(name="x", agronomist=True, role="officer")
