"""The storage package's errors: :class:`StorageError` is the root."""

from __future__ import annotations

__all__ = ["StorageError", "WriterNotStarted"]


class StorageError(Exception):
    """Something in farmedge.storage failed; library errors (aiohttp, OS)
    are translated into it, or into a :class:`~farmedge.storage.influx.WriteResult`,
    where the call is made."""


class WriterNotStarted(StorageError):
    """The writer was used before ``await start()`` (or after ``close()``)."""
