"""One back-off for every reconnect and retry loop: capped exponential with
"equal jitter", started over only after a connection that held.

The n-th wait is drawn uniformly from [d/2, d] with d = min(max_s, min_s·2ⁿ),
so clients that lost their server together do not come back together. A
connection that the peer refuses or drops at once does not reset the count:
only one that held for ``stable_after_s`` (call :meth:`Backoff.up` when it
is accepted, :meth:`Backoff.down` when it ends) makes the next wait short
again, so a server that refuses a client (wrong password, account removed)
sees waits of min_s, 2·min_s, 4·min_s ... up to max_s, not a connect every
min_s.

Standard library only: the gateway, the transport and storage use it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

__all__ = ["STABLE_AFTER_S", "Backoff", "jittered"]

#: A connection that held this long starts the back-off over.
STABLE_AFTER_S = 30.0

_RNG = random.Random()


def jittered(attempt: int, min_s: float, max_s: float,
             rng: random.Random | None = None) -> float:
    """The wait before retry ``attempt`` (from 0): uniform in [d/2, d] with
    d = min(max_s, min_s·2^attempt). For loops that count their own attempts
    (one write's retries); :class:`Backoff` keeps the count for a connection."""
    d = min(max_s, min_s * 2 ** min(attempt, 30))
    return (rng or _RNG).uniform(d / 2, d)


class Backoff:
    """Capped, jittered exponential back-off. ``rng`` and ``clock`` can be
    injected (tests); the defaults are a fresh :class:`random.Random` and
    :func:`time.monotonic`."""

    def __init__(self, min_s: float, max_s: float, rng: random.Random | None = None, *,
                 stable_after_s: float = STABLE_AFTER_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if min_s <= 0 or max_s <= 0:
            raise ValueError(f"back-off needs positive waits (got {min_s}, {max_s})")
        #: A max below min caps every wait at max.
        self.min_s = min(min_s, max_s)
        self.max_s = max_s
        self.stable_after_s = stable_after_s
        self.rng = rng or random.Random()
        self.clock = clock
        #: Waits handed out since the last reset.
        self.attempt = 0
        self._up_since: float | None = None

    def next(self) -> float:
        """The next wait, in seconds. Ends a connection still marked up."""
        self.down()
        wait = jittered(self.attempt, self.min_s, self.max_s, self.rng)
        self.attempt += 1
        return wait

    def up(self) -> None:
        """A connection was accepted (now)."""
        self._up_since = self.clock()

    def down(self) -> float:
        """The connection marked up ended (now); when it held for
        ``stable_after_s`` the back-off starts over. Returns how long it
        held (0 when none was up)."""
        if self._up_since is None:
            return 0.0
        held = max(0.0, self.clock() - self._up_since)
        self._up_since = None
        if held >= self.stable_after_s:
            self.attempt = 0
        return held

    def reset(self) -> None:
        """Start over: the next wait is between min_s/2 and min_s."""
        self.attempt = 0
        self._up_since = None
