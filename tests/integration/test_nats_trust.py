"""Trust on the NATS cluster (docs/scaling.md, "Trust on NATS"): a real
three-node cluster (nats-server 2.15 from PyPI) running what `farmedge
provision nats` writes, with TLS on its client, MQTT and route listeners
(certificates made here with openssl), gateways connecting as the agent
does (paho, MQTT 3.1.1, persistent session, QoS 1) and the edge's adapter
reading as the edge's own user."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors
import paho.mqtt.client as mqtt
import pytest

from farmedge.cli import main
from farmedge.cluster.alertstate import AlertStateError, KvPartitionStore
from farmedge.cluster.leases import LeaseError, LeaseStore
from farmedge.transport import nats as tn
from farmedge.transport.nats_settings import SourceSection
from farmedge_dev.devservers import InfluxServer
from farmedge_dev.natscluster import NatsCluster, NatsSecurity
from farmedge_dev.tlscerts import CertFiles, make_certs, openssl_available
from tests.conftest import NATS_PARTITIONS
from tests.edgeproc import EdgeProcess
from tests.nats_support import prepare
from tests.support import eventually, influx_query, make_payload

pytestmark = pytest.mark.skipif(not openssl_available(), reason="openssl is not installed")

COUNTY = "trust" + uuid.uuid4().hex[:6]
#: Gateway A's farm id holds a ".", which NATS's MQTT listener writes "//" in
#: subjects and refuses in client ids.
A = (COUNTY, "farm.1", "gw-a")
B = (COUNTY, "farm-2", "gw-b")
BUCKET = "trust_leases"
ALERT_BUCKET = "trust_alerts"


@dataclass
class Secured:
    cluster: NatsCluster
    certs: CertFiles
    nats_dir: Path
    registry: Path
    gateways: dict[str, dict[str, Any]]
    edge_user: str
    edge_password: str

    def source(self, **over: object) -> SourceSection:
        base: dict[str, object] = {
            "kind": "nats", "nats_urls": self.cluster.urls, "partitions": NATS_PARTITIONS,
            "nats_user": self.edge_user, "nats_password": self.edge_password,
            "nats_ca_file": str(self.certs.ca_file),
            "consumer_prefix": "t" + uuid.uuid4().hex[:8] + "-p", "ack_wait_s": 5.0,
            "lease_bucket": BUCKET, "lease_ttl_s": 3, "rebalance_s": 0.5,
        }
        base.update(over)
        return SourceSection.model_validate(base)


def _provision(tmp: Path, capsys: pytest.CaptureFixture[str] | None = None) -> Secured:
    nats_dir, registry = tmp / "nats", tmp / "registry.yaml"
    common = ["--nats-dir", str(nats_dir), "--registry", str(registry)]
    assert main(["provision", "nats", "config", "--partitions", str(NATS_PARTITIONS),
                 "--bucket", BUCKET, "--bucket", ALERT_BUCKET, *common]) == 0
    certs = make_certs(tmp / "certs")
    cluster = NatsCluster(tmp / "cluster", partitions=NATS_PARTITIONS,
                          security=NatsSecurity(nats_dir / "auth.conf", certs))
    urls = [a for n in cluster.nodes for a in ("--url", n.mqtt_url)]  # ports chosen already
    gateways: dict[str, dict[str, Any]] = {}
    for name, (c, f, g) in (("A", A), ("B", B)):
        out = tmp / f"{g}.toml"
        assert main(["provision", "nats", "gateway", "--county", c, "--farm", f, "--gateway", g,
                     *urls, "--ca-file", str(certs.ca_file), "-o", str(out), *common]) == 0
        gateways[name] = tomllib.loads(out.read_text())["mqtt"]
        gateways[name]["file"] = out
    env = tmp / "edge.env"
    assert main(["provision", "nats", "edge", "--name", "edge", "--env-file", str(env),
                 *common]) == 0
    kv = dict(ln.split("=", 1) for ln in env.read_text().splitlines())
    return Secured(cluster, certs, nats_dir, registry, gateways, kv["EDGE_NATS_USER"],
                   kv["EDGE_NATS_PASSWORD"])


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    s = _provision(tmp_path_factory.mktemp("nats-trust"))
    try:
        s.cluster.start()
        yield s
    finally:
        s.cluster.stop()


# ---------------------------------------------------------------- clients


@dataclass
class Gw:
    """A gateway-like MQTT 3.1.1 client over TLS."""

    s: Secured
    username: str
    password: str
    client_id: str
    node: int = 0
    clean: bool = False
    will: tuple[str, bytes] | None = None
    tls: bool = True
    #: Seconds before paho reconnects after a lost connection.
    reconnect_s: float = 0.2
    connacks: queue.Queue[tuple[int, bool]] = field(default_factory=queue.Queue)
    disconnects: list[float] = field(default_factory=list)
    acked: set[int] = field(default_factory=set)
    subacks: queue.Queue[list[int]] = field(default_factory=queue.Queue)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                        protocol=mqtt.MQTTv311, clean_session=self.clean)
        c.username_pw_set(self.username, self.password)
        if self.tls:
            c.tls_set(ca_certs=str(self.s.certs.ca_file))
        if self.will:
            c.will_set(self.will[0], self.will[1], qos=1, retain=True)
        c.reconnect_delay_set(self.reconnect_s, max(1.0, self.reconnect_s))
        c.on_connect = self._on_connect
        c.on_disconnect = lambda *a: self.disconnects.append(time.monotonic())
        c.on_publish = self._on_publish
        c.on_subscribe = lambda cl, ud, mid, rcs, pr: self.subacks.put(
            [int(getattr(r, "value", r)) for r in rcs])
        self.c = c

    def _on_connect(self, cl: object, ud: object, flags: Any, rc: Any, pr: object) -> None:
        self.connacks.put((int(getattr(rc, "value", rc)), bool(flags.session_present)))

    def _on_publish(self, cl: object, ud: object, mid: int, rc: object, pr: object) -> None:
        with self._lock:
            self.acked.add(mid)

    def connect(self, *, wait: bool = True, timeout: float = 30) -> tuple[int, bool] | None:
        self.c.connect("127.0.0.1", self.s.cluster.nodes[self.node].mqtt_port, keepalive=10)
        self.c.loop_start()
        if not wait:
            return None
        try:
            return self.connacks.get(timeout=timeout)
        except queue.Empty:
            return None

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int:
        return self.c.publish(topic, payload, qos=1, retain=retain).mid

    def wait_acked(self, mids: list[int], timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if set(mids) <= self.acked:
                    return True
            time.sleep(0.02)
        return False

    def kill(self) -> None:
        """Drop the TCP connection without a DISCONNECT (its will fires)."""
        self.c.loop_stop()
        sock = self.c.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(2)
            sock.close()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def gw(s: Secured, who: str, **over: Any) -> Gw:
    mq = s.gateways[who]
    kw: dict[str, Any] = {"username": mq["username"], "password": mq["password"],
                          "client_id": mq["client_id"]}
    kw.update(over)
    return Gw(s, **kw)


def topic(ids: tuple[str, str, str], channel: str) -> str:
    return "farm/v1/" + "/".join(ids) + "/" + channel


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _drain(cfg: SourceSection, quiet_s: float = 2.0) -> list[tuple[str, str, bytes]]:
    """Everything of this module's county in cfg's partition consumers:
    (gateway, channel, data)."""
    nc = await tn.connect(cfg, "test-drain")
    try:
        js = nc.jetstream()
        readers = [tn.PartitionReader(js, cfg, p) for p in range(cfg.partitions)]
        got: list[tuple[str, str, bytes]] = []
        deadline = time.monotonic() + 60
        quiet = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet < quiet_s:
            seen = 0
            for r in readers:
                batch = await r.fetch(500, timeout_s=0.2)
                seen += len(batch)
                got += [(d.where.gateway, d.where.channel, d.data) for d in batch.deliveries
                        if d.where.county == COUNTY]
                await batch.durable()
            if seen:
                quiet = time.monotonic()
        return got
    finally:
        await nc.close()


async def _drop_consumers(cfg: SourceSection) -> None:
    nc = await tn.connect(cfg, "test-cleanup")
    try:
        js = nc.jetstream()
        for p in range(cfg.partitions):
            with contextlib.suppress(nats.errors.Error):
                await js.delete_consumer(cfg.stream, cfg.consumer_name(p))
    finally:
        await nc.close()


@pytest.fixture
def edge_cfg(secured: Secured) -> Iterator[SourceSection]:
    """Partition consumers of this test's own, made by the edge's user
    before any gateway publishes (the stream stores only what they want)."""
    cfg = secured.source()
    run(prepare(cfg))
    yield cfg
    run(_drop_consumers(cfg))


# ---------------------------------------------------------------- tests


def test_a_gateway_publishes_its_own_subjects_and_nothing_else(
        secured: Secured, edge_cfg: SourceSection) -> None:
    """Gateway A's telemetry and retained status reach the edge; its
    publishes as gateway B, on its farm's alerts topic and onto another
    partition's subject are refused (PUBACKed all the same: MQTT 3.1.1 has
    no refusal, and the server drops them), and its subscriptions too."""
    a = gw(secured, "A")
    assert (a.connect() or (-1,))[0] == 0
    from farmedge.transport.nats import partition_of

    p = partition_of(A[0], A[1], NATS_PARTITIONS)
    mids = [a.publish(topic(A, "telemetry"), b"mine"),
            a.publish(topic(A, "status"), b"online", retain=True),
            a.publish(topic(B, "telemetry"), b"as-b"),
            a.publish(f"farm/v1/{A[0]}/{A[1]}/alerts", b"alert"),
            a.publish(f"farmp/v1/{p}/{'/'.join(A)}/telemetry", b"direct"),
            a.publish(f"farmp/v1/{(p + 1) % NATS_PARTITIONS}/{'/'.join(A)}/telemetry",
                      b"other-partition")]
    assert a.wait_acked(mids)
    a.c.subscribe([("farm/v1/#", 1), ("$MQTT/msgs/#", 1)])
    assert a.subacks.get(timeout=30) == [0x80, 0x80]
    a.close()
    got = run(_drain(edge_cfg))
    # Publishing straight onto its own partitioned subject is publishing
    # its own telemetry (the same subject); any other partition is refused.
    assert sorted(got) == [("gw-a", "status", b"online"), ("gw-a", "telemetry", b"direct"),
                           ("gw-a", "telemetry", b"mine")]


def test_wrong_password_and_wrong_protocol_are_refused(secured: Secured) -> None:
    a = gw(secured, "A", password="not-" + secured.gateways["A"]["password"])
    rc = a.connect()
    assert rc is None or rc[0] != 0  # not authorized (or closed before a CONNACK)
    a.close()
    # A gateway's user may not speak the NATS protocol; an unknown user nothing.
    ctx = ssl.create_default_context(cafile=str(secured.certs.ca_file))

    async def nats_as(user: str, password: str) -> None:
        nc = await nats.connect(servers=secured.cluster.urls, user=user, password=password,
                                tls=ctx, allow_reconnect=False, max_reconnect_attempts=0,
                                connect_timeout=5)
        await nc.close()

    for user, password in ((secured.gateways["A"]["username"], secured.gateways["A"]["password"]),
                           (secured.edge_user, "wrong")):
        with pytest.raises((nats.errors.Error, OSError)):
            run(nats_as(user, password))
    nobody = Gw(secured, "nobody", "nothing", "nobody")
    rc = nobody.connect()
    assert rc is None or rc[0] != 0
    nobody.close()


def test_plain_connections_are_refused(secured: Secured) -> None:
    """Every listener requires TLS: an MQTT client without it gets no CONNACK,
    a NATS client without it is refused."""
    a = gw(secured, "A", tls=False)
    assert a.connect(timeout=8) is None or a.connacks.empty()
    a.close()

    async def plain() -> None:
        url = secured.cluster.urls[0].replace("tls://", "nats://")
        nc = await nats.connect(servers=[url], user=secured.edge_user,
                                password=secured.edge_password, allow_reconnect=False,
                                max_reconnect_attempts=0, connect_timeout=5)
        await nc.close()

    with pytest.raises((nats.errors.Error, OSError, ssl.SSLError)):
        run(plain())


def test_the_edge_user_reads_its_stream_and_leases_only(
        secured: Secured, edge_cfg: SourceSection) -> None:
    """As the edge's user: the partition mapping check, the partition
    consumers (made by the fixture), reading and acknowledging, the lease
    bucket, the alert state bucket, publishing a farm's alert events; not
    deleting the stream, not publishing as a gateway."""
    a = gw(secured, "A")
    a.connect()
    mids = [a.publish(topic(A, "telemetry"), f"r{i}".encode()) for i in range(20)]
    assert a.wait_acked(mids)
    a.close()

    async def as_edge() -> None:
        nc = await tn.connect(edge_cfg, "test-edge")
        try:
            await tn.check_partition_mapping(nc, edge_cfg)
            js = nc.jetstream()
            leases = await LeaseStore(js, edge_cfg, "edge-1").open()
            # A bucket just made may not answer yet (its stream's leader is
            # being elected): the edge tries again at its next round.
            lease = None
            deadline = time.monotonic() + 30
            while lease is None and time.monotonic() < deadline:
                try:
                    lease = await leases.acquire(3)
                except LeaseError:
                    await asyncio.sleep(0.5)
            assert lease is not None
            await leases.check(await leases.renew(lease))
            # The alert state of a partition, written and read back.
            store = KvPartitionStore(js, ALERT_BUCKET)
            for _ in range(60):  # a bucket just made may not answer yet
                try:
                    await store.write(3, {"states": {f"r|{A[0]}/{A[1]}|s": {"v": 1}}})
                    break
                except AlertStateError:
                    await asyncio.sleep(0.5)
            fresh = KvPartitionStore(js, ALERT_BUCKET)
            assert (await fresh.load(3)).get("states") == {f"r|{A[0]}/{A[1]}|s": {"v": 1}}
            with pytest.raises(nats.errors.Error):
                await js.delete_stream("$MQTT_msgs")
            # A publish outside its permissions: the server says so, asynchronously.
            errors: asyncio.Queue[str] = asyncio.Queue()

            async def on_error(exc: Exception) -> None:
                await errors.put(str(exc))

            nc2 = await nats.connect(
                servers=edge_cfg.nats_urls, name="test-forger", user=edge_cfg.nats_user,
                password=secured.edge_password,
                tls=ssl.create_default_context(cafile=str(secured.certs.ca_file)),
                error_cb=on_error)
            # Its farms' alert events (the alerts topic over NATS) pass; the
            # server's errors come in order, so the first is the forgery's.
            await nc2.publish(tn.alerts_subject(A[0], A[1]), b'{"v":1}')
            await nc2.publish(tn.gateway_subject(*A, "telemetry"), b"forged")
            await nc2.flush()
            err = await asyncio.wait_for(errors.get(), 10)
            await nc2.close()
            assert "permissions violation" in err.lower(), err
            assert err.rstrip('"').endswith(".telemetry"), err    # (named as mapped)
        finally:
            await nc.close()

    run(as_edge())
    got = run(_drain(edge_cfg))
    assert sorted(d for _, _, d in got) == sorted(f"r{i}".encode() for i in range(20))


def test_gateway_b_taking_gateway_a_s_session(secured: Secured, edge_cfg: SourceSection) -> None:
    """NATS binds no client id to a user: B, with its own credentials, can
    connect with A's client id. What happens (docs/scaling.md):

    - A is disconnected and its session (persistent, server-side) goes to B;
    - A's last will is not sent (the server drops it when it replaces A);
    - what A had published and was PUBACKed is in the stream all the same;
    - B cannot publish as A (its permissions are its user's, whatever the
      client id), nor leave a will on A's status topic;
    - A, reconnecting, takes its session back, and its messages flow again.
      (A real agent comes back after its back-off and kicks B out in turn: a
      duel, which the server slows by holding a flapping client id's
      connection for a second.)"""
    # A does not come back by itself during the test (the agent would, after
    # its back-off, and take its id back: a duel, below).
    a = gw(secured, "A", will=(topic(A, "status"), b"offline"), reconnect_s=60)
    assert (a.connect() or (-1,))[0] == 0
    before = [a.publish(topic(A, "telemetry"), f"a{i}".encode()) for i in range(10)]
    assert a.wait_acked(before)
    a_online = len(a.disconnects)

    b = gw(secured, "B", client_id=secured.gateways["A"]["client_id"], node=1,
           will=(topic(A, "status"), b"b-wrote-a-will"), reconnect_s=60)
    first = b.connect()
    assert first is not None and first[0] == 0
    assert first[1] is True  # B was handed A's session
    deadline = time.monotonic() + 20
    while len(a.disconnects) == a_online and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(a.disconnects) > a_online, "A was not disconnected"
    a.kill()  # A stays away for now (its client would come back at once)
    # Who holds A's client id, as a node's monitoring endpoint tells it.
    _, connz = secured.cluster.nodes[1].monitor("/connz?auth=true")
    conns = connz.get("connections") or []
    assert isinstance(conns, list)
    assert any(c.get("mqtt_client") == secured.gateways["A"]["client_id"]
               and c.get("authorized_user") == secured.gateways["B"]["username"]
               for c in conns), conns
    # ... which `provision nats sessions` reports, with exit status 1.
    monitors = [a for n in secured.cluster.nodes
                for a in ("--monitor", f"http://127.0.0.1:{n.http_port}")]
    assert main(["provision", "nats", "sessions", *monitors]) == 1
    forged = [b.publish(topic(A, "telemetry"), b"forged-by-b"),
              b.publish(topic(B, "telemetry"), b"b-own-under-a-id")]
    assert b.wait_acked(forged)
    b.kill()  # no DISCONNECT: B's will (on A's status topic) is due now

    a2 = gw(secured, "A", will=(topic(A, "status"), b"offline"), reconnect_s=60)
    assert a2.connect() == (0, True)  # its session, which B had held, back
    after = [a2.publish(topic(A, "telemetry"), f"a-after{i}".encode()) for i in range(5)]
    assert a2.wait_acked(after)
    a2.kill()  # A's will does fire when A itself goes away

    # With a clean session, B erases A's: A's next CONNACK has no session.
    b2 = gw(secured, "B", client_id=secured.gateways["A"]["client_id"], clean=True)
    assert (b2.connect() or (-1,))[0] == 0
    b2.close()
    a3 = gw(secured, "A", reconnect_s=60)
    assert a3.connect() == (0, False)
    assert main(["provision", "nats", "sessions", *monitors]) == 0  # all as they should be
    a3.close()
    logs = "".join(n.log_tail(10**7) for n in secured.cluster.nodes)
    assert "same client ID" in logs

    got = run(_drain(edge_cfg, quiet_s=3.0))
    a_tel = sorted(d for g, ch, d in got if g == "gw-a" and ch == "telemetry")
    assert a_tel == sorted([f"a{i}".encode() for i in range(10)]
                           + [f"a-after{i}".encode() for i in range(5)])
    statuses = [d for g, ch, d in got if g == "gw-a" and ch == "status"]
    # One "offline": the will of A's last connection, none when B replaced A.
    assert statuses.count(b"offline") == 1
    assert b"b-wrote-a-will" not in statuses  # B's will on A's topic: refused
    assert ("gw-b", "telemetry", b"b-own-under-a-id") in got  # B publishes as B



def test_the_real_edge_runs_as_its_user_over_tls(
        secured: Secured, influxdb: InfluxServer, influx_db: str, tmp_path: Path) -> None:
    """`farmedge edge run` with [source] kind = "nats", its user, password
    and CA file: it owns every partition and every reading gateway A
    publishes is in InfluxDB (its permissions cover what the edge does)."""
    prefix = "t" + uuid.uuid4().hex[:8] + "-p"
    env = {
        "FARMEDGE_SOURCE_KIND": "nats",
        "FARMEDGE_SOURCE_NATS_URLS": json.dumps(secured.cluster.urls),
        "FARMEDGE_SOURCE_NATS_USER": secured.edge_user,
        "FARMEDGE_SOURCE_NATS_PASSWORD": secured.edge_password,
        "FARMEDGE_SOURCE_NATS_CA_FILE": str(secured.certs.ca_file),
        "FARMEDGE_SOURCE_PARTITIONS": str(NATS_PARTITIONS),
        "FARMEDGE_SOURCE_CONSUMER_PREFIX": prefix,
        "FARMEDGE_SOURCE_LEASE_BUCKET": BUCKET,
        "FARMEDGE_SOURCE_LEASE_TTL_S": "3", "FARMEDGE_SOURCE_REBALANCE_S": "0.5",
        "FARMEDGE_ALERTS_ENABLED": "false", "FARMEDGE_INFLUX_FLUSH_INTERVAL_S": "0.2",
        "FARMEDGE_INSTANCE": "edge-real",
    }
    e = EdgeProcess(mqtt_url=secured.cluster.nodes[0].mqtt_url, influx_url=influxdb.url,
                    database=influx_db, data_dir=tmp_path / "edge", extra_env=env)
    e.start(wait_subscribed=False)
    try:
        eventually(lambda: len(e.health().get("partitions_owned") or []) == NATS_PARTITIONS,
                   timeout=90, interval=0.3, what="the edge owns every partition")
        a = gw(secured, "A")
        assert (a.connect() or (-1,))[0] == 0
        base = int(time.time() * 1000) - 600_000
        mids = [a.publish(topic(A, "telemetry"), make_payload(A[2], i + 1, [
            {"sensor": "s1", "kind": "soil_moisture", "ts": base + i * 1000, "value": 20.0,
             "unit": "%"}])) for i in range(30)]
        assert a.wait_acked(mids)
        a.close()

        def stored() -> int:
            try:
                rows = influx_query(influxdb.url, 'SELECT count("moisture") FROM "soil"',
                                    influx_db)
            except Exception:  # a 500 under load: ask again
                return 0
            return int(rows[0]["values"][0][1]) if rows else 0

        assert eventually(lambda: stored() == 30, timeout=90, interval=0.3,
                          what="30 readings in InfluxDB")
        # Nothing the edge tried was refused.
        refused = [ln for n in secured.cluster.nodes for ln in n.log_tail(10**7).splitlines()
                   if "Violation" in ln and secured.edge_user in ln
                   and ":test-" not in ln]  # the other tests' own refused tries
        assert refused == [], refused[:5]
    finally:
        e.stop()
        run(_drop_consumers(secured.source(consumer_prefix=prefix)))


def test_the_real_gateway_agent_runs_the_config_provisioning_wrote(
        secured: Secured, edge_cfg: SourceSection, tmp_path: Path) -> None:
    """`farmedge gateway run` with the gateway.toml of `provision nats
    gateway` (every node's mqtts:// URL, the CA file, its user, password
    and client id), sensors added as its comments say: it connects over
    TLS and its readings reach the edge's partition consumers."""
    text = secured.gateways["A"]["file"].read_text()
    data = tmp_path / "gw-data"
    top = f'data_dir = "{data}"\nlog_format = "json"\nlog_level = "debug"\n'
    text = text.replace("\n[mqtt]\n", f"\n{top}\n[mqtt]\n", 1) + textwrap.dedent("""\
          keepalive_s = 5
          backoff_min_s = 0.2
          backoff_max_s = 1.0
          connect_timeout_s = 5
        [outbox]
        commit_interval_s = 0.1
        [uplink]
        batch_max = 10
        batch_max_wait_s = 0.1
        [clock]
        source = "trust"
        [[sensors]]
        driver = "simulated"
        id = "s1"
        kinds = ["soil_moisture"]
        interval_s = 0.1
        """)
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(text)
    check = subprocess.run([sys.executable, "-m", "farmedge", "gateway", "check-config",
                            "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    log = tmp_path / "gw.log"
    with log.open("ab") as f:
        proc = subprocess.Popen([sys.executable, "-m", "farmedge", "gateway", "run", "--config",
                                 str(cfg)], stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        def acked() -> int:
            n = 0
            for line in log.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    e = json.loads(line)
                    if isinstance(e, dict) and e.get("event") == "gateway.acked":
                        n += int(e["n"])
            return n

        eventually(lambda: acked() >= 20, timeout=90, interval=0.2,
                   what=f"20 readings acknowledged (log: {log})")
    finally:
        proc.terminate()
        proc.wait(60)
    got = run(_drain(edge_cfg))
    telemetry = [d for g, ch, d in got if g == "gw-a" and ch == "telemetry"]
    statuses = [d for g, ch, d in got if g == "gw-a" and ch == "status"]
    assert telemetry and statuses  # its readings, and its retained status
    assert acked() >= 20


def test_a_revoked_gateway_is_closed_at_the_reload_and_refused(secured: Secured) -> None:
    """`provision nats revoke`, then a reload signal to every node: B's
    connection is closed and B refused from then on; A, connected
    meanwhile, is not disconnected and goes on publishing. (Last in the
    module: B stays revoked.)"""
    a = gw(secured, "A", reconnect_s=60)
    b = gw(secured, "B", node=2, reconnect_s=60)
    assert (a.connect() or (-1,))[0] == 0 and (b.connect() or (-1,))[0] == 0
    assert main(["provision", "nats", "revoke", "--county", B[0], "--farm", B[1], "--gateway",
                 B[2], "--nats-dir", str(secured.nats_dir), "--registry",
                 str(secured.registry)]) == 0
    secured.cluster.reload()
    deadline = time.monotonic() + 30
    while not b.disconnects and time.monotonic() < deadline:
        time.sleep(0.05)
    assert b.disconnects, "the revoked gateway was not disconnected"
    b.kill()
    again = gw(secured, "B", node=0, reconnect_s=60)
    rc = again.connect(timeout=10)
    assert rc is None or rc[0] != 0
    again.kill()
    assert a.disconnects == []
    mids = [a.publish(topic(A, "telemetry"), b"after-reload")]
    assert a.wait_acked(mids)
    a.close()
