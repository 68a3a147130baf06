"""The state machine per rule and entity on its own: ok → pending → firing →
clearing → ok, hysteresis, ``for`` and ``clear_for``, and groups (one per
family and scope, joined by each firing member)."""

from __future__ import annotations

from pathlib import Path

from farmedge.alerts import AlertsSettings
from farmedge.alerts.context import Contexts
from farmedge.alerts.state import StateMachine
from farmedge.alerts.store import Changes
from farmedge.registry import Contact

from .support import farm_registry, rules_file, rules_of


def _machine(tmp_path: Path) -> tuple[StateMachine, Contexts]:
    rules = rules_of(rules_file(tmp_path, device=False))
    reg = farm_registry(contacts=[Contact(name="王", notify=["json://x"])])
    stats = {"raised": 0, "cleared": 0}
    return StateMachine(rules, Changes(), stats), Contexts(rules, reg, AlertsSettings())


def test_pending_firing_clearing_resolved(tmp_path: Path) -> None:
    sm, ctxs = _machine(tmp_path)
    ctx = ctxs.get("c1", "wang-12", "gw-1", "soil-1")
    [(br, pr)] = ctx.by_kind["soil_moisture"]
    key = sm.key(br, ctx, "sensor", "gw-1/soil-1")

    def obs(v: float, t: float) -> str:
        raise_holds = v < 20
        sm.observe(br, pr, ctx, "sensor", "gw-1/soil-1", raise_holds, v >= 24, v, {}, t)
        st = sm.states.get(key)
        return st.status if st is not None else "ok"

    assert obs(25, 0) == "ok"
    assert obs(15, 0) == "pending"
    assert obs(22, 600) == "pending"        # in the band: still pending, not holding
    assert obs(15, 1199) == "pending"
    assert obs(15, 1200) == "firing"        # for: 20m, and the condition holds now
    assert sm.stats["raised"] == 1 and sm.changed
    assert sm.groups[sm.states[key].group].members == [key]
    assert obs(22, 1800) == "firing"        # the band does not clear
    assert obs(25, 2400) == "clearing"
    assert obs(19, 2500) == "firing"        # back before clear_for: firing again
    assert obs(25, 2600) == "clearing"
    assert obs(25, 3799) == "clearing"
    assert obs(25, 3800) == "ok"            # clear_for: 20m
    assert sm.stats["cleared"] == 1
    g = next(iter(sm.groups.values()))
    assert g.members == [] and g.last_vars["value"] == "25"
    assert sm.changes.states[key] is None   # the delete goes to the state file


def test_pending_clears_to_ok_without_a_message(tmp_path: Path) -> None:
    sm, ctxs = _machine(tmp_path)
    ctx = ctxs.get("c1", "wang-12", "gw-1", "soil-1")
    [(br, pr)] = ctx.by_kind["soil_moisture"]
    sm.observe(br, pr, ctx, "sensor", "gw-1/soil-1", True, False, 15, {}, 0)
    sm.observe(br, pr, ctx, "sensor", "gw-1/soil-1", False, True, 25, {}, 300)
    assert sm.states == {} and sm.groups == {} and sm.stats["raised"] == 0


def test_members_of_one_plot_share_a_group(tmp_path: Path) -> None:
    sm, ctxs = _machine(tmp_path)
    for s in ("soil-1", "soil-2"):
        ctx = ctxs.get("c1", "wang-12", "gw-1", s)
        [(br, pr)] = ctx.by_kind["soil_moisture"]
        sm.observe(br, pr, ctx, "sensor", f"gw-1/{s}", True, False, 15, {}, 0)
        sm.observe(br, pr, ctx, "sensor", f"gw-1/{s}", True, False, 15, {}, 1200)
    [g] = sm.groups.values()
    assert g.key == "c1/wang-12|test-dry/soil-dry|plot:field-3" and len(g.members) == 2
    assert g.where == "3号地"


def test_timers_fire_pending_states_whose_for_has_passed(tmp_path: Path) -> None:
    sm, ctxs = _machine(tmp_path)
    ctx = ctxs.get("c1", "wang-12", "gw-1", "soil-1")
    [(br, pr)] = ctx.by_kind["soil_moisture"]
    sm.observe(br, pr, ctx, "sensor", "gw-1/soil-1", True, False, 15, {}, 0)
    sm.timers(1199)
    assert sm.firing()[0][2] == "pending"
    sm.timers(1200)
    assert sm.firing() == [("test-dry/soil-dry", "sensor:gw-1/soil-1", "firing")]
