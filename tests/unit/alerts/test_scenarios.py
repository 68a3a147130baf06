"""Farm-side versus center-side, scenario by scenario (docs/alerts.md, "What
the scenarios prove"): each scripts what the gateways, the broker, InfluxDB
and the edge do, on a simulated clock (the engine's injected ``clock`` drives
every timer, grace and duration; nothing sleeps), and ends with the exact
list of messages sent, as (who, text): ``farmer`` for a farm's contact,
``operator`` for the registry's center contact.

The gateways report every 60 s ([registry] interval_s), so a "20 min"
outage is twenty of their intervals, and the graces scale with it:
``reconnect_grace_intervals`` (2 intervals, 2 min) and the defaults of
``offline_will_grace_s`` (5 min) and the mass offline thresholds. The edge's
records are handed to the engine as the edge hands them (``on_accepted``,
``on_status``, ``on_center``); the notifier is the fake of support.py (a
stand-in for Apprise, which tests/integration/test_alerts.py tests against
real servers).
"""

from __future__ import annotations

from pathlib import Path

from farmedge.alerts import AlertsSettings
from farmedge.contract.models import GatewayStatus
from farmedge.records import CenterEvent, CenterWhat, StatusEvent
from farmedge.registry import Contact, Farm, GatewayEntry, Plot, Registry, SensorMeta

from .support import FakeNotifier, Rig, SimClock, local_ts, make_rig, rules_file

CENTER = "json://127.0.0.1:9/center"
INTERVAL = 60.0
T0 = local_ts(2026, 6, 10, 10)


def farmer_url(farm: str) -> str:
    return f"json://127.0.0.1:9/{farm}"


def county_registry(gateways: int = 10) -> Registry:
    """County c1: farm wang-12 (gateway gw-1, two soil probes in plot 3号地)
    and farms f-2 ... f-N with one gateway each; one contact per farm, one
    at the center."""
    def farm(fid: str, gw: str, name: str) -> Farm:
        sens = {f"soil-{i}": SensorMeta(plot="field-3", crop="maize", interval_s=INTERVAL)
                for i in (1, 2)}
        return Farm(county="c1", farm=fid, name=name, profile="test-dry",
                    plots={"field-3": Plot(name="3号地", crop="maize", field_capacity=36,
                                           wilting_point=19)},
                    gateways={gw: GatewayEntry(interval_s=INTERVAL, sensors=sens)},
                    contacts=[Contact(name=f"farmer-{fid}", notify=[farmer_url(fid)])])
    farms = [farm("wang-12", "gw-1", "王家农场")]
    farms += [farm(f"f-{i}", f"gw-{i}", f"{i}号农场") for i in range(2, gateways + 1)]
    return Registry(farms=farms, center_contacts=[Contact(name="县中心", notify=[CENTER])])


class County:
    """The county's gateways as the edge sees them."""

    def __init__(self, rig: Rig, registry: Registry) -> None:
        self.rig = rig
        self.gws = {next(iter(f.gateways)): f.farm for f in registry.farms}
        self.up = set(self.gws)

    def feed(self, moisture: float = 28.0, gateways: set[str] | None = None) -> None:
        for gw in sorted(self.up if gateways is None else gateways):
            farm = self.gws[gw]
            rig = self.rig
            rig.farm = farm
            rig.feed({"soil-1": moisture, "soil-2": moisture + 0.4}, gateway=gw)
        self.rig.farm = "wang-12"

    def status(self, gw: str, online: bool) -> None:
        body = {"v": 1, "gateway": gw, "online": online}
        if online:
            body["clock"] = "synced"
        st = GatewayStatus.model_validate(body)
        self.rig.engine.on_status(StatusEvent("c1", self.gws[gw], gw, st, self.rig.clock.ms))

    def lost(self, gw: str) -> None:
        """``gw`` falls silent and the broker sends its will at once."""
        self.up.discard(gw)
        self.status(gw, False)

    def back(self, gw: str) -> None:
        """``gw`` is back: its status (online) now, its readings from the next minute."""
        self.up.add(gw)
        self.status(gw, True)

    def center(self, what: CenterWhat) -> None:
        self.rig.engine.on_center(CenterEvent(what, self.rig.clock.ms))

    async def minutes(self, n: int, moisture: float = 28.0, *,
                      gw1: float | None = None) -> None:
        """``n`` minutes: every gateway up reports once a minute (gw-1 the
        moisture ``gw1`` when given)."""
        for _ in range(n):
            if gw1 is None:
                self.feed(moisture)
            else:
                self.feed(gw1, {"gw-1"} & self.up)
                self.feed(moisture, self.up - {"gw-1"})
            await self.rig.step(INTERVAL)

    async def idle(self, seconds: float, step: float = 10.0) -> None:
        """Time passing with nothing received (the edge cannot hear)."""
        left = seconds
        while left > 0:
            await self.rig.step(min(step, left))
            left -= step


