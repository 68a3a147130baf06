"""docker-compose.yml, the Dockerfile and the InfluxDB 2.x init script. No
Docker engine runs here: the compose file is checked against the Compose
Specification's JSON schema and by `docker-compose config`, and each
service's command line runs here without Docker where a real program can
(Mosquitto with the shipped config: tests/integration/test_provision.py; the simulator
and the edge: below)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from farmedge.registry import load_registry
from farmedge.simdata import make_farms
from tests.compose_support import binds, docker_compose, dotenv, filled_env, interpolate
from tests.stack_support import ROOT, Client, ShippedBroker
from tests.support import eventually, make_payload

COMPOSE = ROOT / "docker-compose.yml"
SERVICES = ("preflight", "mosquitto", "influxdb", "grafana", "edge", "simulator")


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def test_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())
    jsonschema.Draft201909Validator.check_schema(schema)
    jsonschema.validate(compose(), schema, cls=jsonschema.Draft201909Validator)


def test_every_service_restarts_has_a_healthcheck_and_binds_locally() -> None:
    doc = compose()
    assert set(doc["services"]) == set(SERVICES)
    for name, svc in doc["services"].items():
        if name == "preflight":  # runs once, before the others
            assert svc["restart"] == "no"
        else:
            assert svc["restart"] == "unless-stopped", name
        for port in svc.get("ports", []):
            assert port.startswith("${FARMEDGE_BIND:-127.0.0.1}:"), (name, port)
        if name not in ("simulator", "preflight"):
            assert "healthcheck" in svc, name
        for vol in svc.get("volumes", []):
            src = vol["source"] if isinstance(vol, dict) else vol.split(":", 1)[0]
            # Named volumes for state, bind mounts from the repository for config.
            assert src in doc["volumes"] or src.startswith(("./", "${")), (name, vol)
    assert doc["services"]["simulator"]["profiles"] == ["demo"]
    grafana = doc["services"]["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert "FARMEDGE_BIND=127.0.0.1" in (ROOT / ".env.example").read_text().splitlines()
    # Every state has a named volume.
    assert set(doc["volumes"]) == {"mosquitto-data", "influxdb-data", "influxdb-config",
                                   "grafana-data", "edge-data"}


def test_files_the_services_need_are_long_syntax_binds() -> None:
    """A short-syntax bind of a missing ./registry.yaml makes an empty folder
    there (and the edge fails on a folder); the long syntax refuses to start
    instead ("bind source path does not exist")."""
    services = compose()["services"]
    edge = binds(services["edge"])
    assert edge["/etc/farmedge/registry.yaml"]["source"] == \
        "${FARMEDGE_REGISTRY_FILE:-./registry.yaml}"
    assert edge["/etc/farmedge/registry.yaml"]["read_only"] is True
    rules = edge["/etc/farmedge/rules"]
    assert rules["source"] == "${FARMEDGE_RULES_DIR:-./deploy/rules}" and rules["read_only"]
    assert (ROOT / "deploy" / "rules").is_dir()
    assert json.loads(services["edge"]["environment"]["FARMEDGE_ALERTS_RULES"]) == \
        ["/etc/farmedge/rules"]
    for name in ("preflight", "simulator"):
        assert binds(services[name])["/farmedge/preflight.sh"]["source"] == \
            "./deploy/preflight.sh"
    # Every bind mount of a single file uses the long syntax.
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            if isinstance(vol, str) and vol.startswith(("./", "${")):
                src = interpolate(vol.split(":", 1)[0], {})
                assert (ROOT / src).is_dir(), (name, vol)


def _listeners() -> set[int]:
    conf = (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    return {int(m.group(1)) for m in re.finditer(r"^listener\s+(\d+)", conf, re.M)}


def test_the_broker_publishes_only_ports_it_listens_on() -> None:
    published = {int(p.rsplit(":", 1)[1]) for p in compose()["services"]["mosquitto"]["ports"]}
    assert published, "the broker publishes no port"
    assert published <= _listeners(), (published, _listeners())


def _preflight(env: dict[str, str], svc: str = "preflight",
               extra: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """A service's preflight entrypoint, run here by sh: the script from its
    bind mount, the variables from its environment after interpolation."""
    s = compose()["services"][svc]
    entry = list(s["entrypoint"])
    assert entry[:2] == ["/bin/sh", "/farmedge/preflight.sh"]
    script = ROOT / binds(s)["/farmedge/preflight.sh"]["source"]
    args = [*entry[2:], *s.get("command", [])] if svc == "preflight" else entry[2:]
    if extra is not None:
        args = [a for a in args if a != "farmedge"] + extra
        if "--" in args:
            args = args[: args.index("--") + 1] + extra
    values = {k: interpolate(str(v), env) for k, v in s["environment"].items()}
    return subprocess.run(["sh", str(script), *args], capture_output=True, text=True,
                          timeout=30, check=False,
                          env={"PATH": os.environ["PATH"], **values})


def test_preflight_refuses_placeholder_passwords(tmp_path: Path) -> None:
    shipped = dotenv(ROOT / ".env.example")
    shipped["EDGE_MQTT_PASSWORD"] = "unset"
    out = _preflight(shipped)
    assert out.returncode == 1
    for var in ("GRAFANA_ADMIN_PASSWORD", "INFLUX_ADMIN_PASSWORD", "INFLUX_ADMIN_TOKEN",
                "INFLUX_EDGE_PASSWORD", "INFLUX_GRAFANA_PASSWORD", "EDGE_MQTT_PASSWORD"):
        assert var in out.stderr, var
    assert "refusing to start" in out.stderr and "change-me" not in out.stdout
    site = dotenv(filled_env(tmp_path))
    ok = _preflight(site)
    assert ok.returncode == 0, ok.stderr
    site["INFLUX_ADMIN_TOKEN"] = "Change-Me"
    bad = _preflight(site)
    assert bad.returncode == 1 and "INFLUX_ADMIN_TOKEN" in bad.stderr
    assert "GRAFANA_ADMIN_PASSWORD" not in bad.stderr
    # Every secret the compose file reads is checked: by the preflight, or
    # (the demo's) by the simulator's entrypoint.
    secrets = set(re.findall(r"\$\{(\w*(?:PASSWORD|TOKEN)\w*)", COMPOSE.read_text()))
    checked = set(compose()["services"]["preflight"]["command"])
    checked |= set(compose()["services"]["simulator"]["entrypoint"][2:-2])
    assert secrets and secrets <= checked, secrets - checked
    # Every service of the center waits for it.
    for name, svc in compose()["services"].items():
        if name not in ("preflight", "simulator"):
            assert svc["depends_on"]["preflight"] == {
                "condition": "service_completed_successfully"}, name


def test_simulator_refuses_to_start_without_its_password() -> None:
    svc = compose()["services"]["simulator"]
    assert "unset" not in json.dumps(svc)
    out = _preflight({}, "simulator", extra=["echo", "started"])
    assert out.returncode == 1 and "SIMULATOR_MQTT_PASSWORD" in out.stderr
    assert "started" not in out.stdout
    ok = _preflight({"SIMULATOR_MQTT_PASSWORD": "x8Jk2"}, "simulator",
                    extra=["echo", "started"])
    assert ok.returncode == 0 and ok.stdout.strip() == "started", ok.stderr


def test_dockerfile_runs_unprivileged_with_a_healthz_check() -> None:
    text = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in {"root", "0"}
    [check] = re.findall(r"^HEALTHCHECK .*\n\s+CMD (\[.*\])", text, re.M)
    assert "/healthz" in check
    # The compose file runs the same check.
    assert json.loads(check) == compose()["services"]["edge"]["healthcheck"]["test"][1:]


def _stages() -> dict[str, tuple[str, str]]:
    """Dockerfile stage name -> (what it is FROM, its text)."""
    text = (ROOT / "Dockerfile").read_text()
    parts = re.split(r"^FROM\s+", text, flags=re.M)[1:]
    out: dict[str, tuple[str, str]] = {}
    for p in parts:
        m = re.match(r"(\S+)\s+AS\s+(\S+)", p)
        assert m, p[:80]
        out[m.group(2)] = (m.group(1), p)
    return out


def test_the_image_has_the_dev_tooling_only_in_its_demo_target() -> None:
    """The edge target (the default: the last stage) installs farmedge and
    nothing of tools/; the demo target adds the farmedge-dev wheel; the
    compose file builds each service from its target."""
    stages = _stages()
    assert list(stages)[-1] == "edge", "docker build without --target must give the edge"
    assert stages["edge"][0] == "runtime" and stages["demo"][0] == "runtime"
    runtime = stages["runtime"][1]
    for name in ("runtime", "edge"):
        assert "devwheels" not in stages[name][1] and "tools" not in stages[name][1], name
    assert "COPY tools" not in stages["build"][1]
    assert "pip wheel --no-cache-dir --no-deps --wheel-dir /devwheels ./tools" in \
        stages["devbuild"][1]
    assert "COPY --from=devbuild /devwheels" in stages["demo"][1]
    assert '".[edge,alerts,nats]"' in stages["build"][1]
    assert 'ENTRYPOINT ["farmedge"]' in runtime and 'CMD ["edge", "run"]' in runtime
    services = compose()["services"]
    assert services["edge"]["build"]["target"] == "edge"
    assert services["simulator"]["build"]["target"] == "demo"
    assert services["simulator"]["command"][0] == "simulate"
    assert services["simulator"]["entrypoint"][-1] == "farmedge"


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    tool = docker_compose()
    env = filled_env(tmp_path)
    base = [tool, "--project-directory", str(ROOT), "-f", str(COMPOSE), "--env-file", str(env)]
    out = subprocess.run([*base, "config"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    # docker-compose v1 lists profile services too; v2 only the active ones.
    assert set(SERVICES) - {"simulator"} <= set(cfg["services"]) <= set(SERVICES)
    assert cfg["services"]["edge"]["build"]["target"] == "edge"
    edge_env = cfg["services"]["edge"]["environment"]
    assert edge_env["FARMEDGE_INFLUX_PASSWORD"] == "s3cret-influx_edge_password"
    for svc in cfg["services"].values():
        for p in svc.get("ports", []):
            host_ip = p["host_ip"] if isinstance(p, dict) else p.split(":")[0]
            assert host_ip == "127.0.0.1"
    demo = subprocess.run([*base, "--profile", "demo", "config", "--services"],
                          capture_output=True, text=True, check=False)
    assert demo.returncode == 0, demo.stderr
    assert set(demo.stdout.split()) == set(SERVICES)
    full = subprocess.run([*base, "--profile", "demo", "config"], capture_output=True,
                          text=True, check=False)
    assert full.returncode == 0, full.stderr
    assert yaml.safe_load(full.stdout)["services"]["simulator"]["build"]["target"] == "demo"


def test_docker_compose_refuses_to_start_without_passwords(tmp_path: Path) -> None:
    tool = docker_compose()
    env = tmp_path / ".env"
    env.write_text("FARMEDGE_BIND=127.0.0.1\n")
    out = subprocess.run([tool, "--project-directory", str(ROOT), "-f", str(COMPOSE),
                          "--env-file", str(env), "config"],
                         capture_output=True, text=True, check=False,
                         env={k: v for k, v in os.environ.items()
                              if not k.startswith(("INFLUX_", "GRAFANA_", "EDGE_"))})
    assert out.returncode != 0
    assert "in .env" in out.stderr


def _subst(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR:-default} interpolation, with ``env`` before defaults."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m.group(1), m.group(2)), text)


def _simulator(**env: str) -> tuple[list[str], dict[str, str]]:
    """The simulator's command and environment as compose runs them."""
    svc = compose()["services"]["simulator"]
    return ([_subst(a, env) for a in svc["command"]],
            {k: _subst(v, env) for k, v in svc["environment"].items()})


