"""docker-compose.cluster.yml: three NATS nodes, three edges reading the
cluster, InfluxDB as one server, Grafana. No Docker engine runs here: the
file is checked against the Compose Specification's JSON schema and by
`docker-compose config`, and the NATS services' command line runs here
without Docker, with the committed deploy/nats/*.conf (ports moved to free
loopback ports, the store to a temporary folder): the three processes form
a cluster with JetStream and MQTT, pass the compose health check, and carry
an MQTT message to the edges' partition consumers."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from farmedge.contract import telemetry_topic
from farmedge.provision.nats_auth import UserStore
from farmedge.provision.nats_cluster import AUTH_INCLUDE, PORTS, STORE_DIR
from farmedge.transport.nats_settings import SourceSection
from farmedge_dev.natscluster import MIN_VERSION, NatsCluster, NatsNode
from tests.compose_support import (
    binds,
    docker_compose,
    dotenv,
    filled_env,
    interpolate,
    load_compose,
)
from tests.stack_support import ROOT

CLUSTER = ROOT / "docker-compose.cluster.yml"
TLS = ROOT / "docker-compose.cluster-tls.yml"
NODES = ("nats-1", "nats-2", "nats-3")
EDGES = ("edge-a", "edge-b", "edge-c")
SERVICES = ("preflight", *NODES, "influxdb", "grafana", *EDGES)
#: Where a node's container has deploy/nats.
ETC = "/etc/nats"


def cluster() -> dict[str, Any]:
    return load_compose(CLUSTER)


def with_tls() -> dict[str, Any]:
    """docker-compose.cluster.yml with docker-compose.cluster-tls.yml on top,
    merged as compose merges (a command replaced, environment by name,
    volumes by target)."""
    doc = cluster()
    for name, over in load_compose(TLS).get("services", {}).items():
        svc = doc["services"][name]
        for key, value in over.items():
            if key == "environment":
                svc[key] = {**svc[key], **value}
            elif key == "volumes":
                def target(v: Any) -> str:
                    return str(v["target"] if isinstance(v, dict) else v.split(":")[1])
                theirs = {target(v) for v in value}
                svc[key] = [v for v in svc[key] if target(v) not in theirs] + value
            else:
                svc[key] = value
    return doc


def single() -> dict[str, Any]:
    return load_compose(ROOT / "docker-compose.yml")


def _mounts(node: str) -> dict[str, str]:
    """Target -> source of a node's short-syntax folder mounts."""
    out = {}
    for v in cluster()["services"][node]["volumes"]:
        src, target = v.split(":")[:2]
        if src.startswith("./"):
            out[target] = src
    return out


def _conf(node: str) -> Path:
    return ROOT / _mounts(node)[ETC] / f"{node}.conf"


def _script(node: str, doc: dict[str, Any] | None = None) -> str:
    cmd = (doc or cluster())["services"][node]["command"]
    assert cmd[:2] == ["/bin/sh", "-c"]
    script: str = cmd[2]
    return script


def test_the_file_matches_the_compose_specification() -> None:
    schema = json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())
    jsonschema.validate(cluster(), schema, cls=jsonschema.Draft201909Validator)


def test_influxdb_grafana_and_the_preflight_are_the_single_broker_files() -> None:
    """The same services as docker-compose.yml (a change to one must go to
    both); the preflight checks the same secrets less the Mosquitto edge's."""
    ours, theirs = cluster()["services"], single()["services"]
    assert ours["influxdb"] == theirs["influxdb"]
    assert ours["grafana"] == theirs["grafana"]
    mqtt_only = {"EDGE_MQTT_PASSWORD"}
    assert ours["preflight"]["command"] == [
        v for v in theirs["preflight"]["command"] if v not in mqtt_only] + [
        "EDGE_NATS_PASSWORD"]
    assert ours["preflight"]["environment"] == {
        **{k: v for k, v in theirs["preflight"]["environment"].items() if k not in mqtt_only},
        "EDGE_NATS_PASSWORD": "${EDGE_NATS_PASSWORD:?run farmedge provision nats edge "
                              "--env-file .env}"}
    for key in ("image", "entrypoint", "volumes", "restart", "logging"):
        assert ours["preflight"][key] == theirs["preflight"][key], key
    # Every secret the file reads is checked by the preflight, and every
    # service waits for it.
    secrets = set(re.findall(r"\$\{(\w*(?:PASSWORD|TOKEN)\w*)", CLUSTER.read_text()))
    assert secrets and secrets <= set(ours["preflight"]["command"])
    for name, svc in ours.items():
        if name != "preflight":
            assert svc["depends_on"]["preflight"] == {
                "condition": "service_completed_successfully"}, name


