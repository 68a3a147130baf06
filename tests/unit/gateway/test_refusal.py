"""What the uplink does with a message the broker refuses (a PUBACK reason
code from 0x80 up; docs/gateway.md "When the broker refuses a message"):
the policy (farmedge/gateway/refusal.py) with a fake log and clock, and the
uplink's ack path with a fake connection standing in for the broker's
answers (the same outcomes against the real Mosquitto are in
tests/integration/test_gateway_refusals.py; a fake here so that every
reason code, including those Mosquitto never sends, is covered without a
server). The outbox is a real SQLite file in a temporary directory."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from farmedge.backoff import Backoff
from farmedge.contract import Quality, parse_status, parse_telemetry
from farmedge.gateway import Agent, FakeClock, GatewaySettings
from farmedge.gateway.outbox import NewRow
from farmedge.gateway.refusal import Action, Refusals


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def _add(self, level: str) -> Callable[..., None]:
        return lambda event, **kw: self.events.append((level, event, kw))

    def __getattr__(self, level: str) -> Callable[..., None]:
        return self._add(level)

    def names(self) -> list[str]:
        return [e for _, e, _ in self.events]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def policy() -> tuple[Refusals, Log, Clock]:
    log, clock = Log(), Clock()
    return Refusals(Backoff(1.0, 60.0, random.Random(1)), log, clock=clock), log, clock


def test_not_authorized_keeps_the_readings_waits_and_is_shown_until_accepted() -> None:
    p, log, clock = policy()
    d = p.refused([1, 2, 3], 0x87, accepted_here=True)
    assert d.action is Action.WAIT and 0.5 <= d.wait_s <= 1.0
    assert p.standing == 0x87 and p.waiting() > 0
    # the other messages in flight, refused for the same reason: one wait
    assert p.refused([4], 0x87, accepted_here=True).wait_s == 0
    assert log.names() == ["gateway.publish_refused"]
    level, _, kw = log.events[0]
    assert level == "error" and kw["code"] == 0x87 and kw["reason"] == "not authorized"
    clock.t += 1.0
    assert p.waiting() == 0
    second = p.refused([1, 2, 3], 0x87, accepted_here=True).wait_s
    assert 1.0 <= second <= 2.0, "the waits grow while the refusals go on"
    p.accepted()
    assert p.standing is None and log.names()[-1] == "gateway.publish_accepted_again"
    assert p.counts[0x87] == 3


def test_topic_name_invalid_is_the_connections_fault_too() -> None:
    p, _, _ = policy()
    assert p.refused([1], 0x90, accepted_here=True).action is Action.WAIT
    assert p.standing == 0x90


def test_quota_exceeded_waits_without_saying_the_broker_refuses_the_gateway() -> None:
    p, log, _ = policy()
    assert p.refused([1], 0x97, accepted_here=True).action is Action.WAIT
    assert p.standing is None and log.events[0][0] == "warning"


def test_packet_too_large_splits_the_batch_and_lowers_the_readings_per_message() -> None:
    p, log, _ = policy()
    d = p.refused(list(range(60)), 0x95, accepted_here=False)
    assert d.action is Action.SPLIT and d.parts == [list(range(30)), list(range(30, 60))]
    assert p.batch_limit == 30
    assert p.refused(list(range(7)), 0x95, accepted_here=True).parts == [
        [0, 1, 2, 3], [4, 5, 6]]
    assert p.batch_limit == 4 and p.waiting() == 0, "splitting waits for nothing"
    assert log.names() == ["gateway.batch_split"] * 2


def test_a_single_reading_refused_for_itself_is_set_aside() -> None:
    for code in (0x99, 0x95, 0x83, 0x80, 0xA2):  # 0xA2: a code this version does not know
        p, _, _ = policy()
        assert p.refused(["r"], code, accepted_here=True).action is Action.SET_ASIDE, code
        assert p.standing is None


def test_a_reading_refused_before_anything_was_accepted_is_not_blamed() -> None:
    """A broker refusing every message (a plugin's 0x83) must not empty the
    outbox into the refused table one reading at a time."""
    p, log, _ = policy()
    d = p.refused(["r"], 0x83, accepted_here=False)
    assert d.action is Action.WAIT and p.standing == 0x83
    assert "not the reading's" in log.events[0][2]["why"]


def test_the_backoff_of_the_refusals_is_the_shared_one() -> None:
    p, _, _ = policy()
    assert isinstance(p.backoff, Backoff)


# -- the uplink's ack path ---------------------------------------------------------


class FakeConnection:
    """Stands in for the broker connection: records what is published and
    answers each telemetry message with ``answer(readings)`` (a PUBACK
    reason code), through the uplink's own ack callback."""

    def __init__(self, answer: Callable[[list[str]], int]) -> None:
        self.answer = answer
        self.mid = 0
        self.acks: list[tuple[int, int]] = []
        self.delivered: list[str] = []
        self.max_packet_size: int | None = None
        self.status: list[bytes] = []

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                content_type: str | None = None) -> int:
        self.mid += 1
        if topic.endswith("/status"):
            self.status.append(payload)
            return self.mid
        sensors = [r.sensor for r in parse_telemetry(payload, content_type=content_type).readings]
        code = self.answer(sensors)
        if code < 0x80:
            self.delivered += sensors
        self.acks.append((self.mid, code))
        return self.mid

    def packet_size(self, topic: str, payload: bytes, *, qos: int = 1,
                    content_type: str | None = None) -> int:
        return len(payload) + len(topic) + 10


