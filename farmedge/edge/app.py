"""The edge service put together: source (MQTT) → validate → batcher → sink
(InfluxDB, or the spool) → acknowledge → stages (the alert engine).

The one place the edge is composed, and its lifespan: the sink comes up
first (spool opened, InfluxDB reached), then the batcher, the delivery loop,
the spool's replay and the housekeeping, then the stages, and the source
last; stopping goes the other way, source first. A message is acknowledged
to the broker only when every line it produced is durable (in InfluxDB or
the spool). On SIGTERM the service stops taking messages, writes what it
holds, acknowledges it, closes the stages (their last records are written
too), and returns.

The only module of the edge that imports :mod:`farmedge.alerts` (its public
names) besides settings.py: the alert engine is built here, with its
records going into the batcher as points, so they take the same writer and
spool as readings.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from farmedge.logs import get_logger, redact_url
from farmedge.records import CenterEvent, Stage, StatusEvent
from farmedge.registry import Registry, load_registry
from farmedge.storage.influx import InfluxWriter
from farmedge.storage.lineproto import field_str, series_key
from farmedge.storage.schema import EdgeField, Measurement, Tag
from farmedge.storage.spool import Spool

from .batcher import Batch, Batcher
from .errors import EdgeError, EdgeFatal
from .health import CenterWatch, ClockWatch, Health, HealthCheck
from .metrics import EdgeMetrics, Incidents, counter_total
from .settings import EdgeSettings
from .sink import Sink, Writer
from .source import EdgeSource, Source
from .state import IngestState
from .validate import Validator

if TYPE_CHECKING:
    from .fence import SourceFence
    from .nats_source import NatsSource

__all__ = ["EdgeError", "EdgeFatal", "EdgeService", "Health", "RecordSink", "build_observers"]

#: Where the stages' own records (alert events as lines) go: the batcher.
RecordSink = Batcher
StagesFactory = Callable[[Batcher], Sequence[Stage]]


def build_observers(settings: EdgeSettings, registry: Registry | None,
                    records: Batcher | None = None,
                    nats: NatsSource | None = None) -> list[Stage]:
    """The stages after the edge (the alert engine), built from the config;
    their records go to ``records`` (the edge's batcher: the same writer and
    spool as readings; without it, to InfluxDB by a client of the engine's
    own). The alerts topic goes through the broker the edge reads: the
    [mqtt] broker, or, with [source] kind = "nats", the cluster over
    ``nats``'s connection (never an MQTT client of [mqtt] then: the cluster's
    MQTT listeners take MQTT 3.1.1 only, and not from the edge's user).
    Raises ConfigError for a wrong rules file."""
    observers: list[Stage] = []
    if settings.alerts.enabled:
        from farmedge.alerts import engine_from_settings

        src = nats
        observers.append(engine_from_settings(
            settings.alerts, registry=registry, data_dir=settings.data_dir,
            mqtt=None if settings.nats else settings.mqtt, records=records,
            nats=(lambda: src.nc) if src is not None else None,
            influx=settings.influx if records is None else None, instance=settings.instance))
    return observers


class Stages:
    """The stages after the batch is durable, each contained: one that
    raises is counted and logged, call by call; one that fails to start is
    left out and /healthz says so."""

    def __init__(self, stages: Sequence[Stage], incidents: Incidents) -> None:
        self.running: list[Stage] = list(stages)
        self._incidents = incidents
        #: Stages that failed to start (name -> error): not running.
        self.failed: dict[str, str] = {}

    async def start(self) -> None:
        for st in list(self.running):
            start = getattr(st, "start", None)
            if start is None:
                continue
            try:
                await start()
            except Exception as exc:  # ingestion goes on without it, and says so
                self._incidents("observer", exc)
                self.running.remove(st)
                self.failed[type(st).__name__] = f"{type(exc).__name__}: {exc}"[:300]

    def deliver(self, batch: Batch) -> None:
        for st in self.running:
            # A stage's bug must not stop ingestion, nor its other calls.
            if batch.accepted:
                try:
                    st.on_accepted(batch.accepted)
                except Exception as exc:
                    self._incidents("observer", exc)
            for ev in batch.statuses:
                try:
                    st.on_status(ev)
                except Exception as exc:
                    self._incidents("observer", exc)

    def center(self, events: Sequence[CenterEvent]) -> None:
        """The center's own health changed: to the stages that want it."""
        for ev in events:
            for st in self.running:
                on_center = getattr(st, "on_center", None)
                if on_center is None:
                    continue
                try:
                    on_center(ev)
                except Exception as exc:
                    self._incidents("observer", exc)

    def county_status(self, event: StatusEvent) -> None:
        """Cluster mode: a status of a gateway in another edge's partition,
        to the stages that see the whole county (the alert engine's
        county-wide rules)."""
        for st in self.running:
            on_county = getattr(st, "on_county_status", None)
            if on_county is None:
                continue
            try:
                on_county(event)
            except Exception as exc:
                self._incidents("observer", exc)

    async def partition(self, name: str, partition: int, within_s: float, log: Any) -> None:
        """Cluster mode: tell the stages (the alert engine) of a partition
        gained (``partition_gained``, before its reader starts) or lost
        (``partition_lost``, after it stopped); farmedge/alerts/cluster.py.
        Bounded: the partition's reader waits for ``partition_gained``, and a
        hung stage must not stop ingestion (the lease renewal never waits for
        it: farmedge/cluster/source.py runs the hooks as tasks)."""
        for st in self.running:
            hook = getattr(st, name, None)
            if hook is None:
                continue
            try:
                await asyncio.wait_for(hook(partition), within_s)
            except Exception as exc:
                self._incidents("observer", exc)
                log.error("edge.partition_hook_failed", hook=name, partition=partition,
                          observer=type(st).__name__, error=repr(exc)[:300])

    async def close(self, within_s: float, log: Any) -> None:
        for st in self.running:
            close = getattr(st, "close", None)
            if close is not None:
                try:
                    await asyncio.wait_for(close(), within_s)
                except Exception as exc:
                    log.error("observer.close_failed", observer=type(st).__name__,
                              error=repr(exc))

    def trouble(self, free_bytes: int | None) -> list[str]:
        out = [f"{name} is not running: it failed to start ({error}); "
               "ingestion goes on without it" for name, error in self.failed.items()]
        full_at = self._incidents.stage_disk_full_at
        if any(getattr(o, "disk_full", False) is True for o in self.running) or (
                full_at and time.monotonic() - full_at < 60):
            out.append(f"disk full: an observer (the alert engine) cannot write its state "
                       f"({free_bytes} bytes free)")
        for o in self.running:
            err = getattr(o, "state_error", None)
            if isinstance(err, str):
                out.append(f"{type(o).__name__} cannot write its state ({err}); it goes on "
                           "with it in memory")
        return out


