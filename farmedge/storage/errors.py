"""The storage package's errors: :class:`StorageError` is the root."""

from __future__ import annotations

__all__ = ["SpoolError", "StorageError", "WriterNotStarted"]


class StorageError(Exception):
    """Something in farmedge.storage failed; library errors (aiohttp, OS)
    are translated into it, or into a :class:`~farmedge.storage.influx.WriteResult`,
    where the call is made."""


class WriterNotStarted(StorageError):
    """The writer was used before ``await start()`` (or after ``close()``)."""


class SpoolError(StorageError, OSError):
    """The spool could not store, read or forget a batch. An ``OSError``
    too, with the original ``errno``, ``strerror`` and ``filename``, so that
    a full disk (``ENOSPC``) is told apart as before (farmedge.disk)."""

    @classmethod
    def wrap(cls, exc: OSError) -> SpoolError:
        if isinstance(exc, SpoolError):
            return exc
        if exc.errno is None:
            return cls(str(exc))
        return cls(exc.errno, exc.strerror, exc.filename)
