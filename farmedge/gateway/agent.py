"""The gateway agent: drivers -> sampler -> outbox -> uplink, plus status.

``Agent(settings)`` builds everything and touches nothing; ``await
agent.run(stop)`` opens the outbox, starts one sampling task per sensor, the
committer, the uplink and the status task, and on ``stop`` shuts down source
first: samplers stop, the outbox commits once more, the uplink gets
``drain_s`` to send what is left, publishes "offline" and disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

from farmedge import __version__
from farmedge.contract import (
    KINDS,
    EncodeError,
    Quality,
    RangeError,
    UnitError,
    check_reading,
    encode_status,
)
from farmedge.logs import get_logger

from .clock import ClockSource, SystemClock
from .drivers import Driver, DriverContext, Sample, SensorConfig, build_driver
from .errors import DriverError, GatewayError, OutboxError
from .hold import HoldWatch
from .outbox import NewRow, Outbox
from .settings import GatewaySettings
from .uplink import Uplink

__all__ = ["Agent", "check_sample"]

CPU_TEMP = Path("/sys/class/thermal/thermal_zone0/temp")


def check_sample(s: Sample) -> Quality:
    """The quality a sample deserves: the driver's, or "error" when the
    value is outside the kind's physical range or the unit is unknown."""
    k = KINDS.get(s.kind)
    if k is None:
        return Quality.ERROR
    try:
        k.convert(float(s.value), s.unit)
    except (RangeError, UnitError):
        return Quality.ERROR
    return s.quality


