"""``farmedge gateway read-once``: read every configured sensor once and say
what came back, publishing nothing (what ``telegraf --test`` does), so that an
installer can check the wiring in the field.

Each sensor is read by its own driver, as the agent reads it, and every value
gets the quality the agent would give it (:func:`~farmedge.gateway.agent.check_sample`:
the driver's flag, or ``error`` for a value outside the kind's physical range
or in a unit the contract does not know). Nothing touches the outbox or the
broker.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from farmedge.contract import Quality

from .agent import check_sample
from .drivers import Driver, DriverContext, SensorConfig, build_driver
from .errors import DriverError
from .settings import GatewaySettings

__all__ = ["ReadResult", "Reading", "print_json", "print_table", "read_all"]


@dataclass(frozen=True, slots=True)
class Reading:
    sensor: str
    kind: str
    value: float
    unit: str
    quality: str
    animal: str | None = None


@dataclass(slots=True)
class ReadResult:
    """What one ``[[sensors]]`` entry gave: readings, or the driver's error."""

    sensor: str
    driver: str
    readings: list[Reading] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        """The driver raised, or a value is unusable (quality ``error``)."""
        return self.error is not None or any(
            r.quality == Quality.ERROR.value for r in self.readings)


def _read_one(cfg: SensorConfig, ctx: DriverContext,
              make: Callable[[SensorConfig, DriverContext], Driver]) -> ReadResult:
    name = str(getattr(cfg, "driver", "?"))
    res = ReadResult(cfg.id, name)
    t0 = time.monotonic()
    driver: Driver | None = None
    try:
        driver = make(cfg, ctx)
        samples = driver.read()
        for s in samples:
            res.readings.append(Reading(s.sensor or cfg.id, s.kind, float(s.value), s.unit,
                                        check_sample(s).value, s.animal))
    except (DriverError, OSError) as exc:
        res.error = str(exc) or type(exc).__name__
    except Exception as exc:  # a driver bug: say so, do not hide the other sensors
        res.error = f"driver crashed: {type(exc).__name__}: {exc}"
    finally:
        if driver is not None:
            try:
                driver.close()
            except Exception as exc:
                if res.error is None:
                    res.error = f"close failed: {type(exc).__name__}: {exc}"
        res.seconds = time.monotonic() - t0
    return res


def read_all(settings: GatewaySettings, *, timeout_s: float = 30.0,
             only: Sequence[str] = (),
             make: Callable[[SensorConfig, DriverContext], Driver] = build_driver,
             ) -> list[ReadResult]:
    """Read each configured sensor (or those in ``only``) once, all at the
    same time, each in its own thread; a sensor that has not answered after
    ``timeout_s`` is reported as failed. Results in the config's order."""
    ctx = DriverContext(settings.county, settings.farm, settings.gateway)
    sensors = [c for c in settings.sensors if not only or c.id in only]
    results: list[ReadResult | None] = [None] * len(sensors)

    def run(i: int, cfg: SensorConfig) -> None:
        results[i] = _read_one(cfg, ctx, make)

    threads = [threading.Thread(target=run, args=(i, c), daemon=True,
                                name=f"read-once {c.id}") for i, c in enumerate(sensors)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout_s
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    out: list[ReadResult] = []
    for cfg, r in zip(sensors, results, strict=True):
        out.append(r if r is not None else ReadResult(
            cfg.id, str(getattr(cfg, "driver", "?")),
            error=f"no answer within {timeout_s:g} s", seconds=timeout_s))
    return out


def _value(r: Reading) -> str:
    return f"{r.value:g} {r.unit}"


def print_table(settings: GatewaySettings, results: Sequence[ReadResult], out: TextIO) -> None:
    gw = f"{settings.county}/{settings.farm}/{settings.gateway}"
    out.write(f"gateway {gw}: {len(results)} sensors read once; nothing was published\n")
    rows: list[tuple[str, ...]] = [("SENSOR", "DRIVER", "KIND", "VALUE", "QUALITY", "ANIMAL")]
    for res in results:
        first = True
        for r in res.readings:
            sensor = res.sensor if first else ""
            if r.sensor != res.sensor:
                sensor = f"{res.sensor} ({r.sensor})" if first else f"({r.sensor})"
            rows.append((sensor, res.driver if first else "", r.kind, _value(r), r.quality,
                         r.animal or ""))
            first = False
        if res.error is not None:
            rows.append((res.sensor if first else "", res.driver if first else "", "",
                         "", "FAILED", ""))
        elif first:
            rows.append((res.sensor, res.driver, "(no readings)", "", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                  + "\n")
    failed = [r for r in results if r.failed]
    for res in results:
        if res.error is not None:
            err = res.error.removeprefix(f"{res.sensor}: ")  # drivers name the sensor too
            out.write(f"{res.sensor}: {err}\n")
    if failed:
        out.write(f"{len(failed)} of {len(results)} sensors failed: "
                  f"{', '.join(r.sensor for r in failed)}\n")
    elif not results:
        out.write("no sensors configured\n")
    else:
        out.write(f"all {len(results)} sensors read\n")


def print_json(settings: GatewaySettings, results: Sequence[ReadResult], out: TextIO) -> None:
    doc: dict[str, Any] = {
        "county": settings.county, "farm": settings.farm, "gateway": settings.gateway,
        "ok": not any(r.failed for r in results),
        "sensors": [{
            "id": r.sensor, "driver": r.driver, "ok": not r.failed, "error": r.error,
            "seconds": round(r.seconds, 3),
            "readings": [{"sensor": x.sensor, "kind": x.kind, "value": x.value,
                          "unit": x.unit, "quality": x.quality, "animal": x.animal}
                         for x in r.readings],
        } for r in results],
    }
    out.write(json.dumps(doc, ensure_ascii=False, indent=2) + "\n")