def test_every_service_restarts_has_a_healthcheck_and_binds_locally() -> None:
    doc = cluster()
    assert set(doc["services"]) == set(SERVICES)
    for name, svc in doc["services"].items():
        assert svc["restart"] == ("no" if name == "preflight" else "unless-stopped"), name
        if name != "preflight":
            assert "healthcheck" in svc, name
        for port in svc.get("ports", []):
            assert port.startswith("${FARMEDGE_BIND:-127.0.0.1}:"), (name, port)
        for vol in svc.get("volumes", []):
            src = vol["source"] if isinstance(vol, dict) else vol.split(":", 1)[0]
            assert src in doc["volumes"] or src.startswith(("./", "${")), (name, vol)
    # Each node and each edge has its own state.
    data = [v.split(":", 1)[0] for n in (*NODES, *EDGES) for v in doc["services"][n]["volumes"]
            if isinstance(v, str) and not v.startswith("./")]
    assert len(data) == len(set(data)) == len(NODES) + len(EDGES)
    # The gateways reach every node's MQTT listener, each on a port of its own here.
    published = [doc["services"][n]["ports"][0].rsplit(":", 1) for n in NODES]
    assert all(container == str(PORTS["mqtt"]) for _, container in published)
    assert len({host for host, _ in published}) == len(NODES)


def test_each_node_runs_its_generated_file_and_the_edges_read_its_partitions() -> None:
    services = cluster()["services"]
    for node in NODES:
        svc = services[node]
        # The whole folder, read-only: provisioning replaces auth.conf by a
        # new file, which a single-file mount would not show the node.
        assert f"./deploy/nats:{ETC}:ro" in svc["volumes"]
        assert _script(node).endswith(f"exec nats-server --config {ETC}/{node}.conf")
        assert f":{PORTS['http']}/healthz" in svc["healthcheck"]["test"][-1]
        text = _conf(node).read_text()
        assert f'server_name: "{node}"' in text
        assert set(re.findall(r'"nats-route://([^"]+)"', text)) == {
            f"{n}:{PORTS['cluster']}" for n in NODES if n != node}
        assert f'store_dir: "{STORE_DIR}"' in text
        assert any(v.endswith(":" + STORE_DIR.rsplit("/", 1)[0]) for v in svc["volumes"]
                   if isinstance(v, str))
        # The partition mapping is auth.conf's (with the users' permissions).
        assert f'include "{AUTH_INCLUDE}"' in text and "mappings" not in text
    partitions = {UserStore(Path("unused")).partitions}
    envs = []
    for edge in EDGES:
        env = dict(services[edge]["environment"])
        assert env.pop("FARMEDGE_INSTANCE") == edge
        envs.append(env)
        keys = {k.removeprefix("FARMEDGE_SOURCE_").lower(): v for k, v in env.items()
                if k.startswith("FARMEDGE_SOURCE_")}
        if "nats_urls" in keys:
            keys["nats_urls"] = json.loads(keys["nats_urls"])
        src = SourceSection.model_validate(keys)
        assert src.kind == "nats"
        assert src.nats_urls == [f"nats://{n}:{PORTS['client']}" for n in NODES]
        assert partitions == {src.partitions}, "provision nats's mapping and the edges disagree"
        assert src.nats_user == "${EDGE_NATS_USER:-svc~edge}"
        assert services[edge]["command"] == ["edge", "run"]
        assert services[edge]["build"]["target"] == "edge"
    assert envs[0] == envs[1] == envs[2]
    # The same InfluxDB, registry and rules as the single broker's edge.
    theirs = single()["services"]["edge"]
    for key, value in theirs["environment"].items():
        if key.startswith(("FARMEDGE_INFLUX_", "FARMEDGE_REGISTRY", "FARMEDGE_ALERTS_",
                           "FARMEDGE_HTTP_", "FARMEDGE_DATA_DIR", "FARMEDGE_LOG_")):
            assert envs[0][key] == value, key
    for edge in EDGES:
        assert {k: v for k, v in binds(services[edge]).items()} == binds(theirs)
        assert services[edge]["healthcheck"] == theirs["healthcheck"]


def _edge_env(edge: str, site: dict[str, str], tmp_path: Path,
              doc: dict[str, Any] | None = None) -> dict[str, str]:
    """An edge service's environment as compose gives it (``site`` is the
    .env; ``doc`` the compose files, docker-compose.cluster.yml's by
    default), container paths moved here: the registry and rules to the
    repository's files, the data folder to ``tmp_path``."""
    svc = (doc or cluster())["services"][edge]
    env = {k: interpolate(str(v), site) for k, v in svc["environment"].items()}
    mounts = {t: interpolate(v["source"], site) for t, v in binds(svc).items()}
    env["FARMEDGE_REGISTRY"] = str(ROOT / mounts[env["FARMEDGE_REGISTRY"]])
    env["FARMEDGE_ALERTS_RULES"] = json.dumps(
        [str(ROOT / mounts[p]) for p in json.loads(env["FARMEDGE_ALERTS_RULES"])])
    env["FARMEDGE_DATA_DIR"] = str(tmp_path / edge)
    return env


def test_each_edges_environment_passes_check_config(tmp_path: Path) -> None:
    """`farmedge edge check-config` with each edge service's environment (the
    site's .env filled in): no error, no variable that sets nothing, the
    cluster's three nodes as the source and the edge's own name."""
    site = dotenv(filled_env(tmp_path))
    site["FARMEDGE_REGISTRY_FILE"] = str(ROOT / "registry.example.yaml")
    base = {k: v for k, v in os.environ.items() if not k.startswith("FARMEDGE_")}
    for edge in EDGES:
        out = subprocess.run(
            [sys.executable, "-m", "farmedge", "edge", "check-config"], cwd=ROOT,
            env={**base, **_edge_env(edge, site, tmp_path), "PYTHONPATH": str(ROOT)},
            capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "warning" not in (out.stdout + out.stderr).lower(), out.stdout + out.stderr
        assert ("source: NATS nats://nats-1:4222, nats://nats-2:4222, nats://nats-3:4222; "
                "stream $MQTT_msgs, 16 partitions") in out.stdout, out.stdout
        assert f"as {edge}, taken over within" in out.stdout, out.stdout


def test_the_image_is_a_server_new_enough_for_the_ids_and_the_leases() -> None:
    image = cluster()["services"]["nats-1"]["image"]
    m = re.fullmatch(r"nats:(\d+)\.(\d+)(?:\.(\d+))?-alpine", image)
    assert m, image  # the alpine variant has the shell and wget of the health check
    assert (int(m[1]), int(m[2]), int(m[3] or 99)) >= MIN_VERSION
    assert {cluster()["services"][n]["image"] for n in NODES} == {image}


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    tool = docker_compose()
    env = filled_env(tmp_path)
    # No Mosquitto edge here: its password is not needed.
    text = env.read_text().replace("EDGE_MQTT_PASSWORD=s3cret-edge_mqtt_password\n", "")
    env.write_text(text)
    base = [tool, "--project-directory", str(ROOT), "-f", str(CLUSTER), "--env-file", str(env)]
    out = subprocess.run([*base, "config"], capture_output=True, text=True, check=False,
                         env={k: v for k, v in os.environ.items()
                              if not k.startswith(("INFLUX_", "GRAFANA_", "EDGE_"))})
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert set(cfg["services"]) == set(SERVICES)
    assert cfg["services"]["edge-b"]["environment"]["FARMEDGE_INFLUX_PASSWORD"] == \
        "s3cret-influx_edge_password"
    hosts = set()
    for svc in cfg["services"].values():
        for p in svc.get("ports", []):
            # docker-compose v1 prints "ip:published:target", v2 a mapping.
            ip, published = ((p["host_ip"], p["published"]) if isinstance(p, dict)
                             else p.split(":")[:2])
            assert ip == "127.0.0.1"
            hosts.add(int(published))
    assert {1883, 1884, 1885, 8081, 8082, 8083} <= hosts
    # Without the passwords nothing starts.
    bare = tmp_path / "bare.env"
    bare.write_text("FARMEDGE_BIND=127.0.0.1\n")
    refused = subprocess.run([tool, "--project-directory", str(ROOT), "-f", str(CLUSTER),
                              "--env-file", str(bare), "config"], capture_output=True,
                             text=True, check=False,
                             env={k: v for k, v in os.environ.items()
                                  if not k.startswith(("INFLUX_", "GRAFANA_", "EDGE_"))})
    assert refused.returncode != 0 and "in .env" in refused.stderr


def test_the_preflight_refuses_placeholders() -> None:
    svc = cluster()["services"]["preflight"]
    script = ROOT / binds(svc)["/farmedge/preflight.sh"]["source"]
    shipped = dotenv(ROOT / ".env.example")
    out = subprocess.run(["sh", str(script), *svc["entrypoint"][2:], *svc["command"]],
                         capture_output=True, text=True, timeout=30, check=False,
                         env={"PATH": os.environ["PATH"],
                              **{k: shipped.get(k, "") for k in svc["command"]}})
    assert out.returncode == 1
    assert "INFLUX_EDGE_PASSWORD" in out.stderr and "EDGE_MQTT_PASSWORD" not in out.stderr
    assert "farmedge provision edge" not in out.stderr  # no hint for a password not asked


def _here(text: str, node: NatsNode, nodes: list[NatsNode]) -> str:
    """A committed node file with the container's addresses moved to this
    machine's free loopback ports and its store to the node's folder."""
    for what, port in (("client", node.client_port), ("cluster", node.cluster_port),
                       ("mqtt", node.mqtt_port), ("http", node.http_port)):
        text = text.replace(f'"0.0.0.0:{PORTS[what]}"', f'"127.0.0.1:{port}"')
    for other in nodes:
        text = text.replace(f'"nats-route://{other.name}:{PORTS["cluster"]}"',
                            f'"nats-route://127.0.0.1:{other.cluster_port}"')
    text = text.replace(f'"{STORE_DIR}"', json.dumps(str(node.workdir / "jetstream")))
    assert "0.0.0.0" not in text and STORE_DIR not in text and "nats-route://nats" not in text
    return text


def _node_argv(node: str, etc: Path, binary: str,
               doc: dict[str, Any] | None = None) -> list[str]:
    """A node service's command line, run here: its folder mount at ``etc``,
    ``nats-server`` the binary given."""
    script = _script(node, doc).replace(f"{ETC}/", f"{etc}/")
    script = script.replace("exec nats-server ", f"exec {binary} ")
    return ["/bin/sh", "-c", script]


def test_a_node_refuses_to_start_without_the_users_file(tmp_path: Path) -> None:
    """The node service's command, run by sh with deploy/nats moved into a
    temporary folder: without auth.conf it stops with a message naming the
    command that writes it (nats-server would fail on the missing include
    and be restarted again and again); with it, it runs the server (here a
    stand-in that records its arguments)."""
    etc = tmp_path / "nats"
    etc.mkdir()
    (etc / "nats-2.conf").write_text(_conf("nats-2").read_text())
    fake = tmp_path / "bin" / "nats-server"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "ran"}\n')
    fake.chmod(0o755)
    argv = _node_argv("nats-2", etc, str(fake))
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 1
    assert "farmedge provision nats edge --env-file .env" in " ".join(out.stderr.split())
    assert not (tmp_path / "ran").exists()
    (etc / AUTH_INCLUDE).write_text("authorization { users: [] }\n")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "ran").read_text().split() == ["--config", f"{etc}/nats-2.conf"]


