"""Payload models of wire contract v1 (see docs/protocol.md).

Validation happens in two steps so that one bad reading does not drop its good
neighbours: :class:`TelemetryEnvelope` checks the message as a whole (if it
fails, the whole message is invalid), then each entry of ``readings`` is
checked on its own with :class:`Reading` (if one fails, only that reading is
rejected).

Everything these models accept, InfluxDB can store: every number is finite
and within int64 (integers) or float64 (decimals), every timestamp within
InfluxDB's time range, every string bounded (docs/protocol.md, "Limits").

The contract grows by optional fields (docs/protocol.md, "How the contract
grows"): a key these models do not know is ignored, in the envelope, in a
reading and in a status. Its value is dropped as it is read (``extra =
"ignore"``: nothing of it is kept on the model, so a large unknown value
cannot ride along in memory), and it counts toward the payload's size and
nesting limits like any other byte. Known fields stay strict: required
fields, their types and their limits.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
)

from .ids import RESERVED_IDS, check_id, check_topic_id, is_valid_id

__all__ = [
    "MAX_EPOCH_MS",
    "MAX_INT",
    "MAX_PAYLOAD_BYTES",
    "MAX_READINGS",
    "MAX_REASON_CHARS",
    "Clock",
    "GatewayStatus",
    "Id",
    "Quality",
    "Reading",
    "StatusReason",
    "TelemetryEnvelope",
    "TopicId",
]

MAX_PAYLOAD_BYTES = 256 * 1024
MAX_READINGS = 1000
#: Epoch milliseconds are below this: InfluxDB stores time as int64
#: nanoseconds (at most 2**63 - 2), whose last whole millisecond is
#: 9223372036854 = 2262-04-11T23:47:16.854Z.
MAX_EPOCH_MS = (2**63 - 2) // 1_000_000 + 1
#: Integers are below this (InfluxDB's integers are int64).
MAX_INT = 2**63
#: A status's ``reason`` is at most this long, known or not.
MAX_REASON_CHARS = 32


def _id(value: str) -> str:
    return check_id(value)


def _topic_id(value: str) -> str:
    # Hot path: one set lookup and the cached id check; the message only
    # when it fails.
    if value in RESERVED_IDS or not is_valid_id(value):
        check_topic_id(value)
    return value


Id = Annotated[str, AfterValidator(_id)]
#: A county, farm or gateway id: also a topic level, so not a reserved word.
TopicId = Annotated[str, AfterValidator(_topic_id)]
EpochMs = Annotated[StrictInt, Field(ge=0, lt=MAX_EPOCH_MS)]
#: A count: 0 <= n < 2**63, a JSON integer (not a boolean, string or decimal).
Count = Annotated[StrictInt, Field(ge=0, lt=MAX_INT)]
#: A finite decimal (float64; never NaN or infinity), a JSON number (not a
#: boolean or string).
Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]
#: A finite decimal >= 0.
FiniteNonNeg = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]


def _version(value: Any) -> Any:
    # Literal[1] alone takes true and 1.0 (both == 1 in Python): a producer
    # writing either is broken, and the contract's known fields are strict.
    if type(value) is not int:
        raise ValueError("must be the integer 1 (the contract's version)")
    return value


#: The contract version: the JSON integer 1 (not true, 1.0 or "1").
Version = Annotated[Literal[1], BeforeValidator(_version)]


class Clock(StrEnum):
    SYNCED = "synced"
    UNSYNCED = "unsynced"


class StatusReason(StrEnum):
    """Why a gateway says ``online: false`` (docs/protocol.md, "Status
    payload"). A later revision may add values: an edge reads one it does
    not know as no reason at all, never as one of these."""

    #: A planned stop: the agent was told to stop (SIGTERM, systemctl).
    STOPPING = "stopping"
    #: The last will: the broker lost the gateway's connection.
    LOST = "lost"


class Quality(StrEnum):
    OK = "ok"
    SUSPECT = "suspect"
    ERROR = "error"


class Reading(BaseModel):
    """One measurement: sensor id, kind, its own time, value, unit, quality."""

    model_config = ConfigDict(extra="ignore", frozen=True)

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

    model_config = ConfigDict(extra="ignore")

    v: Version
    gateway: TopicId
    seq: Annotated[StrictInt, Field(ge=0, lt=MAX_INT)]
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
    Keys it does not know (added by a newer gateway) are ignored.
    """

    model_config = ConfigDict(extra="ignore")

    v: Version
    gateway: TopicId
    online: StrictBool
    ts: EpochMs | None = None
    uptime_s: FiniteNonNeg | None = None
    version: Annotated[str, Field(max_length=40)] | None = None
    outbox_depth: Count | None = None
    outbox_oldest_age_s: FiniteNonNeg | None = None
    dropped: Count | None = None
    clock: Clock | None = None
    cpu_temperature: Finite | None = None
    disk_free_mb: FiniteNonNeg | None = None
    #: True while the gateway's disk is full: it is not keeping new readings
    #: (they are counted in ``dropped``). Sent only then.
    outbox_full: StrictBool | None = None
    #: Why ``online`` is false; None when not said, or said in a value this
    #: version does not know (a string of at most MAX_REASON_CHARS all the same).
    reason: StatusReason | None = None
    #: Readings held back because the clock is not set (waiting for NTP
    #: up to the gateway's ``hold_unsynced_s``), and how long the oldest of
    #: them has waited, in seconds by the gateway's monotonic clock.
    held_unsynced: Count | None = None
    held_for_s: FiniteNonNeg | None = None
    #: Readings the broker refused for themselves, set aside in the
    #: gateway's outbox (kept, not sent). Sent only when there are some.
    refused: Count | None = None
    #: While the broker refuses the gateway's telemetry for a reason that is
    #: not the messages' (MQTT 5 PUBACK reason code, 0x87 not authorized
    #: say): the code. The readings are kept meanwhile. Sent only then.
    publish_refused: Annotated[StrictInt, Field(ge=0x80, le=0xFF)] | None = None

    @field_validator("reason", mode="before")
    @classmethod
    def _reason(cls, v: Any) -> Any:
        """A string of at most MAX_REASON_CHARS; a value not (yet) known is
        None (the contract grows by new reasons), anything else refused."""
        if v is None:
            return None
        if not isinstance(v, str):
            raise ValueError("reason must be a string")
        if len(v) > MAX_REASON_CHARS:
            raise ValueError(f"reason is longer than {MAX_REASON_CHARS} characters")
        return v if v in StatusReason._value2member_map_ else None