def agent(tmp: Path, sensors: list[str]) -> tuple[Agent, FakeClock]:
    s = GatewaySettings.model_validate({
        "county": "c1", "farm": "farm-1", "gateway": "gw-1", "data_dir": str(tmp),
        "mqtt": {"backoff_min_s": 1, "backoff_max_s": 60},
        "uplink": {"batch_max": 60, "batch_max_wait_s": 0}, "clock": {"source": "trust"},
        "sensors": []})
    clock = FakeClock(wall=1_763_800_000_000, mono=50_000, is_synced=True)
    a = Agent(s, clock=clock, drivers={})
    a.outbox.open()
    a.outbox.add([NewRow(name, "soil_moisture", "%", 20.0, Quality.OK, None,
                         1_763_800_000_000 + i, 40_000 + i, True)
                  for i, name in enumerate(sensors)], clock.boot_id())
    a.outbox.commit()
    return a, clock


def run_uplink(a: Agent, conn: FakeConnection, rounds: int = 200) -> None:
    """The uplink's pump, one step at a time, without a loop or a broker:
    send what it would send, hand the answers back, until nothing moves."""
    up = a.uplink
    up._client = conn  # type: ignore[assignment]
    up.connected = True
    for _ in range(rounds):
        while up.refusals.waiting() == 0 and len(up._inflight) < 4:
            batch = up._take()
            if batch is None:
                break
            up._send(*batch)
        acks, conn.acks = conn.acks, []
        for mid, code in acks:
            up._acked(up._gen, mid, code)
        up._handle_acks()
        up.refusals._until = 0.0  # the back-off wait, passed
        if not acks and up._take() is None:
            break


def test_one_reading_the_broker_refuses_for_itself_no_longer_blocks_the_outbox(
        tmp_path: Path) -> None:
    """The old uplink dropped the connection at the refusal and sent the
    same oldest batch again, forever: nothing behind it ever went."""
    names = [f"soil-{i}" for i in range(100)]
    a, _ = agent(tmp_path, names)
    conn = FakeConnection(lambda sensors: 0x99 if "soil-7" in sensors else 0)
    run_uplink(a, conn)
    assert sorted(conn.delivered) == sorted(n for n in names if n != "soil-7")
    assert a.outbox.depth == 0 and a.outbox.aside.count == 1
    assert a.outbox.dropped == 0, "set aside, not dropped"
    assert a.uplink.resend.set_aside == 1 and a.uplink.resend.refused_messages >= 2
    kept = a.outbox.db.execute("SELECT sensor, code FROM refused").fetchall()
    assert kept == [("soil-7", 0x99)]
    st = parse_status(a.status(True))
    assert st.refused == 1 and st.publish_refused is None
    a.outbox.close()


def test_a_broker_that_refuses_the_gateway_keeps_every_reading_and_says_so(
        tmp_path: Path) -> None:
    names = [f"soil-{i}" for i in range(100)]
    a, _ = agent(tmp_path, names)
    conn = FakeConnection(lambda sensors: 0x87)
    run_uplink(a, conn, rounds=10)
    assert conn.delivered == [] and a.outbox.depth == 100 and a.outbox.aside.count == 0
    st = parse_status(a.status(True))
    assert st.publish_refused == 0x87 and st.refused is None
    conn.answer = lambda sensors: 0  # the ACL fixed
    run_uplink(a, conn)
    assert sorted(conn.delivered) == sorted(names) and a.outbox.depth == 0
    assert parse_status(a.status(True)).publish_refused is None
    a.outbox.close()


def test_too_large_messages_are_split_until_the_broker_takes_them(tmp_path: Path) -> None:
    names = [f"soil-{i}" for i in range(100)]
    a, _ = agent(tmp_path, names)
    conn = FakeConnection(lambda sensors: 0x95 if len(sensors) > 6 else 0)
    run_uplink(a, conn)
    assert sorted(conn.delivered) == sorted(names) and a.outbox.depth == 0
    assert a.outbox.aside.count == 0 and a.uplink.refusals.batch_limit is not None
    assert a.uplink.refusals.batch_limit <= 6
    a.outbox.close()


def test_a_message_over_the_brokers_maximum_packet_size_is_split_before_it_is_sent(
        tmp_path: Path) -> None:
    """A broker that says its Maximum Packet Size (CONNACK) drops the
    connection of a client that sends more: such a message is never sent."""
    names = [f"soil-{i}" for i in range(60)]
    a, _ = agent(tmp_path, names)
    sizes: list[int] = []
    conn = FakeConnection(lambda sensors: sizes.append(len(sensors)) or 0)
    conn.max_packet_size = 200
    run_uplink(a, conn)
    assert sorted(conn.delivered) == sorted(names) and a.outbox.depth == 0
    assert sizes and max(sizes) < 60
    a.outbox.close()


def test_readings_set_aside_are_listed_and_put_back_by_the_cli(
        tmp_path: Path, capsys: Any) -> None:
    from farmedge.cli import main

    names = [f"soil-{i}" for i in range(20)]
    a, _ = agent(tmp_path, names)
    run_uplink(a, FakeConnection(lambda sensors: 0x99 if "soil-3" in sensors else 0))
    a.outbox.close()
    config = tmp_path / "gateway.toml"
    config.write_text(f'county = "c1"\nfarm = "farm-1"\ngateway = "gw-1"\n'
                      f'data_dir = "{tmp_path}"\n[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n')
    assert main(["gateway", "requeue-refused", "--config", str(config), "--list"]) == 0
    out = capsys.readouterr().out
    assert "soil-3\tsoil_moisture" in out and "0x99" in out and "1 readings set aside" in out
    assert main(["gateway", "requeue-refused", "--config", str(config)]) == 0
    assert "1 readings put back" in capsys.readouterr().out
    b, _ = agent(tmp_path, [])
    assert b.outbox.depth == 1 and b.outbox.aside.count == 0
    assert [r.sensor for r in b.outbox.peek(0, 10)] == ["soil-3"]
    b.outbox.close()
