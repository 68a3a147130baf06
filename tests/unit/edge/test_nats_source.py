"""The edge's NATS source (farmedge/edge/nats_source.py) without a cluster:
how a partition's batch becomes Inbound records and when it counts as
durable. The batch's deliveries are stand-ins (a JetStream message needs a
server); the cluster path is tests/integration/test_edge_nats_cluster.py."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from farmedge.edge.metrics import EdgeMetrics
from farmedge.edge.nats_source import NatsSource
from farmedge.transport import nats as tn
from farmedge.transport.nats_settings import SourceSection


@dataclass
class _Msg:
    data: bytes


def _batch(partition: int, n: int, *, delivered: int = 1) -> tn.Batch:
    ds = [tn.Delivery(_Msg(f"m{i}".encode()), tn.StoredSubject(  # type: ignore[arg-type]
        partition, "黑龙江", "farm.7", "gw-1", "telemetry" if i % 2 == 0 else "status"),
        100 + i, delivered, 0) for i in range(n)]
    return tn.Batch(partition, ds)


def _source(max_bytes: int = 1 << 20) -> NatsSource:
    return NatsSource(SourceSection(kind="nats"), "edge-1", max_pending_bytes=max_bytes,
                      metrics=EdgeMetrics())


async def _handed_in(src: NatsSource, n: int) -> None:
    while len(src.inbox) < n:
        src.arrived.clear()
        await asyncio.wait_for(src.arrived.wait(), 1)


def test_a_batch_is_durable_only_when_every_message_is_acked() -> None:
    async def main() -> None:
        src = _source()
        handler: Any = src._handle
        done = asyncio.ensure_future(handler(_batch(3, 4, delivered=2), None))
        await _handed_in(src, 4)
        assert src.arrived.is_set()
        msgs = [src.take() for _ in range(4)]
        assert [m.topic for m in msgs[:2]] == ["farm/v1/黑龙江/farm.7/gw-1/telemetry",
                                               "farm/v1/黑龙江/farm.7/gw-1/status"]
        assert all(m.qos == 1 and m.dup for m in msgs)
        assert src.ack(msgs[:3]) == 3
        await asyncio.sleep(0)
        assert not done.done()
        assert src.ack(msgs[3:]) == 1
        assert await asyncio.wait_for(done, 1) is True
        assert src.ack(msgs) == 0  # once only

    asyncio.run(main())


def test_a_stopping_source_takes_no_batch() -> None:
    async def main() -> None:
        src = _source()
        src.stop_accepting()
        handler: Any = src._handle
        assert await handler(_batch(0, 2), None) is False
        assert not src.inbox

    asyncio.run(main())


def test_a_full_inbox_holds_the_next_batch_back() -> None:
    async def main() -> None:
        src = _source(max_bytes=3)
        handler: Any = src._handle
        first = asyncio.ensure_future(handler(_batch(0, 2), None))
        await _handed_in(src, 2)
        second = asyncio.ensure_future(handler(_batch(1, 2), None))
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(src.inbox) == 2  # the second waits for room
        taken = [src.take(), src.take()]
        await _handed_in(src, 2)
        src.ack(taken)
        assert await asyncio.wait_for(first, 1) is True
        second.cancel()

    asyncio.run(main())
