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
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from farmedge.contract import telemetry_topic
from farmedge.provision.nats_cluster import PORTS, STORE_DIR
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
NODES = ("nats-1", "nats-2", "nats-3")
EDGES = ("edge-a", "edge-b", "edge-c")
SERVICES = ("preflight", *NODES, "influxdb", "grafana", *EDGES)
CONF_TARGET = "/etc/nats/nats-server.conf"


def cluster() -> dict[str, Any]:
    return load_compose(CLUSTER)


def single() -> dict[str, Any]:
    return load_compose(ROOT / "docker-compose.yml")


def _conf(node: str) -> Path:
    svc = cluster()["services"][node]
    return ROOT / binds(svc)[CONF_TARGET]["source"]


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
        v for v in theirs["preflight"]["command"] if v not in mqtt_only]
    assert ours["preflight"]["environment"] == {
        k: v for k, v in theirs["preflight"]["environment"].items() if k not in mqtt_only}
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
            if isinstance(v, str)]
    assert len(data) == len(set(data)) == len(NODES) + len(EDGES)
    # The gateways reach every node's MQTT listener, each on a port of its own here.
    published = [doc["services"][n]["ports"][0].rsplit(":", 1) for n in NODES]
    assert all(container == str(PORTS["mqtt"]) for _, container in published)
    assert len({host for host, _ in published}) == len(NODES)


def test_each_node_runs_its_generated_file_and_the_edges_read_its_partitions() -> None:
    services = cluster()["services"]
    partitions = set()
    for node in NODES:
        svc = services[node]
        assert binds(svc)[CONF_TARGET]["source"] == f"./deploy/nats/{node}.conf"
        assert binds(svc)[CONF_TARGET]["read_only"] is True
        assert svc["command"] == ["nats-server", "--config", CONF_TARGET]
        assert f":{PORTS['http']}/healthz" in svc["healthcheck"]["test"][-1]
        text = _conf(node).read_text()
        assert f'server_name: "{node}"' in text
        assert set(re.findall(r'"nats-route://([^"]+)"', text)) == {
            f"{n}:{PORTS['cluster']}" for n in NODES if n != node}
        assert f'store_dir: "{STORE_DIR}"' in text
        assert any(v.endswith(":" + STORE_DIR.rsplit("/", 1)[0]) for v in svc["volumes"]
                   if isinstance(v, str))
        partitions |= {int(p) for p in re.findall(r"partition\((\d+),", text)}
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
        assert partitions == {src.partitions}, "the nodes' mapping and the edges disagree"
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


def _edge_env(edge: str, site: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """An edge service's environment as compose gives it (``site`` is the
    .env), container paths moved here: the registry and rules to the
    repository's files, the data folder to ``tmp_path``."""
    svc = cluster()["services"][edge]
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


@pytest.mark.servers
async def test_the_nodes_command_lines_form_a_cluster_with_jetstream_and_mqtt(
        tmp_path: Path, county: str) -> None:
    import nats

    from farmedge.transport import nats as tn
    from tests.nats_support import Publisher, drain, prepare

    services = cluster()["services"]
    nc3 = NatsCluster(tmp_path / "nats")
    for node, name in zip(nc3.nodes, NODES, strict=True):
        node.name = name  # the server_name of its file: the routes report it
    try:
        for node in nc3.nodes:
            cmd = [a.replace(CONF_TARGET, "{conf}") for a in services[node.name]["command"]]
            node.spawn_conf(_here(_conf(node.name).read_text(), node, nc3.nodes), cmd)
        # Routes, JetStream's meta group of 3, the MQTT ports.
        await asyncio.to_thread(nc3.wait_ready, 120)
        for node in nc3.nodes:
            check = services[node.name]["healthcheck"]["test"]
            assert check[0] == "CMD"
            argv = [a.replace(f"127.0.0.1:{PORTS['http']}", f"127.0.0.1:{node.http_port}")
                    for a in check[1:]]
            ran = await asyncio.to_thread(subprocess.run, argv, capture_output=True,
                                          timeout=30, check=False)
            assert ran.returncode == 0, (node.name, ran.stderr)

        # The edges' [source] (the compose file's: default partitions).
        cfg = SourceSection.model_validate({
            "kind": "nats", "nats_urls": nc3.urls, "consumer_prefix": "compose-p"})
        await prepare(cfg)
        for url in nc3.urls:
            conn = await nats.connect(url)
            try:
                await tn.check_partition_mapping(conn, cfg)
            finally:
                await conn.close()
        # A gateway's QoS 1 message into node 1, read through node 3.
        pub = Publisher(nc3.nodes[0].mqtt_port).connect()
        try:
            pub.publish(telemetry_topic(county, "farm.7", "gw-1"), "hello")
            assert pub.wait_acked(1) == 1
        finally:
            pub.close()
        far = cfg.model_copy(update={"nats_urls": [nc3.nodes[2].url]})
        assert await drain(far, county) == ["hello"]
        conn = await nats.connect(nc3.urls)
        try:
            js = conn.jetstream()
            for stream in ("$MQTT_sess", "$MQTT_msgs"):
                info = await js.stream_info(stream)
                assert info.config.num_replicas == 3, stream
        finally:
            await conn.close()
    finally:
        nc3.stop()
