"""The uplink's side of a refused message (farmedge/gateway/refusal.py
decides what a refusal leads to): the parts to send again, the readings
set aside, and what "packet too large" taught about the broker's size
limit.

Mosquitto 2.0 (with ``max_inflight_messages 0``, as farmedge ships it)
drops the connection right after its PUBACK 0x95, so a refused size is
remembered for the agent's run: a message at least as large is not sent
again but split first, and a single reading that large is set aside, once
the broker has taken any message (before that, it waits in the outbox and
the next readings go first, so that a reading first in the outbox after a
restart is not blamed before the broker has shown it takes anything).
"""

from __future__ import annotations

from typing import Any

from .batching import Batch
from .clock import ClockSource
from .outbox import Outbox, Row
from .refusal import PACKET_TOO_LARGE, Action, Refusals, reason_name

__all__ = ["Resend"]


class Resend:
    def __init__(self, refusals: Refusals, outbox: Outbox, clock: ClockSource, log: Any) -> None:
        self.refusals = refusals
        self.outbox = outbox
        self.clock = clock
        self.log = log
        #: Parts of refused messages to send again (oldest first), before
        #: the outbox's next batch.
        self.retry: list[Batch] = []
        #: Single readings too large to send before the broker took anything.
        self.deferred: list[Batch] = []
        #: The smallest packet (bytes) the broker refused as too large.
        self.too_large: int | None = None
        #: The broker took a telemetry message since the agent started.
        self.accepted_ever = False
        self.refused_messages = 0
        self.set_aside = 0

    def connection_ended(self) -> None:
        """The outbox is read again from its oldest on the next connection."""
        self.retry.clear()
        self.deferred.clear()

    def accepted(self) -> None:
        self.accepted_ever = True
        self.refusals.accepted()
        if self.deferred:
            self.retry = sorted([*self.retry, *self.deferred], key=lambda b: b[0][0].id)
            self.deferred.clear()

    def take(self) -> Batch | None:
        """The next part to send again (no more readings than a "packet too
        large" left as the limit), or None."""
        if not self.retry:
            return None
        limit = self.refusals.batch_limit
        rows, clock_state = self.retry.pop(0)
        if limit is not None and len(rows) > limit:
            self.retry.insert(0, (rows[limit:], clock_state))
            rows = rows[:limit]
        return rows, clock_state

    def too_big(self, size: int, announced: int | None) -> bool:
        """A packet of ``size`` bytes is not to be sent: over the broker's
        announced Maximum Packet Size, or as large as one it refused."""
        return ((announced is not None and size > announced)
                or (self.too_large is not None and size >= self.too_large))

    def not_sent(self, batch: Batch, size: int, announced: int | None) -> None:
        """What the broker would answer to a packet too large, without sending it."""
        over_announced = announced is not None and size > announced
        if len(batch[0]) == 1 and not (self.accepted_ever or over_announced):
            self.deferred.append(batch)
            return
        self.refused(batch, PACKET_TOO_LARGE, certain=True)

    def refused(self, batch: Batch, code: int, *, size: int | None = None,
                certain: bool = False) -> None:
        """The broker refused this message: its readings stay in the outbox,
        to be sent again after a wait or in smaller messages, or the one
        reading is set aside."""
        rows, clock_state = batch
        self.refused_messages += 1
        if code == PACKET_TOO_LARGE and size is not None:
            self.too_large = min(self.too_large or size, size)
        d = self.refusals.refused(rows, code, accepted_here=self.accepted_ever or certain)
        if d.action is Action.SET_ASIDE:
            self._set_aside(rows[0], code)
            return
        parts = [(p, clock_state) for p in d.parts] if d.action is Action.SPLIT else [batch]
        self.retry = sorted([*self.retry, *parts], key=lambda b: b[0][0].id)

    def _set_aside(self, row: Row, code: int) -> None:
        kept = self.outbox.aside.put(row, code, self.clock.wall_ms())
        self.set_aside += 1
        self.log.error("gateway.reading_set_aside", sensor=row.sensor, kind=row.kind, ts=row.ts,
                       code=code, reason=reason_name(code), kept=kept,
                       refused_total=self.outbox.aside.count,
                       hint="kept in the outbox's refused table; once the broker takes it, "
                       "'farmedge gateway requeue-refused' sends it again")
