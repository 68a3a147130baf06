"""The outbox: one :class:`Delivery` per message, contact and URL, handed to
the notifier when due, retried with a doubling backoff, held back by the
per-scheme rate limits. Deliveries are kept in the state file (table
``outbox``, the dataclass's fields as keys) until delivered or given up, so
a restart neither loses nor repeats them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from farmedge.logs import get_logger

from .errors import DeliveryFailed
from .notify import Notifier, scheme_of
from .record import AlertEvent
from .settings import AlertsSettings
from .store import Changes

__all__ = ["Delivery", "Outbox"]

log = get_logger("farmedge.alerts")


@dataclass(slots=True)
class Delivery:
    """One message to one contact's URL. Field names are the state file's keys."""

    id: str
    due: float                  # not before (quiet hours, backoff, rate limit)
    url: str
    contact: str
    lang: str
    title: str
    body: str
    group: str
    event: str                  # raise | worse | remind | escalate | clear
    attempts: int
    county: str
    farm: str
    rule: str | None
    family: str
    severity: str
    scope: str
    scope_id: str
    count: int
    value: float | None
    created: float
    #: When the intent to send was committed (the message handed to the
    #: notifier after that commit); None while it waits. Found set when the
    #: state is loaded: it may have been sent, it is not sent again.
    sending: float | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Delivery:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in row.items() if k in names})

    def event_for(self, event: str, now: float, *, error: str = "",
                  attempt: int = 0) -> AlertEvent:
        """The delivery event (delivered, failed, held, suppressed, dropped)."""
        return AlertEvent(
            ts_ms=int(now * 1000), event=event, county=self.county, farm=self.farm,
            rule=self.rule or "", family=self.family, severity=self.severity, scope=self.scope,
            scope_id=self.scope_id, group=self.group, count=self.count, value=self.value,
            text={self.lang: self.body}, contact=self.contact, channel=scheme_of(self.url),
            attempt=attempt, error=error)


class Outbox:
    def __init__(self, *, notifier: Notifier, settings: AlertsSettings, changes: Changes,
                 stats: dict[str, int], clock: Callable[[], float],
                 publish: Callable[[AlertEvent], None], poke: Callable[[], None]) -> None:
        self.notifier = notifier
        self.settings = settings
        self.changes = changes
        self.stats = stats
        self.clock = clock
        self.publish = publish
        self.poke = poke
        self.items: dict[str, Delivery] = {}
        self.inflight: dict[str, asyncio.Task[None]] = {}
        self._sent_times: dict[str, deque[float]] = {}
        self._next_id = 0
        #: The clock at the last dispatch (a later one earlier: it went back).
        self._last_now = float("-inf")
        #: Called with (delivery, now) just before the notifier (benchmark hook).
        self.on_dispatch: Callable[[Delivery, float], None] | None = None
        #: Called with (delivery, delivered, error, now) after each attempt
        #: (failures in a row to one contact make an operator incident).
        self.on_result: Callable[[Delivery, bool, str, float], None] | None = None
        #: Deliveries found with an intent to send and no outcome when the
        #: state was loaded, until the engine reports them.
        self.unconfirmed: list[Delivery] = []

    def new_id(self, now: float) -> str:
        self._next_id += 1
        return f"{now:017.3f}-{self._next_id:08d}"

    def load(self, rows: Mapping[str, Mapping[str, Any]]) -> None:
        """Deliveries from the state (added to those in memory). One with an
        intent to send committed and no outcome (the edge stopped between
        handing it to the notifier and recording the outcome) may have been
        sent: it is taken out and kept in :attr:`unconfirmed`, not sent again."""
        for k, v in rows.items():
            d = Delivery.from_row(v)
            if d.sending is not None:
                self.changes.outbox[k] = None
                self.unconfirmed.append(d)
            else:
                self.items[k] = d
        self._next_id = max(self._next_id, len(self.items))

    def _put(self, d: Delivery) -> None:
        self.items[d.id] = d
        self.changes.outbox[d.id] = d

    def _drop(self, did: str) -> Delivery | None:
        self.changes.outbox[did] = None
        return self.items.pop(did, None)

    def add(self, d: Delivery, now: float) -> None:
        self._put(d)
        if d.due > now:
            self.stats["held"] += 1
            self.publish(d.event_for("held", now))

    def drop_held(self, gkey: str, contact: str, url: str, now: float) -> bool:
        """A clear for a raise still held (quiet hours): drop both."""
        held = [k for k, d in self.items.items()
                if d.group == gkey and d.contact == contact and d.url == url
                and d.event in ("raise", "worse", "remind") and d.due > now
                and k not in self.inflight]
        for k in held:
            d = self._drop(k)
            assert d is not None
            self.publish(d.event_for("dropped", now, error="cleared before quiet hours ended"))
        return bool(held)

    def _clock_set_back(self, back: float, now: float) -> None:
        """The clock went back ``back`` seconds: waiting deliveries and the
        rate limits' send times move with it, so each wait (backoff, rate
        limit, quiet hours) stays as long as it was, not ``back`` longer."""
        log.warning("alerts.clock_set_back", seconds=round(back, 1))
        for did, d in self.items.items():
            if d.due > now and did not in self.inflight:
                d.due -= back
                self.changes.outbox[did] = d
        for sent in self._sent_times.values():
            for i in range(len(sent)):
                sent[i] -= back

    def dispatch(self, now: float) -> None:
        """Mark and hand every due delivery to the notifier at once (tools;
        the engine commits the marks between :meth:`pick` and :meth:`start`)."""
        ds = self.pick(now)
        self.mark(ds, now)
        self.start(ds)

    def pick(self, now: float) -> list[Delivery]:
        """The deliveries due now, within the rate limits (counted sent)."""
        out: list[Delivery] = []
        if self._last_now - now > 1.0:
            self._clock_set_back(self._last_now - now, now)
        self._last_now = now
        for did, d in sorted(self.items.items()):
            if did in self.inflight or d.due > now:
                continue
            limit = self.settings.rate_limits.get(scheme_of(d.url))
            if limit:
                sent = self._sent_times.setdefault(d.url, deque())
                while sent and sent[0] <= now - 60.0:
                    sent.popleft()
                if len(sent) >= limit:
                    d.due = sent[0] + 60.0
                    self.changes.outbox[did] = d
                    continue
                sent.append(now)
            out.append(d)
        return out

    def mark(self, ds: list[Delivery], now: float) -> None:
        """The intent to send each: in the state's next commit, which must
        come before :meth:`start`."""
        for d in ds:
            d.sending = now
            self.changes.outbox[d.id] = d

    def start(self, ds: list[Delivery]) -> None:
        """Hand each to the notifier, in its own task (after the commit)."""
        for d in ds:
            if d.id in self.inflight or d.id not in self.items:
                continue
            if self.on_dispatch is not None:
                self.on_dispatch(d, d.sending or self.clock())
            self.inflight[d.id] = asyncio.create_task(self._send(d))

    async def _send(self, d: Delivery) -> None:
        did = d.id
        try:
            await self.notifier.send(d.url, title=d.title, body=d.body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A notifier's bug (anything but DeliveryFailed) is a failed
            # attempt too: recorded, retried, given up after max_attempts.
            if not isinstance(exc, DeliveryFailed):
                log.exception("alerts.notifier_raised", contact=d.contact,
                              channel=scheme_of(d.url))
            error = str(exc) if isinstance(exc, DeliveryFailed) else \
                f"{type(exc).__name__}: {exc}"[:300]
            # The notifier says it was not delivered: no longer an open intent.
            now = self.clock()
            d.sending = None
            d.attempts += 1
            self.stats["failed"] += 1
            self.publish(d.event_for("failed", now, error=error, attempt=d.attempts))
            self._result(d, False, error, now)
            if d.attempts >= self.settings.max_attempts:
                log.warning("alerts.delivery_given_up", alert_event=d.event, contact=d.contact,
                            attempts=d.attempts, error=error)
                self._drop(did)
            else:
                delay = min(self.settings.backoff_s * 2 ** (d.attempts - 1),
                            self.settings.backoff_max_s)
                d.due = now + delay
                self.changes.outbox[did] = d
        else:
            now = self.clock()
            self.stats["delivered"] += 1
            d.attempts += 1
            self.publish(d.event_for("delivered", now, attempt=d.attempts))
            self._drop(did)
            self._result(d, True, "", now)
        finally:
            self.inflight.pop(did, None)
            self.poke()

    def _result(self, d: Delivery, ok: bool, error: str, now: float) -> None:
        if self.on_result is not None:
            try:
                self.on_result(d, ok, error, now)
            except Exception:  # never let it stop delivery
                log.exception("alerts.delivery_result_failed", contact=d.contact)

    async def cancel(self, grace_s: float = 0.0) -> None:
        """Stop sends in flight: each gets ``grace_s`` to finish (its outcome
        recorded), then is cancelled; a cancelled one stays in the outbox
        with its intent (whether it reached anyone is not known)."""
        if self.inflight and grace_s > 0:
            await asyncio.wait(list(self.inflight.values()), timeout=grace_s)
        for t in list(self.inflight.values()):
            t.cancel()
        if self.inflight:
            await asyncio.gather(*self.inflight.values(), return_exceptions=True)
