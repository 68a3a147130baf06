"""Which edge owns which partitions: fair shares of leases, taken over when
an owner dies.

Every ``rebalance_s`` (and at least every third of ``lease_ttl_s``) an
instance

1. writes its own instance key (``instance.<encoded name>``, with the lease
   TTL: the key of a dead instance expires like its leases);
2. renews every lease it holds (side by side); a renewal refused means
   someone else has the partition now, and it is dropped (``on_lost``);
3. counts the live instances and aims for ``ceil(partitions / instances)``
   partitions: above it, it gives the extra ones back (``on_lost`` first,
   so the edge stops reading them, then the release); below it, it takes
   free partitions (``on_gained``), trying them in an order of its own
   (rendezvous hashing of instance and partition), so that instances
   starting together do not all race for the same ones.

A dead instance's partitions are free once its leases expire (``lease_ttl_s``
after its last renewal) and are taken at the next rebalance of another
instance: within ``lease_ttl_s + rebalance_s``. A joining instance gets its
share as the others, seeing one instance more, give back their extras.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import time
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors

from farmedge.logs import get_logger

from .keys import INSTANCE_PREFIX, decode_token
from .leases import Lease, LeaseError, LeaseLost, LeaseStore

__all__ = ["Ownership", "fair_share"]

log = get_logger("farmedge.cluster.ownership")

Gained = Callable[[Lease], Awaitable[None]]
Lost = Callable[[int, str], Awaitable[None]]


def fair_share(partitions: int, instances: int) -> int:
    return math.ceil(partitions / max(1, instances))


def _preference(instance: str, partition: int) -> bytes:
    return hashlib.blake2b(f"{instance}\0{partition}".encode(), digest_size=8).digest()


async def _nothing_gained(lease: Lease) -> None:
    return None


async def _nothing_lost(partition: int, reason: str) -> None:
    return None


class Ownership:
    """One instance's side of the partition ownership."""

    def __init__(self, store: LeaseStore, *, on_gained: Gained = _nothing_gained,
                 on_lost: Lost = _nothing_lost) -> None:
        self.store = store
        self.cfg = store.cfg
        self.instance = store.instance
        self.on_gained = on_gained
        self.on_lost = on_lost
        self.owned: dict[int, Lease] = {}
        self.instances: list[str] = [self.instance]
        #: Lease changes seen by this instance (for /metrics and /healthz).
        self.changes = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def interval_s(self) -> float:
        return min(self.cfg.rebalance_s, self.cfg.lease_ttl_s / 3)

    # ------------------------------------------------------------ one round

    async def _heartbeat(self) -> None:
        value = json.dumps({"instance": self.instance,
                            "at_ms": int(time.time() * 1000)}).encode()
        await self.store.js.publish(self.store.subject_prefix + self.store.instance_key,
                                    value, msg_ttl=self.cfg.lease_ttl_s)

    async def live_instances(self) -> list[str]:
        # All keys (at most the partitions and the instances), filtered here:
        # nats-py 2.16 finds no key for a filter such as "instance.>".
        try:
            keys = await self.store.kv.keys()
        except nats.js.errors.NoKeysError:
            keys = []
        names = {self.instance}
        for k in keys:
            prefix, _, token = k.partition(".")
            if prefix == INSTANCE_PREFIX:
                with contextlib.suppress(ValueError):
                    names.add(decode_token(token))
        return sorted(names)

    async def _bounded(self, what: str, coro: Awaitable[None]) -> None:
        """Run a caller's callback, but never let it hold up the round that
        renews the other leases for more than a third of their TTL."""
        task = asyncio.ensure_future(coro)
        await asyncio.wait({task}, timeout=self.cfg.lease_ttl_s / 3)
        if not task.done():
            log.warning("cluster.callback_slow", callback=what)
        elif not task.cancelled() and task.exception() is not None:
            log.warning("cluster.callback_failed", callback=what, error=str(task.exception()))

    async def _drop(self, partition: int, reason: str) -> None:
        self.owned.pop(partition, None)
        self.changes += 1
        await self._bounded("on_lost", self.on_lost(partition, reason))

    async def _drop_all(self, gone: list[tuple[int, str]]) -> None:
        """Drop these partitions side by side (each ``on_lost`` bounded)."""
        await asyncio.gather(*(self._drop(p, reason) for p, reason in gone))

    async def _renew_all(self) -> None:
        """Renew every lease held, side by side (one round trip, not one per
        partition), then drop those lost."""
        leases = [lease for _, lease in sorted(self.owned.items())]
        renewed = await asyncio.gather(*(self.store.renew(lease) for lease in leases),
                                       return_exceptions=True)
        gone: list[tuple[int, str]] = []
        for lease, outcome in zip(leases, renewed, strict=True):
            p = lease.partition
            if isinstance(outcome, Lease):
                if p in self.owned:
                    self.owned[p] = outcome
            elif isinstance(outcome, LeaseLost):
                gone.append((p, "taken"))
            elif isinstance(outcome, LeaseError):
                log.warning("cluster.renew_failed", partition=p, error=str(outcome))
                if not lease.valid():
                    gone.append((p, "expired"))
            else:
                raise outcome
        await self._drop_all(gone)

    async def _let_go(self, leases: list[Lease], reason: str) -> None:
        """Drop (``on_lost``) then release each lease, the partitions side by
        side: a round must not last the sum of their stops."""

        async def one(lease: Lease) -> None:
            await self._drop(lease.partition, reason)
            await self.store.release(lease)

        done = await asyncio.gather(*(one(lease) for lease in leases), return_exceptions=True)
        for lease, outcome in zip(leases, done, strict=True):
            if isinstance(outcome, LeaseError):
                # Not released: it expires after its TTL, then is taken.
                log.warning("cluster.release_failed", partition=lease.partition,
                            error=str(outcome))
            elif isinstance(outcome, BaseException):
                raise outcome

    async def _give_back(self, n: int) -> None:
        # The ones this instance likes least go first.
        worst = sorted(self.owned, key=lambda p: _preference(self.instance, p))[:n]
        await self._let_go([self.owned[p] for p in worst], "rebalance")

    async def _take(self, want: int) -> None:
        order = sorted((p for p in range(self.cfg.partitions) if p not in self.owned),
                       key=lambda p: _preference(self.instance, p), reverse=True)
        for p in order:
            if want <= 0:
                return
            if await self.store.holder(p) is not None:
                continue
            lease = await self.store.acquire(p)
            if lease is None:
                continue
            self.owned[p] = lease
            self.changes += 1
            want -= 1
            await self._bounded("on_gained", self.on_gained(lease))

    async def rebalance(self) -> None:
        """One round: heartbeat, renew, give back or take."""
        try:
            await self._heartbeat()
            await self._renew_all()
            self.instances = await self.live_instances()
            target = fair_share(self.cfg.partitions, len(self.instances))
            if len(self.owned) > target:
                await self._give_back(len(self.owned) - target)
            elif len(self.owned) < target:
                await self._take(target - len(self.owned))
        except (LeaseError, nats.errors.Error) as exc:
            log.warning("cluster.rebalance_failed", error=str(exc))
            await self._drop_all([(p, "expired") for p, lease in sorted(self.owned.items())
                                  if not lease.valid()])

    # ------------------------------------------------------------ running

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            await self.rebalance()
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

    def start(self) -> Ownership:
        self._task = asyncio.create_task(self.run(), name=f"ownership-{self.instance}")
        return self

    async def stop(self, *, release: bool = True) -> None:
        """Stop rebalancing; with ``release``, give every partition back
        (a clean shutdown: the others take them at once, not after the TTL)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if release:
            await self._let_go([lease for _, lease in sorted(self.owned.items())], "stopped")
            with contextlib.suppress(nats.errors.Error):
                await self.store.kv.delete(self.store.instance_key)
