"""`farmedge provision` and the shipped broker configuration, against a real
Mosquitto 2.0 running deploy/mosquitto/mosquitto.conf with its dynamic
security plugin, as an unprivileged user (tests/stack_support.ShippedBroker),
with the accounts provisioning made: live on the running broker, or in the
plugin's file before it starts."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from farmedge.cli import main
from farmedge.provision import check_password, hash_password
from farmedge.registry import load_registry
from farmedge_dev.devservers import InfluxServer, broker_user, free_port, influx_query
from tests.stack_support import DEPLOY, DROPPED, ROOT, Client, ShippedBroker
from tests.support import count, eventually

pytestmark = pytest.mark.servers

NOT_AUTHORIZED = 135  # MQTT 5 reason code 0x87
# Mosquitto 2.0 answers a wrong or unknown password with 0x87 "not authorized"
# (0x86 "bad user name or password" in later versions).
REFUSED = {134, 135}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[ShippedBroker]:
    b = ShippedBroker(tmp_path / "broker").start()
    yield b
    b.stop()


def provision(*argv: str, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["provision", *argv]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def gateway(broker: ShippedBroker, tmp_path: Path, county: str, farm: str, gw: str,
            capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """`provision gateway` on the running broker: the [mqtt] section it wrote."""
    out = provision("gateway", "--county", county, "--farm", farm, "--gateway", gw,
                    "--broker-dir", str(broker.config_dir),
                    "--registry", str(tmp_path / "registry.yaml"),
                    "--mqtt-url", broker.url, capsys=capsys)
    doc = tomllib.loads(out)
    assert (doc["county"], doc["farm"], doc["gateway"]) == (county, farm, gw)
    mq: dict[str, str] = doc["mqtt"]
    assert mq["client_id"] == f"{county}/{farm}/{gw}" == mq["username"]
    return mq


def service(broker: ShippedBroker, kind: str, capsys: pytest.CaptureFixture[str],
            name: str | None = None) -> tuple[str, str]:
    out = provision(kind, "--name", name or kind, "--broker-dir", str(broker.config_dir),
                    capsys=capsys)
    lines = dict(ln.split(": ", 1) for ln in out.splitlines())
    assert lines["username"] == f"svc~{name or kind}"
    return lines["username"], lines["password"]


def connected(broker: ShippedBroker, mq: dict[str, str] | tuple[str, str],
              client_id: str | None = None) -> Client:
    if isinstance(mq, dict):
        c = Client(broker.port, mq["username"], mq["password"],
                   client_id=client_id if client_id is not None else mq["client_id"])
    else:
        c = Client(broker.port, mq[0], mq[1], client_id=client_id or "")
    rc = c.connect()
    assert rc == 0, rc
    return c


def refused(broker: ShippedBroker, user: str | None, password: str | None,
            client_id: str = "") -> bool:
    c = Client(broker.port, user, password, client_id=client_id)
    rc = c.connect()
    c.close()
    return rc in REFUSED


def dynsec(broker_dir: Path) -> dict[str, dict[str, object]]:
    doc = json.loads((broker_dir / "dynamic-security.json").read_text())
    return {c["username"]: c for c in doc["clients"]}


def test_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd is not installed (Debian package mosquitto)")
    f = tmp_path / "pw"
    f.write_text("")
    # The password on the command line is fine for a test: provisioning
    # never runs it.
    subprocess.run([tool, "-b", str(f), "u", "s3cret"], check=True)
    stored = f.read_text().strip().split(":", 1)[1]
    assert stored.startswith("$7$101$")
    assert check_password("s3cret", stored)
    assert not check_password("s3cret!", stored)
    assert check_password("pw", hash_password("pw"))


def test_shipped_config_loads_the_dynamic_security_plugin() -> None:
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text().splitlines()
    assert "plugin /usr/lib/mosquitto_dynamic_security.so" in conf  # the image's path
    assert "plugin_opt_config_file /mosquitto/config/dynamic-security.json" in conf
    assert "allow_anonymous false" in conf
    assert not any(ln.startswith(("password_file", "acl_file")) for ln in conf)


def test_broker_runs_unprivileged_and_keeps_its_file(broker: ShippedBroker) -> None:
    """Started as root, the broker runs as an unprivileged user, who owns the
    plugin's file (mode 600) after provisioning made it and after the
    broker rewrote it on a live change."""
    want = pwd.getpwnam(broker_user()).pw_uid
    if os.geteuid() == 0:
        assert want != 0
        assert broker.proc is not None
        status = Path(f"/proc/{broker.proc.pid}/status").read_text()
        uid_line = next(ln for ln in status.splitlines() if ln.startswith("Uid:"))
        assert int(uid_line.split()[1]) == want
    st = broker.dynsec_file.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (want, 0o600)
    before = broker.dynsec_file.read_text()
    broker.service("edge")
    eventually(lambda: broker.dynsec_file.read_text() != before, what="the broker saved")
    st = broker.dynsec_file.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (want, 0o600)
    assert "svc~edge" in dynsec(broker.config_dir)
    admin = broker.config_dir.parent / "config-admin.toml"
    assert admin.stat().st_mode & 0o077 == 0


def test_anonymous_and_wrong_password_refused(broker: ShippedBroker, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    mq = gateway(broker, tmp_path, "suihua", "wang-12", "gw-0007", capsys)
    assert refused(broker, None, None)
    assert refused(broker, mq["username"], mq["password"] + "x", mq["client_id"])
    assert refused(broker, "suihua/wang-12/gw-9999", mq["password"], "suihua/wang-12/gw-9999")
    connected(broker, mq).close()


def test_gateway_publishes_only_its_own_telemetry_and_status(
        broker: ShippedBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = gateway(broker, tmp_path, "suihua", "wang-12", "gw-a", capsys)
    gateway(broker, tmp_path, "suihua", "wang-12", "gw-b", capsys)
    gateway(broker, tmp_path, "suihua", "li-3", "gw-c", capsys)
    edge = service(broker, "edge", capsys)
    sub = connected(broker, edge)
    # A shared subscription, as several edge instances use it.
    assert sub.subscribe("$share/edge/farm/v1/+/+/+/telemetry") == [1]
    assert sub.subscribe("farm/v1/+/+/+/status") == [1]
    assert sub.subscribe("farm/v1/+/+/alerts") == [1]

    gw = connected(broker, a)
    forbidden = [
        "farm/v1/suihua/wang-12/gw-b/telemetry",   # as gateway B of the same farm
        "farm/v1/suihua/li-3/gw-c/telemetry",      # into another farm
        "farm/v1/suihua/li-3/gw-a/telemetry",      # its own name in another farm
        "farm/v1/other/wang-12/gw-a/telemetry",    # another county
        "farm/v1/suihua/wang-12/alerts",           # its farm's alerts topic
        "farm/v1/suihua/wang-12/gw-a/other",       # its own path, another topic
        "farm/v1/suihua/wang-12/gw-a",
    ]
    for topic in forbidden:
        # Refused: a PUBACK "not authorized", or the connection closed.
        assert gw.publish(topic, b"forged") in {NOT_AUTHORIZED, DROPPED}, topic
        gw.close()
        gw = connected(broker, a)
    assert gw.publish("farm/v1/suihua/wang-12/gw-a/telemetry", b"own") == 0
    assert gw.publish("farm/v1/suihua/wang-12/gw-a/status", b"status") == 0
    # Messages from one client arrive in order: once the two allowed ones are
    # in, every forged one before them would have been too.
    got = [sub.messages.get(timeout=30) for _ in range(2)]
    assert sorted(m.topic for m in got) == ["farm/v1/suihua/wang-12/gw-a/status",
                                            "farm/v1/suihua/wang-12/gw-a/telemetry"]
    assert sub.messages.empty()
    # ... and it may not subscribe at all.
    for topic in ("farm/v1/#", "farm/v1/suihua/wang-12/gw-a/status", "#",
                  "$share/edge/farm/v1/+/+/+/telemetry", "$CONTROL/dynamic-security/v1/response"):
        assert gw.subscribe(topic) == [NOT_AUTHORIZED], topic
    sub.close()
    gw.close()


def test_gateway_share_subscription_gets_nothing_and_the_edge_gets_everything(
        broker: ShippedBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A gateway subscribing to the edges' shared subscription is refused:
    it never becomes a member of the group, so the edge gets 20 of 20."""
    edge = connected(broker, service(broker, "edge", capsys), client_id="svc~edge-1")
    assert edge.subscribe("$share/edge/farm/v1/+/+/+/telemetry") == [1]
    thief = connected(broker, gateway(broker, tmp_path, "suihua", "wang-12", "gw-x", capsys))
    assert thief.subscribe("$share/edge/farm/v1/+/+/+/telemetry") == [NOT_AUTHORIZED]
    assert thief.subscribe("$share/edge/#") == [NOT_AUTHORIZED]
    pub = connected(broker, gateway(broker, tmp_path, "suihua", "wang-12", "gw-p", capsys))
    for i in range(20):
        assert pub.publish("farm/v1/suihua/wang-12/gw-p/telemetry", str(i).encode()) == 0
    got = sorted(int(edge.messages.get(timeout=30).payload) for _ in range(20))
    assert got == list(range(20))
    assert thief.messages.empty()
    assert not thief.dropped.is_set()
    for c in (edge, thief, pub):
        c.close()