def _start_nodes(nodes: NatsCluster, tmp_path: Path, auth_conf: Path,
                 certs: Path | None = None) -> None:
    """The three node services' command lines, each with its committed file
    moved to its loopback ports and the given auth.conf beside it; returns
    once the cluster is ready (routes, JetStream's meta group of 3, the MQTT
    ports). With ``certs`` (what `provision nats-certs` wrote), the TLS
    layout's: docker-compose.cluster-tls.yml's command lines and
    deploy/nats/tls/, the certificates in the folder's certs/."""
    from farmedge_dev.natscluster import nats_server_binary

    binary = nats_server_binary()
    for node in nodes.nodes:
        etc = tmp_path / "etc" / node.name  # its deploy/nats, with its own ports
        etc.mkdir(parents=True)
        (etc / AUTH_INCLUDE).write_text(auth_conf.read_text())
        if certs is None:
            (etc / f"{node.name}.conf").write_text(
                _here(_conf(node.name).read_text(), node, nodes.nodes))
            node.spawn_argv(_node_argv(node.name, etc, binary))
            continue
        shutil.copytree(certs, etc / "certs")
        (etc / "tls").mkdir()
        text = _here((ROOT / "deploy" / "nats" / "tls" / f"{node.name}.conf").read_text(),
                     node, nodes.nodes)
        (etc / "tls" / f"{node.name}.conf").write_text(
            text.replace(f'"{ETC}/certs/', f'"{etc}/certs/'))
        node.spawn_argv(_node_argv(node.name, etc, binary, with_tls()))
    nodes.wait_ready(120)


def _named_nodes(root: Path) -> NatsCluster:
    """Nodes on free loopback ports, named as the compose services (the
    server_name of their files: the routes report it)."""
    nodes = NatsCluster(root)
    for node, name in zip(nodes.nodes, NODES, strict=True):
        node.name = name
    return nodes


