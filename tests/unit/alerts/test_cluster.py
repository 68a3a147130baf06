"""The alert engine in cluster mode and "never twice", without servers: the
fence before a send, partitions gained and lost, an intent to send found
unconfirmed. The fence and the partition store are fakes passed by
constructor (the real ones, over JetStream's key-value store, are tested in
tests/integration/test_alerts_cluster.py)."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from farmedge.alerts.cluster import Rows, farm_of_row
from farmedge.registry import Contact

from .support import FakeNotifier, Rig, farm_registry, local_ts, make_rig, rules_file

SMS = "json://127.0.0.1:9/sms"
OPS = "json://127.0.0.1:9/ops"
DRY12 = "3号地土壤偏干：含水量12%（适宜22–30%），请24小时内灌溉。"


class FakeFence:
    """Every farm in partition 3. ``owned_`` is what the instance believes,
    ``valid`` what the key-value store would say."""

    def __init__(self, owned: set[int] | None = None, valid: bool = True) -> None:
        self.owned_ = {3} if owned is None else owned
        self.valid = valid
        self.checks: list[int] = []

    def partition_of(self, county: str, farm: str) -> int:
        return 3

    def owned(self) -> frozenset[int]:
        return frozenset(self.owned_)

    async def check(self, partition: int) -> bool:
        self.checks.append(partition)
        return self.valid and partition in self.owned_


class FakeStore:
    """A partition store in a dict, rows kept as JSON (as the real one)."""

    def __init__(self) -> None:
        self.data: dict[int, dict[str, dict[str, str]]] = {}
        self.writes = 0

    async def load(self, partition: int) -> Rows:
        return {t: {k: json.loads(v) for k, v in rows.items()}
                for t, rows in self.data.get(partition, {}).items()}

    async def write(self, partition: int,
                    changes: Mapping[str, Mapping[str, Any | None]]) -> None:
        self.writes += 1
        part = self.data.setdefault(partition, {})
        for t, rows in changes.items():
            tab = part.setdefault(t, {})
            for k, v in rows.items():
                if v is None:
                    tab.pop(k, None)
                else:
                    tab[k] = json.dumps(v, ensure_ascii=False)


class Blocking(FakeNotifier):
    """Takes a message and never answers (the edge dies mid-send)."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[str] = []

    async def send(self, url: str, *, title: str, body: str) -> None:
        self.started.append(body)
        await asyncio.Event().wait()


def _registry():  # type: ignore[no-untyped-def]
    return farm_registry(sensors=1, contacts=[Contact(name="王", notify=[SMS])],
                         center=[Contact(name="值班", notify=[OPS])])


def _rig(tmp_path: Path, **kw: Any) -> Rig:
    return make_rig(_registry(), rules=rules_file(tmp_path), start=local_ts(2026, 6, 10, 10),
                    **kw)


async def _dry(rig: Rig, steps: int = 4) -> None:
    for _ in range(steps):
        rig.feed({"soil-1": 12})
        await rig.step(600)


async def test_a_fenced_engine_sends_nothing_and_keeps_the_message(tmp_path: Path) -> None:
    rig = _rig(tmp_path)
    fence = FakeFence(valid=False)     # believes it owns 3; the store says not
    rig.engine.attach_fence(fence)
    await _dry(rig)
    assert rig.events("raise") == ["raise"]
    assert rig.notifier.messages(SMS) == []
    assert fence.checks and set(fence.checks) == {3}
    assert [d.farm for d in rig.engine.outbox.items.values()] == ["wang-12"]
    assert rig.engine.stats["fenced"] >= 1
    # The lease was ours after all: sent, once.
    fence.valid = True
    await rig.step(10)
    await rig.step(10)
    assert rig.notifier.messages(SMS) == [DRY12]
    assert rig.engine.outbox.items == {}
    rig.close()


async def test_one_fence_check_per_partition_per_pass(tmp_path: Path) -> None:
    reg = farm_registry(sensors=1, contacts=[Contact(name="王", notify=[SMS, "json://x/b"])])
    rig = make_rig(reg, rules=rules_file(tmp_path), start=local_ts(2026, 6, 10, 10))
    fence = FakeFence()
    rig.engine.attach_fence(fence)
    await _dry(rig)
    assert len(rig.notifier.sent) == 2 and fence.checks == [3]
    rig.close()


