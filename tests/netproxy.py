"""A TCP proxy for tests that need a link to go bad in a precise way
between a client and a real server: ``blackhole()`` keeps the connections
up but throws away what the client sends (a publish that never reaches the
broker, so no PUBACK comes), ``cut()`` closes them and refuses new ones (an
outage), ``restore()`` forwards again."""

from __future__ import annotations

import contextlib
import socket
import threading

from farmedge_dev.devservers import free_port


class Proxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._blackhole = False
        self._down = False
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def blackhole(self) -> None:
        self._blackhole = True

    def cut(self) -> None:
        self._down = True
        self._close_all()

    def restore(self) -> None:
        self._blackhole = False
        self._down = False

    def close(self) -> None:
        self._closed = True
        self._close_all()
        self._thread.join(5)
        self._listener.close()

    def _close_all(self) -> None:
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._down:
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, 5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if upstream and self._blackhole:
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
