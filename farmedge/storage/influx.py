"""Writing line protocol to InfluxDB over HTTP (v1 or v2 write API): the one
writer, for readings, the edge's own points and alert records alike.

Each write comes back as a :class:`WriteResult` that sorts the failure the
way the caller must handle it (:func:`classify`):

- ``RETRY``: transient. 429, 408, 5xx, a timeout, a refused or broken
  connection. Retry with back-off (``retry_after_s`` when the server said).
- ``TOO_LARGE``: 413, the body is over the server's ``max-body-size``:
  split the batch and write the halves.
- ``REJECTED``: 400 or 422, some lines are bad. InfluxDB stores the good
  lines of the request and says ``partial write``; writing them again is
  harmless (same series and time: one point), so the caller splits the batch
  until the bad lines stand alone and records those as dead letters.
- ``AUTH``: the server refuses on grounds no retry changes: 401/403
  (credentials), 404 (database or bucket missing, or a URL that is not
  InfluxDB's), another 4xx, or InfluxDB 1.x's 500 "retention policy not
  found". Keep the data (spool it) and raise the alarm.

Credentials never go in the URL, where proxies and InfluxDB's own request
log would keep them: v1 sends ``username``/``password`` (or the URL's
``user:password@``) as HTTP Basic auth, which InfluxDB 1.x accepts; v2 sends
``Authorization: Token``.

aiohttp's and the OS's errors stop here: a write answers a WriteResult,
``ping`` and ``ensure_database`` answer False, and using the writer before
``start()`` raises :class:`~farmedge.storage.errors.WriterNotStarted`.
"""

from __future__ import annotations

import email.utils
import gzip
import time
from dataclasses import dataclass
from enum import Enum

import aiohttp

from .auth import endpoint
from .errors import StorageError, WriterNotStarted
from .settings import InfluxSection

__all__ = ["InfluxWriter", "StorageError", "WriteKind", "WriteResult", "classify"]


class WriteKind(Enum):
    OK = "ok"
    RETRY = "retry"          # transient: 429, 408, 5xx, timeout, connection refused
    TOO_LARGE = "too_large"  # 413: split the batch
    REJECTED = "rejected"    # 400/422: some lines are bad (partial write)
    AUTH = "auth"            # refused (401/403/404, other 4xx, missing RP): keep the data


@dataclass(frozen=True, slots=True)
class WriteResult:
    kind: WriteKind
    status: int = 0
    error: str = ""
    retry_after_s: float | None = None
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.kind is WriteKind.OK

    @property
    def retryable(self) -> bool:
        """The same body may succeed later."""
        return self.kind is WriteKind.RETRY

    @property
    def splittable(self) -> bool:
        """Halves of the body may succeed (too large, or some lines bad)."""
        return self.kind in (WriteKind.TOO_LARGE, WriteKind.REJECTED)


#: InfluxDB 1.x answers 500 to a write naming a retention policy it lacks:
#: configuration, not a passing failure.
_CONFIG_500 = ("retention policy not found",)


def classify(status: int, error: str = "") -> WriteKind:
    """How to handle an HTTP answer to a write (0: no answer at all)."""
    if status in (200, 204):
        return WriteKind.OK
    if status == 413:
        return WriteKind.TOO_LARGE
    if status in (400, 422):
        return WriteKind.REJECTED
    if status in (408, 429) or status == 0:
        return WriteKind.RETRY
    if 400 <= status < 500:
        return WriteKind.AUTH
    if status == 500 and any(m in error for m in _CONFIG_500):
        return WriteKind.AUTH
    return WriteKind.RETRY


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class InfluxWriter:
    """One HTTP session to one InfluxDB. Build, then ``await start()``."""

    def __init__(self, settings: InfluxSection) -> None:
        self._s = settings
        self._session: aiohttp.ClientSession | None = None
        self._base, auth_headers = endpoint(settings)
        if settings.api == "v1":
            self._write_url = f"{self._base}/write"
            self._params: dict[str, str] = {"db": settings.database, "precision": "ms"}
            if settings.retention_policy:
                self._params["rp"] = settings.retention_policy
        else:
            self._write_url = f"{self._base}/api/v2/write"
            self._params = {"org": settings.org or "", "bucket": settings.bucket or "",
                            "precision": "ms"}
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        if settings.gzip:
            self._headers["Content-Encoding"] = "gzip"
        #: Sent with every request (write, ping, query).
        self._auth_headers = auth_headers
        self._headers.update(auth_headers)

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._s.timeout_s),
                connector=aiohttp.TCPConnector(limit=8),
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise WriterNotStarted("InfluxWriter.start() was not awaited")
        return self._session

    async def write(self, body: bytes) -> WriteResult:
        """Write line protocol (lines joined by ``\\n``, millisecond times)."""
        session = self.session
        data = gzip.compress(body, 1) if self._s.gzip else body
        t0 = time.perf_counter()
        try:
            async with session.post(self._write_url, params=self._params, data=data,
                                    headers=self._headers) as resp:
                status = resp.status
                text = "" if status in (200, 204) else (await resp.text(errors="replace"))[:500]
                retry_after = _retry_after(resp.headers.get("Retry-After"))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return WriteResult(WriteKind.RETRY, 0, f"{type(exc).__name__}: {exc}"[:300],
                               None, time.perf_counter() - t0)
        elapsed = time.perf_counter() - t0
        text = text.strip()
        return WriteResult(classify(status, text), status, text,
                           None if status in (200, 204) else retry_after, elapsed)

    async def ping(self) -> bool:
        try:
            async with self.session.get(f"{self._base}/ping",
                                        headers=self._auth_headers) as resp:
                return resp.status in (200, 204)
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    async def ensure_database(self) -> bool:
        """CREATE DATABASE over the v1 query API (the statement in the body,
        not the URL); False if it could not."""
        if self._s.api != "v1" or not self._s.create_database:
            return True
        name = self._s.database.replace("\\", "\\\\").replace('"', '\\"')
        try:
            async with self.session.post(f"{self._base}/query",
                                         data={"q": f'CREATE DATABASE "{name}"'},
                                         headers=self._auth_headers) as resp:
                return resp.status == 200
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False
