"""From one MQTT message to InfluxDB lines: validate against the contract,
check topic, payload and registry against each other, map readings to
points, and record everything rejected in the dead-letter measurement
``ingest_errors`` with its reason, topic and a bounded excerpt.

Pure CPU work, no I/O: the service feeds it messages and takes the lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from farmedge.contract import (
    Clock,
    MessageRejected,
    Quality,
    TopicError,
    excerpt,
    is_valid_id,
    parse_gateway_topic,
    parse_status,
    parse_telemetry,
)
from farmedge.logs import get_logger
from farmedge.registry import Registry, SensorMeta

from .events import AcceptedReading, StatusEvent
from .lineproto import escape_tag, field_str, float_field
from .mqtt import Inbound
from .settings import IngestSection

__all__ = ["Batch", "Ingestor"]

_EMPTY_META = SensorMeta()


@dataclass(slots=True)
class Batch:
    """Lines waiting to be written, and the messages they acknowledge."""

    lines: list[str] = field(default_factory=list)
    messages: list[Inbound] = field(default_factory=list)
    readings: list[AcceptedReading] = field(default_factory=list)
    statuses: list[StatusEvent] = field(default_factory=list)
    n_readings: int = 0
    created_mono: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class _GatewayState:
    last_seq: int | None = None
    clock_offset_ms: int | None = None
    last_status_ts: int = 0


@dataclass(slots=True)
class IngestCounters:
    messages: int = 0
    readings: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    seq_gaps: int = 0
    seq_duplicates: int = 0


class _Throttle:
    """At most one log line per key per ``every`` seconds; counts the rest."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def allow(self, key: tuple[str, str]) -> int | None:
        now = time.monotonic()
        last, suppressed = self._last.get(key, (0.0, 0))
        if now - last >= self.every:
            self._last[key] = (now, 0)
            if len(self._last) > 10_000:
                self._last.clear()
            return suppressed
        self._last[key] = (last, suppressed + 1)
        return None


class Ingestor:
    def __init__(self, settings: IngestSection, *, registry: Registry | None = None,
                 instance: str = "edge-1", keep_readings: bool = False,
                 now_ms: Callable[[], int] | None = None) -> None:
        self._s = settings
        self._registry = registry
        self._index = registry.index() if registry is not None else None
        self._instance = instance
        self.keep_readings = keep_readings
        self._now_ms = now_ms or (lambda: int(time.time() * 1000))
        self._gateways: dict[tuple[str, str, str], _GatewayState] = {}
        self._prefix_cache: dict[tuple[str, ...], str] = {}
        self._last_error_ts = 0
        self._log = get_logger("farmedge.edge.ingest")
        self._throttle = _Throttle()
        self.counters = IngestCounters()

    # -- dead letters ------------------------------------------------------
    def _error_ts(self) -> int:
        ts = max(self._now_ms(), self._last_error_ts + 1)
        self._last_error_ts = ts
        return ts

    def dead_letter(self, batch: Batch, *, topic: str, reason: str, detail: str,
                    raw: object, key: tuple[str, str, str] | None = None,
                    index: int | None = None) -> None:
        county, farm, gateway = key if key is not None else (None, None, None)
        c = self.counters
        c.rejected[reason] = c.rejected.get(reason, 0) + 1
        tags = (f",county={escape_tag(county or '_')},farm={escape_tag(farm or '_')}"
                f",gateway={escape_tag(gateway or '_')},reason={escape_tag(reason)}"
                f",edge={escape_tag(self._instance)}")
        fields = (f"topic={field_str(excerpt(topic, 300))},detail={field_str(detail[:500])},"
                  f"excerpt={field_str(excerpt(raw))},count=1i")
        if index is not None:
            fields += f",reading_index={index}i"
        batch.lines.append(f"ingest_errors{tags} {fields} {self._error_ts()}")
        suppressed = self._throttle.allow((reason, gateway or topic[:100]))
        if suppressed is not None:
            self._log.warning("ingest.rejected", reason=reason, detail=detail[:300],
                              topic=excerpt(topic, 200), gateway=gateway, index=index,
                              suppressed_since_last=suppressed)

    # -- messages ----------------------------------------------------------
    def handle(self, msg: Inbound, batch: Batch) -> None:
        self.counters.messages += 1
        batch.messages.append(msg)
        try:
            gt = parse_gateway_topic(msg.topic)
        except TopicError as exc:
            levels = [x if is_valid_id(x) else "_" for x in msg.topic.split("/")[2:5]]
            levels += ["_"] * (3 - len(levels))
            self.dead_letter(batch, topic=msg.topic, reason="bad_topic", detail=str(exc),
                             raw=msg.payload, key=(levels[0], levels[1], levels[2]))
            return
        key = (gt.county, gt.farm, gt.gateway)
        gw_meta = None
        if self._index is not None:
            entry = self._index.get(key)
            if entry is None:
                self.dead_letter(batch, topic=msg.topic, reason="unknown_gateway",
                                 detail="gateway is not in the registry", raw=msg.payload,
                                 key=key)
                return
            gw_meta = entry[1]
        elif key not in self._gateways:
            self._log.info("ingest.new_gateway", county=gt.county, farm=gt.farm,
                           gateway=gt.gateway, enrollment="open")
        state = self._gateways.get(key)
        if state is None:
            state = self._gateways[key] = _GatewayState()
        if gt.channel == "status":
            self._handle_status(msg, batch, key, state)
            return
        try:
            parsed = parse_telemetry(msg.payload, content_type=msg.content_type)
        except MessageRejected as exc:
            self.dead_letter(batch, topic=msg.topic, reason=exc.reason, detail=exc.detail,
                             raw=msg.payload, key=key)
            return
        env = parsed.envelope
        if env.gateway != gt.gateway:
            self.dead_letter(batch, topic=msg.topic, reason="gateway_mismatch",
                             detail=f"payload gateway {env.gateway!r} is not the topic's "
                                    f"{gt.gateway!r}", raw=msg.payload, key=key)
            return
        self._track_seq(state, env.seq, batch, gt.county, gt.farm, gt.gateway, msg)
        for rej in parsed.rejected:
            self.dead_letter(batch, topic=msg.topic, reason=rej.reason, detail=rej.detail,
                             raw=rej.excerpt, index=rej.index, key=key)

        now = msg.received_ms
        synced = env.clock is Clock.SYNCED
        offset = 0
        if not synced:
            # The gateway's clock is wrong and it knows it: place its readings
            # on the edge's clock, by the offset between its "sent" and our
            # receive time. The offset is kept per gateway while it stays
            # within 60 s, so a redelivered message lands on the same time.
            est = now - env.sent
            if state.clock_offset_ms is None or abs(est - state.clock_offset_ms) > 60_000:
                state.clock_offset_ms = est
            offset = state.clock_offset_ms
        max_ts = now + int(self._s.max_future_s * 1000)
        sensors = gw_meta.sensors if gw_meta is not None else None
        lines = batch.lines
        keep = self.keep_readings
        for i, r in enumerate(parsed.readings):
            ts = r.ts_ms + offset
            if ts > max_ts:
                self.dead_letter(batch, topic=msg.topic, reason="ts_in_future",
                                 detail=f"ts {r.ts_ms} is {(ts - now) / 1000:.0f} s ahead of "
                                        "the edge's clock", raw=r.sensor, index=i, key=key)
                continue
            if synced and ts < self._s.min_ts_ms:
                self.dead_letter(batch, topic=msg.topic, reason="ts_implausible",
                                 detail=f"ts {r.ts_ms} is before {self._s.min_ts_ms} although "
                                        "the clock is synced", raw=r.sensor, index=i, key=key)
                continue
            meta = sensors.get(r.sensor, _EMPTY_META) if sensors is not None else _EMPTY_META
            animal = r.animal or meta.animal
            ck = (r.kind.measurement, gt.county, gt.farm, gt.gateway, r.sensor,
                  meta.plot or "", meta.crop or "", animal or "")
            prefix = self._prefix_cache.get(ck)
            if prefix is None:
                prefix = self._prefix(ck)
            fld = r.kind.field
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
                tags: dict[str, str] = {}
                if meta.plot:
                    tags["plot"] = meta.plot
                if meta.crop:
                    tags["crop"] = meta.crop
                if animal:
                    tags["animal"] = animal
                batch.readings.append(AcceptedReading(
                    gt.county, gt.farm, gt.gateway, r.sensor, r.kind.name, ts, r.value,
                    r.kind.unit, r.quality.value, tags, synced))
        batch.n_readings += len(parsed.readings)
        self.counters.readings += len(parsed.readings)

    def _prefix(self, ck: tuple[str, ...]) -> str:
        measurement, county, farm, gateway, sensor, plot, crop, animal = ck
        p = (f"{measurement},county={escape_tag(county)},farm={escape_tag(farm)}"
             f",gateway={escape_tag(gateway)},sensor={escape_tag(sensor)}")
        # Tags in key order (InfluxDB sorts them anyway; sorted is cheaper).
        extra = [("animal", animal), ("crop", crop), ("plot", plot)]
        p += "".join(f",{k}={escape_tag(v)}" for k, v in extra if v)
        if len(self._prefix_cache) > 200_000:
            self._prefix_cache.clear()
        self._prefix_cache[ck] = p
        return p

    def _track_seq(self, state: _GatewayState, seq: int, batch: Batch, county: str,
                   farm: str, gateway: str, msg: Inbound) -> None:
        last = state.last_seq
        state.last_seq = seq if last is None or seq > last or seq + 1000 < last else last
        if last is None or seq == last + 1:
            return
        tags = f"gateway,county={escape_tag(county)},farm={escape_tag(farm)},gateway=" \
               f"{escape_tag(gateway)}"
        if seq > last + 1:
            gap = seq - last - 1
            self.counters.seq_gaps += gap
            batch.lines.append(f"{tags} seq_gap={gap}i {msg.received_ms}")
        elif seq + 1000 < last:
            self._log.info("ingest.seq_restart", gateway=gateway, last=last, seq=seq)
        else:
            self.counters.seq_duplicates += 1

    def _handle_status(self, msg: Inbound, batch: Batch, key: tuple[str, str, str],
                       state: _GatewayState) -> None:
        county, farm, gateway = key
        try:
            st = parse_status(msg.payload)
        except MessageRejected as exc:
            self.dead_letter(batch, topic=msg.topic, reason=exc.reason, detail=exc.detail,
                             raw=msg.payload, key=key)
            return
        if st.gateway != gateway:
            self.dead_letter(batch, topic=msg.topic, reason="gateway_mismatch",
                             detail=f"status gateway {st.gateway!r} is not the topic's "
                                    f"{gateway!r}", raw=msg.payload, key=key)
            return
        fields: dict[str, str] = {"online": "true" if st.online else "false"}
        for name in ("uptime_s", "outbox_oldest_age_s", "cpu_temperature", "disk_free_mb"):
            v: Any = getattr(st, name)
            if v is not None:
                fields[name] = float_field(v)
        for name in ("outbox_depth", "dropped"):
            v = getattr(st, name)
            if v is not None:
                fields[name] = f"{int(v)}i"
        if st.version is not None:
            fields["version"] = field_str(st.version)
        if st.clock is not None:
            fields["clock"] = field_str(st.clock.value)
            fields["clock_synced"] = "true" if st.clock is Clock.SYNCED else "false"
        tags = (f"gateway,county={escape_tag(county)},farm={escape_tag(farm)}"
                f",gateway={escape_tag(gateway)}")
        # Stored at the edge's receive time (the gateway's clock may be wrong),
        # one point per status message even when two arrive in the same ms.
        ts = max(msg.received_ms, state.last_status_ts + 1)
        state.last_status_ts = ts
        batch.lines.append(f"{tags} {','.join(f'{k}={v}' for k, v in fields.items())} {ts}")
        if self.keep_readings:
            batch.statuses.append(StatusEvent(county, farm, gateway, st, msg.received_ms))