def test_demo_registry_lists_every_simulated_gateway() -> None:
    args, _ = _simulator()
    opt = {args[i]: args[i + 1] for i in range(1, len(args) - 1, 2)}
    reg = load_registry(ROOT / "deploy" / "demo" / "registry.yaml").index()
    farms = make_farms(county=opt["--county"], farms=int(opt["--farms"]),
                       sensors=int(opt["--sensors"]))
    for f in farms:
        for g in f.gateways:
            _, entry = reg[(f.county, f.farm, g.gateway)]
            assert {s.sensor for s in g.sensors} <= set(entry.sensors)


@pytest.mark.servers
def test_simulator_command_line_publishes_through_the_shipped_broker(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The compose simulator's command, run here against Mosquitto with the
    shipped config and a provisioned simulator account."""
    from farmedge.cli import main

    broker = ShippedBroker(tmp_path / "broker").start()
    try:
        assert main(["provision", "simulator", "--broker-dir", str(broker.config_dir)]) == 0
        sim = dict(ln.split(": ", 1) for ln in capsys.readouterr().out.splitlines())
        assert main(["provision", "edge", "--broker-dir", str(broker.config_dir)]) == 0
        edge = dict(ln.split(": ", 1) for ln in capsys.readouterr().out.splitlines())
        sub = Client(broker.port, edge["username"], edge["password"])
        assert sub.connect() == 0
        assert sub.subscribe("farm/v1/+/+/+/telemetry") == [1]
        sim_pw = sim["password"]
        # The compose file's default username is the one provisioning made.
        assert sim["username"] == "svc~simulator"
        args, env = _simulator(SIMULATOR_MQTT_PASSWORD=sim_pw)
        assert args[0] == "simulate"
        env = {k: v.replace("@mosquitto:1883", f"@127.0.0.1:{broker.port}")
               for k, v in env.items()}
        entry = compose()["services"]["simulator"]["entrypoint"]
        assert entry[-1] == "farmedge"
        script = ROOT / "deploy" / "preflight.sh"
        out = subprocess.run(["sh", str(script), *entry[2:-1], sys.executable, "-m",
                              "farmedge", *args, "--messages", "10", "--rate", "1000"],
                             cwd=ROOT, capture_output=True, text=True,
                             timeout=120, check=False, env={**os.environ, **env})
        assert sim_pw not in out.stdout + out.stderr
        assert out.returncode == 0, out.stderr + out.stdout
        got = [sub.messages.get(timeout=30) for _ in range(10)]
        assert {m.topic.split("/")[2] for m in got} == {"demo"}
        sub.close()
    finally:
        broker.stop()


def test_influxdb_init_script_sets_up_buckets_mappings_and_users(tmp_path: Path) -> None:
    """deploy/influxdb/init/farmedge-init.sh, run by bash with a stand-in
    `influx` command on PATH that records its arguments and answers bucket
    lookups: no InfluxDB 2.x server can run here. It checks the calls the
    script makes (names, ids, permissions), not InfluxDB's answers."""
    log = tmp_path / "calls.jsonl"
    fake = tmp_path / "bin" / "influx"
    fake.parent.mkdir()
    fake.write_text(f"""#!{sys.executable}
import json, sys
args = sys.argv[1:]
rec = {{"args": args}}
if "--file" in args:
    rec["file"] = open(args[args.index("--file") + 1]).read()
with open({str(log)!r}, "a") as f:
    f.write(json.dumps(rec) + "\\n")
state = {str(tmp_path / "buckets")!r}
ids = {{"farmedge": "id-raw", "farmedge_hourly": "id-hourly"}}
try:
    made = open(state).read().split()
except FileNotFoundError:
    made = ["farmedge"]  # the image's setup created the raw bucket
if args[:2] == ["bucket", "create"]:
    open(state, "w").write(" ".join(made + [args[args.index("--name") + 1]]))
if args[:2] == ["bucket", "list"]:
    name = args[args.index("--name") + 1]
    if name not in made:
        sys.exit("Error: bucket not found")
    print(ids[name] + "\\t" + name)
""")
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin", "DOCKER_INFLUXDB_INIT_ORG": "farmedge",
           "DOCKER_INFLUXDB_INIT_BUCKET": "farmedge", "INFLUX_DATABASE": "farmedge",
           "INFLUX_HOURLY_RETENTION": "3650d", "INFLUX_EDGE_USER": "farmedge-edge",
           "INFLUX_EDGE_PASSWORD": "e-pw", "INFLUX_GRAFANA_USER": "farmedge-grafana",
           "INFLUX_GRAFANA_PASSWORD": "g-pw"}
    script = ROOT / "deploy" / "influxdb" / "init" / "farmedge-init.sh"
    out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                         check=False, timeout=60)
    assert out.returncode == 0, out.stderr
    calls = [json.loads(ln) for ln in log.read_text().splitlines()]
    cmds = [" ".join(c["args"]) for c in calls]

    def called(*parts: str) -> str:
        hits = [c for c in cmds if all(p in c for p in parts)]
        assert hits, f"no call with {parts}: {cmds}"
        return hits[0]

    called("bucket create", "--name farmedge_hourly", "--retention 3650d")
    assert "--default" in called("v1 dbrp create", "--db farmedge", "--rp raw",
                                 "--bucket-id id-raw")
    assert "--default" not in called("v1 dbrp create", "--rp hourly", "--bucket-id id-hourly")
    edge = called("v1 auth create", "--username farmedge-edge")
    assert "--write-bucket id-raw" in edge and "--read-bucket" not in edge
    grafana = called("v1 auth create", "--username farmedge-grafana")
    assert "--read-bucket id-raw" in grafana and "--read-bucket id-hourly" in grafana
    assert "--write-bucket" not in grafana
    [task] = [c for c in calls if c["args"][:2] == ["task", "create"]]
    assert 'from(bucket: "farmedge")' in task["file"]
    assert 'to(bucket: "farmedge_hourly", org: "farmedge")' in task["file"]
    assert "every: 1h" in task["file"]