def messages(notifier: FakeNotifier) -> list[tuple[str, str]]:
    return [("operator" if s.url == CENTER else "farmer", s.body) for s in notifier.sent]


def county_rig(tmp_path: Path, *, state: Path | str = ":memory:",
               settings: AlertsSettings | None = None,
               clock: SimClock | None = None) -> tuple[Rig, County]:
    reg = county_registry()
    rig = make_rig(reg, rules=rules_file(tmp_path), start=T0, state_path=state,
                   settings=settings or AlertsSettings(backoff_s=60), clock=clock)
    return rig, County(rig, reg)


async def test_gateway_really_down_20_min_then_back(tmp_path: Path) -> None:
    rig, county = county_rig(tmp_path)
    await county.minutes(10)
    county.up.discard("gw-1")
    await rig.step(30)
    county.status("gw-1", False)        # its last will, 90 s after its last reading
    await county.minutes(20)
    county.back("gw-1")
    await county.minutes(3)
    # The will waits 5 min: offline raised 6.5 min after the last reading was seen.
    assert messages(rig.notifier) == [
        ("farmer", "gw-1网关离线：已6分钟没有数据，请检查供电和网络。"),
        ("farmer", "gw-1网关已恢复在线。"),
    ]
    rig.close()


async def test_gateway_silent_20_min_without_a_will_tells_the_true_silence(
        tmp_path: Path) -> None:
    rig, county = county_rig(tmp_path)
    await county.minutes(5)
    county.up.discard("gw-1")
    await county.minutes(20)
    county.up.add("gw-1")
    await county.minutes(2)
    # Three intervals of silence (3 min) pass, at the next minute: 4 min seen.
    assert messages(rig.notifier) == [
        ("farmer", "gw-1网关离线：已4分钟没有数据，请检查供电和网络。"),
        ("farmer", "gw-1网关已恢复在线。"),
    ]
    rig.close()


async def test_edge_restart(tmp_path: Path) -> None:
    state = tmp_path / "alerts.sqlite"
    rig, county = county_rig(tmp_path, state=state)
    await county.minutes(10)
    rig.close()                          # the edge stops: 3 min without it
    clock = SimClock(rig.clock.t + 180)
    reg = county_registry()
    rig2 = make_rig(reg, rules=rules_file(tmp_path), start=clock.t, state_path=state,
                    clock=clock, notifier=rig.notifier)
    county2 = County(rig2, reg)
    county2.center("edge_started")
    await rig2.step(2)
    county2.center("broker_up")          # the broker hands over what it kept
    await county2.minutes(30)
    assert messages(rig.notifier) == [
        ("operator", "边缘服务已重启：网关2min内补报数据前不发静默告警。"),
    ]
    rig2.close()


async def test_broker_restart_20_s(tmp_path: Path) -> None:
    rig, county = county_rig(tmp_path)
    await county.minutes(10)
    county.center("broker_down")
    await county.idle(20)
    county.center("broker_up")
    # What the broker kept: every gateway's last will (it saw them all drop),
    # then their online statuses as they reconnect, then their readings.
    for gw in county.gws:
        county.status(gw, False)
    await rig.step(5)
    for gw in county.gws:
        county.status(gw, True)
    await county.minutes(30)
    assert messages(rig.notifier) == [
        ("operator", "中心MQTT服务器中断20s后已恢复，未向农户发离线告警。"),
    ]
    rig.close()


