"""Alert state that moves with its partition, against the real three-node
cluster's key-value store (farmedge/cluster/alertstate.py) and real leases
(lease_ttl_s = 3, rebalance_s = 0.5): two edge instances, each an
:class:`AlertEngine` with real partition ownership, the fence and the
partition store, messages delivered through Apprise to a local HTTP
receiver.

The engines are fed the records of the farm they own directly, as the
edge does for the partitions it reads (the edge on NATS itself is tested
in its own files). An instance "crashes" without a word: its ownership
stops without releasing, its NATS connection closes, its engine is
dropped. One stand-in: the notifier that never answers (the instance dies
while a message is being sent) is a fake, since a real process killed
mid-send cannot be made to happen in one; the message it held is the
point of the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient

from farmedge.alerts import AlertEngine, AlertsSettings, AppriseNotifier, MemoryRecorder
from farmedge.alerts.notify import Notifier
from farmedge.cluster import Fenced, Lease, LeaseStore, Ownership, fair_share
from farmedge.cluster.alertstate import KvPartitionStore
from farmedge.contract.kinds import KINDS
from farmedge.contract.models import Quality
from farmedge.contract.parse import NormalizedReading
from farmedge.records import Accepted
from farmedge.registry import Contact, Registry
from farmedge.transport import nats as tn
from farmedge.transport.nats_settings import SourceSection
from farmedge_dev.natscluster import NatsCluster
from tests.alerts_support import HttpReceiver, farm_registry, soil_dry_rules, until
from tests.nats_support import source
from tests.unit.alerts.support import rules_of

pytestmark = [pytest.mark.servers]

RULES = soil_dry_rules(4)
FARM = "wang-12"


class LeaseFence:
    """The edge's fence over its ownership (as farmedge/edge builds it)."""

    def __init__(self, own: Ownership, store: LeaseStore, partitions: int) -> None:
        self.own, self.store, self.partitions = own, store, partitions

    def partition_of(self, county: str, farm: str) -> int:
        return tn.partition_of(county, farm, self.partitions)

    def owned(self) -> frozenset[int]:
        """Leases valid by this instance's own clock (no request)."""
        now = time.monotonic()
        return frozenset(p for p, lease in self.own.owned.items() if lease.valid(now))

    async def check(self, partition: int) -> bool:
        lease = self.own.owned.get(partition)
        if lease is None:
            return False
        try:
            await self.store.check(lease)
        except Fenced:
            return False
        return True


class Switch:
    """Apprise, or, with ``hang``, a notifier that takes the message and
    never answers (the instance dies mid-send)."""

    def __init__(self) -> None:
        self.real = AppriseNotifier()
        self.hang = False
        self.started: list[str] = []

    async def send(self, url: str, *, title: str, body: str) -> None:
        if not self.hang:
            return await self.real.send(url, title=title, body=body)
        self.started.append(body)
        await asyncio.Event().wait()
        return None


