"""Several broker URLs (a cluster's nodes) and the order a client tries
them in (farmedge/transport/broker.py). No servers."""

from __future__ import annotations

import pytest

from farmedge.transport.broker import BrokerRing, parse_broker_url, parse_broker_urls
from farmedge.transport.errors import BrokerUrlError, TransportError
from farmedge.transport.publisher import Publisher


def test_every_url_gets_the_same_credentials_and_tls(tmp_path: object) -> None:
    bs = parse_broker_urls(["mqtt://n1:4001", "mqtts://n2", "tcp://u:urlpw@n3"],
                           username="gw", password="pw")
    assert [(b.host, b.port, b.tls) for b in bs] == [("n1", 4001, False), ("n2", 8883, True),
                                                    ("n3", 1883, False)]
    assert {(b.username, b.password) for b in bs} == {("gw", "pw")}


def test_a_bad_url_is_named_by_its_position() -> None:
    with pytest.raises(BrokerUrlError, match=r"URL 2 of 3: .*must start with mqtt://"):
        parse_broker_urls(["mqtt://n1", "http://n2", "mqtt://n3"])
    with pytest.raises(BrokerUrlError, match=r"URL 2 of 2 .* names n1:1883 again"):
        parse_broker_urls(["mqtt://n1", "tcp://n1:1883"])
    with pytest.raises(BrokerUrlError, match="empty"):
        parse_broker_urls([])
    # One URL: the message of parse_broker_url, no position.
    with pytest.raises(BrokerUrlError, match=r"^must start with"):
        parse_broker_urls(["http://n1"])


def test_the_ring_goes_round_from_the_first() -> None:
    ring = BrokerRing(parse_broker_urls(["mqtt://a", "mqtt://b", "mqtt://c"]))
    assert ring.current.host == "a" and ring.where() == "1/3"
    assert [ring.advance().host for _ in range(4)] == ["b", "c", "a", "b"]
    assert ring.where() == "2/3"
    one = BrokerRing([parse_broker_url("mqtt://only")])
    assert [one.advance().host for _ in range(2)] == ["only", "only"]
    with pytest.raises(BrokerUrlError):
        BrokerRing([])


def test_publisher_protocol_and_persistent_session_are_checked() -> None:
    b = parse_broker_url("mqtt://h")
    assert Publisher(b).protocol == "5"
    assert Publisher(b, client_id="gw-1", protocol="3.1.1", persistent_session=True)
    with pytest.raises(TransportError, match=r"not one of 5, 3\.1\.1"):
        Publisher(b, protocol="4")  # type: ignore[arg-type]
    with pytest.raises(TransportError, match=r"persistent session needs MQTT 3\.1\.1"):
        Publisher(b, client_id="gw-1", persistent_session=True)
    with pytest.raises(TransportError, match="and a client id"):
        Publisher(b, protocol="3.1.1", persistent_session=True)
