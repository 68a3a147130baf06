"""Reading InfluxDB with InfluxQL over ``/query`` (InfluxDB 1.x; 2.x and 3.x
through their v1-compatible API, where ``database`` names the DBRP mapping,
as for Grafana), for command-line tools such as ``farmedge fleet``:
synchronous, standard library only. Credentials as the writer sends them
(farmedge/storage/auth.py): in a header, never in the URL; the statements
in the body.

Errors are :class:`QueryError` (a :class:`~farmedge.storage.StorageError`),
with :class:`DatabaseNotFound` for a database InfluxDB does not have."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from .auth import endpoint
from .errors import StorageError
from .settings import InfluxSection

__all__ = ["DatabaseNotFound", "InfluxQuery", "QueryError", "Series"]

#: One series of a result: ``name``, ``tags``, ``columns``, ``values``.
Series = dict[str, Any]


class QueryError(StorageError):
    """InfluxDB cannot be asked, or answered an error."""


class DatabaseNotFound(QueryError):
    def __init__(self, message: str, database: str) -> None:
        super().__init__(message)
        self.database = database


class InfluxQuery:
    """``query(statements)`` runs them in one request and returns each
    statement's series, in order."""

    def __init__(self, settings: InfluxSection, *, timeout_s: float = 30.0) -> None:
        self._base, auth = endpoint(settings)
        self._url = f"{self._base}/query"
        self._headers = {"Accept": "application/json", **auth}
        self._db = settings.database
        self._timeout_s = timeout_s

    @property
    def where(self) -> str:
        """The server, for messages (no credentials)."""
        return self._base

    def _post(self, q: str) -> dict[str, Any]:
        body = urllib.parse.urlencode({"q": q, "db": self._db, "epoch": "ms"}).encode()
        req = urllib.request.Request(self._url, data=body, headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self._timeout_s) as r:
                doc: dict[str, Any] = json.loads(r.read())
                return doc
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise QueryError(f"InfluxDB at {self._base} answered {exc.code}: {detail}") from None
        except (OSError, ValueError) as exc:
            raise QueryError(f"cannot query InfluxDB at {self._base}: {exc}") from None

    def __call__(self, statements: Sequence[str]) -> list[list[Series]]:
        doc = self._post(";\n".join(statements))
        results = doc.get("results", [])
        # After a failed statement InfluxDB answers "not executed" for the
        # rest: the first error is the one that says why.
        errors = [str(res["error"]) for res in results if "error" in res]
        if errors:
            first = next((e for e in errors if e != "not executed"), errors[0])
            if first == "not executed":
                # InfluxDB 1.x says only this, for every statement, when the
                # database does not exist; one statement alone says why.
                res0 = (self._post(statements[0]).get("results") or [{}])[0]
                first = str(res0.get("error") or first)
            if first.startswith("database not found"):
                raise DatabaseNotFound(f"InfluxDB at {self._base}: {first}", self._db)
            raise QueryError(f"InfluxDB at {self._base}: {first}")
        out = [list(res.get("series", [])) for res in results]
        if len(out) != len(statements):
            raise QueryError(f"InfluxDB answered {len(out)} results for "
                             f"{len(statements)} statements")
        return out
