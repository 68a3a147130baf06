"""Sending one message to one Apprise URL.

The engine owns retries, backoff, rate limits and quiet hours; a notifier only
tries once and says whether it worked. :class:`AppriseNotifier` runs Apprise's
blocking call in a worker thread so the event loop never waits on a slow SMS
gateway or SMTP server.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any, Protocol

from farmedge.logs import route_library_logger

from .errors import DeliveryFailed

__all__ = ["SMS_SCHEMES", "AppriseNotifier", "Notifier", "scheme_of"]

#: Apprise schemes that end in an SMS: their texts must fit one segment.
SMS_SCHEMES = frozenset({
    "twilio", "smseagle", "smseagles", "smpp", "smpps", "httpsms", "sns", "clicksend",
    "d7sms", "kavenegar", "msg91", "plivo", "sinch", "bulksms", "bulkvs", "burstsms",
    "seven", "vonage", "nexmo", "textbelt", "signal", "signals", "freemobile", "smsmgr",
    "messagebird", "sfr", "dapnet", "africastalking",
})


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


class Notifier(Protocol):
    async def send(self, url: str, *, title: str, body: str) -> None:
        """Deliver once or raise DeliveryFailed."""
        ...


class AppriseNotifier:
    """Delivers through Apprise (SMS gateways, WeCom, DingTalk, Feishu, e-mail,
    webhooks). One Apprise object per URL, built on first use.

    Each send runs in a daemon thread of the notifier's own, at most
    ``max_threads`` at once, not in the event loop's default executor: a
    peer that never finishes its answer leaves its thread stuck after the
    send timed out, and a thread stuck that way still counts against
    ``max_threads`` until it ends. So a hung service ties up at most those
    threads (further sends fail with "no answer" and are retried), never the
    executor the edge's spool writes use, and never holds up the process's
    exit."""

    def __init__(self, *, timeout_s: float = 30.0, max_threads: int = 4) -> None:
        # Apprise's own log lines (its plugins' errors, "Sent ... notification")
        # as structlog events "alerts.apprise".
        route_library_logger("apprise", "alerts.apprise")
        self._timeout = timeout_s
        self._cache: dict[str, Any] = {}
        self._lock = threading.Lock()
        #: Released when a send's thread ends, not when its wait times out.
        self._sem = asyncio.Semaphore(max_threads)

    def _target(self, url: str) -> Any:
        import apprise

        with self._lock:
            ap = self._cache.get(url)
            if ap is None:
                ap = apprise.Apprise()
                if not ap.add(url):
                    raise DeliveryFailed(
                        f"Apprise does not accept the URL scheme {scheme_of(url)!r}")
                self._cache[url] = ap
            return ap

    def _send_sync(self, url: str, title: str, body: str) -> None:
        ap = self._target(url)
        if not ap.notify(body=body, title=title):
            raise DeliveryFailed(f"{scheme_of(url)}: the service did not accept the message")

    def _work(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None], url: str,
              title: str, body: str) -> None:
        """The thread: one send, its outcome handed back to the loop."""
        error: BaseException | None = None
        try:
            self._send_sync(url, title, body)
        except BaseException as exc:  # handed to the waiting task (or dropped if it gave up)
            error = exc
        with contextlib.suppress(RuntimeError):   # the loop is gone: nobody waits
            loop.call_soon_threadsafe(self._done, fut, error)

    def _done(self, fut: asyncio.Future[None], error: BaseException | None) -> None:
        self._sem.release()
        if fut.done():
            return
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)

    async def send(self, url: str, *, title: str, body: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                await self._sem.acquire()
                fut: asyncio.Future[None] = loop.create_future()
                try:
                    threading.Thread(target=self._work, args=(loop, fut, url, title, body),
                                     name="alerts-send", daemon=True).start()
                except BaseException:
                    self._sem.release()
                    raise
                await fut
        except TimeoutError:
            raise DeliveryFailed(f"{scheme_of(url)}: no answer in {self._timeout:g}s") from None
        except DeliveryFailed:
            raise
        except Exception as exc:  # Apprise plugins raise many things
            raise DeliveryFailed(f"{scheme_of(url)}: {type(exc).__name__}: {exc}") from exc
