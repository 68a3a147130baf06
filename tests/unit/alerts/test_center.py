"""The center's health and incidents in the engine (farmedge/alerts/center.py):
blind time, the grace after a reconnect, the operators' budget and quiet
hours, and what an edge start does with its previous run's incidents. The
notifier is the fake of support.py; the clock is simulated."""

from __future__ import annotations

from pathlib import Path

from farmedge.alerts import AlertsSettings
from farmedge.alerts.center import CenterHealth, fmt_duration
from farmedge.edge.health import CenterWatch
from farmedge.records import BrokerKind, CenterEvent
from farmedge.registry import Contact

from .support import DRY_RULES, farm_registry, local_ts, make_rig, rules_file
from .test_scenarios import CENTER, County, county_registry, messages

T0 = local_ts(2026, 6, 10, 10)


def test_durations_are_short_and_true() -> None:
    assert [fmt_duration(s) for s in (0, 20.4, 119, 120, 725, 3600 * 3 + 300, 86400 * 2 + 7200)
            ] == ["0s", "20s", "119s", "2min", "12min", "3h05min", "2d02h"]


def test_blind_time_is_what_the_edge_could_not_hear() -> None:
    h = CenterHealth(AlertsSettings())
    h.apply(CenterEvent("broker_down", 0), 100.0)
    h.apply(CenterEvent("broker_up", 0), 400.0)
    h.apply(CenterEvent("broker_down", 0), 1000.0)
    assert h.blind_between(0.0, 1200.0) == 300.0 + 200.0
    assert h.heard_for(200.0, 1200.0) == 1000.0 - 200.0 - 200.0
    assert not h.settled(1200.0, 60.0)               # not receiving
    h.apply(CenterEvent("broker_up", 0), 1300.0)
    assert not h.settled(1300.0 + 119, 60.0)          # grace: 2 intervals, at least 60 s
    assert h.settled(1300.0 + 120, 60.0)


def test_the_edge_watch_sends_changes_only() -> None:
    w = CenterWatch()
    assert w.poll(connected=True, influx_up=True, replaying=False, at_ms=1) == []
    assert [e.what for e in w.started(2)] == ["edge_started"]
    got = [e.what for e in w.poll(connected=True, influx_up=True, replaying=False, at_ms=3)]
    assert got == ["broker_up"]
    assert w.poll(connected=True, influx_up=True, replaying=False, at_ms=4) == []
    got = [e.what for e in w.poll(connected=False, influx_up=False, replaying=False, at_ms=5)]
    assert got == ["broker_down", "influx_down"]
    got = [e.what for e in w.poll(connected=True, influx_up=True, replaying=True, at_ms=6)]
    assert got == ["broker_up", "influx_up", "replay_started"]


async def test_a_gateway_dead_before_a_broker_outage_is_told_after_the_grace(
        tmp_path: Path) -> None:
    reg = county_registry()
    rig = make_rig(reg, rules=rules_file(tmp_path), start=T0)
    county = County(rig, reg)
    await county.minutes(5)
    county.up.discard("gw-1")                 # dies quietly (no will reaches the edge)
    await county.minutes(2)
    county.center("broker_down")              # then the broker goes for 30 min
    await county.idle(30 * 60, step=60)
    county.center("broker_up")
    await county.minutes(1)
    assert [m for m in messages(rig.notifier) if m[0] == "farmer"] == []   # the grace
    await county.minutes(2)
    # Heard 3 min before the outage and 2 min after it: past 3 intervals,
    # and the grace is over. The minutes are the true time since gw-1 was
    # last heard (the outage included).
    assert messages(rig.notifier) == [
        ("operator", "中心MQTT服务器已中断5min，收不到网关数据；离线告警暂停，未通知农户。"),
        ("operator", "中心MQTT服务器中断30min后已恢复，未向农户发离线告警。"),
        ("farmer", "gw-1网关离线：已35分钟没有数据，请检查供电和网络。"),
    ]
    rig.close()


async def test_operators_budget_and_quiet_hours(tmp_path: Path) -> None:
    reg = county_registry()
    night = local_ts(2026, 6, 10, 23)
    rig = make_rig(reg, rules=rules_file(tmp_path), start=night, settings=AlertsSettings(
        backoff_s=60, operator_daily_message_budget=2, operator_quiet_hours="22:00-07:00"))
    county = County(rig, reg)
    for _ in range(4):                       # four short broker blips at night
        county.center("broker_down")
        await county.idle(20)
        county.center("broker_up")
        await county.minutes(3)
    assert rig.notifier.sent == []           # held for the end of the quiet hours
    assert rig.events("suppressed") == ["suppressed", "suppressed"]
    rig.clock.t = local_ts(2026, 6, 11, 7, 1)
    county.feed()                            # the gateways report on through the night
    await rig.step()
    assert messages(rig.notifier) == [
        ("operator", "中心MQTT服务器中断20s后已恢复，未向农户发离线告警。")] * 2
    assert all(s.url == CENTER for s in rig.notifier.sent)
    assert rig.notifier.sent[0].title == "【提示】服务中心"
    rig.close()


