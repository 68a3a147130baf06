"""Capacitive soil-moisture probes through an ADS1115 16-bit ADC on I2C.

Each probe is calibrated with two points: its output voltage in dry soil (or
air) and in saturated soil, mapped to volumetric water content by a straight
line (:class:`TwoPointCalibration`). A voltage outside the calibrated span
by more than ``tolerance`` is "suspect"; the value is clamped to the span.

The I2C bus is an interface (:class:`I2cBus`): the driver talks to
``/dev/i2c-N`` through :class:`LinuxI2cBus` on a Pi, and tests pass a fake
bus that emulates the chip's registers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal, Protocol

from pydantic import Field, model_validator

from farmedge.contract import Quality

from ..errors import DriverError
from .base import Sample, SensorConfig

__all__ = ["Ads1115", "Ads1115Config", "I2cBus", "LinuxI2cBus", "TwoPointCalibration"]

REG_CONVERSION = 0x00
REG_CONFIG = 0x01
#: Full-scale voltage per PGA gain setting (datasheet table 3).
GAINS: dict[int, tuple[int, float]] = {
    1: (0b001, 4.096), 2: (0b010, 2.048),
    4: (0b011, 1.024), 8: (0b100, 0.512), 16: (0b101, 0.256),
}
#: Data rate code -> samples per second.
RATES = {8: 0b000, 16: 0b001, 32: 0b010, 64: 0b011, 128: 0b100, 250: 0b101, 475: 0b110,
         860: 0b111}


class I2cBus(Protocol):
    def write(self, address: int, data: bytes) -> None: ...

    def read(self, address: int, length: int) -> bytes: ...

    def close(self) -> None: ...


class LinuxI2cBus:
    """``/dev/i2c-N`` with the I2C_SLAVE ioctl; plain reads and writes."""

    I2C_SLAVE = 0x0703

    def __init__(self, bus: int) -> None:
        self.path = f"/dev/i2c-{bus}"
        self._fd: int | None = None
        self._addr: int | None = None

    def _select(self, address: int) -> int:
        import fcntl

        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR)
        if self._addr != address:
            fcntl.ioctl(self._fd, self.I2C_SLAVE, address)
            self._addr = address
        return self._fd

    def write(self, address: int, data: bytes) -> None:
        os.write(self._select(address), data)

    def read(self, address: int, length: int) -> bytes:
        return os.read(self._select(address), length)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._addr = None


@dataclass(frozen=True, slots=True)
class TwoPointCalibration:
    """Volts -> volumetric water content (%), through two measured points."""

    dry_v: float
    wet_v: float
    dry_vwc: float = 0.0
    wet_vwc: float = 45.0
    #: How far (as a share of the span) a voltage may fall outside the
    #: calibrated points before the reading is "suspect".
    tolerance: float = 0.05

    def __post_init__(self) -> None:
        if self.dry_v == self.wet_v:
            raise ValueError("dry and wet voltages must differ")

    def vwc(self, volts: float) -> tuple[float, Quality]:
        frac = (volts - self.dry_v) / (self.wet_v - self.dry_v)
        quality = Quality.OK
        if frac < -self.tolerance or frac > 1 + self.tolerance:
            quality = Quality.SUSPECT
        frac = min(max(frac, 0.0), 1.0)
        return round(self.dry_vwc + frac * (self.wet_vwc - self.dry_vwc), 2), quality


class Ads1115Config(SensorConfig):
    driver: Literal["ads1115"]
    #: I2C bus number (/dev/i2c-1 on a Raspberry Pi).
    bus: Annotated[int, Field(ge=0)] = 1
    address: Annotated[int, Field(ge=0x48, le=0x4B)] = 0x48
    #: Input AIN0-AIN3, measured against GND.
    channel: Annotated[int, Field(ge=0, le=3)] = 0
    #: PGA gain: 1 = ±4.096 V full scale (suits 3.3 V probes).
    gain: Literal[1, 2, 4, 8, 16] = 1
    data_rate: Literal[8, 16, 32, 64, 128, 250, 475, 860] = 128
    #: Probe output in dry soil (or air), in volts; measure it per probe.
    dry_v: float
    #: Probe output in saturated soil (or water), in volts.
    wet_v: float
    #: Water content the two points stand for, in % (volumetric).
    dry_vwc: Annotated[float, Field(ge=0, le=100)] = 0.0
    wet_vwc: Annotated[float, Field(ge=0, le=100)] = 45.0
    tolerance: Annotated[float, Field(ge=0, le=1)] = 0.05

    @model_validator(mode="after")
    def _points_differ(self) -> Ads1115Config:
        if self.dry_v == self.wet_v:
            raise ValueError("dry_v and wet_v must differ")
        return self


class Ads1115:
    def __init__(self, cfg: Ads1115Config, *, bus: I2cBus | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.cfg = cfg
        self.cal = TwoPointCalibration(cfg.dry_v, cfg.wet_v, cfg.dry_vwc, cfg.wet_vwc,
                                       cfg.tolerance)
        self._bus = bus
        self._sleep = sleep
        pga, self.full_scale = GAINS[cfg.gain]
        # Single-shot conversion of AINx against GND.
        mux = 0b100 + cfg.channel
        self.config_word = (
            (1 << 15) | (mux << 12) | (pga << 9) | (1 << 8)
            | (RATES[cfg.data_rate] << 5) | 0b00011
        )

    def read_volts(self) -> float:
        if self._bus is None:
            self._bus = LinuxI2cBus(self.cfg.bus)
        bus, addr = self._bus, self.cfg.address
        try:
            bus.write(addr, bytes([REG_CONFIG, self.config_word >> 8, self.config_word & 0xFF]))
            deadline = time.monotonic() + 0.5
            self._sleep(1.0 / self.cfg.data_rate + 0.001)
            while True:  # wait for OS bit (conversion done)
                bus.write(addr, bytes([REG_CONFIG]))
                cfg = bus.read(addr, 2)
                if cfg[0] & 0x80:
                    break
                if time.monotonic() > deadline:
                    raise DriverError(f"{self.cfg.id}: ADS1115 conversion timed out")
                self._sleep(0.001)
            bus.write(addr, bytes([REG_CONVERSION]))
            hi, lo = bus.read(addr, 2)
        except OSError as exc:
            self.close()
            raise DriverError(f"{self.cfg.id}: I2C bus {self.cfg.bus} address "
                              f"0x{addr:02x}: {exc.strerror or exc}") from None
        raw = (hi << 8) | lo
        if raw >= 0x8000:
            raw -= 0x10000
        return raw * self.full_scale / 32768.0

    def read(self) -> list[Sample]:
        volts = self.read_volts()
        vwc, quality = self.cal.vwc(volts)
        return [Sample("soil_moisture", vwc, "%", quality)]

    def close(self) -> None:
        if self._bus is not None and isinstance(self._bus, LinuxI2cBus):
            self._bus.close()
