"""Wall clock, monotonic clock, boot id and whether the wall clock is set.

A Raspberry Pi has no real-time clock: after a power cut its wall clock
starts wherever it stopped until NTP sets it. Every reading is stamped with
the wall clock *and* the monotonic boot clock (``CLOCK_BOOTTIME``) and the
boot id; once the clock is set, readings of the same boot taken before are
re-dated ``now_wall - (now_mono - mono)`` before they leave the outbox.

The agent takes a :class:`ClockSource` through its constructor; tests pass
:class:`FakeClock`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = ["ClockSource", "FakeClock", "SystemClock", "kernel_clock_synced"]

STA_UNSYNC = 0x0040
TIME_ERROR = 5


class ClockSource(Protocol):
    def wall_ms(self) -> int: ...

    def mono_ms(self) -> int: ...

    def boot_id(self) -> str: ...

    def synced(self) -> bool: ...


class _Timex(ctypes.Structure):
    # struct timex up to ``status``; the rest is padding (the kernel writes
    # about 200 bytes on 64-bit systems).
    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("_rest", ctypes.c_char * 512),
    )


def kernel_clock_synced() -> bool | None:
    """The kernel's view (adjtimex with modes 0, which needs no privilege):
    False when STA_UNSYNC is set or the call returns TIME_ERROR, None when
    adjtimex is not available."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        tx = _Timex()
        ret = int(libc.adjtimex(ctypes.byref(tx)))
    except (OSError, AttributeError):
        return None
    if ret < 0:
        return None
    return not (ret == TIME_ERROR or tx.status & STA_UNSYNC)


def _timedatectl_synced() -> bool | None:
    try:
        out = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
                             capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() == "yes"


class SystemClock:
    """The real clocks. ``source``: "kernel", "timedatectl" or "trust".
    ``probe`` replaces the source's check (tests pass a fake): True when
    the clock is set, False when not, None when it cannot tell."""

    def __init__(self, source: str = "kernel", *, recheck_s: float = 10.0,
                 probe: Callable[[], bool | None] | None = None) -> None:
        self.source = source
        self.recheck_s = recheck_s
        self._probe = probe or (_timedatectl_synced if source == "timedatectl"
                                else kernel_clock_synced)
        self._boot: str | None = None
        self._synced = source == "trust"
        self._checked = -1e9

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def mono_ms(self) -> int:
        return time.clock_gettime_ns(time.CLOCK_BOOTTIME) // 1_000_000

    def boot_id(self) -> str:
        if self._boot is None:
            try:
                self._boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
            except OSError:
                self._boot = str(uuid.uuid4())  # unknown: never match an older boot
        return self._boot

    def synced(self) -> bool:
        if self.source == "trust" or self._synced:
            # Once set, the clock stays set for this boot (NTP keeps it).
            return True
        now = time.monotonic()
        if now - self._checked < self.recheck_s:
            return False
        self._checked = now
        self._synced = bool(self._probe())
        return self._synced


@dataclass
class FakeClock:
    """A clock for tests: set ``wall``, ``mono`` and ``is_synced`` by hand."""

    wall: int = 1_763_800_000_000
    mono: int = 1_000_000
    boot: str = "boot-1"
    is_synced: bool = True

    def wall_ms(self) -> int:
        return self.wall

    def mono_ms(self) -> int:
        return self.mono

    def boot_id(self) -> str:
        return self.boot

    def synced(self) -> bool:
        return self.is_synced

    def advance(self, ms: int) -> None:
        self.wall += ms
        self.mono += ms