@pytest.mark.servers
async def test_the_nodes_command_lines_form_a_cluster_with_jetstream_and_mqtt(
        tmp_path: Path, county: str) -> None:
    """The three node services' command lines with the committed files and
    the auth.conf `farmedge provision nats` writes: a cluster with JetStream
    and MQTT that passes the compose health check, lets the edges' user read
    a provisioned gateway's QoS 1 message, and keeps the MQTT streams on
    three replicas."""
    import tomllib

    import nats

    from farmedge.cli import main
    from farmedge.transport import nats as tn
    from tests.nats_support import Publisher, drain, prepare

    services = cluster()["services"]
    # The users: the edges' (as .env gets it), a gateway's, an operator's.
    nats_dir, registry = tmp_path / "users", tmp_path / "registry.yaml"
    common = ["--nats-dir", str(nats_dir), "--registry", str(registry)]
    env_file = tmp_path / ".env"
    assert main(["provision", "nats", "edge", "--env-file", str(env_file), *common]) == 0
    edge_env = dotenv(env_file)
    gw_toml = tmp_path / "gw.toml"
    assert main(["provision", "nats", "gateway", "--county", county, "--farm", "farm.7",
                 "--gateway", "gw-1", "--url", "mqtt://127.0.0.1:1883", "-o", str(gw_toml),
                 *common]) == 0
    gw = tomllib.loads(gw_toml.read_text())["mqtt"]
    admin_file = tmp_path / "admin.env"
    assert main(["provision", "nats", "admin", "--env-file", str(admin_file), *common]) == 0
    admin = dotenv(admin_file)

    nc3 = _named_nodes(tmp_path / "nats")
    try:
        await asyncio.to_thread(_start_nodes, nc3, tmp_path, nats_dir / AUTH_INCLUDE)
        for node in nc3.nodes:
            check = services[node.name]["healthcheck"]["test"]
            assert check[0] == "CMD"
            argv = [a.replace(f"127.0.0.1:{PORTS['http']}", f"127.0.0.1:{node.http_port}")
                    for a in check[1:]]
            ran = await asyncio.to_thread(subprocess.run, argv, capture_output=True,
                                          timeout=30, check=False)
            assert ran.returncode == 0, (node.name, ran.stderr)

        # The edges' [source] (the compose file's: default partitions, its user).
        cfg = SourceSection.model_validate({
            "kind": "nats", "nats_urls": nc3.urls, "consumer_prefix": "compose-p",
            "nats_user": edge_env["EDGE_NATS_USER"],
            "nats_password": edge_env["EDGE_NATS_PASSWORD"]})
        await prepare(cfg)
        for url in nc3.urls:
            conn = await tn.connect(cfg.model_copy(update={"nats_urls": [url]}), "test")
            try:
                await tn.check_partition_mapping(conn, cfg)
            finally:
                await conn.close()
        # The gateway's QoS 1 message into node 1, read through node 3.
        pub = Publisher(nc3.nodes[0].mqtt_port, client_id=gw["client_id"],
                        username=gw["username"], password=gw["password"]).connect()
        try:
            pub.publish(telemetry_topic(county, "farm.7", "gw-1"), "hello")
            assert pub.wait_acked(1) == 1
        finally:
            pub.close()
        far = cfg.model_copy(update={"nats_urls": [nc3.nodes[2].url]})
        assert await drain(far, county) == ["hello"]
        conn = await nats.connect(nc3.urls, user=admin["NATS_ADMIN_USER"],
                                  password=admin["NATS_ADMIN_PASSWORD"])
        try:
            js = conn.jetstream()
            for stream in ("$MQTT_sess", "$MQTT_msgs"):
                info = await js.stream_info(stream)
                assert info.config.num_replicas == 3, stream
        finally:
            await conn.close()
    finally:
        nc3.stop()


@pytest.mark.servers
@pytest.mark.slow
def test_the_whole_layout_stores_a_provisioned_gateways_reading(tmp_path: Path) -> None:
    """The layout run here as the compose file runs it: the node services
    as above, the three edge services' command and environment (.env.example
    filled in, the edges' NATS user from `provision nats edge --env-file`;
    host names pointed at the loopback nodes and at a local InfluxDB 1.x
    with v1-setup.iql's write-only user, which the compose file's
    INFLUX_EDGE_* name; container paths at a temporary folder), and a gateway
    given its user and config by `provision gateway --cluster-url`. The three
    edges share the 16 partitions, each owned by one of them; the image's
    health check passes for each; the gateway's reading, published through
    node 2, is stored."""
    import tomllib

    from farmedge.cli import main
    from tests.nats_support import Publisher
    from tests.stack_support import ENV, GRAFANA_USER, AuthInflux, query, setup_v1
    from tests.support import eventually, make_payload

    env_file = filled_env(tmp_path)
    registry = tmp_path / "registry.yaml"
    registry.write_text((ROOT / "registry.example.yaml").read_text())
    nats_dir = tmp_path / "nats-users"
    common = ["--nats-dir", str(nats_dir), "--registry", str(registry)]
    assert main(["provision", "nats", "edge", "--env-file", str(env_file), *common]) == 0
    nodes = _named_nodes(tmp_path / "nats")
    gw_toml = tmp_path / "gw-0007.toml"
    assert main(["provision", "gateway", "--county", "suihua", "--farm", "wang-12",
                 "--gateway", "gw-0007", "-o", str(gw_toml), *common,
                 *[a for n in nodes.nodes for a in ("--cluster-url", n.mqtt_url)]]) == 0
    gw = tomllib.loads(gw_toml.read_text())["mqtt"]
    site = dotenv(env_file)
    assert site["EDGE_NATS_USER"] == "svc~edge" and site["EDGE_NATS_PASSWORD"]
    site.update({"INFLUX_EDGE_USER": ENV["INFLUX_EDGE_USER"],
                 "INFLUX_EDGE_PASSWORD": ENV["INFLUX_EDGE_PASSWORD"],
                 "INFLUX_DATABASE": ENV["INFLUX_DATABASE"],
                 "FARMEDGE_REGISTRY_FILE": str(registry)})
    influx = setup_v1(AuthInflux(tmp_path / "influx").start())
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ports: dict[str, int] = {}
    try:
        _start_nodes(nodes, tmp_path, nats_dir / AUTH_INCLUDE)
        urls = {f"nats://{n.name}:{PORTS['client']}": n.url for n in nodes.nodes}
        base = {k: v for k, v in os.environ.items() if not k.startswith("FARMEDGE_")}
        for edge in EDGES:
            env = _edge_env(edge, site, tmp_path)
            env["FARMEDGE_SOURCE_NATS_URLS"] = json.dumps(
                [urls[u] for u in json.loads(env["FARMEDGE_SOURCE_NATS_URLS"])])
            ports[edge] = _free_port()
            env.update({"FARMEDGE_INFLUX_URL": influx.url, "FARMEDGE_HTTP_HOST": "127.0.0.1",
                        "FARMEDGE_HTTP_PORT": str(ports[edge])})
            log = (tmp_path / f"{edge}.log").open("wb")
            procs[edge] = subprocess.Popen(
                [sys.executable, "-m", "farmedge", *cluster()["services"][edge]["command"]],
                cwd=ROOT, env={**base, **env, "PYTHONPATH": str(ROOT)}, stdout=log,
                stderr=subprocess.STDOUT)
        check = json.loads(re.findall(r"^HEALTHCHECK .*\n\s+CMD (\[.*\])",
                                      (ROOT / "Dockerfile").read_text(), re.M)[0])
        assert check == cluster()["services"]["edge-a"]["healthcheck"]["test"][1:]

        def healthy(edge: str) -> bool:
            assert procs[edge].poll() is None, (tmp_path / f"{edge}.log").read_text()[-3000:]
            argv = [sys.executable if a == "python"
                    else a.replace(":8080/", f":{ports[edge]}/") for a in check]
            return subprocess.run(argv, capture_output=True, timeout=10,
                                  check=False).returncode == 0

        def owned() -> dict[str, list[int]] | None:
            out = {}
            for edge in EDGES:
                with urllib.request.urlopen(f"http://127.0.0.1:{ports[edge]}/healthz",
                                            timeout=5) as r:
                    out[edge] = json.loads(r.read())["partitions_owned"]
            seen = sorted(p for ps in out.values() for p in ps)
            # Each partition one owner; each edge its share, ceil(16 / 3).
            fair = all(1 <= len(ps) <= 6 for ps in out.values())
            return out if seen == list(range(16)) and fair else None

        for edge in EDGES:
            eventually(lambda e=edge: healthy(e), timeout=120,
                       what=f"{edge}: the image's health check passes")
        eventually(owned, timeout=90, interval=0.5,
                   what="the 16 partitions shared by the three edges, one owner each")

        pub = Publisher(nodes.nodes[1].mqtt_port, client_id=gw["client_id"],
                        username=gw["username"], password=gw["password"]).connect()
        ts = int(time.time() * 1000) - 1000
        try:
            pub.publish("farm/v1/suihua/wang-12/gw-0007/telemetry", make_payload(
                "gw-0007", 1, [{"sensor": "soil-1", "kind": "soil_moisture", "ts": ts,
                                "value": 23.4, "unit": "%"}]).decode())
            assert pub.wait_acked(1) == 1
        finally:
            pub.close()
        rows = eventually(lambda: query(influx.url, 'SELECT "moisture", "plot" FROM "soil"',
                                        GRAFANA_USER), timeout=60, what="the reading stored")
        assert rows[0]["values"] == [[ts, 23.4, "field-3"]]
    finally:
        for p in procs.values():
            p.terminate()
        codes = {}
        for edge, p in procs.items():
            try:
                codes[edge] = p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                codes[edge] = p.wait(10)
        nodes.stop()
        influx.stop()
    for edge, code in codes.items():  # a clean stop: partitions handed back
        assert code == 0, (tmp_path / f"{edge}.log").read_text()[-3000:]


