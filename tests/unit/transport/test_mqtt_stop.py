"""Stopping the edge's MQTT source while its broker cannot be reached
(farmedge/transport/mqtt.py): the stop leaves nothing behind for asyncio
to complain about at exit. No server: a port with nothing listening."""

from __future__ import annotations

import asyncio
import gc
import socket
from typing import Any

from farmedge.transport.mqtt import MqttSource
from farmedge.transport.settings import MqttSection


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_stop_during_the_back_off_leaves_no_unretrieved_exception() -> None:
    loop = asyncio.get_running_loop()
    complaints: list[str] = []

    def handler(_: asyncio.AbstractEventLoop, ctx: dict[str, Any]) -> None:
        complaints.append(str(ctx.get("message")))

    loop.set_exception_handler(handler)
    try:
        src = MqttSource(MqttSection(url=f"mqtt://127.0.0.1:{_closed_port()}",
                                     reconnect_min_s=30, reconnect_max_s=30),
                         on_messages=lambda _: None)
        src.start(loop)
        deadline = loop.time() + 10
        while src._backoff.attempt < 1:  # the first connect failed: waiting to retry
            assert loop.time() < deadline, "the first connect did not fail"
            await asyncio.sleep(0.01)
        await src.stop()
        assert src.task is not None and src.task.done()
        del src
        gc.collect()
        await asyncio.sleep(0)
        assert complaints == []
    finally:
        loop.set_exception_handler(None)
