"""The transport's one Publisher against the real Mosquitto: QoS 1 counted
on PUBACK, retained messages, the last will on an unclean end, refusals
translated, and the shared reconnect loop coming back after a broker
restart."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from farmedge.backoff import Backoff
from farmedge.logs import get_logger
from farmedge.transport.broker import parse_broker_url
from farmedge.transport.errors import BrokerUnreachable, ConnectRefused, NotConnected
from farmedge.transport.publisher import Message, Publisher, Received
from farmedge.transport.reconnect import reconnect_forever
from farmedge_dev.devservers import MosquittoServer, free_port
from tests.support import eventually

pytestmark = pytest.mark.servers


def _id() -> str:
    return "t-" + uuid.uuid4().hex[:8]


class Inbox:
    """A subscriber made of the Publisher itself (its simple subscriptions)."""

    def __init__(self, url: str, *filters: str) -> None:
        self.got: list[Received] = []
        self._lock = threading.Lock()
        self.pub = Publisher(parse_broker_url(url), client_id=_id(), on_message=self._add)
        self.pub.connect(10)
        assert self.pub.subscribe(list(filters), qos=1) == [1] * len(filters)

    def _add(self, m: Received) -> None:
        with self._lock:
            self.got.append(m)

    def on(self, topic: str) -> list[Received]:
        with self._lock:
            return [m for m in self.got if m.topic == topic]


def test_qos1_messages_are_counted_on_their_puback(mosquitto: MosquittoServer,
                                                   county: str) -> None:
    topic = f"farm/v1/{county}/f/g/telemetry"
    inbox = Inbox(mosquitto.url, topic)
    acks: dict[int, int] = {}
    lock = threading.Lock()

    def acked(mid: int, code: int) -> None:
        with lock:
            acks[mid] = code

    pub = Publisher(parse_broker_url(mosquitto.url), client_id=_id(), on_ack=acked,
                    max_inflight=10)
    pub.connect(10)
    try:
        mids = [pub.publish(topic, json.dumps({"n": i}).encode(), qos=1,
                            content_type="application/json") for i in range(200)]
        assert len(set(mids)) == 200
        eventually(lambda: len(acks) == 200, what="200 PUBACKs")
        assert set(acks) == set(mids) and set(acks.values()) == {0}  # success
        got = eventually(lambda: (m := inbox.on(topic)) and len(m) == 200 and m,
                         what="200 messages at the subscriber")
        assert [json.loads(m.payload)["n"] for m in got] == list(range(200))
        assert {m.content_type for m in got} == {"application/json"}
    finally:
        pub.close()
        inbox.pub.close()
    with pytest.raises(NotConnected):
        pub.publish(topic, b"late")


def test_a_retained_message_reaches_a_later_subscriber(mosquitto: MosquittoServer,
                                                       county: str) -> None:
    topic = f"farm/v1/{county}/f/g/status"
    pub = Publisher(parse_broker_url(mosquitto.url), client_id=_id())
    pub.connect(10)
    assert pub.publish_wait(Message(topic, b'{"online":true}', qos=1, retain=True), 10)
    pub.close()
    inbox = Inbox(mosquitto.url, topic)
    try:
        [m] = eventually(lambda: inbox.on(topic), what="the retained status")
        assert m.retain and m.payload == b'{"online":true}'
    finally:
        inbox.pub.close()


CHILD = """
import os, sys
from farmedge.transport.broker import parse_broker_url
from farmedge.transport.publisher import Message, Publisher
url, topic, protocol = sys.argv[1:4]
p = Publisher(parse_broker_url(url), client_id="will-" + str(os.getpid()), keepalive_s=5,
              will=Message(topic, b'{"online":false}', qos=1, retain=True), protocol=protocol,
              persistent_session=protocol == "3.1.1")
