"""deploy/influxdb/v1-setup.iql against a real InfluxDB 1.x with
authentication on: retention policies, the hourly continuous queries (their
bodies run as the documented backfill), and least privilege (the edge's user
writes only, Grafana's reads only); `farmedge provision influx` from a server
with no user to a second run with nothing to do; the file piped into the
influx CLI as docs/stack.md says."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farmedge.provision.influx import SETUP_IQL, parse_iql, read_dotenv, substitute
from tests.stack_support import (
    ADMIN,
    DEPLOY,
    ENV,
    HOUR_MS,
    AuthInflux,
    _request,
    query,
    setup_v1,
    statements,
)

pytestmark = pytest.mark.servers

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthInflux]:
    s = setup_v1(AuthInflux(tmp_path_factory.mktemp("influx-auth")).start())
    yield s
    s.stop()


def test_retention_policies_and_continuous_queries(server: AuthInflux) -> None:
    [rps] = query(server.url, "SHOW RETENTION POLICIES", ADMIN)
    by_name = {row[0]: dict(zip(rps["columns"], row, strict=True)) for row in rps["values"]}
    assert by_name["raw"]["duration"] == "9600h0m0s" and by_name["raw"]["default"] is True
    assert by_name["hourly"]["duration"] == "87600h0m0s"
    cqs = [s for s in query(server.url, "SHOW CONTINUOUS QUERIES", ADMIN)
           if s["name"] == "farmedge"]
    names = {row[0] for s in cqs for row in s["values"]}
    assert names == {"farmedge_hourly", "farmedge_hourly_rain"}


def write(server: AuthInflux, user: tuple[str, str], lines: list[str]) -> int:
    status, _ = _request(server.url, "/write?db=farmedge&precision=ms", user=user,
                         body="\n".join(lines).encode())
    return status


def test_edge_writes_only_and_grafana_reads_only(server: AuthInflux) -> None:
    edge = (ENV["INFLUX_EDGE_USER"], ENV["INFLUX_EDGE_PASSWORD"])
    grafana = (ENV["INFLUX_GRAFANA_USER"], ENV["INFLUX_GRAFANA_PASSWORD"])
    now = int(time.time() * 1000)
    assert write(server, edge, [f"water,county=c,farm=f,gateway=g,sensor=t level=50 {now}"]) \
        == 204
    assert write(server, grafana, [f"water,county=c,farm=f,gateway=g,sensor=t level=1 {now}"]) \
        == 403
    assert write(server, ("farmedge-edge", "wrong"), [f"water,sensor=t level=1 {now}"]) == 401
    [s] = query(server.url, 'SELECT last("level") FROM "water" WHERE "sensor" = \'t\'', grafana)
    assert s["values"][0][1] == 50
    status, doc = _request(server.url, "/query", user=edge,
                           data={"q": 'SELECT * FROM "water"', "db": "farmedge"})
    assert status == 403 or "error" in json.dumps(doc), doc
    for stmt in ('DROP DATABASE "farmedge"', 'CREATE DATABASE "other"',
                 'DROP MEASUREMENT "water"'):
        status, doc = _request(server.url, "/query", user=grafana,
                               data={"q": stmt, "db": "farmedge"})
        assert status == 403 or "error" in json.dumps(doc), (stmt, doc)


def test_hourly_downsample_keeps_tags_and_aggregates(server: AuthInflux) -> None:
    """The continuous queries' bodies, run for a past range as the documented
    backfill for late data: mean/min/max per field and series into "hourly",
    rainfall summed, strings and booleans left out."""
    edge = (ENV["INFLUX_EDGE_USER"], ENV["INFLUX_EDGE_PASSWORD"])
    start = (int(time.time() * 1000) // HOUR_MS - 5) * HOUR_MS
    lines = []
    for i in range(12):  # every 10 minutes for two hours
        ts = start + i * 600_000
        tags = "county=c,farm=f,gateway=g"
        lines += [
            f"soil,{tags},sensor=s1,plot=p1,crop=maize moisture={20 + i},temperature=11.5 {ts}",
            f'soil,{tags},sensor=s1,plot=p1,crop=maize moisture_quality="suspect" {ts + 1}',
            f"weather,{tags},sensor=w1 rainfall=0.2,temperature=8.0,humidity=60 {ts}",
            f"gateway,{tags} online=true,outbox_depth={i}i,clock=\"synced\" {ts}",
        ]
    assert write(server, edge, lines) == 204
    [cq, rain] = [s for s in statements() if s.startswith("CREATE CONTINUOUS QUERY")]
    for stmt in (cq, rain):
        body = stmt[stmt.index("BEGIN ") + 6: stmt.rindex(" END")]
        at = body.index(" GROUP BY")
        backfill = (f"{body[:at]} WHERE time >= {start}ms AND time < {start + 2 * HOUR_MS}ms"
                    f"{body[at:]}")
        query(server.url, backfill, ADMIN)
    [soil] = query(server.url, 'SELECT * FROM "hourly"."soil" GROUP BY *', ADMIN)
    assert soil["tags"] == {"county": "c", "crop": "maize", "farm": "f", "gateway": "g",
                            "plot": "p1", "sensor": "s1"}
    rows = [dict(zip(soil["columns"], r, strict=True)) for r in soil["values"]]
    assert [r["time"] for r in rows] == [start, start + HOUR_MS]
    assert rows[0]["mean_moisture"] == pytest.approx(22.5)
    assert (rows[0]["min_moisture"], rows[0]["max_moisture"]) == (20, 25)
    assert rows[1]["mean_temperature"] == 11.5
    assert not any("quality" in c for c in soil["columns"])
    [weather] = query(server.url, 'SELECT "sum_rainfall" FROM "hourly"."weather"', ADMIN)
    assert [v[1] for v in weather["values"]] == [pytest.approx(1.2), pytest.approx(1.2)]
    [gw] = query(server.url, 'SELECT "max_outbox_depth" FROM "hourly"."gateway"', ADMIN)
    assert [v[1] for v in gw["values"]] == [5, 11]


# -- farmedge provision influx, and the file piped into the influx CLI --------

def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FARMEDGE_", "INFLUX_"))}
    env.update(extra)
    return env


def provision(url: str, *args: str, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "farmedge", "provision", "influx", "--url", url, *args],
        env=env if env is not None else _env(), capture_output=True, text=True, timeout=120,
        check=False)


def layout(url: str, admin: tuple[str, str]) -> dict[str, object]:
    """What a run leaves on the server, to compare two runs."""
    [rps] = query(url, "SHOW RETENTION POLICIES", admin)
    cqs = [(s["name"], sorted(map(tuple, s["values"])))
           for s in query(url, "SHOW CONTINUOUS QUERIES", admin)]
    [users] = query(url, "SHOW USERS", admin)
    grants = {u[0]: query(url, f'SHOW GRANTS FOR "{u[0]}"', admin)[0].get("values")
              for u in users["values"] if not u[1]}
    return {"rps": sorted(map(tuple, rps["values"])), "cqs": cqs,
            "users": sorted(map(tuple, users["values"])), "grants": grants}


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[AuthInflux]:
    """InfluxDB 1.x with authentication on and no user at all."""
    s = AuthInflux(tmp_path / "influx").start()
    yield s
    s.stop()


def test_provision_influx_from_nothing_then_nothing_to_do(fresh: AuthInflux,
                                                          tmp_path: Path) -> None:
    """On a server with no user, `farmedge provision influx --env-file`
    generates every password into the env file (mode 600), creates the first
    admin and everything v1-setup.iql describes; a second run changes
    nothing and says so. No password appears in the output."""
    env_file, edge_env = tmp_path / "influx.env", tmp_path / "edge.env"
    edge_env.write_text("FARMEDGE_MQTT_PASSWORD=kept\n")
    r = provision(fresh.url, "--env-file", str(env_file), "--edge-env-file", str(edge_env))
    assert r.returncode == 0, r.stderr
    assert "created admin user 'admin' (the first user)" in r.stderr
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    secrets_ = read_dotenv(env_file)
    assert set(secrets_) == {"INFLUX_ADMIN_PASSWORD", "INFLUX_EDGE_PASSWORD",
                             "INFLUX_GRAFANA_PASSWORD"}
    for pw in secrets_.values():
        assert len(pw) >= 24 and pw not in r.stderr + r.stdout
    admin = ("admin", secrets_["INFLUX_ADMIN_PASSWORD"])
    [users] = query(fresh.url, "SHOW USERS", admin)
    assert sorted(map(tuple, users["values"])) == [
        ("admin", True), ("farmedge-edge", False), ("farmedge-grafana", False)]
    assert read_dotenv(edge_env) == {"FARMEDGE_MQTT_PASSWORD": "kept",
                                     "FARMEDGE_INFLUX_USERNAME": "farmedge-edge",
                                     "FARMEDGE_INFLUX_PASSWORD":
                                         secrets_["INFLUX_EDGE_PASSWORD"]}
    edge = ("farmedge-edge", secrets_["INFLUX_EDGE_PASSWORD"])
    grafana = ("farmedge-grafana", secrets_["INFLUX_GRAFANA_PASSWORD"])
    now = int(time.time() * 1000)
    assert write(fresh, edge, [f"water,sensor=t level=5 {now}"]) == 204
    assert write(fresh, grafana, [f"water,sensor=t level=1 {now}"]) == 403
    [s] = query(fresh.url, 'SELECT last("level") FROM "water"', grafana)
    assert s["values"][0][1] == 5
    before = layout(fresh.url, admin)
    assert before["cqs"] and before["grants"] == {"farmedge-edge": [["farmedge", "WRITE"]],
                                                  "farmedge-grafana": [["farmedge", "READ"]]}

    again = provision(fresh.url, "--env-file", str(env_file), "--edge-env-file", str(edge_env))
    assert again.returncode == 0, again.stderr
    assert again.stderr.strip().splitlines() == [
        f"farmedge provision influx: {fresh.url}: already set up, nothing to do"]
    assert layout(fresh.url, admin) == before
    assert read_dotenv(env_file) == secrets_


def test_provision_influx_repairs_drift_and_refuses_a_wrong_admin(fresh: AuthInflux,
                                                                  tmp_path: Path) -> None:
    """Passwords from the environment and from *_FILE files; a user whose
    password or rights drifted is put back; a wrong admin password or a
    placeholder stops with a message and exit 1."""
    secret = tmp_path / "grafana.secret"
    secret.write_text("grafana-pw-2\n")
    env = _env(INFLUX_ADMIN_PASSWORD="admin-pw-2", INFLUX_EDGE_PASSWORD="edge-pw-2",
               INFLUX_GRAFANA_PASSWORD_FILE=str(secret), INFLUX_DATABASE="farm-db")
    assert provision(fresh.url, env=env).returncode == 0
    admin = ("admin", "admin-pw-2")
    query(fresh.url, "SET PASSWORD FOR \"farmedge-edge\" = 'other'", admin)
    query(fresh.url, 'GRANT ALL ON "farm-db" TO "farmedge-grafana"', admin)
    query(fresh.url, 'DROP CONTINUOUS QUERY "farmedge_hourly_rain" ON "farm-db"', admin)
    r = provision(fresh.url, env=env)
    assert r.returncode == 0, r.stderr
    assert "set the password of 'farmedge-edge' (it differed)" in r.stderr
    assert "granted READ on 'farm-db' to 'farmedge-grafana' (was ALL PRIVILEGES)" in r.stderr
    assert "created continuous query 'farmedge_hourly_rain' on 'farm-db'" in r.stderr
    assert "done (3 changes)" in r.stderr
    status, _ = _request(fresh.url, "/write?db=farm-db", user=("farmedge-edge", "edge-pw-2"),
                         body=b"water,sensor=t level=5")
    assert status == 204
    assert "nothing to do" in provision(fresh.url, env=env).stderr

    wrong = provision(fresh.url, env={**env, "INFLUX_ADMIN_PASSWORD": "nope"})
    assert wrong.returncode == 1
    assert "refused the admin user 'admin'" in wrong.stderr and "nope" not in wrong.stderr
    placeholder = provision(fresh.url, env={**env, "INFLUX_EDGE_PASSWORD": "change-me"})
    assert placeholder.returncode == 1 and "placeholder" in placeholder.stderr
    missing = provision(fresh.url, env=_env(INFLUX_ADMIN_PASSWORD="admin-pw-2"))
    assert missing.returncode == 1 and "no INFLUX_EDGE_PASSWORD" in missing.stderr


def test_setup_file_pipes_into_the_influx_cli(fresh: AuthInflux) -> None:
    """What docs/stack.md says to type: the first admin with the influx CLI,
    then ``envsubst < v1-setup.iql | influx`` (it used to stop at "found
    CREATE, expected ;"). Both ways give the same layout: `farmedge
    provision influx` afterwards has nothing to do."""
    influx, envsubst = shutil.which("influx"), shutil.which("envsubst")
    if not influx or not envsubst:
        pytest.skip("the influx CLI (Debian package influxdb-client) or envsubst "
                    "(gettext-base) is not installed; scripts/bootstrap installs them")
    port = fresh.url.rsplit(":", 1)[1]
    env = _env(**ENV, INFLUX_ADMIN_PASSWORD=ADMIN[1])
    first = subprocess.run(
        ["bash", "-c", "printf \"CREATE USER admin WITH PASSWORD '%s' WITH ALL PRIVILEGES\\n\" "
         f"\"$INFLUX_ADMIN_PASSWORD\" | influx -port {port}"],
        env=env, capture_output=True, text=True, timeout=60, check=False)
    assert first.returncode == 0, first.stdout + first.stderr
    piped = subprocess.run(
        ["bash", "-c", f"envsubst < {DEPLOY}/influxdb/v1-setup.iql | "
         f"INFLUX_USERNAME=admin INFLUX_PASSWORD=\"$INFLUX_ADMIN_PASSWORD\" influx -port {port}"],
        env=env, capture_output=True, text=True, timeout=60, check=False)
    assert piped.returncode == 0 and "ERR" not in piped.stdout + piped.stderr, \
        piped.stdout + piped.stderr
    after_cli = layout(fresh.url, ADMIN)
    assert {rp[0] for rp in after_cli["rps"]} >= {"raw", "hourly"}  # type: ignore[attr-defined]
    r = provision(fresh.url, env=env)
    assert r.returncode == 0, r.stderr
    assert "already set up, nothing to do" in r.stderr, r.stderr
    assert layout(fresh.url, ADMIN) == after_cli


def test_parse_iql() -> None:
    text = ("-- a comment; with a semicolon\nCREATE DATABASE \"a;b\";\n"
            "CREATE USER \"u\" WITH PASSWORD 'p;--q'  -- trailing\n;\n\n"
            "SHOW DATABASES")
    assert parse_iql(text) == ['CREATE DATABASE "a;b"', "CREATE USER \"u\" WITH PASSWORD "
                               "'p;--q'", "SHOW DATABASES"]
    assert substitute("CREATE USER \"${U}\" WITH PASSWORD '${P}'", {"U": "x", "P": "it's"}) \
        == "CREATE USER \"x\" WITH PASSWORD 'it\\'s'"
    assert len(parse_iql(SETUP_IQL.read_text())) == 9
