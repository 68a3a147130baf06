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


def test_a_gateways_ring_starts_at_its_own_node_and_a_fleet_spreads() -> None:
    """With a key (the gateway's client id) the order is the key's own:
    always the same for a gateway, even over a fleet, and a dead node's
    gateways spread over the others instead of all going to the next."""
    urls = ["mqtt://a", "mqtt://b", "mqtt://c"]
    keys = [f"suihua/farm-{i}/gw-{i % 7}" for i in range(3000)]
    first: dict[str, list[str]] = {"a": [], "b": [], "c": []}
    for k in keys:
        ring = BrokerRing(parse_broker_urls(urls), key=k)
        again = BrokerRing(parse_broker_urls(urls), key=k)
        order = [ring.current.host] + [ring.advance().host for _ in range(3)]
        assert order == [again.current.host] + [again.advance().host for _ in range(3)]
        assert sorted(order[:3]) == ["a", "b", "c"] and order[3] == order[0]
        first[order[0]].append(k)
    assert all(900 <= len(v) <= 1100 for v in first.values()), {
        h: len(v) for h, v in first.items()}
    # Node a dies: its gateways' next nodes are b and c, about half each.
    then = [BrokerRing(parse_broker_urls(urls), key=k).advance().host for k in first["a"]]
    assert 0.4 < then.count("b") / len(then) < 0.6 and set(then) == {"b", "c"}
    # A fourth node takes only gateways for which it comes first (a quarter);
    # the others keep their node.
    moved = [k for k in keys
             if BrokerRing(parse_broker_urls([*urls, "mqtt://d"]), key=k).current.host == "d"]
    assert 0.2 < len(moved) / len(keys) < 0.3
    for k in set(keys) - set(moved):
        assert BrokerRing(parse_broker_urls([*urls, "mqtt://d"]), key=k).current.host == \
            BrokerRing(parse_broker_urls(urls), key=k).current.host
    # The listed order does not matter; the log says the node's place in the list.
    ring = BrokerRing(parse_broker_urls(urls[::-1]), key=keys[0])
    assert ring.current.host == BrokerRing(parse_broker_urls(urls), key=keys[0]).current.host
    assert ring.where() == f"{urls[::-1].index('mqtt://' + ring.current.host) + 1}/3"


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
