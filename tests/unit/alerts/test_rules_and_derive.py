"""Rule files and the derived values, without an engine: the shipped profiles
load and fit one SMS, errors name file, line and reason, and each value
function of derive.DERIVE computes what docs/alerts.md says."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from farmedge.alerts import export_templates, load_rules
from farmedge.alerts.derive import DERIVE, Input
from farmedge.alerts.history import History
from farmedge.alerts.rules import Derived, Rule
from farmedge.config import ConfigError


def test_shipped_profiles_load_and_fit_one_sms() -> None:
    rs = load_rules()
    assert {"maize-blacksoil", "soybean-blacksoil", "paddy-rice", "cattle-dairy", "cattle-beef",
            "pigs", "poultry", "water-trough", "device"} <= set(rs.profiles)
    rows = export_templates(rs)
    assert rows and all(r.widest_chars <= 70 for r in rows if r.language == "zh")


@pytest.mark.parametrize(("text", "expect"), [
    ("profiles:\n  x:\n    rules:\n      - id: a\n        kind: soil_moisture\n"
     "        when: {below: 3}\n        template: nope\n",
     ":7: profiles.x.rules[0].template: no template 'nope'"),
    ("profiles:\n  x:\n    rules:\n      - id: a\n        kind: soil_moist\n"
     "        when: {below: 3}\n        template: soil-dry\n",
     ":4: profiles.x.rules[0]: Value error, kind 'soil_moist' is not a contract kind"),
    ("profiles:\n  x:\n    rules:\n      - id: a\n        kind: soil_moisture\n"
     "        when: {below: 3}\n        for: soon\n        template: soil-dry\n",
     ":7: profiles.x.rules[0].for: Value error, 'soon' is not a duration"),
    ("templates:\n  t:\n    raise: {zh: '{where}" + "很" * 62 + "', en: x}\n"
     "    clear: {zh: a, en: b}\n",
     ":2: templates.t: Value error, raise.zh: 68 characters with the widest values"),
    ("profiles:\n  a:\n    include: [b]\n  b:\n    include: [a]\n",
     ":3: profiles.a.include: include cycle a -> b -> a"),
    # YAML keeps the last of a key given twice: said, not kept silently
    ("profiles:\n  x:\n    rules:\n      - id: a\n        kind: soil_moisture\n"
     "        when: {below: 3}\n        when: {below: 30}\n        template: soil-dry\n",
     ":7: when: listed twice in the same mapping"),
    # a rule that could never fire (or never stop) is an error, not a silence
    ("profiles:\n  x:\n    rules:\n      - id: a\n        kind: soil_moisture\n"
     "        when: {below: 3}\n        for: .nan\n        template: soil-dry\n",
     ":7: profiles.x.rules[0].for: Value error, a duration must be a finite number"),
    ("profiles:\n  x:\n    rules:\n      - id: a\n        kind: soil_moisture\n"
     "        when: {below: 3}\n        remind_after: .inf\n        template: soil-dry\n",
     ":7: profiles.x.rules[0].remind_after: Value error, a duration must be a finite number"),
    ("profiles:\n  x:\n    rules:\n      - id: a\n        kind: soil_moisture\n"
     "        when: {below: .nan}\n        template: soil-dry\n",
     ":6: profiles.x.rules[0].when.below: Input should be a finite number"),
])
def test_rule_file_errors_name_file_line_and_reason(tmp_path: Path, text: str,
                                                    expect: str) -> None:
    p = tmp_path / "site.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_rules([p])
    assert f"{p}{expect}" in str(ei.value)


def test_every_value_a_rule_can_name_has_a_function() -> None:
    assert set(DERIVE) == set(typing.get_args(Derived))


def _rule(value: str, kind: str = "soil_moisture", **kw: object) -> Rule:
    return Rule.model_validate({"id": "r", "kind": kind, "value": value,
                                "when": {"below": 1}, "template": "t", **kw})


def _x(value: float, rule: Rule, params: dict[str, float] | None = None, *, ts: float = 0.0,
       kind: str = "soil_moisture", history: History | None = None) -> Input:
    x = Input(value, ts, kind, f"c/f/gw/s/{kind}", "c/f/sensor:gw/s", ("c", "f", "gw"),
              history or History(), set())
    x.rule, x.params = rule, params or {}
    return x


def test_soil_water_values() -> None:
    p = {"field_capacity": 36.0, "wilting_point": 19.0}
    assert DERIVE["reading"](_x(21.6, _rule("reading"))) == 21.6
    assert DERIVE["relative_moisture"](_x(21.6, _rule("relative_moisture"), p)) == \
        pytest.approx(60.0)
    assert DERIVE["relative_moisture"](_x(21.6, _rule("relative_moisture"))) is None
    # FAO-56: (FC - VWC) / (FC - WP)
    assert DERIVE["depletion"](_x(26.65, _rule("depletion"), p)) == pytest.approx(55.0)
    assert DERIVE["depletion"](_x(26.0, _rule("depletion"), {"field_capacity": 19.0,
                                                             "wilting_point": 19.0})) is None
    assert DERIVE["depth_cm"](_x(40, _rule("depth_cm", kind="water_level"),
                                 {"gauge_span_cm": 20, "gauge_zero_cm": 3})) == pytest.approx(5)


def test_rolling_mean_and_rate_need_half_the_window() -> None:
    h = History()
    rule = _rule("rolling_mean", window="1h")
    rate = _rule("rate_per_h", window="1h")
    out = []
    for i, v in enumerate((80, 70, 60, 50)):      # every 15 min, -40 %/h
        x = _x(v, rule, ts=900.0 * i, history=h, kind="w")   # one reading, two rules
        mean = DERIVE["rolling_mean"](x)
        x.rule = rate
        out.append((mean, DERIVE["rate_per_h"](x)))
    assert out[0] == (None, None) and out[1] == (None, None)
    assert out[2][0] == pytest.approx(70) and out[2][1] == pytest.approx(-40)
    assert out[3][0] == pytest.approx(65) and out[3][1] == pytest.approx(-40)


def test_baseline_delta_uses_past_hours_and_needs_min_hours() -> None:
    h = History()
    rule = _rule("baseline_delta", kind="animal_body_temperature", window="10d")
    p = {"baseline_min_h": 3.0}
    vals = []
    for hour in range(4):
        x = _x(38.5, rule, p, ts=3600.0 * hour + 60, kind="animal_body_temperature", history=h)
        vals.append(DERIVE["baseline_delta"](x))
    assert vals[:3] == [None, None, None]
    assert vals[3] == pytest.approx(0.0)
    x = _x(39.4, rule, p, ts=3600.0 * 3 + 120, kind="animal_body_temperature", history=h)
    assert DERIVE["baseline_delta"](x) == pytest.approx(0.9)
    ratio = _rule("baseline_ratio", kind="animal_activity", window="10d")
    h2 = History()
    for hour in range(4):
        DERIVE["baseline_ratio"](_x(300, ratio, p, ts=3600.0 * hour, kind="a", history=h2))
    assert DERIVE["baseline_ratio"](_x(150, ratio, p, ts=3600.0 * 3 + 5, kind="a",
                                       history=h2)) == pytest.approx(50.0)


def test_thi_pairs_temperature_and_humidity_of_one_gateway() -> None:
    h = History()
    rule = Rule.model_validate({"id": "thi", "kind": ["air_temperature", "air_humidity"],
                                "value": "thi", "when": {"at_least": 72}, "template": "t"})
    assert DERIVE["thi"](_x(27, rule, kind="air_temperature", ts=0, history=h)) is None
    v = DERIVE["thi"](_x(70, rule, kind="air_humidity", ts=60, history=h))
    assert v == pytest.approx(0.8 * 27 + 0.7 * (27 - 14.4) + 46.4)
    # humidity more than 30 min older than the temperature: no pair
    assert DERIVE["thi"](_x(30, rule, kind="air_temperature", ts=60 + 1801, history=h)) is None