async def test_broker_down_40_min_sends_down_and_back_and_no_farm_silence(
        tmp_path: Path) -> None:
    rig, county = county_rig(tmp_path)
    await county.minutes(10)
    county.center("broker_down")
    await county.idle(40 * 60)
    county.center("broker_up")
    await rig.step(5)
    await county.minutes(10)
    assert messages(rig.notifier) == [
        ("operator", "中心MQTT服务器已中断5min，收不到网关数据；离线告警暂停，未通知农户。"),
        ("operator", "中心MQTT服务器中断40min后已恢复，未向农户发离线告警。"),
    ]
    rig.close()


async def test_influxdb_down_2_min(tmp_path: Path) -> None:
    rig, county = county_rig(tmp_path)
    await county.minutes(5)
    county.center("influx_down")         # readings go to the spool, still reach the engine
    await county.minutes(2)
    county.center("influx_up")
    county.center("replay_started")
    await county.minutes(1)
    county.center("replay_done")
    await county.minutes(10)
    assert messages(rig.notifier) == [
        ("operator", "InfluxDB中断2min后已恢复，缓冲数据正在补写。"),
    ]
    assert not rig.engine.health.replaying and rig.engine.health.influx_up
    rig.close()


async def test_last_will_then_back_within_grace(tmp_path: Path) -> None:
    rig, county = county_rig(tmp_path)
    await county.minutes(5)
    county.status("gw-1", False)         # a planned restart, 3 s
    await rig.step(3)
    county.status("gw-1", True)
    await county.minutes(30)
    assert messages(rig.notifier) == []
    rig.close()


async def test_mass_offline_of_6_gateways(tmp_path: Path) -> None:
    rig, county = county_rig(tmp_path)
    await county.minutes(5)
    gone = [f"gw-{i}" for i in range(2, 8)]           # 6 of the county's 10
    for gw in gone:
        county.lost(gw)
        await rig.step(5)
    await county.minutes(30)
    assert messages(rig.notifier) == [
        ("operator", "c1县6个网关（共10个）同时离线，疑为停电或网络故障，未通知农户。"),
    ]
    assert rig.engine.center.member(("c1", "f-2", "gw-2"))
    for gw in gone:                                   # power back
        county.back(gw)
    await county.minutes(5)
    assert messages(rig.notifier)[1:] == [("operator", "c1县网关集中离线已结束（持续30min）。")]
    rig.close()


async def test_mass_offline_leaves_the_gateway_still_down_to_its_farm(tmp_path: Path) -> None:
    rig, county = county_rig(tmp_path)
    await county.minutes(5)
    gone = [f"gw-{i}" for i in range(2, 8)]
    for gw in gone:
        county.lost(gw)
    await county.minutes(10)
    for gw in gone[:-1]:                              # all back but gw-7
        county.back(gw)
    await county.minutes(10)
    sent = messages(rig.notifier)
    assert sent[0][0] == "operator" and sent[1][0] == "operator"
    # gw-7 is farm-side now: its farm hears after the will's grace, counted
    # from the end of the mass offline (the minutes: since it was last heard).
    assert [m for m in sent if m[0] == "farmer"] == [
        ("farmer", "gw-7网关离线：已16分钟没有数据，请检查供电和网络。")]
    assert rig.notifier.sent[-1].url == farmer_url("f-7")
    rig.close()


async def test_field_drying_then_irrigated(tmp_path: Path) -> None:
    rig, county = county_rig(tmp_path)
    for v in (28, 24, 21, 14, 14, 13, 14, 13, 13):
        await county.minutes(10, gw1=v)
    for v in (27, 28, 28, 28):
        await county.minutes(10, gw1=v)
    assert messages(rig.notifier) == [
        ("farmer", "3号地土壤偏干：含水量14%（适宜22–30%），请24小时内灌溉。"),
        ("farmer", "3号地土壤水分已恢复：含水量28%。"),
    ]
    rig.close()


async def test_flapping(tmp_path: Path) -> None:
    rig, county = county_rig(tmp_path)
    for v in (19, 21, 19.5, 20.5, 19, 21, 25, 19, 21, 19.5, 22, 19, 20.5):
        await county.minutes(5, gw1=v)
    assert messages(rig.notifier) == [
        ("farmer", "3号地土壤偏干：含水量19%（适宜22–30%），请24小时内灌溉。"),
    ]
    rig.close()


