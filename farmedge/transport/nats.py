"""The NATS JetStream adapter: the gateways' messages in a replicated stream,
split into partitions by farm, read by one durable pull consumer per partition.

Subjects. The gateways publish over MQTT to the cluster's MQTT listeners; the
server turns a topic into a subject by replacing each ``/`` with ``.`` and
each ``.`` inside a level with ``//`` (a level stays one subject token).
Contract ids are letters of any script, digits, ``-``, ``_`` and ``.``, never
``/``, space, ``*`` or ``>``, so every id is one token as it is, with ``.``
written ``//``, and the mapping is reversible::

    farm/v1/黑龙江/farm.7/gw-1/telemetry  ->  farm.v1.黑龙江.farm//7.gw-1.telemetry

(subjects are UTF-8, as MQTT topics are: Chinese ids pass untouched).

Partitions. Every node of the cluster maps the gateways' subjects, as they
come in, to ``farmp.v1.<partition>.<county>.<farm>.<gateway>.<channel>``: an
account subject mapping in the server configuration (:func:`server_mapping_conf`)
with the server's ``partition(n, 1, 2)``, FNV-1a 32 of the county and farm
tokens modulo n (:func:`partition_of` computes the same here, and
:func:`check_partition_mapping` asks the cluster that it agrees), so all of
a farm's gateways are in one partition, read by one edge.

The stream. By default the edge reads ``$MQTT_msgs``, the stream in which the
server keeps QoS 1 MQTT messages (R3 with ``mqtt { stream_replicas: 3 }``). It
is an interest stream: the server stores a QoS 1 message in it, and sends
the PUBACK only once it is stored, when some consumer's filter matches it.
The edge's durable consumers, one per partition (``<consumer_prefix><p>``,
filter ``$MQTT.msgs.farmp.v1.<p>.>``), are that interest, and the message
stays until its consumer acknowledges it. A stream of the edge's own (any
other ``stream`` name) captures ``farmp.v1.>`` as plain NATS messages: the
server sends PUBACK without waiting for it, and loses what comes while the
stream has no leader (docs/scaling.md, "What a PUBACK covers").

Acknowledgement. A fetched :class:`Batch` is acknowledged only when the caller
says it is durable (:meth:`Batch.durable`: the readings are in InfluxDB); while
the caller writes, :meth:`Batch.keep_alive` sends "in progress" every third of
``ack_wait`` so that the server does not deliver the batch again meanwhile. A
batch never acknowledged (the edge died) is delivered again after
``ack_wait``, to whichever edge owns the partition then.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)

from farmedge.logs import get_logger, redact_url

from .nats_conf import PARTITIONED_PREFIX, SUBJECT_PREFIX, server_mapping_conf, server_mappings
from .nats_settings import MQTT_STREAM, SourceSection

__all__ = [
    "CHANNELS",
    "MQTT_STREAM_PREFIX",
    "PARTITIONED_PREFIX",
    "SUBJECT_PREFIX",
    "Batch",
    "Delivery",
    "NatsTransportError",
    "PartitionReader",
    "StoredSubject",
    "alerts_subject",
    "check_partition_mapping",
    "connect",
    "consumer_config",
    "ensure_consumer",
    "ensure_consumers",
    "ensure_stream",
    "gateway_subject",
    "id_of_token",
    "parse_stored_subject",
    "partition_of",
    "server_mapping_conf",
    "server_mappings",
    "stream_config",
    "subject_token",
]

log = get_logger("farmedge.transport.nats")

#: Seconds for one node to answer a connection (TCP, INFO, CONNECT).
CONNECT_TIMEOUT_S = 5.0

#: How the server names a QoS 1 MQTT message in its MQTT stream.
MQTT_STREAM_PREFIX = "$MQTT.msgs."
Channel = Literal["telemetry", "status"]
CHANNELS: tuple[Channel, ...] = ("telemetry", "status")


class NatsTransportError(Exception):
    """The NATS cluster could not be reached or refused a request."""


# ---------------------------------------------------------------- subjects


def subject_token(id_: str) -> str:
    """A contract id as the subject token NATS's MQTT listener makes of it."""
    return id_.replace(".", "//")


def id_of_token(token: str) -> str:
    """The id back from its subject token (ids never hold ``/``)."""
    return token.replace("//", ".")


def gateway_subject(county: str, farm: str, gateway: str, channel: Channel) -> str:
    """The subject of ``farm/v1/<county>/<farm>/<gateway>/<channel>``."""
    return ".".join((SUBJECT_PREFIX, subject_token(county), subject_token(farm),
                     subject_token(gateway), channel))


