"""DS18B20 1-Wire thermometers through the kernel's w1-therm sysfs files.

``/sys/bus/w1/devices/28-*/w1_slave`` holds two lines: the scratchpad with
``crc=.. YES`` (or ``NO``), then ``t=<millidegrees>``. 85 °C is what the chip
reports before its first conversion after power-on, and −127 °C is what
several stacks report for a disconnected probe: both are read errors, sent
with quality "error", never as temperatures. A bad CRC is not a reading.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from farmedge.contract import Quality

from ..errors import DriverError
from .base import Sample, SensorConfig

__all__ = ["SYSFS_W1", "Ds18b20", "Ds18b20Config"]

SYSFS_W1 = "/sys/bus/w1/devices"
POWER_ON_MILLI = 85000
DISCONNECTED_MILLI = -127000
_T = re.compile(r"t=(-?\d+)")


class Ds18b20Config(SensorConfig):
    driver: Literal["ds18b20"]
    #: The 1-Wire device id, e.g. "28-0316a2795aff".
    device: str
    kind: Literal["soil_temperature", "air_temperature", "animal_body_temperature"] = (
        "soil_temperature")
    #: Where the kernel publishes 1-Wire devices.
    sysfs: str = SYSFS_W1


class Ds18b20:
    def __init__(self, cfg: Ds18b20Config) -> None:
        self.cfg = cfg
        self.path = Path(cfg.sysfs) / cfg.device / "w1_slave"

    def read(self) -> list[Sample]:
        try:
            text = self.path.read_text(encoding="ascii", errors="replace")
        except OSError as exc:
            raise DriverError(f"{self.cfg.id}: cannot read {self.path}: {exc.strerror}") from None
        lines = text.strip().splitlines()
        if len(lines) < 2 or not lines[0].rstrip().endswith("YES"):
            raise DriverError(f"{self.cfg.id}: CRC check failed on {self.path}")
        m = _T.search(lines[1])
        if m is None:
            raise DriverError(f"{self.cfg.id}: no t= value in {self.path}")
        milli = int(m.group(1))
        quality = Quality.OK
        if milli in (POWER_ON_MILLI, DISCONNECTED_MILLI):
            quality = Quality.ERROR
        return [Sample(self.cfg.kind, milli / 1000.0, "degC", quality)]

    def close(self) -> None:
        pass
