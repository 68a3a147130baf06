"""Broker URLs, credentials and TLS options (farmedge/transport/broker.py):
one meaning of every scheme for every client, settings validation naming the
key, passwords never in what is logged. No servers."""

from __future__ import annotations

import os
import ssl
import subprocess
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError

from farmedge.checks import check_edge, check_gateway
from farmedge.gateway.settings import MqttSection as GatewayMqtt
from farmedge.transport.broker import parse_broker_url
from farmedge.transport.errors import BrokerUrlError, TransportError
from farmedge.transport.settings import MqttSection


@pytest.mark.parametrize(("url", "tls", "port"), [
    ("mqtt://broker", False, 1883),
    ("tcp://broker", False, 1883),
    ("mqtts://broker", True, 8883),
    ("ssl://broker", True, 8883),
    ("MQTTS://broker", True, 8883),
    ("ssl://broker:1883", True, 1883),
    ("mqtt://broker:8883", False, 8883),
    ("mqtt://broker:1884/", False, 1884),
])
def test_each_scheme_has_one_meaning(url: str, tls: bool, port: int) -> None:
    b = parse_broker_url(url)
    assert (b.host, b.port, b.tls) == ("broker", port, tls)


@pytest.mark.parametrize("url", ["http://broker", "ws://broker:9001", "broker:1883", "tls://b",
                                 "mqtt://", "mqtt://broker:99999", "mqtt://broker:port",
                                 "mqtt://broker:0", "mqtt://bro ker", "mqtt://broker\x00evil",
                                 "mqtt://edge:s3cret@broker:99999",
                                 "mqtt://edge:s3cret@broker:port"])
def test_anything_else_is_a_config_error(url: str) -> None:
    with pytest.raises(BrokerUrlError) as e:
        parse_broker_url(url)
    assert isinstance(e.value, TransportError) and isinstance(e.value, ValueError)
    assert "s3cret" not in str(e.value)


def test_the_message_says_what_is_wrong_and_what_is_right() -> None:
    with pytest.raises(BrokerUrlError) as e:
        parse_broker_url("amqp://u:hunter2@broker")
    msg = str(e.value)
    assert "must start with mqtt:// or mqtts://" in msg and "'amqp://'" in msg
    assert "8883" in msg and "1883" in msg
    assert "hunter2" not in msg


def test_credentials_from_the_url_percent_decoded_and_settings_win() -> None:
    b = parse_broker_url("mqtt://edge:p%40ss%3Aw@broker")
    assert (b.username, b.password) == ("edge", "p@ss:w")
    b = parse_broker_url("mqtt://edge:fromurl@broker", username="other", password="fromsettings")
    assert (b.username, b.password) == ("other", "fromsettings")
    b = parse_broker_url("mqtt://edge:fromurl@broker", password="fromsettings")
    assert (b.username, b.password) == ("edge", "fromsettings")
    assert parse_broker_url("mqtt://broker").username is None


def test_redacted_for_logs() -> None:
    b = parse_broker_url("mqtts://edge:s3cret@broker:8883")
    assert "s3cret" not in b.redacted and "s3cret" not in str(b) and "s3cret" not in repr(b)
    assert b.redacted == "mqtts://edge:***@broker:8883"
    assert str(parse_broker_url("mqtt://broker:1883")) == "mqtt://broker:1883"


def test_tls_files_mean_tls(tmp_path: Path) -> None:
    b = parse_broker_url("mqtt://broker", ca_file=tmp_path / "ca.pem")
    assert b.tls and b.port == 8883
    with pytest.raises(BrokerUrlError, match="key_file"):
        parse_broker_url("mqtts://broker", key_file="k.pem")


def _cert(tmp_path: Path) -> tuple[Path, Path]:
    key, crt = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj",
                    "/CN=broker", "-days", "1", "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True)
    return crt, key


