"""`farmedge provision` and the shipped broker configuration, against a real
Mosquitto 2.0 running deploy/mosquitto/mosquitto.conf with the password file
and ACL that provisioning wrote."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from farmedge.cli import main
from farmedge.devservers import InfluxServer, influx_query
from farmedge.provision import check_password, hash_password
from farmedge.provision.broker import DEFAULT_ACL
from farmedge.registry import load_registry

from .stack_support import DEPLOY, DROPPED, ROOT, Client, ShippedBroker
from .support import count, eventually

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
    assert main(["provision", *argv]) == 0
    return capsys.readouterr().out


def gateway(broker: ShippedBroker, tmp_path: Path, county: str, farm: str, gw: str,
            capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    out = provision("gateway", "--county", county, "--farm", farm, "--gateway", gw,
                    "--broker-dir", str(broker.config_dir),
                    "--registry", str(tmp_path / "registry.yaml"),
                    "--mqtt-url", broker.url, capsys=capsys)
    doc = tomllib.loads(out)
    assert (doc["county"], doc["farm"], doc["gateway"]) == (county, farm, gw)
    mq: dict[str, str] = doc["mqtt"]
    broker.reload()
    eventually(lambda: _try_connect(broker, mq["username"], mq["password"]),
               what="provisioned gateway connects").close()
    return mq


def edge(broker: ShippedBroker, capsys: pytest.CaptureFixture[str],
         name: str = "edge") -> str:
    out = provision("edge", "--name", name, "--broker-dir", str(broker.config_dir),
                    capsys=capsys)
    lines = dict(ln.split(": ", 1) for ln in out.splitlines())
    assert lines["username"] == name
    return lines["password"]


def connected(broker: ShippedBroker, user: str | None, password: str | None) -> Client:
    c = Client(broker.port, user, password)
    assert c.connect() == 0
    return c


def test_shipped_acl_is_what_provisioning_writes() -> None:
    assert (DEPLOY / "mosquitto" / "acl").read_text() == DEFAULT_ACL


def test_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd is not installed (Debian package mosquitto)")
    f = tmp_path / "pw"
    f.write_text("")
    # The password on the command line is fine for a test: this is why
    # provisioning hashes in Python instead.
    subprocess.run([tool, "-b", str(f), "u", "s3cret"], check=True)
    stored = f.read_text().strip().split(":", 1)[1]
    assert stored.startswith("$7$101$")
    assert check_password("s3cret", stored)
    assert not check_password("s3cret!", stored)
    assert check_password("pw", hash_password("pw"))


def test_anonymous_and_wrong_password_refused(broker: ShippedBroker, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    creds = gateway(broker, tmp_path, "suihua", "wang-12", "gw-0007", capsys)
    anon = Client(broker.port)
    assert anon.connect() in REFUSED
    anon.close()
    wrong = Client(broker.port, creds["username"], creds["password"] + "x")
    assert wrong.connect() in REFUSED
    wrong.close()
    unknown = Client(broker.port, "suihua/wang-12/gw-9999", creds["password"])
    assert unknown.connect() in REFUSED
    unknown.close()
    ok = connected(broker, creds["username"], creds["password"])
    ok.close()


def test_gateway_publishes_only_under_its_own_path(broker: ShippedBroker, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    a = gateway(broker, tmp_path, "suihua", "wang-12", "gw-a", capsys)
    gateway(broker, tmp_path, "suihua", "wang-12", "gw-b", capsys)
    gateway(broker, tmp_path, "suihua", "li-3", "gw-c", capsys)
    edge_pw = edge(broker, capsys)
    broker.reload()  # gateway() reloaded before the edge was added
    sub = eventually(lambda: _try_connect(broker, "edge", edge_pw), what="edge connects")
    # A shared subscription, as several edge instances use it.
    assert sub.subscribe("$share/edge/farm/v1/+/+/+/telemetry") == [1]
    assert sub.subscribe("farm/v1/+/+/+/status") == [1]

    gw = connected(broker, a["username"], a["password"])
    forbidden = [
        "farm/v1/suihua/wang-12/gw-b/telemetry",   # as gateway B of the same farm
        "farm/v1/suihua/li-3/gw-c/telemetry",      # into another farm
        "farm/v1/suihua/li-3/gw-a/telemetry",      # its own name in another farm
        "farm/v1/other/wang-12/gw-a/telemetry",    # another county
        "farm/v1/suihua/wang-12/alerts",           # the edge's alerts topic
    ]
    for topic in forbidden:
        # Refused: a PUBACK "not authorized", or the connection closed.
        assert gw.publish(topic, b"forged") in {NOT_AUTHORIZED, DROPPED}, topic
        gw.close()
        gw = connected(broker, a["username"], a["password"])
    assert gw.publish("farm/v1/suihua/wang-12/gw-a/telemetry", b"own") == 0
    assert gw.publish("farm/v1/suihua/wang-12/gw-a/status", b"status") == 0
    # Messages from one client arrive in order: once the two allowed ones are
    # in, every forged one before them would have been too.
    got = [sub.messages.get(timeout=10) for _ in range(2)]
    assert sorted(m.topic for m in got) == ["farm/v1/suihua/wang-12/gw-a/status",
                                            "farm/v1/suihua/wang-12/gw-a/telemetry"]
    assert sub.messages.empty()
    # ... and reads nothing. Mosquitto 2.0 grants the subscription but the
    # ACL keeps every message from it (later versions refuse the SUBSCRIBE).
    assert gw.subscribe("farm/v1/#") in ([1], [NOT_AUTHORIZED])
    e2 = eventually(lambda: _try_connect(broker, "edge", edge_pw), what="edge connects")
    assert e2.publish("farm/v1/suihua/wang-12/alerts", b"alert") == 0
    assert gw.publish("farm/v1/suihua/wang-12/gw-a/telemetry", b"own again") == 0
    assert sub.messages.get(timeout=10).payload == b"own again"
    # The broker sends a client's messages in order: had it routed either of
    # the two to the gateway, they would be in before this PUBACK.
    assert gw.publish("farm/v1/suihua/wang-12/gw-a/status", b"last") == 0
    assert gw.messages.empty()
    gw.close()
    e2.close()
    sub.close()


def _try_connect(broker: ShippedBroker, user: str, password: str) -> Client | None:
    c = Client(broker.port, user, password)
    if c.connect() == 0:
        return c
    c.close()
    return None


def test_revoked_gateway_is_refused(broker: ShippedBroker, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    creds = gateway(broker, tmp_path, "suihua", "wang-12", "gw-0007", capsys)
    connected(broker, creds["username"], creds["password"]).close()
    reg = tmp_path / "registry.yaml"
    assert ("suihua", "wang-12", "gw-0007") in load_registry(reg).index()
    provision("revoke", "--county", "suihua", "--farm", "wang-12", "--gateway", "gw-0007",
              "--broker-dir", str(broker.config_dir), "--registry", str(reg), capsys=capsys)
    assert "suihua/wang-12/gw-0007" not in (broker.config_dir / "passwd").read_text()
    assert ("suihua", "wang-12", "gw-0007") not in load_registry(reg).index()
    broker.reload()

    def refused() -> bool:
        c = Client(broker.port, creds["username"], creds["password"])
        rc = c.connect()
        c.close()
        return rc in REFUSED

    eventually(refused, what="revoked gateway refused")


def test_simulator_publishes_anywhere_but_reads_nothing(
        broker: ShippedBroker, capsys: pytest.CaptureFixture[str]) -> None:
    out = provision("simulator", "--broker-dir", str(broker.config_dir), capsys=capsys)
    pw = dict(ln.split(": ", 1) for ln in out.splitlines())["password"]
    broker.reload()
    sim = eventually(lambda: _try_connect(broker, "simulator", pw), what="simulator connects")
    # 0x10: accepted, no subscriber matched.
    assert sim.publish("farm/v1/any/farm/gw/telemetry", b"x") in {0, 16}
    assert sim.subscribe("farm/v1/#") in ([1], [NOT_AUTHORIZED])
    assert sim.publish("farm/v1/any/farm/gw/telemetry", b"y") in {0, 16}
    assert sim.publish("farm/v1/any/farm/gw/status", b"z") in {0, 16}
    assert sim.messages.empty()
    sim.close()
    provision("revoke", "--user", "simulator", "--broker-dir", str(broker.config_dir),
              capsys=capsys)
    assert (broker.config_dir / "acl").read_text() == DEFAULT_ACL


def test_edge_credential_goes_into_the_env_file(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    env = tmp_path / ".env"
    env.write_text("# site settings\nGRAFANA_ADMIN_PASSWORD=x\nEDGE_MQTT_PASSWORD=old\n")
    provision("edge", "--broker-dir", str(tmp_path / "b"), "--env-file", str(env),
              capsys=capsys)
    lines = env.read_text().splitlines()
    assert lines[:2] == ["# site settings", "GRAFANA_ADMIN_PASSWORD=x"]
    pw = lines[2].split("=", 1)[1]
    assert lines[2].startswith("EDGE_MQTT_PASSWORD=") and pw != "old"
    stored = (tmp_path / "b" / "passwd").read_text().strip().split(":", 1)[1]
    assert check_password(pw, stored)
    assert env.stat().st_mode & 0o077 == 0


def test_registry_edits_keep_comments(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    reg = tmp_path / "registry.yaml"
    shutil.copy(ROOT / "registry.example.yaml", reg)
    before = reg.read_text()
    args = ["--broker-dir", str(tmp_path / "b"), "--registry", str(reg)]
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
    # Again: nothing changes.
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


def test_bad_ids_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["provision", "gateway", "--county", "a/b", "--farm", "f", "--gateway", "#",
               "--broker-dir", str(tmp_path), "--registry", str(tmp_path / "r.yaml")])
    assert rc == 1
    assert "county" in capsys.readouterr().err
    assert not (tmp_path / "passwd").exists()


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
    its credential, verifying the broker; anonymous TLS clients are refused."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    from farmedge.devservers import free_port

    work = tmp_path / "broker"
    _certs(work / "certs")
    b = ShippedBroker(work, tls_port=free_port()).start()
    try:
        creds = gateway(b, tmp_path, "suihua", "wang-12", "gw-tls", capsys)
        for user, password, want in ((creds["username"], creds["password"], {0}),
                                     (None, None, REFUSED)):
            c = Client(b.tls_port, user, password)
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

    edge_pw = edge(broker, capsys)
    out = provision("simulator", "--broker-dir", str(broker.config_dir), capsys=capsys)
    sim_pw = dict(ln.split(": ", 1) for ln in out.splitlines())["password"]
    broker.reload()

    def session() -> Client:
        c = Client(broker.port, "edge", edge_pw, client_id="farmedge-edge-1")
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.c.connect("127.0.0.1", broker.port, clean_start=False, properties=props)
        c.c.loop_start()
        assert c.connack.get(timeout=10) == 0
        return c

    eventually(lambda: _try_connect(broker, "edge", edge_pw), what="edge credential").close()
    e = session()
    assert e.subscribe("farm/v1/+/+/+/telemetry") == [1]
    e.close()  # away, its session kept
    pub = eventually(lambda: _try_connect(broker, "simulator", sim_pw), what="simulator")
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
              capsys=capsys)
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
    assert s.mqtt.username == "suihua/wang-12/gw-0007"
    assert s.mqtt.password is not None
    stored = (tmp_path / "b" / "passwd").read_text().split(":", 1)[1].strip()
    assert check_password(s.mqtt.password.get_secret_value(), stored)


@pytest.mark.slow
def test_provisioned_gateway_agent_reaches_the_edge_through_the_acl(
        tmp_path: Path, influxdb: InfluxServer, influx_db: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The whole enrolment: `provision gateway` writes the registry entry, the
    broker credential and gateway.toml; the real gateway agent runs that file
    (plus a simulated sensor) against Mosquitto with the shipped config; the
    edge, with its own provisioned credential and the registry, stores the
    gateway's readings and status."""
    from .edgeproc import EdgeProcess

    b = ShippedBroker(tmp_path / "broker").start()
    reg = tmp_path / "registry.yaml"
    conf = tmp_path / "gateway.toml"
    edge_proc = agent = None
    try:
        provision("gateway", "--county", "suihua", "--farm", "wang-12", "--gateway", "gw-0007",
                  "--broker-dir", str(b.config_dir), "--registry", str(reg),
                  "--mqtt-url", b.url, "--output", str(conf), capsys=capsys)
        edge_pw = edge(b, capsys)
        b.reload()
        eventually(lambda: _try_connect(b, "edge", edge_pw), what="credentials").close()
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
                           extra_env={"FARMEDGE_MQTT_USERNAME": "edge",
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
