"""The one narrow interface every sensor driver implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Protocol

from pydantic import Field

from farmedge.config import Section
from farmedge.contract import Quality
from farmedge.contract.models import Id

__all__ = ["Driver", "Sample", "SensorConfig"]


@dataclass(frozen=True, slots=True)
class Sample:
    """One value a driver read, in a unit the contract accepts for ``kind``.

    The sampler stamps it with the time (wall clock, monotonic clock, boot id)
    unless the driver saw it earlier and says so in ``mono_ms``.
    """

    kind: str
    value: float
    unit: str
    quality: Quality = Quality.OK
    #: The animal this reading speaks of (RFID tag), if any.
    animal: str | None = None
    #: Another sensor id than the configured one (a bus with several devices).
    sensor: str | None = None
    #: Monotonic (boot) time in ms when the value was observed, if not now.
    mono_ms: int | None = None


class Driver(Protocol):
    """Read a sensor. ``read`` blocks (serial, I2C, files) and runs in a
    worker thread; it opens its device on first use and raises
    :class:`~farmedge.gateway.errors.DriverError` when it cannot read."""

    def read(self) -> list[Sample]: ...

    def close(self) -> None: ...


class SensorConfig(Section):
    """Keys every ``[[sensors]]`` entry has, whatever its driver."""

    #: The sensor id on the wire and in InfluxDB (letters, digits, - _ .).
    id: Id
    #: Seconds between two reads.
    interval_s: Annotated[float, Field(gt=0, le=86400)] = 60.0
    #: Mark a value "suspect" once it repeated unchanged this many reads in a
    #: row (a stuck probe); 0 turns the check off.
    stuck_after: Annotated[int, Field(ge=0)] = 0
