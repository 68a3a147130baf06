"""The Grafana alert rule on the edge's own metrics going stale
(dashboards/provisioning/alerting/farmedge-edge.yaml), evaluated against the
real InfluxDB: its InfluxQL query as the file holds it, then the rule's
reduce and threshold steps as Grafana runs them (no Grafana server runs
here). A live edge (a real process writing its self points) does not fire;
an instance whose last point is older than the window does; an empty
database is "no data", which the rule treats as alerting."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from farmedge_dev.devservers import InfluxServer, MosquittoServer, influx_query
from tests.edgeproc import EdgeProcess
from tests.stack_support import ROOT
from tests.support import eventually

pytestmark = [pytest.mark.servers]

RULES = ROOT / "dashboards" / "provisioning" / "alerting" / "farmedge-edge.yaml"


def _rule() -> dict[str, Any]:
    doc = yaml.safe_load(RULES.read_text())
    [group] = doc["groups"]
    [rule] = group["rules"]
    return dict(rule)


def _steps(rule: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["refId"]: d for d in rule["data"]}


def evaluate(rule: dict[str, Any], url: str, db: str) -> dict[str, bool] | None:
    """instance -> firing, or None for "no data": query A, reduce B (last),
    threshold C, the way Grafana's expressions do."""
    steps = _steps(rule)
    series = influx_query(url, steps["A"]["model"]["query"], db)
    if not series:
        return None
    reducer = steps["B"]["model"]["reducer"]
    assert reducer == "last" and steps["B"]["model"]["expression"] == "A"
    [cond] = steps["C"]["model"]["conditions"]
    assert cond["evaluator"]["type"] == "lt" and steps["C"]["model"]["expression"] == "B"
    limit = float(cond["evaluator"]["params"][0])
    out: dict[str, bool] = {}
    for s in series:
        values = [v[1] for v in s["values"] if v[1] is not None]  # type: ignore[index]
        out[str(s["tags"]["instance"])] = float(values[-1]) < limit  # type: ignore[index]
    return out


def _write(url: str, db: str, lines: list[str]) -> None:
    req = urllib.request.Request(f"{url}/write?db={db}&precision=ms",
                                 data="\n".join(lines).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 204


def _self_points(instance: str, last_ms: int, minutes: int) -> list[str]:
    """What the edge writes every 10 s (farmedge/edge: measurement edge, tag
    instance), the newest at ``last_ms``."""
    return [f"edge,instance={instance} messages={i}i,readings={i * 10}i,influx_up=true,"
            f"mqtt_connected=true {last_ms - i * 10_000}" for i in range(minutes * 6)]


def test_the_rule_file_is_what_grafana_provisions() -> None:
    rule = _rule()
    steps = _steps(rule)
    assert rule["condition"] == "C" and set(steps) == {"A", "B", "C"}
    # The data source Grafana is given next to it.
    ds = yaml.safe_load((RULES.parent.parent / "datasources" / "farmedge.yaml").read_text())
    assert steps["A"]["datasourceUid"] == ds["datasources"][0]["uid"]
    assert steps["B"]["datasourceUid"] == steps["C"]["datasourceUid"] == "__expr__"
    assert steps["A"]["model"]["rawQuery"] is True
    # A dead edge and a dead InfluxDB both alert, not just a stale series.
    assert rule["noDataState"] == "Alerting" and rule["execErrState"] == "Alerting"
    assert rule["labels"]["severity"] == "critical"
    assert "{{ $labels.instance }}" in rule["annotations"]["summary"]


def test_a_live_edge_does_not_fire_a_stale_one_does(
        mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str,
        tmp_path: Path) -> None:
    rule = _rule()
    assert evaluate(rule, influxdb.url, influx_db) is None   # nothing yet: no data
    now = int(time.time() * 1000)
    _write(influxdb.url, influx_db,
           _self_points("edge-dead", now - 4 * 60_000, 20)      # silent for 4 min
           + _self_points("edge-paused", now - 30_000, 20)      # its last point 30 s ago
           + _self_points("edge-gone", now - 25 * 3600_000, 5))  # not seen for a day
    edge = EdgeProcess(mqtt_url=mosquitto.url, influx_url=influxdb.url, database=influx_db,
                       data_dir=tmp_path / "edge",
                       extra_env={"FARMEDGE_INSTANCE": "edge-live"}).start()
    try:
        # The real edge's own point (every 10 s).
        eventually(lambda: influx_query(
            influxdb.url, "SELECT count(\"messages\") FROM \"edge\" "
            "WHERE \"instance\" = 'edge-live'", influx_db), timeout=60,
            what="the edge's self point in InfluxDB")
        assert evaluate(rule, influxdb.url, influx_db) == {
            "edge-live": False, "edge-paused": False, "edge-dead": True}
    finally:
        edge.stop()
