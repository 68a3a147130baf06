"""The reconnect loop every long-lived MQTT client of farmedge runs:
connect, hold the connection, and after a failure or a loss wait a
:class:`~farmedge.backoff.Backoff` wait before the next attempt.

``connect`` returns once the broker accepted the connection (CONNACK) or
raises a :class:`TransportError`; ``session`` returns (or raises a
TransportError) when that connection is over. The back-off starts over
only after a connection that held (``Backoff.stable_after_s``). One
version for asyncio (the edge, the gateway, the alert recorder), one for
threads (the simulator).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from farmedge.backoff import Backoff

from .errors import ConnectRefused, TransportError

__all__ = ["reconnect_forever", "reconnect_in_thread", "sleep_unless"]

C = TypeVar("C")


def _failed(log: Any, exc: TransportError, attempt: int) -> None:
    if isinstance(exc, ConnectRefused):
        log.error("mqtt.connect_refused", reason=exc.reason, rc=exc.code, attempt=attempt,
                  hint=exc.hint or None)
    else:
        log.warning("mqtt.connect_failed", error=str(exc), attempt=attempt)


async def sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` or until ``stop`` is set; True when it was set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


async def reconnect_forever(connect: Callable[[], Awaitable[C]],
                            session: Callable[[C], Awaitable[None]], *,
                            backoff: Backoff, stop: asyncio.Event, log: Any) -> None:
    """Connect and run ``session`` on each connection until ``stop`` is set."""
    attempt = 0
    while not stop.is_set():
        attempt += 1
        try:
            conn = await connect()
        except TransportError as exc:
            _failed(log, exc, attempt)
        else:
            backoff.up()
            try:
                await session(conn)
            except TransportError as exc:
                log.warning("mqtt.connection_lost", error=str(exc))
            finally:
                backoff.down()
        if stop.is_set():
            break
        delay = backoff.next()
        log.info("mqtt.reconnect_in", seconds=round(delay, 2), attempt=backoff.attempt)
        await sleep_unless(stop, delay)


def reconnect_in_thread(connect: Callable[[], C], session: Callable[[C], None], *,
                        backoff: Backoff, stop: threading.Event, log: Any,
                        first: C | None = None) -> None:
    """The same loop for threaded callers (blocks: run it in a thread).
    ``first``: a connection already made, to start with."""
    attempt = 0
    conn = first
    while not stop.is_set():
        attempt += 1
        if conn is None:
            try:
                conn = connect()
            except TransportError as exc:
                _failed(log, exc, attempt)
        if conn is not None:
            backoff.up()
            try:
                session(conn)
            except TransportError as exc:
                log.warning("mqtt.connection_lost", error=str(exc))
            finally:
                backoff.down()
                conn = None
        if stop.is_set():
            break
        delay = backoff.next()
        log.info("mqtt.reconnect_in", seconds=round(delay, 2), attempt=backoff.attempt)
        stop.wait(delay)
