"""Realistic, reproducible sensor values for simulated farms.

One generator shared by ``farmedge simulate``, the demo, the tests, the
benchmarks and the gateway agent's simulated driver. It imports only the wire
contract.

Every value is a pure function of ``(seed, county, farm, sensor, kind, time)``:
asking for the same sensor at the same epoch-millisecond gives the same value,
so simulated time can be fast-forwarded, replayed or sampled out of order.
Events that shape the series (rain, irrigation, drinking, fever episodes,
trough refills) are drawn per local day from the same seed.

The models are deliberately simple but keep the shapes that alert rules and
dashboards care about; the numbers come from /work/shared/DOMAIN.md (cited as
"DOMAIN" beside each default) and describe Northeast China (black soil, maize
and soybean, cattle; local time UTC+8).

- soil moisture (volumetric water content, %): dries towards the wilting point
  with evapotranspiration that peaks at midday, jumps up after irrigation and
  rain, drains back to field capacity; per-probe calibration offsets.
- soil temperature: seasonal mean plus a damped, lagged diurnal cycle.
- soil EC rises with moisture; soil pH and N/P/K are steady per probe.
- air temperature and humidity: seasonal and diurnal cycles, day-to-day
  weather anomalies, humid while it rains; rainfall from rain events.
- cattle body temperature (rumen bolus): around 38.5 °C with a per-animal
  baseline, a small diurnal cycle, drops after drinking that recover within
  about 100 minutes, and occasional fever episodes.
- activity (steps/h): day/night pattern, lower during fever, oestrus peaks.
- water trough level: falls while the herd drinks, refilled twice a day; now
  and then a refill is missed.
- battery voltage: slow decay, a few weak cells decay faster.

Bad values are injected at a configurable rate (a spike out of the physical
range, a DS18B20 85 °C power-on or −127 °C disconnected glitch, a wrong
unit). They are marked on :class:`SimReading` (``bad``, ``expected_reject``)
so tests can count them; every one of them is rejected by the contract.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from dataclasses import dataclass, field
from typing import Any

from farmedge.contract import KINDS, Kind

__all__ = [
    "BAD_KINDS",
    "DEFAULT_CHANNELS",
    "EPISODE_FEVER_C",
    "Episode",
    "FarmSim",
    "GatewaySim",
    "SensorSim",
    "SimReading",
    "make_farms",
]

_HOUR = 3_600_000
_DAY = 24 * _HOUR
# Local civil time of Northeast China (China Standard Time, UTC+8).
_TZ = 8 * _HOUR
# 2000-01-01 in days since the epoch, to count days of the year.
_DAY_2000 = 10957

# Kinds of bad value and the reason the contract rejects each with.
BAD_KINDS: dict[str, str] = {
    "spike": "out_of_range",
    "ds18b20_85": "out_of_range",
    "ds18b20_disconnected": "out_of_range",
    "wrong_unit": "unknown_unit",
}
_TEMPERATURE_KINDS = frozenset({"soil_temperature", "air_temperature", "animal_body_temperature"})
_WRONG_UNITS = ("raw", "counts", "kPa", "ohm", "mA", "bar")

# What each device of a gateway reports, in order: ``--sensors M`` takes the
# first M channels (then the list repeats with the next device numbers). The
# first three are the ones the demo shows per farm.
DEFAULT_CHANNELS: tuple[tuple[str, str], ...] = (
    ("soil", "soil_moisture"),
    ("soil", "soil_temperature"),
    ("bolus", "animal_body_temperature"),
    ("soil", "soil_ec"),
    ("wx", "air_temperature"),
    ("wx", "air_humidity"),
    ("wx", "rainfall"),
    ("collar", "animal_activity"),
    ("trough", "water_level"),
    ("soil", "soil_ph"),
    ("node", "battery_voltage"),
)

# Resolution a real device reports with (DOMAIN "Probe scaling": moisture and
# temperature x0.1, EC x1, pH x0.01; a tipping-bucket gauge tips per 0.2 mm).
_RESOLUTION: dict[str, float] = {
    "soil_moisture": 0.1, "soil_temperature": 0.1, "soil_ec": 1.0, "soil_ph": 0.01,
    "soil_nitrogen": 1.0, "soil_phosphorus": 1.0, "soil_potassium": 1.0,
    "air_temperature": 0.1, "air_humidity": 0.1, "rainfall": 0.2,
    "animal_body_temperature": 0.01, "animal_activity": 1.0, "animal_presence": 1.0,
    "water_level": 0.1, "battery_voltage": 0.001,
}
_NOISE: dict[str, float] = {
    "soil_moisture": 0.25, "soil_temperature": 0.08, "soil_ph": 0.03,
    "air_temperature": 0.1, "air_humidity": 0.6, "animal_body_temperature": 0.05,
    "water_level": 0.4, "battery_voltage": 0.004,
}


def _rng(*parts: object) -> random.Random:
    """A generator seeded by ``parts``: the same parts always give the same draws
    (seeding from a string hashes it with SHA-512, independent of PYTHONHASHSEED)."""
    return random.Random("|".join(map(str, parts)))


_MASK = (1 << 64) - 1


def _key64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class _Draws:
    """Cheap counter-based draws for per-reading noise: a SplitMix64 hash of
    (key, ts, n), so a reading's noise is a pure function of its sensor and
    time without seeding a new random.Random for every reading."""

    __slots__ = ("n", "state")

    def __init__(self, key: int, ts: int) -> None:
        self.state = (key ^ (ts * 0x9E3779B97F4A7C15)) & _MASK
        self.n = 0

    def random(self) -> float:
        self.n += 1
        z = (self.state + self.n * 0x9E3779B97F4A7C15) & _MASK
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        z ^= z >> 31
        return (z >> 11) / 9007199254740992.0

    def gauss(self, mu: float, sigma: float) -> float:
        u1 = self.random() or 1e-12
        return mu + sigma * math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * self.random())

    def choice(self, seq: list[str]) -> str:
        return seq[int(self.random() * len(seq))]

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.random()


def _local_day(ts: int) -> int:
    return (ts + _TZ) // _DAY


def _local_hour(ts: int) -> float:
    return ((ts + _TZ) % _DAY) / _HOUR


def _day_start(day: int) -> int:
    """Epoch ms of local midnight of ``day``."""
    return day * _DAY - _TZ


def _season(ts: int) -> float:
    """-1 in mid-January .. +1 in mid-July (annual cycle, peak about 20 July)."""
    doy = ((ts + _TZ) / _DAY - _DAY_2000) % 365.2425
    return math.sin(2 * math.pi * (doy - 110) / 365.2425)


def _diurnal(hour: float, peak: float) -> float:
    """A cosine day cycle: +1 at ``peak`` o'clock, -1 twelve hours later."""
    return math.cos(2 * math.pi * (hour - peak) / 24)


