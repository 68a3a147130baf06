"""farmedge.simdata's demo episodes: off by default, and when on, a dry
plot and a fevered cow within seconds, still a pure function of the time."""

from __future__ import annotations

from farmedge.simdata import EPISODE_FEVER_C, Episode, SensorSim

T0 = 1_796_000_000_000  # a winter morning: the plain model brings neither problem


def _pair(kind: str, sensor: str, **kw: object) -> tuple[SensorSim, SensorSim]:
    plain = SensorSim(kind=kind, sensor=sensor, farm="farm-001", seed=0, **kw)  # type: ignore[arg-type]
    ep = SensorSim(kind=kind, sensor=sensor, farm="farm-001", seed=0,
                   episode=Episode(T0, 20.0), **kw)  # type: ignore[arg-type]
    return plain, ep


def test_nothing_changes_before_the_episode_starts() -> None:
    for kind, sensor in (("soil_moisture", "soil-1"), ("soil_ec", "soil-1"),
                         ("animal_body_temperature", "bolus-1"), ("air_temperature", "wx-1")):
        plain, ep = _pair(kind, sensor, animal="156000000000001")
        for ts in (T0 - 3_600_000, T0 - 1000, T0):
            assert ep.reading(ts, bad_rate=0.05) == plain.reading(ts, bad_rate=0.05)
        # Kinds the episode does not touch stay as they were after it too.
        if kind == "air_temperature":
            assert ep.reading(T0 + 60_000) == plain.reading(T0 + 60_000)


def test_the_plot_dries_out_within_develop_s() -> None:
    plain, ep = _pair("soil_moisture", "soil-1")
    fc, wp = ep.soil_constants()  # type: ignore[misc]
    start = plain.true_value(T0)
    after = ep.true_value(T0 + 20_000)
    assert after < start
    floor = min(wp, 0.5 * fc)
    assert after - floor <= 0.06 * (start - floor) + 1e-9  # 95 % of the way
    assert after / fc < 0.6 + 0.05  # light drought by GB/T 32136 (probe offset aside)
    assert ep.true_value(T0 + 20_000) == after  # a pure function of the time
    # Wetter soil conducts better: EC falls with it.
    _, ec = _pair("soil_ec", "soil-1")
    assert ec.true_value(T0 + 20_000) < ec.true_value(T0)


def test_the_cow_runs_a_fever_within_develop_s() -> None:
    plain, ep = _pair("animal_body_temperature", "bolus-1", animal="156000000000001")
    for ts in (T0 + 20_000, T0 + 60_000, T0 + 3_600_000):
        assert ep.true_value(ts) >= 38.0 + EPISODE_FEVER_C - 0.3  # past 39.5, about 40
        assert ep.true_value(ts) > plain.true_value(ts)
    half = ep.true_value(T0 + 10_000)
    assert plain.true_value(T0 + 10_000) < half < ep.true_value(T0 + 20_000) + 0.3