def _free_port() -> int:
    from farmedge_dev.devservers import free_port

    return free_port()


# ---------------------------------------------------------------- TLS
# docker-compose.cluster-tls.yml, on top of docker-compose.cluster.yml.


def test_the_tls_file_runs_the_tls_node_files_and_gives_the_edges_the_ca() -> None:
    schema = json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())
    over = load_compose(TLS)
    jsonschema.validate(over, schema, cls=jsonschema.Draft201909Validator)
    assert set(over["services"]) == {*NODES, *EDGES}  # nothing added, nothing else changed
    doc = with_tls()
    for node in NODES:
        script = _script(node, doc)
        assert script.endswith(f"exec nats-server --config {ETC}/tls/{node}.conf")
        assert _script(node).split("fi;")[0] == script.split("fi;")[0]  # the auth.conf check
        assert f"{ETC}/certs/{node}.crt" in script and "provision nats-certs" in " ".join(
            script.split())
        # The certificates come through the folder mount the plain layout has.
        assert doc["services"][node]["volumes"] == cluster()["services"][node]["volumes"]
        assert (ROOT / "deploy" / "nats" / "tls" / f"{node}.conf").is_file()
    for edge in EDGES:
        env = doc["services"][edge]["environment"]
        assert json.loads(env["FARMEDGE_SOURCE_NATS_URLS"]) == [
            f"tls://{n}:{PORTS['client']}" for n in NODES]
        ca = binds(doc["services"][edge])[env["FARMEDGE_SOURCE_NATS_CA_FILE"]]
        assert ca["source"] == "./deploy/nats/certs/ca.crt" and ca["read_only"] is True
        plain = cluster()["services"][edge]["environment"]
        assert {k for k in env if env[k] != plain.get(k)} == {
            "FARMEDGE_SOURCE_NATS_URLS", "FARMEDGE_SOURCE_NATS_CA_FILE"}


def test_docker_compose_config_accepts_the_tls_layout(tmp_path: Path) -> None:
    tool = docker_compose()
    env = filled_env(tmp_path)
    out = subprocess.run(
        [tool, "--project-directory", str(ROOT), "-f", str(CLUSTER), "-f", str(TLS),
         "--env-file", str(env), "config"], capture_output=True, text=True, check=False,
        env={k: v for k, v in os.environ.items()
             if not k.startswith(("INFLUX_", "GRAFANA_", "EDGE_"))})
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert set(cfg["services"]) == set(SERVICES)
    for edge in EDGES:
        svc = cfg["services"][edge]
        assert svc["environment"]["FARMEDGE_SOURCE_NATS_CA_FILE"] == "/etc/farmedge/nats-ca.crt"
        assert svc["environment"]["FARMEDGE_SOURCE_NATS_URLS"].startswith('["tls://nats-1:')
        assert svc["environment"]["FARMEDGE_INFLUX_PASSWORD"] == "s3cret-influx_edge_password"
        targets = {v["target"] if isinstance(v, dict) else v.split(":")[1]
                   for v in svc["volumes"]}
        assert {"/etc/farmedge/nats-ca.crt", "/etc/farmedge/registry.yaml"} <= targets
    for node in NODES:
        assert cfg["services"][node]["command"][-1].endswith(f"{ETC}/tls/{node}.conf")


