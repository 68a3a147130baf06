"""The farm gateway agent: sensor drivers, a durable SQLite outbox and an
MQTT uplink, for a Raspberry Pi on a weak, metered link (docs/gateway.md).

It imports the wire contract (every payload is built by it), the config
loader, logging, MQTT and the simulated data generator; never the edge, the
alert engine, storage or provisioning. ``GatewayError`` is the root of what
it raises.
"""

from __future__ import annotations

from .agent import Agent
from .clock import ClockSource, FakeClock, SystemClock
from .drivers import DRIVERS, Driver, Sample
from .errors import DriverError, GatewayError, OutboxError, UplinkError
from .outbox import Outbox
from .settings import GatewaySettings
from .uplink import Uplink

__all__ = [
    "DRIVERS", "Agent", "ClockSource", "Driver", "DriverError", "FakeClock",
    "GatewayError", "GatewaySettings", "Outbox", "OutboxError", "Sample", "SystemClock",
    "Uplink", "UplinkError",
]
