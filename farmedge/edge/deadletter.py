"""Dead letters: what the edge rejects, as :class:`Rejected` records, and
:func:`dead_letter_line`, the one place they become lines of the
``ingest_errors`` measurement (docs/storage.md).

A dead letter's time and slot are unique per edge instance, and the same
again when the broker delivers the same message again (DUP flag, after the
edge was killed before acknowledging it): :class:`DeadLetters` remembers
them in the ingest state (state.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from farmedge.contract import excerpt, parse_gateway_topic
from farmedge.logs import Budget, Throttle, get_logger
from farmedge.storage.lineproto import escape_tag, field_str
from farmedge.storage.schema import DeadLetterField, Measurement, Tag
from farmedge.transport.mqtt import Inbound

from .state import IngestState

__all__ = ["DEAD_LETTER_SLOTS", "DeadLetters", "Rejected", "dead_letter_line"]

#: Dead letters of one reason written in the same millisecond get distinct
#: ``slot`` tags 0..DEAD_LETTER_SLOTS-1 (docs/storage.md).
DEAD_LETTER_SLOTS = 100


def _bounded(text: str, limit: int) -> str:
    """At most ``limit`` printable characters (excerpt's escaping otherwise)."""
    return text if len(text) <= limit and text.isprintable() else excerpt(text, limit)


@dataclass(frozen=True, slots=True)
class Rejected:
    """One rejected message or reading, for the dead-letter measurement.

    ``ms`` and ``slot`` are the dead letter's time and slot (unique per edge
    instance; the same again when the broker redelivers the message)."""

    reason: str
    detail: str
    topic: str
    county: str | None
    farm: str | None
    gateway: str | None
    #: The reading's index in its message (None: the whole message).
    index: int | None
    #: A bounded, printable excerpt of what was rejected.
    excerpt: str
    ms: int
    slot: int


def dead_letter_line(rej: Rejected, edge_tag: str) -> str:
    """The ``ingest_errors`` line of ``rej`` (``edge_tag``: the instance,
    escaped). The schema is bounded so that InfluxDB cannot refuse it
    (series and tag-value limits, docs/storage.md): tags are the reason, the
    edge instance and a slot (at most DEAD_LETTER_SLOTS values); everything a
    sender chooses (topic, ids, payload) goes into bounded string fields."""
    f = DeadLetterField
    tags = (f",{Tag.EDGE}={edge_tag},{Tag.REASON}={escape_tag(_bounded(rej.reason, 64))}"
            f",{Tag.SLOT}={rej.slot}")
    fields = (f"{f.COUNTY}={field_str(_bounded(rej.county or '_', 64))},"
              f"{f.FARM}={field_str(_bounded(rej.farm or '_', 64))},"
              f"{f.GATEWAY}={field_str(_bounded(rej.gateway or '_', 64))},"
              f"{f.TOPIC}={field_str(_bounded(rej.topic, 300))},"
              f"{f.DETAIL}={field_str(_bounded(rej.detail, 500))},"
              f"{f.EXCERPT}={field_str(rej.excerpt)},{f.COUNT}=1i")
    if rej.index is not None:
        fields += f",{f.READING_INDEX}={rej.index}i"
    return f"{Measurement.INGEST_ERRORS}{tags} {fields} {rej.ms}"


class DeadLetters:
    """Makes :class:`Rejected` records: counted by reason (``counters``),
    logged (throttled, ``ingest.rejected``), timed and slotted."""

    def __init__(self, *, instance: str, counters: dict[str, int],
                 now_ms: Callable[[], int], state: IngestState) -> None:
        self.edge_tag = escape_tag(excerpt(instance, 64))
        self._counters = counters
        self._now_ms = now_ms
        self.state = state
        self._err_ms = 0
        self._err_slot = 0
        #: The message being validated (the validator sets it), and its
        #: digest (for its dead letters' times).
        self.current: Inbound | None = None
        self.current_digest: bytes | None = None
        self._log = get_logger("farmedge.edge.validate")
        self._throttle = Throttle()
        #: Lines per reason, over all gateways (a flood of invented ids).
        self._budget = Budget()

    def _error_ts(self) -> tuple[int, int]:
        """(ms, slot), unique per edge instance: the clock's millisecond and a
        counter within it. Only past DEAD_LETTER_SLOTS dead letters in one
        millisecond (100,000/s, more than the edge can handle) does the
        time run ahead of the clock."""
        now = self._now_ms()
        if now > self._err_ms:
            self._err_ms, self._err_slot = now, 0
        else:
            self._err_slot += 1
            if self._err_slot >= DEAD_LETTER_SLOTS:
                self._err_ms, self._err_slot = self._err_ms + 1, 0
        return self._err_ms, self._err_slot

    def _dead_letter_time(self, reason: str, index: int | None) -> tuple[int, int]:
        """Time and slot of a dead letter of the message being handled: the
        same as the first time when the broker delivers the message again
        (DUP flag, after the edge was killed before acknowledging it), new
        otherwise (a sender may well send the same bad message twice)."""
        msg = self.current
        if msg is None:
            return self._error_ts()
        if self.current_digest is None:
            h = hashlib.blake2b(msg.topic.encode("utf-8", "replace"), digest_size=16)
            h.update(b"\0")
            h.update(msg.payload)
            self.current_digest = h.digest()
        digest = hashlib.blake2b(self.current_digest + f"{reason}/{index}".encode(),
                                 digest_size=16).digest()
        if msg.dup:
            seen = self.state.dead_letter_time(digest)
            if seen is not None:
                return seen
        ms, slot = self._error_ts()
        self.state.save_dead_letter(digest, ms, slot)
        return ms, slot

    def reject(self, *, topic: str, reason: str, detail: str, raw: object,
               key: tuple[str, str, str] | None = None, index: int | None = None) -> Rejected:
        """A :class:`Rejected` record for one message or reading (of the
        message being validated, if any): counted, logged (throttled)."""
        county, farm, gateway = key if key is not None else (None, None, None)
        c = self._counters
        c[reason] = c.get(reason, 0) + 1
        ms, slot = self._dead_letter_time(reason, index)
        suppressed = self._throttle.allow((reason, gateway or topic[:100]))
        others = self._budget.allow(reason) if suppressed is not None else None
        if suppressed is not None and others is not None:
            self._log.warning("ingest.rejected", reason=reason, detail=detail[:300],
                              topic=excerpt(topic, 200), gateway=gateway, index=index,
                              suppressed_since_last=suppressed,
                              **({"reason_suppressed": others} if others else {}))
        return Rejected(reason, detail, topic, county, farm, gateway, index, excerpt(raw),
                        ms, slot)

    def refused(self, line: str, status: int, error: str) -> Rejected:
        """A line InfluxDB refused (400): reason ``influx_rejected``."""
        return self.reject(topic="", reason="influx_rejected",
                           detail=f"InfluxDB {status}: {error}"[:500], raw=line)

    def internal(self, msg: Inbound, exc: Exception) -> Rejected:
        """Validating ``msg`` raised: the message becomes a dead letter with
        reason ``internal``, so that it is acknowledged, never redelivered
        forever."""
        key: tuple[str, str, str] | None = None
        try:
            gt = parse_gateway_topic(msg.topic)
            key = (gt.county, gt.farm, gt.gateway)
        except Exception:  # the record names the topic anyway
            pass
        return self.reject(topic=msg.topic, reason="internal",
                           detail=f"{type(exc).__name__}: {exc}"[:500], raw=msg.payload,
                           key=key)
