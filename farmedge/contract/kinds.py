"""Reading kinds: canonical units, accepted unit aliases and physical ranges.
Where each kind lands in InfluxDB is the storage's business
(farmedge/storage/schema.py, ``KIND_POINTS``).

Units are part of the contract. A reading in a known alias is converted to the
canonical unit; a reading in any other unit is rejected, never guessed. A value
outside the physical range of its kind (after conversion) is rejected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dc_field

from .errors import ContractError

__all__ = ["KINDS", "Kind", "RangeError", "UnitError", "normalize"]


class UnitError(ContractError):
    """A unit the contract does not know for this kind."""


class RangeError(ContractError):
    """A value outside the physical range of its kind."""


Converter = Callable[[float], float]


def _same(x: float) -> float:
    return x


def _f_to_c(x: float) -> float:
    return (x - 32.0) * 5.0 / 9.0


def _k_to_c(x: float) -> float:
    return x - 273.15


def _scale(k: float) -> Converter:
    def conv(x: float) -> float:
        return x * k

    return conv


_CELSIUS: dict[str, Converter] = {
    "degC": _same, "°C": _same, "℃": _same, "C": _same, "celsius": _same, "Celsius": _same,
    "degF": _f_to_c, "°F": _f_to_c, "℉": _f_to_c, "F": _f_to_c, "fahrenheit": _f_to_c,
    "K": _k_to_c, "kelvin": _k_to_c,
}


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    unit: str
    low: float
    high: float
    aliases: dict[str, Converter] = dc_field(default_factory=dict, repr=False)
    description: str = ""

    def convert(self, value: float, unit: str) -> float:
        """Convert ``value`` in ``unit`` to this kind's canonical unit.

        Raises UnitError for an unknown unit, RangeError when the converted
        value is outside the physical range.
        """
        if unit == self.unit:
            out = value
        else:
            # Matched exactly, as docs/protocol.md says: " %" is not "%".
            conv = self.aliases.get(unit)
            if conv is None:
                raise UnitError(f"unit {unit[:20]!r} is not accepted for {self.name}")
            # Round away binary noise of the conversion (0.234 m3/m3 -> 23.4 %,
            # not 23.400000000000002), far below any sensor's resolution.
            out = round(conv(value), 9)
        if not (self.low <= out <= self.high):
            raise RangeError(
                f"{self.name} {out:g} {self.unit} is outside {self.low:g}..{self.high:g}"
            )
        return out


def _kinds() -> dict[str, Kind]:
    pct_vwc = {"%": _same, "%VWC": _same, "% VWC": _same, "vol%": _same,
               "m3/m3": _scale(100.0), "m³/m³": _scale(100.0), "cm3/cm3": _scale(100.0)}
    ec = {"µS/cm": _same, "μS/cm": _same, "us/cm": _same, "uS/cm": _same,
          "mS/cm": _scale(1000.0), "dS/m": _scale(1000.0), "mS/m": _scale(10.0),
          "S/m": _scale(10000.0)}
    ks = [
        Kind("soil_moisture", "%", 0, 100, pct_vwc,
             "volumetric water content"),
        Kind("soil_temperature", "degC", -50, 80, _CELSIUS),
        Kind("soil_ec", "uS/cm", 0, 50000, ec, "bulk electrical conductivity"),
        Kind("soil_ph", "pH", 0, 14, {"ph": _same, "": _same}),
        Kind("soil_nitrogen", "mg/kg", 0, 5000, {"ppm": _same}),
        Kind("soil_phosphorus", "mg/kg", 0, 5000, {"ppm": _same}),
        Kind("soil_potassium", "mg/kg", 0, 5000, {"ppm": _same}),
        Kind("air_temperature", "degC", -60, 60, _CELSIUS),
        Kind("air_humidity", "%RH", 0, 100,
             {"%": _same, "RH%": _same, "% RH": _same, "%rh": _same}),
        Kind("rainfall", "mm", 0, 500,
             {"in": _scale(25.4), "inch": _scale(25.4)}, "rain since the previous reading"),
        Kind("animal_body_temperature", "degC", 25, 46,
             _CELSIUS),
        Kind("animal_activity", "steps/h", 0, 100000,
             {"steps/hour": _same, "steps/min": _scale(60.0)}),
        Kind("animal_presence", "count", 0, 1_000_000,
             {"": _same}, "an animal's tag read at a gate or trough (value: times seen)"),
        Kind("water_level", "%", 0, 100, {"percent": _same},
             "trough or tank level as a share of its height"),
        Kind("battery_voltage", "V", 0, 60,
             {"mV": _scale(0.001), "volt": _same}),
    ]
    return {k.name: k for k in ks}


KINDS: dict[str, Kind] = _kinds()


def normalize(kind: str, value: float, unit: str) -> tuple[Kind, float]:
    """Look up ``kind`` and convert ``value`` to its canonical unit."""
    k = KINDS.get(kind)
    if k is None:
        raise UnitError(f"kind {kind[:40]!r} is not in the contract")
    return k, k.convert(value, unit)
