"""The clock hold made visible: what the status says and what the log says
while readings wait for an unsynced clock (docs/gateway.md, "Clock"). The
clock, the monotonic time and the log are fakes passed to the constructor;
the outbox is a SQLite file in a temporary directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from farmedge.contract import Quality, parse_status
from farmedge.gateway import Agent, FakeClock, GatewaySettings, Sample
from farmedge.gateway.agent import _Stuck
from farmedge.gateway.hold import HoldWatch
from farmedge.gateway.outbox import NewRow


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.events.append(("warning", event, kw))

    def info(self, event: str, **kw: Any) -> None:
        self.events.append(("info", event, kw))


def unsynced_agent(tmp: Path, hold_s: float = 900.0) -> tuple[Agent, FakeClock]:
    s = GatewaySettings.model_validate({
        "county": "c1", "farm": "farm-1", "gateway": "gw-1", "data_dir": str(tmp),
        "uplink": {"hold_unsynced_s": hold_s}, "clock": {"source": "timedatectl"},
        "sensors": [{"id": "probe-1", "driver": "simulated", "interval_s": 1}]})
    clock = FakeClock(wall=946_684_800_000, mono=50_000, is_synced=False)
    a = Agent(s, clock=clock, drivers={})
    a.outbox.open()
    return a, clock


def store(a: Agent, n: int) -> None:
    for _ in range(n):
        a._store("probe-1", [Sample("soil_moisture", 20.0, "%")], _Stuck(0))


def test_the_status_counts_the_readings_held_for_the_clock(tmp_path: Path) -> None:
    a, clock = unsynced_agent(tmp_path)
    # An earlier boot's unsynced readings cannot be re-dated: they go at once.
    a.outbox.add([NewRow("probe-1", "soil_moisture", "%", 1.0, Quality.OK, None, 5, 60_000,
                         False)] * 4, "boot-before")
    store(a, 3)
    clock.advance(60_000)
    store(a, 2)
    clock.advance(5_000)
    st = parse_status(a.status(True))
    assert (st.clock, st.held_unsynced, st.held_for_s) == ("unsynced", 5, 65.0)
    # Past hold_unsynced_s a reading is no longer held: it goes marked unsynced.
    clock.advance(900_000 - 65_000 + 1)
    st = parse_status(a.status(True))
    assert (st.held_unsynced, st.held_for_s) == (2, 840.0)
    clock.is_synced = True  # NTP: nothing is held (they are re-dated next)
    st = parse_status(a.status(True))
    assert (st.held_unsynced, st.held_for_s) == (0, None)


def test_a_hold_of_zero_seconds_holds_nothing(tmp_path: Path) -> None:
    a, _ = unsynced_agent(tmp_path, hold_s=0)  # hold switched off: sent at once
    store(a, 3)
    assert parse_status(a.status(True)).held_unsynced == 0


def test_the_hold_is_logged_at_its_start_every_few_minutes_and_at_its_end(
        tmp_path: Path) -> None:
    a, clock = unsynced_agent(tmp_path)
    log = Log()
    t = [1000.0]
    w = HoldWatch(a.s, a.outbox, clock, log, log_every_s=300, monotonic=lambda: t[0])
    w.check()
    assert log.events == [] and not w.holding  # nothing read yet: nothing held
    store(a, 4)
    w.check()
    [(level, event, kw)] = log.events
    assert (level, event) == ("warning", "gateway.holding_unsynced")
    assert (kw["readings"], kw["hold_unsynced_s"], kw["clock_source"]) == (4, 900.0,
                                                                           "timedatectl")
    assert "held_for_s" in kw and "[uplink] hold_unsynced_s" in kw["hint"]
    assert "[clock] source" in kw["hint"]
    t[0] += 299
    store(a, 1)
    w.check()
    assert len(log.events) == 1  # not again before log_every_s
    t[0] += 1
    clock.advance(120_000)
    w.check()
    assert [e[1] for e in log.events] == ["gateway.holding_unsynced"] * 2
    assert log.events[-1][2]["readings"] == 5 and log.events[-1][2]["held_for_s"] == 120.0
    clock.is_synced = True
    w.check()
    assert log.events[-1][:2] == ("info", "gateway.hold_ended")
    assert log.events[-1][2] == {"clock_set": True, "held_most": 5}
    assert not w.holding
    w.check()
    assert len(log.events) == 3
