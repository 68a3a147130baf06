"""Telling a full disk from other failures, for every part that writes
(the edge's spool and state, the alert engine's store, the gateway's outbox)."""

from __future__ import annotations

import errno
import sqlite3

__all__ = ["is_disk_full"]

_SQLITE_FULL = 13


def is_disk_full(exc: BaseException) -> bool:
    """True for "no space left" however it is spelt: ENOSPC or EDQUOT from
    the OS, SQLITE_FULL from SQLite."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.Error):
        return (getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL
                or "database or disk is full" in str(exc))
    return False
