"""What the uplink does when the broker refuses a message: a PUBACK with a
reason code from 0x80 up (MQTT 5; a 3.1.1 broker cannot say it refused,
its PUBACK has no reason code).

A refusal is judged by its code (docs/gateway.md, "When the broker refuses
a message"):

* the connection's fault, not the message's (``NOT_THE_MESSAGE``: 0x87 not
  authorized, 0x90 topic name invalid; a credential, ACL or topic set up
  wrong at the county): the readings stay in the outbox, the uplink sends
  nothing more for a back-off wait (the shared :class:`~farmedge.backoff.Backoff`,
  growing while the refusals go on) and tries again; the log says
  ``gateway.publish_refused`` and the status ``publish_refused`` (the
  code) until a message is accepted again;
* passing (``TRANSIENT``: 0x97 quota exceeded, 0x91 packet identifier in
  use): the same wait, as a warning;
* this message's fault (0x95 packet too large, 0x99 payload format invalid,
  0x83 implementation specific, 0x80 unspecified, and any code this version
  does not know): the batch is split in two halves sent again (0x95 also
  lowers the readings per message from then on); a message of one reading
  still refused is set aside (:meth:`~farmedge.gateway.outbox.Outbox.set_aside`:
  kept in the outbox's ``refused`` table and counted, never silently
  deleted), so the readings behind it flow. Only when the broker accepted
  another message on this connection: a broker that refuses everything
  (0x83 from a plugin, say) is not taken for readings at fault, and the
  refusal is waited out like the connection's.

No MQTT here: the uplink applies the :class:`Decision`.
"""

from __future__ import annotations

import enum
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from farmedge.backoff import Backoff

__all__ = ["NOT_THE_MESSAGE", "TRANSIENT", "Action", "Decision", "Refusals", "reason_name"]

T = TypeVar("T")

#: The connection, the credentials or the ACL is wrong, not the message.
NOT_THE_MESSAGE = {0x87: "not authorized", 0x90: "topic name invalid"}
#: Passing: the same message may be taken later.
TRANSIENT = {0x97: "quota exceeded", 0x91: "packet identifier in use"}
#: This message cannot be taken (any other code from 0x80 up is taken so).
THE_MESSAGE = {0x80: "unspecified error", 0x83: "implementation specific error",
               0x95: "packet too large", 0x99: "payload format invalid"}
PACKET_TOO_LARGE = 0x95


def reason_name(code: int) -> str:
    return (NOT_THE_MESSAGE.get(code) or TRANSIENT.get(code) or THE_MESSAGE.get(code)
            or f"reason code {code:#x}")


class Action(enum.Enum):
    #: Keep the readings; send nothing until ``Decision.wait_s`` has passed.
    WAIT = "wait"
    #: Send ``Decision.parts`` instead (the batch in two halves).
    SPLIT = "split"
    #: Set the one reading aside; the rest of the outbox flows.
    SET_ASIDE = "set_aside"


@dataclass(frozen=True, slots=True)
class Decision(Generic[T]):
    action: Action
    parts: list[list[T]] = field(default_factory=list)
    #: WAIT: seconds from now (0: an earlier refusal's wait is on already).
    wait_s: float = 0.0


class Refusals:
    """The refusal policy and its state: the wait, the standing refusal the
    status shows, counts by code, and the readings-per-message limit a
    "packet too large" lowered. ``clock`` is monotonic seconds."""

    def __init__(self, backoff: Backoff, log: Any, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.backoff = backoff
        self.log = log
        self.clock = clock
        #: Refused messages by reason code.
        self.counts: Counter[int] = Counter()
        #: The code of the refusal going on that is not the messages' fault
        #: (status ``publish_refused``); None when messages are accepted.
        self.standing: int | None = None
        #: At most this many readings a message (None: the batch size).
        self.batch_limit: int | None = None
        self._until = 0.0

    def waiting(self) -> float:
        """Seconds left before anything may be sent again (0: send)."""
        return max(0.0, self._until - self.clock())

    def accepted(self) -> None:
        """The broker took a message: the waits start over."""
        if self.standing is not None:
            self.log.info("gateway.publish_accepted_again", refused_code=self.standing,
                          refused=reason_name(self.standing))
            self.standing = None
        self.backoff.reset()

    def refused(self, rows: Sequence[T], code: int, *, accepted_here: bool) -> Decision[T]:
        """What to do with a message of ``rows`` the broker refused with
        ``code``; ``accepted_here``: it accepted another on this connection."""
        self.counts[code] += 1
        name = reason_name(code)
        if code in NOT_THE_MESSAGE or code in TRANSIENT:
            return self._wait(rows, code, name, transient=code in TRANSIENT)
        if len(rows) > 1:
            half = (len(rows) + 1) // 2
            if code == PACKET_TOO_LARGE and (self.batch_limit or len(rows)) > half:
                self.batch_limit = half
            self.log.warning("gateway.batch_split", code=code, reason=name, readings=len(rows),
                             into=[half, len(rows) - half], batch_limit=self.batch_limit)
            return Decision(Action.SPLIT, [list(rows[:half]), list(rows[half:])])
        if not accepted_here:
            return self._wait(rows, code, name, transient=False,
                              why="refused before the broker accepted any message on this "
                              "connection: taken for the broker's doing, not the reading's")
        return Decision(Action.SET_ASIDE, [list(rows)])

    def _wait(self, rows: Sequence[T], code: int, name: str, *, transient: bool,
              why: str | None = None) -> Decision[T]:
        if self.waiting() > 0:  # the other messages in flight of the same refusal
            return Decision(Action.WAIT)
        wait = self.backoff.next()
        self._until = self.clock() + wait
        if not transient:
            self.standing = code
        (self.log.warning if transient else self.log.error)(
            "gateway.publish_refused", code=code, reason=name, readings=len(rows),
            wait_s=round(wait, 2), refused_total=sum(self.counts.values()), why=why,
            hint=None if transient else "the readings are kept; check the gateway's "
            "credentials and the broker's ACL for its telemetry topic")
        return Decision(Action.WAIT, wait_s=wait)
