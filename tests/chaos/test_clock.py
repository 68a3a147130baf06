"""The edge's own clock: when it runs behind, good readings of synced
gateways look as if they came from the future. /healthz then answers 503
with status "degraded" and says why, instead of 200."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from farmedge_dev.devservers import InfluxServer, MosquittoServer
from tests.edgeproc import EdgeProcess
from tests.support import Publisher, count, eventually, make_payload

pytestmark = [pytest.mark.servers, pytest.mark.chaos]


def _publish(url: str, county: str, ahead_ms: int, messages: int, seq0: int = 0,
             prefix: str = "s") -> None:
    pub = Publisher(url)
    now = int(time.time() * 1000)
    for m in range(messages):
        readings = [{"sensor": f"{prefix}{i}", "kind": "soil_moisture", "ts": now + ahead_ms + m,
                     "value": 20.5, "unit": "%"} for i in range(10)]
        pub.publish(f"farm/v1/{county}/f/gw-{m % 3}/telemetry",
                    make_payload(f"gw-{m % 3}", seq0 + m, readings))
    pub.close()


def _degraded(edge: EdgeProcess) -> dict[str, object] | None:
    h = edge.health()
    return h if h.get("http_status") == 503 and h.get("status") == "degraded" else None


@pytest.mark.parametrize(("ahead_s", "says"), [
    (600, "rejected as ts_in_future"),   # the edge 10 minutes behind: readings rejected
    (120, "120 s ahead"),                 # 2 minutes behind: accepted, but all "ahead"
])
def test_an_edge_clock_running_behind_degrades_healthz(
        mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str, county: str,
        tmp_path: Path, ahead_s: int, says: str) -> None:
    edge = EdgeProcess(mqtt_url=mosquitto.url, influx_url=influxdb.url, database=influx_db,
                       data_dir=tmp_path / "edge", county=county).start()
    try:
        _publish(mosquitto.url, county, 0, 30, prefix="now")
        eventually(lambda: count(influxdb.url, influx_db, "soil", "moisture") == 300,
                   timeout=30)
        assert edge.health()["http_status"] == 200, "readings on time: healthy"
        _publish(mosquitto.url, county, ahead_s * 1000, 30, seq0=30)
        h = eventually(lambda: _degraded(edge), timeout=30, what="/healthz degraded")
        reasons = h["reasons"]
        assert isinstance(reasons, list)
        assert any(r.startswith("clock:") and says in r for r in reasons), reasons
    finally:
        edge.stop()
