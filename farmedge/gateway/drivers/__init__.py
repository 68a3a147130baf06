"""Sensor drivers: one small module per sensor family behind one narrow
interface (:class:`Driver`: ``read()`` and ``close()``), registered by name in
:data:`DRIVERS`. A ``[[sensors]]`` entry's ``driver`` key picks the module."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field

from .ads1115 import Ads1115, Ads1115Config
from .base import Driver, Sample, SensorConfig
from .ds18b20 import Ds18b20, Ds18b20Config
from .modbus import ModbusProbe, ModbusRtuConfig, ModbusTcpConfig
from .rfid import RfidConfig, RfidReader
from .simulated import SimulatedConfig

__all__ = ["DRIVERS", "Driver", "DriverContext", "Sample", "SensorConfig", "SensorEntry",
           "build_driver"]


@dataclass(frozen=True, slots=True)
class DriverContext:
    county: str
    farm: str
    gateway: str


def _simulated(cfg: Any, ctx: DriverContext) -> Driver:
    from .simulated import SimulatedSensor

    return SimulatedSensor(cfg, county=ctx.county, farm=ctx.farm, gateway=ctx.gateway)


#: driver name -> factory(config, context) -> Driver
DRIVERS: dict[str, Callable[[Any, DriverContext], Driver]] = {
    "simulated": _simulated,
    "modbus_rtu": lambda cfg, ctx: ModbusProbe(cfg),
    "modbus_tcp": lambda cfg, ctx: ModbusProbe(cfg),
    "ads1115": lambda cfg, ctx: Ads1115(cfg),
    "ds18b20": lambda cfg, ctx: Ds18b20(cfg),
    "rfid": lambda cfg, ctx: RfidReader(cfg),
}

SensorEntry = Annotated[
    SimulatedConfig | ModbusRtuConfig | ModbusTcpConfig | Ads1115Config | Ds18b20Config
    | RfidConfig,
    Field(discriminator="driver"),
]


def build_driver(cfg: SensorConfig, ctx: DriverContext) -> Driver:
    name: str = getattr(cfg, "driver", "")
    return DRIVERS[name](cfg, ctx)