@dataclass
class Instance:
    name: str
    cfg: SourceSection
    registry: Registry
    state_dir: Path
    notifier: Notifier = field(default_factory=Switch)
    memory: MemoryRecorder = field(default_factory=MemoryRecorder)
    nc: NatsClient | None = None
    engine: AlertEngine | None = None
    own: Ownership | None = None

    async def start(self, rules: Path) -> Instance:
        self.nc = await tn.connect(self.cfg, self.name)
        js = self.nc.jetstream()
        leases = await LeaseStore(js, self.cfg, self.name).open()
        kv = await KvPartitionStore(js, self.cfg.alert_bucket,
                                    replicas=self.cfg.replicas).open()
        self.engine = eng = AlertEngine(
            rules=rules_of(rules), registry=self.registry, notifier=self.notifier,
            state_path=self.state_dir / f"{self.name}.sqlite", recorders=[self.memory],
            settings=AlertsSettings(tick_s=0.2, backoff_s=1))

        async def gained(lease: Lease) -> None:
            await eng.partition_gained(lease.partition)

        async def lost(partition: int, reason: str) -> None:
            await eng.partition_lost(partition)

        self.own = Ownership(leases, on_gained=gained, on_lost=lost)
        eng.attach_fence(LeaseFence(self.own, leases, self.cfg.partitions), store=kv)
        await eng.start()
        self.own.start()
        return self

    def owns(self, p: int) -> bool:
        return self.own is not None and p in self.own.owned

    def feed(self, county: str, value: float) -> None:
        assert self.engine is not None
        k = KINDS["soil_moisture"]
        ms = int(time.time() * 1000)
        hit = self.registry.index().get((county, FARM, "gw-1"))
        self.engine.on_accepted([Accepted(
            county, FARM, "gw-1", ms, True, 0,
            [NormalizedReading("soil-1", k, ms, value, Quality.OK, None)],
            hit[1] if hit is not None else None)])

    def events(self, *names: str) -> list[str]:
        return [e.event for e in self.memory.events if e.event in names]

    async def crash(self) -> None:
        """Gone without a word: no release, no more writes."""
        assert self.own is not None and self.nc is not None and self.engine is not None
        await self.own.stop(release=False)
        await self.nc.close()
        task, self.engine._task = self.engine._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def pause(self) -> None:
        """Stopped renewing (a process paused, or cut off): it still
        believes it owns its partitions; their leases expire."""
        assert self.own is not None
        task, self.own._task = self.own._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def stop(self) -> None:
        if self.own is not None and self.own._task is not None:
            await self.own.stop()
        if self.engine is not None:
            await self.engine.close()
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()


@dataclass
class Setup:
    cfg: SourceSection
    county: str
    partition: int
    rules: Path
    registry: Registry
    http: HttpReceiver
    tmp: Path
    insts: list[Instance] = field(default_factory=list)

    async def instance(self, name: str) -> Instance:
        i = Instance(name, self.cfg, self.registry, self.tmp)
        self.insts.append(await i.start(self.rules))
        return i

    async def owner(self) -> Instance:
        """The instance owning the farm's partition, once exactly one does."""
        def one() -> Instance | None:
            live = [i for i in self.insts if i.own is not None and i.own._task is not None]
            owners = [i for i in live if i.owns(self.partition)]
            return owners[0] if len(owners) == 1 else None
        found = await until(one, timeout=30, what="one owner of the farm's partition")
        assert found is not None
        return found

    async def close(self) -> None:
        for i in self.insts:
            with contextlib.suppress(Exception):
                await i.stop()


@pytest.fixture
async def setup(nats_cluster: NatsCluster, http: HttpReceiver,
                tmp_path: Path) -> Setup:
    cfg = source(nats_cluster, alert_bucket="a" + uuid.uuid4().hex[:10])
    county = "c" + uuid.uuid4().hex[:6]
    reg = farm_registry(county, sensors=1, contacts=[Contact(name="王", notify=[http.url("sms")])],
                        center=[Contact(name="值班", notify=[http.url("ops")])])
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    return Setup(cfg, county, tn.partition_of(county, FARM, cfg.partitions), rules, reg,
                 http, tmp_path)


async def _two(s: Setup) -> tuple[Instance, Instance]:
    """Two instances, settled; the first returned owns the farm's partition."""
    x = await s.instance("edge-a")
    await until(lambda: x.owns(s.partition), timeout=30, what="edge-a owns the partition")
    y = await s.instance("edge-b")
    # Settled: each has exactly its share (the farm's may move to edge-b on
    # the rebalance). A sum of all partitions with both owning some is not
    # settled: 5 + 3 comes before edge-a gives back its fourth.
    half = fair_share(s.cfg.partitions, 2)
    await until(lambda: x.own is not None and y.own is not None
                and len(x.own.owned) == len(y.own.owned) == half
                and not set(x.own.owned) & set(y.own.owned), timeout=30,
                what="each owns its share")
    first = await s.owner()
    return first, (y if first is x else x)


def _committed(i: Instance) -> bool:
    """The engine's pass has written what changed (every tick, 0.2 s)."""
    assert i.engine is not None
    return not i.engine._changes.rows()


def _states(i: Instance) -> list[str]:
    assert i.engine is not None
    return [st for _r, _e, st in i.engine.firing()]


async def _quiet(seconds: float = 2.0) -> None:
    """Before asserting that nothing more was sent: ten ticks of 0.2 s."""
    await asyncio.sleep(seconds)