async def test_an_edge_start_forgets_its_previous_runs_pending_incident(tmp_path: Path) -> None:
    state = tmp_path / "alerts.sqlite"
    reg = county_registry()
    rig = make_rig(reg, rules=rules_file(tmp_path), start=T0, state_path=state)
    county = County(rig, reg)
    await county.minutes(2)
    county.center("broker_down")             # the edge stops while its broker is away
    await rig.step(30)
    rig.close()
    rig2 = make_rig(reg, rules=rules_file(tmp_path), start=T0 + 600, state_path=state,
                    notifier=rig.notifier)
    county2 = County(rig2, reg)
    county2.center("edge_started")
    await rig2.step(1)
    county2.center("broker_up")
    await county2.minutes(5)
    assert messages(rig.notifier) == [
        ("operator", "边缘服务已重启：网关2min内补报数据前不发静默告警。")]
    rig2.close()


async def test_a_stale_backlog_raises_no_flatline(tmp_path: Path) -> None:
    """Readings replayed after an outage (older than max_reading_age_s) are
    history: 13 h of one value arriving at once is no stuck sensor; a fresh
    reading still holding it is."""
    reg = farm_registry(sensors=1, contacts=[Contact(name="王", notify=["json://x/sms"])])
    rig = make_rig(reg, rules=rules_file(tmp_path), start=T0)
    h = 3600 * 1000
    for age in range(16, 2, -1):
        rig.feed({"soil-1": 12.5}, "soil_temperature", age_ms=age * h)
    await rig.step()
    assert [f for f in rig.engine.firing() if "flatline" in f[0]] == []
    rig.feed({"soil-1": 12.5}, "soil_temperature")
    await rig.step()
    assert [f[0] for f in rig.engine.firing()] == ["device/flatline"]
    rig.close()


async def test_disk_full_with_influxdb_down_is_blind_time_and_an_operator_incident(
        tmp_path: Path) -> None:
    reg = county_registry()
    rig = make_rig(reg, rules=rules_file(tmp_path), start=T0)
    county = County(rig, reg)
    await county.minutes(5)
    county.center("influx_down")
    county.center("disk_full")       # nothing becomes durable: the edge acknowledges nothing
    assert not rig.engine.health.receiving
    await county.idle(10 * 60, step=60)
    county.center("disk_ok")
    county.center("influx_up")
    await county.minutes(5)
    assert messages(rig.notifier) == [
        ("operator", "边缘服务器磁盘已满60s：缓冲区无法写入，请立即清理磁盘。"),
        ("operator", "InfluxDB已中断5min，数据暂存边缘缓冲区，恢复后自动补写。"),
        ("operator", "边缘服务器磁盘已恢复可写（满10min）。"),
        ("operator", "InfluxDB中断10min后已恢复，缓冲数据正在补写。"),
    ]
    rig.close()


def test_the_edge_watch_tells_the_spool_filling_and_back() -> None:
    mb = 2**20
    w = CenterWatch(spool_alert_share=0.8)
    w.started(1)
    kw = {"connected": True, "influx_up": False, "replaying": False}
    assert [e.what for e in w.poll(at_ms=2, spool=(700 * mb, 1000 * mb, 5000 * mb), **kw)
            ] == ["broker_up", "influx_down"]
    got = w.poll(at_ms=3, spool=(800 * mb, 1000 * mb, 5000 * mb), **kw)
    assert [(e.what, e.value) for e in got] == [("spool_filling", 80.0)]
    assert got[0].detail == "spool 800 of 1000 MB, disk free 5000 MB"
    assert w.poll(at_ms=4, spool=(770 * mb, 1000 * mb, 5000 * mb), **kw) == []  # 5 points
    got = w.poll(at_ms=5, spool=(740 * mb, 1000 * mb, 5000 * mb), **kw)
    assert [(e.what, e.value) for e in got] == [("spool_ok", 74.0)]
    # A disk with less room left than the rest of max_mb fills first.
    got = w.poll(at_ms=6, spool=(100 * mb, 1000 * mb, 150 * mb), **kw)
    assert [(e.what, e.value) for e in got] == [("spool_filling", 85.0)]


async def test_spool_filling_is_an_operator_incident_cleared_when_it_drops_back(
        tmp_path: Path) -> None:
    reg = county_registry()
    rig = make_rig(reg, rules=rules_file(tmp_path), start=T0)
    county = County(rig, reg)
    await county.minutes(5)
    county.center("influx_down")
    rig.engine.on_center(CenterEvent("spool_filling", rig.clock.ms,
                                     "spool 820 of 1024 MB", 80.1))
    await county.minutes(20)
    rig.engine.on_center(CenterEvent("spool_ok", rig.clock.ms, "", 74.0))
    county.center("influx_up")
    await county.minutes(5)
    assert messages(rig.notifier) == [
        ("operator", "边缘缓冲区已用80%已60s，磁盘将满：请检查InfluxDB并清理磁盘。"),
        ("operator", "InfluxDB已中断5min，数据暂存边缘缓冲区，恢复后自动补写。"),
        ("operator", "边缘缓冲区已回落到74%（持续20min）。"),
        ("operator", "InfluxDB中断20min后已恢复，缓冲数据正在补写。"),
    ]
    rig.close()