p.connect(10)
assert p.publish_wait(Message(topic, b'{"online":true}', qos=1, retain=True), 10)
print("up", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_the_last_will_is_left_retained_when_the_process_dies(mosquitto: MosquittoServer,
                                                              county: str, protocol: str) -> None:
    topic = f"farm/v1/{county}/f/g/status"
    child = subprocess.Popen([sys.executable, "-c", CHILD, mosquitto.url, topic, protocol],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"up\n"
        inbox = Inbox(mosquitto.url, topic)
        eventually(lambda: [m for m in inbox.on(topic) if m.payload == b'{"online":true}'],
                   what="the online status")
        child.kill()  # no DISCONNECT: the broker sends the will
        child.wait(10)
        eventually(lambda: [m for m in inbox.on(topic) if m.payload == b'{"online":false}'],
                   what="the last will")
        inbox.pub.close()
        late = Inbox(mosquitto.url, topic)
        [m] = eventually(lambda: late.on(topic), what="the will, retained")
        assert m.retain and m.payload == b'{"online":false}'
        late.pub.close()
    finally:
        if child.poll() is None:
            child.kill()


def test_mqtt_3_1_1_keeps_a_persistent_session_and_sends_no_properties(
        mosquitto: MosquittoServer, county: str) -> None:
    topic = f"farm/v1/{county}/f/g/telemetry"
    status = f"farm/v1/{county}/f/g/status"
    inbox = Inbox(mosquitto.url, topic, status)  # an MQTT 5 subscriber
    acks: dict[int, int] = {}
    lock = threading.Lock()

    def acked(mid: int, code: int) -> None:
        with lock:
            acks[mid] = code

    cid = _id()

    def make() -> Publisher:
        return Publisher(parse_broker_url(mosquitto.url), client_id=cid, protocol="3.1.1",
                         persistent_session=True, on_ack=acked, max_inflight=10,
                         will=Message(status, b"offline", qos=1, retain=True,
                                      content_type="application/json"))

    pub = make()
    pub.connect(10)
    try:
        mids = [pub.publish(topic, json.dumps({"n": i}).encode(), qos=1,
                            content_type="application/json") for i in range(50)]
        eventually(lambda: len(acks) == 50, what="50 PUBACKs")
        assert set(acks) == set(mids) and set(acks.values()) == {0}
        assert pub.publish_wait(Message(status, b"online", qos=1, retain=True,
                                        content_type="application/json"), 10)
        got = eventually(lambda: (m := inbox.on(topic)) and len(m) == 50 and m,
                         what="50 messages at the subscriber")
        assert [json.loads(m.payload)["n"] for m in got] == list(range(50))
        assert {m.content_type for m in got} == {None}  # 3.1.1 has no properties
        [st] = eventually(lambda: inbox.on(status), what="the status")
        assert st.payload == b"online" and st.content_type is None
    finally:
        pub.close()
    assert not pub.session_present
    again = make()
    again.connect(10)
    try:
        # Clean session false: the broker kept the session of the client id
        # (with clean session true it never says so).
        assert again.session_present
    finally:
        again.close()
        inbox.pub.close()


def test_a_clean_close_sends_no_will(mosquitto: MosquittoServer, county: str) -> None:
    topic = f"farm/v1/{county}/f/g/status"
    inbox = Inbox(mosquitto.url, topic)
    pub = Publisher(parse_broker_url(mosquitto.url), client_id=_id(),
                    will=Message(topic, b"will", qos=1, retain=False))
    pub.connect(10)
    assert pub.publish_wait(Message(topic, b"bye", qos=1), 10)
    pub.close()
    eventually(lambda: inbox.on(topic), what="the last message")
    probe = Publisher(parse_broker_url(mosquitto.url), client_id=_id())
    probe.connect(10)  # a round trip after the close: a will would be there by now
    assert probe.publish_wait(Message(topic, b"probe", qos=1), 10)
    eventually(lambda: len(inbox.on(topic)) == 2, what="the probe")
    assert [m.payload for m in inbox.on(topic)] == [b"bye", b"probe"]
    probe.close()
    inbox.pub.close()


def test_unreachable_and_refused_are_told_apart(tmp_path: Path) -> None:
    with pytest.raises(BrokerUnreachable, match="cannot reach"):
        Publisher(parse_broker_url(f"mqtt://127.0.0.1:{free_port()}")).connect(5)
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd is not installed (Debian package mosquitto)")
    pw = tmp_path / "passwd"
    subprocess.run([tool, "-b", "-c", str(pw), "gw", "right"], check=True, capture_output=True)
    broker = MosquittoServer(tmp_path / "m", extra_conf=(
        f"allow_anonymous false\npassword_file {pw}\n")).start()
    try:
        url = broker.url.replace("mqtt://", "mqtt://gw:wrong@")
        with pytest.raises(ConnectRefused) as e:
            Publisher(parse_broker_url(url), client_id=_id()).connect(10)
        assert e.value.code == 135 and "not authorized" in str(e.value)
        ok = Publisher(parse_broker_url(broker.url, username="gw", password="right"),
                       client_id=_id())
        ok.connect(10)
        assert ok.connected
        ok.close()
    finally:
        broker.stop()


async def test_the_reconnect_loop_comes_back_after_a_broker_restart(
        mosquitto_factory: Callable[[], MosquittoServer], county: str) -> None:
    broker = mosquitto_factory()
    topic = f"farm/v1/{county}/f/g/telemetry"
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    acked: list[tuple[int, int, int]] = []
    lost: list[str] = []
    sessions: list[Publisher] = []
    threads: set[int] = set()

    async def connect() -> Publisher:
        n = len(sessions) + 1

        def on_ack(mid: int, code: int) -> None:
            threads.add(threading.get_ident())
            acked.append((n, mid, code))

        gone = asyncio.Event()
        pub = Publisher(parse_broker_url(broker.url), client_id=_id(), loop=loop,
                        on_ack=on_ack, on_lost=lambda r: (lost.append(r), gone.set()))
        await pub.aconnect(5)
        sessions.append(pub)
        pub.gone = gone  # type: ignore[attr-defined]
        return pub

    async def session(pub: Publisher) -> None:
        pub.publish(topic, f"session {len(sessions)}".encode(), qos=1)
        stops = asyncio.ensure_future(stop.wait())
        await asyncio.wait([asyncio.ensure_future(pub.gone.wait()),  # type: ignore[attr-defined]
                            stops], return_when=asyncio.FIRST_COMPLETED)
        await pub.aclose()

    task = asyncio.create_task(reconnect_forever(
        connect, session, backoff=Backoff(0.1, 0.5), stop=stop,
        log=get_logger("test.publisher")))
    try:
        for _ in range(200):
            if acked:
                break
            await asyncio.sleep(0.05)
        assert acked and acked[0][0] == 1
        broker.stop()
        for _ in range(200):
            if lost:
                break
            await asyncio.sleep(0.05)
        assert lost, "the loss was reported"
        broker.start()  # same port
        for _ in range(400):
            if any(n == 2 for n, _, _ in acked):
                break
            await asyncio.sleep(0.05)
        # 16: taken, no matching subscribers
        assert [(n, code) for n, _, code in acked] == [(1, 16), (2, 16)]
        assert threads == {threading.get_ident()}  # callbacks ran on the loop
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