async def test_deliveries_failing_to_a_farmer_tell_the_operators(tmp_path: Path) -> None:
    rig, county = county_rig(tmp_path, settings=AlertsSettings(backoff_s=60, max_attempts=6))
    rig.notifier.fail_next = 3                         # the farmer's SMS gateway refuses
    for v in (28, 24, 21, 14, 14, 13, 14):
        await county.minutes(10, gw1=v)
    sent = messages(rig.notifier)
    assert sent == [
        ("operator", "发给farmer-wang-12的告警连续3次失败，请检查其号码或通知地址。"),
        ("farmer", "3号地土壤偏干：含水量14%（适宜22–30%），请24小时内灌溉。"),
        ("operator", "发给farmer-wang-12的告警已恢复送达。"),
    ]
    rig.close()


async def test_planned_gateway_restart_30_s(tmp_path: Path) -> None:
    rig, county = county_rig(tmp_path)
    await county.minutes(5)
    county.up.discard("gw-1")
    rig.status("gw-1", online=False, reason="stopping")   # SIGTERM: a planned stop
    await county.minutes(1)
    county.back("gw-1")
    await county.minutes(30)
    assert messages(rig.notifier) == []
    rig.close()


async def test_planned_stop_longer_than_its_window_is_told(tmp_path: Path) -> None:
    rig, county = county_rig(tmp_path)
    await county.minutes(5)
    county.up.discard("gw-1")
    rig.status("gw-1", online=False, reason="stopping")
    await county.minutes(10)
    assert messages(rig.notifier) == []        # planned_stop_grace_s: 15 min
    await county.minutes(10)
    county.back("gw-1")
    await county.minutes(2)
    assert messages(rig.notifier) == [
        ("farmer", "gw-1网关离线：已16分钟没有数据，请检查供电和网络。"),
        ("farmer", "gw-1网关已恢复在线。"),
    ]
    rig.close()


async def test_gateway_clock_hold_15_min(tmp_path: Path) -> None:
    """A 15-minute hold of readings for an unsynced clock: farmer 0,
    operators 1 (the center profile's clock-hold, at [alerts]
    clock_hold_incident_s), then the clock syncs and the held readings come."""
    rig, county = county_rig(tmp_path)
    await county.minutes(5)
    county.up.discard("gw-1")
    for m in range(16):                        # a status every minute, no telemetry
        rig.status("gw-1", online=True, clock="unsynced", held_unsynced=2 * (m + 1),
                   held_for_s=60.0 * m)
        await county.minutes(1)
    rig.status("gw-1", online=True, clock="synced", held_unsynced=0)
    county.up.add("gw-1")
    await county.minutes(40)
    assert messages(rig.notifier) == [
        ("operator", "gw-1网关时钟未同步，已暂存32条数据15min，请检查NTP或[clock] source。")]
    rig.close()


async def test_gateway_clock_hold_shorter_than_its_threshold(tmp_path: Path) -> None:
    rig, county = county_rig(tmp_path, settings=AlertsSettings(backoff_s=60,
                                                               clock_hold_incident_s=1200))
    await county.minutes(5)
    county.up.discard("gw-1")
    for m in range(16):
        rig.status("gw-1", online=True, clock="unsynced", held_unsynced=2 * (m + 1),
                   held_for_s=60.0 * m)
        await county.minutes(1)
    rig.status("gw-1", online=True, clock="synced", held_unsynced=0)
    county.up.add("gw-1")
    await county.minutes(40)
    assert messages(rig.notifier) == []
    rig.close()


async def test_gateway_clock_hold(tmp_path: Path) -> None:
    """The gateway holds its readings while its clock is unsynced: its
    statuses say so, its sensors' silence is no farm matter; the hold is
    the operators' at 15 min, and the clock still unsynced at the
    clock-unsynced rule's 30 min too."""
    rig, county = county_rig(tmp_path)
    await county.minutes(5)
    county.up.discard("gw-1")
    for m in range(35):                        # a status every minute, no telemetry
        rig.status("gw-1", online=True, clock="unsynced", held_unsynced=2 * (m + 1),
                   held_for_s=60.0 * m)
        await county.minutes(1)
    assert messages(rig.notifier) == [
        ("operator", "gw-1网关时钟未同步，已暂存32条数据15min，请检查NTP或[clock] source。"),
        ("operator", "gw-1网关时钟未同步已29分钟，数据时间可能不准。")]
    rig.close()