# Evapotranspiration through the day: 10 % spread over the whole day, 90 % as
# a half-sine between 06:00 and 18:00 (so soil dries fastest at midday). The
# integral over one day is 1.
_ET_A = 0.1 / 24
_ET_B = 0.9 * math.pi / 24


def _et_fraction(hour: float) -> float:
    if hour <= 6:
        g = 0.0
    elif hour >= 18:
        g = 24 / math.pi
    else:
        g = (12 / math.pi) * (1 - math.cos(math.pi * (hour - 6) / 12))
    return _ET_A * hour + _ET_B * g


def _et_days(ts: int) -> float:
    """Cumulative evapotranspiration demand in days of average demand."""
    return _local_day(ts) + _et_fraction(_local_hour(ts))


# --- farm weather -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Rain:
    start: int
    end: int
    mm: float

    @property
    def mid(self) -> int:
        return (self.start + self.end) // 2


@functools.lru_cache(maxsize=4096)
def _rain_events(key: str, day: int) -> tuple[_Rain, ...]:
    # Northeast China gets most of its rain in summer: about a third of July
    # days are wet, one in ten in winter (climatology, not from DOMAIN).
    r = _rng(key, "rain", day)
    p = 0.2 + 0.13 * _season(_day_start(day) + 12 * _HOUR)
    events: list[_Rain] = []
    for _ in range(2):
        if r.random() < p / 2 + 0.05:
            start = _day_start(day) + int(r.uniform(0, 24) * _HOUR)
            dur = int(r.uniform(0.5, 6) * _HOUR)
            mm = round(min(80.0, r.expovariate(1 / 8.0)) + 0.4, 1)
            events.append(_Rain(start, start + dur, mm))
    return tuple(sorted(events, key=lambda e: e.start))


