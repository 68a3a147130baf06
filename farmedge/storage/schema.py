"""The InfluxDB schema: every measurement, tag and field farmedge writes or
queries, in one place (docs/storage.md describes it for people).

Writers (the edge's ingest, its self points and registry points, the alert
records), readers (``farmedge fleet``, the dashboards' generator, the demo)
and the downsampling set-up (``farmedge provision influx``) take their names
from here instead of repeating them. Renaming a name here renames it for all
of them, which is why that is almost never what you want: points already
stored keep the old name (docs/storage.md, "Changing the schema").

The names are plain ``str`` constants in small namespaces, so an f-string
reads as the query it builds::

    f'SELECT last("{GatewayField.ONLINE}") FROM "{Measurement.GATEWAY}"'

:data:`MEASUREMENTS` describes each measurement (its tags and its fields'
types) for tests and tools; :data:`KIND_POINTS` says where each reading kind
of the wire contract lands.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Final

from farmedge.contract.kinds import KINDS, Kind

__all__ = [
    "DOWNSAMPLED",
    "KIND_POINTS",
    "MEASUREMENTS",
    "QUALITY_SUFFIX",
    "READING_MEASUREMENTS",
    "READING_TAGS",
    "TIME_ESTIMATED_SUFFIX",
    "AlertField",
    "DeadLetterField",
    "Downsample",
    "EdgeField",
    "FieldType",
    "GatewayField",
    "KindPoint",
    "Measurement",
    "MeasurementSchema",
    "ReadingField",
    "Tag",
    "point",
    "reading_fields",
]


class Measurement:
    """Measurement names."""

    SOIL: Final = "soil"
    WEATHER: Final = "weather"
    LIVESTOCK: Final = "livestock"
    WATER: Final = "water"
    DEVICE: Final = "device"
    #: Gateway health: status messages, sequence gaps, the edge's registry points.
    GATEWAY: Final = "gateway"
    #: The dead-letter path.
    INGEST_ERRORS: Final = "ingest_errors"
    #: The edge's own health, every 10 s.
    EDGE: Final = "edge"
    #: The alert engine's events.
    ALERTS: Final = "alerts"


class Tag:
    """Tag keys. Readings, ``gateway`` and ``alerts`` share county/farm/gateway."""

    COUNTY: Final = "county"
    FARM: Final = "farm"
    GATEWAY: Final = "gateway"
    SENSOR: Final = "sensor"
    PLOT: Final = "plot"
    CROP: Final = "crop"
    ANIMAL: Final = "animal"
    # edge
    INSTANCE: Final = "instance"
    # ingest_errors
    EDGE: Final = "edge"
    REASON: Final = "reason"
    SLOT: Final = "slot"
    # alerts
    EVENT: Final = "event"
    RULE: Final = "rule"
    FAMILY: Final = "family"
    SEVERITY: Final = "severity"
    SCOPE: Final = "scope"
    SCOPE_ID: Final = "scope_id"
    CHANNEL: Final = "channel"
    CONTACT: Final = "contact"


class ReadingField:
    """Reading fields (one per contract kind; see :data:`KIND_POINTS`)."""

    MOISTURE: Final = "moisture"
    TEMPERATURE: Final = "temperature"
    EC: Final = "ec"
    PH: Final = "ph"
    NITROGEN: Final = "nitrogen"
    PHOSPHORUS: Final = "phosphorus"
    POTASSIUM: Final = "potassium"
    HUMIDITY: Final = "humidity"
    RAINFALL: Final = "rainfall"
    BODY_TEMPERATURE: Final = "body_temperature"
    ACTIVITY: Final = "activity"
    PRESENCE: Final = "presence"
    LEVEL: Final = "level"
    BATTERY_VOLTAGE: Final = "battery_voltage"


#: ``<field>_quality``: a string field, ``suspect`` or ``error``, on a reading
#: whose quality is not ``ok``.
QUALITY_SUFFIX: Final = "_quality"
#: ``<field>_time_estimated``: ``true`` on a reading from an unsynced clock.
TIME_ESTIMATED_SUFFIX: Final = "_time_estimated"


class GatewayField:
    """Fields of ``gateway``."""

    # status messages
    ONLINE: Final = "online"
    UPTIME_S: Final = "uptime_s"
    OUTBOX_OLDEST_AGE_S: Final = "outbox_oldest_age_s"
    CPU_TEMPERATURE: Final = "cpu_temperature"
    DISK_FREE_MB: Final = "disk_free_mb"
    OUTBOX_DEPTH: Final = "outbox_depth"
    DROPPED: Final = "dropped"
    VERSION: Final = "version"
    CLOCK: Final = "clock"
    CLOCK_SYNCED: Final = "clock_synced"
    OUTBOX_FULL: Final = "outbox_full"
    REASON: Final = "reason"
    HELD_UNSYNCED: Final = "held_unsynced"
    HELD_FOR_S: Final = "held_for_s"
    REFUSED: Final = "refused"
    PUBLISH_REFUSED: Final = "publish_refused"
    # the edge's
    SEQ_GAP: Final = "seq_gap"
    SEQ_RESTART: Final = "seq_restart"
    REGISTERED: Final = "registered"
    REGISTRY_SENSORS: Final = "registry_sensors"
    REGISTRY_SENSOR_IDS: Final = "registry_sensor_ids"
    REGISTRY_INTERVAL_S: Final = "registry_interval_s"


class DeadLetterField:
    """Fields of ``ingest_errors``."""

    COUNTY: Final = "county"
    FARM: Final = "farm"
    GATEWAY: Final = "gateway"
    TOPIC: Final = "topic"
    DETAIL: Final = "detail"
    EXCERPT: Final = "excerpt"
    COUNT: Final = "count"
    READING_INDEX: Final = "reading_index"


class EdgeField:
    """Fields of ``edge``."""

    MESSAGES: Final = "messages"
    READINGS: Final = "readings"
    LINES_WRITTEN: Final = "lines_written"
    REJECTED: Final = "rejected"
    SPOOLED: Final = "spooled"
    SPOOL_LINES: Final = "spool_lines"
    SPOOL_DROPPED: Final = "spool_dropped"
    PENDING: Final = "pending"
    WRITE_P50_MS: Final = "write_p50_ms"
    WRITE_P99_MS: Final = "write_p99_ms"
    INFLUX_UP: Final = "influx_up"
    MQTT_CONNECTED: Final = "mqtt_connected"
    DISK_FULL: Final = "disk_full"
    VERSION: Final = "version"


class AlertField:
    """Fields of ``alerts`` (docs/alerts.md)."""

    TITLE: Final = "title"
    TEXT: Final = "text"
    TEXT_EN: Final = "text_en"
    GROUP: Final = "group"
    COUNT: Final = "count"
    VALUE: Final = "value"
    ATTEMPT: Final = "attempt"
    ERROR: Final = "error"


class Downsample:
    """Retention policies and continuous queries of an InfluxDB 1.x set-up
    (farmedge/provision/v1-setup.iql; the 2.x buckets of
    deploy/influxdb/init/farmedge-init.sh have the same names)."""

    RAW: Final = "raw"
    HOURLY: Final = "hourly"
    CQ_HOURLY: Final = "farmedge_hourly"
    CQ_HOURLY_RAIN: Final = "farmedge_hourly_rain"
    #: The hourly rain total the rain query writes into ``weather``.
    SUM_RAINFALL: Final = "sum_rainfall"


# -- descriptions ------------------------------------------------------------------

class FieldType(Enum):
    FLOAT = "float"
    INTEGER = "integer"
    STRING = "string"
    BOOLEAN = "boolean"


@dataclass(frozen=True, slots=True)
class MeasurementSchema:
    name: str
    #: Tag keys, in the order the writer puts them.
    tags: tuple[str, ...]
    fields: Mapping[str, FieldType]
    #: Fields named ``<reading field><suffix>`` besides ``fields`` (readings only).
    suffixed: Mapping[str, FieldType] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class KindPoint:
    """Where a reading kind lands: its measurement and its (float) field."""

    measurement: str
    field: str


_F, _I, _S, _B = FieldType.FLOAT, FieldType.INTEGER, FieldType.STRING, FieldType.BOOLEAN
_M, _RF = Measurement, ReadingField

#: kind name (farmedge.contract.kinds) -> where its readings land.
KIND_POINTS: Final[Mapping[str, KindPoint]] = MappingProxyType({
    "soil_moisture": KindPoint(_M.SOIL, _RF.MOISTURE),
    "soil_temperature": KindPoint(_M.SOIL, _RF.TEMPERATURE),
    "soil_ec": KindPoint(_M.SOIL, _RF.EC),
    "soil_ph": KindPoint(_M.SOIL, _RF.PH),
    "soil_nitrogen": KindPoint(_M.SOIL, _RF.NITROGEN),
    "soil_phosphorus": KindPoint(_M.SOIL, _RF.PHOSPHORUS),
    "soil_potassium": KindPoint(_M.SOIL, _RF.POTASSIUM),
    "air_temperature": KindPoint(_M.WEATHER, _RF.TEMPERATURE),
    "air_humidity": KindPoint(_M.WEATHER, _RF.HUMIDITY),
    "rainfall": KindPoint(_M.WEATHER, _RF.RAINFALL),
    "animal_body_temperature": KindPoint(_M.LIVESTOCK, _RF.BODY_TEMPERATURE),
    "animal_activity": KindPoint(_M.LIVESTOCK, _RF.ACTIVITY),
    "animal_presence": KindPoint(_M.LIVESTOCK, _RF.PRESENCE),
    "water_level": KindPoint(_M.WATER, _RF.LEVEL),
    "battery_voltage": KindPoint(_M.DEVICE, _RF.BATTERY_VOLTAGE),
})

#: The measurements readings go to, in a stable order.
READING_MEASUREMENTS: Final = (_M.SOIL, _M.WEATHER, _M.LIVESTOCK, _M.WATER, _M.DEVICE)
#: The tags of a reading, in the order the edge writes them (the optional
#: ones only when the registry or the reading says so).
READING_TAGS: Final = (Tag.COUNTY, Tag.FARM, Tag.GATEWAY, Tag.SENSOR,
                       Tag.ANIMAL, Tag.CROP, Tag.PLOT)
#: What the hourly continuous query downsamples.
DOWNSAMPLED: Final = (*READING_MEASUREMENTS, _M.GATEWAY)


def point(kind: Kind | str) -> KindPoint:
    """Where readings of ``kind`` (a contract Kind or its name) land."""
    return KIND_POINTS[kind if isinstance(kind, str) else kind.name]


def reading_fields() -> list[tuple[str, str]]:
    """(measurement, field) of every contract kind, in the contract's order,
    each once."""
    seen: list[tuple[str, str]] = []
    for name in KINDS:
        p = KIND_POINTS[name]
        if (p.measurement, p.field) not in seen:
            seen.append((p.measurement, p.field))
    return seen


def _measurements() -> dict[str, MeasurementSchema]:
    out: dict[str, MeasurementSchema] = {}
    suffixed = {QUALITY_SUFFIX: _S, TIME_ESTIMATED_SUFFIX: _B}
    for m in READING_MEASUREMENTS:
        out[m] = MeasurementSchema(
            m, READING_TAGS,
            MappingProxyType({p.field: _F for p in KIND_POINTS.values() if p.measurement == m}),
            MappingProxyType(suffixed))
    g = GatewayField
    out[_M.GATEWAY] = MeasurementSchema(_M.GATEWAY, (Tag.COUNTY, Tag.FARM, Tag.GATEWAY),
                                       MappingProxyType({
        g.ONLINE: _B, g.UPTIME_S: _F, g.OUTBOX_OLDEST_AGE_S: _F, g.CPU_TEMPERATURE: _F,
        g.DISK_FREE_MB: _F, g.OUTBOX_DEPTH: _I, g.DROPPED: _I, g.VERSION: _S, g.CLOCK: _S,
        g.CLOCK_SYNCED: _B, g.OUTBOX_FULL: _B, g.REASON: _S, g.HELD_UNSYNCED: _I,
        g.HELD_FOR_S: _F, g.REFUSED: _I, g.PUBLISH_REFUSED: _I, g.SEQ_GAP: _I, g.SEQ_RESTART: _I,
        g.REGISTERED: _I,
        g.REGISTRY_SENSORS: _I, g.REGISTRY_SENSOR_IDS: _S, g.REGISTRY_INTERVAL_S: _F}))
    d = DeadLetterField
    out[_M.INGEST_ERRORS] = MeasurementSchema(_M.INGEST_ERRORS, (Tag.EDGE, Tag.REASON, Tag.SLOT),
                                             MappingProxyType({
        d.COUNTY: _S, d.FARM: _S, d.GATEWAY: _S, d.TOPIC: _S, d.DETAIL: _S, d.EXCERPT: _S,
        d.COUNT: _I, d.READING_INDEX: _I}))
    e = EdgeField
    out[_M.EDGE] = MeasurementSchema(_M.EDGE, (Tag.INSTANCE,), MappingProxyType({
        e.MESSAGES: _I, e.READINGS: _I, e.LINES_WRITTEN: _I, e.REJECTED: _I, e.SPOOLED: _I,
        e.SPOOL_LINES: _I, e.SPOOL_DROPPED: _I, e.PENDING: _I, e.WRITE_P50_MS: _F,
        e.WRITE_P99_MS: _F, e.INFLUX_UP: _B, e.MQTT_CONNECTED: _B, e.DISK_FULL: _B,
        e.VERSION: _S}))
    a = AlertField
    out[_M.ALERTS] = MeasurementSchema(_M.ALERTS, (
        Tag.COUNTY, Tag.FARM, Tag.EVENT, Tag.RULE, Tag.FAMILY, Tag.SEVERITY, Tag.SCOPE,
        Tag.SCOPE_ID, Tag.CHANNEL, Tag.CONTACT), MappingProxyType({
        a.GROUP: _S, a.COUNT: _I, a.TITLE: _S, a.TEXT: _S, a.TEXT_EN: _S, a.VALUE: _F,
        a.ATTEMPT: _I, a.ERROR: _S}))
    return out


#: name -> tags and field types of every measurement farmedge writes.
MEASUREMENTS: Final[Mapping[str, MeasurementSchema]] = MappingProxyType(_measurements())
