"""The alert engine fed records directly (no broker, no HTTP server): state
machine, grouping, reminders, quiet hours, budgets, escalation, retries, rate
limits, the shipped profiles and the device rules. The notifier is a fake
passed by constructor; the clock is simulated; passes are driven one by one."""

from __future__ import annotations

from pathlib import Path

from farmedge.alerts import AlertsSettings
from farmedge.contract.models import Quality
from farmedge.edge.app import Stages
from farmedge.edge.metrics import EdgeMetrics, Incidents
from farmedge.logs import get_logger
from farmedge.registry import Contact, Farm, GatewayEntry, Plot, Registry

from .support import (
    DRY_RULES,
    FakeNotifier,
    farm_registry,
    local_ts,
    make_rig,
    rules_file,
)

SMS = "json://127.0.0.1:9/sms"
CENTER = "json://127.0.0.1:9/center"
DRY = "3号地土壤偏干：含水量{}%（适宜22–30%），请24小时内灌溉。"


async def test_field_drying_raises_once_for_the_plot_and_clears_once(tmp_path: Path) -> None:
    reg = farm_registry(contacts=[Contact(name="王", notify=[SMS]),
                                  Contact(name="Li", language="en", notify=["mailto://x"])])
    rig = make_rig(reg, rules=rules_file(tmp_path), start=local_ts(2026, 6, 10, 10))
    for v in (28, 24, 21, 14, 14, 13, 14, 13, 13):
        rig.feed({"soil-1": v, "soil-2": v + 0.4})
        await rig.step(600)
    assert rig.notifier.messages(SMS) == [DRY.format(14)]
    assert rig.notifier.messages("mailto://x") == [
        "3号地 is dry: soil water 14% (target 22-30%). Irrigate within 24 h."]
    assert rig.notifier.sent[0].title == "【预警】王家农场"
    raised = [e for e in rig.memory.events if e.event == "raise"]
    assert len(raised) == 1 and raised[0].scope_id == "field-3"
    assert sorted(raised[0].entities) == ["gw-1/soil-1", "gw-1/soil-2"]
    for v in (27, 28, 28, 28):
        rig.feed({"soil-1": v, "soil-2": v})
        await rig.step(600)
    assert rig.notifier.messages(SMS)[1:] == ["3号地土壤水分已恢复：含水量28%。"]
    assert rig.events("raise", "clear") == ["raise", "clear"]
    assert rig.events("delivered").count("delivered") == 4
    rig.close()


async def test_flapping_for_an_hour_gives_one_message(tmp_path: Path) -> None:
    reg = farm_registry(sensors=1, contacts=[Contact(name="王", notify=[SMS])])
    rig = make_rig(reg, rules=rules_file(tmp_path), start=local_ts(2026, 6, 10, 10))
    # Around the raise threshold (20), once briefly past the clear one (24).
    for v in (19, 21, 19.5, 20.5, 19, 21, 25, 19, 21, 19.5, 22, 19, 20.5):
        rig.feed({"soil-1": v})
        await rig.step(300)
    assert len(rig.notifier.sent) == 1
    assert rig.notifier.messages()[0].startswith("3号地土壤偏干：含水量")
    assert rig.events("raise", "clear") == ["raise"]


async def test_pending_that_clears_before_for_sends_nothing(tmp_path: Path) -> None:
    reg = farm_registry(sensors=1, contacts=[Contact(name="王", notify=[SMS])])
    rig = make_rig(reg, rules=rules_file(tmp_path, device=False),
                   start=local_ts(2026, 6, 10, 10))
    rig.feed({"soil-1": 15})
    await rig.step(600)
    assert rig.engine.firing() == [("test-dry/soil-dry", "sensor:gw-1/soil-1", "pending")]
    rig.feed({"soil-1": 30})            # the clear condition: back to ok
    await rig.step(3600)
    assert rig.engine.firing() == [] and rig.notifier.sent == []


