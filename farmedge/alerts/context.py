"""What the engine knows about one sensor of one gateway: its farm, registry
entry and metadata, its profile's rules bound to their parameters, sorted by
what they read, and the small per-sensor state the fast path keeps.

A context is built once per (county, farm, gateway, sensor, plot, animal)
and cached. For readings it is built from the registry entry the edge
already resolved (:attr:`farmedge.records.Accepted.entry`); status events
and timers look the gateway up in the registry's index once.

Profile choice, first that applies: the herd holding the animal, the plot,
the gateway, the farm, the plot's (or sensor's) crop through
``[alerts] crop_profiles``, ``[alerts] default_profile``. The ``device``
profile applies to everything besides (docs/alerts.md, "Assigning profiles").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from farmedge.registry import Contact, Farm, GatewayEntry, Registry, SensorMeta

from .errors import AlertsError
from .quiet import parse_quiet_hours
from .rules import BoundRule, RuleSet
from .settings import AlertsSettings

__all__ = ["FULL_PATH", "STATUS_CHECKS", "Bound", "Context", "Contexts", "FastPlan",
           "check_registry"]

#: A rule as it applies to one context: the rule and its merged parameters.
Bound = tuple[BoundRule, dict[str, float]]
#: Checks driven by status and timers, not by one reading.
STATUS_CHECKS = ("gateway_offline", "sensor_silent", "clock_unsynced", "outbox_backlog")
Flat = tuple[float, float, list[float]]
#: What the fast path checks for one kind: plausible (low, high), then the
#: first flatline rule as tolerance, window (ms) and this sensor's [value,
#: since ms] (None without one), then any further flatline rules.
FastPlan = tuple[float, float, float, float, list[float] | None, list[Flat]]
#: The plan of a kind a threshold or derived-value rule reads: no value is
#: in its range, so every reading takes the full path.
FULL_PATH: FastPlan = (math.inf, -math.inf, 0.0, 0.0, None, [])
DEFAULT_TZ = "Asia/Shanghai"
_UNSET: GatewayEntry = GatewayEntry()


@dataclass(slots=True)
class Context:
    county: str
    farm: str
    gateway: str
    sensor: str
    farm_obj: Farm | None
    gw_obj: GatewayEntry | None
    meta: SensorMeta | None
    plot: str | None
    animal: str | None
    tz: ZoneInfo
    #: kind -> threshold and flatline rules reading it
    by_kind: dict[str, list[Bound]]
    any_kind: list[Bound]           # out_of_range checks
    status: list[Bound]             # status / timer checks
    #: kind -> FastPlan (FULL_PATH when the kind needs the full path)
    fast: dict[str, FastPlan] = field(default_factory=dict)
    #: (kind, flatline rule) -> [last value, since when (epoch ms)]
    flat: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def where(self, stype: str, sid: str) -> str:
        """The words for a scope in a message: plot name, farm name, sensor id."""
        f = self.farm_obj
        if stype == "plot" and f is not None and sid in f.plots:
            return f.plots[sid].name or sid
        if stype == "farm":
            return (f.name if f is not None else None) or self.farm
        if stype == "sensor":
            return sid.split("/", 1)[-1]
        return sid

    def scope_id(self, scope: str) -> str | None:
        if scope == "sensor":
            return f"{self.gateway}/{self.sensor}"
        if scope == "plot":
            return self.plot
        if scope == "animal":
            return self.animal
        if scope == "gateway":
            return self.gateway
        return self.farm

    def fast_plan(self, kind: str) -> FastPlan:
        """What the fast path checks for ``kind`` (computed once per kind),
        FULL_PATH when a rule needs the full path (thresholds, derived values)."""
        plan = self.fast.get(kind)
        if plan is not None:
            return plan
        flats: list[Flat] = []
        for br, pr in self.by_kind.get(kind, ()):
            if br.rule.check != "flatline":
                plan = FULL_PATH
                break
            st = self.flat.setdefault((kind, br.key), [math.inf, 0.0])
            flats.append((pr.get("tolerance", 0.0), (br.rule.window or 43200.0) * 1000.0, st))
        else:
            lo, hi = -math.inf, math.inf
            for br, _pr in self.any_kind:
                rng = br.rule.plausible.get(kind)
                if rng is not None:
                    lo, hi = max(lo, rng[0]), min(hi, rng[1])
            if flats:
                tol, window, st = flats[0]
                plan = (lo, hi, tol, window, st, flats[1:])
            else:
                plan = (lo, hi, 0.0, 0.0, None, [])
        self.fast[kind] = plan
        return plan


class Contexts:
    """Builds and caches contexts."""

    def __init__(self, rules: RuleSet, registry: Registry | None,
                 settings: AlertsSettings) -> None:
        self.rules = rules
        self.registry = registry
        self.settings = settings
        self.index = registry.index() if registry is not None else {}
        self._cache: dict[tuple[str, ...], Context] = {}
        #: (county, farm) -> the registry's farm, built once (Registry.farm
        #: scans the list: once per farm met, that was quadratic in farms)
        self._farms: dict[tuple[str, str], Farm] = (
            {(f.county, f.farm): f for f in registry.farms} if registry is not None else {})

    def farm(self, county: str, farm: str) -> Farm | None:
        return self._farms.get((county, farm))

    def get(self, county: str, farm: str, gateway: str, sensor: str,
            plot: str | None = None, animal: str | None = None,
            entry: GatewayEntry | None = _UNSET) -> Context:
        """The context of a sensor (``sensor=""``: of the gateway). ``entry``:
        the gateway's registry entry as the edge resolved it (None: not in
        the registry); left out, it is looked up in the registry."""
        key = (county, farm, gateway, sensor, plot or "", animal or "")
        c = self._cache.get(key)
        if c is not None:
            return c
        if entry is _UNSET:
            hit = self.index.get((county, farm, gateway))
            ge = hit[1] if hit is not None else None
        else:
            ge = entry
        f = self.farm(county, farm)
        meta = ge.sensors.get(sensor) if ge is not None else None
        if meta is not None:
            plot = plot or meta.plot
            animal = animal or meta.animal
        # Contexts of one sensor reached with and without its registry's plot
        # and animal are one (one flatline state, one set of plans).
        resolved = (county, farm, gateway, sensor, plot or "", animal or "")
        c = self._cache.get(resolved)
        if c is None:
            c = self._cache[resolved] = self._build(county, farm, gateway, sensor, f, ge, meta,
                                                    plot, animal)
        self._cache[key] = c
        return c

    def _profile(self, f: Farm | None, ge: GatewayEntry | None, meta: SensorMeta | None,
                 plot: str | None, animal: str | None) -> tuple[str | None, dict[str, float]]:
        profile: str | None = None
        over: dict[str, float] = {}
        if f is not None:
            if animal:
                for h in f.herds.values():
                    if animal in h.animals:
                        profile = h.profile
                        over.update(h.params)
                        break
            p = f.plots.get(plot) if plot else None
            if p is not None:
                if p.field_capacity is not None:
                    over["field_capacity"] = p.field_capacity
                if p.wilting_point is not None:
                    over["wilting_point"] = p.wilting_point
                over.update(p.params)
                if profile is None:
                    profile = p.profile
            if profile is None and ge is not None:
                profile = ge.profile
            if profile is None:
                profile = f.profile
            if profile is None:
                crop = (p.crop if p is not None else None) or (meta.crop if meta else None)
                if crop is not None:
                    profile = self.settings.crop_profiles.get(crop)
        if profile is None:
            profile = self.settings.default_profile
        return profile, over

    def _build(self, county: str, farm: str, gateway: str, sensor: str, f: Farm | None,
               ge: GatewayEntry | None, meta: SensorMeta | None, plot: str | None,
               animal: str | None) -> Context:
        profile, over = self._profile(f, ge, meta, plot, animal)
        brs: list[BoundRule] = []
        if profile is not None and profile in self.rules.profiles:
            brs.extend(self.rules.rules_of(profile))
        if "device" in self.rules.profiles and profile != "device":
            brs.extend(self.rules.rules_of("device"))
        by_kind: dict[str, list[Bound]] = {}
        any_kind: list[Bound] = []
        status: list[Bound] = []
        for br in brs:
            item = (br, {**br.params, **over, **br.rule.params})
            if br.rule.check in STATUS_CHECKS:
                status.append(item)
            elif br.rule.check == "out_of_range":
                any_kind.append(item)
            else:
                for k in br.rule.kind:
                    by_kind.setdefault(k, []).append(item)
        tz = ZoneInfo(f.timezone) if f is not None else ZoneInfo(DEFAULT_TZ)
        return Context(county, farm, gateway, sensor, f, ge, meta, plot, animal, tz, by_kind,
                       any_kind, status)


def check_registry(rules: RuleSet, registry: Registry | None, *,
                   where: Callable[[tuple[int | str, ...]], str] | None = None) -> None:
    """Every profile the registry names exists; quiet hours and time zones
    parse. Raises AlertsError listing each problem. ``where`` turns a
    location in the registry (``("farms", 0, "profile")``) into a prefix for
    the message, such as ``"registry.yaml:7: "``."""
    if registry is None:
        return
    problems: list[str] = []

    def at(loc: tuple[int | str, ...]) -> str:
        return where(loc) if where is not None else ""

    def prof(loc: tuple[int | str, ...], what: str, name: str | None) -> None:
        if name is not None and name not in rules.profiles:
            problems.append(f"{at(loc)}{what}: profile {name!r} is not defined "
                            f"(known: {', '.join(sorted(rules.profiles))})")

    def contacts(loc: tuple[int | str, ...], what: str, cs: Sequence[Contact]) -> None:
        for j, c in enumerate(cs):
            if c.quiet_hours:
                try:
                    parse_quiet_hours(c.quiet_hours)
                except AlertsError as exc:
                    problems.append(f"{at((*loc, j, 'quiet_hours'))}{what} contact {c.name}: "
                                    f"{exc}")

    for i, f in enumerate(registry.farms):
        base = f"farm {f.county}/{f.farm}"
        prof(("farms", i, "profile"), base, f.profile)
        try:
            ZoneInfo(f.timezone)
        except Exception:
            problems.append(f"{at(('farms', i, 'timezone'))}{base}: unknown timezone "
                            f"{f.timezone!r}")
        for pid, p in f.plots.items():
            prof(("farms", i, "plots", pid, "profile"), f"{base} plot {pid}", p.profile)
        for hid, h in f.herds.items():
            prof(("farms", i, "herds", hid, "profile"), f"{base} herd {hid}", h.profile)
        for gid, g in f.gateways.items():
            prof(("farms", i, "gateways", gid, "profile"), f"{base} gateway {gid}", g.profile)
        contacts(("farms", i, "contacts"), base, f.contacts)
    contacts(("center_contacts",), "center", registry.center_contacts)
    if problems:
        raise AlertsError("\n".join(problems))
