"""The gateway agent's one error root."""

from __future__ import annotations

__all__ = ["DriverError", "GatewayError", "OutboxError", "UplinkError"]


class GatewayError(Exception):
    """Anything the gateway agent raises on purpose."""


class DriverError(GatewayError):
    """A sensor could not be read (I/O error, timeout, bad frame)."""


class OutboxError(GatewayError):
    """The outbox database cannot be used."""


class UplinkError(GatewayError):
    """The uplink cannot go on (a message the contract does not allow)."""