def alerts_subject(county: str, farm: str) -> str:
    """The subject of ``farm/v1/<county>/<farm>/alerts``: what an edge publishes
    a farm's alert events on over NATS, and what the cluster's MQTT
    listeners hand to the MQTT subscribers of that topic (a four-level
    subject: the partition mapping, of gateway subjects, leaves it alone)."""
    return ".".join((SUBJECT_PREFIX, subject_token(county), subject_token(farm), "alerts"))


def partition_of(county: str, farm: str, partitions: int) -> int:
    """The partition the stream stores a farm's messages in: the server's
    ``partition(n, 1, 2)``, FNV-1a 32 of the two tokens' bytes, one after
    the other, modulo n."""
    h = 0x811C9DC5
    for b in (subject_token(county) + subject_token(farm)).encode("utf-8"):
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h % partitions


@dataclass(frozen=True, slots=True)
class StoredSubject:
    partition: int
    county: str
    farm: str
    gateway: str
    channel: Channel


def parse_stored_subject(subject: str) -> StoredSubject:
    """Split ``[$MQTT.msgs.]farmp.v1.<p>.<county>.<farm>.<gateway>.<channel>``;
    raises NatsTransportError for anything else."""
    parts = subject.removeprefix(MQTT_STREAM_PREFIX).split(".")
    if len(parts) != 7 or ".".join(parts[:2]) != PARTITIONED_PREFIX or not parts[2].isdigit():
        raise NatsTransportError(f"not a partitioned farm subject: {subject[:120]!r}")
    channel = parts[6]
    if channel not in CHANNELS:
        raise NatsTransportError(f"subject channel {channel[:20]!r} is not telemetry or status")
    return StoredSubject(int(parts[2]), id_of_token(parts[3]), id_of_token(parts[4]),
                         id_of_token(parts[5]), "telemetry" if channel == "telemetry" else "status")


def filter_prefix(cfg: SourceSection) -> str:
    """What stored subjects start with in the stream the edge reads."""
    return MQTT_STREAM_PREFIX if cfg.mqtt_stream else ""


def stream_config(cfg: SourceSection) -> StreamConfig:
    """The stream the edge reads: the server's MQTT stream as the server
    makes it, or a stream of the edge's own capturing the partitioned subjects."""
    if cfg.mqtt_stream:
        return StreamConfig(
            name=MQTT_STREAM, subjects=[MQTT_STREAM_PREFIX + ">"], storage=StorageType.FILE,
            retention=RetentionPolicy.INTEREST, num_replicas=cfg.replicas,
        )
    return StreamConfig(
        name=cfg.stream,
        description="farmedge: the gateways' telemetry and status, partitioned by farm",
        subjects=[f"{PARTITIONED_PREFIX}.*.*.*.*.{c}" for c in CHANNELS],
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        max_age=cfg.max_age_days * 86400.0,
        storage=StorageType.FILE,
        num_replicas=cfg.replicas,
        duplicate_window=120.0,
    )


def consumer_config(cfg: SourceSection, partition: int) -> ConsumerConfig:
    name = cfg.consumer_name(partition)
    return ConsumerConfig(
        name=name,
        durable_name=name,
        description=f"farmedge: partition {partition} of {cfg.partitions}",
        filter_subject=f"{filter_prefix(cfg)}{PARTITIONED_PREFIX}.{partition}.>",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=cfg.ack_wait_s,
        max_ack_pending=max(1000, 4 * cfg.fetch_batch),
        max_deliver=-1,
    )


# ---------------------------------------------------------------- connection


async def connect(cfg: SourceSection, name: str, *,
                  first_s: float | None = None) -> NatsClient:
    """A client connection to the cluster, moving between its nodes and
    reconnecting for ever once made; raises NatsTransportError when no node
    accepts the first connection within ``first_s`` (by default two rounds
    of every node)."""

    async def on_error(exc: Exception) -> None:
        log.warning("transport.nats_error", error=str(exc))

    made: list[NatsClient] = []

    async def on_disconnect() -> None:
        if made and made[0].is_closed:
            return  # closed on purpose
        log.warning("transport.nats_disconnected")

    async def on_reconnect() -> None:
        log.info("transport.nats_reconnected")

    try:
        tls = cfg.tls_context()
    except (OSError, ssl.SSLError) as exc:
        raise NatsTransportError(f"[source] nats_ca_file {cfg.nats_ca_file}: {exc}") from None
    where = ", ".join(redact_url(u) for u in cfg.nats_urls)
    # The client, told to reconnect for ever, also tries its first
    # connection for ever (nats-py 2.16: the server pool never runs out), so
    # that one is bounded here: a round of every node, twice.
    if first_s is None:
        first_s = 2 * CONNECT_TIMEOUT_S * len(cfg.nats_urls) + 1.0
    # (a dict: the client's hints say int seconds, it takes fractions)
    options: dict[str, Any] = {
        "servers": cfg.nats_urls, "name": name, "user": cfg.nats_user, "tls": tls,
        "password": cfg.nats_password.get_secret_value() if cfg.nats_password else None,
        "max_reconnect_attempts": -1, "reconnect_time_wait": 0.5,
        "connect_timeout": CONNECT_TIMEOUT_S, "allow_reconnect": True, "error_cb": on_error,
        "disconnected_cb": on_disconnect, "reconnected_cb": on_reconnect}
    nc = NatsClient()
    try:
        await asyncio.wait_for(nc.connect(**options), first_s)
    except TimeoutError:
        last = nc.last_error
        made.append(nc)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 2)
        raise NatsTransportError(
            f"cannot reach NATS at {where}: no node accepted the connection within "
            f"{first_s:.0f} s" + (f" (last: {type(last).__name__}: {last})" if last else "")
        ) from None
    except (OSError, nats.errors.Error) as exc:
        raise NatsTransportError(f"cannot reach NATS at {where}: {exc}") from None
    made.append(nc)
    return nc


