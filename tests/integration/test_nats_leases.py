"""Partition ownership (farmedge/cluster/) against the real three-node
cluster's key-value store, with short TTLs (lease_ttl_s = 3, rebalance_s =
0.5: a takeover bound of 3.5 s): exactly one owner per partition, a dead
owner's partitions taken over within the bound, a fenced owner's token
refused, and a fair share for an instance that joins."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace

import pytest
from nats.aio.client import Client as NatsClient

from farmedge.cluster import Fenced, Lease, LeaseLost, LeaseStore, Ownership, fair_share
from farmedge.transport import nats as tn
from farmedge.transport.nats_settings import SourceSection
from farmedge_dev.natscluster import NatsCluster
from tests.nats_support import source

pytestmark = [pytest.mark.servers]

#: Slack over the bound for the server's TTL expiry and a loaded machine.
SLACK_S = 3.0


@dataclass
class Instance:
    name: str
    cfg: SourceSection
    nc: NatsClient | None = None
    store: LeaseStore | None = None
    own: Ownership | None = None
    gained: list[tuple[float, int, int]] = field(default_factory=list)
    lost: list[tuple[float, int, str]] = field(default_factory=list)

    async def start(self) -> Instance:
        self.nc = await tn.connect(self.cfg, self.name)
        self.store = await LeaseStore(self.nc.jetstream(), self.cfg, self.name).open()

        async def gained(lease: Lease) -> None:
            self.gained.append((time.monotonic(), lease.partition, lease.token))

        async def lost(partition: int, reason: str) -> None:
            self.lost.append((time.monotonic(), partition, reason))

        self.own = Ownership(self.store, on_gained=gained, on_lost=lost).start()
        return self

    @property
    def owned(self) -> set[int]:
        assert self.own is not None
        return set(self.own.owned)

    async def crash(self) -> None:
        """Gone without a word: no release, its connection dropped."""
        assert self.own is not None and self.nc is not None
        await self.own.stop(release=False)
        await self.nc.close()

    async def stop(self) -> None:
        if self.own is not None and self.nc is not None and not self.nc.is_closed:
            await self.own.stop()
            await self.nc.close()


async def _until(cond: object, deadline_s: float, what: str) -> float:
    """Poll ``cond()`` until true; return how long it took."""
    assert callable(cond)
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        if cond():
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {deadline_s:.1f}s: {what}")


def _one_owner_each(instances: list[Instance], partitions: int) -> bool:
    sets = [i.owned for i in instances]
    union = set().union(*sets)
    return union == set(range(partitions)) and sum(map(len, sets)) == partitions


async def _holders(inst: Instance, partitions: int) -> dict[int, str | None]:
    assert inst.store is not None
    out: dict[int, str | None] = {}
    for p in range(partitions):
        h = await inst.store.holder(p)
        out[p] = h.owner if h else None
    return out


async def test_every_partition_has_exactly_one_owner_with_a_fair_share(
        nats_cluster: NatsCluster) -> None:
    cfg = source(nats_cluster)
    insts = [await Instance(f"edge-{n}", cfg).start() for n in ("a", "b", "黑龙江.c")]
    try:
        share = fair_share(cfg.partitions, 3)
        took = await _until(lambda: _one_owner_each(insts, cfg.partitions)
                            and all(len(i.owned) <= share for i in insts),
                            30, "one owner each, each within its fair share")
        print(f"settled in {took:.1f}s: {[sorted(i.owned) for i in insts]}")
        # Stable: the store names the same owners for a few rounds.
        for _ in range(3):
            assert _one_owner_each(insts, cfg.partitions), [
                (i.name, sorted(i.owned), i.lost, i.own.instances if i.own else None)
                for i in insts]
            holders = await _holders(insts[0], cfg.partitions)
            assert holders == {p: i.name for i in insts for p in i.owned}
            await asyncio.sleep(cfg.rebalance_s)
    finally:
        for i in insts:
            await i.stop()


async def test_a_dead_owners_partitions_are_taken_over_within_the_bound(
        nats_cluster: NatsCluster) -> None:
    cfg = source(nats_cluster)
    a, b = await Instance("edge-a", cfg).start(), await Instance("edge-b", cfg).start()
    try:
        await _until(lambda: _one_owner_each([a, b], cfg.partitions)
                     and a.owned and b.owned, 30, "both own partitions")
        orphaned = b.owned
        await b.crash()
        took = await _until(lambda: a.owned == set(range(cfg.partitions)),
                            cfg.takeover_bound_s + SLACK_S, "edge-a owns everything")
        print(f"{len(orphaned)} partitions taken over in {took:.1f}s "
              f"(bound {cfg.takeover_bound_s:.1f}s)")
        assert took <= cfg.takeover_bound_s + SLACK_S
        assert (await _holders(a, cfg.partitions)) == dict.fromkeys(range(cfg.partitions),
                                                                     "edge-a")
    finally:
        await a.stop()


async def test_a_fenced_owners_token_is_refused(nats_cluster: NatsCluster) -> None:
    cfg = source(nats_cluster)
    a, b = await Instance("edge-a", cfg).start(), await Instance("edge-b", cfg).start()
    try:
        await _until(lambda: _one_owner_each([a, b], cfg.partitions)
                     and a.owned and b.owned, 30, "both own partitions")
        assert a.own is not None and a.store is not None and a.nc is not None
        p = min(a.owned)
        old = a.own.owned[p]
        await a.store.check(old)  # ours: passes
        # Cut edge-a off from the cluster (its NATS connection, not the
        # process): its rounds go on, failing.
        await a.nc.close()
        with pytest.raises(Fenced):
            await a.store.check(old)
        await _until(lambda: p in b.owned, cfg.takeover_bound_s + SLACK_S, "edge-b takes p")
        gave_up = [t for t, q, why in a.lost if q == p and why == "expired"]
        took = [t for t, q, _ in b.gained if q == p]
        assert gave_up and took and gave_up[0] < took[-1], (a.lost, b.gained)
        # Back on the cluster, edge-a's old lease is refused by the store too.
        nc2 = await tn.connect(cfg, "edge-a-again")
        try:
            again = LeaseStore(nc2.jetstream(), cfg, "edge-a")
            await again.open()
            with pytest.raises(Fenced, match="not ours"):
                # (valid by its clock: the store's answer is what refuses it)
                await again.check(replace(old, valid_until=time.monotonic() + 60))
            with pytest.raises(LeaseLost):
                await again.renew(old)
            held = await again.holder(p)
            assert held is not None and held.owner == "edge-b" and held.token > old.token
        finally:
            await nc2.close()
    finally:
        assert a.own is not None
        await a.own.stop(release=False)
        await b.stop()


async def test_an_instance_that_joins_gets_a_fair_share(nats_cluster: NatsCluster) -> None:
    cfg = source(nats_cluster)
    a, b = await Instance("edge-a", cfg).start(), await Instance("edge-b", cfg).start()
    c: Instance | None = None
    try:
        await _until(lambda: _one_owner_each([a, b], cfg.partitions)
                     and len(a.owned) == len(b.owned) == cfg.partitions // 2, 30, "half each")
        c = await Instance("edge-c", cfg).start()
        share = fair_share(cfg.partitions, 3)
        took = await _until(
            lambda: _one_owner_each([a, b, c], cfg.partitions)
            and all(len(i.owned) <= share for i in (a, b, c)) and len(c.owned) >= share - 1,
            30, "a fair share for edge-c")
        print(f"edge-c owns {sorted(c.owned)} after {took:.1f}s (share {share})")
    finally:
        for i in (a, b, c):
            if i is not None:
                await i.stop()
