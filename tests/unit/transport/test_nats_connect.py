"""The first connection to the cluster is bounded: the client, told to
reconnect for ever, would otherwise try it for ever and the edge would
never say that it cannot reach NATS (nor retry with its back-off). A
closed port and a listener that never speaks stand in for a dead node and
a hung one (nothing to mock: the client talks to real sockets)."""

from __future__ import annotations

import socket
import time

import pytest

from farmedge.transport import nats as tn
from farmedge.transport.nats_settings import SourceSection


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_no_node_listening_is_an_error_within_the_bound() -> None:
    port = _free_port()
    cfg = SourceSection(kind="nats", nats_urls=[f"nats://127.0.0.1:{port}"])
    started = time.monotonic()
    with pytest.raises(tn.NatsTransportError, match=rf"127\.0\.0\.1:{port}.*no node accepted"):
        await tn.connect(cfg, "test", first_s=1.5)
    assert time.monotonic() - started < 10


async def test_a_node_that_never_answers_is_an_error_within_the_bound() -> None:
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)  # accepts (the kernel's backlog), never sends INFO
        port = mute.getsockname()[1]
        cfg = SourceSection(kind="nats", nats_urls=[f"nats://user:secret@127.0.0.1:{port}"])
        with pytest.raises(tn.NatsTransportError) as err:
            await tn.connect(cfg, "test", first_s=1.5)
    assert "no node accepted" in str(err.value)
    assert "secret" not in str(err.value)  # the URL is named without its password
