"""Each partition's alert state in JetStream's key-value store: the one
place the alert engine's cluster mode talks to NATS
(farmedge/alerts/cluster.py, ``PartitionStore``).

Bucket ``[source] alert_bucket`` (history 1, ``[source] replicas``, file
storage). One key per row of the engine's state: ``a.<partition>.<table>.
<encoded key>`` (the state's key encoded by :func:`~.keys.encode_token`,
Chinese ids included), its value the row as JSON. A row deleted is purged
with a marker that the server removes after a day, so deleted rows (every
delivered message is one) leave nothing behind for long.

A write returns once every put and purge is acknowledged: with three
replicas, stored on two nodes. The puts of one pass are not one
transaction: an edge dying midway leaves some of the pass's rows new and
some old. The engine writes a message's intent to send in a pass before
the message is handed to its notifier, and its removal in a later pass, so
what matters for "never twice" is in the store before the send. A row is
written only when it changed since this instance last wrote or read it
(the groups are marked changed every pass); a delete is always written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from farmedge.logs import get_logger

from .keys import KeyCodingError, decode_token, encode_token

__all__ = ["TABLES", "AlertStateError", "KvPartitionStore", "row_key"]

log = get_logger("farmedge.cluster.alertstate")

#: The engine's tables (farmedge/alerts/store.py).
TABLES = ("states", "groups", "outbox", "budget", "history")
PREFIX = "a"
#: How long a purge marker stays (then the server removes it).
_MARKER_TTL_S = 86400.0
#: At most this many writes in flight at once.
_PARALLEL = 64


class AlertStateError(Exception):
    """The key-value store could not be reached or refused a write."""


def row_key(partition: int, table: str, key: str) -> str:
    return f"{PREFIX}.{partition}.{table}.{encode_token(key)}"


def _parse(kv_key: str) -> tuple[int, str, str]:
    prefix, p, table, token = kv_key.split(".", 3)
    if prefix != PREFIX or not p.isdigit() or table not in TABLES:
        raise KeyCodingError(f"not an alert state key: {kv_key[:80]!r}")
    return int(p), table, decode_token(token)


class KvPartitionStore:
    """Alert state by partition in one bucket (the engine's PartitionStore)."""

    def __init__(self, js: JetStreamContext | Callable[[], JetStreamContext | None],
                 bucket: str, *, replicas: int = 3, timeout_s: float = 10.0) -> None:
        """``js``: the JetStream context, or a function giving it once the
        edge is connected (the bucket is then opened on first use)."""
        self._js = js
        self.bucket = bucket
        self.replicas = replicas
        self.timeout_s = timeout_s
        self._kv: KeyValue | None = None
        #: kv key -> the JSON last written or read (unchanged rows are skipped)
        self._last: dict[str, bytes] = {}
        self._sem = asyncio.Semaphore(_PARALLEL)

    @property
    def js(self) -> JetStreamContext:
        js = self._js if isinstance(self._js, JetStreamContext) else self._js()
        if js is None:
            raise AlertStateError("not connected to the NATS cluster yet")
        return js

    async def _ensure(self) -> None:
        if self._kv is None:
            await self.open()

    async def open(self) -> KvPartitionStore:
        """Bind to the bucket, made if missing."""
        try:
            try:
                self._kv = await self.js.key_value(self.bucket)
            except nats.js.errors.BucketNotFoundError:
                self._kv = await self.js.create_key_value(KeyValueConfig(
                    bucket=self.bucket, history=1, replicas=self.replicas,
                    storage=StorageType.FILE, limit_marker_ttl=_MARKER_TTL_S,
                    description="farmedge: alert state per partition"))
        except nats.errors.Error as exc:
            raise AlertStateError(f"alert state bucket {self.bucket}: {exc}") from None
        return self

    @property
    def kv(self) -> KeyValue:
        if self._kv is None:
            raise AlertStateError("the alert state store is not open")
        return self._kv

    @property
    def subject_prefix(self) -> str:
        return f"$KV.{self.bucket}."

    # ------------------------------------------------------------ reads

    async def load(self, partition: int) -> dict[str, dict[str, Any]]:
        """Every row of the partition, ``{table: {key: row}}``.

        Read through a pull consumer of its own (the last message of each
        key, counted when it is made), not a key watcher: a watcher can
        say "no more" before the first row has come (nats-py 2.16)."""
        out: dict[str, dict[str, Any]] = {}
        await self._ensure()
        self.forget(partition)
        stream = f"KV_{self.bucket}"
        config = ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                                ack_policy=AckPolicy.NONE, inactive_threshold=60.0,
                                max_ack_pending=-1)
        try:
            sub = await self.js.pull_subscribe(f"{self.subject_prefix}{PREFIX}.{partition}.>",
                                               stream=stream, config=config)
        except nats.errors.Error as exc:
            raise AlertStateError(f"reading partition {partition}: {exc}") from None
        try:
            info = await sub.consumer_info()
            pending = info.num_pending or 0
            while pending > 0:
                msgs = await sub.fetch(batch=min(pending, 256), timeout=self.timeout_s)
                for m in msgs:
                    pending = m.metadata.num_pending
                    self._row(out, m)
        except nats.errors.Error as exc:
            raise AlertStateError(f"reading partition {partition}: {exc}") from None
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
            if config.name:
                with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                    await self.js.delete_consumer(stream, config.name)
        return out

    def _row(self, out: dict[str, dict[str, Any]], m: Msg) -> None:
        if m.headers and m.headers.get("KV-Operation") in ("DEL", "PURGE"):
            return
        if m.headers and m.headers.get("Nats-Marker-Reason"):
            return
        kv_key = m.subject[len(self.subject_prefix):]
        try:
            _p, table, key = _parse(kv_key)
            row = json.loads(m.data)
        except (KeyCodingError, ValueError) as exc:
            log.warning("cluster.alert_row_unreadable", key=kv_key[:120], error=str(exc))
            return
        out.setdefault(table, {})[key] = row
        self._last[kv_key] = bytes(m.data)

    # ------------------------------------------------------------ writes

    async def write(self, partition: int,
                    changes: Mapping[str, Mapping[str, Any | None]]) -> None:
        """``{table: {key: row or None}}``; returns once every change is
        acknowledged, raises AlertStateError otherwise."""
        await self._ensure()
        jobs = []
        for table, rows in changes.items():
            if table not in TABLES:
                raise AlertStateError(f"no table {table!r}")
            for key, row in rows.items():
                try:
                    k = row_key(partition, table, key)
                except KeyCodingError as exc:
                    log.warning("cluster.alert_row_key", table=table, error=str(exc))
                    continue
                if row is None:
                    self._last.pop(k, None)
                    jobs.append(self._purge(k))
                    continue
                data = json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode()
                if self._last.get(k) == data:
                    continue
                jobs.append(self._put(k, data))
        if not jobs:
            return
        results = await asyncio.gather(*jobs, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise AlertStateError(f"writing partition {partition}: {len(errors)} of "
                                  f"{len(jobs)} writes failed: {errors[0]}")

    async def _put(self, k: str, data: bytes) -> None:
        async with self._sem:
            try:
                await self.js.publish(self.subject_prefix + k, data, timeout=self.timeout_s)
            except nats.errors.Error as exc:
                self._last.pop(k, None)
                raise AlertStateError(str(exc) or type(exc).__name__) from None
        self._last[k] = data

    async def _purge(self, k: str) -> None:
        async with self._sem:
            try:
                await self.kv.purge(k, msg_ttl=_MARKER_TTL_S)
            except nats.errors.Error as exc:
                raise AlertStateError(str(exc) or type(exc).__name__) from None

    def forget(self, partition: int) -> None:
        """Drop what this instance remembers of a partition's rows (it was
        lost: the next owner writes them)."""
        pre = f"{PREFIX}.{partition}."
        for k in [k for k in self._last if k.startswith(pre)]:
            del self._last[k]
