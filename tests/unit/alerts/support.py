"""The engine without servers: an injected clock, a fake notifier passed by
constructor, records handed straight to ``on_accepted`` as the edge does, and
passes driven one by one (:meth:`AlertEngine.step`), so a test runs hours of
simulated time in milliseconds and nothing waits on a poll."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from farmedge.alerts import (
    AlertEngine,
    AlertsSettings,
    DeliveryFailed,
    MemoryRecorder,
    RuleSet,
    load_rules,
)
from farmedge.contract.kinds import KINDS
from farmedge.contract.models import GatewayStatus, Quality
from farmedge.contract.parse import NormalizedReading
from farmedge.records import Accepted, StatusEvent
from farmedge.registry import Registry

# Shared with the alert tests against real servers (re-exported for the unit tests).
from tests.alerts_support import SimClock as SimClock
from tests.alerts_support import farm_registry as farm_registry
from tests.alerts_support import local_ts as local_ts

DRY_RULES = """
profiles:
  test-dry:
    description: one soil rule, for tests
    rules:
      - id: soil-dry
        kind: soil_moisture
        when: {below: 20}
        clear: {at_least: 24}
        for: 20m
        clear_for: 20m
        group_by: plot
        target: [22, 30]
        template: soil-dry
      - id: frost
        kind: air_temperature
        when: {at_most: -2}
        clear: {above: 0}
        severity: critical
        group_by: farm
        decimals: 1
        template: frost
        escalate_after: 2h
"""
NO_DEVICE = "  device:\n    rules: []\n"


@dataclass
class Sent:
    url: str
    title: str
    body: str


class FakeNotifier:
    """Takes every message; ``fail_next`` makes the next N attempts fail as an
    SMS gateway answering 500 would (a stand-in for Apprise: the Apprise
    adapter itself is tested against real local HTTP and SMTP servers in
    tests/integration/test_alerts.py)."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.attempts = 0
        self.fail_next = 0

    async def send(self, url: str, *, title: str, body: str) -> None:
        self.attempts += 1
        if self.fail_next > 0:
            self.fail_next -= 1
            raise DeliveryFailed("json: the service did not accept the message")
        self.sent.append(Sent(url, title, body))

    def messages(self, url: str | None = None) -> list[str]:
        return [s.body for s in self.sent if url is None or s.url == url]


@dataclass
class Rig:
    engine: AlertEngine
    clock: SimClock
    notifier: FakeNotifier
    memory: MemoryRecorder
    registry: Registry | None
    county: str = "c1"
    farm: str = "wang-12"
    extra: list[object] = field(default_factory=list)

    def record(self, values: dict[str, float], kind: str = "soil_moisture", *,
               gateway: str = "gw-1", quality: Quality = Quality.OK, clock_ok: bool = True,
               animal: str | None = None, offset_ms: int = 0, age_ms: int = 0) -> Accepted:
        """One telemetry message as the edge hands it on (its registry entry
        resolved once): readings ``age_ms`` old, placed with ``offset_ms``."""
        k = KINDS[kind]
        rs = [NormalizedReading(s, k, self.clock.ms - age_ms - offset_ms, v, quality, animal)
              for s, v in values.items()]
        hit = self.registry.index().get((self.county, self.farm, gateway)) \
            if self.registry is not None else None
        return Accepted(self.county, self.farm, gateway, self.clock.ms, clock_ok, offset_ms, rs,
                        hit[1] if hit is not None else None)

    def feed(self, values: dict[str, float], kind: str = "soil_moisture", **kw: object) -> None:
        self.engine.on_accepted([self.record(values, kind, **kw)])  # type: ignore[arg-type]

    def status(self, gateway: str = "gw-1", **kw: object) -> None:
        st = GatewayStatus.model_validate({"v": 1, "gateway": gateway, **kw})
        self.engine.on_status(StatusEvent(self.county, self.farm, gateway, st, self.clock.ms))

    async def step(self, seconds: float = 0.0) -> None:
        self.clock.t += seconds
        await self.engine.step()

    def events(self, *names: str) -> list[str]:
        return [e.event for e in self.memory.events if not names or e.event in names]

    def close(self) -> None:
        self.engine.shut()


def rules_file(tmp_path: Path, text: str = DRY_RULES, *, device: bool = True) -> Path:
    p = tmp_path / "rules.yaml"
    p.write_text(text + ("" if device else NO_DEVICE))
    return p


_RULES: dict[tuple[str, bool], RuleSet] = {}


def rules_of(path: Path | None, *, shipped: bool = True) -> RuleSet:
    """Loaded rules, once per text (loading the shipped profiles takes a
    good part of a second; the engine does not change a RuleSet)."""
    text = path.read_text() if path is not None else ""
    key = (text, shipped)
    rs = _RULES.get(key)
    if rs is None:
        rs = _RULES[key] = load_rules([path] if path is not None else [], shipped=shipped)
    return rs


def make_rig(registry: Registry | None, *, start: float, rules: Path | None = None,
             state_path: Path | str = ":memory:", settings: AlertsSettings | None = None,
             clock: SimClock | None = None, notifier: FakeNotifier | None = None,
             shipped: bool = True) -> Rig:
    clock = clock or SimClock(start)
    notifier = notifier or FakeNotifier()
    memory = MemoryRecorder()
    engine = AlertEngine(rules=rules_of(rules, shipped=shipped),
                         registry=registry, notifier=notifier, state_path=state_path,
                         recorders=[memory], clock=clock,
                         settings=settings or AlertsSettings(backoff_s=60))
    engine.open()
    county = registry.farms[0].county if registry is not None and registry.farms else "c1"
    return Rig(engine, clock, notifier, memory, registry, county)