async def test_a_higher_level_of_the_family_sends_worse(tmp_path: Path) -> None:
    """The shipped maize profile: irrigate, dry, severe drought, one message each."""
    reg = farm_registry(sensors=1, profile="maize-blacksoil", budget=20,
                        contacts=[Contact(name="王", notify=[SMS])])
    rig = make_rig(reg, start=local_ts(2026, 7, 1, 9))
    # FC 36, WP 19: irrigate below 26.65 % (FAO-56 p=0.55), light drought
    # below 21.6 % (60 % FC), severe below 14.4 % (40 % FC).
    for v in [30, 28] + [26] * 7 + [21] * 7 + [14] * 7:
        rig.feed({"soil-1": v})
        rig.feed({"air-1": 22}, "air_temperature")
        await rig.step(600)
    assert rig.notifier.messages() == [
        "3号地即将缺水：含水量26%（适宜22–31%），请安排灌溉。",
        "3号地土壤偏干：含水量21%（适宜22–31%），请24小时内灌溉。",
        "3号地严重干旱：含水量14%（适宜22–31%），请立即灌溉。",
    ]
    assert rig.events("raise", "worse") == ["raise", "worse", "worse"]


async def test_cattle_thi_and_bolus_baseline() -> None:
    reg = Registry(farms=[Farm(
        county="c1", farm="wang-12", name="王家牧场", profile="cattle-dairy",
        gateways={"gw-1": GatewayEntry(interval_s=3600)},
        contacts=[Contact(name="王", notify=[SMS])], daily_message_budget=50)])
    rig = make_rig(reg, start=local_ts(2026, 7, 1, 0))

    def barn(t: float, h: float) -> None:
        rig.feed({"barn-t": t}, "air_temperature")
        rig.feed({"barn-h": h}, "air_humidity")

    for i in range(72):                 # three days of a normal cow, a cool barn
        wobble = 0.1 * (i % 3 - 1)
        rig.feed({"bolus-17": 38.5 + wobble}, "animal_body_temperature", animal="cow-17")
        barn(20 + wobble, 60 + wobble)
        rig.feed({"trough": 80}, "water_level")
        await rig.step(3600)
    assert rig.notifier.sent == []
    for _ in range(3):                  # +0.9 C over her own baseline, under 39.5 C
        rig.feed({"bolus-17": 39.4}, "animal_body_temperature", animal="cow-17")
        await rig.step(1800)
    assert rig.notifier.messages() == ["cow-17体温比平时高0.9℃（读数39.4℃），可能发病，请检查。"]
    for t, n, text in ((27, 5, "gw-1中度热应激：温湿指数77（≥72），请加强通风喷淋。"),
                       (30, 4, "gw-1重度热应激：温湿指数81（≥80），请立即降温并保证饮水。")):
        for _ in range(n):
            rig.feed({"bolus-17": 39.4}, "animal_body_temperature", animal="cow-17")
            rig.feed({"trough": 80}, "water_level")
            barn(t, 70)
            await rig.step(900)
        assert rig.notifier.messages()[-1] == text


async def test_reminder_after_the_cool_down(tmp_path: Path) -> None:
    rules = rules_file(tmp_path, DRY_RULES.replace("        template: soil-dry\n",
                                                   "        template: soil-dry\n"
                                                   "        remind_after: 6h\n", 1),
                       device=False)
    reg = farm_registry(sensors=1, contacts=[Contact(name="王", notify=[SMS])])
    rig = make_rig(reg, rules=rules, start=local_ts(2026, 6, 10, 8))
    for _ in range(13):                 # 13 h dry, a reading every hour
        rig.feed({"soil-1": 15})
        await rig.step(3600)
    text = DRY.format(15)
    assert rig.notifier.messages() == [text, "提醒：" + text, "提醒：" + text]
    assert rig.events("raise", "remind") == ["raise", "remind", "remind"]


async def test_quiet_hours_hold_a_warning_and_let_a_critical_through(tmp_path: Path) -> None:
    reg = farm_registry(sensors=1, contacts=[
        Contact(name="王", notify=[SMS], quiet_hours="21:00-07:00")])
    rig = make_rig(reg, rules=rules_file(tmp_path, device=False),
                   start=local_ts(2026, 6, 10, 22, 30))
    for _ in range(3):
        rig.feed({"soil-1": 15})
        await rig.step(600)
    assert rig.notifier.sent == [] and rig.events("held") == ["held"]
    rig.feed({"air-1": -3.5}, "air_temperature")
    await rig.step()
    assert rig.notifier.messages() == ["王家农场霜冻：气温-3.5℃（≤-2.0℃可冻死幼苗），请做好防霜。"]
    rig.clock.t = local_ts(2026, 6, 11, 6, 59)
    await rig.step()
    assert len(rig.notifier.sent) == 1
    await rig.step(60)                  # 07:00 releases the warning
    assert rig.notifier.messages()[1] == DRY.format(15)


async def test_held_warning_that_clears_overnight_is_never_sent(tmp_path: Path) -> None:
    reg = farm_registry(sensors=1, contacts=[
        Contact(name="王", notify=[SMS], quiet_hours="21:00-07:00")])
    rig = make_rig(reg, rules=rules_file(tmp_path, device=False), start=local_ts(2026, 6, 10, 22))
    for v in (15, 15, 15, 30, 30, 30, 30):
        rig.feed({"soil-1": v})
        await rig.step(600)
    rig.clock.t = local_ts(2026, 6, 11, 8)
    await rig.step()
    assert rig.notifier.sent == [] and rig.events("dropped") == ["dropped"]
    assert rig.engine.outbox.items == {}


async def test_budget_suppresses_warnings_not_criticals_and_escalates(tmp_path: Path) -> None:
    reg = farm_registry(sensors=1, budget=1, contacts=[Contact(name="王", notify=[SMS])],
                        center=[Contact(name="County agronomist", language="en",
                                        agronomist=True, notify=["mailto://agro"])])
    rig = make_rig(reg, rules=rules_file(tmp_path), start=local_ts(2026, 6, 10, 10))
    for i in range(3):
        if i:
            await rig.step(600)
        rig.feed({"soil-1": 15})
    await rig.step(61)
    assert len(rig.notifier.sent) == 1
    # A second warning today (a sensor on another plot) is over the budget of 1.
    rig.engine.on_readings([_reading(rig, "soil-9", 10, plot="field-9")])
    await rig.step(1300)
    rig.engine.on_readings([_reading(rig, "soil-9", 10, plot="field-9")])
    await rig.step()
    assert [e.scope_id for e in rig.memory.events if e.event == "suppressed"] == ["field-9"]
    assert len(rig.notifier.sent) == 1
    # Frost is critical: passes the budget, and goes to the agronomist after 2 h.
    for _ in range(14):
        rig.feed({"air-1": -4}, "air_temperature")
        await rig.step(600)
    assert rig.notifier.messages(SMS)[1].startswith("王家农场霜冻")
    assert rig.notifier.messages("mailto://agro") == [
        "王家农场: Frost at 王家农场: -4.0 C (seedlings die at -2.0 C). Protect the crop."]
    # The suppressed group's clear is not sent to the farm either.
    for _ in range(4):
        rig.engine.on_readings([_reading(rig, "soil-9", 30, plot="field-9")])
        await rig.step(700)
    assert "field-9" in [e.scope_id for e in rig.memory.events if e.event == "clear"]
    assert len(rig.notifier.messages(SMS)) == 2      # dry and frost, no clear of field-9


def _reading(rig: object, sensor: str, value: float, *, plot: str) -> object:
    from farmedge.records import AcceptedReading

    clock = rig.clock  # type: ignore[attr-defined]
    return AcceptedReading("c1", "wang-12", "gw-1", sensor, "soil_moisture", clock.ms, value,
                           "%", "ok", {"plot": plot})


async def test_a_state_file_that_refuses_writes_keeps_alerting_and_says_so(
        tmp_path: Path) -> None:
    """SQLite refusing every write (a read-only disk; here its own
    ``query_only`` switch, the same SQLITE_READONLY): the engine goes on
    alerting with its state in memory and says why in ``state_error``; once
    writes work again the state is written and the error is gone."""
    reg = farm_registry(sensors=1, contacts=[Contact(name="王", notify=[SMS])])
    rig = make_rig(reg, rules=rules_file(tmp_path, device=False),
                   state_path=tmp_path / "alerts.sqlite", start=local_ts(2026, 6, 10, 10))
    db = rig.engine._store._db
    assert db is not None
    db.execute("PRAGMA query_only=ON")
    for i in range(3):
        if i:
            await rig.step(600)
        rig.feed({"soil-1": 15})
    await rig.step()
    assert rig.notifier.messages() == [DRY.format(15)]
    assert rig.engine.state_error is not None and "readonly" in rig.engine.state_error
    stages = Stages([rig.engine], Incidents(EdgeMetrics(), get_logger("test")))
    assert any("AlertEngine cannot write its state" in t for t in stages.trouble(None))
    db.execute("PRAGMA query_only=OFF")
    await rig.step(10)
    assert rig.engine.state_error is None and stages.trouble(None) == []
    assert list(rig.engine._store.keys("states"))
    rig.close()


async def test_failed_delivery_is_retried_with_doubling_backoff(tmp_path: Path) -> None:
    reg = farm_registry(sensors=1, contacts=[Contact(name="王", notify=[SMS])])
    notifier = FakeNotifier()
    notifier.fail_next = 2
    rig = make_rig(reg, rules=rules_file(tmp_path, device=False), notifier=notifier,
                   start=local_ts(2026, 6, 10, 10),
                   settings=AlertsSettings(backoff_s=60, backoff_max_s=600, max_attempts=6))
    for i in range(3):
        if i:
            await rig.step(600)
        rig.feed({"soil-1": 15})
    await rig.step()
    assert rig.events("failed") == ["failed"] and notifier.sent == []
    await rig.step(59)
    assert notifier.attempts == 1                   # not before the 60 s backoff
    await rig.step(1)
    assert notifier.attempts == 2 and rig.events("failed") == ["failed", "failed"]
    await rig.step(119)
    assert notifier.attempts == 2                   # then 120 s
    await rig.step(1)
    assert notifier.messages() == [DRY.format(15)]
    delivered = [e for e in rig.memory.events if e.event == "delivered"]
    assert [e.attempt for e in delivered] == [3] and rig.engine.outbox.items == {}


async def test_delivery_given_up_after_max_attempts(tmp_path: Path) -> None:
    reg = farm_registry(sensors=1, contacts=[Contact(name="王", notify=[SMS])])
    notifier = FakeNotifier()
    notifier.fail_next = 100
    rig = make_rig(reg, rules=rules_file(tmp_path, device=False), notifier=notifier,
                   start=local_ts(2026, 6, 10, 10),
                   settings=AlertsSettings(backoff_s=10, backoff_max_s=10, max_attempts=3))
    for _ in range(3):
        rig.feed({"soil-1": 15})
        await rig.step(600)
    for _ in range(5):
        await rig.step(10)
    assert notifier.attempts == 3 and rig.engine.outbox.items == {}


class _BuggyNotifier(FakeNotifier):
    """A notifier with a bug: it raises something other than DeliveryFailed."""

    async def send(self, url: str, *, title: str, body: str) -> None:
        self.attempts += 1
        raise KeyError("a bug in the notifier")


async def test_a_notifier_that_raises_a_bug_counts_as_failed_attempts(tmp_path: Path) -> None:
    """Each exception is a failed attempt like any other: recorded, and
    the delivery given up after max_attempts (not retried for ever)."""
    reg = farm_registry(sensors=1, contacts=[Contact(name="王", notify=[SMS])])
    notifier = _BuggyNotifier()
    rig = make_rig(reg, rules=rules_file(tmp_path, device=False), notifier=notifier,
                   start=local_ts(2026, 6, 10, 10),
                   settings=AlertsSettings(backoff_s=10, backoff_max_s=10, max_attempts=3))
    for _ in range(3):
        rig.feed({"soil-1": 15})
        await rig.step(600)
    for _ in range(5):
        await rig.step(10)
    assert notifier.attempts == 3 and rig.engine.outbox.items == {}
    failed = [e for e in rig.memory.events if e.event == "failed"]
    assert [e.attempt for e in failed] == [1, 2, 3]
    assert all("KeyError" in e.error for e in failed)
    assert rig.engine.stats["failed"] == 3


