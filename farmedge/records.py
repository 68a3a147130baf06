"""The typed records the edge hands to the stages after it (the alert engine):
one :class:`Accepted` per telemetry message whose readings are durable, one
:class:`StatusEvent` per gateway status. docs/architecture.md shows the hops.

Stages are called on the event loop after the batch holding the records is
durable (written to InfluxDB or spooled), in arrival order, with all the
records of a batch at once. They must not block: one that has slow work
(sending a message) queues it for its own task.

An :class:`Accepted` carries what ingest already resolved, once per message:
the gateway's registry entry (so a stage does not look the sensors up again),
the clock offset the readings were placed with, and the contract's normalized
readings themselves (no object per reading is built for the stages).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, NamedTuple, Protocol

from farmedge.contract.models import GatewayStatus
from farmedge.contract.parse import NormalizedReading
from farmedge.registry import GatewayEntry, SensorMeta

__all__ = ["Accepted", "AcceptedReading", "BrokerKind", "CenterAware", "CenterEvent",
           "CenterWhat", "Stage", "StatusEvent"]

_NO_TAGS: Mapping[str, str] = MappingProxyType({})
_EMPTY_META = SensorMeta()


class AcceptedReading(NamedTuple):
    """One accepted reading on its own, with its gateway's ids: the per-reading
    view of an :class:`Accepted` (:meth:`Accepted.each`), for tests and for
    the slow paths of a stage."""

    county: str
    farm: str
    gateway: str
    sensor: str
    kind: str          # contract kind name, e.g. "soil_moisture"
    ts_ms: int         # the reading's time as stored, epoch ms
    value: float       # in the kind's canonical unit
    unit: str          # canonical unit, e.g. "%"
    quality: str       # "ok" | "suspect" | "error"
    #: plot / crop / animal, from the registry or the reading itself
    tags: Mapping[str, str] = _NO_TAGS
    #: False when the gateway's clock was unsynced and ts could not be trusted
    clock_ok: bool = True


@dataclass(frozen=True, slots=True)
class Accepted:
    """The readings of one telemetry message that the edge made durable."""

    county: str
    farm: str
    gateway: str
    #: When the edge received the message (epoch ms, the edge's clock).
    received_ms: int
    #: The gateway's clock was synced: reading times are its own.
    clock_ok: bool
    #: Added to each reading's ``ts_ms`` to give the time it is stored at
    #: (0 when the clock is synced; docs/protocol.md, "Clock").
    offset_ms: int
    readings: Sequence[NormalizedReading]
    #: The gateway's registry entry; None with open enrollment.
    entry: GatewayEntry | None = None

    def meta(self, sensor: str) -> SensorMeta:
        """The registry's metadata of one of this gateway's sensors (empty
        when the sensor or the gateway is not listed)."""
        if self.entry is None:
            return _EMPTY_META
        return self.entry.sensors.get(sensor, _EMPTY_META)

    def each(self) -> Iterator[AcceptedReading]:
        """The readings one by one, as :class:`AcceptedReading`."""
        for r in self.readings:
            meta = self.meta(r.sensor)
            animal = r.animal or meta.animal
            tags: dict[str, str] = {}
            if meta.plot:
                tags["plot"] = meta.plot
            if meta.crop:
                tags["crop"] = meta.crop
            if animal:
                tags["animal"] = animal
            yield AcceptedReading(self.county, self.farm, self.gateway, r.sensor, r.kind.name,
                                  r.ts_ms + self.offset_ms, r.value, r.kind.unit,
                                  r.quality.value, tags or _NO_TAGS, self.clock_ok)


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """A gateway status the edge made durable."""

    county: str
    farm: str
    gateway: str
    status: GatewayStatus
    received_ms: int


#: What changed in the center's own health (docs/alerts.md, "Farm-side
#: versus center-side").
CenterWhat = Literal["edge_started", "broker_down", "broker_up", "influx_down", "influx_up",
                     "replay_started", "replay_done", "disk_full", "disk_ok",
                     "spool_filling", "spool_ok"]
#: What the edge receives from: an MQTT broker ([source] kind = "mqtt") or a
#: NATS cluster (kind = "nats").
BrokerKind = Literal["mqtt", "nats"]


@dataclass(frozen=True, slots=True)
class CenterEvent:
    """A change in the center's own health, as the edge saw it.

    ``edge_started`` comes first, before the broker is connected: until the
    next ``broker_up`` the edge receives nothing. ``broker_down`` /
    ``broker_up``: the edge's connection to its broker, which ``broker``
    names (its MQTT broker, or the NATS cluster). ``influx_down`` /
    ``influx_up``: InfluxDB (readings go to the spool meanwhile).
    ``replay_started`` / ``replay_done``: the spool is being written back.
    ``disk_full`` / ``disk_ok``: the spool cannot take a batch (with InfluxDB
    down too, nothing becomes durable and the edge receives nothing).
    ``spool_filling`` / ``spool_ok``: the spool (or the disk under it) is
    filling: ``value`` is how full, in percent of ``[spool] max_mb`` (see
    :meth:`farmedge.edge.health.CenterWatch.fill`).
    """

    what: CenterWhat
    #: When the edge saw it (epoch ms, the edge's clock).
    at_ms: int
    #: A few words for the record (the error, the broker's URL), may be empty.
    detail: str = ""
    #: A number the event carries (spool_filling: percent full), or None.
    value: float | None = None
    #: broker_down / broker_up: what the edge lost or has again.
    broker: BrokerKind = "mqtt"


class CenterAware(Protocol):
    """A stage that wants the center's own health (the alert engine). The
    edge calls ``on_center`` on the stages that have it."""

    def on_center(self, event: CenterEvent) -> None: ...


class Stage(Protocol):
    """What the edge calls with the records of each durable batch."""

    def on_accepted(self, records: Sequence[Accepted]) -> None: ...

    def on_status(self, event: StatusEvent) -> None: ...
