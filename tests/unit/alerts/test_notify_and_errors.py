"""Apprise's own log lines come out as structlog events ("alerts.apprise");
library errors are translated where the call is made: Apprise's
into DeliveryFailed, SQLite's and the OS's into StateError (an AlertsError
whose cause is the original error)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from farmedge.alerts import AlertsError, AppriseNotifier, DeliveryFailed, StateError
from farmedge.alerts.store import StateStore


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


async def test_apprise_failure_is_delivery_failed_and_its_log_goes_through_structlog() -> None:
    """A JSON target on a port nobody listens on: Apprise's real failure."""
    n = AppriseNotifier(timeout_s=10)
    with capture_logs() as logs:
        with pytest.raises(DeliveryFailed):
            await n.send(f"json://user:secret@127.0.0.1:{_closed_port()}/sms", title="t",
                         body="b")
        logging.getLogger("apprise").warning("token %s", "https://admin:hunter2@example.org/x")
    apprise = [e for e in logs if e["event"] == "alerts.apprise"]
    assert apprise, logs
    assert {e["library"] for e in apprise} <= {"apprise"}
    assert any(e["log_level"] == "warning" for e in apprise)
    assert logging.getLogger("apprise").propagate is False


async def test_an_unknown_scheme_is_delivery_failed() -> None:
    with pytest.raises(DeliveryFailed, match="does not accept the URL scheme 'nosuch'"):
        await AppriseNotifier().send("nosuch://x", title="t", body="b")


@contextlib.contextmanager
def _dripping_peer() -> Iterator[int]:
    """A peer that accepts every connection and answers one byte every 0.1 s,
    for as long as the test runs: a read timeout per recv never fires."""
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    conns: list[socket.socket] = []

    def drip(c: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while not stop.wait(0.1):
                c.sendall(b"H")

    def accept() -> None:
        with contextlib.suppress(OSError):
            while not stop.is_set():
                c, _ = srv.accept()
                conns.append(c)
                threading.Thread(target=drip, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield int(srv.getsockname()[1])
    finally:
        stop.set()
        srv.close()
        for c in conns:
            c.close()


async def test_a_peer_that_never_answers_ties_up_only_the_notifiers_own_threads() -> None:
    """Sends to a peer that never finishes its answer time out, and the
    threads stuck in them are the notifier's own, at most ``max_threads``:
    the event loop's default executor (the edge's spool writes use it) stays
    free, and no new thread starts while those are stuck."""
    n = AppriseNotifier(timeout_s=0.2, max_threads=2)
    with _dripping_peer() as port:
        for _ in range(8):
            with pytest.raises(DeliveryFailed, match="no answer"):
                await n.send(f"json://127.0.0.1:{port}/x", title="t", body="b")
        async with asyncio.timeout(3):
            assert await asyncio.to_thread(lambda: 42) == 42


def test_a_state_file_that_cannot_be_opened_is_a_state_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    store = StateStore(tmp_path / "file" / "alerts.sqlite")
    with pytest.raises(StateError) as ei:
        store.open()
    assert isinstance(ei.value, AlertsError) and isinstance(ei.value.__cause__, OSError)


def test_a_corrupt_state_file_is_a_state_error(tmp_path: Path) -> None:
    p = tmp_path / "alerts.sqlite"
    p.write_bytes(b"this is not an SQLite database" * 100)
    with pytest.raises(StateError):
        StateStore(p).open()