async def test_rate_limit_spreads_messages_over_minutes(tmp_path: Path) -> None:
    plots = {f"p{i}": Plot(name=f"{i}号地") for i in range(25)}
    reg = Registry(farms=[Farm(county="c1", farm="wang-12", profile="test-dry", plots=plots,
                               daily_message_budget=100,
                               contacts=[Contact(name="群", notify=[SMS])])])
    rig = make_rig(reg, rules=rules_file(tmp_path), start=local_ts(2026, 6, 10, 10),
                   settings=AlertsSettings(rate_limits={"json": 20}))
    for n in range(3):
        if n:
            await rig.step(600)
        rig.engine.on_readings([_reading(rig, f"s{i}", 10, plot=f"p{i}") for i in range(25)])
    await rig.step()
    assert len(rig.notifier.sent) == 20
    await rig.step(59)
    assert len(rig.notifier.sent) == 20
    await rig.step(1)
    assert len(rig.notifier.sent) == 25


async def test_a_clock_set_back_does_not_hold_rate_limited_messages_until_it_catches_up(
        tmp_path: Path) -> None:
    """The edge's clock corrected back by a day (NTP after a wrong RTC)
    while a URL's rate limit is used: the messages over the limit wait one
    minute from now, not a day and a minute."""
    plots = {f"p{i}": Plot(name=f"{i}号地") for i in range(25)}
    reg = Registry(farms=[Farm(county="c1", farm="wang-12", profile="test-dry", plots=plots,
                               daily_message_budget=100,
                               contacts=[Contact(name="群", notify=[SMS])])])
    rig = make_rig(reg, rules=rules_file(tmp_path), start=local_ts(2026, 6, 10, 10),
                   settings=AlertsSettings(rate_limits={"json": 20}))
    for n in range(3):
        if n:
            await rig.step(600)
        rig.engine.on_readings([_reading(rig, f"s{i}", 10, plot=f"p{i}") for i in range(25)])
    await rig.step()
    assert len(rig.notifier.sent) == 20
    await rig.step(-86400)
    await rig.step(60)
    assert len(rig.notifier.sent) == 25


async def test_gateway_silent_past_its_intervals_goes_offline_and_back(tmp_path: Path) -> None:
    reg = farm_registry(sensors=1, contacts=[Contact(name="王", notify=[SMS])])
    rig = make_rig(reg, rules=rules_file(tmp_path), start=local_ts(2026, 6, 10, 10))
    rig.feed({"soil-1": 25})
    rig.feed({"air-1": 20}, "air_temperature")
    await rig.step(1700)
    assert rig.notifier.sent == []
    await rig.step(200)                 # 1900 s > 3 x 600 s
    assert rig.notifier.messages() == ["gw-1网关离线：已32分钟没有数据，请检查供电和网络。"]
    rig.feed({"soil-1": 25})
    await rig.step()
    assert rig.notifier.messages()[1] == "gw-1网关已恢复在线。"


async def test_last_will_offline_and_sensors_behind_it_stay_quiet(tmp_path: Path) -> None:
    reg = farm_registry(sensors=2, contacts=[Contact(name="王", notify=[SMS])])
    rig = make_rig(reg, rules=rules_file(tmp_path), start=local_ts(2026, 6, 10, 10))
    rig.status(online=True, clock="synced")
    rig.feed({"soil-1": 25, "soil-2": 25})
    await rig.step(120)
    rig.status(online=False)
    await rig.step()
    assert rig.notifier.sent == []     # a last will is a suspicion: it waits 5 min
    await rig.step(300)
    # The true silence: last heard 7 min ago (2 min before the will).
    assert rig.notifier.messages() == ["gw-1网关离线：已7分钟没有数据，请检查供电和网络。"]
    for _ in range(6):
        await rig.step(600)
    assert len(rig.notifier.sent) == 1
    rig.status(online=True, clock="synced")
    await rig.step()
    assert rig.notifier.messages()[1] == "gw-1网关已恢复在线。"
    rig.feed({"soil-1": 25, "soil-2": 25})
    await rig.step(600)
    assert len(rig.notifier.sent) == 2


