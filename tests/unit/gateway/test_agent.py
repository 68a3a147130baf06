"""The agent without a broker: what it keeps of a driver's samples, its
status payload, and the uplink's encoding of what the outbox holds. Drivers
and the clock are fakes passed to the constructor."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest

from farmedge.contract import Quality, parse_status, parse_telemetry
from farmedge.gateway import (
    Agent,
    FakeClock,
    GatewayError,
    GatewaySettings,
    Outbox,
    OutboxError,
    Sample,
)
from farmedge.gateway.agent import _Stuck
from farmedge.gateway.outbox import NewRow


def settings(tmp: Path, **over: Any) -> GatewaySettings:
    doc: dict[str, Any] = {
        "county": "c1", "farm": "farm-1", "gateway": "gw-1", "data_dir": str(tmp),
        "sensors": [{"id": "probe-1", "driver": "simulated", "interval_s": 0.01}],
        **over,
    }
    return GatewaySettings.model_validate(doc)


class ListDriver:
    """Returns the next list of samples at each read, then nothing."""

    def __init__(self, *reads: list[Sample]) -> None:
        self.reads = list(reads)
        self.n = 0

    def read(self) -> list[Sample]:
        self.n += 1
        return self.reads.pop(0) if self.reads else []

    def close(self) -> None:
        pass


def agent(tmp: Path, driver: ListDriver | None = None, **over: Any) -> Agent:
    a = Agent(settings(tmp, **over), clock=FakeClock(),
              drivers={"probe-1": driver or ListDriver()})
    a.outbox.open()
    return a


GOOD = Sample("soil_moisture", 23.4, "%")


def test_a_sample_the_wire_cannot_carry_is_not_kept(tmp_path: Path) -> None:
    """A driver's NaN made the outbox insert fail (NOT NULL) and killed that
    sensor's sampling; an infinity was kept and then refused by the encoder
    at every try. Now both count as read errors and the good one is kept."""
    a = agent(tmp_path)
    bad = [Sample("soil_moisture", math.nan, "%"), Sample("soil_moisture", math.inf, "%"),
           Sample("soil_moisture", 1.0, "%", sensor="probe 2"),
           Sample("animal_presence", 1, "count", animal="a/b")]
    a._store("probe-1", [*bad, GOOD], _Stuck(0))
    assert a.outbox.depth == 1 and a.samples == 1
    assert a.read_errors == 4
    [row] = a.outbox.peek(0, 10)
    assert (row.sensor, row.value, row.quality) == ("probe-1", 23.4, Quality.OK)


def test_sampling_goes_on_after_a_sample_that_cannot_be_sent(tmp_path: Path) -> None:
    driver = ListDriver([Sample("soil_moisture", math.nan, "%")], [GOOD], [GOOD])
    a = agent(tmp_path, driver)
    _sample(a, driver, until=2)
    assert a.samples == 2 and a.read_errors == 1


def _sample(a: Any, driver: Any, *, until: int) -> None:
    """Run the first sensor's sampling loop until ``until`` samples are taken
    (or it ends), with a deadline of 20 s."""
    cfg = a.s.sensors[0]

    async def main() -> None:
        task = asyncio.create_task(a._sample_loop(cfg, driver))
        for _ in range(2000):
            if a.samples >= until or task.done():
                break
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def test_sampling_goes_on_after_a_number_too_big_for_a_float(tmp_path: Path) -> None:
    """float() of such an int raises OverflowError, which is no ValueError:
    it ended that sensor's sampling for good, with nothing in the log."""
    huge = Sample("soil_moisture", 10**400, "%")
    driver = ListDriver([huge, GOOD], [GOOD])
    a = agent(tmp_path, driver)
    _sample(a, driver, until=2)
    assert a.samples == 2 and a.read_errors == 1