@pytest.mark.servers
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
async def test_the_tls_layout_forms_a_cluster_and_carries_an_mqtts_message(
        tmp_path: Path, county: str) -> None:
    """The TLS layout's node command lines (docker-compose.cluster-tls.yml,
    deploy/nats/tls/) with the certificates of `farmedge provision
    nats-certs` in the folder standing in for deploy/nats/certs: the three
    nodes form a cluster over TLS routes, a plain NATS client is refused, an
    edge's environment passes check-config, and a provisioned gateway's QoS 1
    message, published with mqtts:// and the site's CA, reaches the stream
    and is read as the edges' user over tls://."""
    import tomllib

    import nats
    import nats.errors

    from farmedge.cli import main
    from tests.nats_support import Publisher, drain, prepare

    certs = tmp_path / "certs"
    assert main(["provision", "nats-certs", "--out", str(certs)]) == 0
    nats_dir, registry = tmp_path / "users", tmp_path / "registry.yaml"
    common = ["--nats-dir", str(nats_dir), "--registry", str(registry)]
    env_file = filled_env(tmp_path)
    assert main(["provision", "nats", "edge", "--env-file", str(env_file), *common]) == 0
    nc3 = _named_nodes(tmp_path / "nats")
    gw_toml = tmp_path / "gw.toml"
    assert main(["provision", "gateway", "--county", county, "--farm", "farm.7",
                 "--gateway", "gw-1", "-o", str(gw_toml), "--ca-file", str(certs / "ca.crt"),
                 *common, *[a for n in nc3.nodes
                            for a in ("--cluster-url", f"mqtts://127.0.0.1:{n.mqtt_port}")]]
                ) == 0
    gw = tomllib.loads(gw_toml.read_text())["mqtt"]
    assert gw["ca_file"] == str(certs / "ca.crt")
    assert all(u.startswith("mqtts://") for u in gw["urls"])
    site = dotenv(env_file)
    # (the shipped registry: the provisioned farm has no contacts, a warning)
    site["FARMEDGE_REGISTRY_FILE"] = str(ROOT / "registry.example.yaml")

    # The edge's environment, container paths and host names moved here.
    doc = with_tls()
    env = _edge_env("edge-b", site, tmp_path, doc)
    assert env["FARMEDGE_SOURCE_NATS_CA_FILE"] in binds(doc["services"]["edge-b"])
    env["FARMEDGE_SOURCE_NATS_CA_FILE"] = str(certs / "ca.crt")
    base = {k: v for k, v in os.environ.items() if not k.startswith("FARMEDGE_")}
    out = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "farmedge", "edge", "check-config"], cwd=ROOT,
        env={**base, **env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "warning" not in (out.stdout + out.stderr).lower(), out.stdout + out.stderr
    assert ("source: NATS tls://nats-1:4222, tls://nats-2:4222, tls://nats-3:4222"
            in out.stdout), out.stdout

    try:
        await asyncio.to_thread(_start_nodes, nc3, tmp_path, nats_dir / AUTH_INCLUDE, certs)
        # The routes are TLS ones (a plain route would not be accepted).
        for node in nc3.nodes:
            _, varz = node.monitor("/varz")
            assert isinstance(varz["cluster"], dict)
            assert varz["cluster"].get("tls_required") is True, varz["cluster"]
            assert varz.get("tls_required") is True
        urls = {f"tls://{n.name}:{PORTS['client']}": f"tls://127.0.0.1:{n.client_port}"
                for n in nc3.nodes}
        cfg = SourceSection.model_validate({
            "kind": "nats", "consumer_prefix": "compose-tls-p",
            "nats_urls": [urls[u] for u in json.loads(env["FARMEDGE_SOURCE_NATS_URLS"])],
            "nats_ca_file": env["FARMEDGE_SOURCE_NATS_CA_FILE"],
            "nats_user": env["FARMEDGE_SOURCE_NATS_USER"],
            "nats_password": env["FARMEDGE_SOURCE_NATS_PASSWORD"]})
        await prepare(cfg)

        # A plain client, with the right user, is refused.
        async def plain() -> None:
            conn = await nats.connect(
                servers=[f"nats://127.0.0.1:{nc3.nodes[0].client_port}"],
                user=cfg.nats_user, password=cfg.nats_password, allow_reconnect=False,
                max_reconnect_attempts=0, connect_timeout=5)
            await conn.close()

        with pytest.raises((nats.errors.Error, OSError, ssl.SSLError)):
            await plain()

        pub = Publisher(nc3.nodes[0].mqtt_port, client_id=gw["client_id"],
                        username=gw["username"], password=gw["password"],
                        ca_file=gw["ca_file"]).connect()
        try:
            pub.publish(telemetry_topic(county, "farm.7", "gw-1"), "over-tls")
            assert await asyncio.to_thread(pub.wait_acked, 1) == 1
        finally:
            pub.close()
        far = cfg.model_copy(update={"nats_urls": [cfg.nats_urls[2]]})
        assert await drain(far, county) == ["over-tls"]
    finally:
        nc3.stop()
