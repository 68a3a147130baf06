"""Two pseudo-terminals joined back to back (what ``socat -d pty pty``
does): a program opens one end's path as if it were a serial port, a test
peer opens the other."""

from __future__ import annotations

import contextlib
import os
import select
import threading
import tty


class PtyPair:
    def __init__(self) -> None:
        self._ma, sa = os.openpty()
        self._mb, sb = os.openpty()
        for fd in (sa, sb):
            tty.setraw(fd)
        self.a = os.ttyname(sa)
        self.b = os.ttyname(sb)
        # Keep the slave ends open so the masters never see EOF/EIO.
        self._slaves = (sa, sb)
        self._stop = False
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        peer = {self._ma: self._mb, self._mb: self._ma}
        while not self._stop:
            r, _, _ = select.select(list(peer), [], [], 0.05)
            for fd in r:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                if data:
                    os.write(peer[fd], data)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        for fd in (self._ma, self._mb, *self._slaves):
            with contextlib.suppress(OSError):
                os.close(fd)
