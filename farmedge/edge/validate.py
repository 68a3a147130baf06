"""From one MQTT message to typed records: validate against the contract,
check topic, payload and registry against each other, map readings to
line-protocol lines, and describe everything rejected as a
:class:`Rejected` record (reason, detail, topic, ids, index, a bounded
excerpt), which :func:`dead_letter_line` turns into a line of the dead-letter
measurement ``ingest_errors`` (the one place that does).

:meth:`Validator.validate` takes one :class:`Inbound` and returns one
:class:`Verdict`: the message's reading lines, its other points (gateway
status, sequence gaps), its :class:`Rejected` records, and the
:class:`~farmedge.records.Accepted` / :class:`~farmedge.records.StatusEvent`
the stages get once the lines are durable. It never touches a batch: the
batcher (batcher.py) merges verdicts into the one open out.

CPU work on in-memory state. What must survive a restart (ids known per gateway, how unsynced
clocks were placed, the last status per gateway) lives in
:class:`~farmedge.edge.state.IngestState`, read from dicts and written only
when something new is learnt.

Same message, same points: a message delivered again (QoS 1 redelivery, a
retained message at reconnect, after a restart) produces exactly the lines
it produced the first time, so InfluxDB overwrites them in place.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from farmedge.contract import (
    Clock,
    GatewayStatus,
    MessageRejected,
    NormalizedReading,
    Quality,
    TopicError,
    is_valid_id,
    parse_gateway_topic,
    parse_status,
    parse_telemetry,
)
from farmedge.logs import get_logger
from farmedge.records import Accepted, StatusEvent
from farmedge.registry import GatewayEntry, Registry, SensorMeta
from farmedge.storage.lineproto import field_str, float_field, series_key
from farmedge.storage.schema import KIND_POINTS, GatewayField, Measurement, Tag
from farmedge.transport.mqtt import Inbound

from .deadletter import DEAD_LETTER_SLOTS, DeadLetters, Rejected, dead_letter_line
from .settings import IngestSection
from .state import ClockSegment, IngestState

__all__ = ["DEAD_LETTER_SLOTS", "IngestCounters", "Rejected", "Validator", "Verdict",
           "dead_letter_line"]

_EMPTY_META = SensorMeta()

# Unsynced clocks (docs/protocol.md, "Clock"): a message that would place its
# readings this much later than the gateway's current offset says so (the
# offset was too high); one up to _CLOCK_KEEP_MS behind it was just delayed.
_CLOCK_LOWER_MS = 10_000
_CLOCK_KEEP_MS = 60_000
# A message sent (by the current offset) before the edge's connection
# delivered anything, give or take this, may have waited at the broker.
_BACKLOG_SLACK_MS = 10_000


class Verdict:
    """What one message became. (A plain class with slots: one is made per
    message, and a dataclass's generated ``__init__`` with list factories
    costs twice as much.)"""

    __slots__ = ("accepted", "lines", "msg", "n_readings", "points", "rejected", "status")

    def __init__(self, msg: Inbound) -> None:
        self.msg = msg
        #: Line-protocol lines of its accepted readings.
        self.lines: list[str] = []
        #: Its other points (the gateway's status, a sequence gap).
        self.points: list[str] = []
        self.rejected: list[Rejected] = []
        #: Its accepted readings, for the stages (None when there are none,
        #: or no stage wants them).
        self.accepted: Accepted | None = None
        self.status: StatusEvent | None = None
        #: Readings the message held (accepted or not).
        self.n_readings = 0


@dataclass(slots=True)
class _GatewayState:
    last_seq: int | None = None
    #: Sensor and animal ids this gateway may write (the state's set).
    known: set[tuple[str, str]] = field(default_factory=set)
    #: How many ids it may have: the budget plus the ids its registry entry lists.
    limit: int = 0


@dataclass(slots=True)
class IngestCounters:
    messages: int = 0
    readings: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    seq_gaps: int = 0
    seq_duplicates: int = 0
    #: Gateways whose seq went far back (a new outbox: counted, not a gap).
    seq_restarts: int = 0



class Validator:
    """Turns each :class:`Inbound` into a :class:`Verdict`. ``now_ms`` is the
    clock (injected by tests); ``state`` what must survive a restart."""

    def __init__(self, settings: IngestSection, *, registry: Registry | None = None,
                 instance: str = "edge-1", keep_readings: bool = False,
                 now_ms: Callable[[], int] | None = None,
                 state: IngestState | None = None) -> None:
        self._s = settings
        self._registry = registry
        self._index = registry.index() if registry is not None else None
        self._instance = instance
        self._keep = keep_readings
        self._now_ms = now_ms or (lambda: int(time.time() * 1000))
        self.state = state if state is not None else IngestState(None)
        self._gateways: dict[tuple[str, str, str], _GatewayState] = {}
        self._prefix_cache: dict[tuple[str, ...], tuple[str, str]] = {}
        self._generation = -1
        self._generation_first_ms = 0
        self._log = get_logger("farmedge.edge.validate")
        self.counters = IngestCounters()
        self.dead = DeadLetters(instance=instance, counters=self.counters.rejected,
                                now_ms=self._now_ms, state=self.state)
        #: One :class:`Rejected` record (deadletter.DeadLetters.reject).
        self.reject = self.dead.reject
        self._statuses = _Statuses(settings, self.state, self.reject)
        self._statuses.keep = keep_readings

    @property
    def keep_readings(self) -> bool:
        """Hand Accepted and StatusEvent records on (a stage wants them)."""
        return self._keep

    @keep_readings.setter
    def keep_readings(self, keep: bool) -> None:
        self._keep = keep
        self._statuses.keep = keep

    def _gateway_state(self, key: tuple[str, str, str],
                       entry: GatewayEntry | None) -> _GatewayState:
        state = _GatewayState(known=self.state.ids(key))
        listed = 0
        if entry is not None:
            # Listed sensors are known from the start and do not count
            # against the budget (they are in memory only, not persisted).
            for sid, meta in entry.sensors.items():
                ident = (sid, meta.animal or "")
                if ident not in state.known:
                    state.known.add(ident)
                listed += 1
        state.limit = self._s.max_ids_per_gateway + listed
        self._gateways[key] = state
        return state

    # -- dead letters (deadletter.py) --------------------------------------
    @property
    def edge_tag(self) -> str:
        return self.dead.edge_tag

    def dead_letter_line(self, rej: Rejected) -> str:
        return dead_letter_line(rej, self.dead.edge_tag)

    def refused(self, line: str, status: int, error: str) -> Rejected:
        """A line InfluxDB refused (400): reason ``influx_rejected``."""
        return self.dead.refused(line, status, error)

    def internal(self, msg: Inbound, exc: Exception) -> Rejected:
        """Validating ``msg`` raised: its ``internal`` dead letter."""
        return self.dead.internal(msg, exc)

    # -- messages ----------------------------------------------------------
    def validate(self, msg: Inbound) -> Verdict:
        """The message's verdict. May raise on a bug (the batcher contains
        it: the message then becomes an ``internal`` dead letter)."""
        v = Verdict(msg)
        dead = self.dead
        dead.current, dead.current_digest = msg, None  # for its dead letters' times
        try:
            self._validate(msg, v)
        finally:
            dead.current = None
        return v

    def _validate(self, msg: Inbound, out: Verdict) -> None:
        self.counters.messages += 1
        if msg.generation != self._generation:
            # The first message on this broker connection: anything the
            # gateway sent before it may have waited at the broker.
            self._generation = msg.generation
            self._generation_first_ms = msg.received_ms
        try:
            gt = parse_gateway_topic(msg.topic)
        except TopicError as exc:
            levels = [x if is_valid_id(x) else "_" for x in msg.topic.split("/")[2:5]]
            levels += ["_"] * (3 - len(levels))
            out.rejected.append(self.reject(
                topic=msg.topic, reason="bad_topic", detail=str(exc),
                raw=msg.payload, key=(levels[0], levels[1], levels[2])))
            return
        key = (gt.county, gt.farm, gt.gateway)
        gw_meta = None
        if self._index is not None:
            entry = self._index.get(key)
            if entry is None:
                out.rejected.append(self.reject(
                    topic=msg.topic, reason="unknown_gateway",
                    detail="gateway is not in the registry", raw=msg.payload,
                    key=key))
                return
            gw_meta = entry[1]
        elif key not in self._gateways:
            if len(self._gateways) >= self._s.max_open_gateways:
                out.rejected.append(self.reject(
                    topic=msg.topic, reason="open_enrollment_full",
                    detail=f"open enrollment took {len(self._gateways)} gateways "
                    f"([ingest] max_open_gateways); list the county's gateways in a registry",
                    raw=msg.payload, key=key))
                return
            self._log.info("ingest.new_gateway", county=gt.county, farm=gt.farm,
                           gateway=gt.gateway, enrollment="open")
        state = self._gateways.get(key)
        if state is None:
            state = self._gateway_state(key, gw_meta)
        if gt.channel == "status":
            self._statuses.handle(msg, out, key)
            return
        try:
            parsed = parse_telemetry(msg.payload, content_type=msg.content_type)
        except MessageRejected as exc:
            out.rejected.append(self.reject(
                topic=msg.topic, reason=exc.reason, detail=exc.detail,
                raw=msg.payload, key=key))
            return
        env = parsed.envelope
        if env.gateway != gt.gateway:
            out.rejected.append(self.reject(
                topic=msg.topic, reason="gateway_mismatch",
                detail=f"payload gateway {env.gateway!r} is not the topic's "
                f"{gt.gateway!r}", raw=msg.payload, key=key))
            return
        if not msg.retain:
            # A retained message is a replay of an old one, not news about seq.
            self._track_seq(state, env.seq, out, gt.county, gt.farm, gt.gateway, msg)
        for rej in parsed.rejected:
            out.rejected.append(self.reject(
                topic=msg.topic, reason=rej.reason, detail=rej.detail,
                raw=rej.excerpt, index=rej.index, key=key))

        now = msg.received_ms
        synced = env.clock is Clock.SYNCED
        offset = 0 if synced else self._clock_offset(key, env.seq, env.sent, msg)
        max_ts = now + int(self._s.max_future_s * 1000)
        min_ts = self._s.min_ts_ms
        sensors = gw_meta.sensors if gw_meta is not None else None
        listed_only = gw_meta is not None and gw_meta.only_listed_sensors
        known = state.known
        lines = out.lines
        keep = self._keep
        kept: list[NormalizedReading] = []
        for i, r in enumerate(parsed.readings):
            ts = r.ts_ms + offset
            if ts > max_ts:
                out.rejected.append(self.reject(
                    topic=msg.topic, reason="ts_in_future",
                    detail=f"ts {r.ts_ms} is {(ts - now) / 1000:.0f} s ahead of "
                    "the edge's clock", raw=r.sensor, index=i, key=key))
                continue
            if ts < min_ts:
                out.rejected.append(self.reject(
                    topic=msg.topic, reason="ts_implausible",
                    detail=f"ts {r.ts_ms} is before {min_ts} although the clock "
                    "is synced" if synced else
                    f"ts {r.ts_ms} placed on the edge's clock is {ts}, "
                    f"before {min_ts}", raw=r.sensor, index=i, key=key))
                continue
            meta = sensors.get(r.sensor, _EMPTY_META) if sensors is not None else _EMPTY_META
            animal = r.animal or meta.animal
            ident = (r.sensor, animal or "")
            if (listed_only or ident not in known) and not self._admit(
                    out, msg.topic, key, state, ident, listed_only, sensors, i):
                continue
            ck = (r.kind.name, gt.county, gt.farm, gt.gateway, r.sensor,
                  meta.plot or "", meta.crop or "", animal or "")
            cached = self._prefix_cache.get(ck)
            prefix, fld = cached if cached is not None else self._prefix(ck)
            # r.value is a finite float (the contract guarantees it), and a
            # float's repr always reads as a float to InfluxDB ("20.0", "1e+16").
            if r.quality is Quality.OK and synced:
                lines.append(f"{prefix} {fld}={r.value!r} {ts}")
            else:
                fields = f"{fld}={r.value!r}"
                if r.quality is not Quality.OK:
                    fields += f',{fld}_quality="{r.quality.value}"'
                if not synced:
                    fields += f",{fld}_time_estimated=true"
                lines.append(f"{prefix} {fields} {ts}")
            if keep:
                kept.append(r)
        if kept:
            out.accepted = Accepted(gt.county, gt.farm, gt.gateway, now, synced, offset,
                                      kept, gw_meta)
        out.n_readings += len(parsed.readings)
        self.counters.readings += len(parsed.readings)

    def _admit(self, out: Verdict, topic: str, key: tuple[str, str, str], state: _GatewayState,
               ident: tuple[str, str], listed_only: bool,
               sensors: dict[str, SensorMeta] | None, index: int) -> bool:
        """A sensor/animal id this gateway has not used before: known from now
        on while the gateway's budget lasts, else a dead letter."""
        sensor, animal = ident
        if listed_only and (sensors is None or sensor not in sensors):
            # Checked on every reading: ids learnt before the list was closed
            # are no longer known.
            out.rejected.append(self.reject(
                topic=topic, reason="unknown_sensor",
                detail=f"sensor {sensor!r} is not listed for this gateway in the "
                "registry", raw=sensor, index=index, key=key))
            return False
        if ident in state.known:
            return True
        if len(state.known) >= state.limit:
            what = f"sensor {sensor!r}" + (f" animal {animal!r}" if animal else "")
            out.rejected.append(self.reject(
                topic=topic, reason="cardinality_budget",
                detail=f"{what} is new and the gateway already has "
                f"{len(state.known)} ids ([ingest] max_ids_per_gateway = "
                f"{self._s.max_ids_per_gateway})",
                raw=f"{sensor} {animal}".strip(), index=index, key=key))
            return False
        self.state.admit(key, ident, self._now_ms())
        return True

    def _clock_offset(self, key: tuple[str, str, str], seq: int, sent: int,
                      msg: Inbound) -> int:
        """Edge clock minus gateway clock for an unsynced gateway's message:
        the same for the same message whenever it is delivered.

        The offset is learnt from ``received - sent`` and kept in clock
        segments (persisted): a message whose seq and sent fall in a known
        segment gets that segment's offset; a later message extends the
        latest segment while it is consistent with it (delayed by up to a
        minute, or possibly queued at the broker while the edge was away, so
        a backlog keeps its spacing); anything else (the gateway's clock was
        reset, or the offset was too high) starts a new segment."""
        segs = self.state.clock_segments(key)
        for seg in reversed(segs):
            if seg.holds(seq, sent):
                return seg.offset_ms
        est = msg.received_ms - sent
        last = segs[-1] if segs else None
        if last is not None and seq > last.seq_hi and sent >= last.sent_hi:
            behind = est - last.offset_ms  # how late the message is by the current offset
            queued = sent + last.offset_ms < self._generation_first_ms + _BACKLOG_SLACK_MS
            if -_CLOCK_LOWER_MS <= behind <= _CLOCK_KEEP_MS or (behind > 0 and queued):
                last.seq_hi, last.sent_hi = seq, sent
                self.state.save_segment(key, last)
                return last.offset_ms
        seg = ClockSegment(last.n + 1 if last is not None else 0, seq, seq, sent, sent, est)
        self.state.save_segment(key, seg)
        return est

    def _prefix(self, ck: tuple[str, ...]) -> tuple[str, str]:
        """(measurement and tags, field) of a reading's line (storage/schema.py)."""
        kind, county, farm, gateway, sensor, plot, crop, animal = ck
        where = KIND_POINTS[kind]
        # The order the edge has always written them in (InfluxDB sorts them).
        p = series_key(where.measurement, ((Tag.COUNTY, county), (Tag.FARM, farm),
                                           (Tag.GATEWAY, gateway), (Tag.SENSOR, sensor),
                                           (Tag.ANIMAL, animal), (Tag.CROP, crop),
                                           (Tag.PLOT, plot)))
        if len(self._prefix_cache) > 200_000:
            self._prefix_cache.clear()
        self._prefix_cache[ck] = (p, where.field)
        return p, where.field

    def _track_seq(self, state: _GatewayState, seq: int, out: Verdict, county: str,
                   farm: str, gateway: str, msg: Inbound) -> None:
        last = state.last_seq
        state.last_seq = seq if last is None or seq > last or seq + 1000 < last else last
        if last is None or seq == last + 1:
            return
        if seq > last + 1:
            gap = seq - last - 1
            self.counters.seq_gaps += gap
            out.points.append(f"{_gateway_series(county, farm, gateway)} "
                              f"{GatewayField.SEQ_GAP}={gap}i {msg.received_ms}")
        elif seq + 1000 < last:
            self.counters.seq_restarts += 1
            self._log.info("ingest.seq_restart", gateway=gateway, last=last, seq=seq)
            out.points.append(f"{_gateway_series(county, farm, gateway)} "
                              f"{GatewayField.SEQ_RESTART}=1i {msg.received_ms}")
        else:
            self.counters.seq_duplicates += 1


