"""The edge's errors: :class:`EdgeError` is the root of everything the edge
package raises on purpose; library errors (aiohttp, sqlite3, OSError from
the disk) are translated where the call is made, or contained and counted
(docs/edge.md, "What the edge guarantees")."""

from __future__ import annotations

__all__ = ["EdgeError", "EdgeFatal"]


class EdgeError(Exception):
    """Root of the edge package's errors."""


class EdgeFatal(EdgeError):
    """A task of the service failed outside the handling of one message: the
    service has stopped (what it had not acknowledged stays with the broker)
    and the process should exit non-zero. ``cause`` names the failure; it was
    logged once as ``edge.fatal``."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause
