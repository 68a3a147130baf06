"""Serial RFID readers for ISO 11784/11785 (FDX-B, 134.2 kHz) animal tags.

The reader sends each tag it reads as text: the 3-digit country or
manufacturer code and the 12-digit national id, often with a separator
("982 000123456789", "982_000123456789") and framed by CR/LF or STX/ETX.
Every poll reports each animal seen since the previous poll once, as an
``animal_presence`` reading whose value is how many times the tag was read.
A 15-digit number whose national id does not fit 38 bits is not a tag.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any, Literal

from pydantic import Field

from ..errors import DriverError
from .base import Sample, SensorConfig

__all__ = ["RfidConfig", "RfidReader", "parse_tags"]

_TAG = re.compile(rb"(?<![0-9])([0-9]{3})[ _\-.]?([0-9]{12})(?![0-9])")
MAX_NATIONAL_ID = 2**38 - 1
_MAX_BUFFER = 4096


class RfidConfig(SensorConfig):
    driver: Literal["rfid"]
    port: str = "/dev/ttyUSB0"
    baud: Literal[2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    interval_s: Annotated[float, Field(gt=0, le=3600)] = 5.0


def parse_tags(buf: bytes) -> tuple[list[str], bytes]:
    """Tags found in ``buf`` (15-digit strings) and the unparsed tail to keep."""
    tags: list[str] = []
    end = 0
    for m in _TAG.finditer(buf):
        if m.end() == len(buf):
            break  # the number may go on in the next chunk
        country, national = m.group(1).decode(), m.group(2).decode()
        end = m.end()
        if int(national) > MAX_NATIONAL_ID:
            continue
        tags.append(country + national)
    tail = buf[end:]
    # Keep only what could still be the start of a tag.
    last_break = max(tail.rfind(b"\n"), tail.rfind(b"\r"), tail.rfind(b"\x03"))
    if last_break >= 0:
        tail = tail[last_break + 1:]
    return tags, tail[-_MAX_BUFFER:]


class RfidReader:
    def __init__(self, cfg: RfidConfig, *, serial_factory: Any = None) -> None:
        self.cfg = cfg
        self._serial: Any = None
        self._factory = serial_factory
        self._buf = b""

    def _open(self) -> Any:
        import serial

        factory = self._factory or serial.Serial
        try:
            return factory(self.cfg.port, self.cfg.baud, timeout=0)
        except (OSError, serial.SerialException) as exc:
            raise DriverError(f"{self.cfg.id}: cannot open {self.cfg.port}: {exc}") from None

    def read(self) -> list[Sample]:
        import serial

        if self._serial is None:
            self._serial = self._open()
        now_ms = int(time.clock_gettime(time.CLOCK_BOOTTIME) * 1000)
        try:
            chunk = self._serial.read(self._serial.in_waiting or 1)
            while chunk:
                self._buf += chunk
                chunk = self._serial.read(self._serial.in_waiting or 1)
        except (OSError, serial.SerialException) as exc:
            self.close()
            raise DriverError(f"{self.cfg.id}: {self.cfg.port}: {exc}") from None
        tags, self._buf = parse_tags(self._buf)
        seen: dict[str, int] = {}
        for t in tags:
            seen[t] = seen.get(t, 0) + 1
        return [Sample("animal_presence", n, "count", animal=t, mono_ms=now_ms)
                for t, n in seen.items()]

    def close(self) -> None:
        if self._serial is not None:
            self._serial.close()
            self._serial = None