async def test_a_pending_alert_fires_once_from_the_new_owner(setup: Setup) -> None:
    s = setup
    try:
        x, y = await _two(s)
        x.feed(s.county, 12)
        await until(lambda: _states(x) == ["pending"] and _committed(x), timeout=10,
                    what="pending on its owner, in the store")
        await x.crash()
        await until(lambda: y.owns(s.partition), timeout=s.cfg.takeover_bound_s + 10,
                    what="the other took the partition over")
        await until(lambda: s.http.messages("sms"), timeout=20,
                    what="the alert sent from the new owner")
        await _quiet()
        assert len(s.http.messages("sms")) == 1, s.http.messages()
        assert y.events("raise", "delivered") == ["raise", "delivered"]
        assert x.events("raise", "delivered") == []
    finally:
        await s.close()


async def test_a_firing_alert_is_not_sent_again_after_the_handover(setup: Setup) -> None:
    s = setup
    try:
        x, y = await _two(s)
        x.feed(s.county, 12)
        await until(lambda: s.http.messages("sms"), timeout=20, what="the alert sent")
        await until(lambda: x.engine is not None and not x.engine.outbox.items,
                    timeout=10, what="its delivery confirmed")
        await until(lambda: _committed(x), timeout=10, what="the confirmation's pass committed")
        await x.crash()
        await until(lambda: y.owns(s.partition), timeout=s.cfg.takeover_bound_s + 10,
                    what="the other took the partition over")
        # (the lease comes first, then the state loaded: the edge's reader
        # starts only once it is)
        await until(lambda: _states(y) == ["firing"], timeout=10, what="the state loaded")
        for _ in range(10):        # still dry, for longer than `for`
            y.feed(s.county, 11)
            await asyncio.sleep(0.5)
        assert len(s.http.messages("sms")) == 1, s.http.messages()
        assert y.events("raise") == []
        # and it clears once, from the new owner
        y.feed(s.county, 28)
        await until(lambda: len(s.http.messages("sms")) == 2, timeout=20, what="the clear")
        assert "恢复" in s.http.messages("sms")[1]
    finally:
        await s.close()


async def test_an_intent_unconfirmed_at_a_takeover_goes_to_operators(setup: Setup) -> None:
    s = setup
    try:
        x, y = await _two(s)
        assert isinstance(x.notifier, Switch)
        x.notifier.hang = True
        x.feed(s.county, 12)
        await until(lambda: x.notifier.started, timeout=20,  # type: ignore[attr-defined]
                    what="its owner sending")
        await x.crash()
        await until(lambda: y.owns(s.partition), timeout=s.cfg.takeover_bound_s + 10,
                    what="the other took the partition over")
        ops = await until(lambda: s.http.messages("ops"), timeout=20,
                          what="the operators told")
        assert len(ops) == 1 and "王" in ops[0] and f"partition {s.partition}" in ops[0], ops
        y.feed(s.county, 12)
        await _quiet()
        assert s.http.messages("sms") == []
        assert y.events("unconfirmed") == ["unconfirmed"]
        assert _states(y) == ["firing"]
    finally:
        await s.close()


async def test_a_fenced_instance_sends_nothing(setup: Setup) -> None:
    """The owner stops renewing (paused, or cut off) and still believes it
    owns its partitions; their leases expire and the other instance takes
    them over. The alert that comes due on the old owner is refused by
    the fence; the new owner, which loaded the state, sends it once."""
    s = setup
    try:
        x, y = await _two(s)
        x.feed(s.county, 12)
        await until(lambda: _states(x) == ["pending"], timeout=10, what="pending on its owner")
        await x.pause()
        await until(lambda: y.owns(s.partition), timeout=s.cfg.takeover_bound_s + 10,
                    what="the other took the partition over")
        assert x.owns(s.partition)        # what the old owner still believes
        await until(lambda: s.http.messages("sms"), timeout=20, what="the alert sent")
        await until(lambda: _states(x) == ["firing"] and x.engine is not None
                    and x.engine.stats["fenced"] > 0, timeout=20,
                    what="the old owner's alert fenced")
        await _quiet()
        assert len(s.http.messages("sms")) == 1, s.http.messages()
        assert x.events("delivered") == [] and y.events("delivered") == ["delivered"]
    finally:
        await s.close()


