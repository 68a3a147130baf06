"""Frost at night, early enough to act: the shipped crop profiles
(maize-blacksoil, soybean-blacksoil, paddy-rice) warn when the evening air
falls to 2 C, hours before the damage alarm (<= -2 C), and the warning is
critical, so it passes the farmer's quiet hours. The engine runs on a
simulated clock (it drives the rules' durations and the quiet hours);
messages go through Apprise json:// to a local HTTP receiver."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from farmedge.registry import Contact
from tests.alerts_support import HttpReceiver, farm_registry, local_ts, settle, until
from tests.integration.test_alerts import Rig, make_rig

# The shipped profiles, with the device rules off: only air temperature is
# fed, and the registry's soil probe would read as silent.
NO_DEVICE = "profiles:\n  device:\n    rules: []\n"


def night_air(hour: float) -> float:
    """A radiation-frost night in late May at Harbin (sunset about 19:30,
    sunrise 04:00): 12 C at 18:00, falling straight to 4 C two hours after
    sunset, then with the square root of the time (FAO 2005, ch. 5) to -3 C
    at sunrise, then warming 3 C an hour."""
    if hour < 21.5:
        return 12 - (hour - 18) * 8 / 3.5
    if hour < 28:
        return 4 + (-3 - 4) / math.sqrt(28 - 21.5) * math.sqrt(hour - 21.5)
    return -3 + 3 * (hour - 28)


async def _night(rig: Rig, start_h: float, end_h: float, air: object) -> None:
    h = start_h
    while h <= end_h:
        await rig.feed({"air-1": round(air(h), 1)},  # type: ignore[operator]
                       kind="air_temperature", unit="degC")
        await rig.step(600)
        h += 1 / 6


def _sent(rig: Rig) -> list[tuple[float, str, str]]:
    """(local hour, event, rule) of each delivered message."""
    out = []
    for e in rig.memory.events:
        if e.event == "delivered":
            h = (e.ts_ms / 1000 - local_ts(2026, 5, 24, 0)) / 3600
            out.append((round(h, 2), e.text.get("zh", ""), e.rule))
    return out


async def _rig(tmp_path: Path, county: str, http: HttpReceiver, profile: str) -> Rig:
    rules = tmp_path / "no-device.yaml"
    rules.write_text(NO_DEVICE)
    reg = farm_registry(county, profile=profile, sensors=1, contacts=[
        Contact(name="王", notify=[http.url()], quiet_hours="21:00-07:00")])
    return await make_rig(county=county, registry=reg, rules_path=rules,
                          start=local_ts(2026, 5, 24, 18))


@pytest.mark.parametrize("profile", ["maize-blacksoil", "soybean-blacksoil"])
async def test_a_frost_night_warns_in_the_evening_through_quiet_hours(
        tmp_path: Path, county: str, http: HttpReceiver, profile: str) -> None:
    rig = await _rig(tmp_path, county, http, profile)
    try:
        await _night(rig, 18, 30, night_air)       # 18:00 to 06:00
        await until(lambda: len(http.posts) >= 2, what="early warning and frost alarm")
        await settle(rig.engine)
        sent = _sent(rig)
        assert [r for _, _, r in sent][:2] == [f"{profile}/frost-early", f"{profile}/frost"]
        (t_warn, warn, _), (t_frost, frost, _) = sent[:2]
        # The air reaches 2 C at about 22:00; the warning goes 10 min later,
        # inside the quiet hours (21:00-07:00), not held until morning.
        assert 22.0 <= t_warn <= 22.6, sent
        assert warn.startswith("王家农场今夜有霜冻风险：气温已降到")
        assert "请立即做好防霜措施" in warn
        assert len(warn) <= 70
        # The damage alarm follows in the same thread ("worse"), hours later.
        assert t_frost - t_warn >= 3.5, sent
        assert frost.startswith("王家农场霜冻：气温-")
        assert not [e for e in rig.memory.events if e.event in ("held", "suppressed")]
        worse = [e for e in rig.memory.events if e.event == "worse"]
        assert len(worse) == 1 and worse[0].rule == f"{profile}/frost"
        # Morning: both clear, one message (held for the end of quiet hours).
        await _night(rig, 30.2, 33, night_air)
        await until(lambda: len(http.posts) == 3, what="one clear")
        assert http.messages()[2].startswith("王家农场")
        assert [e.event for e in rig.memory.events
                if e.event in ("raise", "worse", "clear")] == ["raise", "worse", "clear"]
    finally:
        await rig.stop()


async def test_a_cool_night_above_the_warning_sends_nothing(
        tmp_path: Path, county: str, http: HttpReceiver) -> None:
    rig = await _rig(tmp_path, county, http, "maize-blacksoil")
    try:
        await _night(rig, 18, 30, lambda h: max(3.0, night_air(h) + 6))   # lows of 3 C
        await settle(rig.engine)
        assert http.posts == []
        assert not [e for e in rig.memory.events if e.event == "raise"]
    finally:
        await rig.stop()


async def test_rice_seedlings_get_the_deep_water_advice(
        tmp_path: Path, county: str, http: HttpReceiver) -> None:
    rig = await _rig(tmp_path, county, http, "paddy-rice")
    try:
        await _night(rig, 18, 24, night_air)
        await until(lambda: len(http.posts) == 1, what="early warning")
        [(t_warn, warn, rule)] = _sent(rig)
        assert rule == "paddy-rice/frost-early" and 22.0 <= t_warn <= 22.6
        assert warn.startswith("王家农场今夜有霜冻风险：气温已降到")
        assert warn.endswith("请今晚加深水层护苗。")
    finally:
        await rig.stop()


async def test_the_frost_warning_keeps_to_its_months(
        tmp_path: Path, county: str, http: HttpReceiver) -> None:
    """July nights are not frost nights: the rule is off outside May, June
    and September."""
    rules = tmp_path / "no-device.yaml"
    rules.write_text(NO_DEVICE)
    reg = farm_registry(county, profile="maize-blacksoil", sensors=1,
                        contacts=[Contact(name="王", notify=[http.url()])])
    rig = await make_rig(county=county, registry=reg, rules_path=rules,
                         start=local_ts(2026, 7, 24, 18))
    try:
        for v in (1.5, 1.0, 0.5, 0.5):
            await rig.feed({"air-1": v}, kind="air_temperature", unit="degC")
            await rig.step(600)
        await settle(rig.engine)
        assert http.posts == []
    finally:
        await rig.stop()
