"""farmedge provision nats: the users file, the nodes' authorization config
and the gateway's config, without a server (tests/integration/test_nats_trust.py
runs them on a real cluster)."""

from __future__ import annotations

import json
import stat
import tomllib
from pathlib import Path

import bcrypt
import pytest

from farmedge.cli import main
from farmedge.provision.errors import ProvisionError
from farmedge.provision.nats_auth import (
    EdgeScope,
    UserStore,
    edge_permissions,
    gateway_client_id,
    gateway_subjects,
    intruders,
    render_auth_conf,
)
from farmedge.transport.nats import partition_of


def test_gateway_subjects_are_the_mapped_ones_with_dots_as_double_slashes() -> None:
    p = partition_of("黑龙江", "farm.7", 16)
    assert gateway_subjects("黑龙江", "farm.7", "gw.1", 16) == [
        f"farmp.v1.{p}.黑龙江.farm//7.gw//1.telemetry", f"farmp.v1.{p}.黑龙江.farm//7.gw//1.status"]


def test_client_id_has_no_dot_and_stays_distinct() -> None:
    assert gateway_client_id("c", "f.1", "g") == "c/f:1/g"
    assert gateway_client_id("c", "f.1", "g") != gateway_client_id("c", "f1", "g")
    assert "." not in gateway_client_id("a.b", "c.d", "e.f")


def test_edge_may_use_only_its_streams_and_buckets() -> None:
    perms = edge_permissions(EdgeScope(stream="$MQTT_msgs", buckets=("leases",)))
    pub = perms["publish"]["allow"]
    assert "$JS.API.CONSUMER.MSG.NEXT.$MQTT_msgs.*" in pub
    assert "$KV.leases.>" in pub and "$JS.API.STREAM.INFO.KV_leases" in pub
    assert not any(s in pub for s in (">", "$JS.API.>", "$JS.API.STREAM.DELETE.$MQTT_msgs"))
    assert not any(s.startswith(("farm.v1.*.*.*", "farmp.v1.*.*")) for s in pub)


def _store(tmp_path: Path) -> UserStore:
    s = UserStore(tmp_path / "users.json", partitions=8)
    s.set("c1/f.1/g1", "gateway", "pw-a")
    s.set("c1/f.1/gone", "gateway", "pw-b")
    s.set("svc~edge", "edge", "pw-e")
    return s


def test_config_lists_registry_gateways_with_a_credential_and_the_services(
        tmp_path: Path) -> None:
    store = _store(tmp_path)
    text, rep = render_auth_conf(store, [("c1", "f.1", "g1"), ("c1", "f.1", "new")])
    assert '"c1/f.1/g1"' in text and '"svc~edge"' in text
    assert "gone" not in text  # no longer in the registry: left out
    assert rep.stale == ["c1/f.1/gone"] and rep.missing == ["c1/f.1/new"]
    assert (rep.gateways, rep.services) == (1, 1)
    assert "partition(8,1,2)" in text and "authorization {" in text
    assert "pw-a" not in text and "pw-e" not in text


