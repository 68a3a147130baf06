"""The alert engine: a stage after the edge's writer. It takes the records
of each durable batch (:meth:`AlertEngine.on_accepted`, one
:class:`~farmedge.records.Accepted` per message, and
:meth:`AlertEngine.on_status`) on the edge's event loop; those calls only
update memory and wake the engine's own task, :meth:`AlertEngine.run`, which
does everything slow: timers (silence, offline, pending durations, reminders,
quiet-hour release), writing state to SQLite, and handing messages to the
notifier. Time comes from an injected ``clock`` (epoch seconds), so tests
run hours of simulated time without sleeping.

The work is split by job (docs/architecture.md, "Alerts"):

- :mod:`.context`  profile and parameters per gateway and sensor;
- :mod:`.readings` readings into rules (the fast path), :mod:`.derive` the
  derived values, :mod:`.history` the history behind them;
- :mod:`.device`   device checks: status, silence, flatline, range;
- :mod:`.center`   the center's own health (from the edge's
  :class:`~farmedge.records.CenterEvent`) and its incidents, to operators;
- :mod:`.state`    the state machine per rule and entity, groups;
- :mod:`.route`    groups into messages: texts, recipients, budgets, quiet hours;
- :mod:`.delivery` the outbox: the intent to send, retries, rate limits;
- :mod:`.store`    the state file, :mod:`.commit` writing it once per pass;
- :mod:`.partitions` cluster mode (:mod:`.cluster`): partitions' state
  loaded, written and dropped as the edge gains and loses them, the fence.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from farmedge.logs import get_logger
from farmedge.records import Accepted, AcceptedReading, CenterEvent, StatusEvent
from farmedge.registry import Registry

from .center import CenterHealth, CenterIncidents
from .cluster import PartitionFence, PartitionStore
from .commit import StateWriter
from .context import Contexts, check_registry
from .delivery import Delivery, Outbox
from .device import DeviceChecks, longest_interval
from .errors import AlertsError
from .history import History
from .notify import Notifier
from .partitions import Partitions, county_status
from .quiet import parse_quiet_hours
from .readings import ReadingPath
from .record import AlertEvent, Recorder
from .route import Router
from .rules import RuleSet
from .settings import AlertsSettings
from .state import StateMachine
from .store import Changes, StateStore

__all__ = ["AlertEngine", "check_registry", "parse_quiet_hours"]

log = get_logger("farmedge.alerts")

#: On a stop, sends in flight get this long to finish (then their outcome is not known).
_SEND_GRACE_S = 3.0

class AlertEngine:
    """Implements :class:`farmedge.records.Stage`; ``run()`` is its task."""

    def __init__(self, *, rules: RuleSet, registry: Registry | None, notifier: Notifier,
                 state_path: Path | str = ":memory:", recorders: Sequence[Recorder] = (),
                 settings: AlertsSettings | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        check_registry(rules, registry)
        s = settings or AlertsSettings()
        for name in [s.default_profile, *s.crop_profiles.values()]:
            if name is not None and name not in rules.profiles:
                raise AlertsError(f"[alerts] profile {name!r} is not defined")
        if s.operator_quiet_hours:
            parse_quiet_hours(s.operator_quiet_hours)
        self.rules = rules
        self.registry = registry
        self.notifier = notifier
        self.recorders = list(recorders)
        self.settings = s
        self.clock = clock
        #: True while the state cannot be written for lack of disk space.
        self.disk_full = False
        #: Why the state cannot be written otherwise (read-only disk), or None.
        self.state_error: str | None = None
        self.stats: dict[str, int] = {
            "readings": 0, "status": 0, "stale": 0, "raised": 0, "cleared": 0,
            "delivered": 0, "failed": 0, "suppressed": 0, "held": 0, "dropped_early": 0,
            "center_events": 0, "fenced": 0, "unconfirmed": 0,
        }
        self._store = StateStore(state_path)
        self._changes = Changes()
        self.contexts = Contexts(rules, registry, s)
        self.machine = StateMachine(rules, self._changes, self.stats)
        self.history = History()
        #: What the engine knows of the center's own health (the edge tells it).
        self.health = CenterHealth(s)
        self.center = CenterIncidents(rules=rules, machine=self.machine, health=self.health,
                                      settings=s, stats=self.stats, router=lambda: self.router,
                                      longest_interval=lambda: longest_interval(self.contexts))
        self.device = DeviceChecks(self.contexts, self.machine, self.stats, settings=s,
                                   health=self.health, center=self.center)
        self.readings = ReadingPath(contexts=self.contexts, machine=self.machine,
                                    device=self.device, history=self.history, settings=s,
                                    stats=self.stats)
        self.outbox = Outbox(notifier=notifier, settings=s, changes=self._changes,
                             stats=self.stats, clock=clock, publish=self._publish,
                             poke=self._poke)
        self.outbox.on_result = self.center.delivery
        self.router = Router(rules=rules, registry=registry, contexts=self.contexts,
                             machine=self.machine, outbox=self.outbox, changes=self._changes,
                             stats=self.stats, publish=self._publish)
        self._writer = StateWriter(self)
        self._early: deque[tuple[str, Any]] = deque(maxlen=100_000)
        self._loaded = False
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        #: Cluster mode: the edge's fence, where partitions' state lives.
        self.fence: PartitionFence | None = None
        self.partition_store: PartitionStore | None = None
        self.cluster: Partitions | None = None

    # ------------------------------------------------------------ cluster mode

    def attach_fence(self, fence: PartitionFence, *,
                     store: PartitionStore | None = None) -> None:
        """Cluster mode (farmedge/alerts/cluster.py); call before :meth:`start`."""
        self.fence, self.partition_store = fence, store
        self.cluster = cl = Partitions(self, fence, store)
        self.device.owns, self.device.since = cl.owns, cl.since

    async def partition_gained(self, partition: int) -> None:
        """The edge owns ``partition`` now (before its reader starts): its
        state is loaded; messages found unconfirmed go to the operators."""
        if self.cluster is not None and await self.cluster.gained(partition):
            self._unconfirmed(self.clock(), f"partition {partition}")

    async def partition_lost(self, partition: int) -> None:
        """The edge no longer owns ``partition`` (after its reader stopped):
        its state is written and dropped."""
        if self.cluster is not None:
            await self.cluster.lost(partition)

    def on_county_status(self, event: StatusEvent) -> None:
        """Cluster mode: a status of any gateway of the county (the county-wide
        rules see them all); those of our own partitions come by on_status."""
        cl = self.cluster
        if cl is not None and self._loaded and not cl.owns(event.county, event.farm):
            county_status(self, event, self.clock())

    def _unconfirmed(self, now: float, where: str) -> None:
        ds, self.outbox.unconfirmed = self.outbox.unconfirmed, []
        self.center.unconfirmed(ds, where, now, self._publish)
        self._poke()

    # ------------------------------------------------------------ stage API

    def on_accepted(self, records: Sequence[Accepted]) -> None:
        """The records of one durable batch (the edge's call)."""
        if not self._loaded:
            self._hold("a", list(records))
            return
        self.stats["readings"] += self.readings.accepted(records, self.clock())
        self._act_if_changed()

    def on_readings(self, readings: Sequence[AcceptedReading]) -> None:
        """Readings one by one, with plot and animal in their tags (tools and
        tests; the edge calls :meth:`on_accepted`)."""
        if not self._loaded:
            self._hold("r", list(readings))
            return
        self.stats["readings"] += len(readings)
        self.readings.each(readings, self.clock())
        self._act_if_changed()

    def on_status(self, event: StatusEvent) -> None:
        if not self._loaded:
            self._hold("s", event)
            return
        self.device.status(event, self.clock())
        self._poke()

    def on_center(self, event: CenterEvent) -> None:
        """A change in the center's own health (the edge's call)."""
        if not self._loaded:
            self._hold("c", event)
            return
        self.stats["center_events"] += 1
        self.center.event(event, self.clock())
        self._poke()

    def wake(self) -> None:
        """Run a pass now (after advancing a simulated clock)."""
        self._poke()

    def _hold(self, what: str, item: Any) -> None:
        """Before the state is loaded: kept for the first pass."""
        if len(self._early) == self._early.maxlen:
            self.stats["dropped_early"] += 1
        self._early.append((what, item))

    def _act_if_changed(self) -> None:
        if self.machine.changed:    # an alert fired or resolved: act now, not at the tick
            self.machine.changed = False
            self._poke()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _publish(self, ev: AlertEvent) -> None:
        if self.cluster is not None and not self.cluster.records(ev.farm, ev.rule):
            return
        for r in self.recorders:
            try:
                r.record(ev)
            except Exception:  # a recorder must never stop alerting
                log.exception("alerts.recorder_failed", recorder=type(r).__name__)

    # ------------------------------------------------------------ inspection

    @property
    def on_dispatch(self) -> Callable[[Delivery, float], None] | None:
        """Called with (delivery, now) just before the notifier (benchmark hook)."""
        return self.outbox.on_dispatch

    @on_dispatch.setter
    def on_dispatch(self, fn: Callable[[Delivery, float], None] | None) -> None:
        self.outbox.on_dispatch = fn

    @property
    def _inflight(self) -> dict[str, asyncio.Task[None]]:
        return self.outbox.inflight

    def firing(self) -> list[tuple[str, str, str]]:
        """(rule, entity, status) of every alert not ok, for tools and tests."""
        return self.machine.firing()

    # ------------------------------------------------------------ state on disk

    def _load(self) -> None:
        st = self._store
        st.open()
        flat = self.machine.load(st.load("states"), st.load("groups"))
        self.center.forget_mass()
        self.device.load_flat(flat)
        self.outbox.load(st.load("outbox"))
        self.router.budget.update({k: int(v) for k, v in st.load("budget").items()})
        self.history.load(st.load("history"))

    # ------------------------------------------------------------ the task

    def _pass(self, now: float) -> None:
        if self.outbox.unconfirmed:
            self._unconfirmed(now, "edge")
        while self._early:
            what, item = self._early.popleft()
            if what == "a":
                self.stats["readings"] += self.readings.accepted(item, now)
            elif what == "r":
                self.stats["readings"] += len(item)
                self.readings.each(item, now)
            elif what == "c":
                self.stats["center_events"] += 1
                self.center.event(item, now)
            else:
                self.device.status(item, now)
        self.machine.timers(now)
        self.device.timers(now)
        self.center.timers(now)
        self.router.groups_pass(now)

    async def _round(self, now: float) -> None:
        """One pass: timers and groups, then the intent to send each due
        message, committed with the pass's changes before any is handed to
        its notifier (never twice: docs/alerts.md, "Delivery")."""
        if self.cluster is not None:
            for p in await self.cluster.retry_loads(now):
                self._unconfirmed(now, f"partition {p}")
        self._pass(now)
        ds = self.outbox.pick(now)
        if self.cluster is not None and ds:
            ds = await self.cluster.allowed(ds, now)
        self.outbox.mark(ds, now)
        await self._writer.commit_or_hold()
        self.outbox.start(ds if self.cluster is None else self.cluster.written(ds))

    def open(self) -> None:
        """Load the state file. ``run()`` does it; tools and tests that drive
        the engine pass by pass (:meth:`step`) call it, then :meth:`shut`."""
        self._load()
        self.device.started = self.clock()
        self._loaded = True

    async def step(self) -> None:
        """One pass at the clock's time, as ``run()`` makes them (timers,
        groups, commit, dispatch), and the sends it starts, awaited."""
        await self._round(self.clock())
        while self.outbox.inflight:
            await asyncio.gather(*list(self.outbox.inflight.values()),
                                 return_exceptions=True)

    def shut(self) -> None:
        """Write everything and close the state file (after :meth:`open`)."""
        self._writer.commit(history=True)
        self._store.close()
        self._loaded = False

    async def run(self) -> None:
        """Load state, then loop: timers, groups, commit, dispatch. Cancel to stop."""
        self._wake = asyncio.Event()
        await asyncio.to_thread(self.open)
        tasks = [asyncio.create_task(r.run()) for r in self.recorders]
        try:
            while True:
                self._wake.clear()
                await self._round(self.clock())
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                # cancel that arrives just as the event is set.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.tick_s):
                        await self._wake.wait()
        finally:
            await self.outbox.cancel(grace_s=_SEND_GRACE_S)
            with contextlib.suppress(Exception):
                await self._writer.commit_async(history=True)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._store.close()
            self._loaded = False

    async def start(self) -> None:
        """Start ``run()`` as a task and return once state is loaded (the edge
        calls this before it takes messages)."""
        if self._task is None:
            self._task = asyncio.create_task(self.run())
        task = self._task
        while not self._loaded:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        """Stop the task started by ``start()``: state is written, sends in
        flight are cancelled (their messages stay in the outbox)."""
        task, self._task = self._task, None
        if task is not None:
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=5)
            with contextlib.suppress(asyncio.CancelledError):
                await task
