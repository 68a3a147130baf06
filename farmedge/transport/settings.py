"""The ``[mqtt]`` section: how the edge reaches its broker."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator

from farmedge.config import Section
from farmedge.contract.topics import STATUS_FILTER, TELEMETRY_FILTER

__all__ = ["MqttSection"]

PosFloat = Annotated[float, Field(gt=0)]


class MqttSection(Section):
    #: mqtt://[user:password@]host[:port], or mqtts:// for TLS.
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
        u = urlsplit(v)
        if u.scheme not in {"mqtt", "mqtts", "tcp", "ssl"}:
            raise ValueError("must start with mqtt:// or mqtts://")
        if not u.hostname:
            raise ValueError("has no host")
        try:
            _ = u.port
        except ValueError:
            raise ValueError("has an invalid port") from None
        return v

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme in {"mqtts", "ssl"} or self.ca_file is not None