async def ensure_stream(js: JetStreamContext, cfg: SourceSection) -> StreamInfo:
    """The stream the edge reads, created when missing.

    The server makes ``$MQTT_msgs`` at the first MQTT connection; made here
    first (with the server's own configuration), it is there before any
    gateway publishes. It is left as the server has it, but refused when it
    has fewer replicas than ``replicas`` (set ``mqtt { stream_replicas }``).
    A stream of the edge's own is brought to this configuration.
    """
    want = stream_config(cfg)
    try:
        try:
            info = await js.stream_info(want.name or "")
        except nats.js.errors.NotFoundError:
            return await js.add_stream(want)
        if cfg.mqtt_stream:
            have = info.config.num_replicas or 1
            if have < cfg.replicas:
                raise NatsTransportError(
                    f"the server keeps MQTT messages in {MQTT_STREAM} with {have} replica(s), "
                    f"[source] replicas is {cfg.replicas}: set mqtt {{ stream_replicas: "
                    f"{cfg.replicas} }} on every node")
            return info
        info = await js.update_stream(want)
        return info
    except nats.errors.Error as exc:
        raise NatsTransportError(f"stream {cfg.stream}: {exc}") from None


async def check_partition_mapping(nc: NatsClient, cfg: SourceSection,
                                  probes: int = 8, timeout_s: float = 5.0) -> None:
    """Ask the cluster how it maps a few probe subjects (plain NATS messages,
    stored nowhere) and compare with :func:`partition_of`: raises
    NatsTransportError when the servers' mapping is missing or uses another
    partition count than ``partitions``."""
    county = "farmedge-probe"
    got: asyncio.Queue[str] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        await got.put(msg.subject)

    try:
        sub = await nc.subscribe(f"{PARTITIONED_PREFIX}.*.{county}.>", cb=on_msg)
        plain = await nc.subscribe(f"{SUBJECT_PREFIX}.{county}.>", cb=on_msg)
        await nc.flush()
        farms = [f"f{i}" for i in range(probes)]
        for farm in farms:
            await nc.publish(gateway_subject(county, farm, "probe", "status"), b"")
        await nc.flush()
        seen: dict[str, int | None] = {}
        async with asyncio.timeout(timeout_s):
            while len(seen) < probes:
                subject = await got.get()
                if subject.startswith(SUBJECT_PREFIX + "."):
                    seen[subject.split(".")[3]] = None
                else:
                    where = parse_stored_subject(subject)
                    seen[where.farm] = where.partition
        await sub.unsubscribe()
        await plain.unsubscribe()
    except TimeoutError:
        raise NatsTransportError(
            "the cluster did not echo the partition probes: is every node up?") from None
    except nats.errors.Error as exc:
        raise NatsTransportError(f"partition probe: {exc}") from None
    if any(p is None for p in seen.values()):
        raise NatsTransportError(
            f"the NATS servers do not partition {SUBJECT_PREFIX}.>: add to every node's "
            "configuration:\n" + server_mapping_conf(cfg.partitions))
    wrong = {f: p for f, p in seen.items() if p != partition_of(county, f, cfg.partitions)}
    if wrong:
        raise NatsTransportError(
            f"the NATS servers partition farms differently from [source] partitions = "
            f"{cfg.partitions}: give every node this mapping:\n"
            + server_mapping_conf(cfg.partitions))


async def ensure_consumers(js: JetStreamContext, cfg: SourceSection) -> None:
    """One durable pull consumer per partition (created or updated)."""
    for p in range(cfg.partitions):
        await ensure_consumer(js, cfg, p)


async def ensure_consumer(js: JetStreamContext, cfg: SourceSection, partition: int) -> None:
    """The durable pull consumer of one partition (created or updated)."""
    try:
        await js.add_consumer(cfg.stream, consumer_config(cfg, partition))
    except nats.errors.Error as exc:
        raise NatsTransportError(f"consumers of stream {cfg.stream}: {exc}") from None