@pytest.mark.servers
@pytest.mark.slow
def test_edge_service_runs_as_compose_configures_it(tmp_path: Path) -> None:
    """The edge service's command and environment from docker-compose.yml,
    with .env.example filled in, run here: host names point at a local
    Mosquitto (shipped config) and InfluxDB 1.x (v1-setup.iql's write-only
    user, which the compose file's INFLUX_EDGE_* name), container paths at a
    temporary folder. The Dockerfile's HEALTHCHECK command then passes, and a
    gateway provisioned for the registry gets its readings stored."""
    from tests.stack_support import (
        ENV,
        GRAFANA_USER,
        AuthInflux,
        query,
        setup_v1,
    )

    env_file = filled_env(tmp_path)
    site = dotenv(env_file)
    # The InfluxDB users as the site's .env names them.
    site.update({"INFLUX_EDGE_USER": ENV["INFLUX_EDGE_USER"],
                 "INFLUX_EDGE_PASSWORD": ENV["INFLUX_EDGE_PASSWORD"],
                 "INFLUX_DATABASE": ENV["INFLUX_DATABASE"]})
    influx = setup_v1(AuthInflux(tmp_path / "influx").start())
    broker = ShippedBroker(tmp_path / "broker").start()
    proc = None
    try:
        edge_user, edge_pw = broker.service("edge")
        gw_user, gw_pw, gw_cid = broker.gateway("suihua", "wang-12", "gw-0007")
        # The compose file's default username is the one provisioning made.
        assert edge_user == "svc~edge"
        site["EDGE_MQTT_PASSWORD"] = edge_pw
        site["FARMEDGE_REGISTRY_FILE"] = str(ROOT / "registry.example.yaml")

        svc = compose()["services"]["edge"]
        http_port = _free_port()
        env = {k: interpolate(str(v), site) for k, v in svc["environment"].items()}
        env.update({
            "FARMEDGE_MQTT_URL": env["FARMEDGE_MQTT_URL"].replace(
                "mosquitto:1883", f"127.0.0.1:{broker.port}"),
            "FARMEDGE_INFLUX_URL": influx.url,
            "FARMEDGE_HTTP_HOST": "127.0.0.1", "FARMEDGE_HTTP_PORT": str(http_port),
            "FARMEDGE_DATA_DIR": str(tmp_path / "edge-data"),
        })
        mounts = {t: interpolate(v["source"], site) for t, v in binds(svc).items()}
        env["FARMEDGE_REGISTRY"] = mounts[env["FARMEDGE_REGISTRY"]]
        env["FARMEDGE_ALERTS_RULES"] = json.dumps(
            [str(ROOT / mounts[p]) for p in json.loads(env["FARMEDGE_ALERTS_RULES"])])
        base = {k: v for k, v in os.environ.items() if not k.startswith("FARMEDGE_")}
        log = (tmp_path / "edge.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "farmedge", *svc["command"]], cwd=ROOT,
                                env={**base, **env, "PYTHONPATH": str(ROOT)}, stdout=log,
                                stderr=subprocess.STDOUT)
        check = json.loads(re.findall(r"^HEALTHCHECK .*\n\s+CMD (\[.*\])",
                                      (ROOT / "Dockerfile").read_text(), re.M)[0])
        check = [sys.executable if a == "python" else a.replace(":8080/", f":{http_port}/")
                 for a in check]

        def healthy() -> bool:
            assert proc is not None and proc.poll() is None, (tmp_path / "edge.log").read_text()
            return subprocess.run(check, capture_output=True, timeout=10,
                                  check=False).returncode == 0

        eventually(healthy, timeout=30, what="the image's health check passes")

        gw = Client(broker.port, gw_user, gw_pw, client_id=gw_cid)
        assert gw.connect() == 0
        ts = int(time.time() * 1000) - 1000
        payload = make_payload("gw-0007", 1, [{"sensor": "soil-1", "kind": "soil_moisture",
                                                "ts": ts, "value": 23.4, "unit": "%"}])
        assert gw.publish("farm/v1/suihua/wang-12/gw-0007/telemetry", payload) in {0, 16}
        gw.close()
        rows = eventually(lambda: query(influx.url, 'SELECT "moisture", "plot" FROM "soil"',
                                        GRAFANA_USER), timeout=60, what="the reading stored")
        assert rows[0]["values"] == [[ts, 23.4, "field-3"]]
    finally:
        if proc is not None:
            proc.terminate()
            assert proc.wait(30) == 0
        broker.stop()
        influx.stop()


