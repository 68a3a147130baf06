"""The ``[mqtt]`` section: how the edge reaches its broker."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator

from farmedge.config import Section
from farmedge.contract.topics import STATUS_FILTER, TELEMETRY_FILTER

from .broker import Broker, parse_broker_url

__all__ = ["MqttSection"]

PosFloat = Annotated[float, Field(gt=0)]


class MqttSection(Section):
    #: mqtt://[user:password@]host[:port] (or tcp://), mqtts:// (or ssl://) for TLS.
    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: SecretStr | None = None
    #: Stable client id: the broker keeps this session (and queues messages
    #: for it) while the edge is down.
    client_id: str = "farmedge-edge"
    topics: list[str] = Field(default_factory=lambda: [TELEMETRY_FILTER, STATUS_FILTER])
    #: MQTT 5 shared subscription group: several edges with the same group
    #: share the gateways' messages ($share/<group>/<topic>).
    share_group: str | None = None
    session_expiry_s: Annotated[int, Field(ge=0)] = 7 * 24 * 3600
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    #: How many unacknowledged QoS 1 messages the broker may send us at once.
    receive_maximum: Annotated[int, Field(ge=1, le=65535)] = 65535
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    reconnect_min_s: PosFloat = 0.5
    reconnect_max_s: PosFloat = 30.0

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parse_broker_url(v)  # BrokerUrlError is a ValueError: reported with file:line
        return v

    @model_validator(mode="after")
    def _check(self) -> MqttSection:
        _ = self.broker  # TLS files that do not fit together
        return self

    @property
    def broker(self) -> Broker:
        return parse_broker_url(
            self.url, username=self.username,
            password=self.password.get_secret_value() if self.password else None,
            ca_file=self.ca_file, cert_file=self.cert_file, key_file=self.key_file)

    @property
    def tls(self) -> bool:
        return self.broker.tls
