"""Edge service configuration (``config.example.toml`` documents every key).

Every key can be set by an environment variable ``FARMEDGE_<SECTION>_<KEY>``
(``FARMEDGE_MQTT_URL``, ``FARMEDGE_INFLUX_TOKEN``, ...); top-level keys as
``FARMEDGE_<KEY>`` (``FARMEDGE_DATA_DIR``, ``FARMEDGE_REGISTRY``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from farmedge.alerts import AlertsSettings
from farmedge.config import FileSettings, Section, folder_problem
from farmedge.storage.settings import InfluxSection, SpoolSection
from farmedge.transport.nats_settings import SourceSection
from farmedge.transport.settings import MqttSection

__all__ = ["EdgeSettings", "HttpSection", "InfluxSection", "MqttSection", "SourceSection",
           "SpoolSection"]

PosFloat = Annotated[float, Field(gt=0)]


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
    #: With open enrollment (no registry): at most this many gateways since
    #: the edge started; messages of further ones are dead letters
    #: (``open_enrollment_full``), so a client inventing gateway ids cannot
    #: grow the edge's memory and InfluxDB's series without end. A county
    #: with more gateways than this keeps a registry.
    max_open_gateways: Annotated[int, Field(ge=1)] = 10_000


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
    #: Where the gateways' messages come from: the [mqtt] broker (kind
    #: "mqtt", the default) or a NATS JetStream cluster (kind "nats").
    source: SourceSection = Field(default_factory=SourceSection)
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

    @property
    def nats(self) -> bool:
        """The edge reads a NATS cluster ([source] kind = "nats")."""
        return self.source.kind == "nats"

    @property
    def source_instance(self) -> str:
        """This edge's name among the cluster's edges: [source] instance, else
        the top-level ``instance``."""
        return self.source.instance or self.instance
