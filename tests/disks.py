"""Small real filesystems for the full-disk tests: a size-limited tmpfs
mounted for one test, and a helper that fills it to the last byte."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_tmpfs(parent: Path, size: str, prefix: str = "disk") -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (``"2m"``) under ``parent`` and unmount it at
    the end. Mounting needs root: the test is skipped, with that reason,
    otherwise."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    mnt = parent / f"{prefix}-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                   check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill_disk(disk: Path) -> Path:
    """Fill the filesystem to the last byte; returns the file that does it
    (remove it to make room again)."""
    filler = disk / f"filler-{uuid.uuid4().hex[:6]}"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for size in (65536, 4096, 512, 1):
            chunk = b"x" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler
