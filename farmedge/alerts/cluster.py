"""The alert engine across edge instances (docs/alerts.md, "Several edges";
docs/scaling.md, "Alert state and handover").

With the NATS source the farms are split into partitions, each owned by one
edge instance at a time (a lease, :mod:`farmedge.cluster`). The edge tells
its engine which partitions it owns and hands it a :class:`PartitionFence`
(:meth:`~farmedge.alerts.engine.AlertEngine.attach_fence`):

* ``await engine.partition_gained(p)`` before the partition's reader starts:
  the partition's alert state is loaded (from a :class:`PartitionStore`);
* ``await engine.partition_lost(p)`` after its reader stopped: its state is
  written and dropped from memory;
* before any message of a farm is handed to a notifier the engine awaits
  ``fence.check(partition_of(county, farm))``; False (the lease is not ours
  any more) sends nothing and keeps the message: the new owner has it.

An engine without a fence (one edge, MQTT) behaves as before: every farm is
its own, its state is the SQLite file.

This module holds only the interfaces and the pure helpers that say which
partition a row of the state belongs to; the key-value store behind
:class:`PartitionStore` is :mod:`farmedge.cluster.alertstate`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

__all__ = ["CENTER_FARM", "LOCAL", "PartitionFence", "PartitionStore", "Rows", "farm_of_row"]

#: ``{table: {key: row}}`` as the state file holds them (store.py's tables).
Rows = dict[str, dict[str, Any]]

#: The farm id of center-side incidents (center.py): to operators only.
CENTER_FARM = "_center"

#: The "partition" of the rows that belong to no farm: the center's own
#: incidents (farm ``_center``) and the operators' and officers' daily
#: budgets. They stay in the instance's own state file.
LOCAL = -1


class PartitionFence(Protocol):
    """The edge's side: which partition a farm is in, which ones this
    instance owns, and the fence before a send."""

    def partition_of(self, county: str, farm: str) -> int: ...

    def owned(self) -> frozenset[int]:
        """The partitions owned now (local and cheap: no request)."""
        ...

    async def check(self, partition: int) -> bool:
        """True if this instance still holds the partition's lease, checked
        against the key-value store (its fencing token); False: fenced, send
        nothing for it."""
        ...


class PartitionStore(Protocol):
    """Where a partition's alert state lives while no one or someone else
    owns it (a replicated key-value bucket)."""

    async def load(self, partition: int) -> Rows:
        """Every row of the partition, ``{table: {key: row}}``."""
        ...

    async def write(self, partition: int, changes: Mapping[str, Mapping[str, Any | None]]
                    ) -> None:
        """``{table: {key: row or None (delete)}}``, every write committed
        (acknowledged by the store) when it returns; StateError otherwise."""
        ...


def farm_of_row(table: str, key: str, row: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """(county, farm) a row of the state belongs to, or None for one that
    belongs to no farm (center incidents, operators' and officers' budgets).
    Ids hold neither ``/`` nor ``|`` (farmedge/contract/ids.py), so the keys
    split exactly."""
    if table == "states":
        parts = key.split("|")
        cf = parts[1] if len(parts) > 2 else ""
    elif table == "groups":
        cf = key.partition("|")[0]
    elif table == "outbox":
        if row is None:
            return None
        county, farm = str(row.get("county", "")), str(row.get("farm", ""))
        return None if farm == CENTER_FARM or not county else (county, farm)
    elif table == "budget":
        parts = key.split("/")
        if len(parts) != 3 or parts[0].startswith("officer:"):
            return None
        cf = f"{parts[0]}/{parts[1]}"
    else:  # history: county/farm/...
        parts = key.split("/")
        cf = f"{parts[0]}/{parts[1]}" if len(parts) >= 3 else ""
    county, sep, farm = cf.partition("/")
    if not sep or not county or not farm or farm == CENTER_FARM or "/" in farm:
        return None
    return county, farm
