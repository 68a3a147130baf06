"""paho without a thread of its own: its socket registered with an asyncio
event loop (``add_reader``/``add_writer``, the way aiomqtt does it), so that
messages and acknowledgements never cross threads. Public paho API only.

:class:`LoopSocket` is the glue; :class:`~farmedge.transport.mqtt.MqttSource`
owns one per paho client.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

__all__ = ["LoopSocket"]

# Packets read per readiness event before yielding to the loop.
_READ_BURST = 200


class LoopSocket:
    """Wires a paho client's socket callbacks to ``loop``. ``progress()``
    counts the PUBLISH packets read (a read that brought none ends a read
    burst), ``after_read()`` runs after each burst, ``on_closed()`` when
    the socket is gone."""

    def __init__(self, client: mqtt.Client, loop: asyncio.AbstractEventLoop, *,
                 progress: Callable[[], int], after_read: Callable[[], None],
                 on_closed: Callable[[], None]) -> None:
        self._client = client
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._progress = progress
        self._after_read = after_read
        self._on_closed = on_closed
        self.paused = False
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write

    # -- flow control ----------------------------------------------------
    def pause(self) -> None:
        """Stop reading (TCP back-pressure keeps the rest at the broker);
        writes still go out."""
        sock = self._client.socket()
        if not self.paused and sock is not None:
            self._loop.remove_reader(sock)
        self.paused = True

    def resume(self) -> None:
        if not self.paused:
            return
        self.paused = False
        sock = self._client.socket()
        if sock is not None:
            self._loop.add_reader(sock, self.on_readable)
            self.on_readable()

    async def misc(self) -> None:
        """Keepalive pings and their timeouts, once a second (run as a task)."""
        while True:
            await asyncio.sleep(1.0)
            self._client.loop_misc()

    async def flush(self, within_s: float) -> None:
        """Write what paho holds (a DISCONNECT) until it closed the socket."""
        deadline = self._loop.time() + within_s
        while self._client.socket() is not None and self._loop.time() < deadline:
            self._client.loop_write()
            await asyncio.sleep(0.01)

    def force_close(self) -> None:
        """Close a socket the broker does not close: shut it down, and
        paho's next read sees the end of the stream (and runs its close and
        disconnect callbacks)."""
        sock = self._client.socket()
        if sock is None:
            return
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self._client.loop_read()

    # -- reading ---------------------------------------------------------
    def on_readable(self) -> None:
        # loop_read reads one packet (for a client with nothing of its own
        # in flight) and answers SUCCESS for an empty socket too: a read
        # that brought no PUBLISH ends the burst, and the loop calls again
        # while the socket stays readable. TLS may hold decrypted bytes the
        # socket no longer shows: those are read on.
        client = self._client
        for _ in range(_READ_BURST):
            sock = client.socket()
            if sock is None or self.paused:
                break
            before = self._progress()
            if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break  # paho closed the connection and said why (on_disconnect)
            if self._progress() == before and not _tls_pending(sock):
                break
        else:
            sock = client.socket()
            if sock is not None and _tls_pending(sock):
                self._loop.call_soon(self.on_readable)
        self._after_read()

    # -- paho's socket callbacks (on the loop, or from a connect in a thread)
    def _call_in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._call_in_loop(self._add_reader, sock)

    def _add_reader(self, sock: Any) -> None:
        if not self.paused:
            self._loop.add_reader(sock, self.on_readable)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._call_in_loop(self._remove_socket, sock)

    def _remove_socket(self, sock: Any) -> None:
        with contextlib.suppress(Exception):
            self._loop.remove_reader(sock)
        with contextlib.suppress(Exception):
            self._loop.remove_writer(sock)
        self._on_closed()

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._call_in_loop(self._add_writer, sock)

    def _add_writer(self, sock: Any) -> None:
        fd: Any = sock  # the paho socket, or a stale one from a closed connection
        if self._client.socket() is fd:
            self._loop.add_writer(sock, self._client.loop_write)

    def _on_socket_unregister_write(self, client: mqtt.Client, userdata: Any,
                                    sock: Any) -> None:
        self._call_in_loop(self._remove_writer, sock)

    def _remove_writer(self, sock: Any) -> None:
        with contextlib.suppress(Exception):
            self._loop.remove_writer(sock)


def _tls_pending(sock: Any) -> bool:
    """Decrypted bytes TLS holds that the socket's readiness does not show."""
    return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
