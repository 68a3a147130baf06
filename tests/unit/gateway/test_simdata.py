"""The shared data generator: reproducible, realistic, bad values countable."""

from __future__ import annotations

import itertools
import statistics

from farmedge.contract import KINDS, encode_json, parse_telemetry
from farmedge.simdata import BAD_KINDS, DEFAULT_CHANNELS, SensorSim, make_farms

HOUR = 3_600_000
DAY = 24 * HOUR
# 2026-07-01 00:00 China Standard Time.
JULY = 1_782_835_200_000


def _payload(readings: list[dict[str, object]]) -> bytes:
    return encode_json(gateway="gw-1", seq=1, sent=JULY, clock="synced", readings=readings)


def test_same_seed_same_values_in_any_order() -> None:
    a = make_farms(seed=7, farms=2, sensors=11)
    b = make_farms(seed=7, farms=2, sensors=11)
    times = [JULY + i * 611_000 for i in range(200)]
    fwd = [a[1].gateways[0].round(t, bad_rate=0.05) for t in times]
    back = [b[1].gateways[0].round(t, bad_rate=0.05) for t in reversed(times)]
    assert fwd == list(reversed(back))
    other = make_farms(seed=8, farms=2, sensors=11)[1].gateways[0].round(times[0])
    assert other != fwd[0]


def test_every_kind_stays_valid_over_a_year() -> None:
    """Clean readings of every contract kind pass the contract for a whole year."""
    sims = [SensorSim(kind=k, sensor="s-1", farm="farm-001", seed=3) for k in KINDS]
    readings = [s.reading(JULY + h * 7 * HOUR, interval_ms=7 * HOUR).to_wire()
                for s in sims for h in range(0, 365 * 24 // 7)]
    for i in range(0, len(readings), 1000):
        parsed = parse_telemetry(_payload(readings[i:i + 1000]))
        assert parsed.rejected == []


def test_bad_values_are_marked_and_all_rejected() -> None:
    gw = make_farms(seed=1, farms=1, sensors=22)[0].gateways[0]
    rounds = [gw.round(JULY + i * 60_000, bad_rate=0.1) for i in range(200)]
    readings = [r for rnd in rounds for r in rnd]
    bad = [r for r in readings if r.bad]
    assert 0.08 < len(bad) / len(readings) < 0.12
    assert {r.bad for r in bad} == set(BAD_KINDS)
    parsed = parse_telemetry(_payload([r.to_wire() for r in readings[:1000]]))
    expected = [(i, r.expected_reject) for i, r in enumerate(readings[:1000]) if r.bad]
    assert [(x.index, x.reason) for x in parsed.rejected] == expected
    clean = [r for r in make_farms(seed=1, farms=1, sensors=22)[0].gateways[0].round(JULY)]
    assert all(r.bad is None for r in clean)


def test_soil_dries_faster_at_midday_and_jumps_after_irrigation() -> None:
    sims = [SensorSim(kind="soil_moisture", sensor=f"soil-{n}", farm="farm-001", seed=2)
            for n in range(1, 13)]
    day_loss, night_loss, jumps = [], [], 0
    for s in sims:
        for d in range(20):
            t = JULY + d * DAY
            v = [s.true_value(t + h * HOUR) for h in range(25)]
            # Between 10:00 and 14:00 against 22:00 to 02:00, dry days only.
            if all(b <= a + 1e-9 for a, b in itertools.pairwise(v)):
                day_loss.append(v[10] - v[14])
                night_loss.append(v[22] - v[24])
            jumps += any(b - a > 1.5 for a, b in itertools.pairwise(v))
    assert statistics.mean(day_loss) > 4 * statistics.mean(night_loss) > 0
    assert jumps >= 12  # irrigation or rain, every few days on every plot
    values = [s.true_value(JULY + h * HOUR) for s in sims for h in range(0, 60 * 24, 5)]
    # Between the wilting point and saturation of clay loam and loam (DOMAIN).
    assert min(values) > 14 and max(values) < 46


def test_cattle_temperature_around_38_5_with_drinking_drops_and_fevers() -> None:
    cows = [SensorSim(kind="animal_body_temperature", sensor=f"bolus-{n}", farm="farm-001",
                      seed=5, fever_rate=0.02) for n in range(30)]
    values = [c.true_value(JULY + m * 10 * 60_000) for c in cows for m in range(0, 6 * 30 * 24)]
    assert 38.2 < statistics.median(values) < 38.8
    assert min(values) < 37.0  # after drinking
    assert max(values) > 39.8  # a fever episode
    assert sum(v > 39.5 for v in values) / len(values) < 0.1


def test_trough_refills_and_battery_decays() -> None:
    trough = SensorSim(kind="water_level", sensor="trough-1", farm="farm-001", seed=1)
    levels = [trough.true_value(JULY + m * 15 * 60_000) for m in range(4 * 24 * 10)]
    assert max(levels) > 90 and min(levels) < 70
    assert any(b - a > 20 for a, b in itertools.pairwise(levels))
    batt = SensorSim(kind="battery_voltage", sensor="node-1", farm="farm-001", seed=1)
    assert batt.true_value(JULY + 30 * DAY) < batt.true_value(JULY)


def test_channels_and_ids() -> None:
    farms = make_farms(seed=0, county="c1", farms=3, gateways_per_farm=2, sensors=14)
    assert [f.farm for f in farms] == ["farm-001", "farm-002", "farm-003"]
    gw = farms[0].gateways[1]
    assert gw.gateway == "gw-001-2"
    assert gw.topic == "farm/v1/c1/farm-001/gw-001-2/telemetry"
    assert [s.kind for s in gw.sensors[:11]] == [k for _, k in DEFAULT_CHANNELS]
    assert gw.sensors[11].sensor == "g2-soil-2"
    bolus = gw.sensors[2]
    assert bolus.animal and bolus.animal.startswith("156") and len(bolus.animal) == 15
    # A round's readings each have their own, increasing time.
    ts = [r.ts for r in gw.round(JULY, interval_ms=1000)]
    assert ts == sorted(set(ts))
