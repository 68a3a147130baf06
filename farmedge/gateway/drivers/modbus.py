"""RS485 (Modbus-RTU) and Modbus-TCP soil probes.

The cheap 3-in-1 and 7-in-1 soil probes share no register map, so a probe
model is data, not code: a :class:`ProbeProfile` names the function code, the
default serial settings and, per reading kind, the register, scale and
signedness. Profiles for common probes ship in :data:`PROFILES`; a site with
another probe writes its own ``registers`` in the sensor's config.

After power-on the probes need about 2 s before they answer (``warmup_s``);
the driver waits that long before its first request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from farmedge.config import Section
from farmedge.contract import KINDS

from ..errors import DriverError
from .base import Sample, SensorConfig

__all__ = [
    "PROFILES",
    "ModbusProbe",
    "ModbusRtuConfig",
    "ModbusTcpConfig",
    "ProbeProfile",
    "Register",
]


@dataclass(frozen=True, slots=True)
class Register:
    kind: str
    address: int
    #: value = raw * scale (after two's complement when signed)
    scale: float
    unit: str
    signed: bool = False


@dataclass(frozen=True, slots=True)
class ProbeProfile:
    description: str
    #: 3 = read holding registers, 4 = read input registers
    function: int
    baud: int
    registers: tuple[Register, ...]
    source: str


_NPK = ("soil_nitrogen", "soil_phosphorus", "soil_potassium")

#: Register maps of common probes. Sources are in docs/gateway.md ("Soil
#: probes"); check a new batch of probes against a reference before trusting
#: a profile: vendors change maps without changing model names.
PROFILES: dict[str, ProbeProfile] = {
    # JXCT 7-in-1 (and its many resellers): pH 0x06, moisture 0x12,
    # temperature 0x13, EC 0x15, N/P/K 0x1E-0x20.
    "jxct-7in1": ProbeProfile(
        "JXCT 7-in-1 soil probe (moisture, temperature, EC, pH, N, P, K)", 3, 4800,
        (
            Register("soil_ph", 0x06, 0.01, "pH"),
            Register("soil_moisture", 0x12, 0.1, "%"),
            Register("soil_temperature", 0x13, 0.1, "degC", signed=True),
            Register("soil_ec", 0x15, 1.0, "uS/cm"),
            *(Register(k, 0x1E + i, 1.0, "mg/kg") for i, k in enumerate(_NPK)),
        ),
        "aldodds 7-en-1/Notas.md; Arduino forum 1164860",
    ),
    "jxct-3in1": ProbeProfile(
        "JXCT 3-in-1 soil probe (moisture, temperature, EC)", 3, 4800,
        (
            Register("soil_moisture", 0x12, 0.1, "%"),
            Register("soil_temperature", 0x13, 0.1, "degC", signed=True),
            Register("soil_ec", 0x15, 1.0, "uS/cm"),
        ),
        "aldodds 7-en-1/Notas.md",
    ),
    # The layout from register 0 used by many unbranded 7-in-1 probes
    # (myduino, womaster ES107 style): moisture, temperature, EC, pH, N, P, K.
    "generic-7in1": ProbeProfile(
        "Unbranded 7-in-1 probe, registers 0-6 (moisture, temperature, EC, pH, N, P, K)",
        3, 4800,
        (
            Register("soil_moisture", 0, 0.1, "%"),
            Register("soil_temperature", 1, 0.1, "degC", signed=True),
            Register("soil_ec", 2, 1.0, "uS/cm"),
            Register("soil_ph", 3, 0.1, "pH"),
            *(Register(k, 4 + i, 1.0, "mg/kg") for i, k in enumerate(_NPK)),
        ),
        "myduino; womaster ES107",
    ),
    "generic-3in1": ProbeProfile(
        "Unbranded 3-in-1 probe, registers 0-2 (moisture, temperature, EC)", 3, 4800,
        (
            Register("soil_moisture", 0, 0.1, "%"),
            Register("soil_temperature", 1, 0.1, "degC", signed=True),
            Register("soil_ec", 2, 1.0, "uS/cm"),
        ),
        "myduino; DFRobot SEN0605",
    ),
}


class RegisterConfig(Section):
    kind: str
    address: Annotated[int, Field(ge=0, le=0xFFFF)]
    scale: float = 1.0
    unit: str
    signed: bool = False

    @model_validator(mode="after")
    def _kind_known(self) -> RegisterConfig:
        k = KINDS.get(self.kind)
        if k is None:
            raise ValueError(f"kind {self.kind!r} is not in the contract")
        if self.unit != k.unit and self.unit not in k.aliases:
            raise ValueError(f"unit {self.unit!r} is not accepted for {self.kind}")
        return self


class _ModbusCommon(SensorConfig):
    #: A shipped probe model (see PROFILES), or "custom" with ``registers``.
    profile: str = "jxct-7in1"
    #: Custom register map; replaces the profile's.
    registers: list[RegisterConfig] | None = None
    #: 3 (holding registers) or 4 (input registers); default: the profile's.
    function: Literal[3, 4] | None = None
    slave: Annotated[int, Field(ge=0, le=247)] = 1
    timeout_s: Annotated[float, Field(gt=0, le=30)] = 1.0
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    #: Seconds to wait after opening the link before the first request.
    warmup_s: Annotated[float, Field(ge=0, le=60)] = 2.0

    @model_validator(mode="after")
    def _profile_known(self) -> _ModbusCommon:
        if self.registers is None and self.profile not in PROFILES:
            raise ValueError(
                f"profile {self.profile!r} is not one of {sorted(PROFILES)}; "
                "or give 'registers'")
        return self

    def resolved(self) -> ProbeProfile:
        base = PROFILES.get(self.profile)
        if self.registers is not None:
            regs = tuple(Register(r.kind, r.address, r.scale, r.unit, r.signed)
                         for r in self.registers)
            return ProbeProfile("custom", self.function or (base.function if base else 3),
                                base.baud if base else 9600, regs, "sensor config")
        assert base is not None
        if self.function is not None and self.function != base.function:
            return ProbeProfile(base.description, self.function, base.baud, base.registers,
                                base.source)
        return base


class ModbusRtuConfig(_ModbusCommon):
    driver: Literal["modbus_rtu"]
    #: Serial device of the RS485 adapter.
    port: str = "/dev/ttyUSB0"
    #: Default: the profile's (4800 or 9600).
    baud: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] | None = None
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1


class ModbusTcpConfig(_ModbusCommon):
    driver: Literal["modbus_tcp"]
    host: str
    port: Annotated[int, Field(ge=1, le=65535)] = 502


def _spans(regs: tuple[Register, ...], max_gap: int = 4) -> list[tuple[int, int]]:
    """Group registers into few reads: (start, count) spans."""
    addrs = sorted({r.address for r in regs})
    spans: list[tuple[int, int]] = []
    for a in addrs:
        if spans and a - (spans[-1][0] + spans[-1][1]) <= max_gap and a - spans[-1][0] < 100:
            spans[-1] = (spans[-1][0], a - spans[-1][0] + 1)
        else:
            spans.append((a, 1))
    return spans


class ModbusProbe:
    """A soil probe on Modbus (RTU or TCP), read one span of registers at a time."""

    def __init__(self, cfg: ModbusRtuConfig | ModbusTcpConfig, *,
                 sleep: Any = time.sleep) -> None:
        self.cfg = cfg
        self.profile = cfg.resolved()
        self._spans = _spans(self.profile.registers)
        self._client: Any = None
        self._sleep = sleep

    def _open(self) -> Any:
        from pymodbus.client import ModbusSerialClient, ModbusTcpClient

        cfg = self.cfg
        client: Any
        if isinstance(cfg, ModbusRtuConfig):
            client = ModbusSerialClient(
                cfg.port, baudrate=cfg.baud or self.profile.baud, parity=cfg.parity,
                stopbits=cfg.stopbits, bytesize=8, timeout=cfg.timeout_s, retries=cfg.retries)
        else:
            client = ModbusTcpClient(cfg.host, port=cfg.port, timeout=cfg.timeout_s,
                                     retries=cfg.retries)
        if not client.connect():
            client.close()
            raise DriverError(f"{cfg.id}: cannot open {_where(cfg)}")
        self._sleep(cfg.warmup_s)
        return client

    def read(self) -> list[Sample]:
        from pymodbus.exceptions import ModbusException

        if self._client is None:
            self._client = self._open()
        raw: dict[int, int] = {}
        fn = self.profile.function
        try:
            for start, count in self._spans:
                call = (self._client.read_holding_registers if fn == 3
                        else self._client.read_input_registers)
                rr = call(start, count=count, device_id=self.cfg.slave)
                if rr.isError():
                    raise DriverError(f"{self.cfg.id}: {_where(self.cfg)} answered {rr}")
                for i, v in enumerate(rr.registers):
                    raw[start + i] = v
        except ModbusException as exc:
            self.close()  # reopen (and warm up) next time
            raise DriverError(f"{self.cfg.id}: {_where(self.cfg)}: {exc}") from None
        out = []
        for reg in self.profile.registers:
            v = raw[reg.address]
            if reg.signed and v >= 0x8000:
                v -= 0x10000
            out.append(Sample(reg.kind, round(v * reg.scale, 6), reg.unit))
        return out

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _where(cfg: ModbusRtuConfig | ModbusTcpConfig) -> str:
    if isinstance(cfg, ModbusRtuConfig):
        return f"{cfg.port} slave {cfg.slave}"
    return f"{cfg.host}:{cfg.port} unit {cfg.slave}"
