"""Two edge instances on one MQTT 5 shared subscription ($share/edge/...),
behind a real Mosquitto 2.0 running the shipped configuration with
provisioned accounts: the broker spreads the gateways' messages over both,
and InfluxDB holds every reading exactly once, also when one instance is
killed mid-stream and comes back (docs/scaling.md). And with the broker's
rules out of the way (the demo's simulator account, which may publish as any
gateway), the edge itself still
rejects a topic and payload that disagree."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from farmedge.cli import main
from farmedge_dev.devservers import InfluxServer, influx_query
from tests.edgeproc import EdgeProcess
from tests.stack_support import Client, ShippedBroker
from tests.support import count, eventually, make_payload

pytestmark = [pytest.mark.servers, pytest.mark.slow]


def _provision(broker: ShippedBroker, role: str, name: str,
               capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """`provision edge|simulator` on the running broker: (username, password)."""
    capsys.readouterr()
    assert main(["provision", role, "--name", name, "--broker-dir",
                 str(broker.config_dir)]) == 0
    out = dict(ln.split(": ", 1) for ln in capsys.readouterr().out.splitlines())
    return out["username"], out["password"]


def _edge(broker: ShippedBroker, influxdb: InfluxServer, db: str, tmp: Path, name: str,
          account: tuple[str, str], county: str) -> EdgeProcess:
    return EdgeProcess(
        mqtt_url=f"mqtt://127.0.0.1:{broker.port}", influx_url=influxdb.url, database=db,
        data_dir=tmp / name, client_id=f"farmedge-{name}",
        extra_env={"FARMEDGE_MQTT_USERNAME": account[0], "FARMEDGE_MQTT_PASSWORD": account[1],
                   "FARMEDGE_MQTT_SHARE_GROUP": "edge", "FARMEDGE_INSTANCE": name,
                   "FARMEDGE_MQTT_TOPICS": f'["farm/v1/{county}/+/+/telemetry", '
                                           f'"farm/v1/{county}/+/+/status"]'})


def _messages_taken(edge: EdgeProcess) -> int:
    m = re.search(r"^farmedge_messages_total (\S+)$", edge.metrics(), re.M)
    return int(float(m.group(1))) if m else 0


def test_two_edges_share_the_gateways_without_losing_or_doubling(
        tmp_path: Path, influxdb: InfluxServer, influx_db: str, county: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    broker = ShippedBroker(tmp_path / "broker").start()
    edges: list[EdgeProcess] = []
    try:
        acct_a = _provision(broker, "edge", "edge-a", capsys)
        acct_b = _provision(broker, "edge", "edge-b", capsys)
        sim_user, pw_sim = _provision(broker, "simulator", "simulator", capsys)
        edges = [_edge(broker, influxdb, influx_db, tmp_path, n, a, county)
                 for n, a in (("edge-a", acct_a), ("edge-b", acct_b))]
        for e in edges:
            e.start()

        gateways = [f"gw-{i}" for i in range(8)]
        per_message, rounds = 5, 60
        total = len(gateways) * rounds * per_message
        base = int(time.time() * 1000) - 3_600_000
        pub = Client(broker.port, sim_user, pw_sim, client_id=f"sim-{county}")
        assert pub.connect() == 0
        done = threading.Event()

        def publish() -> None:
            for r in range(rounds):
                for g, gw in enumerate(gateways):
                    readings = [{"sensor": f"s{j}", "kind": "soil_moisture",
                                 "ts": base + r * 1000 + g, "value": 20 + j, "unit": "%"}
                                for j in range(per_message)]
                    rc = pub.publish(f"farm/v1/{county}/farm-{g % 3}/{gw}/telemetry",
                                     make_payload(gw, r, readings))
                    assert rc in {0, 16}
            done.set()

        t = threading.Thread(target=publish, daemon=True)
        t.start()
        # Kill one instance mid-stream: its unacknowledged messages stay in its
        # persistent session on the broker until it comes back.
        eventually(lambda: count(influxdb.url, influx_db, "soil", "moisture") > total // 4,
                   timeout=60, what="a quarter stored")
        edges[1].kill()
        restarted = _edge(broker, influxdb, influx_db, tmp_path, "edge-b", acct_b, county)
        edges[1] = restarted
        t.join(120)
        assert done.is_set()
        restarted.start()
        eventually(lambda: count(influxdb.url, influx_db, "soil", "moisture") == total,
                   timeout=90, what=f"all {total} readings stored")
        # Exactly once: no series holds more points than it was sent.
        per_series = influx_query(
            influxdb.url, 'SELECT count("moisture") FROM "soil" GROUP BY "gateway", "sensor"',
            influx_db)
        assert len(per_series) == len(gateways) * per_message
        assert {s["values"][0][1] for s in per_series} == {rounds}  # type: ignore[index]
        # Both instances took a share after the restart too.
        after = [_messages_taken(e) for e in edges]
        more = [make_payload(gw, rounds + 1, [{"sensor": "s0", "kind": "soil_moisture",
                                                "ts": base + 999_000 + i, "value": 1,
                                                "unit": "%"}])
                for i, gw in enumerate(gateways * 5)]
        for i, p in enumerate(more):
            gw = (gateways * 5)[i]
            assert pub.publish(f"farm/v1/{county}/farm-x/{gw}/telemetry", p) in {0, 16}
        eventually(lambda: sum(_messages_taken(e) for e in edges) >= sum(after) + len(more),
                   what="the extra messages taken")
        took = [_messages_taken(e) - a for e, a in zip(edges, after, strict=True)]
        assert all(n > 0 for n in took), took
        assert sum(took) == len(more), took  # each message went to one instance only
        pub.close()
    finally:
        for e in edges:
            e.stop()
        broker.stop()


def test_edge_rejects_a_forged_gateway_even_when_the_broker_lets_it_through(
        tmp_path: Path, influxdb: InfluxServer, influx_db: str, county: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The simulator account may publish as any gateway (as an open broker
    would): a payload naming another gateway than its topic is dead-lettered
    as gateway_mismatch, and nothing of it is stored."""
    broker = ShippedBroker(tmp_path / "broker").start()
    try:
        edge_user, pw = _provision(broker, "edge", "edge", capsys)
        sim_user, pw_sim = _provision(broker, "simulator", "simulator", capsys)
        # The account in the URL, as a site may write it ("~" needs no escaping).
        edge = EdgeProcess(mqtt_url=f"mqtt://{edge_user}:{pw}@127.0.0.1:{broker.port}",
                           influx_url=influxdb.url, database=influx_db,
                           data_dir=tmp_path / "edge", county=county).start()
        try:
            pub = Client(broker.port, sim_user, pw_sim)
            assert pub.connect() == 0
            ts = int(time.time() * 1000) - 60_000
            reading = {"sensor": "s1", "kind": "soil_moisture", "ts": ts, "value": 21.0,
                       "unit": "%"}
            forged = make_payload("gw-b", 1, [reading])
            assert pub.publish(f"farm/v1/{county}/farm-1/gw-a/telemetry", forged) in {0, 16}
            honest = make_payload("gw-a", 1, [dict(reading, sensor="s2")])
            assert pub.publish(f"farm/v1/{county}/farm-1/gw-a/telemetry", honest) in {0, 16}
            eventually(lambda: count(influxdb.url, influx_db, "soil", "moisture") == 1,
                       what="the honest reading stored")
            rows = eventually(lambda: influx_query(
                influxdb.url, 'SELECT "detail", "reason", "gateway" FROM "ingest_errors"',
                influx_db), what="the forged message dead-lettered")
            assert [r[2:] for r in rows[0]["values"]] == [  # type: ignore[index]
                ["gateway_mismatch", "gw-a"]]
            assert influx_query(influxdb.url, 'SELECT * FROM "soil" WHERE "sensor" = \'s1\'',
                                influx_db) == []
            pub.close()
        finally:
            edge.stop()
    finally:
        broker.stop()
