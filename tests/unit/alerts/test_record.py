"""The ``alerts`` line of an event: one line whatever the registry's free
text holds (contact names, URLs' schemes), through the one line-protocol
encoder (farmedge/storage/lineproto.py); and the cluster mode's recorder of
the alerts topic (:class:`NatsRecorder`) over a stand-in NATS client."""

from __future__ import annotations

import asyncio
import json

from farmedge.alerts.record import AlertEvent, NatsRecorder, line_protocol
from tests.alerts_support import until


def _event(**kw: object) -> AlertEvent:
    base: dict[str, object] = dict(ts_ms=1_780_000_000_000, event="failed", county="c1",
                                   farm="wang-12", rule="device/offline", family="offline",
                                   severity="warning", scope="gateway", scope_id="gw-1",
                                   group="g", text={"zh": "离线", "en": "offline"})
    base.update(kw)
    return AlertEvent(**base)  # type: ignore[arg-type]


def test_a_contact_name_with_a_line_break_stays_one_line() -> None:
    """A registry contact named across two lines (or a crafted one) would
    have cut the line in two: the alert record lost, the rest read as
    another point."""
    lp = line_protocol(_event(contact="Wang\nreadings,county=c1 soil=1 0",
                              channel="json\r", error="timed\nout"))
    assert "\n" not in lp and "\r" not in lp
    assert r",contact=Wang\ readings\,county\=c1\ soil\=1\ 0 " in lp
    assert lp.endswith(" 1780000000000")


def test_a_value_that_is_not_a_number_is_left_out() -> None:
    assert "value=" not in line_protocol(_event(value=float("nan")))
    assert ",value=12.5" in line_protocol(_event(value=12.5))


def test_empty_tags_are_written_as_a_dash() -> None:
    assert ",family=-," in line_protocol(_event(family=""))


class _Nats:
    """A nats-py client's publish and flush (the real cluster:
    tests/integration/test_alerts_topic_nats.py); ``fail_flush`` makes the
    next flushes time out."""

    def __init__(self) -> None:
        self.is_connected = True
        self.sent: list[tuple[str, bytes]] = []
        self.fail_flush = 0

    async def publish(self, subject: str, payload: bytes) -> None:
        self.sent.append((subject, payload))

    async def flush(self, timeout: float) -> None:  # noqa: ASYNC109 (nats-py's signature)
        if self.fail_flush:
            self.fail_flush -= 1
            raise TimeoutError("no PONG")


async def _published(rec: NatsRecorder, n: int) -> None:
    await until(lambda: rec.published >= n, timeout=10, what=f"{n} events published")


async def test_the_nats_recorder_publishes_on_the_farms_alerts_subject() -> None:
    nc = _Nats()
    rec = NatsRecorder(lambda: nc)
    task = asyncio.create_task(rec.run())
    try:
        rec.record(_event(farm="farm.7", event="raise"))
        await _published(rec, 1)
    finally:
        task.cancel()
    [(subject, payload)] = nc.sent
    assert subject == "farm.v1.c1.farm//7.alerts"     # the listener's farm/v1/c1/farm.7/alerts
    assert json.loads(payload)["event"] == "raise"


async def test_the_nats_recorder_keeps_events_while_the_edge_has_no_connection() -> None:
    nc: _Nats | None = None
    rec = NatsRecorder(lambda: nc)
    task = asyncio.create_task(rec.run())
    try:
        for i in range(3):
            rec.record(_event(count=i))
        await asyncio.sleep(0.1)
        assert rec.published == 0
        nc = _Nats()
        nc.is_connected = False     # connected once, reconnecting now
        await asyncio.sleep(0.1)
        assert nc.sent == [] and rec.published == 0
        nc.is_connected = True
        rec.record(_event(count=3))
        await _published(rec, 4)
    finally:
        task.cancel()
    assert [json.loads(p)["count"] for _, p in nc.sent] == [0, 1, 2, 3]


async def test_a_batch_the_server_did_not_confirm_goes_again_first() -> None:
    nc = _Nats()
    nc.fail_flush = 1
    rec = NatsRecorder(lambda: nc)
    task = asyncio.create_task(rec.run())
    try:
        rec.record(_event(count=1))
        rec.record(_event(count=2))
        await _published(rec, 2)
    finally:
        task.cancel()
    # sent, not confirmed, sent again in the same order
    assert [json.loads(p)["count"] for _, p in nc.sent] == [1, 2, 1, 2]
    assert rec.published == 2 and rec.dropped == 0


def test_past_max_queue_the_oldest_events_are_dropped_and_counted() -> None:
    rec = NatsRecorder(lambda: None, max_queue=2)
    for i in range(5):
        rec.record(_event(count=i))
    assert rec.dropped == 3