def _nats_source(s: EdgeSettings, metrics: EdgeMetrics, max_pending: int,
                 stages: Callable[[], Stages], log: Any
                 ) -> tuple[NatsSource | None, SourceFence | None]:
    """The NATS source ([source] kind = "nats"; None for MQTT), telling the
    stages of the partitions it gains and loses, and the alert engine's fence."""
    if not s.nats:
        return None, None
    from .fence import SourceFence
    from .nats_source import NatsSource

    within = max(10.0, s.source.ack_wait_s)
    src = NatsSource(s.source, s.source_instance, max_pending_bytes=max_pending,
                     metrics=metrics, hooks=(
                         lambda p: stages().partition("partition_gained", p, within, log),
                         lambda p: stages().partition("partition_lost", p, within, log)),
                     county_status=lambda ev: stages().county_status(ev))
    return src, SourceFence(src)


def _attach_fence(stages: Stages, nats: NatsSource, fence: SourceFence,
                  s: EdgeSettings) -> None:
    """Cluster mode for the stages that have it (the alert engine): the fence,
    and the partitions' state in the cluster's key-value store."""
    from farmedge.cluster.alertstate import KvPartitionStore

    for st in stages.running:
        attach = getattr(st, "attach_fence", None)
        if attach is not None:
            attach(fence, store=KvPartitionStore(
                lambda: nats.nc.jetstream() if nats.nc is not None else None,
                s.source.alert_bucket, replicas=s.source.replicas))


