"""deploy/influxdb/v1-setup.iql against a real InfluxDB 1.x with
authentication on: retention policies, the hourly continuous queries (their
bodies run as the documented backfill), and least privilege (the edge's user
writes only, Grafana's reads only)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from .stack_support import ADMIN, ENV, HOUR_MS, AuthInflux, _request, query, setup_v1, statements

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