#: Status fields stored as floats, and as integers (the GatewayStatus
#: attributes of the same names).
_FLOAT_STATUS = (GatewayField.UPTIME_S, GatewayField.OUTBOX_OLDEST_AGE_S,
                 GatewayField.CPU_TEMPERATURE, GatewayField.DISK_FREE_MB,
                 GatewayField.HELD_FOR_S)
_INT_STATUS = (GatewayField.OUTBOX_DEPTH, GatewayField.DROPPED, GatewayField.HELD_UNSYNCED,
               GatewayField.REFUSED, GatewayField.PUBLISH_REFUSED)


def _gateway_series(county: str, farm: str, gateway: str) -> str:
    return series_key(Measurement.GATEWAY, ((Tag.COUNTY, county), (Tag.FARM, farm),
                                            (Tag.GATEWAY, gateway)))


class _Statuses:
    """A gateway's status message: its ``gateway`` point, stored at a time
    that is the same whenever the same status is delivered again."""

    def __init__(self, settings: IngestSection, state: IngestState,
                 reject: Callable[..., Rejected]) -> None:
        self._s = settings
        self.state = state
        self._reject = reject
        #: Hand StatusEvent records on (the Validator's keep_readings).
        self.keep = False

    def handle(self, msg: Inbound, out: Verdict, key: tuple[str, str, str]) -> None:
        county, farm, gateway = key
        try:
            st = parse_status(msg.payload)
        except MessageRejected as exc:
            out.rejected.append(self._reject(
                topic=msg.topic, reason=exc.reason, detail=exc.detail,
                raw=msg.payload, key=key))
            return
        if st.gateway != gateway:
            out.rejected.append(self._reject(
                topic=msg.topic, reason="gateway_mismatch",
                detail=f"status gateway {st.gateway!r} is not the topic's "
                f"{gateway!r}", raw=msg.payload, key=key))
            return
        g = GatewayField
        fields: dict[str, str] = {g.ONLINE: "true" if st.online else "false"}
        try:
            for name in _FLOAT_STATUS:
                v: Any = getattr(st, name)
                if v is not None:
                    fields[name] = float_field(v)
        except ValueError as exc:
            out.rejected.append(self._reject(
                topic=msg.topic, reason="bad_status", detail=str(exc),
                raw=msg.payload, key=key))
            return
        for name in _INT_STATUS:
            v = getattr(st, name)
            if v is not None:
                fields[name] = f"{int(v)}i"
        if st.version is not None:
            fields[g.VERSION] = field_str(st.version)
        if st.online:  # sent only while full: stored on every status, so it clears
            fields[g.OUTBOX_FULL] = "true" if st.outbox_full else "false"
        else:  # why: "unknown" for an older gateway's will or a reason not known here
            fields[g.REASON] = field_str(st.reason.value if st.reason else "unknown")
        if st.clock is not None:
            fields[g.CLOCK] = field_str(st.clock.value)
            fields[g.CLOCK_SYNCED] = "true" if st.clock is Clock.SYNCED else "false"
        ts = self._status_ts(key, st, msg)
        out.points.append(f"{_gateway_series(county, farm, gateway)} "
                          f"{','.join(f'{k}={v}' for k, v in fields.items())} {ts}")
        if self.keep:
            out.status = StatusEvent(county, farm, gateway, st, msg.received_ms)

    def _status_ts(self, key: tuple[str, str, str], st: GatewayStatus, msg: Inbound) -> int:
        """A status is stored at its own ``ts`` when the gateway's clock is
        synced, else at the edge's receive time; the same status delivered
        again (retained at reconnect, redelivered after a restart) lands on
        the time it was first stored at."""
        now = msg.received_ms
        digest = hashlib.blake2b(msg.payload, digest_size=16).digest()
        last = self.state.last_status(key)
        if st.ts is not None and st.clock is Clock.SYNCED and \
                self._s.min_ts_ms <= st.ts <= now + int(self._s.max_future_s * 1000):
            if last != (digest, st.ts):
                self.state.save_status(key, digest, st.ts)
            return st.ts
        if last is not None:
            if last[0] == digest:
                return last[1]
            if last[1] >= now:
                # The gateway's previous status is stamped at or after the
                # edge's now (its own clock, a little ahead, or the same
                # millisecond): this one goes after it, on a point of its
                # own, so the latest status stays the latest.
                now = last[1] + 1
        self.state.save_status(key, digest, now)
        return now