class _Stuck:
    """Counts identical values in a row per (sensor, kind)."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.last: dict[tuple[str, str, str | None], tuple[float, int]] = {}

    def check(self, sensor: str, s: Sample) -> bool:
        if self.after <= 0:
            return False
        key = (sensor, s.kind, s.animal)
        prev = self.last.get(key)
        n = prev[1] + 1 if prev is not None and prev[0] == s.value else 1
        self.last[key] = (s.value, n)
        return n >= self.after


class Agent:
    def __init__(self, settings: GatewaySettings, *, clock: ClockSource | None = None,
                 drivers: dict[str, Driver] | None = None, drain_s: float = 10.0) -> None:
        self.s = settings
        self.clock: ClockSource = clock or SystemClock(settings.clock.source)
        ctx = DriverContext(settings.county, settings.farm, settings.gateway)
        self.drivers: dict[str, Driver] = drivers if drivers is not None else {
            cfg.id: build_driver(cfg, ctx) for cfg in settings.sensors}
        self.outbox = Outbox(settings.outbox_path, max_bytes=int(settings.outbox.max_mb * 2**20),
                             max_age_ms=int(settings.outbox.max_age_days * 86_400_000))
        self.uplink = Uplink(settings, self.outbox, self.clock, status_payload=self.status)
        self.drain_s = drain_s
        self.started_mono = time.monotonic()
        self.read_errors = 0
        self.samples = 0
        #: Samples the wire contract cannot carry (also in read_errors).
        self._refused = 0
        #: Samples the outbox failed to keep (not for a full disk).
        self.store_errors = 0
        # Made here, not at import: logging is set up after the imports.
        self.log = get_logger("farmedge.gateway", gateway=settings.gateway)
        self.hold = HoldWatch(settings, self.outbox, self.clock, self.log)
        #: Seconds between two looks at the clock hold (HoldWatch.check).
        self.hold_check_s = 5.0

    # -- status -------------------------------------------------------------

    def status_fields(self, online: bool, reason: str | None = None) -> dict[str, Any]:
        """The status's fields (docs/protocol.md, "Status payload"). Offline:
        the last will's (``reason`` "lost"), or a planned stop's ("stopping",
        with the time and clock state)."""
        if not online:
            off: dict[str, Any] = {"gateway": self.s.gateway, "online": False,
                                   "reason": reason}
            if reason == "stopping":
                off.update(ts=self.clock.wall_ms(),
                           clock="synced" if self.clock.synced() else "unsynced")
            return off
        st = None
        if self.outbox.is_open:
            with contextlib.suppress(OutboxError):  # a broken file: the status still goes
                st = self.outbox.stats()
        now = self.clock.wall_ms()
        f: dict[str, Any] = {
            "gateway": self.s.gateway, "online": True, "ts": now,
            "uptime_s": round(time.monotonic() - self.started_mono, 1),
            "version": __version__,
            "clock": "synced" if self.clock.synced() else "unsynced",
        }
        if st is not None:
            f.update(outbox_depth=st.depth, dropped=st.dropped, outbox_full=st.full,
                     outbox_oldest_age_s=round(max(0, now - st.oldest_ts) / 1000, 1)
                     if st.oldest_ts is not None else 0.0, refused=st.refused)
        f["publish_refused"] = self.uplink.refusals.standing
        held = self.hold.current()
        f["held_unsynced"] = held.readings
        if held.readings:
            f["held_for_s"] = held.held_for_s
        f["cpu_temperature"] = _cpu_temperature()
        with contextlib.suppress(OSError):
            f["disk_free_mb"] = round(
                shutil.disk_usage(self.s.outbox_path.parent).free / 2**20, 1)
        return f

    def status(self, online: bool, reason: str | None = None) -> bytes:
        """The status payload, through the contract. A field the contract
        refuses (a clock far off, say) is left out, not the whole status."""
        fields = self.status_fields(online, reason)
        try:
            return encode_status(**fields)
        except EncodeError as exc:
            base: dict[str, Any] = {"gateway": self.s.gateway, "online": online,
                                    "reason": reason}
            good = {k: v for k, v in fields.items() if k not in base
                    and _encodes(encode_status, **base, **{k: v})}
            self.log.warning("gateway.status_field_refused", error=str(exc),
                             fields=sorted(set(fields) - set(good) - set(base)))
            return encode_status(**base, **good)

    # -- tasks --------------------------------------------------------------

    async def _sample_loop(self, cfg: SensorConfig, driver: Driver) -> None:
        """Read one sensor every ``interval_s`` until cancelled. A blocking
        read runs in a worker thread; drivers bound their own I/O with
        timeouts (serial, Modbus), so a read always returns or raises."""
        loop = asyncio.get_running_loop()
        stuck = _Stuck(cfg.stuck_after)
        next_t = loop.time()
        errors_in_row = 0
        lg = self.log.bind(sensor=cfg.id)
        while True:
            try:
                samples = await asyncio.to_thread(driver.read)
                errors_in_row = 0
            except (DriverError, OSError) as exc:
                samples = []
                self.read_errors += 1
                errors_in_row += 1
                if errors_in_row == 1 or errors_in_row % 100 == 0:
                    lg.warning("gateway.read_failed", error=str(exc) or type(exc).__name__,
                               in_a_row=errors_in_row)
            except Exception:
                samples = []
                self.read_errors += 1
                lg.exception("gateway.driver_crashed")
            if samples:
                try:
                    self._store(cfg.id, samples, stuck)
                except OutboxError as exc:  # not a full disk: the outbox handles that
                    self.store_errors += 1
                    lg.error("gateway.outbox_write_failed", error=str(exc),
                             errors_total=self.store_errors)
                except Exception:  # a sample nothing foresaw: this read is lost, not the sensor
                    self.read_errors += 1
                    lg.exception("gateway.store_crashed")
            next_t += cfg.interval_s
            now = loop.time()
            if next_t < now:
                next_t = now  # fell behind: skip the missed reads, do not burst
            await asyncio.sleep(next_t - now)

    def _store(self, sensor_id: str, samples: list[Sample], stuck: _Stuck) -> None:
        """Stamp the samples and keep them in the outbox. A sample the wire
        contract cannot carry (a value that is not a finite number, an id
        that is not an id) is not kept: it would be refused at every try to
        send it. It counts as a read error."""
        c = self.clock
        wall, mono, synced = c.wall_ms(), c.mono_ms(), c.synced()
        rows = []
        for s in samples:
            sensor = s.sensor or sensor_id
            m = s.mono_ms if s.mono_ms is not None else mono
            try:
                row = NewRow(sensor, s.kind, s.unit, float(s.value), s.quality, s.animal,
                             wall - (mono - m), m, synced)
                check_reading(row.wire())
            except (TypeError, ValueError, OverflowError, AttributeError) as exc:  # EncodeError too
                detail = exc.detail if isinstance(exc, EncodeError) else f"value: {exc}"
                self.read_errors += 1
                self._refused += 1
                if self._refused == 1 or self._refused % 100 == 0:
                    self.log.warning("gateway.sample_refused", sensor=sensor, kind=s.kind,
                                     error=detail, refused_total=self._refused)
                continue
            q = check_sample(s)
            if q is Quality.OK and stuck.check(sensor, s):
                q = Quality.SUSPECT
            rows.append(dataclasses.replace(row, quality=q))
        self.outbox.add(rows, c.boot_id())
        self.samples += len(rows)

    async def _hold_loop(self, stop: asyncio.Event) -> None:
        """Look at the clock hold now and every ``hold_check_s``; a status
        goes out as soon as a hold starts."""
        while not stop.is_set():
            was = self.hold.holding
            with contextlib.suppress(OutboxError):
                self.hold.check()
            if self.hold.holding and not was:
                self.uplink.publish_status()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.hold_check_s)

    async def _commit_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.s.outbox.commit_interval_s)
            self._commit()

    def _commit(self) -> None:
        synced = self.clock.synced()
        dropped = self.outbox.enforce_bounds(self.clock.wall_ms() if synced else None)
        if dropped:
            self.log.warning("gateway.outbox_dropped_oldest", dropped=dropped,
                             dropped_total=self.outbox.dropped)
        self.outbox.commit()

    async def _status_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.s.status.interval_s)
            if not stop.is_set():
                self.uplink.publish_status()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set. Should the uplink or the outbox's
        committer end with an error first, the agent stops the same way and
        raises :class:`GatewayError` naming it (``farmedge gateway run``
        exits 1 and systemd starts it again), rather than go on sampling
        with nothing sent or nothing committed."""
        self.outbox.open()
        self.log.info("gateway.starting", version=__version__, sensors=len(self.drivers),
                      backlog=self.outbox.depth, outbox=str(self.outbox.path))
        sensors = {cfg.id: cfg for cfg in self.s.sensors}
        tasks = [asyncio.create_task(self._sample_loop(sensors[i], d), name=f"read {i}")
                 for i, d in self.drivers.items() if i in sensors]
        committing = asyncio.Event()
        committer = asyncio.create_task(self._commit_loop(committing))
        uplink_stop = asyncio.Event()
        uplink = asyncio.create_task(self.uplink.run(uplink_stop))
        status = asyncio.create_task(self._status_loop(uplink_stop))
        hold = asyncio.create_task(self._hold_loop(uplink_stop))
        failure = None
        try:
            failure = await _first_failure(stop, {uplink: "the uplink",
                                                  committer: "the outbox's commits"})
        finally:
            self.log.info("gateway.stopping")
            for t in tasks:
                t.cancel()  # a read in progress finishes in its thread, unstored
            await asyncio.gather(*tasks, return_exceptions=True)
            committing.set()
            await asyncio.gather(committer, return_exceptions=True)
            with contextlib.suppress(OutboxError):  # a failed outbox: nothing to save
                self._commit()
            self.uplink.flushing = True
            uplink_stop.set()
            try:
                await asyncio.wait_for(asyncio.shield(uplink), self.drain_s)
            except TimeoutError:
                self.uplink.flushing = False
                self.uplink._wake.set()
                with contextlib.suppress(Exception):  # late, or failed: said below
                    await asyncio.wait_for(uplink, 5)
            except Exception:  # it failed: said below
                pass
            await asyncio.gather(status, hold, return_exceptions=True)
            for d in self.drivers.values():
                with contextlib.suppress(Exception):
                    d.close()
            with contextlib.suppress(OutboxError):
                self.outbox.close()
            self.log.info("gateway.stopped", backlog=self.outbox.depth)
        if failure is not None:
            self.log.error("gateway.task_failed", error=str(failure))
            raise failure


async def _first_failure(stop: asyncio.Event,
                         watched: dict[asyncio.Task[Any], str]) -> GatewayError | None:
    """Wait for ``stop``, or for one of ``watched`` to end first (an error,
    since they run until stop): that one as a GatewayError."""
    waiter = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait({waiter, *watched}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    for task in done:
        if task in watched:
            exc = None if task.cancelled() else task.exception()
            err = GatewayError(f"{watched[task]} stopped: "
                               f"{f'{type(exc).__name__}: {exc}' if exc else 'it ended'}")
            err.__cause__ = exc
            return err
    return None


def _encodes(encode: Any, **fields: Any) -> bool:
    try:
        encode(**fields)
    except EncodeError:
        return False
    return True


def _cpu_temperature() -> float | None:
    try:
        return round(int(CPU_TEMP.read_text().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        return None
