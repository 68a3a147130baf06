"""The alerts package's one error root."""

from __future__ import annotations

__all__ = ["AlertsError", "DeliveryFailed", "StateError"]


class AlertsError(Exception):
    """Anything the alert engine reports as an error."""


class DeliveryFailed(AlertsError):
    """One attempt to send one message failed (the engine retries)."""


class StateError(AlertsError):
    """The state file could not be opened, read or written (the SQLite or OS
    error is its ``__cause__``; a full disk is one, see farmedge.disk)."""
