"""The edge's source: the broker's messages, as :class:`Inbound` records in
an inbox, with back-pressure.

Wraps :class:`farmedge.transport.mqtt.MqttSource` (connection, reconnect,
manual acknowledgement). The inbox holds what the paho network callbacks
delivered until the batcher takes it; past ``[ingest] max_pending_mb`` of
payloads the source stops reading from the broker (TCP back-pressure: the
broker keeps the rest in the session) until half of it is taken.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from farmedge.transport.mqtt import Inbound, MqttSource
from farmedge.transport.settings import MqttSection

from .metrics import EdgeMetrics

__all__ = ["EdgeSource", "Source"]


class EdgeSource(Protocol):
    """What the batcher, the delivery loop and /healthz need of a source:
    :class:`Source` (MQTT) or :class:`~farmedge.edge.nats_source.NatsSource`."""

    inbox: deque[Inbound]
    arrived: asyncio.Event

    def take(self) -> Inbound: ...

    def oldest_mono(self) -> float | None: ...

    def start(self, loop: asyncio.AbstractEventLoop) -> None: ...

    def stop_accepting(self) -> None: ...

    async def stop(self) -> None: ...

    def ack(self, messages: list[Inbound]) -> int: ...

    @property
    def task(self) -> asyncio.Task[None] | None: ...

    @property
    def connected(self) -> bool: ...

    def trouble(self, now: float | None = None) -> str | None: ...

    def details(self) -> dict[str, Any]: ...


class Source:
    def __init__(self, settings: MqttSection, *, max_pending_bytes: int,
                 metrics: EdgeMetrics,
                 client: Callable[..., MqttSource] = MqttSource) -> None:
        self.mqtt = client(settings, on_messages=self._on_messages)
        self.inbox: deque[Inbound] = deque()
        self._bytes = 0
        self._max_bytes = max_pending_bytes
        self._metrics = metrics
        self._paused = False
        #: Set whenever something arrives (the batcher waits on it).
        self.arrived = asyncio.Event()

    def _on_messages(self, items: list[Inbound]) -> None:
        self.inbox.extend(items)
        self._bytes += sum(len(m.payload) for m in items)
        self._metrics.messages.inc(len(items))
        if self._bytes > self._max_bytes:
            self.mqtt.pause_reading()
            self._paused = True
        self.arrived.set()

    def take(self) -> Inbound:
        """The oldest message of the inbox (which must not be empty)."""
        msg = self.inbox.popleft()
        self._bytes -= len(msg.payload)
        if self._paused and self._bytes < self._max_bytes // 2:
            self._paused = False
            self.mqtt.resume_reading()
        return msg

    def oldest_mono(self) -> float | None:
        """When the oldest message of the inbox was received (monotonic)."""
        return self.inbox[0].received_mono if self.inbox else None

    # -- the broker ------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.mqtt.start(loop)

    def stop_accepting(self) -> None:
        self.mqtt.stop_accepting()

    async def stop(self) -> None:
        await self.mqtt.stop()

    def ack(self, messages: list[Inbound]) -> int:
        return self.mqtt.ack(messages)

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The connection's task (it ending on its own is fatal)."""
        t = getattr(self.mqtt, "task", None)  # MqttSource.task; a fake may have none
        return t if isinstance(t, asyncio.Task) else None

    @property
    def connected(self) -> bool:
        return self.mqtt.connected

    def details(self) -> dict[str, Any]:
        """The source's part of /healthz."""
        return {"mqtt_connected": self.mqtt.connected, "mqtt_subscribed": self.mqtt.subscribed,
                "mqtt_connect_attempts": self.mqtt.attempts}

    def trouble(self, now: float | None = None) -> str | None:
        """Why /healthz should say the broker is a problem, or None."""
        m = self.mqtt
        if m.connected:
            return None
        now = time.monotonic() if now is None else now
        since = m.disconnected_since or now
        if m.refused:
            hint = f": {m.refused_hint}" if m.refused_hint else ""
            return f"MQTT {m.refused} for {now - since:.0f} s{hint}"
        if now - since > 10 or m.connects:
            return f"MQTT broker unreachable for {now - since:.0f} s"
        return None