def test_no_credential_takes_another_clients_session(
        broker: ShippedBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A gateway connecting with the edge's client id, or with another
    gateway's, is refused: the edge stays connected and its persistent
    session (with what is queued in it) survives a clean-start attempt."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    a = gateway(broker, tmp_path, "suihua", "wang-12", "gw-a", capsys)
    b = gateway(broker, tmp_path, "suihua", "wang-12", "gw-b", capsys)
    edge_user, edge_pw = service(broker, "edge", capsys)

    def edge_session() -> Client:
        c = Client(broker.port, edge_user, edge_pw, client_id="farmedge-edge")
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.c.connect("127.0.0.1", broker.port, clean_start=False, properties=props)
        c.c.loop_start()
        assert c.connack.get(timeout=30) == 0
        return c

    e = edge_session()
    assert e.subscribe("farm/v1/+/+/+/telemetry") == [1]
    gb = connected(broker, b)
    for cid in ("farmedge-edge", b["client_id"], "gw-b", "svc~edge", ""):
        assert refused(broker, a["username"], a["password"], cid), cid
    assert not e.dropped.is_set() and not gb.dropped.is_set()
    assert gb.publish("farm/v1/suihua/wang-12/gw-b/telemetry", b"1") == 0
    assert e.messages.get(timeout=30).payload == b"1"
    # With the edge away, its session queues; a clean start with its client
    # id by a gateway would erase it, and is refused.
    e.close()
    assert gb.publish("farm/v1/suihua/wang-12/gw-b/telemetry", b"2") == 0
    thief = Client(broker.port, a["username"], a["password"], client_id="farmedge-edge")
    thief.c.connect("127.0.0.1", broker.port, clean_start=True)
    thief.c.loop_start()
    assert thief.connack.get(timeout=30) in REFUSED
    thief.close()
    e = edge_session()
    assert e.messages.get(timeout=30).payload == b"2"
    e.close()
    gb.close()


def test_same_gateway_id_in_two_farms_both_stay_connected(
        broker: ShippedBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two gateways called gw-1 on two farms: each has its own client id
    (its path), so neither takes over the other's session or fires its
    last will."""
    edge = connected(broker, service(broker, "edge", capsys))
    assert edge.subscribe("farm/v1/+/+/+/status") == [1]
    one = gateway(broker, tmp_path, "suihua", "wang-12", "gw-1", capsys)
    two = gateway(broker, tmp_path, "suihua", "li-3", "gw-1", capsys)
    clients = []
    for mq, farm in ((one, "wang-12"), (two, "li-3")):
        c = Client(broker.port, mq["username"], mq["password"], client_id=mq["client_id"])
        c.c.will_set(f"farm/v1/suihua/{farm}/gw-1/status", b"offline", qos=1)
        assert c.connect() == 0
        clients.append((c, farm))
    for i in range(10):
        for c, farm in clients:
            assert c.publish(f"farm/v1/suihua/{farm}/gw-1/status", f"{i}".encode()) == 0
    got = [edge.messages.get(timeout=30).payload for _ in range(20)]
    assert b"offline" not in got
    assert not any(c.dropped.is_set() for c, _ in clients)
    for c, _ in clients:
        c.close()
    edge.close()


def test_reserved_and_bad_ids_are_refused(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--broker-dir", str(tmp_path / "b"), "--registry", str(tmp_path / "r.yaml"),
            "--offline"]
    rc = main(["provision", "gateway", "--county", "a/b", "--farm", "f", "--gateway", "#",
               *args])
    assert rc == 1
    assert "county" in capsys.readouterr().err
    for county, farm, gw in (("suihua", "wang-12", "alerts"), ("suihua", "wang-12", "status"),
                             ("suihua", "telemetry", "gw-1"), ("alerts", "wang-12", "gw-1")):
        assert main(["provision", "gateway", "--county", county, "--farm", farm,
                     "--gateway", gw, *args]) == 1
        assert "topic level" in capsys.readouterr().err
    assert not (tmp_path / "b" / "dynamic-security.json").exists()
    assert not (tmp_path / "r.yaml").exists()


def test_live_provisioning_disconnects_no_one_else(
        broker: ShippedBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Ten gateways stay connected and publishing, and the edge subscribed,
    while 20 gateways are provisioned one by one and 5 of them revoked, all
    live: none of the ten (nor the edge) is disconnected or refused, every
    message they publish is acknowledged and reaches the edge; each new
    gateway connects as soon as its command returns; the revoked ones are
    disconnected at once and refused from then on."""
    edge = connected(broker, service(broker, "edge", capsys))
    assert edge.subscribe("farm/v1/+/+/+/telemetry") == [1]
    steady = [gateway(broker, tmp_path, "suihua", "steady", f"gw-{i}", capsys)
              for i in range(10)]
    clients = [connected(broker, mq) for mq in steady]
    acked = [0] * len(clients)
    failures: list[str] = []
    stop = threading.Event()

    def publish(i: int) -> None:
        topic = f"farm/v1/suihua/steady/gw-{i}/telemetry"
        while not stop.is_set():
            rc = clients[i].publish(topic, f"{i}:{acked[i]}".encode())
            if rc != 0:
                failures.append(f"gw-{i}: {rc}")
                return
            acked[i] += 1
            stop.wait(0.02)

    threads = [threading.Thread(target=publish, args=(i,), daemon=True)
               for i in range(len(clients))]
    for t in threads:
        t.start()
    new: list[tuple[dict[str, str], Client]] = []
    try:
        for i in range(20):
            mq = gateway(broker, tmp_path, "suihua", "new", f"gw-{i}", capsys)
            new.append((mq, connected(broker, mq)))  # at once: no reload, no wait
        for i in range(5):
            provision("revoke", "--county", "suihua", "--farm", "new", "--gateway", f"gw-{i}",
                      "--broker-dir", str(broker.config_dir),
                      "--registry", str(tmp_path / "registry.yaml"), capsys=capsys)
            eventually(new[i][1].dropped.is_set, timeout=30, what=f"revoked gw-{i} dropped")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    assert all(n > 0 for n in acked), acked
    for c in (edge, *clients, *(c for _, c in new[5:])):
        assert not c.dropped.is_set()
    for mq, _ in new[:5]:
        assert refused(broker, mq["username"], mq["password"], mq["client_id"])
    for mq, c in new[5:]:
        assert c.publish(f"farm/v1/{mq['username']}/telemetry", b"new") == 0
    want = sum(acked) + 15
    got: list[str] = []
    while len(got) < want:
        got.append(edge.messages.get(timeout=20).payload.decode())
    assert edge.messages.empty()
    for i, n in enumerate(acked):
        assert sorted(int(p.split(":")[1]) for p in got if p.startswith(f"{i}:")) == list(
            range(n))
    reg = load_registry(tmp_path / "registry.yaml").index()
    assert {k[2] for k in reg if k[1] == "new"} == {f"gw-{i}" for i in range(5, 20)}
    for c in (edge, *clients, *(c for _, c in new[5:])):
        c.close()


def test_provisioning_before_the_first_start(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """With no broker yet, provisioning writes the plugin's file (owned by the
    user the broker will run as) and the admin credential; the broker then
    starts with it, and later provisioning goes live."""
    b = ShippedBroker(tmp_path / "broker")
    b.port = free_port()
    reg = str(tmp_path / "registry.yaml")
    common = ["--broker-dir", str(b.config_dir), "--admin-url", b.url,
              "--broker-user", b.run_as]
    out = provision("gateway", "--county", "suihua", "--farm", "wang-12", "--gateway",
                    "gw-0007", "--registry", reg, "--mqtt-url", b.url, *common, capsys=capsys)
    mq = tomllib.loads(out)["mqtt"]
    provision("edge", *common, capsys=capsys)
    out = provision("edge", "--name", "edge-b", *common, capsys=capsys)
    edge_b = dict(ln.split(": ", 1) for ln in out.splitlines())
    st = b.dynsec_file.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (pwd.getpwnam(b.run_as).pw_uid, 0o600)
    assert set(dynsec(b.config_dir)) == {"svc~admin", "suihua/wang-12/gw-0007", "svc~edge",
                                         "svc~edge-b"}
    b.start()
    try:
        gw = connected(b, mq)
        e = connected(b, (edge_b["username"], edge_b["password"]))
        assert e.subscribe("farm/v1/#") == [1]
        # Live now: the new gateway connects at once, nobody is dropped.
        capsys.readouterr()
        assert main(["provision", "gateway", "--county", "suihua", "--farm", "wang-12",
                     "--gateway", "gw-0008", "--registry", reg, "--mqtt-url", b.url,
                     *common]) == 0
        cap = capsys.readouterr()
        assert f"(the broker at {b.url})" in cap.err
        connected(b, tomllib.loads(cap.out)["mqtt"]).close()
        assert not gw.dropped.is_set() and not e.dropped.is_set()
        gw.close()
        e.close()
    finally:
        b.stop()


def test_import_passwd_keeps_every_credential(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A center provisioned with the password file and ACL of earlier
    versions moves over without knowing any password: gateways connect as
    they do in the field (client id = gateway id) with their old password,
    the edge as svc~edge with its old password; re-provisioning a gateway
    later binds it to its path."""
    old = tmp_path / "old"
    old.mkdir()
    pw = {"suihua/wang-12/gw-1": "pw-a", "suihua/li-3/gw-1": "pw-b",
          "suihua/wang-12/gw-2": "pw-c", "edge": "pw-edge", "simulator": "pw-sim",
          "stranger": "pw-x"}
    (old / "passwd").write_text("".join(f"{u}:{hash_password(p)}\n" for u, p in pw.items())
                                + "legacy/one/gw-9:$6$c2FsdA==$aGFzaA==\n")
    (old / "acl").write_text("pattern write farm/v1/%u/#\n\n# edge instance\nuser edge\n"
                             "topic read farm/v1/#\ntopic write farm/v1/+/+/alerts\n\n"
                             "user simulator\ntopic write farm/v1/#\n")
    b = ShippedBroker(tmp_path / "broker")
    b.port = free_port()
    common = ["--broker-dir", str(b.config_dir), "--admin-url", b.url,
              "--broker-user", b.run_as]
    capsys.readouterr()
    assert main(["provision", "import-passwd", "--passwd", str(old / "passwd"),
                 "--acl", str(old / "acl"), *common]) == 0
    err = capsys.readouterr().err
    assert "3 gateways, 2 services" in err
    assert "left out stranger" in err and "left out legacy/one/gw-9" in err
    assert "client id 'gw-1' is shared by" in err
    assert "edge is now svc~edge" in err
    b.start()
    try:
        edge = connected(b, ("svc~edge", "pw-edge"))
        assert edge.subscribe("farm/v1/+/+/+/telemetry") == [1]
        g = Client(b.port, "suihua/wang-12/gw-2", "pw-c", client_id="gw-2")
        assert g.connect() == 0
        assert g.publish("farm/v1/suihua/wang-12/gw-2/telemetry", b"legacy") == 0
        assert edge.messages.get(timeout=30).payload == b"legacy"
        assert g.publish("farm/v1/suihua/wang-12/alerts", b"x") in {NOT_AUTHORIZED, DROPPED}
        g.close()
        assert refused(b, "suihua/wang-12/gw-2", "pw-c", "suihua/wang-12/gw-2")
        assert refused(b, "suihua/wang-12/gw-2", "pw-c", "farmedge-edge")
        assert refused(b, "edge", "pw-edge")
        sim = connected(b, ("svc~simulator", "pw-sim"))
        assert sim.publish("farm/v1/any/farm/gw/telemetry", b"sim") == 0
        assert edge.messages.get(timeout=30).payload == b"sim"
        sim.close()
        # Re-provisioned (new password, new config): bound to its path.
        mq = gateway(b, tmp_path, "suihua", "li-3", "gw-1", capsys)
        connected(b, mq).close()
        assert refused(b, mq["username"], mq["password"], "gw-1")
        edge.close()
    finally:
        b.stop()


def test_import_refuses_a_running_broker_with_the_plugin(
        broker: ShippedBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "passwd").write_text(f"suihua/f/gw:{hash_password('x')}\n")
    assert main(["provision", "import-passwd", "--passwd", str(tmp_path / "passwd"),
                 "--broker-dir", str(broker.config_dir)]) == 1
    assert "stop it for the import" in capsys.readouterr().err


def test_revoked_gateway_is_disconnected_and_refused(
        broker: ShippedBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mq = gateway(broker, tmp_path, "suihua", "wang-12", "gw-0007", capsys)
    c = connected(broker, mq)
    reg = tmp_path / "registry.yaml"
    assert ("suihua", "wang-12", "gw-0007") in load_registry(reg).index()
    provision("revoke", "--county", "suihua", "--farm", "wang-12", "--gateway", "gw-0007",
              "--broker-dir", str(broker.config_dir), "--registry", str(reg), capsys=capsys)
    assert ("suihua", "wang-12", "gw-0007") not in load_registry(reg).index()
    eventually(c.dropped.is_set, what="its connection closed")
    assert refused(broker, mq["username"], mq["password"], mq["client_id"])
    eventually(lambda: "suihua/wang-12/gw-0007" not in dynsec(broker.config_dir),
               what="the broker saved the change")


def test_simulator_publishes_as_any_gateway_but_reads_nothing(
        broker: ShippedBroker, capsys: pytest.CaptureFixture[str]) -> None:
    sim = connected(broker, service(broker, "simulator", capsys))
    # 0x10: accepted, no subscriber matched.
    assert sim.publish("farm/v1/any/farm/gw/telemetry", b"x") in {0, 16}
    assert sim.subscribe("farm/v1/#") == [NOT_AUTHORIZED]
    assert sim.publish("farm/v1/any/farm/gw/status", b"z") in {0, 16}
    assert sim.publish("farm/v1/any/farm/alerts", b"a") in {NOT_AUTHORIZED, DROPPED}
    sim.close()
    provision("revoke", "--user", "simulator", "--broker-dir", str(broker.config_dir),
              capsys=capsys)
    eventually(lambda: "svc~simulator" not in dynsec(broker.config_dir), what="revoked")
    assert main(["provision", "revoke", "--user", "svc~admin",
                 "--broker-dir", str(broker.config_dir)]) == 1


def test_service_credential_goes_into_the_env_file(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    env = tmp_path / ".env"
    env.write_text("# site settings\nGRAFANA_ADMIN_PASSWORD=x\nEDGE_MQTT_PASSWORD=old\n")
    provision("edge", "--broker-dir", str(tmp_path / "b"), "--env-file", str(env), "--offline",
              capsys=capsys)
    lines = env.read_text().splitlines()
    assert lines[:2] == ["# site settings", "GRAFANA_ADMIN_PASSWORD=x"]
    pw = lines[2].split("=", 1)[1]
    assert lines[2].startswith("EDGE_MQTT_PASSWORD=") and pw != "old"
    assert lines[3] == "EDGE_MQTT_USER=svc~edge"
    rec = dynsec(tmp_path / "b")["svc~edge"]
    stored = f"$7${rec['iterations']}${rec['salt']}${rec['password']}"
    assert check_password(pw, stored)
    assert env.stat().st_mode & 0o077 == 0


def test_registry_edits_keep_comments(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    reg = tmp_path / "registry.yaml"
    shutil.copy(ROOT / "registry.example.yaml", reg)
    before = reg.read_text()
    args = ["--broker-dir", str(tmp_path / "b"), "--registry", str(reg), "--offline"]
    provision("gateway", "--county", "suihua", "--farm", "wang-12", "--gateway", "gw-0008",
              *args, capsys=capsys)
    provision("gateway", "--county", "suihua", "--farm", "张家", "--gateway", "gw-1",
              *args, capsys=capsys)
    text = reg.read_text()
    for line in before.splitlines():
        if "#" in line:
            assert line in text
    index = load_registry(reg).index()
    assert {("suihua", "wang-12", "gw-0007"), ("suihua", "wang-12", "gw-0008"),
            ("suihua", "张家", "gw-1")} <= set(index)
    # The existing gateway keeps its sensors.
    assert set(index["suihua", "wang-12", "gw-0007"][1].sensors) == {"soil-1", "soil-2",
                                                                       "bolus-17"}
    # Again: nothing changes in the registry.
    provision("gateway", "--county", "suihua", "--farm", "wang-12", "--gateway", "gw-0008",
              *args, capsys=capsys)
    assert reg.read_text() == text
    for gw, farm in (("gw-0008", "wang-12"), ("gw-1", "张家")):
        provision("revoke", "--county", "suihua", "--farm", farm, "--gateway", gw, *args,
                  capsys=capsys)
    after = load_registry(reg)
    assert set(after.index()) == {("suihua", "wang-12", "gw-0007")}
    assert yaml.safe_load(reg.read_text())["farms"][0] == yaml.safe_load(before)["farms"][0]
    for line in before.splitlines():
        if "#" in line:
            assert line in reg.read_text()


def test_provisioned_entries_carry_placeholders_that_work_uncommented(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A new farm's entry has commented contacts and plots, a new gateway's
    its interval_s; taking the "# " off each gives a valid registry with
    them."""
    reg = tmp_path / "registry.yaml"
    args = ["--broker-dir", str(tmp_path / "b"), "--registry", str(reg), "--offline"]
    provision("gateway", "--county", "suihua", "--farm", "wang-12", "--gateway", "gw-1",
              *args, capsys=capsys)
    provision("gateway", "--county", "suihua", "--farm", "wang-12", "--gateway", "gw-2",
              *args, capsys=capsys)
    text = reg.read_text()
    entry = load_registry(reg).index()["suihua", "wang-12", "gw-1"]
    assert entry[0].contacts == [] and entry[1].interval_s is None
    uncommented = "\n".join(ln.replace("# ", "", 1) if ln.lstrip().startswith("# ") else ln
                            for ln in text.splitlines()) + "\n"
    reg.write_text(uncommented)
    farm, gw = load_registry(reg).index()["suihua", "wang-12", "gw-2"]
    assert farm.contacts[0].notify == ["json://127.0.0.1:8000/sms"]
    assert farm.plots["field-1"].field_capacity == 36
    assert gw.interval_s == 600


def _certs(folder: Path) -> None:
    """A CA and a server certificate for 127.0.0.1, made with openssl."""
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
        "-keyout", "ca.key", "-out", "ca.crt")
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "server.crt")


def test_shipped_tls_listener_works_with_the_sites_certificates(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The TLS block of mosquitto.conf, uncommented as docs/stack.md says,
    with certificates in the certs folder: a gateway connects over TLS with
    its account, verifying the broker; anonymous TLS clients are refused."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    work = tmp_path / "broker"
    _certs(work / "certs")
    b = ShippedBroker(work, tls_port=free_port()).start()
    try:
        mq = gateway(b, tmp_path, "suihua", "wang-12", "gw-tls", capsys)
        for user, password, cid, want in ((mq["username"], mq["password"], mq["client_id"],
                                           {0}), (None, None, "", REFUSED)):
            c = Client(b.tls_port, user, password, client_id=cid)
            c.c.tls_set(ca_certs=str(work / "certs" / "ca.crt"))
            assert c.connect() in want
            c.close()
    finally:
        b.stop()


def test_shipped_broker_queues_past_mosquittos_default_limit(
        broker: ShippedBroker, capsys: pytest.CaptureFixture[str]) -> None:
    """With the edge away, the broker keeps every QoS 1 message for its
    persistent session: 2,500 messages, past Mosquitto's default of 1000
    queued per client (which it would drop silently)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    edge_user, edge_pw = service(broker, "edge", capsys)
    sim = service(broker, "simulator", capsys)

    def session() -> Client:
        c = Client(broker.port, edge_user, edge_pw, client_id="farmedge-edge-1")
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.c.connect("127.0.0.1", broker.port, clean_start=False, properties=props)
        c.c.loop_start()
        assert c.connack.get(timeout=30) == 0
        return c

    e = session()
    assert e.subscribe("farm/v1/+/+/+/telemetry") == [1]
    e.close()  # away, its session kept
    pub = connected(broker, sim)
    n = 2500
    infos = [pub.c.publish("farm/v1/c/f/gw/telemetry", str(i).encode(), qos=1)
             for i in range(n)]
    for info in infos:
        info.wait_for_publish(30)
    pub.close()
    e = session()
    got = [int(e.messages.get(timeout=20).payload) for _ in range(n)]
    assert sorted(got) == list(range(n))
    e.close()


def test_gateway_config_is_valid_for_the_gateway_agent(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`farmedge gateway check-config` accepts the file provisioning wrote."""
    out_file = tmp_path / "gateway.toml"
    provision("gateway", "--county", "suihua", "--farm", "wang-12", "--gateway", "gw-0007",
              "--broker-dir", str(tmp_path / "b"), "--registry", str(tmp_path / "r.yaml"),
              "--mqtt-url", "mqtts://broker.example.org:8883", "--output", str(out_file),
              "--offline", capsys=capsys)
    assert out_file.stat().st_mode & 0o077 == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARMEDGE_")}
    res = subprocess.run([sys.executable, "-m", "farmedge", "gateway", "check-config",
                          "--config", str(out_file)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    from farmedge.config import load_settings
    from farmedge.gateway.settings import GatewaySettings

    s = load_settings(GatewaySettings, out_file)
    assert (s.county, s.farm, s.gateway) == ("suihua", "wang-12", "gw-0007")
    assert s.mqtt.username == s.mqtt.client_id == "suihua/wang-12/gw-0007"
    assert s.mqtt.password is not None
    rec = dynsec(tmp_path / "b")["suihua/wang-12/gw-0007"]
    assert rec["clientid"] == "suihua/wang-12/gw-0007"
    stored = f"$7${rec['iterations']}${rec['salt']}${rec['password']}"
    assert check_password(s.mqtt.password.get_secret_value(), stored)


@pytest.mark.slow
def test_provisioned_gateway_agent_reaches_the_edge_through_the_broker(
        tmp_path: Path, influxdb: InfluxServer, influx_db: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The whole enrolment: `provision gateway` writes the registry entry, the
    broker account and gateway.toml; the real gateway agent runs that file
    (plus a simulated sensor) against Mosquitto with the shipped config; the
    edge, with its own provisioned account and the registry, stores the
    gateway's readings and status."""
    from tests.edgeproc import EdgeProcess

    b = ShippedBroker(tmp_path / "broker").start()
    reg = tmp_path / "registry.yaml"
    conf = tmp_path / "gateway.toml"
    edge_proc = agent = None
    try:
        provision("gateway", "--county", "suihua", "--farm", "wang-12", "--gateway", "gw-0007",
                  "--broker-dir", str(b.config_dir), "--registry", str(reg),
                  "--mqtt-url", b.url, "--output", str(conf), capsys=capsys)
        edge_user, edge_pw = service(b, "edge", capsys)
        # A top-level key goes before the first table; the rest is appended.
        conf.write_text(conf.read_text().replace(
            "\n[mqtt]", f'\ndata_dir = "{tmp_path / "gw-data"}"\n\n[mqtt]', 1))
        with conf.open("a") as f:
            f.write("""
[outbox]
  commit_interval_s = 0.2
[uplink]
  batch_max_wait_s = 0.5
[status]
  interval_s = 1.0
[clock]
  source = "trust"
[[sensors]]
  driver = "simulated"
  id = "soil-1"
  kinds = ["soil_moisture", "soil_temperature"]
  interval_s = 0.5
""")
        edge_proc = EdgeProcess(mqtt_url=f"mqtt://127.0.0.1:{b.port}", influx_url=influxdb.url,
                                database=influx_db, data_dir=tmp_path / "edge", county="suihua",
                                extra_env={"FARMEDGE_MQTT_USERNAME": edge_user,
                                           "FARMEDGE_MQTT_PASSWORD": edge_pw,
                                           "FARMEDGE_REGISTRY": str(reg)}).start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FARMEDGE_")}
        log = (tmp_path / "agent.log").open("wb")
        agent = subprocess.Popen([sys.executable, "-m", "farmedge", "gateway", "run",
                                  "--config", str(conf)], cwd=ROOT, env=env, stdout=log,
                                 stderr=subprocess.STDOUT)

        def stored() -> bool:
            assert agent is not None and agent.poll() is None, \
                (tmp_path / "agent.log").read_text()[-2000:]
            return count(influxdb.url, influx_db, "soil", "moisture",
                         "\"gateway\" = 'gw-0007'") >= 3

        eventually(stored, timeout=30, what="the gateway's readings stored")
        eventually(lambda: count(influxdb.url, influx_db, "gateway", "online") >= 1,
                   what="the gateway's status stored")
        errors = influx_query(influxdb.url, 'SELECT "detail", "reason" FROM "ingest_errors"',
                              influx_db)
        assert errors == []
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(30)
        if edge_proc is not None:
            edge_proc.stop()
        b.stop()


def test_admin_credential_file_must_be_private(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "b"
    provision("init", "--broker-dir", str(d), capsys=capsys)
    admin = tmp_path / "b-admin.toml"
    assert admin.stat().st_mode & 0o777 == 0o600
    doc = tomllib.loads(admin.read_text())
    assert doc["username"] == "svc~admin" and len(doc["password"]) >= 32
    rec = dynsec(d)["svc~admin"]
    assert check_password(doc["password"],
                          f"$7${rec['iterations']}${rec['salt']}${rec['password']}")
    admin.chmod(0o644)
    assert main(["provision", "edge", "--broker-dir", str(d)]) == 1
    assert "chmod 600" in capsys.readouterr().err


def test_registry_doc_explains_every_key_and_its_example_loads(tmp_path: Path) -> None:
    """docs/registry.md has a table row for every key of every registry
    model, and its example is a valid registry."""
    import re

    from farmedge import registry as r

    doc = (ROOT / "docs" / "registry.md").read_text()
    rows = set(re.findall(r"^\| `(\w+)` \|", doc, re.M))
    for model in (r.Registry, r.Farm, r.GatewayEntry, r.SensorMeta, r.Plot, r.Herd, r.Contact):
        missing = set(model.model_fields) - rows
        assert not missing, f"{model.__name__}: {missing}"
    example = re.search(r"```yaml\n(.*?)```", doc, re.S)
    assert example is not None
    (tmp_path / "r.yaml").write_text(example.group(1))
    assert ("suihua", "wang-12", "gw-0007") in load_registry(tmp_path / "r.yaml").index()


def test_operators_provisioning_at_once_all_get_their_gateway_registered(
        broker: ShippedBroker, tmp_path: Path) -> None:
    """Eight `provision gateway` runs at once on one registry and the live
    broker: every gateway ends up in the registry and can connect, and the
    registry keeps its mode and group (it holds farmers' phone numbers)."""
    import grp

    reg = tmp_path / "registry.yaml"
    reg.write_text("## the county's farms\nfarms:\n  - county: c\n    farm: f0\n",
                   encoding="utf-8")
    reg.chmod(0o640)
    group = grp.getgrnam("nogroup").gr_gid if os.geteuid() == 0 else reg.stat().st_gid
    if os.geteuid() == 0:
        os.chown(reg, 0, group)
    procs = []
    for i in range(8):
        out = tmp_path / f"gw-{i}.toml"
        procs.append((out, subprocess.Popen(
            [sys.executable, "-m", "farmedge", "provision", "gateway", "--county", "c",
             "--farm", f"f{i % 2}", "--gateway", f"gw-{i}",
             "--broker-dir", str(broker.config_dir), "--registry", str(reg),
             "--mqtt-url", broker.url, "--output", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    for _, p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert set(load_registry(reg).index()) == {("c", f"f{i % 2}", f"gw-{i}")
                                               for i in range(8)}
    assert "## the county's farms" in reg.read_text()
    st = reg.stat()
    assert (st.st_mode & 0o777, st.st_gid) == (0o640, group)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".registry.yaml.")
                and not p.name.endswith(".lock")]
    for out, _ in procs:
        connected(broker, tomllib.loads(out.read_text())["mqtt"]).close()


def test_no_file_edit_under_a_running_broker(broker: ShippedBroker, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A wrong --admin-url (nothing there) or --offline while the broker runs
    the file: the broker would overwrite the edit on its next change and the
    gateway, told it is provisioned, would be refused. Refused instead, the
    file untouched, and the gateway provisioned live afterwards stays."""
    path = broker.config_dir / "dynamic-security.json"
    before = path.read_text()
    base = ["gateway", "--county", "c", "--farm", "f", "--gateway", "gw-1",
            "--broker-dir", str(broker.config_dir), "--registry", str(tmp_path / "r.yaml"),
            "--mqtt-url", broker.url]
    for extra in (["--admin-url", f"mqtt://127.0.0.1:{free_port()}"], ["--offline"]):
        capsys.readouterr()
        assert main(["provision", *base, *extra]) == 1, extra
        err = capsys.readouterr().err
        assert f"a broker (pid {broker.proc.pid if broker.proc else 0}) runs {path}" in err
        assert path.read_text() == before
    mq = gateway(broker, tmp_path, "c", "f", "gw-2", capsys)
    connected(broker, mq).close()
    assert "c/f/gw-2" in dynsec(broker.config_dir)


@pytest.mark.parametrize("older_admin", [False, True])
def test_revoke_clears_the_gateways_retained_status(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], older_admin: bool) -> None:
    """The broker publishes no will when it closes a deleted account's
    session: without revoke clearing it, the gateway's retained "online"
    status would greet every edge that subscribes, forever. Also on a broker
    whose admin role was made before the administrator could do that."""
    b = ShippedBroker(tmp_path / "broker")
    b.port = free_port()
    provision("init", "--broker-dir", str(b.config_dir), "--admin-url", b.url,
              "--broker-user", b.run_as, capsys=capsys)
    if older_admin:
        path = b.config_dir / "dynamic-security.json"
        doc = json.loads(path.read_text())
        for role in doc["roles"]:
            if role["rolename"] == "service:admin":
                role["acls"] = [a for a in role["acls"] if a["topic"].startswith("$CONTROL")]
        path.write_text(json.dumps(doc))  # keeps its owner and mode
    b.start()
    try:
        mq = gateway(b, tmp_path, "c", "f", "gw-1", capsys)
        edge = service(b, "edge", capsys)
        g = Client(b.port, mq["username"], mq["password"], client_id=mq["client_id"])
        g.c.will_set("farm/v1/c/f/gw-1/status", b'{"online": false}', qos=1, retain=True)
        assert g.connect() == 0
        assert g.publish("farm/v1/c/f/gw-1/status", b'{"online": true}') in {0, 16}
        g.c.publish("farm/v1/c/f/gw-1/status", b'{"online": true}', qos=1,
                    retain=True).wait_for_publish(10)
        out = provision("revoke", "--county", "c", "--farm", "f", "--gateway", "gw-1",
                        "--broker-dir", str(b.config_dir),
                        "--registry", str(tmp_path / "registry.yaml"), capsys=capsys)
        assert "warning" not in out
        eventually(g.dropped.is_set, what="the revoked gateway's connection closed")
        e = connected(b, edge, client_id="edge-1")
        assert e.subscribe("farm/v1/#") == [1]
        # A marker published after the subscription: anything retained came first.
        other = gateway(b, tmp_path, "c", "f", "gw-2", capsys)
        o = connected(b, other)
        assert o.publish("farm/v1/c/f/gw-2/status", b"marker") in {0, 16}
        first = e.messages.get(timeout=30)
        assert (first.topic, first.payload) == ("farm/v1/c/f/gw-2/status", b"marker")
        for c in (e, o):
            c.close()
        # The administrator still administers.
        gateway(b, tmp_path, "c", "f", "gw-3", capsys)
    finally:
        b.stop()