async def test_twenty_silent_sensors_give_one_message(tmp_path: Path) -> None:
    reg = farm_registry(sensors=20, contacts=[Contact(name="王", notify=[SMS])])
    rig = make_rig(reg, rules=rules_file(tmp_path), start=local_ts(2026, 6, 10, 10))
    sensors = {f"soil-{i}": 25.0 for i in range(1, 21)}
    rig.feed({**sensors})
    rig.feed({"air-1": 20}, "air_temperature")
    for _ in range(4):
        await rig.step(600)
        rig.feed({"air-1": 20}, "air_temperature")
    await rig.step()
    assert len(rig.notifier.sent) == 1
    msg = rig.notifier.messages()[0]
    assert msg.startswith("gw-1网关下20个传感器已") and msg.endswith("请检查接线和供电。")
    rig.feed(sensors)
    await rig.step()
    assert rig.notifier.messages()[1:] == ["gw-1网关下20个传感器已恢复数据。"]


async def test_device_rules_battery_range_flatline_clock_and_backlog() -> None:
    reg = farm_registry(sensors=2, contacts=[Contact(name="王", notify=[SMS])],
                        center=[Contact(name="center", notify=[CENTER])],
                        profile="maize-blacksoil")
    rig = make_rig(reg, start=local_ts(2026, 6, 10, 8))
    for i in range(15):                 # 2.5 h, a reading every 10 min
        synced = i >= 6                 # NTP after an hour
        rig.feed({"soil-1": 25 + i % 3}, clock_ok=synced)
        rig.feed({"soil-2": 26 + i % 2}, clock_ok=synced)
        rig.feed({"soil-1": 3.1}, "battery_voltage", clock_ok=synced)
        rig.feed({"soil-2": 17.25}, "soil_temperature", clock_ok=synced)     # stuck
        rig.feed({"soil-2": 300}, "soil_ec", quality=Quality.ERROR, clock_ok=synced)
        rig.status(online=True, clock="unsynced" if i < 6 else "synced",
                   outbox_oldest_age_s=4 * 3600)
        await rig.step(600)
    await rig.step(12 * 3600)           # the stuck temperature passes the 12-h window
    rig.feed({"soil-1": 25, "soil-2": 25})
    rig.feed({"soil-2": 17.25}, "soil_temperature")
    rig.status(online=True, clock="synced", outbox_oldest_age_s=4 * 3600)
    await rig.step()
    raised = {e.rule for e in rig.memory.events if e.event == "raise"}
    assert {"device/battery-low", "device/out-of-range", "device/clock-unsynced",
            "device/outbox-backlog", "device/flatline"} <= raised
    assert "device/clock-unsynced" in {e.rule for e in rig.memory.events if e.event == "clear"}
    assert any("积压数据" in m for m in rig.notifier.messages(CENTER))
    assert any("电池电压低" in m for m in rig.notifier.messages(SMS))
    assert not any("时钟" in m for m in rig.notifier.messages(SMS))


async def test_flatline_on_the_fast_path_fires_and_clears() -> None:
    """Readings no threshold rule uses (soil temperature under the device
    profile alone) take the fast path; the flatline window still fires, and
    a changed value clears it."""
    reg = farm_registry(sensors=1, contacts=[Contact(name="王", notify=[SMS])],
                        profile="device", interval=7200)
    rig = make_rig(reg, start=local_ts(2026, 6, 10, 8))
    for _ in range(14):                 # 13 h of the same value, hourly
        rig.feed({"soil-1": 17.25}, "soil_temperature")
        rig.feed({"soil-1": 20.0 + rig.clock.t % 7}, "soil_moisture")
        await rig.step(3600)
    assert rig.engine.firing() == [("device/flatline", "sensor:gw-1/soil-1", "firing")]
    rig.feed({"soil-1": 17.5}, "soil_temperature")
    await rig.step()
    assert rig.engine.firing() == []
    assert rig.events("raise", "clear") == ["raise", "clear"]