def test_tls_context_checks_the_host_and_loads_ca_and_client_certificate(
        tmp_path: Path) -> None:
    assert parse_broker_url("mqtt://broker").ssl_context() is None
    ctx = parse_broker_url("mqtts://broker").ssl_context()
    assert ctx is not None and ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    crt, key = _cert(tmp_path)
    ctx = parse_broker_url("mqtts://broker", ca_file=crt, cert_file=crt,
                           key_file=key).ssl_context()
    assert ctx is not None
    assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "broker"),),)]


def test_a_tls_file_that_cannot_be_read_is_a_transport_error(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="TLS set-up"):
        parse_broker_url("mqtts://broker", ca_file=tmp_path / "missing.pem").ssl_context()
    (tmp_path / "bad.pem").write_text("not a certificate")
    with pytest.raises(TransportError, match="TLS set-up"):
        parse_broker_url("mqtts://broker", cert_file=tmp_path / "bad.pem").ssl_context()


def test_check_config_refuses_a_tls_file_that_is_no_certificate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The edge and the gateway would otherwise start: the edge with a
    traceback, the gateway retrying a connect that can never be made."""
    for k in [k for k in os.environ if k.startswith("FARMEDGE_")]:
        monkeypatch.delenv(k)
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    gw = tmp_path / "gateway.toml"
    gw.write_text(f'county = "c1"\nfarm = "f1"\ngateway = "g1"\ndata_dir = "{tmp_path}"\n'
                  f'[mqtt]\nurl = "mqtts://broker.farm.test"\nca_file = "{bad}"\n')
    edge = tmp_path / "edge.toml"
    edge.write_text(f'data_dir = "{tmp_path}"\n[mqtt]\nurl = "mqtts://broker.farm.test"\n'
                    f'cert_file = "{bad}"\n')
    for report in (check_gateway(gw)[0], check_edge(edge)[0]):
        assert any("[mqtt]: TLS set-up for mqtts://broker.farm.test failed" in e
                   for e in report.errors), report.errors
    crt, _ = _cert(tmp_path)
    gw.write_text(gw.read_text().replace(str(bad), str(crt)))
    assert not [e for e in check_gateway(gw)[0].errors if "TLS" in e]
    # A missing file is said by its key, once.
    gw.write_text(gw.read_text().replace(str(crt), str(tmp_path / "missing.pem")))
    errors = check_gateway(gw)[0].errors
    assert [e for e in errors if "ca_file" in e and "no such file" in e], errors
    assert not [e for e in errors if "TLS set-up" in e], errors


def test_configure_sets_credentials_and_tls_on_a_paho_client() -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    parse_broker_url("ssl://edge:pw@broker").configure(c)
    assert c.username == "edge" and c.password == "pw"
    # paho answers tls_set_context twice with "SSL/TLS has already been configured."
    with pytest.raises(ValueError, match="already"):
        c.tls_set_context(ssl.create_default_context())
    plain = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    parse_broker_url("mqtt://broker").configure(plain)
    assert plain.username is None
    plain.tls_set_context(ssl.create_default_context())  # TLS was not configured


@pytest.mark.parametrize("section", [MqttSection, GatewayMqtt])
def test_edge_and_gateway_settings_take_every_scheme_and_refuse_others(
        section: type[MqttSection] | type[GatewayMqtt]) -> None:
    for url in ("mqtt://h", "tcp://h", "mqtts://h", "ssl://h"):
        assert section(url=url).broker.tls == url.startswith(("mqtts", "ssl"))
    with pytest.raises(ValidationError, match="must start with mqtt:// or mqtts://"):
        section(url="http://h")


def test_edge_settings_credentials() -> None:
    s = MqttSection(url="mqtt://u:urlpw@h", password="setpw")  # type: ignore[arg-type]
    assert (s.broker.username, s.broker.password) == ("u", "setpw")
    assert not s.tls and MqttSection(url="ssl://h").tls
