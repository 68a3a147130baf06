"""Helpers of the NATS tests (tests/integration/test_nats_*.py): an MQTT 3.1.1
publisher that records which messages were PUBACKed, stream leaders, and
draining a stream's partitions through the edge's adapter."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from nats.aio.client import Client as NatsClient

from farmedge.transport import nats as tn
from farmedge.transport.nats_settings import SourceSection
from farmedge_dev.natscluster import NatsCluster
from tests.conftest import NATS_PARTITIONS


def source(cluster: NatsCluster, urls: list[str] | None = None, **over: object) -> SourceSection:
    """A [source] section for the test cluster, with consumers of this test's own."""
    base: dict[str, object] = {
        "kind": "nats", "nats_urls": urls or cluster.urls, "partitions": NATS_PARTITIONS,
        "consumer_prefix": "t" + uuid.uuid4().hex[:8] + "-p", "ack_wait_s": 5.0,
        "lease_bucket": "t" + uuid.uuid4().hex[:10], "lease_ttl_s": 3, "rebalance_s": 0.5,
    }
    base.update(over)
    return SourceSection.model_validate(base)


@dataclass
class Publisher:
    """A gateway-like MQTT 3.1.1 client (persistent session, QoS 1) that
    records the payloads whose PUBACK came back."""

    port: int
    client_id: str = field(default_factory=lambda: "gw-" + uuid.uuid4().hex[:8])
    inflight: int = 20
    username: str | None = None
    password: str | None = None
    #: MQTT over TLS (mqtts), checking the server against this CA.
    ca_file: str | None = None
    acked: set[str] = field(default_factory=set)
    _mids: dict[int, str] = field(default_factory=dict)
    _early: set[int] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                  protocol=mqtt.MQTTv311, clean_session=False)
        if self.username is not None:
            self.client.username_pw_set(self.username, self.password)
        if self.ca_file is not None:
            self.client.tls_set(ca_certs=self.ca_file)
        self.client.max_inflight_messages_set(self.inflight)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.1, 1)
        self.client.on_publish = self._on_publish

    def _on_publish(self, client: object, ud: object, mid: int, rc: object,
                    props: object) -> None:
        with self._lock:
            payload = self._mids.pop(mid, None)
            if payload is not None:
                self.acked.add(payload)
            else:   # acknowledged before publish() could note its mid
                self._early.add(mid)

    def connect(self) -> Publisher:
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        return self

    def publish(self, topic: str, payload: str) -> None:
        # Not under self._lock: paho calls _on_publish holding its own lock,
        # which publish() takes too (holding both in opposite orders hung).
        info = self.client.publish(topic, payload.encode(), qos=1)
        with self._lock:
            if info.mid in self._early:
                self._early.discard(info.mid)
                self.acked.add(payload)
            else:
                self._mids[info.mid] = payload

    def wait_acked(self, n: int, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.acked) >= n:
                    return len(self.acked)
            time.sleep(0.02)
        with self._lock:
            return len(self.acked)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def stream_leader(cluster: NatsCluster, stream: str, deadline_s: float = 60.0) -> str:
    """The node leading ``stream`` (waits for one)."""
    nc = await connect_any(cluster)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            try:
                info = await js.stream_info(stream)
                if info.cluster is not None and info.cluster.leader:
                    return info.cluster.leader
            except Exception:  # no leader yet: ask again
                pass
            await asyncio.sleep(0.2)
        raise AssertionError(f"stream {stream} has no leader after {deadline_s:.0f}s")
    finally:
        await nc.close()


async def connect_any(cluster: NatsCluster) -> NatsClient:
    import nats

    return await nats.connect(servers=cluster.running_urls(), max_reconnect_attempts=-1,
                              reconnect_time_wait=0.2)