async def test_out_of_range_counts_bad_readings_in_its_window() -> None:
    reg = farm_registry(sensors=1, contacts=[Contact(name="王", notify=[SMS])],
                        profile="device")
    rig = make_rig(reg, start=local_ts(2026, 6, 10, 8))
    for v in (80, 25, 90):              # 80 % and 90 %: the probe is in water
        rig.feed({"soil-1": v})
        await rig.step(60)
    assert rig.engine.firing() == []
    rig.feed({"soil-1": 99})            # the third in an hour
    await rig.step()
    assert rig.engine.firing() == [("device/out-of-range", "sensor:gw-1/soil-1", "firing")]
    for _ in range(4):                  # an hour of good readings
        rig.feed({"soil-1": 25})
        await rig.step(1300)
    rig.feed({"soil-1": 25})
    await rig.step()
    assert rig.engine.firing() == []


async def test_stale_readings_update_history_but_move_no_alert(tmp_path: Path) -> None:
    reg = farm_registry(sensors=1, contacts=[Contact(name="王", notify=[SMS])])
    rig = make_rig(reg, rules=rules_file(tmp_path, device=False), start=local_ts(2026, 6, 10, 10))
    for _ in range(4):                  # a backlog three hours old
        rig.feed({"soil-1": 10}, age_ms=3 * 3600 * 1000)
        await rig.step(600)
    assert rig.engine.firing() == [] and rig.engine.stats["stale"] == 4


async def test_records_before_the_state_is_loaded_wait_for_the_first_pass(
        tmp_path: Path) -> None:
    from farmedge.alerts import AlertEngine, MemoryRecorder

    from .support import SimClock, rules_of

    reg = farm_registry(sensors=1, contacts=[Contact(name="王", notify=[SMS])])
    clock = SimClock(local_ts(2026, 6, 10, 10))
    engine = AlertEngine(rules=rules_of(rules_file(tmp_path)), registry=reg,
                         notifier=FakeNotifier(), recorders=[MemoryRecorder()], clock=clock)
    rig = make_rig(reg, start=clock.t, rules=rules_file(tmp_path))
    early = rig.record({"soil-1": 15})
    engine.on_accepted([early])
    assert engine.stats["readings"] == 0
    engine.open()
    await engine.step()
    assert engine.stats["readings"] == 1
    assert engine.firing() == [("test-dry/soil-dry", "sensor:gw-1/soil-1", "pending")]
    engine.shut()


async def test_two_flatline_rules_on_one_kind_both_run_on_the_fast_path(tmp_path: Path) -> None:
    rules = rules_file(tmp_path, """
profiles:
  test-flat:
    rules:
      - {id: flat-1h, check: flatline, kind: [soil_temperature], window: 1h,
         entity: sensor, template: flatline}
      - {id: flat-3h, check: flatline, kind: [soil_temperature], window: 3h,
         entity: sensor, template: flatline, params: {tolerance: 0.5}}
""", device=False)
    reg = farm_registry(sensors=1, profile="test-flat", contacts=[Contact(name="王", notify=[SMS])])
    rig = make_rig(reg, rules=rules, start=local_ts(2026, 6, 10, 8))
    for i in range(8):                  # 17.2 and 17.3 by turns: within 0.5, not within 0
        rig.feed({"soil-1": 17.2 + 0.1 * (i % 2)}, "soil_temperature")
        await rig.step(1800)
    assert rig.engine.firing() == [("test-flat/flat-3h", "sensor:gw-1/soil-1", "firing")]


async def test_readings_naming_animals_take_each_animals_profile() -> None:
    """One reader on one gateway reports two pigs: the herd's profile applies
    to the one in the herd only (the fast path keeps a context per animal)."""
    from farmedge.registry import Herd

    reg = Registry(farms=[Farm(
        county="c1", farm="wang-12", name="王家猪场", profile="device",
        herds={"sows": Herd(profile="pigs", animals=["pig-1"])},
        gateways={"gw-1": GatewayEntry(interval_s=3600)},
        contacts=[Contact(name="王", notify=[SMS])])])
    rig = make_rig(reg, start=local_ts(2026, 6, 10, 8))
    for _ in range(4):
        for pig in ("pig-1", "pig-2"):
            rig.feed({"reader": 41.0}, "animal_body_temperature", animal=pig)
        await rig.step(1200)
    assert rig.engine.firing() == [("pigs/fever", "animal:pig-1", "firing")]