def test_sampling_goes_on_after_a_sample_of_no_known_quality(tmp_path: Path) -> None:
    """A driver's quality that is no Quality raised AttributeError, which
    ended that sensor's sampling for good, with nothing in the log."""
    odd = Sample("soil_moisture", 1.0, "%", quality="bad")  # type: ignore[arg-type]
    driver = ListDriver([odd, GOOD], [GOOD])
    a = agent(tmp_path, driver)
    _sample(a, driver, until=2)
    assert a.samples == 2 and a.read_errors == 1


def test_range_unit_and_stuck_checks_set_the_quality(tmp_path: Path) -> None:
    a = agent(tmp_path)
    stuck = _Stuck(3)
    a._store("probe-1", [Sample("soil_moisture", 180.0, "%"),
                         Sample("soil_moisture", 20.0, "furlong")], stuck)
    for _ in range(3):
        a._store("probe-1", [Sample("soil_ph", 6.5, "pH")], stuck)
    q = [r.quality for r in a.outbox.peek(0, 10)]
    assert q == [Quality.ERROR, Quality.ERROR, Quality.OK, Quality.OK, Quality.SUSPECT]


def test_status_is_encoded_by_the_contract(tmp_path: Path) -> None:
    a = agent(tmp_path)
    a._store("probe-1", [GOOD], _Stuck(0))
    st = parse_status(a.status(True))
    assert (st.gateway, st.online, st.outbox_depth, st.dropped, st.clock) == (
        "gw-1", True, 1, 0, "synced")
    assert st.ts == FakeClock().wall and st.outbox_full is None
    assert a.status(False) == b'{"v":1,"gateway":"gw-1","online":false}'
    # Before the outbox is open: no outbox fields.
    closed = Agent(settings(tmp_path / "x"), clock=FakeClock(), drivers={})
    assert "outbox_depth" not in json.loads(closed.status(True))


def test_the_last_will_says_lost_and_a_planned_stop_says_stopping(tmp_path: Path) -> None:
    a = agent(tmp_path)
    will = a.uplink._make_publisher().will
    assert will is not None and will.retain
    assert will.payload == b'{"v":1,"gateway":"gw-1","online":false,"reason":"lost"}'
    stop = parse_status(a.status(False, "stopping"))
    assert (stop.online, stop.reason, stop.ts, stop.clock) == (
        False, "stopping", FakeClock().wall, "synced")
    online = parse_status(a.status(True))
    assert online.reason is None and online.held_unsynced == 0 and online.held_for_s is None


def test_a_status_field_the_contract_refuses_is_left_out(tmp_path: Path) -> None:
    a = Agent(settings(tmp_path), clock=FakeClock(wall=-5), drivers={})
    st = parse_status(a.status(True))
    assert st.ts is None and st.version is not None


def _uplink_rows(tmp: Path, values: list[float]) -> Agent:
    a = agent(tmp)
    a.outbox.add([NewRow("probe-1", "soil_moisture", "%", v, Quality.OK, None,
                         1_763_800_000_000 + i, i, True) for i, v in enumerate(values)], "boot-1")
    a.outbox.commit()
    return a


@pytest.mark.parametrize("encoding", ["compact", "json"])
def test_a_reading_the_contract_refuses_is_dropped_not_sent_forever(
        tmp_path: Path, encoding: str) -> None:
    """An outbox written by an older version can hold an infinite value:
    the compact encoder raised ValueError at every try, which ended the
    uplink. Now that reading is dropped and counted, the others go."""
    a = _uplink_rows(tmp_path, [1.0, math.inf, 3.0])
    a.s.uplink.encoding = encoding  # type: ignore[assignment]
    rows = a.outbox.peek(0, 10)
    enc = a.uplink._encode(rows, 7, "synced")
    assert enc is not None
    p = parse_telemetry(enc.payload, content_type=enc.content_type)
    assert [r.value for r in p.readings] == [1.0, 3.0] and p.envelope.seq == 7
    assert [r.value for r in rows] == [1.0, 3.0]
    assert a.outbox.depth == 2 and a.outbox.dropped == 1
    a.outbox.close()
    # The count survives a restart.
    assert Outbox(a.outbox.path).open().dropped == 1


def test_a_batch_of_nothing_but_refused_readings_sends_nothing(tmp_path: Path) -> None:
    a = _uplink_rows(tmp_path, [math.inf, -math.inf])
    rows = a.outbox.peek(0, 10)
    assert a.uplink._encode(rows, 1, "synced") is None
    assert rows == [] and a.outbox.depth == 0 and a.outbox.dropped == 2


def test_nan_cannot_reach_the_outbox(tmp_path: Path) -> None:
    """What the first test guards against: SQLite stores NaN as NULL, which
    the schema refuses; the outbox says so in its own error."""
    a = agent(tmp_path)
    with pytest.raises(OutboxError, match="NOT NULL"):
        a.outbox.add([NewRow("p", "soil_ph", "pH", math.nan, Quality.OK, None, 1, 1, True)],
                     "boot-1")


def _run(a: Agent, timeout: float = 10.0) -> BaseException | None:
    async def main() -> None:
        await asyncio.wait_for(a.run(asyncio.Event()), timeout)

    try:
        asyncio.run(main())
    except BaseException as exc:
        return exc
    return None


def test_the_agent_stops_with_an_error_when_the_uplink_fails(tmp_path: Path) -> None:
    """It went on sampling with nothing sent (the broker still saw the
    connection alive) until someone noticed; now it stops and says why, and
    systemd starts it again."""
    a = Agent(settings(tmp_path), clock=FakeClock(),
              drivers={"probe-1": ListDriver([GOOD], [GOOD])})

    async def broken(stop: asyncio.Event) -> None:
        await asyncio.sleep(0.2)
        raise RuntimeError("a bug in the uplink")

    a.uplink.run = broken  # type: ignore[method-assign]
    exc = _run(a)
    assert isinstance(exc, GatewayError), exc
    assert "the uplink stopped: RuntimeError: a bug in the uplink" in str(exc)
    # Stopped the usual way: what was sampled is committed, the file closed.
    assert not a.outbox.is_open
    assert Outbox(a.outbox.path).open().depth == a.samples


def test_the_agent_stops_with_an_error_when_commits_fail(tmp_path: Path) -> None:
    a = Agent(settings(tmp_path, outbox={"commit_interval_s": 0.05}), clock=FakeClock(),
              drivers={})
    real = a.outbox.commit
    calls = 0

    def failing() -> None:
        nonlocal calls
        calls += 1
        if calls >= 2:
            raise OutboxError("outbox.sqlite3: commit failed: disk I/O error")
        real()

    a.outbox.commit = failing  # type: ignore[method-assign]
    exc = _run(a)
    assert isinstance(exc, GatewayError) and "the outbox's commits stopped" in str(exc), exc


def test_a_broken_outbox_file_leaves_its_fields_out_of_the_status(tmp_path: Path) -> None:
    a = agent(tmp_path)
    a.outbox.db.close()  # the file went away under the agent
    st = parse_status(a.status(True))
    assert st.online and st.outbox_depth is None and st.version is not None


def test_the_uplinks_json_is_byte_for_byte_what_earlier_versions_sent(tmp_path: Path) -> None:
    """The wire is unchanged: the contract's encoder writes what the uplink
    built by hand before (compact separators, UTF-8, the same key order)."""
    a = agent(tmp_path, uplink={"encoding": "json"})
    a.outbox.add([NewRow("探头-1", "soil_moisture", "%", 23.4, Quality.SUSPECT, None, 1, 1, True),
                  NewRow("rfid-gate", "animal_presence", "count", 3.0, Quality.OK,
                         "982000123456789", 2, 2, True)], "boot-1")
    rows = a.outbox.peek(0, 10)
    enc = a.uplink._encode(rows, 18231, "synced")
    assert enc is not None and enc.content_type == "application/json"
    before = json.dumps({"v": 1, "gateway": "gw-1", "seq": 18231, "sent": FakeClock().wall,
                         "clock": "synced", "readings": [r.wire() for r in rows]},
                        separators=(",", ":"), ensure_ascii=False).encode()
    assert enc.payload == before
