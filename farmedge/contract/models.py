"""Payload models of wire contract v1 (see docs/protocol.md).

Validation happens in two steps so that one bad reading does not drop its good
neighbours: :class:`TelemetryEnvelope` checks the message as a whole (if it
fails, the whole message is invalid), then each entry of ``readings`` is
checked on its own with :class:`Reading` (if one fails, only that reading is
rejected).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
)

from .ids import check_id

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "MAX_READINGS",
    "Clock",
    "GatewayStatus",
    "Id",
    "Quality",
    "Reading",
    "TelemetryEnvelope",
]

MAX_PAYLOAD_BYTES = 256 * 1024
MAX_READINGS = 1000
# Epoch milliseconds: 0 .. year 2286. Anything larger is not a timestamp.
MAX_EPOCH_MS = 10_000_000_000_000


def _id(value: str) -> str:
    return check_id(value)


Id = Annotated[str, AfterValidator(_id)]
EpochMs = Annotated[StrictInt, Field(ge=0, lt=MAX_EPOCH_MS)]


class Clock(StrEnum):
    SYNCED = "synced"
    UNSYNCED = "unsynced"


class Quality(StrEnum):
    OK = "ok"
    SUSPECT = "suspect"
    ERROR = "error"


class Reading(BaseModel):
    """One measurement: sensor id, kind, its own time, value, unit, quality."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sensor: Id
    kind: Annotated[str, Field(min_length=1, max_length=64)]
    ts: EpochMs
    #: A JSON number (integer or decimal); not a boolean or string; finite.
    value: Annotated[float, Field(strict=True, allow_inf_nan=False)]
    unit: Annotated[str, Field(max_length=20)]
    quality: Quality = Quality.OK
    # The animal a livestock reading speaks of (ear tag / bolus id), when the
    # sensor is not bound to one animal in the registry.
    animal: Id | None = None


class TelemetryEnvelope(BaseModel):
    """A gateway's batch. ``readings`` entries are validated one by one later."""

    model_config = ConfigDict(extra="forbid")

    v: Literal[1]
    gateway: Id
    seq: Annotated[StrictInt, Field(ge=0, lt=2**63)]
    sent: EpochMs
    clock: Clock
    readings: Annotated[list[Any], Field(min_length=1, max_length=MAX_READINGS)]


class Telemetry(TelemetryEnvelope):
    """The envelope with every reading valid: the fast path. One pydantic
    pass over the whole message; when it fails, the message is taken apart
    with TelemetryEnvelope and Reading to tell which part is wrong."""

    readings: Annotated[list[Reading], Field(min_length=1,
                                             max_length=MAX_READINGS)]


class GatewayStatus(BaseModel):
    """Retained status on ``.../status``. The last will sets ``online`` false.

    All fields but ``v``, ``gateway`` and ``online`` are optional so that a
    last will can be as small as ``{"v":1,"gateway":"gw-1","online":false}``.
    """

    model_config = ConfigDict(extra="forbid")

    v: Literal[1]
    gateway: Id
    online: bool
    ts: EpochMs | None = None
    uptime_s: Annotated[float, Field(ge=0)] | None = None
    version: Annotated[str, Field(max_length=40)] | None = None
    outbox_depth: Annotated[int, Field(ge=0)] | None = None
    outbox_oldest_age_s: Annotated[float, Field(ge=0)] | None = None
    dropped: Annotated[int, Field(ge=0)] | None = None
    clock: Clock | None = None
    cpu_temperature: float | None = None
    disk_free_mb: Annotated[float, Field(ge=0)] | None = None
