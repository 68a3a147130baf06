"""A gateway's full SD card: the real agent on an 8 MiB tmpfs mounted by the
test, the real broker. The outbox stops taking readings, counts what it
could not keep (``dropped``), says so in its status (``outbox_full``), and
takes readings again once there is room: every reading taken is either
delivered or counted, exactly."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farmedge.contract import GatewayStatus, encode_status
from farmedge.gateway.drivers import Sample
from farmedge_dev.devservers import InfluxServer, MosquittoServer, influx_query
from tests.disks import fill_disk, small_tmpfs
from tests.edgeproc import EdgeProcess
from tests.gateway_support import AgentThread, Subscriber, gw_settings
from tests.support import Publisher, eventually

pytestmark = [pytest.mark.servers, pytest.mark.chaos, pytest.mark.slow]


@pytest.fixture
def sd_card(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path, "8m", "sd") as mnt:
        yield mnt


class _Counter:
    """Soil moisture readings, each on its own millisecond (3 ms apart)."""

    def __init__(self, per_read: int) -> None:
        self.n = 0
        self.per_read = per_read
        self.last = 0
        self.lock = threading.Lock()

    def read(self) -> list[Sample]:
        with self.lock:
            out = []
            for _ in range(self.per_read):
                now = time.clock_gettime_ns(time.CLOCK_BOOTTIME) // 1_000_000
                self.last = max(now, self.last + 3)
                out.append(Sample("soil_moisture", float(self.n % 100), "%",
                                  mono_ms=self.last))
                self.n += 1
            return out

    def close(self) -> None:
        pass


def test_a_full_sd_card_stops_taking_readings_counts_them_and_recovers(
        sd_card: Path, mosquitto: MosquittoServer, county: str) -> None:
    sub = Subscriber(mosquitto.url, county)
    drv = _Counter(per_read=5)
    s = gw_settings(sd_card, mosquitto.url, county,
                    sensors=[{"driver": "simulated", "id": "soil-1", "interval_s": 0.02}])
    agent = AgentThread(s, drivers={"soil-1": drv}).start()
    try:
        eventually(lambda: len(sub.readings()) >= 200, timeout=30, what="readings flow")
        filler = fill_disk(sd_card)
        full = eventually(lambda: [x for x in sub.status if x.get("outbox_full")], timeout=30,
                          what="status says the outbox is full")[-1]
        GatewayStatus.model_validate(full)
        taken_when_full = drv.n
        eventually(lambda: drv.n >= taken_when_full + 500, timeout=30,
                   what="readings taken while full")
        late = eventually(lambda: [x for x in sub.status if x.get("outbox_full")], timeout=30)
        assert late[-1]["dropped"] > 0, "what it could not keep is counted"
        n_status = len(sub.status)
        filler.unlink()
        eventually(lambda: [x for x in sub.status[n_status:]
                            if x.get("online") and not x.get("outbox_full")],
                   timeout=30, what="status says there is room again")
        n_after = len(sub.readings())
        eventually(lambda: len(sub.readings()) >= n_after + 200, timeout=30,
                   what="readings flow again")
        assert agent.agent.outbox.full is False
    finally:
        agent.stop()
    dropped = agent.agent.outbox.dropped
    # Acknowledged readings whose removal the full disk undid are sent again
    # at the next start (the edge stores a reading once): start again.
    again = AgentThread(s, drivers={"soil-1": drv}).start()
    try:
        n = len(sub.readings())
        eventually(lambda: len(sub.readings()) >= n + 100, timeout=30)
        assert again.agent.outbox.dropped == dropped, "the count is kept on disk"
    finally:
        again.stop()  # drains the outbox
    assert again.agent.outbox.depth == 0

    # what the agents took (a read in progress at a stop is not taken)
    taken = agent.agent.samples + again.agent.samples

    def accounted() -> bool:
        got = {(sensor, ts) for sensor, _, ts, _ in sub.readings()}
        return len(got) + dropped == taken

    eventually(accounted, timeout=30,
               what=f"every one of {taken} readings delivered or counted as dropped")
    assert dropped > 0
    sub.close()


def test_a_gateway_started_on_a_full_sd_card_sends_its_backlog_and_recovers(
        sd_card: Path, mosquitto: MosquittoServer, county: str) -> None:
    """A power cut on a full card: the agent must start, not crash-loop."""
    from farmedge_dev.devservers import free_port

    drv = _Counter(per_read=5)
    sensors = [{"driver": "simulated", "id": "soil-1", "interval_s": 0.02}]
    offline = gw_settings(sd_card, f"mqtt://127.0.0.1:{free_port()}", county, sensors=sensors)
    agent = AgentThread(offline, drivers={"soil-1": drv}).start()
    try:
        eventually(lambda: agent.agent.outbox.depth >= 500, timeout=30, what="a backlog")
    finally:
        agent.stop()
    backlog = agent.agent.outbox.depth
    first_samples = agent.agent.samples
    filler = fill_disk(sd_card)
    sub = Subscriber(mosquitto.url, county)
    s = gw_settings(sd_card, mosquitto.url, county, sensors=sensors)
    agent = AgentThread(s, drivers={"soil-1": drv}).start()
    try:
        eventually(lambda: [x for x in sub.status if x.get("outbox_full")], timeout=30,
                   what="status says the outbox is full")
        eventually(lambda: len(sub.readings()) >= backlog, timeout=30,
                   what="the backlog sent from the full card")
        filler.unlink()
        n_status = len(sub.status)
        eventually(lambda: [x for x in sub.status[n_status:]
                            if x.get("online") and not x.get("outbox_full")],
                   timeout=30, what="status says there is room again")
        n = len(sub.readings())
        eventually(lambda: len(sub.readings()) >= n + 100, timeout=30,
                   what="readings kept and sent again")
    finally:
        agent.stop()
    dropped = agent.agent.outbox.dropped
    taken = first_samples + agent.agent.samples
    eventually(lambda: len({(x, t) for x, _, t, _ in sub.readings()}) + dropped == taken,
               timeout=30, what=f"every one of {taken} readings delivered or counted")
    assert dropped > 0
    sub.close()


def test_the_edge_stores_outbox_full_and_its_clearing(
        mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str, county: str,
        tmp_path: Path) -> None:
    edge = EdgeProcess(mqtt_url=mosquitto.url, influx_url=influxdb.url, database=influx_db,
                       data_dir=tmp_path / "edge", county=county).start()
    try:
        pub = Publisher(mosquitto.url)
        for full in (True, False):
            pub.publish(f"farm/v1/{county}/f/gw-1/status",
                        encode_status(gateway="gw-1", online=True, dropped=7, outbox_full=full))
        pub.close()

        def rows() -> list[object]:
            series = influx_query(influxdb.url, "SELECT outbox_full FROM gateway", influx_db)
            return [v[1] for v in series[0]["values"]] if series else []

        assert eventually(lambda: len(rows()) == 2 and rows(), timeout=30) == [True, False]
    finally:
        edge.stop()


def _inflight_of_open_transaction(agent: AgentThread) -> bool:
    """The uplink awaits a PUBACK for readings the outbox has not committed yet."""
    ob, up = agent.agent.outbox, agent.agent.uplink
    try:
        return any(r.id > ob._ids.committed for rows, _ in list(up._inflight.values())
                   for r in rows)
    except RuntimeError:  # changed while looked at (the agent's thread)
        return False


def test_a_broker_outage_with_a_batch_in_flight_then_a_full_card_loses_nothing_uncounted(
        sd_card: Path, mosquitto: MosquittoServer, county: str) -> None:
    """Published, never acknowledged (the link goes dead, then down), and
    the card fills while the readings are not committed yet: the full disk
    undoes their transaction. They must still reach the broker (held in
    memory, sent again after the outage) or be counted in ``dropped``."""
    from tests.netproxy import Proxy

    proxy = Proxy("127.0.0.1", mosquitto.port)
    sub = Subscriber(mosquitto.url, county)
    drv = _Counter(per_read=5)
    s = gw_settings(sd_card, proxy.url, county,
                    outbox={"commit_interval_s": 5.0}, uplink={"batch_max_wait_s": 0.05},
                    sensors=[{"driver": "simulated", "id": "soil-1", "interval_s": 0.02}])
    agent = AgentThread(s, drivers={"soil-1": drv}).start()
    filler: Path | None = None
    try:
        eventually(lambda: len(sub.readings()) >= 200, timeout=30, what="readings flow")
        proxy.blackhole()  # publishes go nowhere: no PUBACK
        eventually(lambda: _inflight_of_open_transaction(agent), timeout=30,
                   what="a batch of the open transaction awaiting its PUBACK")
        filler = fill_disk(sd_card)
        eventually(lambda: agent.agent.outbox.full, timeout=30, what="the outbox is full")
        proxy.cut()  # the outage: that connection is gone, its PUBACKs never come
        eventually(lambda: not agent.agent.uplink.connected, timeout=30, what="disconnected")
        taken_when_full = drv.n
        eventually(lambda: drv.n >= taken_when_full + 200, timeout=30,
                   what="readings taken while full and offline")
        proxy.restore()
        filler.unlink()
        filler = None
        eventually(lambda: not agent.agent.outbox.full, timeout=30, what="room again")
        n = len(sub.readings())
        eventually(lambda: len(sub.readings()) >= n + 200, timeout=30,
                   what="readings flow again")
    finally:
        if filler is not None:
            filler.unlink()
        agent.stop()  # drains the outbox
        proxy.close()
    dropped = agent.agent.outbox.dropped
    taken = agent.agent.samples
    assert agent.agent.outbox.depth == 0
    eventually(lambda: len({(x, t) for x, _, t, _ in sub.readings()}) + dropped == taken,
               timeout=30, what=f"every one of {taken} readings delivered or counted "
               f"(delivered {len({(x, t) for x, _, t, _ in sub.readings()})}, "
               f"dropped {dropped})")
    assert dropped > 0
    sub.close()