# ---------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as the stream delivered it."""

    msg: Msg
    where: StoredSubject
    stream_seq: int
    #: How many times the server has delivered it (1 the first time).
    delivered: int
    #: When the stream stored it (ms since the epoch).
    stored_ms: int

    @property
    def data(self) -> bytes:
        return self.msg.data

    @staticmethod
    def of(msg: Msg) -> Delivery:
        md = msg.metadata
        ts = md.timestamp
        return Delivery(msg, parse_stored_subject(msg.subject), md.sequence.stream,
                        md.num_delivered, int(ts.timestamp() * 1000) if ts else 0)


@dataclass
class Batch:
    """Messages fetched from one partition, settled together."""

    partition: int
    deliveries: list[Delivery]
    #: Messages of the batch that are not farm subjects (acknowledged at
    #: fetch: nothing will ever read them).
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.deliveries)

    async def durable(self) -> None:
        """The caller has the batch durably (in InfluxDB): acknowledge it."""
        try:
            for d in self.deliveries:
                await d.msg.ack()
        except nats.errors.Error as exc:
            # Not acknowledged: delivered again after ack_wait (a duplicate
            # write of the same points, which InfluxDB keeps once).
            raise NatsTransportError(f"acknowledging partition {self.partition}: {exc}") \
                from None

    async def in_progress(self) -> None:
        """Restart the server's ack_wait clock for every message."""
        try:
            for d in self.deliveries:
                await d.msg.in_progress()
        except nats.errors.Error as exc:
            raise NatsTransportError(f"in-progress on partition {self.partition}: {exc}") \
                from None

    async def retry(self, delay_s: float | None = None) -> None:
        """Give the batch back: the server delivers it again (after ``delay_s``)."""
        with contextlib.suppress(nats.errors.Error):
            for d in self.deliveries:
                await d.msg.nak(delay_s)

    @contextlib.asynccontextmanager
    async def keep_alive(self, every_s: float) -> AsyncIterator[None]:
        """While the block runs, send "in progress" every ``every_s``."""

        async def beat() -> None:
            while True:
                await asyncio.sleep(every_s)
                try:
                    await self.in_progress()
                except NatsTransportError as exc:
                    log.warning("transport.nats_in_progress_failed", error=str(exc))

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class PartitionReader:
    """Fetches batches from one partition's durable consumer."""

    def __init__(self, js: JetStreamContext, cfg: SourceSection, partition: int) -> None:
        self.js = js
        self.cfg = cfg
        self.partition = partition
        self._sub: JetStreamContext.PullSubscription | None = None

    async def open(self) -> PartitionReader:
        try:
            self._sub = await self.js.pull_subscribe_bind(
                durable=self.cfg.consumer_name(self.partition), stream=self.cfg.stream)
        except nats.errors.Error as exc:
            raise NatsTransportError(f"partition {self.partition}: {exc}") from None
        return self

    async def fetch(self, max_msgs: int | None = None, timeout_s: float = 1.0) -> Batch:
        """Up to ``max_msgs`` messages; an empty batch when none came in
        ``timeout_s``."""
        if self._sub is None:
            await self.open()
        assert self._sub is not None
        try:
            msgs = await self._sub.fetch(max_msgs or self.cfg.fetch_batch, timeout=timeout_s)
        except TimeoutError:  # nats.errors.TimeoutError is one too
            return Batch(self.partition, [])
        except nats.errors.Error as exc:
            raise NatsTransportError(f"fetching partition {self.partition}: {exc}") from None
        out: list[Delivery] = []
        skipped = 0
        for m in msgs:
            try:
                out.append(Delivery.of(m))
            except NatsTransportError as exc:
                log.warning("transport.nats_foreign_subject", subject=m.subject[:120],
                            error=str(exc))
                skipped += 1
                with contextlib.suppress(nats.errors.Error):
                    await m.ack()
        return Batch(self.partition, out, skipped)

    async def _info(self) -> ConsumerInfo | None:
        """The partition's consumer as the servers have it; None when they
        say it is not there (removed by hand, or with its stream)."""
        name = self.cfg.consumer_name(self.partition)
        try:
            info: ConsumerInfo = await self.js.consumer_info(self.cfg.stream, name)
        except nats.js.errors.NotFoundError:
            return None
        except nats.errors.Error as exc:
            raise NatsTransportError(f"partition {self.partition}: {exc}") from None
        return info

    async def pending(self) -> int:
        """Messages of the partition not yet delivered (its lag)."""
        info = await self._info()
        if info is None:
            raise NatsTransportError(f"partition {self.partition}: no consumer "
                                     f"{self.cfg.consumer_name(self.partition)}")
        return int(info.num_pending or 0)

    async def exists(self) -> bool:
        """Whether the partition's consumer is on the servers."""
        return await self._info() is not None

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None
