"""The alerts package's one error root."""

from __future__ import annotations

__all__ = ["AlertsError", "DeliveryFailed"]


class AlertsError(Exception):
    """Anything the alert engine reports as an error."""


class DeliveryFailed(AlertsError):
    """One attempt to send one message failed (the engine retries)."""
