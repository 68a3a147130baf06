"""The registry's gateways as points in InfluxDB, so that the fleet view
(``farmedge fleet``, the county dashboard's "Idle gateways") counts a
registered gateway that never sent anything.

The points go to the ``gateway`` measurement, next to the gateways' status
(field ``registered``, 1 or 0, and ``registry_*``): InfluxQL cannot join two
measurements, and one subquery over one measurement can tell, per gateway,
"registered" and "a status within 24 h" at once. The edge writes one point
per registered gateway when it starts and every hour after (so a 24 h window
always holds the current registry), through its normal writer: retried,
spooled while InfluxDB is down. A gateway that left the registry since the
last write gets ``registered=0``; the edge remembers what it wrote in
``<data_dir>/registry-gateways.json``. docs/storage.md has the schema.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from farmedge.registry import Registry
from farmedge.storage.lineproto import field_str, float_field, int_field, line
from farmedge.storage.schema import GatewayField, Measurement, Tag

__all__ = ["STATE_FILE", "load_written", "registry_lines", "save_written"]

STATE_FILE = "registry-gateways.json"

Key = tuple[str, str, str]


def _tags(county: str, farm: str, gateway: str) -> dict[str, str]:
    return {Tag.COUNTY: county, Tag.FARM: farm, Tag.GATEWAY: gateway}


def registry_lines(registry: Registry, previous: Iterable[Key], ts_ms: int
                   ) -> tuple[list[str], set[Key]]:
    """Lines for every gateway of ``registry`` (``registered=1``) and for
    those of ``previous`` no longer in it (``registered=0``); and the set of
    registered gateways, to remember for next time."""
    lines: list[str] = []
    now: set[Key] = set()
    for farm in registry.farms:
        for gid, entry in farm.gateways.items():
            key = (farm.county, farm.farm, gid)
            now.add(key)
            fields = {GatewayField.REGISTERED: int_field(1),
                      GatewayField.REGISTRY_SENSORS: int_field(len(entry.sensors)),
                      GatewayField.REGISTRY_SENSOR_IDS: field_str(",".join(entry.sensors))}
            if entry.interval_s is not None:
                fields[GatewayField.REGISTRY_INTERVAL_S] = float_field(entry.interval_s)
            lines.append(line(Measurement.GATEWAY, _tags(*key), fields, ts_ms))
    gone = {GatewayField.REGISTERED: int_field(0), GatewayField.REGISTRY_SENSORS: int_field(0)}
    for key in sorted(set(previous) - now):
        lines.append(line(Measurement.GATEWAY, _tags(*key), gone, ts_ms))
    return lines, now


def load_written(data_dir: Path) -> set[Key]:
    """The gateways the last write said were registered (empty if unknown)."""
    try:
        doc = json.loads((data_dir / STATE_FILE).read_text(encoding="utf-8"))
        return {(str(c), str(f), str(g)) for c, f, g in doc["gateways"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def save_written(data_dir: Path, keys: set[Key]) -> None:
    path = data_dir / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"gateways": sorted(keys)}, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    os.replace(tmp, path)
