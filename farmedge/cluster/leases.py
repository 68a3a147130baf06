"""Partition leases in JetStream's key-value store.

One key per partition (``lease.<n>``) in the bucket ``[source] lease_bucket``
(history 1, replicated like the stream). Every write is a compare-and-set on
the key's revision, with a per-key TTL (``lease_ttl_s``, the server removes a
key not written again within it):

* **acquire**: create the key (refused while someone holds it); the lease's
  **fencing token** is the revision of that create, a sequence number of the
  bucket's stream, so a later owner always has a larger token than any
  earlier one;
* **renew**: update with the revision last written (refused when someone
  else has written since: the lease is lost), carrying the token on;
* **release**: delete with the revision last written;
* **check** (:meth:`LeaseStore.check`, the fence): before any side effect
  (an alert sent, a message acknowledged) the holder confirms that its lease
  is still valid by its own clock (renewed less than ``lease_ttl_s`` ago,
  less a margin) and that the key still names it with its token. A fenced
  owner (cut off from the cluster, or whose lease expired and was taken) is
  refused, with :class:`Fenced`.

The check narrows but cannot close the window between it and the side
effect: a holder paused longer than its remaining validity after a passed
check can still act once. A store that keeps the highest token it has seen
and refuses a lower one closes it; the tokens are made for that.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from farmedge.logs import get_logger
from farmedge.transport.nats_settings import SourceSection

from .keys import instance_key, lease_key

__all__ = ["Fenced", "Holder", "Lease", "LeaseError", "LeaseLost", "LeaseStore"]

log = get_logger("farmedge.cluster.leases")

EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"


class LeaseError(Exception):
    """The key-value store could not be reached or refused a request."""


class LeaseLost(LeaseError):
    """Someone else wrote the lease since we did: it is not ours any more."""


class Fenced(LeaseError):
    """The fencing check refused a token: do not act for the partition."""


@dataclass(frozen=True, slots=True)
class Lease:
    partition: int
    owner: str
    #: The fencing token: the revision that created the lease.
    token: int
    #: The revision last written (the next renewal's compare-and-set).
    revision: int
    #: Until when (time.monotonic()) the lease is ours by our own clock.
    valid_until: float

    def valid(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) < self.valid_until


@dataclass(frozen=True, slots=True)
class Holder:
    owner: str
    token: int
    revision: int


class LeaseStore:
    """Leases of one bucket, written by ``instance``."""

    def __init__(self, js: JetStreamContext, cfg: SourceSection, instance: str) -> None:
        self.js = js
        self.cfg = cfg
        self.instance = instance
        #: Its heartbeat's key; an instance name no key can hold is refused
        #: here, at the start (KeyCodingError), not in every round.
        self.instance_key = instance_key(instance)
        self.ttl_s = cfg.lease_ttl_s
        #: Validity by our own clock: the TTL less a margin for the clocks'
        #: rates and the server's expiry (a lease is given up before the
        #: server could hand it to someone else).
        self.margin_s = max(0.5, cfg.lease_ttl_s / 10)
        self._kv: KeyValue | None = None

    @property
    def subject_prefix(self) -> str:
        return f"$KV.{self.cfg.lease_bucket}."

    async def open(self) -> LeaseStore:
        """Bind to the bucket, made if missing (per-key TTLs need 2.11+)."""
        try:
            try:
                self._kv = await self.js.key_value(self.cfg.lease_bucket)
            except nats.js.errors.BucketNotFoundError:
                self._kv = await self.js.create_key_value(KeyValueConfig(
                    bucket=self.cfg.lease_bucket, history=1, replicas=self.cfg.replicas,
                    storage=StorageType.FILE,
                    description="farmedge: partition leases and edge instances"))
        except nats.errors.Error as exc:
            raise LeaseError(f"lease bucket {self.cfg.lease_bucket}: {exc}") from None
        return self

    @property
    def kv(self) -> KeyValue:
        if self._kv is None:
            raise LeaseError("the lease store is not open")
        return self._kv

    # ------------------------------------------------------------ writes

    def _value(self, token: int | None) -> bytes:
        doc: dict[str, object] = {"owner": self.instance, "at_ms": int(time.time() * 1000)}
        if token is not None:
            doc["token"] = token
        return json.dumps(doc, separators=(",", ":")).encode()

    async def acquire(self, partition: int) -> Lease | None:
        """The lease if the partition was free, else None."""
        started = time.monotonic()
        try:
            rev = await self.kv.create(lease_key(partition), self._value(None),
                                       msg_ttl=self.ttl_s)
        except nats.js.errors.KeyWrongLastSequenceError:
            return None
        except nats.errors.Error as exc:
            raise LeaseError(f"acquiring partition {partition}: {exc}") from None
        lease = Lease(partition, self.instance, rev, rev,
                      started + self.ttl_s - self.margin_s)
        log.info("cluster.lease_acquired", partition=partition, token=rev)
        return lease

    async def renew(self, lease: Lease) -> Lease:
        """The lease renewed; raises LeaseLost when someone else wrote it."""
        started = time.monotonic()
        try:
            ack = await self.js.publish(
                self.subject_prefix + lease_key(lease.partition), self._value(lease.token),
                headers={EXPECTED_LAST: str(lease.revision)}, msg_ttl=self.ttl_s)
        except nats.js.errors.APIError as exc:
            if exc.err_code in (10071, 10164):  # wrong last sequence
                log.warning("cluster.lease_lost", partition=lease.partition, token=lease.token)
                raise LeaseLost(f"partition {lease.partition}: written by another") from None
            raise LeaseError(f"renewing partition {lease.partition}: {exc}") from None
        except nats.errors.Error as exc:
            raise LeaseError(f"renewing partition {lease.partition}: {exc}") from None
        return replace(lease, revision=ack.seq, valid_until=started + self.ttl_s - self.margin_s)

    async def release(self, lease: Lease) -> None:
        """Give the partition up (only if the lease is still ours)."""
        try:
            await self.kv.delete(lease_key(lease.partition), last=lease.revision)
            log.info("cluster.lease_released", partition=lease.partition, token=lease.token)
        except nats.js.errors.KeyWrongLastSequenceError:
            pass  # someone else holds it already
        except nats.errors.Error as exc:
            raise LeaseError(f"releasing partition {lease.partition}: {exc}") from None

    # ------------------------------------------------------------ reads

    async def holder(self, partition: int) -> Holder | None:
        """Who holds the partition now (None: free)."""
        try:
            entry = await self.kv.get(lease_key(partition))
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        except nats.errors.Error as exc:
            raise LeaseError(f"reading partition {partition}: {exc}") from None
        if entry.value is None or entry.revision is None:
            return None
        try:
            doc = json.loads(entry.value)
            owner = str(doc["owner"])
            token = int(doc.get("token", entry.revision))
        except (ValueError, KeyError, TypeError):
            log.warning("cluster.lease_unreadable", partition=partition)
            return None
        return Holder(owner, token, entry.revision)

    async def check(self, lease: Lease) -> None:
        """The fence: raises Fenced unless the lease is still ours, by our
        clock and by the store. Call it right before a side effect."""
        if not lease.valid():
            raise Fenced(f"partition {lease.partition}: lease {lease.token} expired "
                         "by our clock (not renewed in time)")
        try:
            held = await self.holder(lease.partition)
        except LeaseError as exc:
            raise Fenced(f"partition {lease.partition}: cannot confirm lease "
                         f"{lease.token}: {exc}") from None
        if held is None or held.owner != self.instance or held.token != lease.token:
            raise Fenced(f"partition {lease.partition}: lease {lease.token} is not ours "
                         f"(held by {held.owner if held else 'nobody'}, "
                         f"token {held.token if held else '-'})")
        if not lease.valid():  # the read took the rest of the validity
            raise Fenced(f"partition {lease.partition}: lease {lease.token} expired")
