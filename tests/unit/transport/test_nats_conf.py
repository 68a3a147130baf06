"""The NATS nodes' configuration: one generator (farmedge.transport.nats_conf)
for the test cluster and the compose layout's committed files, which
``farmedge provision nats-cluster --check`` keeps current. No server here:
tests/integration/test_compose_cluster.py runs the committed files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from farmedge.cli import main
from farmedge.provision import nats_cluster
from farmedge.provision.nats_auth import UserStore
from farmedge.transport.nats_conf import NodeConf, node_conf, server_mapping_conf
from farmedge.transport.nats_settings import SourceSection

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy" / "nats"


def test_the_committed_node_files_are_what_the_command_writes() -> None:
    assert main(["provision", "nats-cluster", "--check", "--out", str(DEPLOY)]) == 0
    assert sorted(p.name for p in DEPLOY.glob("*.conf")) == [
        "nats-1.conf", "nats-2.conf", "nats-3.conf"]


def test_the_committed_tls_node_files_are_what_the_command_writes() -> None:
    """deploy/nats/tls (docker-compose.cluster-tls.yml): the same nodes with
    TLS on every listener, the certificates of /etc/nats/certs, and the
    users' file of the folder above."""
    tls = DEPLOY / "tls"
    assert main(["provision", "nats-cluster", "--check", "--tls-dir", "/etc/nats/certs",
                 "--auth-include", "../auth.conf", "--out", str(tls)]) == 0
    assert sorted(p.name for p in tls.iterdir()) == ["nats-1.conf", "nats-2.conf",
                                                      "nats-3.conf"]
    for host in ("nats-1", "nats-2", "nats-3"):
        plain, text = (DEPLOY / f"{host}.conf").read_text(), (tls / f"{host}.conf").read_text()
        assert text.count(f'cert_file: "/etc/nats/certs/{host}.crt"') == 3
        assert text.count("verify: true") == 1  # the routes
        assert text.endswith('include "../auth.conf"\n')
        # Nothing else differs from the plain files.
        strip = [ln for ln in text.splitlines() if "tls {" not in ln]
        assert strip[5:-1] == plain.splitlines()[5:-1]


def test_check_fails_on_a_stale_or_stray_file(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nats"
    assert main(["provision", "nats-cluster", "--out", str(out)]) == 0
    assert main(["provision", "nats-cluster", "--check", "--out", str(out)]) == 0
    # Other options are other files: the committed ones are stale.
    assert main(["provision", "nats-cluster", "--check", "--out", str(out),
                 "--tls-dir", "/etc/nats/certs"]) == 1
    assert "out of date (run farmedge provision nats-cluster)" in capsys.readouterr().err
    # The users' file beside them is provision nats's, not a stray one.
    (out / "auth.conf").write_text("authorization {}\n")
    assert main(["provision", "nats-cluster", "--check", "--out", str(out)]) == 0
    (out / "nats-2.conf").write_text((out / "nats-2.conf").read_text() + "# edited\n")
    assert main(["provision", "nats-cluster", "--check", "--out", str(out)]) == 1
    assert "nats-2.conf" in capsys.readouterr().err
    assert main(["provision", "nats-cluster", "--out", str(out)]) == 0
    (out / "nats-4.conf").write_text("")
    assert main(["provision", "nats-cluster", "--check", "--out", str(out)]) == 1
    assert "nats-4.conf" in capsys.readouterr().err


def test_every_node_routes_to_the_others_and_includes_the_users() -> None:
    files = nats_cluster.files(Path("x"), ["a.example.org", "b.example.org", "c.example.org"])
    assert [p.name for p in files] == ["a.example.org.conf", "b.example.org.conf",
                                       "c.example.org.conf"]
    for path, text in files.items():
        host = path.name.removesuffix(".conf")
        assert f'server_name: "{host}"' in text
        routes = set(re.findall(r'"nats-route://([^"]+)"', text))
        assert routes == {f"{h}:6222" for h in ("a.example.org", "b.example.org",
                                                "c.example.org") if h != host}
        assert "stream_replicas: 3" in text
        # The mapping comes with the users' permissions (provision nats),
        # with the edges' partition count by default.
        assert text.endswith('include "auth.conf"\n') and "mappings" not in text
        assert 'store_dir: "/data/jetstream"' in text
        assert "tls" not in text
    assert UserStore(Path("x")).partitions == SourceSection().partitions
    assert server_mapping_conf(16) in node_conf(NodeConf(
        name="t", listen="x:1", cluster_listen="x:2", mqtt_listen="x:3", http_listen="x:4",
        store_dir="/d", routes=[]))


def test_tls_on_the_client_mqtt_and_route_listeners() -> None:
    files = nats_cluster.files(Path("x"), ["a", "b", "c"], tls_dir="/etc/nats/certs")
    text = files[Path("x/b.conf")]
    blocks = re.findall(r"tls \{([^}]*)\}", text)
    assert len(blocks) == 3  # client, route, MQTT
    for b in blocks:
        assert '"/etc/nats/certs/b.crt"' in b and '"/etc/nats/certs/b.key"' in b
        assert '"/etc/nats/certs/ca.crt"' in b
    assert sum("verify: true" in b for b in blocks) == 1  # the routes: mutual TLS


def test_a_smaller_cluster_sizes_the_mqtt_streams_to_it() -> None:
    [text] = nats_cluster.files(Path("x"), ["solo"]).values()
    assert "stream_replicas: 1" in text and "routes: [\n    \n  ]" in text


def test_a_setting_with_a_quote_is_refused() -> None:
    with pytest.raises(ValueError, match="no quotes"):
        node_conf(NodeConf(name='a"b', listen="x:1", cluster_listen="x:2", mqtt_listen="x:3",
                           http_listen="x:4", store_dir="/d", routes=[]))
    assert main(["provision", "nats-cluster", "--hosts", "a,a", "--out", "/nonexistent"]) == 2