async def clear_test_assets(cluster: NatsCluster, timeout_s: float = 15.0) -> None:
    """Delete what a test made on the shared cluster: every stream but the
    MQTT listeners' own (``$MQTT_*``: lease and alert buckets, test
    streams) and every consumer the edge's code made (its description
    starts with "farmedge:"). Bounded, and never failing the test (a
    leftover costs only load): what could not be removed is printed."""
    import nats.errors

    left: list[str] = []

    async def clear() -> None:
        nc = await connect_any(cluster)
        try:
            js = nc.jetstream()
            for info in await js.streams_info():
                name = info.config.name
                if name is None:
                    continue
                if not name.startswith("$MQTT"):
                    try:
                        await js.delete_stream(name)
                    except nats.errors.Error as exc:
                        left.append(f"stream {name}: {exc}")
                    continue
                for c in await js.consumers_info(name):
                    if (c.config.description or "").startswith("farmedge:"):
                        try:
                            await js.delete_consumer(name, c.name)
                        except nats.errors.Error as exc:
                            left.append(f"consumer {name}/{c.name}: {exc}")
        finally:
            await nc.close()

    try:
        await asyncio.wait_for(clear(), timeout_s)
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        left.append(f"{type(exc).__name__}: {exc}")
    if left:
        print("nats cleanup left:", left)


async def step_down_until(cluster: NatsCluster, stream: str, avoid: Iterable[str],
                          deadline_s: float = 60.0) -> str:
    """Ask ``stream``'s leader to step down until it is none of ``avoid``."""
    avoid = set(avoid)
    nc = await connect_any(cluster)
    try:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            leader = await stream_leader(cluster, stream)
            if leader not in avoid:
                return leader
            with contextlib.suppress(Exception):  # an election under way: ask again
                await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", b"", timeout=5)
            await asyncio.sleep(0.5)
        raise AssertionError(f"{stream}'s leader stayed in {sorted(avoid)}")
    finally:
        await nc.close()


async def prepare(cfg: SourceSection) -> None:
    """The stream and partition consumers of ``cfg``, as the edge makes them."""
    nc = await tn.connect(cfg, "test-setup")
    try:
        js = nc.jetstream()
        await tn.ensure_stream(js, cfg)
        await tn.ensure_consumers(js, cfg)
    finally:
        await nc.close()


async def drain_data(cfg: SourceSection, keep: Callable[[tn.Delivery], bool], *,
                     quiet_s: float = 2.0, deadline_s: float = 90.0) -> list[bytes]:
    """Read every partition until it stays empty for ``quiet_s``; acknowledge
    and return the data of the messages ``keep`` accepts (duplicates kept)."""
    nc = await tn.connect(cfg, "test-drain")
    try:
        js = nc.jetstream()
        readers = [tn.PartitionReader(js, cfg, p) for p in range(cfg.partitions)]
        got: list[bytes] = []
        deadline = time.monotonic() + deadline_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < quiet_s:
            seen = 0
            for r in readers:
                try:
                    batch = await r.fetch(1000, timeout_s=0.2)
                except tn.NatsTransportError:
                    await asyncio.sleep(0.2)  # a leader election: read again
                    seen += 1
                    continue
                seen += len(batch)
                got.extend(d.data for d in batch.deliveries if keep(d))
                await batch.durable()
            if seen:
                quiet_since = time.monotonic()
        return got
    finally:
        await nc.close()


async def drain(cfg: SourceSection, county: str, *, quiet_s: float = 2.0,
                deadline_s: float = 90.0) -> list[str]:
    """drain_data for ``county``'s messages, decoded."""
    got = await drain_data(cfg, lambda d: d.where.county == county, quiet_s=quiet_s,
                           deadline_s=deadline_s)
    return [b.decode() for b in got]


async def delete_consumers(cluster: NatsCluster, cfg: SourceSection) -> None:
    """Remove a test's consumers (on an interest stream they hold messages)."""
    nc = await connect_any(cluster)
    try:
        js = nc.jetstream()
        for p in range(cfg.partitions):
            with contextlib.suppress(Exception):  # already gone
                await js.delete_consumer(cfg.stream, cfg.consumer_name(p))
    finally:
        await nc.close()
