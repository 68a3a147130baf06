"""The edge ingestion service: MQTT → validate → batch → InfluxDB (or the
local spool) → acknowledge → observers (the alert engine).

Built sink-first, stopped source-first. A message is acknowledged to the
broker only when every line it produced is durable: accepted by InfluxDB,
or appended to the spool. On SIGTERM the service stops taking messages,
writes what it holds, acknowledges it, and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from farmedge.contract import excerpt, parse_gateway_topic
from farmedge.disk import is_disk_full
from farmedge.logs import Throttle, get_logger, redact_url
from farmedge.registry import Registry, load_registry
from farmedge.storage.influx import InfluxWriter, WriteKind
from farmedge.storage.lineproto import escape_tag, field_str
from farmedge.storage.spool import Spool
from farmedge.transport.mqtt import Inbound, MqttSource

from .events import Observer
from .ingest import Batch, Ingestor
from .metrics import EdgeMetrics
from .settings import EdgeSettings
from .state import IngestState

__all__ = ["EdgeFatal", "EdgeService", "Health", "build_observers"]


class EdgeFatal(Exception):
    """A task of the service failed outside the handling of one message: the
    service has stopped (what it had not acknowledged stays with the broker)
    and the process should exit non-zero. ``cause`` names the failure; it was
    logged once as ``edge.fatal``."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause



def build_observers(settings: EdgeSettings, registry: Registry | None) -> list[Observer]:
    """The parts that watch ingestion (the alert engine), built from the config.
    Raises ConfigError for a wrong rules file."""
    observers: list[Observer] = []
    if settings.alerts.enabled:
        from farmedge.alerts.build import engine_from_settings

        observers.append(engine_from_settings(
            settings.alerts, registry=registry, data_dir=settings.data_dir,
            mqtt=settings.mqtt, influx=settings.influx, instance=settings.instance))
    return observers


@dataclass(slots=True)
class Health:
    ok: bool
    reasons: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    #: The edge works, but something looks wrong (its clock): /healthz 503
    #: with status "degraded" when there are no ``reasons``.
    degraded: list[str] = field(default_factory=list)


