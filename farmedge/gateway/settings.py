"""Settings of the gateway agent: ``gateway.toml`` plus ``FARMEDGE_*``
environment variables (gateway.example.toml documents every key)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from farmedge.config import FileSettings, Section
from farmedge.contract.compact import COMPRESSIONS
from farmedge.contract.models import TopicId
from farmedge.transport.broker import Broker, Protocol, parse_broker_url, parse_broker_urls

from .drivers import SensorEntry

__all__ = [
    "ClockSection",
    "GatewaySettings",
    "MqttSection",
    "OutboxSection",
    "StatusSection",
    "UplinkSection",
]

Compression = Literal["none", "zstd", "deflate-dict", "zstd-dict"]
assert set(COMPRESSIONS) == {"none", "zstd", "deflate-dict", "zstd-dict"}


class MqttSection(Section):
    #: mqtt://host:port (or tcp://), or mqtts://host:port (or ssl://) for TLS.
    url: str = "mqtt://127.0.0.1:1883"
    #: The nodes of a broker cluster, tried in turn (round robin, the
    #: back-off between attempts) when one cannot be reached or its
    #: connection ends. Instead of ``url``, not with it.
    urls: list[str] = Field(default_factory=list)
    #: "5" (content type sent as a property, clean start, no session kept)
    #: or "3.1.1" (for brokers that refuse MQTT 5, NATS's MQTT listener
    #: among them: persistent session, no properties).
    protocol: Protocol = "5"
    username: str | None = None
    password: SecretStr | None = None
    #: The client id the broker binds to this gateway's account: its path
    #: county/farm/gateway, which ``farmedge provision gateway`` writes here.
    #: Default: the gateway id, what gateways provisioned by earlier versions
    #: use (their imported accounts are bound to it).
    client_id: str | None = None
    #: Seconds of silence before a ping. Each ping exchange costs about 200
    #: bytes at the IP level (9 MB a month at 60 s); keep it under the
    #: carrier's NAT timeout (often 5 min) so the connection is not dropped.
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 240
    #: CA bundle for mqtts:// (default: the system's).
    ca_file: Path | None = None
    #: Reconnect backoff: doubles from min to max, each wait drawn at random
    #: between half and all of it so that many gateways spread out.
    backoff_min_s: Annotated[float, Field(gt=0)] = 1.0
    backoff_max_s: Annotated[float, Field(gt=0)] = 300.0
    connect_timeout_s: Annotated[float, Field(gt=0)] = 30.0

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_text(cls, v: object) -> object:
        # protocol = 5 in TOML (a number) means "5".
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parse_broker_url(v)  # BrokerUrlError is a ValueError: reported with file:line and key
        return v

    @field_validator("urls")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        if v:
            parse_broker_urls(v)
        return v

    @model_validator(mode="after")
    def _check(self) -> MqttSection:
        if self.urls and "url" in self.model_fields_set:
            raise ValueError("set urls (the nodes of a cluster) or url (one broker), not both")
        _ = self.brokers  # credentials and TLS files with every URL
        if self.backoff_max_s < self.backoff_min_s:
            raise ValueError("backoff_max_s must be at least backoff_min_s")
        return self

    @property
    def broker(self) -> Broker:
        """The first broker (the only one without ``urls``)."""
        return self.brokers[0]

    @property
    def brokers(self) -> list[Broker]:
        """Every broker URL with the credentials and TLS, parsed the way every
        farmedge client does: ``urls``, or else ``url``."""
        return parse_broker_urls(
            self.urls or [self.url], username=self.username,
            password=self.password.get_secret_value() if self.password else None,
            ca_file=self.ca_file)


class OutboxSection(Section):
    #: Default: <data_dir>/outbox.sqlite3
    path: Path | None = None
    #: Seconds between two commits. A power cut loses at most the readings
    #: of this long; a longer interval spares the SD card.
    commit_interval_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    #: Size bound in MB; when full, the oldest readings are dropped.
    max_mb: Annotated[float, Field(gt=0)] = 64.0
    #: Age bound in days; older readings are dropped.
    max_age_days: Annotated[float, Field(gt=0)] = 30.0


class UplinkSection(Section):
    encoding: Literal["compact", "json"] = "compact"
    compression: Compression = "deflate-dict"
    #: Readings per message.
    batch_max: Annotated[int, Field(ge=1, le=1000)] = 60
    #: Send a partial batch once its oldest reading waited this long.
    batch_max_wait_s: Annotated[float, Field(ge=0)] = 60.0
    #: Upper bound on readings per second sent, so that a backlog replay
    #: after a long outage does not flood the broker or the link.
    max_rate: Annotated[float, Field(gt=0)] = 500.0
    #: Messages awaiting PUBACK at once.
    max_inflight: Annotated[int, Field(ge=1, le=100)] = 4
    #: While the clock is unsynced, hold readings this long waiting for NTP
    #: (so their time can be corrected), then send them marked "unsynced".
    hold_unsynced_s: Annotated[float, Field(ge=0)] = 900.0


class StatusSection(Section):
    #: Seconds between two retained status messages (also sent on every
    #: connect; the last will reports "offline" at once). Each costs about
    #: 280 bytes: every 60 s would be 12 MB a month, more than the readings.
    interval_s: Annotated[float, Field(gt=0)] = 300.0


class ClockSection(Section):
    #: How to tell whether the system clock is set: "kernel" (adjtimex),
    #: "timedatectl", or "trust" (a gateway with a real-time clock).
    source: Literal["kernel", "timedatectl", "trust"] = "kernel"


class GatewaySettings(FileSettings):
    # Topic levels: not "telemetry", "status" or "alerts".
    county: TopicId
    farm: TopicId
    gateway: TopicId
    data_dir: Path = Path("/var/lib/farmedge")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "console", "json"] = "auto"
    mqtt: MqttSection = MqttSection()
    outbox: OutboxSection = OutboxSection()
    uplink: UplinkSection = UplinkSection()
    status: StatusSection = StatusSection()
    clock: ClockSection = ClockSection()
    sensors: list[SensorEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_sensors(self) -> GatewaySettings:
        seen: set[str] = set()
        for s in self.sensors:
            if s.id in seen:
                raise ValueError(f"sensor id {s.id!r} is used twice")
            seen.add(s.id)
        return self

    @property
    def outbox_path(self) -> Path:
        return self.outbox.path or self.data_dir / "outbox.sqlite3"