class _Counted(list):  # type: ignore[type-arg]
    """A list that counts the times it is walked."""

    walks = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        type(self).walks += 1
        return super().__iter__()


class _CountedIndex(dict):  # type: ignore[type-arg]
    walks = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        type(self).walks += 1
        return super().__iter__()


async def test_a_flood_of_wills_walks_the_registry_once_not_once_per_will() -> None:
    """300 farms' gateways send their last wills at once (a county's power
    cut): the registry's farms and its index are walked a few times in all,
    not once per will (that made 4000 wills block the edge's loop for
    seconds)."""
    from farmedge.registry import Farm, GatewayEntry, Registry, SensorMeta

    n = 300
    reg = Registry(farms=[Farm(county="c1", farm=f"f{i}",
                               gateways={"gw": GatewayEntry(sensors={"s1": SensorMeta()})})
                          for i in range(n)])
    object.__setattr__(reg, "farms", _Counted(reg.farms))
    rig = make_rig(reg, start=local_ts(2026, 6, 10, 10))
    eng = rig.engine
    eng.contexts.index = _CountedIndex(eng.contexts.index)
    _Counted.walks = _CountedIndex.walks = 0
    for i in range(n):
        rig.county, rig.farm = "c1", f"f{i}"
        rig.status("gw", online=False)
    assert eng.center.mass, "the flood is one mass offline"
    assert _Counted.walks + _CountedIndex.walks <= 3, (_Counted.walks, _CountedIndex.walks)
    rig.close()


def test_the_edge_watch_names_what_it_receives_from() -> None:
    w = CenterWatch(broker="nats")
    w.started(1)
    got = w.poll(connected=True, influx_up=True, replaying=False, at_ms=2)
    got += w.poll(connected=False, influx_up=True, replaying=False, at_ms=3)
    assert [(e.what, e.broker) for e in got] == [("broker_up", "nats"), ("broker_down", "nats")]
    w = CenterWatch()
    w.started(1)
    [up] = w.poll(connected=True, influx_up=True, replaying=False, at_ms=2)
    assert up.broker == "mqtt"


async def _outage(tmp_path: Path, broker: BrokerKind, minutes: float,
                  rules: str = DRY_RULES) -> list[tuple[str, str]]:
    """An outage of the edge's broker (``broker``) of ``minutes``, in a county
    reporting before and after: what the operators and farmers were sent."""
    reg = county_registry()
    rig = make_rig(reg, rules=rules_file(tmp_path, rules), start=T0)
    county = County(rig, reg)
    await county.minutes(10)
    rig.engine.on_center(CenterEvent("broker_down", rig.clock.ms, broker=broker))
    await county.idle(minutes * 60)
    rig.engine.on_center(CenterEvent("broker_up", rig.clock.ms, broker=broker))
    await rig.step(5)
    await county.minutes(10)
    got = messages(rig.notifier)
    rig.close()
    return got


async def test_an_edge_on_nats_tells_the_operators_it_lost_the_cluster(tmp_path: Path) -> None:
    """The outage notice says what the edge lost: the NATS cluster, not an
    MQTT broker it does not have ([source] kind = "nats")."""
    assert await _outage(tmp_path, "nats", 40) == [
        ("operator", "中心NATS集群已中断5min，收不到网关数据；离线告警暂停，未通知农户。"),
        ("operator", "中心NATS集群中断40min后已恢复，未向农户发离线告警。"),
    ]
    # shorter than the rule's for: one notice afterwards, with the true duration
    assert await _outage(tmp_path, "nats", 2) == [
        ("operator", "中心NATS集群中断2min后已恢复，未向农户发离线告警。"),
    ]
    assert await _outage(tmp_path, "mqtt", 2) == [
        ("operator", "中心MQTT服务器中断2min后已恢复，未向农户发离线告警。"),
    ]


async def test_a_center_profile_without_cluster_down_tells_of_the_cluster_as_broker_down(
        tmp_path: Path) -> None:
    """A site's own center profile written before cluster-down existed still
    tells the operators of a lost cluster, with its broker-down rule."""
    own_center = """  center:
    rules:
      - id: broker-down
        check: broker_down
        for: 5m
        entity: farm
        audience: [center]
        template: own-broker-down
templates:
  own-broker-down:
    raise: {zh: "中心数据服务已中断{duration}。", en: "Data service down ({duration})."}
    clear: {zh: "中心数据服务中断{duration}后已恢复。", en: "Data service back ({duration})."}
"""
    assert await _outage(tmp_path, "nats", 40, rules=DRY_RULES + own_center) == [
        ("operator", "中心数据服务已中断5min。"),
        ("operator", "中心数据服务中断40min后已恢复。"),
    ]
