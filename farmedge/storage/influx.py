"""Writing line protocol to InfluxDB over HTTP (v1 or v2 write API).

Each write comes back as a :class:`WriteResult` that sorts the failure the way
the caller must handle it: retry (429, 5xx, network), split (413), reject
lines (400), or keep the data and raise the alarm (401, 403, 404).
"""

from __future__ import annotations

import email.utils
import gzip
import time
from dataclasses import dataclass
from enum import Enum

import aiohttp

from .settings import InfluxSection

__all__ = ["InfluxWriter", "WriteKind", "WriteResult"]


class WriteKind(Enum):
    OK = "ok"
    RETRY = "retry"          # transient: 429, 5xx, timeout, connection refused
    TOO_LARGE = "too_large"  # 413: split the batch
    REJECTED = "rejected"    # 400: some lines are bad (partial write)
    AUTH = "auth"            # 401/403/404: configuration problem, keep the data


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
        if settings.api == "v1":
            self._write_url = f"{settings.url}/write"
            self._params: dict[str, str] = {"db": settings.database, "precision": "ms"}
            if settings.retention_policy:
                self._params["rp"] = settings.retention_policy
        else:
            self._write_url = f"{settings.url}/api/v2/write"
            self._params = {"org": settings.org or "", "bucket": settings.bucket or "",
                            "precision": "ms"}
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        if settings.gzip:
            self._headers["Content-Encoding"] = "gzip"
        if settings.api == "v2" and settings.token is not None:
            self._headers["Authorization"] = f"Token {settings.token.get_secret_value()}"
        self._auth: aiohttp.BasicAuth | None = None
        if settings.api == "v1" and settings.username:
            pw = settings.password.get_secret_value() if settings.password else ""
            self._auth = aiohttp.BasicAuth(settings.username, pw)

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
            raise RuntimeError("InfluxWriter.start() was not awaited")
        return self._session

    async def write(self, body: bytes) -> WriteResult:
        data = gzip.compress(body, 1) if self._s.gzip else body
        t0 = time.perf_counter()
        try:
            async with self.session.post(self._write_url, params=self._params, data=data,
                                         headers=self._headers, auth=self._auth) as resp:
                status = resp.status
                text = "" if status in (200, 204) else (await resp.text())[:500]
                retry_after = _retry_after(resp.headers.get("Retry-After"))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return WriteResult(WriteKind.RETRY, 0, f"{type(exc).__name__}: {exc}"[:300],
                               None, time.perf_counter() - t0)
        elapsed = time.perf_counter() - t0
        if status in (200, 204):
            return WriteResult(WriteKind.OK, status, "", None, elapsed)
        if status == 413:
            kind = WriteKind.TOO_LARGE
        elif status in (400, 422):
            kind = WriteKind.REJECTED
        elif status in (401, 403, 404):
            kind = WriteKind.AUTH
        else:
            kind = WriteKind.RETRY
        return WriteResult(kind, status, text.strip(), retry_after, elapsed)

    async def ping(self) -> bool:
        try:
            async with self.session.get(f"{self._s.url}/ping") as resp:
                return resp.status in (200, 204)
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    async def ensure_database(self) -> bool:
        """CREATE DATABASE over the v1 query API; False if it could not."""
        if self._s.api != "v1" or not self._s.create_database:
            return True
        name = self._s.database.replace("\\", "\\\\").replace('"', '\\"')
        try:
            async with self.session.post(f"{self._s.url}/query",
                                         data={"q": f'CREATE DATABASE "{name}"'},
                                         auth=self._auth) as resp:
                return resp.status == 200
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False
