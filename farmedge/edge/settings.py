"""Edge service configuration (``config.example.toml`` documents every key).

Every key can be set by an environment variable ``FARMEDGE_<SECTION>_<KEY>``
(``FARMEDGE_MQTT_URL``, ``FARMEDGE_INFLUX_TOKEN``, ...); top-level keys as
``FARMEDGE_<KEY>`` (``FARMEDGE_DATA_DIR``, ``FARMEDGE_REGISTRY``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from farmedge.alerts.settings import AlertsSettings
from farmedge.config import FileSettings, Section, folder_problem
from farmedge.contract.topics import STATUS_FILTER, TELEMETRY_FILTER

__all__ = ["EdgeSettings", "HttpSection", "InfluxSection", "MqttSection", "SpoolSection"]

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


class InfluxSection(Section):
    url: str = "http://127.0.0.1:8086"
    #: v1: /write (InfluxDB 1.x, and the v1-compatible endpoint of 2.x/3.x);
    #: v2: /api/v2/write (2.x, 3.x, Cloud) with org, bucket and token.
    api: Literal["v1", "v2"] = "v1"
    database: str = "farmedge"
    retention_policy: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    org: str | None = None
    bucket: str | None = None
    token: SecretStr | None = None
    #: Write a batch when it holds this many lines ...
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 5000
    #: ... or when its oldest line is this old, whichever comes first.
    flush_interval_s: PosFloat = 1.0
    #: While no write is under way, a batch goes out once its oldest line is
    #: this old: low latency when the load is light. Under load the writer is
    #: busy and batches fill up to batch_size. 0 turns this off.
    linger_s: Annotated[float, Field(ge=0)] = 0.2
    timeout_s: PosFloat = 10.0
    #: Keep retrying a failing write this long before spooling it.
    retry_for_s: Annotated[float, Field(ge=0)] = 10.0
    backoff_min_s: PosFloat = 0.2
    backoff_max_s: PosFloat = 30.0
    #: CREATE DATABASE at start (v1 only); harmless when it exists.
    create_database: bool = True
    gzip: bool = False

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        u = urlsplit(v)
        if u.scheme not in {"http", "https"} or not u.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _v2_needs(self) -> InfluxSection:
        if self.api == "v2":
            missing = [k for k in ("org", "bucket", "token") if not getattr(self, k)]
            if missing:
                raise ValueError(f"api = \"v2\" needs {', '.join(missing)}")
        return self


class SpoolSection(Section):
    #: Most disk the spool may use; past it the oldest batches are dropped
    #: (counted in farmedge_spool_dropped_lines_total and logged).
    max_mb: PosFloat = 1024.0


class HttpSection(Section):
    host: str = "127.0.0.1"
    #: /healthz and /metrics; 0 turns the HTTP endpoint off.
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    #: /healthz says "stalled" when a received message waits this long.
    stall_after_s: PosFloat = 30.0


class IngestSection(Section):
    #: Most payload bytes held in memory while they wait to be written; past
    #: it the edge stops reading from the broker until half of it is written
    #: (the broker keeps the rest queued in the session).
    max_pending_mb: PosFloat = 32.0
    #: Readings stamped further than this in the future are rejected.
    max_future_s: PosFloat = 300.0
    #: Readings stamped before this (epoch ms; 2020-01-01) are rejected
    #: when the gateway says its clock is synced.
    min_ts_ms: int = 1_577_836_800_000
    #: Distinct sensor and animal ids (a sensor alone, or a sensor with the
    #: animal it read) one gateway may introduce; past it, readings of new
    #: ids are dead letters (``cardinality_budget``). Ids a registry entry
    #: lists do not count. 2000 holds a large dairy herd (1,500 cows) behind
    #: one RFID gate plus the gateway's own sensors, and bounds a flooding
    #: gateway to a few thousand InfluxDB series.
    max_ids_per_gateway: Annotated[int, Field(ge=1)] = 2000


class LogSection(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"


class EdgeSettings(FileSettings):
    #: Spool and state live here.
    data_dir: Path = Path("var/edge")
    #: Gateway registry (YAML). Unset: open enrollment.
    registry: Path | None = None
    #: Name of this edge instance (tag on its own metrics).
    instance: str = "edge-1"
    mqtt: MqttSection = Field(default_factory=MqttSection)
    influx: InfluxSection = Field(default_factory=InfluxSection)
    spool: SpoolSection = Field(default_factory=SpoolSection)
    http: HttpSection = Field(default_factory=HttpSection)
    ingest: IngestSection = Field(default_factory=IngestSection)
    log: LogSection = Field(default_factory=LogSection)
    alerts: AlertsSettings = Field(default_factory=AlertsSettings)

    @field_validator("data_dir")
    @classmethod
    def _data_dir(cls, v: Path) -> Path:
        problem = folder_problem(v)
        if problem:
            raise ValueError(problem)
        return v