class EdgeService:
    def __init__(self, settings: EdgeSettings, *, registry: Registry | None = None,
                 observers: Sequence[Observer] | None = None,
                 ingestor: Ingestor | None = None) -> None:
        self.settings = settings
        if registry is None and settings.registry is not None:
            registry = load_registry(settings.registry)
        self.registry = registry
        self.observers = list(observers) if observers is not None else build_observers(
            settings, registry)
        self.metrics = EdgeMetrics()
        self.log = get_logger("farmedge.edge", instance=settings.instance)
        self.ingestor = ingestor if ingestor is not None else Ingestor(
            settings.ingest, registry=registry, instance=settings.instance,
            keep_readings=bool(self.observers),
            state=IngestState(settings.data_dir / "ingest.sqlite3"))
        self.writer = InfluxWriter(settings.influx)
        self.spool = Spool(settings.data_dir / "spool",
                           max_bytes=int(settings.spool.max_mb * 1024 * 1024),
                           legacy=settings.data_dir / "spool.sqlite3")
        self.mqtt = MqttSource(settings.mqtt, on_messages=self._on_messages)
        self._inbox: deque[Inbound] = deque()
        self._inbox_bytes = 0
        self._max_pending_bytes = int(settings.ingest.max_pending_mb * 1024 * 1024)
        self._wake = asyncio.Event()
        self._batch = Batch()
        self._ready: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=2)
        self._queued: deque[Batch] = deque()  # what _ready holds, for health
        self._writing: Batch | None = None
        self._stopping = False
        self._influx_down = False
        self._influx_error = ""
        self._auth_alarm = ""
        self._last_write_ok = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        #: Why the service stopped on its own (None: it did not).
        self.fatal: str | None = None
        self._internal_log = Throttle()
        #: Why the spool cannot take a batch now (disk full), or None.
        self._disk_error: str | None = None
        self._disk_since = 0.0
        #: Observers that failed to start (name -> error): not running.
        self._failed_observers: dict[str, str] = {}
        #: When an observer last met a full disk (monotonic), or 0.
        self._observer_disk_full_at = 0.0
        #: The ingest state's write errors seen, and when the last one was.
        self._state_errors = 0
        self._state_error_at = 0.0
        #: (monotonic, readings, of which ts_in_future) per delivered batch
        self._clock_batches: deque[tuple[float, int, int]] = deque(maxlen=4096)
        #: (monotonic, ms a sampled reading is ahead of the edge's clock)
        self._clock_samples: deque[tuple[float, float]] = deque(maxlen=512)
        self._http: Any = None
        self._started = time.monotonic()
        self.http_port: int | None = None
        # totals for the `edge` self-metrics point
        self._written = 0
        self._spooled = 0
        self._latency_ms: deque[float] = deque(maxlen=2048)

    # -- inbound ---------------------------------------------------------
    def _on_messages(self, items: list[Inbound]) -> None:
        self._inbox.extend(items)
        self._inbox_bytes += sum(len(m.payload) for m in items)
        self.metrics.messages.inc(len(items))
        if self._inbox_bytes > self._max_pending_bytes:
            self.mqtt.pause_reading()
        self._wake.set()

    def pending_messages(self) -> int:
        n = len(self._inbox) + len(self._batch.messages)
        if self._writing is not None:
            n += len(self._writing.messages)
        for b in self._queued:
            n += len(b.messages)
        return n

    def _oldest_pending_age(self) -> float:
        candidates: list[float] = []
        if self._writing is not None and self._writing.messages:
            candidates.append(self._writing.messages[0].received_mono)
        for b in self._queued:
            if b.messages:
                candidates.append(b.messages[0].received_mono)
        if self._batch.messages:
            candidates.append(self._batch.messages[0].received_mono)
        if self._inbox:
            candidates.append(self._inbox[0].received_mono)
        return time.monotonic() - min(candidates) if candidates else 0.0

    # -- run -------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        self.log.info("edge.starting", mqtt=redact_url(s.mqtt.url), influx=s.influx.url,
                      api=s.influx.api, data_dir=str(s.data_dir),
                      registry=str(s.registry) if s.registry else "open enrollment",
                      observers=[type(o).__name__ for o in self.observers])
        await asyncio.to_thread(self.spool.open)
        if self.spool.lines:
            self.log.info("spool.found", lines=self.spool.lines, batches=self.spool.batches)
        await self.writer.start()
        if not await self.writer.ensure_database():
            self.log.warning("influx.create_database_failed", database=s.influx.database)
        if s.http.port:
            from .http import start_http

            self._http, self.http_port = await start_http(self, s.http.host, s.http.port)
        self.write_registry_points()
        loop = asyncio.get_running_loop()
        for name, coro in (("process", self._process_loop()), ("writer", self._write_loop()),
                           ("replay", self._replay_loop()),
                           ("housekeeping", self._housekeeping_loop())):
            self._tasks.append(asyncio.create_task(coro, name=name))
        for obs in list(self.observers):
            start = getattr(obs, "start", None)
            if start is None:
                continue
            try:
                await start()
            except Exception as exc:  # ingestion goes on without it, and says so
                self._internal_error("observer", exc)
                self.observers.remove(obs)
                self._failed_observers[type(obs).__name__] = \
                    f"{type(exc).__name__}: {exc}"[:300]
        self.mqtt.start(loop)
        try:
            await self._wait_stop(stop)
        finally:
            await self._shutdown()
        if self.fatal is not None:
            raise EdgeFatal(self.fatal)

    async def _wait_stop(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set, or a task ends on its own: that is fatal (a
        failure while handling one message never ends a task)."""
        stop_task = asyncio.create_task(stop.wait())
        watched: list[asyncio.Task[Any]] = [*self._tasks]
        mqtt_task = getattr(self.mqtt, "_task", None)
        if isinstance(mqtt_task, asyncio.Task):
            watched.append(mqtt_task)
        try:
            done, _ = await asyncio.wait([stop_task, *watched],
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_task.cancel()
        for t in watched:
            if t in done:
                exc = None if t.cancelled() else t.exception()
                name = t.get_name()
                if t is mqtt_task:
                    name = "mqtt"
                self.fatal = (f"task {name} failed: {type(exc).__name__}: {exc}"
                              if exc is not None else f"task {name} ended unexpectedly")
                self.log.critical("edge.fatal", cause=self.fatal,
                                  exc_info=exc if exc is not None else False)
                break

    async def _shutdown(self) -> None:
        if self.fatal is not None:
            await self._shutdown_fatal()
            return
        self.log.info("edge.stopping", pending=self.pending_messages())
        self._stopping = True
        self.mqtt.stop_accepting()
        self._wake.set()
        process, writer, replay, house = self._tasks
        with contextlib.suppress(Exception):
            await asyncio.wait_for(process, 60)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer, 60)
        for t in (replay, house):
            t.cancel()
            with contextlib.suppress(BaseException):
                await t
        await self._close_observers(15)
        await self.mqtt.stop()
        if self._http is not None:
            await self._http.cleanup()
        await self.writer.close()
        self.spool.close()
        self.ingestor.state.close()
        self.log.info("edge.stopped", written=self._written, spooled=self._spooled,
                      spool_lines=self.spool.lines)

    async def _shutdown_fatal(self) -> None:
        """Stop within a few seconds. Nothing durable is at risk: what was
        acknowledged is in InfluxDB or the spool, the rest stays with the
        broker and comes again to the next edge."""
        self._stopping = True
        self.mqtt.stop_accepting()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        deadline = time.monotonic() + 3.0

        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        await self._close_observers(left())
        for step in (self.mqtt.stop, self.writer.close):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(step(), left())
        if self._http is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._http.cleanup(), left())
        with contextlib.suppress(Exception):
            self.spool.close()

    async def _close_observers(self, within_s: float) -> None:
        for obs in self.observers:
            close = getattr(obs, "close", None)
            if close is not None:
                try:
                    await asyncio.wait_for(close(), within_s)
                except Exception as exc:
                    self.log.error("observer.close_failed", observer=type(obs).__name__,
                                   error=repr(exc))

    # -- containment: one message's failure is that message's ------------
    def _internal_error(self, where: str, exc: Exception, *, topic: str = "") -> None:
        """Count and log (throttled, with the traceback) a failure inside the
        edge's own code that was contained to one message or one call."""
        self.metrics.internal_errors.labels(where).inc()
        if where == "observer" and is_disk_full(exc):
            self._observer_disk_full_at = time.monotonic()
        suppressed = self._internal_log.allow((where, type(exc).__name__))
        if suppressed is not None:
            self.log.error("edge.internal_error", where=where,
                           error=f"{type(exc).__name__}: {exc}"[:500],
                           topic=excerpt(topic, 200) if topic else None,
                           suppressed_since_last=suppressed, exc_info=exc)

    def _contain(self, msg: Inbound, batch: Batch, marks: tuple[int, int, int, int, int],
                 exc: Exception) -> None:
        """``handle`` raised for ``msg``: take back what it added to the
        batch, and record the message as a dead letter (reason ``internal``)
        so that it is acknowledged, never redelivered forever."""
        n_lines, n_readings_list, n_statuses, n_messages, n_readings = marks
        del batch.lines[n_lines:]
        del batch.accepted[n_readings_list:]
        del batch.statuses[n_statuses:]
        del batch.messages[n_messages:]
        batch.n_readings = n_readings
        batch.messages.append(msg)
        self._internal_error("ingest", exc, topic=msg.topic)
        key: tuple[str, str, str] | None = None
        with contextlib.suppress(Exception):
            gt = parse_gateway_topic(msg.topic)
            key = (gt.county, gt.farm, gt.gateway)
        try:
            self.ingestor.dead_letter(batch, topic=msg.topic, reason="internal",
                                      detail=f"{type(exc).__name__}: {exc}"[:500],
                                      raw=msg.payload, key=key)
        except Exception as exc2:  # the dead-letter path itself is broken
            self._internal_error("dead_letter", exc2, topic=msg.topic)

    # -- batching --------------------------------------------------------
    async def _ship(self) -> None:
        batch, self._batch = self._batch, Batch()
        # The times of its dead letters are on disk before they reach
        # InfluxDB, so a redelivery after a crash finds them (state.py).
        self.ingestor.state.flush()
        self._queued.append(batch)
        await self._ready.put(batch)

    def _flush_after(self) -> float:
        """How old the current batch may grow: flush_interval_s, or linger_s
        while the writer has nothing to do."""
        s = self.settings.influx
        if s.linger_s and self._writing is None and not self._queued:
            return min(s.linger_s, s.flush_interval_s)
        return s.flush_interval_s

    async def _process_loop(self) -> None:
        s = self.settings.influx
        inbox = self._inbox
        handle = self.ingestor.handle
        while True:
            if not inbox:
                if self._stopping:
                    break
                timeout = None
                if self._batch.lines or self._batch.messages:
                    age = time.monotonic() - self._batch.created_mono
                    timeout = max(0.0, self._flush_after() - age)
                if timeout is None or timeout > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout)
                self._wake.clear()
            n = 0
            while inbox:
                if not self._batch.lines and not self._batch.messages:
                    self._batch.created_mono = time.monotonic()
                msg = inbox.popleft()
                self._inbox_bytes -= len(msg.payload)
                b = self._batch
                marks = (len(b.lines), len(b.accepted), len(b.statuses), len(b.messages),
                         b.n_readings)
                try:
                    handle(msg, b)
                except Exception as exc:
                    self._contain(msg, b, marks, exc)
                n += 1
                if self._inbox_bytes < self._max_pending_bytes // 2:
                    self.mqtt.resume_reading()
                if len(self._batch.lines) >= s.batch_size:
                    await self._ship()
                elif n % 250 == 0:
                    await asyncio.sleep(0)  # let acks, health and timers run
            b = self._batch
            if (b.lines or b.messages) and (
                    time.monotonic() - b.created_mono >= self._flush_after() or self._stopping):
                await self._ship()
        if self._batch.lines or self._batch.messages:
            await self._ship()
        await self._ready.put(None)

    # -- writing ---------------------------------------------------------
    async def _write_loop(self) -> None:
        while True:
            batch = await self._ready.get()
            if batch is None:
                return
            self._queued.popleft()
            self._writing = batch
            try:
                await self._deliver(batch)
            finally:
                self._writing = None
                self._wake.set()  # the batch being filled may go now

    async def _deliver(self, batch: Batch) -> None:
        m = self.metrics
        if batch.lines:
            if self._influx_down:
                leftover = batch.lines
            else:
                deadline = time.monotonic() + self.settings.influx.retry_for_s
                leftover = await self._write_lines(batch.lines, deadline)
            if leftover:
                if not await self._spool_or_hold(leftover):
                    return  # stopping: not durable, so not acknowledged
            else:
                m.readings_written.inc(batch.n_readings)
        acked = self.mqtt.ack(batch.messages)
        m.readings_accepted.inc(batch.n_readings)
        self._watch_clock(batch)
        self._sync_counters()
        if acked < sum(1 for x in batch.messages if x.qos > 0):
            self.log.debug("mqtt.ack_skipped_after_reconnect",
                           skipped=len(batch.messages) - acked)
        for obs in self.observers:
            # An observer's bug must not stop ingestion, nor its other calls.
            if batch.accepted:
                try:
                    obs.on_accepted(batch.accepted)
                except Exception as exc:
                    self._internal_error("observer", exc)
            for ev in batch.statuses:
                try:
                    obs.on_status(ev)
                except Exception as exc:
                    self._internal_error("observer", exc)

    async def _spool_or_hold(self, lines: list[str]) -> bool:
        """Make ``lines`` durable in the spool. While the disk is full (or the
        spool cannot be written), hold them: their messages are not
        acknowledged, so the processing stops behind this batch and the
        broker keeps what comes next; retry the spool, and InfluxDB (which
        needs no disk), until one of them takes the lines. Returns False
        when the service stops meanwhile (the broker redelivers them)."""
        delay = 0.25
        while True:
            try:
                await self._to_spool(lines)
            except OSError as exc:
                self._disk_trouble(exc)
            else:
                self._disk_ok()
                return True
            if self._stopping:
                return False
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)
            if not self._influx_down or await self.writer.ping():
                n = len(lines)
                lines = await self._write_lines(
                    lines, time.monotonic() + self.settings.influx.retry_for_s)
                if len(lines) < n:
                    self.metrics.readings_written.inc(n - len(lines))
                if not lines:
                    self._disk_ok()
                    return True

    def _disk_trouble(self, exc: OSError) -> None:
        free = self.spool.free_bytes()
        full = is_disk_full(exc)
        what = "disk full" if full else "spool cannot be written"
        reason = (f"{what}: {exc.strerror or exc} ({free if free is not None else '?'} bytes "
                  f"free at {self.spool.dir}); not acknowledging messages, the broker "
                  "holds them")
        if self._disk_error is None:
            self.log.error("spool.disk_full" if full else "spool.write_failed",
                           error=f"{type(exc).__name__}: {exc}"[:300], free_bytes=free,
                           path=str(self.spool.dir),
                           pending_messages=self.pending_messages())
            self._disk_since = time.monotonic()
        self._disk_error = reason
        self.metrics.disk_full.set(1)
        if free is not None:
            self.metrics.disk_free.set(free)

    def _disk_ok(self) -> None:
        if self._disk_error is not None:
            self.log.info("spool.disk_available_again",
                          seconds=round(time.monotonic() - self._disk_since, 1),
                          free_bytes=self.spool.free_bytes())
            self._disk_error = None
            self.metrics.disk_full.set(0)

    async def _to_spool(self, lines: list[str]) -> None:
        dropped = await self.spool.append(lines)
        self._spooled += len(lines)
        self.metrics.spooled_lines.inc(len(lines))
        if dropped:
            self.metrics.spool_dropped.inc(dropped)
            self.log.error("spool.full_dropped_oldest", dropped_lines=dropped,
                           total_dropped=self.spool.dropped_lines,
                           max_mb=self.settings.spool.max_mb)
        self._update_spool_gauges()

    def _update_spool_gauges(self) -> None:
        self.metrics.spool_depth.set(self.spool.lines)
        self.metrics.spool_bytes.set(self.spool.bytes)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        s = self.settings.influx
        base = min(s.backoff_max_s, s.backoff_min_s * (2 ** min(attempt, 20)))
        delay = random.uniform(base / 2, base)
        if retry_after is not None:
            delay = max(delay, min(retry_after, s.backoff_max_s * 4))
        return delay

    def _mark_down(self, error: str) -> None:
        if not self._influx_down:
            self.log.error("influx.unavailable_spooling", error=error[:300])
        self._influx_down = True
        self._influx_error = error
        self.metrics.influx_up.set(0)

    def _mark_up(self) -> None:
        if self._influx_down:
            self.log.info("influx.available_again", spool_lines=self.spool.lines)
        self._influx_down = False
        self._influx_error = ""
        self._last_write_ok = time.monotonic()
        self.metrics.influx_up.set(1)

    async def _write_lines(self, lines: list[str], deadline: float) -> list[str]:
        """Write ``lines``; returns the lines that could not be written before
        ``deadline`` (for the spool). Rejected lines go to the dead-letter
        path; 413 splits the batch."""
        m = self.metrics
        body = "\n".join(lines).encode()
        attempt = 0
        while True:
            res = await self.writer.write(body)
            if res.elapsed_s:
                m.write_latency.observe(res.elapsed_s)
                self._latency_ms.append(res.elapsed_s * 1000)
            if res.ok:
                m.batch_size.observe(len(lines))
                self._written += len(lines)
                self._mark_up()
                self._auth_alarm = ""
                return []
            m.write_failures.labels(str(res.status)).inc()
            if res.kind in (WriteKind.TOO_LARGE, WriteKind.REJECTED) and len(lines) > 1:
                half = len(lines) // 2
                left = await self._write_lines(lines[:half], deadline)
                right = await self._write_lines(lines[half:], deadline)
                return left + right
            if res.kind is WriteKind.REJECTED or res.kind is WriteKind.TOO_LARGE:
                self._reject_line(lines[0], res.status, res.error)
                self._mark_up()
                return []
            if res.kind is WriteKind.AUTH:
                alarm = f"InfluxDB answered {res.status}: {res.error[:200]}"
                if self._auth_alarm != alarm:
                    self.log.error("influx.refused", status=res.status, error=res.error,
                                   hint="check [influx] credentials, database or bucket")
                self._auth_alarm = alarm
                self._mark_down(self._auth_alarm)
                return lines
            # transient: retry with capped, jittered backoff until the deadline
            delay = self._backoff(attempt, res.retry_after_s)
            if time.monotonic() + delay > deadline:
                self._mark_down(f"{res.status or 'network'}: {res.error}")
                return lines
            self.log.warning("influx.retry", status=res.status, error=res.error[:200],
                             attempt=attempt + 1, delay_s=round(delay, 2))
            attempt += 1
            await asyncio.sleep(delay)

    def _reject_line(self, line: str, status: int, error: str) -> None:
        """A line InfluxDB refuses: record it in the dead-letter path (in the
        next batch) and move on."""
        measurement = line.split(",", 1)[0].split(" ", 1)[0]
        if measurement == "ingest_errors":
            self.log.error("influx.dead_letter_refused", error=error[:300], line=line[:300])
            return
        self.ingestor.dead_letter(self._batch, topic="", reason="influx_rejected",
                                  detail=f"InfluxDB {status}: {error}"[:500], raw=line)
        self._wake.set()

    # -- spool replay ----------------------------------------------------
    async def _replay_loop(self) -> None:
        s = self.settings
        attempt = 0
        progress_at = 0.0
        started_lines = 0
        started_at = 0.0
        done = 0
        while True:
            if not self.spool.lines:
                if started_lines:
                    self.log.info("spool.replay_done", lines=done,
                                  seconds=round(time.monotonic() - started_at, 1))
                    started_lines = done = 0
                self.spool.changed.clear()
                await self.spool.changed.wait()
                continue
            if self._influx_down:
                await asyncio.sleep(self._backoff(attempt, None))
                attempt += 1
                # After a 401/403/404 try a batch anyway: the credentials or
                # the database may have been fixed in InfluxDB meanwhile.
                if not self._auth_alarm and not await self.writer.ping():
                    continue
            try:
                batch = await self.spool.oldest()
            except OSError as exc:
                self._replay_trouble(exc)
                await asyncio.sleep(1.0)
                continue
            if batch is None:
                await asyncio.sleep(0.5)  # counts out of step: never spin
                continue
            if not started_lines:
                started_lines = self.spool.lines
                started_at = time.monotonic()
                self.log.info("spool.replay_start", lines=started_lines,
                              batches=self.spool.batches)
            leftover = await self._write_lines(batch.lines,
                                               time.monotonic() + s.influx.retry_for_s)
            if leftover:
                continue
            attempt = 0
            try:
                await self.spool.delete(batch.id)
            except OSError as exc:  # written, not forgotten: replayed again, same points
                self._replay_trouble(exc)
                await asyncio.sleep(1.0)
                continue
            done += len(batch.lines)
            self.metrics.readings_written.inc(sum(1 for x in batch.lines if _is_reading(x)))
            self._update_spool_gauges()
            now = time.monotonic()
            if now - progress_at >= 5:
                progress_at = now
                rate = done / max(1e-6, now - started_at)
                total = done + self.spool.lines
                self.log.info("spool.replay_progress", done=done, remaining=self.spool.lines,
                              percent=round(100 * done / max(1, total), 1),
                              lines_per_s=round(rate), eta_s=round(self.spool.lines / rate)
                              if rate else None)

    def _replay_trouble(self, exc: OSError) -> None:
        if self._internal_log.allow(("replay", type(exc).__name__)) is not None:
            self.log.error("spool.replay_io_error", error=f"{type(exc).__name__}: {exc}"[:300],
                           path=str(self.spool.dir))

    # -- housekeeping: health probes and the `edge` self-metrics point ----
    async def _housekeeping_loop(self) -> None:
        tick = 0
        while True:
            await asyncio.sleep(1.0)
            tick += 1
            self.metrics.mqtt_connected.set(1 if self.mqtt.connected else 0)
            self.metrics.pending.set(self.pending_messages())
            self._update_spool_gauges()
            free = self.spool.free_bytes()
            if free is not None:
                self.metrics.disk_free.set(free)
            self._note_state_errors()
            if tick % 5 == 0 and not self._influx_down and \
                    time.monotonic() - self._last_write_ok > 10:
                if await self.writer.ping():
                    self._last_write_ok = time.monotonic()
                    self.metrics.influx_up.set(1)
                else:
                    self._mark_down("InfluxDB does not answer /ping")
            if tick % 10 == 0:
                self._self_point()
            if tick % 3600 == 0:
                self.write_registry_points()  # the fleet view counts the last 24 h

    # -- the edge's own clock ----------------------------------------------
    def _watch_clock(self, batch: Batch) -> None:
        """Per batch, never per reading: how many of its readings were
        rejected as ts_in_future, and how far ahead of the edge's clock a few
        sampled readings of synced gateways are stamped."""
        now_mono = time.monotonic()
        future = self.ingestor.counters.rejected.get("ts_in_future", 0)
        if batch.n_readings:
            self._clock_batches.append((now_mono, batch.n_readings, future))
        lines = batch.lines
        if not lines:
            return
        now_ms = time.time() * 1000
        step = max(1, len(lines) // _CLOCK_SAMPLES)
        samples = self._clock_samples
        for line in lines[::step]:
            if not _is_reading(line) or "_time_estimated" in line:
                continue  # ours, or placed on our clock already
            try:
                ts = int(line[line.rindex(" ") + 1:])
            except ValueError:
                continue
            samples.append((now_mono, ts - now_ms))

    def _note_state_errors(self) -> None:
        errors = int(getattr(self.ingestor.state, "write_errors", 0) or 0)
        if errors > self._state_errors:
            self._state_errors = errors
            self._state_error_at = time.monotonic()

    def _clock_trouble(self, now_mono: float) -> list[str]:
        window = _CLOCK_WINDOW_S
        out: list[str] = []
        total = future = 0
        for t, n, f in reversed(self._clock_batches):
            if now_mono - t > window:
                break
            total += n
            future += f
        if future >= 20 and future * 2 >= total:
            out.append(f"clock: {future} of {total} readings in the last {window:.0f} s were "
                       f"rejected as ts_in_future: check the edge's clock (NTP), or the "
                       "gateways'")
        recent = [a for t, a in self._clock_samples if now_mono - t <= window]
        ahead = sorted(recent[-_CLOCK_SAMPLES:])
        if len(ahead) >= 20:
            low, median = ahead[len(ahead) // 10], ahead[len(ahead) // 2]
            limit = _CLOCK_AHEAD_MS
            if median >= limit and low >= limit / 2:
                out.append(f"clock: the most recent readings are stamped {median / 1000:.0f} s "
                           "ahead of the edge's clock: the edge's clock looks behind "
                           "(check NTP)")
        return out

    def _sync_counters(self) -> None:
        c = self.ingestor.counters
        m = self.metrics
        for reason, n in c.rejected.items():
            m.rejected.labels(reason).inc(n)
        c.rejected.clear()
        m.seq_gaps.inc(c.seq_gaps)
        m.seq_duplicates.inc(c.seq_duplicates)
        c.seq_gaps = c.seq_duplicates = 0

    def write_registry_points(self) -> None:
        """The registry's gateways to the `registry` measurement (for the
        fleet view), through the normal writer; call again when the
        registry changes."""
        if self.registry is None:
            return
        from .registry_points import load_written, registry_lines, save_written

        data_dir = self.settings.data_dir
        lines, written = registry_lines(self.registry, load_written(data_dir),
                                        int(time.time() * 1000))
        self._batch.lines.extend(lines)
        self._wake.set()
        try:
            save_written(data_dir, written)
        except OSError as exc:
            self.log.warning("registry.points_state_not_saved", error=str(exc))

    def _self_point(self) -> None:
        lat = sorted(self._latency_ms)
        p50 = lat[len(lat) // 2] if lat else 0.0
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else 0.0
        self._latency_ms.clear()
        c = self.ingestor.counters
        rejected = sum(int(v) for v in _counter_values(self.metrics.rejected))
        fields = (f"messages={c.messages}i,readings={c.readings}i,lines_written={self._written}i,"
                  f"rejected={rejected}i,spooled={self._spooled}i,spool_lines={self.spool.lines}i,"
                  f"spool_dropped={self.spool.dropped_lines}i,"
                  f"pending={self.pending_messages()}i,write_p50_ms={p50:.3f},"
                  f"write_p99_ms={p99:.3f},influx_up={'false' if self._influx_down else 'true'},"
                  f"mqtt_connected={'true' if self.mqtt.connected else 'false'},"
                  f"disk_full={'true' if self._disk_error else 'false'},"
                  f"version={field_str(_version())}")
        self._batch.lines.append(
            f"edge,instance={escape_tag(self.settings.instance)} {fields} "
            f"{int(time.time() * 1000)}")
        self._wake.set()

    # -- health ----------------------------------------------------------
    def health(self) -> Health:
        reasons: list[str] = []
        s = self.settings
        now = time.monotonic()
        if not self.mqtt.connected:
            since = self.mqtt.disconnected_since or now
            if self.mqtt.refused:
                hint = f": {self.mqtt.refused_hint}" if self.mqtt.refused_hint else ""
                reasons.append(f"MQTT {self.mqtt.refused} for {now - since:.0f} s{hint}")
            elif now - since > 10 or self.mqtt.connects:
                reasons.append(f"MQTT broker unreachable for {now - since:.0f} s")
        if self._auth_alarm:
            reasons.append(self._auth_alarm)
        elif self._influx_down:
            reasons.append(f"InfluxDB unavailable, spooling: {self._influx_error[:200]}")
        if self._disk_error is not None:
            reasons.append(self._disk_error)
        for name, error in self._failed_observers.items():
            reasons.append(f"{name} is not running: it failed to start ({error}); "
                           "ingestion goes on without it")
        if any(getattr(o, "disk_full", False) is True for o in self.observers) or (
                self._observer_disk_full_at and now - self._observer_disk_full_at < 60):
            reasons.append(f"disk full: an observer (the alert engine) cannot write its state "
                           f"({self.spool.free_bytes()} bytes free)")
        age = self._oldest_pending_age()
        if age > s.http.stall_after_s:
            reasons.append(f"ingestion stalled: a message has waited {age:.0f} s")
        details = {
            "mqtt_connected": self.mqtt.connected,
            "mqtt_subscribed": self.mqtt.subscribed,
            "mqtt_connect_attempts": self.mqtt.attempts,
            "influx_up": not self._influx_down,
            "pending_messages": self.pending_messages(),
            "oldest_pending_s": round(age, 1),
            "spool_lines": self.spool.lines,
            "spool_bytes": self.spool.bytes,
            "spool_dropped_lines": self.spool.dropped_lines,
            "disk_full": self._disk_error is not None,
            "disk_free_bytes": self.spool.free_bytes(),
            "messages": self.ingestor.counters.messages,
            "readings": self.ingestor.counters.readings,
            "lines_written": self._written,
            "uptime_s": round(now - self._started, 1),
            "version": _version(),
        }
        degraded = self._clock_trouble(now)
        self._note_state_errors()
        if self.ingestor.state.unavailable is not None:
            degraded.append(f"ingest state unavailable ({self.ingestor.state.unavailable}): "
                            "the edge runs from memory, a restart forgets id budgets, "
                            "unsynced clock offsets and status times")
        if self._state_error_at and now - self._state_error_at < 15:
            degraded.append(f"ingest state not saved ({self._state_errors} write errors, "
                            f"{self.spool.free_bytes()} bytes free): the edge goes on from "
                            "memory, a restart forgets what it learnt meanwhile")
        return Health(ok=not reasons and not degraded, reasons=reasons, details=details,
                      degraded=degraded)


def _counter_values(counter: Any) -> list[float]:
    out: list[float] = []
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                out.append(sample.value)
    return out


_NOT_READINGS = ("ingest_errors,", "edge,", "gateway,", "registry,")
#: Clock check: readings sampled per batch (the most recent as many are
#: judged), the window, and how far
#: ahead of the edge's clock recent readings must be to say it looks behind.
_CLOCK_SAMPLES = 32
_CLOCK_WINDOW_S = 60.0
_CLOCK_AHEAD_MS = 30_000


def _is_reading(line: str) -> bool:
    return not line.startswith(_NOT_READINGS)


def _version() -> str:
    from farmedge import __version__

    return __version__
