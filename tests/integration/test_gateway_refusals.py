"""The gateway agent against a real Mosquitto 2.0 that refuses some of its
messages (MQTT 5 PUBACK reason codes; docs/gateway.md "When the broker
refuses a message").

What Mosquitto 2.0.11 sends, found with a paho client: an ACL denial is a
PUBACK 0x87 (not authorized), the connection stays up; a PUBLISH over
``message_size_limit`` is a PUBACK 0x95 (packet too large: a code MQTT 5
allows only in CONNACK and DISCONNECT, which paho took for a malformed
packet until the transport taught it otherwise), and with
``max_inflight_messages 0`` or ``max_queued_messages 0`` (farmedge's
broker settings) the broker closes the connection right after; ``max_packet_size``
announces its limit in the CONNACK and disconnects a client that sends
more. MQTT 3.1.1 clients get a plain PUBACK for all of these: the broker
drops the message without a word."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from farmedge.contract import GatewayStatus
from farmedge.gateway.drivers import Sample
from farmedge_dev.devservers import MosquittoServer
from tests.gateway_support import AgentThread, Subscriber, gw_settings
from tests.support import eventually

pytestmark = pytest.mark.servers

#: The one reading too large to go alone under the broker's size limit.
BIG = "probe-" + "a" * 58


class _Readings:
    """Soil moisture of ``soil-1``, each on its own millisecond; the
    ``big_at``-th read also gives one reading of sensor ``BIG``."""

    def __init__(self, big_at: int | None = None) -> None:
        self.n = 0
        self.reads = 0
        self.big_at = big_at
        self.last = 0
        self.lock = threading.Lock()

    def read(self) -> list[Sample]:
        with self.lock:
            self.reads += 1
            now = time.clock_gettime_ns(time.CLOCK_BOOTTIME) // 1_000_000
            self.last = max(now, self.last + 3)
            out = [Sample("soil_moisture", float(self.n % 100), "%", mono_ms=self.last)]
            self.n += 1
            if self.reads == self.big_at:
                self.last += 3
                out.append(Sample("soil_moisture", 42.0, "%", mono_ms=self.last, sensor=BIG))
            return out

    def close(self) -> None:
        pass


def test_messages_the_broker_finds_too_large_are_split_although_it_drops_the_connection(
        tmp_path: Path, county: str,
        mosquitto_factory: Callable[..., MosquittoServer]) -> None:
    """The shipped broker settings (``max_inflight_messages 0``): Mosquitto
    2.0.11 answers a PUBLISH over ``message_size_limit`` with PUBACK 0x95,
    then closes the connection. JSON messages of 3 readings (338 bytes) fit
    in 400, of 4 (423) not: the uplink learns the limit across the
    reconnects and every reading arrives; nothing is set aside or dropped."""
    broker = mosquitto_factory(extra_conf="message_size_limit 400\n")
    sub = Subscriber(broker.url, county)
    drv = _Readings()
    s = gw_settings(tmp_path, broker.url, county, uplink={"encoding": "json"},
                    sensors=[{"driver": "simulated", "id": "soil-1", "interval_s": 0.02}])
    agent = AgentThread(s, drivers={"soil-1": drv}).start()
    try:
        eventually(lambda: len(sub.readings()) >= 150, timeout=60, what="readings flow")
        limit = agent.agent.uplink.refusals.batch_limit
        assert limit is not None and limit <= 3
    finally:
        agent.stop()  # drains the outbox
    try:
        ob = agent.agent.outbox
        assert ob.depth == 0 and ob.dropped == 0 and ob.aside.count == 0
        eventually(lambda: len({(x, t) for x, _, t, _ in sub.readings()})
                   == agent.agent.samples, timeout=30,
                   what=f"all {agent.agent.samples} readings delivered")
        assert all(n <= 400 for n in sub.sizes)
    finally:
        sub.close()


def test_a_reading_too_large_even_alone_is_set_aside_and_the_rest_flows(
        tmp_path: Path, county: str,
        mosquitto_factory: Callable[..., MosquittoServer]) -> None:
    """A broker that keeps the connection after a refusal (Mosquitto with
    limits on in-flight and queued messages) and takes 200 bytes at most: JSON
    messages of one reading (168 bytes) go, of two (253) not. The one
    reading of 226 bytes alone is set aside (kept in the outbox's
    ``refused`` table, counted in the status's ``refused``), not dropped,
    and every other reading arrives. (The status, 300 bytes, is refused
    too, so it is read from the agent.)"""
    broker = mosquitto_factory(extra_conf="message_size_limit 200\nmax_inflight_messages 20\n"
                     "max_queued_messages 1000\n")
    sub = Subscriber(broker.url, county)
    drv = _Readings(big_at=5)
    s = gw_settings(tmp_path, broker.url, county, uplink={"encoding": "json"},
                    sensors=[{"driver": "simulated", "id": "soil-1", "interval_s": 0.05}])
    agent = AgentThread(s, drivers={"soil-1": drv}).start()
    try:
        eventually(lambda: len(sub.readings()) >= 60, timeout=60,
                   what="readings flow past the refused one")
        eventually(lambda: agent.agent.outbox.aside.count == 1, timeout=30,
                   what="the reading set aside")
        st = GatewayStatus.model_validate_json(agent.agent.status(True))
        assert st.refused == 1 and st.publish_refused is None
    finally:
        agent.stop()
    try:
        ob = agent.agent.outbox
        assert ob.dropped == 0, "set aside, not dropped"
        got = {(x, t) for x, _, t, _ in sub.readings()}
        assert BIG not in {x for x, _ in got}
        eventually(lambda: len({(x, t) for x, _, t, _ in sub.readings()})
                   == agent.agent.samples - 1 - ob.depth, timeout=30,
                   what="every other reading delivered")
        with sqlite3.connect(s.outbox_path) as db:
            assert db.execute("SELECT sensor, code FROM refused").fetchall() == [(BIG, 0x95)]
    finally:
        sub.close()


def test_a_broker_that_denies_the_telemetry_topic_keeps_the_readings_until_it_allows_it(
        tmp_path: Path, county: str,
        mosquitto_factory: Callable[..., MosquittoServer]) -> None:
    """An ACL that lets the gateway publish its status but not its
    telemetry (PUBACK 0x87): the readings wait in the outbox, the status
    says ``publish_refused: 135``; once the ACL allows it (the broker
    reloads it on SIGHUP), every reading arrives, none set aside or dropped."""
    acl = tmp_path / "acl"
    acl.write_text("topic read farm/#\ntopic write farm/v1/+/+/+/status\n")
    broker = mosquitto_factory(extra_conf=f"acl_file {acl}\n")
    sub = Subscriber(broker.url, county)
    drv = _Readings()
    s = gw_settings(tmp_path, broker.url, county,
                    sensors=[{"driver": "simulated", "id": "soil-1", "interval_s": 0.05}])
    agent = AgentThread(s, drivers={"soil-1": drv}).start()
    try:
        st = eventually(lambda: [x for x in sub.status if x.get("publish_refused")],
                        timeout=30, what="the status says the broker refuses the telemetry")[-1]
        assert GatewayStatus.model_validate(st).publish_refused == 0x87
        assert sub.readings() == []
        eventually(lambda: agent.agent.outbox.depth >= 40, timeout=30,
                   what="readings kept meanwhile")
        acl.write_text("topic readwrite farm/#\n")
        assert broker.proc is not None
        os.kill(broker.proc.pid, signal.SIGHUP)
        eventually(lambda: len(sub.readings()) >= 40, timeout=60, what="readings flow again")
        n = len(sub.status)
        eventually(lambda: [x for x in sub.status[n:]
                            if x.get("online") and not x.get("publish_refused")],
                   timeout=30, what="the status no longer says so")
    finally:
        agent.stop()  # drains the outbox
        sub_readings = sub.readings
        broker_url = broker.url
    try:
        ob = agent.agent.outbox
        assert ob.depth == 0 and ob.dropped == 0 and ob.aside.count == 0
        eventually(lambda: len({(x, t) for x, _, t, _ in sub_readings()})
                   == agent.agent.samples, timeout=30,
                   what=f"all {agent.agent.samples} readings delivered via {broker_url}")
    finally:
        sub.close()
