"""MQTT topics of wire contract v1.

``farm/v1/{county}/{farm}/{gateway}/telemetry``  readings (QoS 1)
``farm/v1/{county}/{farm}/{gateway}/status``     retained status, last will
``farm/v1/{county}/{farm}/alerts``               alerts the edge raised
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from .errors import ContractError
from .ids import is_valid_topic_id, reserved_id_reason

__all__ = [
    "PREFIX",
    "STATUS_FILTER",
    "TELEMETRY_FILTER",
    "GatewayTopic",
    "TopicError",
    "alerts_topic",
    "parse_gateway_topic",
    "status_topic",
    "telemetry_topic",
]

PREFIX = "farm/v1"
TELEMETRY_FILTER = f"{PREFIX}/+/+/+/telemetry"
STATUS_FILTER = f"{PREFIX}/+/+/+/status"

Channel = Literal["telemetry", "status"]


class TopicError(ContractError):
    """A topic outside the contract."""


@dataclass(frozen=True, slots=True)
class GatewayTopic:
    county: str
    farm: str
    gateway: str
    channel: Channel


def telemetry_topic(county: str, farm: str, gateway: str) -> str:
    return f"{PREFIX}/{county}/{farm}/{gateway}/telemetry"


def status_topic(county: str, farm: str, gateway: str) -> str:
    return f"{PREFIX}/{county}/{farm}/{gateway}/status"


def alerts_topic(county: str, farm: str) -> str:
    return f"{PREFIX}/{county}/{farm}/alerts"


@lru_cache(maxsize=65536)
def parse_gateway_topic(topic: str) -> GatewayTopic:
    """Split a gateway topic; raises TopicError. Cached: topics repeat."""
    parts = topic.split("/")
    if len(parts) != 6 or parts[0] != "farm" or parts[1] != "v1":
        raise TopicError("topic is not farm/v1/{county}/{farm}/{gateway}/{channel}")
    county, farm, gateway, channel = parts[2], parts[3], parts[4], parts[5]
    for name, value in (("county", county), ("farm", farm), ("gateway", gateway)):
        if not is_valid_topic_id(value):
            reason = reserved_id_reason(value)
            raise TopicError(f"topic {name} {reason}" if reason is not None
                             else f"topic {name} {value[:70]!r} is not a valid id")
    if channel == "telemetry":
        return GatewayTopic(county, farm, gateway, "telemetry")
    if channel == "status":
        return GatewayTopic(county, farm, gateway, "status")
    raise TopicError(f"topic channel {channel[:20]!r} is not telemetry or status")