@functools.lru_cache(maxsize=4096)
def _anomaly_at_day(key: str, day: int) -> float:
    return _rng(key, "anomaly", day).gauss(0, 3.0)


class _Weather:
    """Weather of one farm: rain events, day-to-day anomalies."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def rains(self, t0: int, t1: int) -> list[_Rain]:
        """Rain events that overlap (t0, t1]."""
        out: list[_Rain] = []
        for d in range(_local_day(t0) - 1, _local_day(t1) + 1):
            out.extend(e for e in _rain_events(self.key, d) if e.end > t0 and e.start <= t1)
        return out

    def rain_mm(self, t0: int, t1: int) -> float:
        """Rain that fell in (t0, t1], spread evenly over each event."""
        total = 0.0
        for e in self.rains(t0, t1):
            overlap = min(t1, e.end) - max(t0, e.start)
            if overlap > 0:
                total += e.mm * overlap / (e.end - e.start)
        return total

    def raining(self, ts: int) -> bool:
        return any(e.start <= ts < e.end for e in self.rains(ts - 1, ts))

    def anomaly(self, ts: int) -> float:
        """Day-to-day temperature anomaly, °C, interpolated between local noons."""
        x = (ts + _TZ - _DAY // 2) / _DAY
        d = math.floor(x)
        f = x - d
        return (1 - f) * _anomaly_at_day(self.key, d) + f * _anomaly_at_day(self.key, d + 1)

    def air_temperature(self, ts: int) -> float:
        # Harbin-like climate: July mean about 24 °C, January about -16 °C;
        # the day's range is about 10 °C, warmest at 14:30.
        amp = 5.0 + 1.0 * _season(ts)
        return (4.5 + 20.0 * _season(ts) + self.anomaly(ts)
                + amp * _diurnal(_local_hour(ts), 14.5))

    def air_humidity(self, ts: int) -> float:
        if self.raining(ts):
            return 96.0
        rh = 68.0 + 8.0 * _season(ts) - 18.0 * _diurnal(_local_hour(ts), 14.5)
        rh -= 1.5 * self.anomaly(ts)
        return min(100.0, max(12.0, rh))


@functools.lru_cache(maxsize=1024)
def _weather(seed: int, county: str, farm: str) -> _Weather:
    return _Weather(f"{seed}|{county}|{farm}")


# --- soil ---------------------------------------------------------------


class _Plot:
    """The soil around one probe: field capacity, wilting point, irrigation."""

    __slots__ = ("depth_lag", "ec_base", "fc", "irr_hour", "irr_period", "irr_phase", "k",
                 "key", "npk", "offset", "ph", "weather", "wp")

    def __init__(self, key: str, weather: _Weather) -> None:
        r = _rng(key, "plot")
        self.key = key
        self.weather = weather
        # DOMAIN "Clay-loam FC / WP": 0.36 / 0.17-0.22; "Loam FC / WP":
        # 0.28-0.31 / 0.14 m³/m³.
        if r.random() < 0.6:
            self.fc, self.wp = 36.0, r.uniform(17.0, 22.0)
        else:
            self.fc, self.wp = r.uniform(28.0, 31.0), 14.0
        # Drying rate towards the wilting point, per day of average demand:
        # about 2.5 %VWC a day when wet (maize ET ≈ 5 mm/day over the 0-20 cm
        # layer of DOMAIN "Relative-moisture drought grades"; derived).
        self.k = r.uniform(0.12, 0.18)
        # Irrigated every few days in the morning; most plots stay above the
        # maize trigger of 25.5 %VWC (DOMAIN "Irrigation trigger VWC"), the
        # ones on a long period dip below it, one in ten is neglected and
        # reaches light drought (< 60 % FC, DOMAIN).
        self.irr_period = r.choice((4, 5, 6, 7, 8, 9)) if r.random() < 0.9 else 14
        self.irr_phase = r.randrange(self.irr_period)
        self.irr_hour = r.uniform(6.0, 9.0)
        # Probes differ by calibration and placement.
        self.offset = r.gauss(0, 1.2)
        self.depth_lag = r.uniform(0.5, 2.5)
        # Black soil: bulk EC a few hundred µS/cm, pH 5.6-7.1, steady N/P/K.
        self.ec_base = r.uniform(250, 850)
        self.ph = r.uniform(5.6, 7.1)
        self.npk = {"soil_nitrogen": r.uniform(60, 220), "soil_phosphorus": r.uniform(8, 45),
                    "soil_potassium": r.uniform(90, 260)}

    def _last_irrigation(self, ts: int) -> int:
        day = _local_day(ts)
        for d in range(day, day - 3 * self.irr_period - 1, -1):
            if (d + self.irr_phase) % self.irr_period:
                continue
            t = _day_start(d) + int(self.irr_hour * _HOUR)
            if t > ts:
                continue
            # No irrigation the morning after 15 mm of rain or more.
            if self.weather.rain_mm(t - 2 * _DAY, t) >= 15.0:
                continue
            return t
        return _day_start(day - 3 * self.irr_period)

    def moisture(self, ts: int) -> float:
        """Volumetric water content, % (before the probe's offset and noise)."""
        t = self._last_irrigation(ts)
        # Flood irrigation fills the layer past field capacity; the excess
        # drains within hours.
        base, excess = self.fc, 3.0
        for rain in self.weather.rains(t, ts):
            if rain.mid <= t or rain.mid > ts:
                continue
            base, excess = self._decay(base, excess, t, rain.mid)
            t = rain.mid
            # 1 mm of rain over a 200 mm layer is 0.5 %VWC; 80 % soaks in.
            base += 0.4 * rain.mm
            if base > self.fc:
                excess = min(8.0, excess + base - self.fc)
                base = self.fc
        base, excess = self._decay(base, excess, t, ts)
        return base + excess

    def _decay(self, base: float, excess: float, t0: int, t1: int) -> tuple[float, float]:
        demand = _et_days(t1) - _et_days(t0)
        base = self.wp + (base - self.wp) * math.exp(-self.k * demand)
        excess *= math.exp(-(t1 - t0) / (6 * _HOUR))
        return base, excess

    def temperature(self, ts: int) -> float:
        # 5-10 cm soil: seasonal mean -10..22 °C (snow keeps winter soil milder
        # than air), a diurnal swing of up to ±3 °C peaking mid-afternoon.
        amp = 2.0 + 1.2 * _season(ts)
        return (6.0 + 16.0 * _season(ts) + 0.3 * self.weather.anomaly(ts)
                + amp * _diurnal(_local_hour(ts), 14.5 + self.depth_lag))


@functools.lru_cache(maxsize=8192)
def _plot(key: str, weather: _Weather) -> _Plot:
    return _Plot(key, weather)


# --- livestock ----------------------------------------------------------


@functools.lru_cache(maxsize=16384)
def _drinks(key: str, day: int) -> tuple[tuple[int, float], ...]:
    # A cow drinks several times a day, mostly in daylight; a rumen bolus then
    # reads about 2.3 ± 1.8 °C low (DOMAIN "Rumen bolus").
    r = _rng(key, "drinks", day)
    out = []
    for _ in range(r.randint(4, 8)):
        hour = min(23.9, max(0.0, r.gauss(13, 4)))
        drop = min(6.0, max(0.4, r.gauss(2.3, 1.0)))
        out.append((_day_start(day) + int(hour * _HOUR), drop))
    return tuple(sorted(out))


@functools.lru_cache(maxsize=16384)
def _fever(key: str, day: int, rate: float) -> tuple[int, int, float] | None:
    r = _rng(key, "fever", day)
    if r.random() >= rate:
        return None
    start = _day_start(day) + int(r.uniform(0, 24) * _HOUR)
    length = int(r.uniform(1.0, 4.0) * _DAY)
    # Peak 1.2-2.2 °C over baseline: mild fever ≥ 39.5 °C, BRD case ≥ 40 °C
    # (DOMAIN "Cattle temperature").
    return start, start + length, r.uniform(1.2, 2.2)


class _Animal:
    """One cow: her own baseline, drinking, fever episodes, oestrus."""

    __slots__ = ("activity_day", "activity_night", "baseline", "cycle_phase", "cycling",
                 "fever_rate", "key")

    def __init__(self, key: str, fever_rate: float) -> None:
        r = _rng(key, "animal")
        self.key = key
        self.fever_rate = fever_rate
        # Normal 37.8-39.2 °C, mean 38.5 °C (DOMAIN "Cattle temperature").
        self.baseline = min(39.0, max(38.0, r.gauss(38.5, 0.2)))
        self.activity_day = r.uniform(250, 520)
        self.activity_night = r.uniform(40, 110)
        self.cycling = r.random() < 0.5
        self.cycle_phase = r.randrange(21 * _DAY)

    def fever(self, ts: int) -> float:
        """Fever over baseline, °C: rises over 6 h, falls over the last 12 h."""
        day = _local_day(ts)
        worst = 0.0
        for d in range(day - 5, day + 1):
            ep = _fever(self.key, d, self.fever_rate)
            if ep is None or not (ep[0] <= ts < ep[1]):
                continue
            start, end, peak = ep
            rise = min(1.0, (ts - start) / (6 * _HOUR))
            fall = min(1.0, (end - ts) / (12 * _HOUR))
            worst = max(worst, peak * min(rise, fall))
        return worst

    def body_temperature(self, ts: int, *, bolus: bool = True) -> float:
        t = self.baseline + 0.25 * _diurnal(_local_hour(ts), 18.0) + self.fever(ts)
        if bolus:
            # Cold water in the rumen: recovers with a 30 min time constant,
            # so within about 100 min (DOMAIN "Rumen bolus").
            day = _local_day(ts)
            for d in (day - 1, day):
                for when, drop in _drinks(self.key, d):
                    if when <= ts < when + 4 * _HOUR:
                        t -= drop * math.exp(-(ts - when) / (30 * 60_000))
        return t

    def activity(self, ts: int) -> float:
        h = _local_hour(ts)
        day_share = max(0.0, math.sin(math.pi * (h - 5) / 15)) if 5 <= h <= 20 else 0.0
        steps = self.activity_night + (self.activity_day - self.activity_night) * day_share
        if self.fever(ts) > 0.5:
            steps *= 0.6  # sick animals move less (DOMAIN "Activity/rumination alert lead")
        if self.cycling and (ts + self.cycle_phase) % (21 * _DAY) < 12 * _HOUR:
            steps *= 2.5  # oestrus every 21 days
        return steps


# --- water and power ----------------------------------------------------


@functools.lru_cache(maxsize=16384)
def _missed_refill(key: str, day: int, hour: float) -> bool:
    # One refill in twenty is missed: the level then falls towards the 20 %
    # trough-low alarm (DOMAIN "Water alerts").
    return _rng(key, "missed", day, hour).random() < 0.05


class _Trough:
    """A trough filled at 07:00 and 17:00; the herd drains it in daylight."""

    __slots__ = ("full", "key", "rate", "refills")

    def __init__(self, key: str) -> None:
        r = _rng(key, "trough")
        self.key = key
        self.full = r.uniform(92, 98)
        self.rate = r.uniform(4.0, 7.5)  # % of height per hour at midday
        self.refills = (7.0, 17.0)

    def _missed(self, day: int, hour: float) -> bool:
        return _missed_refill(self.key, day, hour)

    def _last_refill(self, ts: int) -> int:
        day = _local_day(ts)
        for d in range(day, day - 4, -1):
            for hour in reversed(self.refills):
                t = _day_start(d) + int(hour * _HOUR)
                if t <= ts and not self._missed(d, hour):
                    return t
        return _day_start(day - 4)

    def _use(self, t0: int, t1: int) -> float:
        # Drinking follows the day: reuse the evapotranspiration curve.
        return self.rate * 24 * (_et_days(t1) - _et_days(t0)) * 0.55

    def level(self, ts: int) -> float:
        return max(1.5, self.full - self._use(self._last_refill(ts), ts))


# Battery ages are counted from this day (2026-01-01 UTC).
_BATTERY_EPOCH = 1_767_225_600_000


class _Battery:
    __slots__ = ("installed", "rate", "start")

    def __init__(self, key: str) -> None:
        r = _rng(key, "battery")
        self.start = r.uniform(4.05, 4.18)  # a charged Li-ion cell
        self.installed = _BATTERY_EPOCH + int(r.uniform(0, 300) * _DAY)
        # Most cells lose a few mV a day; one in eight is weak.
        self.rate = r.uniform(0.002, 0.006) if r.random() > 0.125 else r.uniform(0.02, 0.04)

    def voltage(self, ts: int) -> float:
        days = max(0.0, (ts - self.installed) / _DAY) % 365  # replaced once a year
        return max(3.0, self.start - self.rate * days)


# --- public API ---------------------------------------------------------

#: Fever of an :class:`Episode` cow over her baseline, °C: 38.5 + 2.0 is past
#: the BRD case definition of 40 °C (DOMAIN "Cattle temperature").
EPISODE_FEVER_C = 2.0


@dataclass(frozen=True, slots=True)
class Episode:
    """A farm problem that develops in seconds instead of days, for a demo.

    Off by default (``SensorSim.episode`` is None): nothing else changes the
    model. From ``start_ms`` a soil probe's plot is neither irrigated nor
    rained on and dries out, 95 % of the way to its wilting point (or to half
    its field capacity when that is lower) within ``develop_s``; a bolus's or
    collar's cow runs a fever rising to :data:`EPISODE_FEVER_C` over her
    baseline within ``develop_s`` and staying there, drinking nothing (so no
    drinking dips in the bolus readings) and moving less. Still a pure
    function of the time.
    """

    start_ms: int
    develop_s: float = 20.0

    def progress(self, ts: int) -> float:
        """0 before ``start_ms``, rising to 1 after ``develop_s``."""
        if ts <= self.start_ms:
            return 0.0
        return min(1.0, (ts - self.start_ms) / max(1.0, self.develop_s * 1000))


@dataclass(frozen=True, slots=True)
class SimReading:
    """One simulated reading. ``bad`` names an injected fault (else None) and
    ``expected_reject`` the reason the contract rejects it with."""

    sensor: str
    kind: str
    ts: int
    value: float | int
    unit: str
    animal: str | None = None
    bad: str | None = None

    @property
    def expected_reject(self) -> str | None:
        return BAD_KINDS[self.bad] if self.bad else None

    def to_wire(self) -> dict[str, Any]:
        """The reading as wire contract v1 JSON (``quality`` left at its default)."""
        d: dict[str, Any] = {"sensor": self.sensor, "kind": self.kind, "ts": self.ts,
                             "value": self.value, "unit": self.unit}
        if self.animal is not None:
            d["animal"] = self.animal
        return d


def _animal_id(seed: int, county: str, farm: str, index: int) -> str:
    # An ISO 11784 animal number: 3-digit country code (156 = China) and a
    # 12-digit national id (DOMAIN "ISO 11784 ID").
    r = _rng(seed, county, farm, "animal-id", index)
    return f"156{r.randrange(10**12):012d}"


@dataclass(frozen=True)
class SensorSim:
    """One channel (a sensor id and a kind) of a simulated farm.

    Everything is derived from the constructor arguments: two SensorSims made
    with the same arguments give the same readings. Readings of one device
    (for example a soil probe's moisture, temperature and EC) share their
    ``sensor`` id and their physical model.
    """

    kind: str
    sensor: str
    farm: str
    county: str = "demo"
    gateway: str = ""
    seed: int = 0
    animal: str | None = None
    fever_rate: float = 0.01  # fever episodes starting per animal per day
    #: A demo's accelerated problem on this device (default: none).
    episode: Episode | None = None
    _kind: Kind = field(init=False, repr=False, compare=False)
    _model: Any = field(init=False, repr=False, compare=False)
    _noise_key: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        kind = KINDS.get(self.kind)
        if kind is None:
            raise ValueError(f"kind {self.kind!r} is not in the contract")
        object.__setattr__(self, "_kind", kind)
        weather = _weather(self.seed, self.county, self.farm)
        dev = f"{self.seed}|{self.county}|{self.farm}|{self.sensor}"
        model: Any
        if self.kind in {"air_temperature", "air_humidity", "rainfall"}:
            model = weather
        elif self.kind.startswith("soil_"):
            model = _plot(dev, weather)
        elif self.kind.startswith("animal_"):
            model = _Animal(f"{self.seed}|{self.county}|{self.farm}|"
                            f"{self.animal or self.sensor}", self.fever_rate)
        elif self.kind == "water_level":
            model = _Trough(dev)
        elif self.kind == "battery_voltage":
            model = _Battery(dev)
        else:
            model = None
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_noise_key", _key64(f"{dev}|{self.kind}"))

    @property
    def unit(self) -> str:
        return self._kind.unit

    def soil_constants(self) -> tuple[float, float] | None:
        """(field capacity, wilting point) in %VWC of a soil sensor's plot,
        as a registry would list them; None for other kinds."""
        if isinstance(self._model, _Plot):
            return round(self._model.fc, 1), round(self._model.wp, 1)
        return None

    def true_value(self, ts: int, *, interval_ms: int = 60_000) -> float:
        """The physical quantity at ``ts`` in the kind's unit, without sensor noise.
        ``interval_ms`` is the time since the previous reading (for rainfall)."""
        m = self._model
        k = self.kind
        if self.episode is not None and ts > self.episode.start_ms:
            v = self._episode_value(ts)
            if v is not None:
                return v
        if k == "soil_moisture":
            return float(m.moisture(ts) + m.offset)
        if k == "soil_temperature":
            return float(m.temperature(ts))
        if k == "soil_ec":
            # Bulk EC rises with the water in the soil.
            return float(m.ec_base * (max(m.moisture(ts), 1.0) / m.fc) ** 1.5)
        if k == "soil_ph":
            return float(m.ph)
        if k in {"soil_nitrogen", "soil_phosphorus", "soil_potassium"}:
            return float(m.npk[k])
        if k == "air_temperature":
            return float(m.air_temperature(ts))
        if k == "air_humidity":
            return float(m.air_humidity(ts))
        if k == "rainfall":
            return float(m.rain_mm(ts - interval_ms, ts))
        if k == "animal_body_temperature":
            return float(m.body_temperature(ts))
        if k == "animal_activity":
            return float(m.activity(ts))
        if k == "animal_presence":
            return float(int(_Draws(self._noise_key, ts // _HOUR).random() * 4))
        if k == "water_level":
            return float(m.level(ts))
        if k == "battery_voltage":
            return float(m.voltage(ts))
        return (self._kind.low + self._kind.high) / 2

    def _episode_value(self, ts: int) -> float | None:
        """The value under :attr:`episode` (after its start), None for kinds
        it does not change."""
        assert self.episode is not None
        m = self._model
        k = self.kind
        x = self.episode.progress(ts)
        if k in ("soil_moisture", "soil_ec"):
            start = m.moisture(self.episode.start_ms)
            floor = min(m.wp, 0.5 * m.fc)
            x = (ts - self.episode.start_ms) / max(1.0, self.episode.develop_s * 1000)
            theta = floor + (start - floor) * math.exp(-3.0 * x)
            if k == "soil_moisture":
                return float(theta + m.offset)
            return float(m.ec_base * (max(theta, 1.0) / m.fc) ** 1.5)
        if k == "animal_body_temperature":
            extra = max(0.0, EPISODE_FEVER_C * x - m.fever(ts))
            return float(m.body_temperature(ts, bolus=False) + extra)
        if k == "animal_activity":
            steps = float(m.activity(ts))
            if EPISODE_FEVER_C * x > 0.5 and m.fever(ts) <= 0.5:
                steps *= 0.6
            return steps
        return None

    def reading(self, ts: int, *, interval_ms: int = 60_000, bad_rate: float = 0.0
                ) -> SimReading:
        """The reading the sensor reports at ``ts``: true value, sensor noise,
        device resolution; with probability ``bad_rate`` an injected fault."""
        kind = self._kind
        r = _Draws(self._noise_key, ts)
        if bad_rate > 0 and r.random() < bad_rate:
            return self._bad(ts, r)
        value = self.true_value(ts, interval_ms=interval_ms)
        sigma = _NOISE.get(self.kind)
        if sigma:
            value += r.gauss(0, sigma)
        elif self.kind in {"soil_ec", "animal_activity"} or self.kind.startswith("soil_"):
            value *= 1 + r.gauss(0, 0.03)
        res = _RESOLUTION.get(self.kind, 0.01)
        if self.kind == "rainfall":
            value = math.floor(value / res + 1e-9) * res  # whole bucket tips
        value = min(kind.high, max(kind.low, value))
        out: float | int
        if res >= 1:
            out = round(value)
        else:
            digits = max(0, -math.floor(math.log10(res) + 1e-9))
            out = round(value, digits)
        return SimReading(self.sensor, self.kind, ts, out, kind.unit, self.animal)

    def _bad(self, ts: int, r: _Draws) -> SimReading:
        kind = self._kind
        choices = ["spike", "wrong_unit"]
        if self.kind in _TEMPERATURE_KINDS:
            choices += ["ds18b20_85", "ds18b20_disconnected"] * 2
        bad = r.choice(choices)
        unit = kind.unit
        value: float
        if bad == "ds18b20_85":
            value = 85.0  # DOMAIN "DS18B20": 85000 m°C is the power-on value
        elif bad == "ds18b20_disconnected":
            value = -127.0  # DOMAIN "DS18B20": -127 means disconnected
        elif bad == "spike":
            span = kind.high - kind.low
            if r.random() < 0.5 or kind.low <= -1000:
                value = round(kind.high + span * r.uniform(0.2, 2.0) + 1, 1)
            else:
                value = round(kind.low - span * r.uniform(0.2, 1.0) - 1, 1)
        else:
            accepted = set(kind.aliases) | {kind.unit}
            unit = r.choice([u for u in _WRONG_UNITS if u not in accepted])
            value = round(self.true_value(ts), 2)
        return SimReading(self.sensor, self.kind, ts, value, unit, self.animal, bad)


@dataclass(frozen=True)
class GatewaySim:
    """One simulated gateway and the channels it reads each round."""

    county: str
    farm: str
    gateway: str
    sensors: tuple[SensorSim, ...]

    @property
    def topic(self) -> str:
        from farmedge.contract import telemetry_topic

        return telemetry_topic(self.county, self.farm, self.gateway)

    def round(self, ts: int, *, interval_ms: int = 60_000, bad_rate: float = 0.0
              ) -> list[SimReading]:
        """One sampling round starting at ``ts``. Sensors are read one after the
        other (a 7-register Modbus read takes about 56 ms, DOMAIN), so each
        channel has its own ``ts``, all before the next round."""
        step = self._step(interval_ms)
        return [s.reading(ts + i * step, interval_ms=interval_ms, bad_rate=bad_rate)
                for i, s in enumerate(self.sensors)]

    def _step(self, interval_ms: int) -> int:
        return min(60, interval_ms // max(1, len(self.sensors)))

    def round_span(self, interval_ms: int = 60_000) -> int:
        """Milliseconds from a round's first reading to its last."""
        return self._step(interval_ms) * (len(self.sensors) - 1)


@dataclass(frozen=True)
class FarmSim:
    county: str
    farm: str
    gateways: tuple[GatewaySim, ...]


def _channels(count: int, channels: tuple[tuple[str, str], ...]) -> list[tuple[str, str, int]]:
    """(device prefix, kind, device number) for the first ``count`` channels."""
    out: list[tuple[str, str, int]] = []
    n = 0
    while len(out) < count:
        n += 1
        for prefix, kind in channels:
            if len(out) == count:
                break
            out.append((prefix, kind, n))
    return out


def make_farms(*, seed: int = 0, county: str = "demo", farms: int = 3,
               gateways_per_farm: int = 1, sensors: int = 6,
               channels: tuple[tuple[str, str], ...] = DEFAULT_CHANNELS,
               fever_rate: float = 0.01, first_farm: int = 1) -> list[FarmSim]:
    """``farms`` farms named ``farm-001``... (numbered from ``first_farm``),
    each with ``gateways_per_farm`` gateways (``gw-001-1``...) reading
    ``sensors`` channels each. A farm's values do not depend on which other
    farms are made with it.

    Channel ids are unique within a farm: a soil probe of the second gateway
    of a farm is ``g2-soil-1``. Boluses and collars with the same number on
    one gateway belong to the same cow.
    """
    out: list[FarmSim] = []
    for f in range(first_farm, first_farm + farms):
        farm = f"farm-{f:03d}"
        gws: list[GatewaySim] = []
        for g in range(1, gateways_per_farm + 1):
            gw = f"gw-{f:03d}-{g}"
            prefix = "" if g == 1 else f"g{g}-"
            sims = []
            for dev, kind, n in _channels(sensors, channels):
                animal = None
                if dev in {"bolus", "collar"}:
                    animal = _animal_id(seed, county, farm, (g - 1) * 1000 + n)
                sims.append(SensorSim(kind=kind, sensor=f"{prefix}{dev}-{n}", farm=farm,
                                      county=county, gateway=gw, seed=seed, animal=animal,
                                      fever_rate=fever_rate))
            gws.append(GatewaySim(county, farm, gw, tuple(sims)))
        out.append(FarmSim(county, farm, tuple(gws)))
    return out
