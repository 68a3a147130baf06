"""The gateway's [mqtt] protocol and urls settings (farmedge/gateway/settings.py),
from the file and the environment, errors naming file:line and key, and the
order the uplink tries the brokers in. No servers: the brokers are loopback
ports nothing listens on (a connect there is refused at once)."""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from farmedge.config import ConfigError, load_settings
from farmedge.contract import encode_status
from farmedge.gateway import FakeClock, Outbox
from farmedge.gateway.settings import GatewaySettings, MqttSection
from farmedge.gateway.uplink import Uplink
from farmedge.transport.broker import BrokerRing
from farmedge.transport.publisher import Publisher

IDS = 'county = "c1"\nfarm = "f1"\ngateway = "gw-1"\n'


def load(tmp_path: Path, text: str) -> GatewaySettings:
    p = tmp_path / "gw.toml"
    p.write_text(IDS + text)
    return load_settings(GatewaySettings, p)


def test_protocol_defaults_to_5_and_takes_3_1_1(tmp_path: Path) -> None:
    assert load(tmp_path, "").mqtt.protocol == "5"
    assert load(tmp_path, '[mqtt]\nprotocol = "3.1.1"\n').mqtt.protocol == "3.1.1"
    assert load(tmp_path, "[mqtt]\nprotocol = 5\n").mqtt.protocol == "5"


def test_a_wrong_protocol_names_file_line_and_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, '[mqtt]\nurl = "mqtt://h"\nprotocol = "3.1"\n')
    assert "gw.toml:6: [mqtt] protocol:" in str(e.value)
    assert "'5'" in str(e.value) and "'3.1.1'" in str(e.value)


def test_protocol_and_urls_from_the_environment(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARMEDGE_MQTT_PROTOCOL", "3.1.1")
    monkeypatch.setenv("FARMEDGE_MQTT_URLS", '["mqtt://n1:4001", "mqtt://n2:4002"]')
    s = load(tmp_path, "")
    assert s.mqtt.protocol == "3.1.1"
    assert [(b.host, b.port) for b in s.mqtt.brokers] == [("n1", 4001), ("n2", 4002)]
    monkeypatch.setenv("FARMEDGE_MQTT_PROTOCOL", "6")
    with pytest.raises(ConfigError, match="FARMEDGE_MQTT_PROTOCOL"):
        load(tmp_path, "")


def test_urls_or_url_with_the_same_credentials(tmp_path: Path) -> None:
    s = load(tmp_path, '[mqtt]\nurl = "mqtts://one"\nusername = "u"\npassword = "p"\n')
    assert [b.host for b in s.mqtt.brokers] == ["one"] and s.mqtt.broker.host == "one"
    s = load(tmp_path, '[mqtt]\nurls = ["mqtt://a", "mqtts://b"]\nusername = "u"\n'
                       'password = "p"\n')
    assert [(b.host, b.tls, b.username, b.password) for b in s.mqtt.brokers] == [
        ("a", False, "u", "p"), ("b", True, "u", "p")]
    assert s.mqtt.broker.host == "a"


def test_a_bad_url_in_the_list_names_the_key_and_its_position(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, '[mqtt]\nurls = ["mqtt://a", "http://b"]\n')
    assert "gw.toml:5: [mqtt] urls:" in str(e.value)
    assert "URL 2 of 2" in str(e.value)
    with pytest.raises(ConfigError, match="not both"):
        load(tmp_path, '[mqtt]\nurl = "mqtt://a"\nurls = ["mqtt://b"]\n')
    with pytest.raises(ValidationError, match="again"):
        MqttSection(urls=["mqtt://a", "mqtt://a:1883"])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Recording(Uplink):
    """The real uplink; records the broker and protocol of each connect."""

    tried: list[tuple[int, str, bool]]

    def _make_publisher(self) -> Publisher:
        pub = super()._make_publisher()
        self.tried.append((pub.broker.port, pub.protocol, pub.persistent_session))
        if len(self.tried) >= 7:
            self._stop.set()
        return pub


def test_the_uplink_tries_each_url_in_turn_in_its_own_order(tmp_path: Path) -> None:
    ports = [_closed_port() for _ in range(3)]
    doc: dict[str, Any] = {
        "county": "c1", "farm": "f1", "gateway": "gw-1", "data_dir": str(tmp_path),
        "mqtt": {"urls": [f"mqtt://127.0.0.1:{p}" for p in ports], "protocol": "3.1.1",
                 "backoff_min_s": 0.01, "backoff_max_s": 0.02, "connect_timeout_s": 5},
    }
    s = GatewaySettings.model_validate(doc)
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    up = _Recording(s, outbox, FakeClock(),
                    status_payload=lambda online, reason: encode_status(
                        gateway="gw-1", online=online, reason=reason, ts=0),
                    rng=random.Random(1))
    up.tried = []

    async def main() -> None:
        await asyncio.wait_for(up.run(asyncio.Event()), 30)

    asyncio.run(main())
    outbox.close()
    # In the gateway's own order (from its client id), round and round.
    own = [ports[i] for i in BrokerRing(s.mqtt.brokers, key="gw-1").order]
    assert sorted(own) == sorted(ports)
    assert [p for p, _, _ in up.tried] == [own[i % 3] for i in range(7)]
    assert {(proto, persistent) for _, proto, persistent in up.tried} == {("3.1.1", True)}
