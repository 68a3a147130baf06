"""The alert engine's fence in cluster mode (farmedge/alerts/cluster.py,
:class:`PartitionFence`), over the NATS source's partitions: which partition
a farm is in (the servers' own hash), which ones this edge owns now, and the
lease check before a send (the lease still ours by this edge's clock, and
the key-value store still naming this edge with the lease's fencing token).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from farmedge.cluster import Fenced
from farmedge.logs import get_logger
from farmedge.transport.nats import partition_of

if TYPE_CHECKING:
    from .nats_source import NatsSource

__all__ = ["SourceFence"]

log = get_logger("farmedge.edge.fence")


class SourceFence:
    def __init__(self, source: NatsSource) -> None:
        self._source = source
        self._partitions = source.cfg.partitions

    def partition_of(self, county: str, farm: str) -> int:
        return partition_of(county, farm, self._partitions)

    def owned(self) -> frozenset[int]:
        """The partitions whose lease is valid by this edge's clock: the
        engine writes a partition's alert state only while it is here, so
        an edge paused or cut off does not overwrite the new owner's."""
        ps = self._source.partitioned
        if ps is None:
            return frozenset()
        now = time.monotonic()
        return frozenset(p for p, lease in ps.ownership.owned.items() if lease.valid(now))

    async def check(self, partition: int) -> bool:
        ps = self._source.partitioned
        if ps is None:
            return False
        lease = ps.ownership.owned.get(partition)
        if lease is None:
            return False
        try:
            await ps.store.check(lease)
        except Fenced as exc:
            log.warning("edge.send_fenced", partition=partition, error=str(exc)[:300])
            return False
        return True