def _free_port() -> int:
    from farmedge_dev.devservers import free_port

    return free_port()


def test_broker_command_refuses_to_start_without_its_accounts(tmp_path: Path) -> None:
    """The mosquitto service's command, run by sh here with /mosquitto moved
    into a temporary folder: without dynamic-security.json it stops with a
    message naming the command that writes it (the broker would otherwise run
    and let no one in); with the file it runs the broker. The broker itself
    is a stand-in on PATH that records its arguments (the real one runs the
    shipped config in tests/integration/test_provision.py)."""
    cmd = compose()["services"]["mosquitto"]["command"]
    assert cmd[:2] == ["/bin/sh", "-c"]
    root = tmp_path / "mosquitto"
    (root / "config").mkdir(parents=True)
    script = cmd[2].replace("/mosquitto/", f"{root}/")
    fake = tmp_path / "bin" / "mosquitto"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "ran"}\n')
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin"}
    out = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True,
                         timeout=30, check=False)
    assert out.returncode == 1
    assert "farmedge provision edge --env-file .env" in out.stderr
    assert not (tmp_path / "ran").exists()
    (root / "config" / "dynamic-security.json").write_text("{}")
    out = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True,
                         timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "ran").read_text().split() == ["-c", f"{root}/config/mosquitto.conf"]