def test_users_file_keeps_hashes_only_mode_600(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.save()
    raw = store.path.read_text()
    assert "pw-a" not in raw
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    again = UserStore.load(store.path)
    assert again.partitions == 8
    assert bcrypt.checkpw(b"pw-a", again.users["c1/f.1/g1"]["hash"].encode())


def test_a_broken_users_file_is_refused_with_its_name(tmp_path: Path) -> None:
    p = tmp_path / "users.json"
    p.write_text(json.dumps({"users": {"x": {"kind": "gateway", "hash": "plain"}}}))
    with pytest.raises(ProvisionError, match=r"users\.json"):
        UserStore.load(p)


def test_provision_nats_gateway_writes_its_config_and_logs_no_secret(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d, reg, out = tmp_path / "nats", tmp_path / "registry.yaml", tmp_path / "gw.toml"
    rc = main(["provision", "nats", "gateway", "--county", "c1", "--farm", "f.1", "--gateway",
               "g1", "--url", "mqtts://n1:8883", "--url", "mqtts://n2:8883", "--nats-dir",
               str(d), "--registry", str(reg), "-o", str(out)])
    assert rc == 0
    cfg = tomllib.loads(out.read_text())
    mq = cfg["mqtt"]
    assert mq["urls"] == ["mqtts://n1:8883", "mqtts://n2:8883"] and mq["protocol"] == "3.1.1"
    assert (mq["username"], mq["client_id"]) == ("c1/f.1/g1", "c1/f:1/g1")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    err = capsys.readouterr()
    assert mq["password"] not in err.err + err.out
    users = json.loads((d / "users.json").read_text())["users"]
    assert bcrypt.checkpw(mq["password"].encode(), users["c1/f.1/g1"]["hash"].encode())
    conf = (d / "auth.conf").read_text()
    assert '"c1/f.1/g1"' in conf and stat.S_IMODE((d / "auth.conf").stat().st_mode) == 0o600
    assert "c1" in reg.read_text()
    # Revoked: out of the users file and of the nodes' config.
    assert main(["provision", "nats", "revoke", "--county", "c1", "--farm", "f.1", "--gateway",
                 "g1", "--nats-dir", str(d), "--registry", str(reg)]) == 0
    assert '"c1/f.1/g1"' not in (d / "auth.conf").read_text()
    assert "g1" not in reg.read_text()  # out of the registry too (--keep-registry keeps it)
    assert main(["provision", "nats", "revoke", "--user", "nobody", "--nats-dir", str(d),
                 "--registry", str(reg)]) == 1


def test_provision_nats_edge_into_an_env_file(tmp_path: Path) -> None:
    d, env = tmp_path / "nats", tmp_path / ".env"
    assert main(["provision", "nats", "edge", "--name", "edge-a", "--env-file", str(env),
                 "--nats-dir", str(d), "--registry", str(tmp_path / "none.yaml")]) == 0
    lines = dict(ln.split("=", 1) for ln in env.read_text().splitlines())
    assert lines["EDGE_NATS_USER"] == "svc~edge-a"
    h = json.loads((d / "users.json").read_text())["users"]["svc~edge-a"]["hash"]
    assert bcrypt.checkpw(lines["EDGE_NATS_PASSWORD"].encode(), h.encode())


def test_config_settings_are_kept_and_checked(tmp_path: Path) -> None:
    d = tmp_path / "nats"
    args = ["--nats-dir", str(d), "--registry", str(tmp_path / "r.yaml")]
    assert main(["provision", "nats", "config", "--partitions", "4", "--bucket", "b1", *args]) == 0
    assert main(["provision", "nats", "config", *args]) == 0
    doc = json.loads((d / "users.json").read_text())
    assert doc["partitions"] == 4 and doc["edge"]["buckets"] == ["b1"]
    assert "partition(4,1,2)" in (d / "auth.conf").read_text()
    assert main(["provision", "nats", "config", "--bucket", "no.dots", *args]) == 1


def test_sessions_held_by_another_user_are_found() -> None:
    connz = {"server_name": "n1", "connections": [
        {"cid": 1, "authorized_user": "c/f.1/g1", "mqtt_client": "c/f:1/g1", "ip": "10.0.0.1"},
        {"cid": 2, "authorized_user": "c/f/g2", "mqtt_client": "c/f:1/g1", "ip": "10.0.0.2"},
        {"cid": 3, "authorized_user": "svc~edge", "mqtt_client": "edge-alerts"},
        {"cid": 4, "authorized_user": "svc~edge", "mqtt_client": "c/f/g2"},
        {"cid": 5, "authorized_user": "svc~edge"},  # a NATS client: no MQTT session
    ]}
    found = intruders(connz)
    assert [(i.cid, i.user) for i in found] == [(2, "c/f/g2"), (4, "svc~edge")]
    assert "n1: connection 2 from 10.0.0.2" in str(found[0])


def test_the_users_list_is_never_empty(tmp_path: Path) -> None:
    """nats-server lets anyone in when its users list is empty: a locked
    user is always there, whose password no one knows."""
    text, rep = render_auth_conf(UserStore(tmp_path / "users.json"), [])
    assert '"svc~locked"' in text and (rep.gateways, rep.services) == (0, 0)
    assert text.count("{ user: ") == 1
