"""`farmedge provision gateway --cluster-url ...`: the gateway of a NATS
cluster, without a server (tests/integration/test_gateway_mqtt311.py runs
the agent with such a config on a real cluster). Its config lists every node
and speaks MQTT 3.1.1; its account is a NATS user, as `provision nats
gateway` makes it, and no Mosquitto file is touched."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from farmedge.cli import main
from farmedge.config import load_settings
from farmedge.gateway.settings import GatewaySettings
from farmedge.provision.nats_auth import gateway_client_id

NODES = ["mqtts://nats-1.example.org:8883", "mqtts://nats-2.example.org:8883",
         "mqtts://nats-3.example.org:8883"]


def _provision(tmp_path: Path, *extra: str, gateway: str = "gw-0007") -> int:
    args = ["provision", "gateway", "--county", "suihua", "--farm", "wang.12",
            "--gateway", gateway, "--registry", str(tmp_path / "registry.yaml"),
            "--nats-dir", str(tmp_path / "nats"), "--broker-dir", str(tmp_path / "mosquitto"),
            *extra]
    return main(args)


def test_the_config_lists_every_node_in_3_1_1_with_a_nats_user(tmp_path: Path) -> None:
    out = tmp_path / "gw.toml"
    cluster = [a for u in NODES for a in ("--cluster-url", u)]
    assert _provision(tmp_path, *cluster, "--ca-file", "/etc/farmedge/ca.crt",
                      "-o", str(out)) == 0
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    doc = tomllib.loads(out.read_text())
    mqtt = doc["mqtt"]
    assert mqtt["urls"] == NODES and "url" not in mqtt
    assert mqtt["protocol"] == "3.1.1"
    assert mqtt["username"] == "suihua/wang.12/gw-0007"
    # NATS refuses "." in client ids.
    assert mqtt["client_id"] == gateway_client_id("suihua", "wang.12", "gw-0007") == \
        "suihua/wang:12/gw-0007"
    assert mqtt["ca_file"] == "/etc/farmedge/ca.crt"
    # The agent takes it as it is (what check-config runs).
    s = load_settings(GatewaySettings, out)
    assert [b.host for b in s.mqtt.brokers] == [
        "nats-1.example.org", "nats-2.example.org", "nats-3.example.org"]
    assert s.mqtt.protocol == "3.1.1"
    # The NATS user, in the cluster's users and the nodes' auth.conf; no
    # broker account.
    users = json.loads((tmp_path / "nats" / "users.json").read_text())
    assert "suihua/wang.12/gw-0007" in json.dumps(users)
    assert "suihua/wang.12/gw-0007" in (tmp_path / "nats" / "auth.conf").read_text()
    assert mqtt["password"] not in (tmp_path / "nats" / "users.json").read_text()
    assert not (tmp_path / "mosquitto").exists()
    assert "gw-0007" in (tmp_path / "registry.yaml").read_text()


def test_one_broker_or_a_cluster_and_the_urls_checked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _provision(tmp_path, "--mqtt-url", "mqtts://one.example.org:8883",
                      "--cluster-url", NODES[0]) == 1
    assert "not both" in capsys.readouterr().err
    assert _provision(tmp_path, "--cluster-url", NODES[0],
                      "--cluster-url", "http://nats-2.example.org") == 1
    err = capsys.readouterr().err
    assert "the nodes' URLs" in err and "http" in err
    assert not (tmp_path / "nats" / "users.json").exists()
    assert _provision(tmp_path, "--cluster-url", NODES[0], "--cluster-url", NODES[0]) == 1
    assert "again" in capsys.readouterr().err
    assert _provision(tmp_path, "--ca-file", "/x.crt", "--offline") == 1
    assert "--ca-file goes with --cluster-url" in capsys.readouterr().err


def test_printed_without_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _provision(tmp_path, "--cluster-url", NODES[1], "--cluster-url", NODES[2]) == 0
    doc = tomllib.loads(capsys.readouterr().out)
    assert doc["mqtt"]["urls"] == NODES[1:] and doc["mqtt"]["protocol"] == "3.1.1"