class EdgeService:
    """Build, then ``await run(stop)``. ``observers``: the stages (a list, or
    a function of the batcher for stages whose records the edge writes);
    None builds them from the settings. ``validator`` and ``writer`` replace
    the real ones (tests)."""

    def __init__(self, settings: EdgeSettings, *, registry: Registry | None = None,
                 observers: Sequence[Stage] | StagesFactory | None = None,
                 validator: Validator | None = None, writer: Writer | None = None) -> None:
        self.settings = s = settings
        if registry is None and s.registry is not None:
            registry = load_registry(s.registry)
        self.registry = registry
        self.metrics = EdgeMetrics()
        self.log = get_logger("farmedge.edge", instance=s.instance)
        self.incidents = Incidents(self.metrics, self.log)
        max_pending = int(s.ingest.max_pending_mb * 1024 * 1024)
        self.source: EdgeSource
        # nats-py (the nats extra) is imported only for [source] kind = "nats".
        self.nats, self.fence = _nats_source(s, self.metrics, max_pending,
                                             lambda: self.stages, self.log)
        self.source = self.nats or Source(s.mqtt, max_pending_bytes=max_pending,
                                          metrics=self.metrics)
        spool = Spool(s.data_dir / "spool", max_bytes=int(s.spool.max_mb * 1024 * 1024),
                      legacy=s.data_dir / "spool.sqlite3")
        self.sink = Sink(s.influx, writer=writer or InfluxWriter(s.influx), spool=spool,
                         metrics=self.metrics, spool_max_mb=s.spool.max_mb,
                         hold=s.nats and s.source.ack_when == "influx")
        # Stages come before the validator (which keeps records only for
        # stages) but take the batcher: it is built on a validator that is
        # told afterwards.
        self.validator = validator if validator is not None else Validator(
            s.ingest, registry=registry, instance=s.instance,
            state=IngestState(s.data_dir / "ingest.sqlite3"))
        self.batcher = Batcher(s.influx, source=self.source, validator=self.validator,
                               on_internal=self.incidents)
        if observers is None:
            stages: Sequence[Stage] = build_observers(s, registry, self.batcher, self.nats)
        elif callable(observers):
            stages = observers(self.batcher)
        else:
            stages = observers
        self.stages = Stages(stages, self.incidents)
        if self.fence is not None and self.nats is not None:
            _attach_fence(self.stages, self.nats, self.fence, s)
        if validator is None:
            self.validator.keep_readings = bool(self.stages.running)
        self.clock = ClockWatch()
        self.center = CenterWatch(s.spool.alert_share, broker=s.source.kind)
        self.health: Callable[[], Health] = HealthCheck(
            s.http, source=self.source, sink=self.sink, batcher=self.batcher,
            validator=self.validator, clock=self.clock,
            stage_trouble=lambda: self.stages.trouble(self.sink.spool.free_bytes()),
            version=_version())
        self._tasks: list[asyncio.Task[None]] = []
        self._http: Any = None
        self.http_port: int | None = None
        #: Why the service stopped on its own (None: it did not).
        self.fatal: str | None = None

    # names the tests and tools use
    @property
    def mqtt(self) -> Any:
        return getattr(self.source, "mqtt", None)

    @property
    def spool(self) -> Spool:
        return self.sink.spool

    @property
    def observers(self) -> list[Stage]:
        return self.stages.running

    def pending_messages(self) -> int:
        return self.batcher.pending_messages()

    # -- lifespan --------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        self.log.info("edge.starting", mqtt=redact_url(s.mqtt.url), source=s.source.kind,
                      nats=[redact_url(u) for u in s.source.nats_urls] if s.nats else None,
                      influx=s.influx.url,
                      api=s.influx.api, data_dir=str(s.data_dir),
                      registry=str(s.registry) if s.registry else "open enrollment",
                      observers=[type(o).__name__ for o in self.stages.running])
        await self.sink.start()
        if s.http.port:
            from .http import start_http

            try:
                self._http, self.http_port = await start_http(self, s.http.host, s.http.port)
            except OSError as exc:
                await self.sink.close()
                raise EdgeError(f"[http] cannot listen on {s.http.host}:{s.http.port}: "
                                f"{exc.strerror or exc}") from exc
        self.write_registry_points()
        for name, coro in (("process", self.batcher.run()), ("writer", self._deliver_loop()),
                           ("replay", self.sink.replay(self.batcher.add_refused)),
                           ("housekeeping", self._housekeeping_loop())):
            self._tasks.append(asyncio.create_task(coro, name=name))
        await self.stages.start()
        self.stages.center(self.center.started(int(time.time() * 1000), _version()))
        self.source.start(asyncio.get_running_loop())
        try:
            await self._wait_stop(stop)
        finally:
            await (self._shutdown_fatal() if self.fatal is not None else self._shutdown())
        if self.fatal is not None:
            raise EdgeFatal(self.fatal)

    async def _wait_stop(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set, or a task ends on its own: that is fatal (a
        failure while handling one message never ends a task)."""
        stop_task = asyncio.create_task(stop.wait())
        source_task = self.source.task
        s_name = "nats" if self.settings.nats else "mqtt"
        watched: list[asyncio.Task[Any]] = [*self._tasks]
        if source_task is not None:
            watched.append(source_task)
        try:
            done, _ = await asyncio.wait([stop_task, *watched],
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_task.cancel()
        for t in watched:
            if t in done:
                exc = None if t.cancelled() else t.exception()
                name = s_name if t is source_task else t.get_name()
                self.fatal = (f"task {name} failed: {type(exc).__name__}: {exc}"
                              if exc is not None else f"task {name} ended unexpectedly")
                self.log.critical("edge.fatal", cause=self.fatal,
                                  exc_info=exc if exc is not None else False)
                break

    async def _shutdown(self) -> None:
        self.log.info("edge.stopping", pending=self.pending_messages())
        self.source.stop_accepting()
        self.sink.stopping = True
        self.batcher.stop_messages()
        process, writer, replay, house = self._tasks
        await self.batcher.drain(60)
        if self.nats is not None:
            # The partitions given back (the stages told, each one's state
            # persisted) while the stages still run; the acknowledgements of
            # what was drained go out first.
            await self.source.stop()
        await self.stages.close(15, self.log)
        self.batcher.close()
        for t in (process, writer):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t, 60)
        for t in (replay, house):
            t.cancel()
            with contextlib.suppress(BaseException):
                await t
        await self.source.stop()
        if self._http is not None:
            await self._http.cleanup()
        await self.sink.close()
        self.validator.state.close()
        self.log.info("edge.stopped", written=self.sink.written, spooled=self.sink.spooled,
                      spool_lines=self.sink.spool.lines)

    async def _shutdown_fatal(self) -> None:
        """Stop within a few seconds. Nothing durable is at risk: what was
        acknowledged is in InfluxDB or the spool, the rest stays with the
        broker and comes again to the next edge."""
        self.sink.stopping = True
        self.source.stop_accepting()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        deadline = time.monotonic() + 3.0

        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        await self.stages.close(left(), self.log)
        for step in (self.source.stop, self.sink.writer.close):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(step(), left())
        if self._http is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._http.cleanup(), left())
        with contextlib.suppress(Exception):
            self.sink.spool.close()

    # -- delivery: durable, then acknowledged, then the stages -------------
    async def _deliver_loop(self) -> None:
        while True:
            batch = await self.batcher.next()
            if batch is None:
                return
            try:
                await self._deliver(batch)
            finally:
                self.batcher.delivered()

    async def _deliver(self, batch: Batch) -> None:
        done = await self.sink.deliver(batch.lines(), len(batch.readings), batch.n_readings)
        if done.refused:
            self.batcher.add_refused(done.refused)
        if not done.durable:
            return  # stopping: not durable, so not acknowledged
        acked = self.source.ack(batch.messages)
        self.metrics.readings_accepted.inc(batch.n_readings)
        self.clock.note(batch.readings, batch.n_readings,
                        self.validator.counters.rejected.get("ts_in_future", 0))
        self._sync_counters()
        if acked < sum(1 for x in batch.messages if x.qos > 0):
            self.log.debug("mqtt.ack_skipped_after_reconnect",
                           skipped=len(batch.messages) - acked)
        self.stages.deliver(batch)

    def _sync_counters(self) -> None:
        c = self.validator.counters
        m = self.metrics
        for reason, n in c.rejected.items():
            m.rejected.labels(reason).inc(n)
        c.rejected.clear()
        m.seq_gaps.inc(c.seq_gaps)
        m.seq_duplicates.inc(c.seq_duplicates)
        m.seq_restarts.inc(c.seq_restarts)
        c.seq_gaps = c.seq_duplicates = c.seq_restarts = 0

    # -- housekeeping: probes, gauges, the `edge` and `gateway` points ------
    async def _housekeeping_loop(self) -> None:
        tick = 0
        m = self.metrics
        while True:
            await asyncio.sleep(1.0)
            tick += 1
            if self.nats is not None:
                self.nats.update_gauges()
            else:
                m.mqtt_connected.set(1 if self.source.connected else 0)
            self.stages.center(self.center.poll(
                connected=self.source.connected, influx_up=not self.sink.influx_down,
                replaying=self.sink.spool.lines > 0 and not self.sink.influx_down,
                at_ms=int(time.time() * 1000), detail=self.sink.influx_error[:200],
                disk_full=self.sink.disk_error is not None, spool=(
                    self.sink.spool.bytes, self.sink.spool.max_bytes,
                    self.sink.spool.free_bytes())))
            m.pending.set(self.pending_messages())
            self.sink.update_gauges()
            free = self.sink.spool.free_bytes()
            if free is not None:
                m.disk_free.set(free)
            note = getattr(self.health, "note_state_errors", None)
            if note is not None:
                note()
            if tick % 5 == 0:
                await self.sink.probe()
            if tick % 10 == 0:
                self.batcher.add_points([self._self_point()])
            if tick % 3600 == 0:
                self.write_registry_points()  # the fleet view counts the last 24 h

    def write_registry_points(self) -> None:
        """The registry's gateways to the `gateway` measurement (for the
        fleet view), through the normal writer; call again when the
        registry changes."""
        if self.registry is None:
            return
        from .registry_points import load_written, registry_lines, save_written

        data_dir = self.settings.data_dir
        lines, written = registry_lines(self.registry, load_written(data_dir),
                                        int(time.time() * 1000))
        self.batcher.add_points(lines)
        try:
            save_written(data_dir, written)
        except OSError as exc:
            self.log.warning("registry.points_state_not_saved", error=str(exc))

    def _self_point(self) -> str:
        sink = self.sink
        lat = sorted(sink.latency_ms)
        p50 = lat[len(lat) // 2] if lat else 0.0
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else 0.0
        sink.latency_ms.clear()
        c = self.validator.counters
        rejected = int(counter_total(self.metrics.rejected))
        e = EdgeField
        fields = (f"{e.MESSAGES}={c.messages}i,{e.READINGS}={c.readings}i,"
                  f"{e.LINES_WRITTEN}={sink.written}i,{e.REJECTED}={rejected}i,"
                  f"{e.SPOOLED}={sink.spooled}i,{e.SPOOL_LINES}={sink.spool.lines}i,"
                  f"{e.SPOOL_DROPPED}={sink.spool.dropped_lines}i,"
                  f"{e.PENDING}={self.pending_messages()}i,{e.WRITE_P50_MS}={p50:.3f},"
                  f"{e.WRITE_P99_MS}={p99:.3f},"
                  f"{e.INFLUX_UP}={'false' if sink.influx_down else 'true'},"
                  f"{e.MQTT_CONNECTED}={'true' if self.source.connected else 'false'},"
                  f"{e.DISK_FULL}={'true' if sink.disk_error else 'false'},"
                  f"{e.VERSION}={field_str(_version())}")
        series = series_key(Measurement.EDGE, ((Tag.INSTANCE, self.settings.instance),))
        return f"{series} {fields} {int(time.time() * 1000)}"


def _version() -> str:
    from farmedge import __version__

    return __version__
