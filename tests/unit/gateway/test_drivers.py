"""Gateway sensor drivers against real protocol peers where one can run
here: pymodbus's own server emulating a 7-in-1 soil probe (Modbus-TCP, and
Modbus-RTU over a pseudo-terminal pair), an RFID reader over a
pseudo-terminal, DS18B20 files laid out like sysfs. The ADS1115 has no peer
here (no I2C bus on this machine): it is tested with a fake bus that
emulates the chip's registers."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import serial

from farmedge.contract import Quality
from farmedge.gateway.drivers.ads1115 import Ads1115, Ads1115Config, TwoPointCalibration
from farmedge.gateway.drivers.ds18b20 import Ds18b20, Ds18b20Config
from farmedge.gateway.drivers.modbus import (
    PROFILES,
    ModbusProbe,
    ModbusRtuConfig,
    ModbusTcpConfig,
)
from farmedge.gateway.drivers.rfid import RfidConfig, RfidReader, parse_tags
from farmedge.gateway.errors import DriverError
from farmedge_dev.devservers import free_port
from tests.ptys import PtyPair

# A JXCT 7-in-1 probe in moist, cool, slightly acid soil: pH 6.85, moisture
# 23.4 %, temperature -3.5 °C (two's complement), EC 412 µS/cm, N/P/K.
JXCT_REGISTERS = {0x06: 685, 0x12: 234, 0x13: 0x10000 - 35, 0x15: 412, 0x1E: 41, 0x1F: 17,
                  0x20: 133}
EXPECTED = {"soil_ph": 6.85, "soil_moisture": 23.4, "soil_temperature": -3.5, "soil_ec": 412.0,
            "soil_nitrogen": 41.0, "soil_phosphorus": 17.0, "soil_potassium": 133.0}


def _context(slave: int = 1) -> Any:
    from pymodbus.datastore import (
        ModbusDeviceContext,
        ModbusSequentialDataBlock,
        ModbusServerContext,
    )

    values = [0] * 0x40
    for a, v in JXCT_REGISTERS.items():
        values[a] = v
    # pymodbus' data blocks are addressed from 1 (protocol address + 1).
    dev = ModbusDeviceContext(hr=ModbusSequentialDataBlock(1, values))
    return ModbusServerContext(devices={slave: dev}, single=False)


class _ServerThread:
    """A pymodbus server on its own event loop in a thread."""

    def __init__(self, make: Any) -> None:
        self._make = make
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.server: Any = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self.server = self._make()
            await self.server.serve_forever(background=True)  # returns once listening
            self._ready.set()
            await self.server.serving

        self._loop.run_until_complete(main())

    def start(self) -> _ServerThread:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self) -> None:
        fut = asyncio.run_coroutine_threadsafe(self.server.shutdown(), self._loop)
        fut.result(10)
        self._thread.join(10)


@pytest.fixture
def modbus_tcp() -> Iterator[int]:
    from pymodbus.server import ModbusTcpServer

    port = free_port()
    srv = _ServerThread(lambda: ModbusTcpServer(_context(7), address=("127.0.0.1", port)))
    srv.start()
    yield port
    srv.stop()


@pytest.fixture
def ptys() -> Iterator[PtyPair]:
    pair = PtyPair()
    yield pair
    pair.close()


def no_sleep(_: float) -> None:
    pass


def test_modbus_tcp_reads_a_jxct_7in1_probe(modbus_tcp: int) -> None:
    cfg = ModbusTcpConfig(driver="modbus_tcp", id="soil-1", host="127.0.0.1", port=modbus_tcp,
                          slave=7, profile="jxct-7in1")
    slept: list[float] = []
    probe = ModbusProbe(cfg, sleep=slept.append)
    try:
        got = {s.kind: (s.value, s.unit, s.quality) for s in probe.read()}
        assert {k: v[0] for k, v in got.items()} == EXPECTED
        assert got["soil_temperature"][1] == "degC" and got["soil_moisture"][1] == "%"
        assert all(q is Quality.OK for _, _, q in got.values())
        assert slept == [2.0]  # the warm-up before the first request, once
        probe.read()
        assert slept == [2.0]
    finally:
        probe.close()


def test_modbus_tcp_wrong_slave_is_a_read_error(modbus_tcp: int) -> None:
    cfg = ModbusTcpConfig(driver="modbus_tcp", id="soil-1", host="127.0.0.1", port=modbus_tcp,
                          slave=3, timeout_s=0.5, retries=0)
    probe = ModbusProbe(cfg, sleep=no_sleep)
    try:
        with pytest.raises(DriverError):
            probe.read()
    finally:
        probe.close()


def test_modbus_rtu_over_a_pseudo_terminal(ptys: PtyPair) -> None:
    from pymodbus.server import ModbusSerialServer

    srv = _ServerThread(lambda: ModbusSerialServer(_context(1), port=ptys.a, baudrate=4800))
    srv.start()
    cfg = ModbusRtuConfig(driver="modbus_rtu", id="soil-2", port=ptys.b, profile="jxct-7in1",
                          timeout_s=2)
    probe = ModbusProbe(cfg, sleep=no_sleep)
    try:
        assert {s.kind: s.value for s in probe.read()} == EXPECTED
        # The profile says 4800 baud (DOMAIN: JXCT default).
        assert PROFILES["jxct-7in1"].baud == 4800
    finally:
        probe.close()
        srv.stop()


def test_a_custom_register_map_is_data() -> None:
    cfg = ModbusTcpConfig.model_validate({
        "driver": "modbus_tcp", "id": "p", "host": "h",
        "registers": [{"kind": "soil_moisture", "address": 0, "scale": 0.01, "unit": "%"}]})
    prof = cfg.resolved()
    assert [r.kind for r in prof.registers] == ["soil_moisture"]
    with pytest.raises(ValueError, match="not in the contract"):
        ModbusTcpConfig.model_validate({
            "driver": "modbus_tcp", "id": "p", "host": "h",
            "registers": [{"kind": "soil_colour", "address": 0, "unit": "%"}]})
    with pytest.raises(ValueError, match="profile"):
        ModbusTcpConfig.model_validate({"driver": "modbus_tcp", "id": "p", "host": "h",
                                        "profile": "acme-9in1"})


def test_rfid_reader_over_a_pseudo_terminal(ptys: PtyPair) -> None:
    reader = RfidReader(RfidConfig(driver="rfid", id="gate-1", port=ptys.b))
    peer = serial.Serial(ptys.a, 9600, timeout=1)
    try:
        assert reader.read() == []
        peer.write(b"982 000123456789\r\n\x02982000123456789\x03\r\n156_000000000042\r\n")
        peer.write(b"999 999999999999\r\n")  # national id beyond 38 bits: not a tag
        peer.write(b"156 0000000")  # half a tag: kept for the next read
        peer.flush()

        def seen() -> dict[str, float]:
            return {s.animal or "": s.value for s in reader.read()}

        got: dict[str, float] = {}
        from tests.support import eventually

        def both() -> bool:
            for k, v in seen().items():
                got[k] = got.get(k, 0) + v
            return len(got) >= 2

        eventually(both, timeout=5)
        assert got == {"982000123456789": 2, "156000000000042": 1}
        peer.write(b"00042\r\n")
        peer.flush()
        [s] = eventually(lambda: reader.read(), timeout=5)
        assert (s.kind, s.animal, s.value, s.unit) == (
            "animal_presence", "156000000000042", 1, "count")
    finally:
        peer.close()
        reader.close()


def test_parse_tags_keeps_an_unfinished_tag() -> None:
    assert parse_tags(b"junk 982000123456789\n9820001") == (["982000123456789"], b"9820001")
    assert parse_tags(b"1234567890123456\n") == ([], b"")  # 16 digits: not a tag


def write_w1(root: Path, dev: str, text: str) -> None:
    (root / dev).mkdir(parents=True, exist_ok=True)
    (root / dev / "w1_slave").write_text(text)


@pytest.mark.parametrize(("milli", "value", "quality"), [
    (21437, 21.437, Quality.OK),
    (-5062, -5.062, Quality.OK),
    (85000, 85.0, Quality.ERROR),     # power-on value, not a temperature
    (-127000, -127.0, Quality.ERROR),  # disconnected
])
def test_ds18b20_from_sysfs_files(tmp_path: Path, milli: int, value: float,
                                  quality: Quality) -> None:
    dev = "28-0316a2795aff"
    write_w1(tmp_path, dev, f"50 05 4b 46 7f ff 0c 10 1c : crc=1c YES\n"
                            f"50 05 4b 46 7f ff 0c 10 1c t={milli}\n")
    d = Ds18b20(Ds18b20Config(driver="ds18b20", id="t1", device=dev, sysfs=str(tmp_path)))
    [s] = d.read()
    assert (s.kind, s.value, s.unit, s.quality) == ("soil_temperature", value, "degC", quality)


def test_ds18b20_bad_crc_and_missing_device_are_read_errors(tmp_path: Path) -> None:
    write_w1(tmp_path, "28-a", "50 05 : crc=1c NO\n50 05 t=21000\n")
    for dev in ("28-a", "28-missing"):
        d = Ds18b20(Ds18b20Config(driver="ds18b20", id="t1", device=dev, sysfs=str(tmp_path)))
        with pytest.raises(DriverError):
            d.read()


def test_two_point_calibration_maths() -> None:
    # A capacitive probe reads 2.80 V in dry soil and 1.20 V saturated.
    cal = TwoPointCalibration(dry_v=2.80, wet_v=1.20, dry_vwc=0.0, wet_vwc=45.0)
    assert cal.vwc(2.80) == (0.0, Quality.OK)
    assert cal.vwc(1.20) == (45.0, Quality.OK)
    assert cal.vwc(2.00) == (22.5, Quality.OK)
    assert cal.vwc(2.84) == (0.0, Quality.OK)  # within 5 % of the span: clamped
    assert cal.vwc(3.30) == (0.0, Quality.SUSPECT)  # open circuit or probe in air
    assert cal.vwc(0.50) == (45.0, Quality.SUSPECT)  # shorted or in water
    with pytest.raises(ValueError, match="differ"):
        TwoPointCalibration(dry_v=1.0, wet_v=1.0)


class FakeAds1115:
    """Emulates the ADS1115's pointer, config and conversion registers for
    one input voltage per channel (there is no I2C bus on this machine)."""

    def __init__(self, volts: dict[int, float], full_scale: float = 4.096) -> None:
        self.volts = volts
        self.fs = full_scale
        self.pointer = 0
        self.config = 0x8583
        self.writes: list[bytes] = []

    def write(self, address: int, data: bytes) -> None:
        assert address == 0x48
        self.writes.append(data)
        self.pointer = data[0]
        if len(data) == 3 and self.pointer == 1:
            self.config = (data[1] << 8) | data[2]

    def read(self, address: int, length: int) -> bytes:
        if self.pointer == 1:
            return bytes([(self.config >> 8) | 0x80, self.config & 0xFF])  # conversion done
        channel = ((self.config >> 12) & 0b111) - 0b100
        raw = round(self.volts[channel] / self.fs * 32768)
        raw = max(-32768, min(32767, raw)) & 0xFFFF
        return bytes([raw >> 8, raw & 0xFF])

    def close(self) -> None:
        pass


def test_ads1115_driver_with_a_fake_bus() -> None:
    bus = FakeAds1115({0: 2.80, 2: 1.60})
    cfg = Ads1115Config(driver="ads1115", id="cap-1", channel=2, dry_v=2.80, wet_v=1.20)
    d = Ads1115(cfg, bus=bus, sleep=no_sleep)
    [s] = d.read()
    assert s.kind == "soil_moisture" and s.unit == "%" and s.quality is Quality.OK
    assert s.value == pytest.approx(33.75, abs=0.01)
    # Single-shot, AIN2 vs GND, gain 1, 128 SPS, comparator off.
    assert bus.writes[0] == bytes([0x01, 0xE3, 0x83])
    bus.volts[2] = 4.0  # far drier than the dry point: suspect
    [s] = d.read()
    assert s.quality is Quality.SUSPECT and s.value == 0.0


def test_ads1115_without_i2c_is_a_read_error() -> None:
    if os.path.exists("/dev/i2c-9"):
        pytest.skip("this machine has /dev/i2c-9")
    cfg = Ads1115Config(driver="ads1115", id="cap-1", bus=9, dry_v=2.8, wet_v=1.2)
    with pytest.raises(DriverError):
        Ads1115(cfg, sleep=no_sleep).read()