async def test_the_status_feed_sees_every_partition(nats_cluster: NatsCluster,
                                                    county: str) -> None:
    """Gateways of farms in several partitions publish their status (MQTT
    3.1.1, QoS 1) to node 1; a status feed on node 3 hands every one over,
    whichever partition it is in, ids intact, and the partitions' own
    consumers still have them all (the feed only reads)."""
    from farmedge.cluster.statusfeed import StatusFeed
    from farmedge.contract import status_topic
    from farmedge.contract.parse import parse_status
    from tests.nats_support import Publisher, delete_consumers, prepare

    cfg = source(nats_cluster, urls=[nats_cluster.nodes[2].url])
    await prepare(cfg)
    farms = [f"farm.{i}" for i in range(12)] + ["农场二"]
    parts = {tn.partition_of(county, f, cfg.partitions) for f in farms}
    assert len(parts) > 3
    got: list[tuple[int, str, str, str, bool]] = []
    nc = await tn.connect(cfg, "test-feed")
    feed = await StatusFeed(nc, cfg, lambda w, data: got.append(
        (w.partition, w.county, w.farm, w.gateway, parse_status(data).online))).start()
    pub = Publisher(nats_cluster.nodes[0].mqtt_port).connect()
    try:
        for i, f in enumerate(farms):
            pub.publish(status_topic(county, f, f"网关-{i}"),
                        f'{{"v": 1, "gateway": "网关-{i}", "online": false}}')
        assert pub.wait_acked(len(farms)) == len(farms)
        mine = await until(lambda: len([g for g in got if g[1] == county]) >= len(farms)
                           and [g for g in got if g[1] == county], timeout=30,
                           what="every status through the feed")
        assert sorted(mine) == sorted(
            (tn.partition_of(county, f, cfg.partitions), county, f, f"网关-{i}", False)
            for i, f in enumerate(farms))
        # the partitions' consumers still have them
        js = nc.jetstream()
        stored: set[str] = set()
        deadline = time.monotonic() + 30
        while len(stored) < len(farms) and time.monotonic() < deadline:
            for p in parts:
                batch = await tn.PartitionReader(js, cfg, p).fetch(100, timeout_s=0.3)
                stored |= {d.where.farm for d in batch.deliveries if d.where.county == county}
                await batch.durable()
        assert stored == set(farms)
    finally:
        pub.close()
        await feed.stop()
        await nc.close()
        await delete_consumers(nats_cluster, cfg)


async def test_the_status_feed_makes_its_consumer_again_when_it_is_gone(
        nats_cluster: NatsCluster, county: str) -> None:
    """The feed's consumer removed behind its back (as the servers do after
    its inactivity threshold, when the edge was away longer): its fetches
    would time out for ever; after ``idle_check_s`` without a status it asks,
    finds the consumer gone, makes it again, and the next status arrives."""
    from farmedge.cluster.statusfeed import StatusFeed
    from farmedge.contract import status_topic
    from tests.nats_support import Publisher, delete_consumers, prepare

    cfg = source(nats_cluster)
    await prepare(cfg)
    got: list[str] = []
    nc = await tn.connect(cfg, "test-feed")
    feed = await StatusFeed(nc, cfg, lambda w, data: got.append(w.farm),
                            idle_check_s=1.0).start()
    pub = Publisher(nats_cluster.nodes[1].mqtt_port).connect()
    try:
        js = nc.jetstream()
        first = feed._consumer
        assert first in [c.name for c in await js.consumers_info(cfg.stream)]
        await js.delete_consumer(cfg.stream, first)
        await until(lambda: feed._sub is not None and feed._consumer != first,
                    timeout=20, what="the consumer made again")
        pub.publish(status_topic(county, "farm-1", "gw-1"), '{"v": 1, "gateway": "gw-1"}')
        assert pub.wait_acked(1) == 1
        await until(lambda: "farm-1" in got, timeout=20, what="the status through the new one")
    finally:
        pub.close()
        await feed.stop()
        await nc.close()
        await delete_consumers(nats_cluster, cfg)
