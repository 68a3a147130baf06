"""The clock hold, made visible: while the clock is not set, readings of
this boot wait in the outbox up to ``[uplink] hold_unsynced_s`` for NTP (so
they can be re-dated, see :func:`~farmedge.gateway.batching.next_batch`).
:class:`HoldWatch` counts them, logs ``gateway.holding_unsynced`` (a
warning) when a hold starts and every ``log_every_s`` while it lasts, and
``gateway.hold_ended`` when it is over; the status carries the count
(``held_unsynced``) and the wait (``held_for_s``), docs/gateway.md "Clock".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .clock import ClockSource
from .errors import OutboxError
from .outbox import Outbox
from .settings import GatewaySettings

__all__ = ["Hold", "HoldWatch"]


@dataclass(frozen=True, slots=True)
class Hold:
    """Readings held for the clock now, and how long the oldest has waited."""

    readings: int = 0
    held_for_s: float = 0.0


class HoldWatch:
    def __init__(self, settings: GatewaySettings, outbox: Outbox, clock: ClockSource, log: Any,
                 *, log_every_s: float = 300.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.s = settings
        self.outbox = outbox
        self.clock = clock
        self.log = log
        self.log_every_s = log_every_s
        self._now = monotonic
        #: monotonic() of the last warning; None while nothing is held.
        self._logged: float | None = None
        self._peak = 0
        #: No reading held now or later has a lower id (the boot's first,
        #: then moved up by each look).
        self._from_id: int | None = None

    def current(self) -> Hold:
        """What is held now (nothing when the clock is set, the hold is 0 s,
        or the outbox is not open or cannot answer)."""
        ob, hold_s = self.outbox, self.s.uplink.hold_unsynced_s
        if hold_s <= 0 or not ob.unsynced or not ob.is_open or self.clock.synced():
            return Hold()
        mono, boot = self.clock.mono_ms(), self.clock.boot_id()
        try:
            if self._from_id is None:
                self._from_id = ob.file.first_id_of_boot(boot)
            n, oldest, self._from_id = ob.file.held(boot, mono - int(hold_s * 1000),
                                                    self._from_id)
        except OutboxError:
            return Hold()
        if not n or oldest is None:
            return Hold()
        return Hold(n, round(max(0, mono - oldest) / 1000, 1))

    def check(self) -> Hold:
        """Look, and log: a warning when a hold starts and every
        ``log_every_s`` while it lasts; info when it ends."""
        h = self.current()
        now = self._now()
        if h.readings:
            self._peak = max(self._peak, h.readings)
            if self._logged is None or now - self._logged >= self.log_every_s:
                self.log.warning(
                    "gateway.holding_unsynced", readings=h.readings, held_for_s=h.held_for_s,
                    hold_unsynced_s=self.s.uplink.hold_unsynced_s,
                    clock_source=self.s.clock.source,
                    hint="the clock is not set: readings wait for it up to [uplink] "
                    "hold_unsynced_s, then go marked unsynced; [clock] source says how "
                    "the clock counts as set")
                self._logged = now
        elif self._logged is not None:
            self.log.info("gateway.hold_ended", clock_set=self.clock.synced(),
                          held_most=self._peak)
            self._logged = None
            self._peak = 0
        return h

    @property
    def holding(self) -> bool:
        return self._logged is not None