async def test_an_intent_found_unconfirmed_after_a_restart_goes_to_operators(
        tmp_path: Path) -> None:
    """The edge dies while the notifier has the message: on restart it is
    not sent again; the operators hear of it and it is recorded."""
    state = tmp_path / "alerts.sqlite"
    blocking = Blocking()
    rig = _rig(tmp_path, state_path=state, notifier=blocking)
    for _ in range(3):
        rig.feed({"soil-1": 12})
        rig.clock.t += 600
        await rig.engine._round(rig.clock())
    await asyncio.sleep(0)
    assert blocking.started == [DRY12]
    # A crash: nothing more is written (no shut); the state file is all that is left.
    for t in rig.engine.outbox.inflight.values():
        t.cancel()
    rig.engine._store.close()
    again = _rig(tmp_path, state_path=state)
    await again.step(60)
    await again.step(60)
    assert again.notifier.messages(SMS) == []
    ops = again.notifier.messages(OPS)
    assert len(ops) == 1 and "1条" in ops[0] and "王" in ops[0], ops
    assert again.events("unconfirmed") == ["unconfirmed"]
    assert again.engine.stats["unconfirmed"] == 1
    assert again.engine.outbox.items == {}
    again.close()
    # and only once: a third start finds nothing open
    third = _rig(tmp_path, state_path=state)
    await third.step(60)
    assert third.notifier.sent == [] and third.events("unconfirmed") == []
    third.close()


async def test_a_failed_attempt_is_no_open_intent(tmp_path: Path) -> None:
    """A notifier that says "not delivered" closes the intent: after a
    restart the retry is sent, nobody is told of an unconfirmed one."""
    state = tmp_path / "alerts.sqlite"
    rig = _rig(tmp_path, state_path=state)
    rig.notifier.fail_next = 1
    await _dry(rig, 2)
    assert rig.events("failed") == ["failed"] and rig.notifier.sent == []
    rig.close()
    again = _rig(tmp_path, state_path=state, clock=rig.clock)
    await again.step(600)
    assert again.notifier.messages(SMS) == [DRY12]
    assert again.events("unconfirmed") == []
    again.close()


async def test_the_intent_is_committed_before_the_notifier_has_the_message(
        tmp_path: Path) -> None:
    state = tmp_path / "alerts.sqlite"
    seen: list[object] = []
    rig = _rig(tmp_path, state_path=state)

    def look(d: object, now: float) -> None:
        rows = {k: json.loads(v) for k, v in rig.engine._store._db.execute(  # type: ignore[union-attr]
            "SELECT key, data FROM outbox")}
        sending = d.sending  # type: ignore[attr-defined]
        seen.append(sending is not None and [r["sending"] for r in rows.values()] == [sending])

    rig.engine.on_dispatch = look
    await _dry(rig)
    assert seen == [True]
    rig.close()


# ------------------------------------------------------------------ handover


def _pair(tmp_path: Path) -> tuple[Rig, Rig, FakeFence, FakeFence, FakeStore]:
    store = FakeStore()
    fa, fb = FakeFence({3}), FakeFence(set())
    a = _rig(tmp_path / "a")
    b = _rig(tmp_path / "b", clock=a.clock)
    a.engine.attach_fence(fa, store=store)
    b.engine.attach_fence(fb, store=store)
    return a, b, fa, fb, store


def _dirs(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()


async def test_a_pending_alert_fires_once_from_the_new_owner(tmp_path: Path) -> None:
    _dirs(tmp_path)
    a, b, fa, fb, store = _pair(tmp_path)
    await a.engine.partition_gained(3)
    await b.engine.partition_gained(99)      # b runs, owns something else
    a.feed({"soil-1": 12})                  # pending, not yet 20 min
    await a.step(600)
    assert a.engine.firing() == [("test-dry/soil-dry", "sensor:gw-1/soil-1", "pending")]
    assert store.data[3]["states"]
    # a dies (no partition_lost); its lease expires, b takes partition 3
    fa.owned_ = set()
    fb.owned_ = {3}
    await b.engine.partition_gained(3)
    assert b.engine.firing() == [("test-dry/soil-dry", "sensor:gw-1/soil-1", "pending")]
    b.feed({"soil-1": 12})
    await b.step(600)
    await b.step(600)
    assert b.notifier.messages(SMS) == [DRY12]
    assert a.notifier.sent == []
    # a, fenced, sends nothing even if it still runs
    await a.step(600)
    assert a.notifier.sent == []
    assert b.events("raise") == ["raise"]


async def test_a_firing_alert_is_not_sent_again_after_the_handover(tmp_path: Path) -> None:
    _dirs(tmp_path)
    a, b, fa, fb, store = _pair(tmp_path)
    await a.engine.partition_gained(3)
    await _dry(a)
    assert a.notifier.messages(SMS) == [DRY12]
    await a.step(1)     # the confirmation (the delivery removed) committed
    await a.engine.partition_lost(3)     # a clean handover (a rebalance)
    assert a.engine.firing() == [] and a.engine.machine.groups == {}
    assert store.data[3]["states"] and store.data[3]["groups"]
    assert store.data[3].get("outbox", {}) == {}
    fa.owned_, fb.owned_ = set(), {3}
    await b.engine.partition_gained(3)
    for _ in range(3):
        b.feed({"soil-1": 12})
        await b.step(600)
    assert b.notifier.sent == []
    assert b.engine.firing() == [("test-dry/soil-dry", "sensor:gw-1/soil-1", "firing")]
    # it clears once, from b
    for _ in range(4):
        b.feed({"soil-1": 28})
        await b.step(600)
    assert b.notifier.messages(SMS) == ["3号地土壤水分已恢复：含水量28%。"]


async def test_an_intent_unconfirmed_at_a_takeover_goes_to_operators(tmp_path: Path) -> None:
    _dirs(tmp_path)
    store = FakeStore()
    fa, fb = FakeFence({3}), FakeFence(set())
    blocking = Blocking()
    a = _rig(tmp_path / "a", notifier=blocking)
    b = _rig(tmp_path / "b", clock=a.clock)
    a.engine.attach_fence(fa, store=store)
    b.engine.attach_fence(fb, store=store)
    await a.engine.partition_gained(3)
    for _ in range(3):
        a.feed({"soil-1": 12})
        a.clock.t += 600
        await a.engine._round(a.clock())
    await asyncio.sleep(0)
    assert blocking.started == [DRY12]
    snapshot = copy.deepcopy(store.data)       # what the store holds as a dies
    for t in a.engine.outbox.inflight.values():
        t.cancel()
    store.data = snapshot
    fa.owned_, fb.owned_ = set(), {3}
    await b.engine.partition_gained(3)
    await b.step(10)
    await b.step(10)
    assert b.notifier.messages(SMS) == []
    ops = b.notifier.messages(OPS)
    assert len(ops) == 1 and "partition 3" in ops[0], ops
    assert b.events("unconfirmed") == ["unconfirmed"]
    assert store.data[3].get("outbox", {}) == {}


async def test_gateways_of_other_partitions_are_not_offline(tmp_path: Path) -> None:
    """Cluster mode: silence counts only for the farms of owned partitions,
    and from the partition's gain (not the engine's start)."""
    rig = _rig(tmp_path)
    fence = FakeFence(set())
    rig.engine.attach_fence(fence, store=FakeStore())
    for _ in range(12):
        await rig.step(600)
    assert rig.engine.firing() == []
    fence.owned_ = {3}
    await rig.engine.partition_gained(3)
    await rig.step(600)
    assert rig.engine.firing() == []
    for _ in range(6):
        await rig.step(600)
    assert [f[1] for f in rig.engine.firing()] == ["gateway:gw-1"]


def test_each_row_of_the_state_names_its_farm_or_none() -> None:
    assert farm_of_row("states", "crops/soil-dry|c1/wang-12|sensor:gw-1/s1", {}) == \
        ("c1", "wang-12")
    assert farm_of_row("states", "center/broker-down|_center/_center|farm:mqtt", {}) is None
    assert farm_of_row("states", "center/mass|黑龙江/_center|farm:mass:黑龙江", {}) is None
    assert farm_of_row("groups", "c1/wang.12|soil-dry|plot:field-3", {}) == ("c1", "wang.12")
    assert farm_of_row("outbox", "x", {"county": "c1", "farm": "f"}) == ("c1", "f")
    assert farm_of_row("outbox", "x", {"county": "_center", "farm": "_center"}) is None
    assert farm_of_row("outbox", "x", None) is None
    assert farm_of_row("budget", "c1/f/2026-06-10", 3) == ("c1", "f")
    assert farm_of_row("budget", "_center/2026-06-10", 3) is None
    assert farm_of_row("budget", "officer:张/2026-06-10", 3) is None
    assert farm_of_row("history", "c1/f/gw-1/s1/soil_moisture", {}) == ("c1", "f")


class Slow(FakeNotifier):
    """Takes a message after 0.3 s (a service answering slowly)."""

    async def send(self, url: str, *, title: str, body: str) -> None:
        await asyncio.sleep(0.3)
        await super().send(url, title=title, body=body)


async def test_a_stop_lets_a_send_in_flight_finish_and_records_it(tmp_path: Path) -> None:
    """A clean stop (the edge's SIGTERM) while a message is being sent: the
    send finishes and its outcome is written, so the next start has nothing
    unconfirmed to report and sends nothing again."""
    from farmedge.alerts import AlertEngine, MemoryRecorder

    from .support import SimClock, rules_of

    state = tmp_path / "alerts.sqlite"
    clock = SimClock(local_ts(2026, 6, 10, 10))
    slow = Slow()

    def engine(notifier: FakeNotifier, memory: MemoryRecorder) -> AlertEngine:
        from farmedge.alerts import AlertsSettings
        return AlertEngine(rules=rules_of(rules_file(tmp_path)), registry=_registry(),
                           notifier=notifier, state_path=state, recorders=[memory],
                           clock=clock, settings=AlertsSettings(tick_s=0.05))

    mem = MemoryRecorder()
    eng = engine(slow, mem)
    await eng.start()
    rig = Rig(eng, clock, slow, mem, _registry())
    for _ in range(3):
        rig.feed({"soil-1": 12})
        clock.t += 600
        eng.wake()
        await asyncio.sleep(0.1)
    assert eng.outbox.inflight, "a send in flight"
    await eng.close()
    assert slow.messages(SMS) == [DRY12]
    mem2 = MemoryRecorder()
    again = engine(FakeNotifier(), mem2)
    await again.start()
    clock.t += 60
    again.wake()
    await asyncio.sleep(0.2)
    await again.close()
    assert [e.event for e in mem2.events if e.event in ("unconfirmed", "delivered")] == []
    assert isinstance(again.notifier, FakeNotifier) and again.notifier.sent == []


# ------------------------------------------------------------------ county-wide


class SplitFence(FakeFence):
    """Farms wang-12 and f-2..f-5 in partition 0, f-6..f-10 in partition 1."""

    def partition_of(self, county: str, farm: str) -> int:
        return 1 if farm.startswith("f-") and int(farm[2:]) >= 6 else 0


async def test_county_wide_mass_offline_is_seen_by_every_edge_and_told_once(
        tmp_path: Path) -> None:
    """A county's gateways split over two edges by partition: each edge
    sees its own gateways' statuses and readings, and the others' statuses
    through on_county_status. Six of ten gateways go down, three on each
    side: each edge sees the mass offline (its farms are told nothing),
    and the operators hear of it once, from the county role's holder (the
    owner of partition 0)."""
    from farmedge.contract.models import GatewayStatus
    from farmedge.records import StatusEvent

    from .test_scenarios import CENTER, County, county_rig

    a, ca = county_rig(tmp_path)
    b, _ = county_rig(tmp_path, clock=a.clock)
    fa, fb = SplitFence({0}), SplitFence({1})
    a.engine.attach_fence(fa)
    b.engine.attach_fence(fb)
    fence = SplitFence()
    mine = {id(a): 0, id(b): 1}

    def owner(county: County, gw: str) -> Rig:
        return a if fence.partition_of("c1", county.gws[gw]) == 0 else b

    def status(gw: str, online: bool) -> None:
        body = {"v": 1, "gateway": gw, "online": online, **({"clock": "synced"} if online else {})}
        ev = StatusEvent("c1", ca.gws[gw], gw, GatewayStatus.model_validate(body), a.clock.ms)
        for rig in (a, b):
            if fence.partition_of("c1", ev.farm) == mine[id(rig)]:
                rig.engine.on_status(ev)
            else:
                rig.engine.on_county_status(ev)

    async def minutes(n: int, up: set[str]) -> None:
        for _ in range(n):
            for gw in sorted(up):
                rig = owner(ca, gw)
                rig.farm = ca.gws[gw]
                rig.feed({"soil-1": 28, "soil-2": 28.4}, gateway=gw)
            a.farm = b.farm = "wang-12"
            a.clock.t += 60
            await a.engine.step()
            await b.engine.step()

    up = set(ca.gws)
    await minutes(5, up)
    gone = ["gw-2", "gw-3", "gw-4", "gw-6", "gw-7", "gw-8"]
    for gw in gone:
        up.discard(gw)
        status(gw, False)
        a.clock.t += 5
        await a.engine.step()
        await b.engine.step()
    await minutes(30, up)
    assert a.engine.center.member(("c1", "f-2", "gw-2"))
    assert b.engine.center.member(("c1", "f-7", "gw-7"))
    ops = [s.body for s in a.notifier.sent + b.notifier.sent if s.url == CENTER]
    assert ops == ["c1县6个网关（共10个）同时离线，疑为停电或网络故障，未通知农户。"]
    assert [s for s in a.notifier.sent + b.notifier.sent if s.url != CENTER] == []
    assert b.events("raise") == [] and a.events("raise") == ["raise"]
    for gw in gone:
        up.add(gw)
        status(gw, True)
    await minutes(5, up)
    ops = [s.body for s in a.notifier.sent + b.notifier.sent if s.url == CENTER]
    assert ops[1:] == ["c1县网关集中离线已结束（持续30min）。"]
    assert not a.engine.center.mass and not b.engine.center.mass


class FlakyStore(FakeStore):
    """Cannot be read for its first ``fail`` loads (the cluster unreachable)."""

    def __init__(self, fail: int) -> None:
        super().__init__()
        self.fail = fail

    async def load(self, partition: int) -> Rows:
        if self.fail > 0:
            self.fail -= 1
            raise OSError("nats: no servers available for connection")
        return await super().load(partition)


async def test_a_partition_whose_state_cannot_be_loaded_sends_nothing_until_it_is(
        tmp_path: Path) -> None:
    """The new owner cannot read the partition's state at first: it sends
    and writes nothing for it (a firing alert would be raised again), and
    once the state loads it goes on from it: no second raise."""
    _dirs(tmp_path)
    a, b, fa, fb, store = _pair(tmp_path)
    await a.engine.partition_gained(3)
    await _dry(a)
    assert a.notifier.messages(SMS) == [DRY12]
    await a.step(1)
    flaky = FlakyStore(fail=2)
    flaky.data = store.data
    b.engine.cluster.store = flaky  # type: ignore[union-attr]
    fa.owned_, fb.owned_ = set(), {3}
    await b.engine.partition_gained(3)          # fails: unloaded
    assert b.engine.cluster is not None and b.engine.cluster.unloaded == {3}
    writes = flaky.writes
    b.feed({"soil-1": 12})                      # dry: b alone would go pending
    await b.step(600)                           # the retry fails too
    assert b.engine.cluster.unloaded == {3} and flaky.writes == writes
    for _ in range(3):
        b.feed({"soil-1": 12})
        await b.step(600)
    assert b.notifier.sent == []
    assert b.engine.cluster.unloaded == set()   # loaded at a later pass
    for _ in range(3):
        b.feed({"soil-1": 11})
        await b.step(600)
    assert b.notifier.sent == []
    assert _firing_states(b) == ["firing"]
    assert store.data[3]["states"]


def _firing_states(rig: Rig) -> list[str]:
    return [st for _r, _e, st in rig.engine.firing()]


class WriteFails(FakeStore):
    """Refuses writes while ``down`` (no quorum in the cluster)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def write(self, partition: int,
                    changes: Mapping[str, Mapping[str, Any | None]]) -> None:
        if self.down:
            raise OSError("nats: timeout")
        await super().write(partition, changes)


async def test_a_message_whose_intent_cannot_be_stored_waits(tmp_path: Path) -> None:
    """The partition's store refuses the pass's write: its messages are not
    handed to the notifier (a crash would leave no intent, and the next
    owner would send them again); they go once the store takes writes."""
    rig = _rig(tmp_path)
    store = WriteFails()
    rig.engine.attach_fence(FakeFence(), store=store)
    await rig.engine.partition_gained(3)
    await _dry(rig, 1)
    store.down = True
    await _dry(rig, 3)
    assert rig.events("raise") == ["raise"] and rig.notifier.sent == []
    assert rig.engine.state_error is not None
    store.down = False
    await rig.step(10)
    await rig.step(10)
    assert rig.notifier.messages(SMS) == [DRY12]
    assert rig.engine.state_error is None
    assert store.data[3].get("outbox", {}) == {}
