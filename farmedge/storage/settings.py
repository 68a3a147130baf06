"""The ``[influx]`` and ``[spool]`` sections: where readings are stored and how
much disk the spool may use while InfluxDB is away."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from farmedge.config import Section

__all__ = ["InfluxSection", "SpoolSection"]

PosFloat = Annotated[float, Field(gt=0)]


class InfluxSection(Section):
    url: str = "http://127.0.0.1:8086"
    #: v1: /write (InfluxDB 1.x, and the v1-compatible endpoint of 2.x/3.x);
    #: v2: /api/v2/write (2.x, 3.x, Cloud) with org, bucket and token.
    api: Literal["v1", "v2"] = "v1"
    database: str = "farmedge"
    retention_policy: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    org: str | None = None
    bucket: str | None = None
    token: SecretStr | None = None
    #: Write a batch when it holds this many lines ...
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 5000
    #: ... or when its oldest line is this old, whichever comes first.
    flush_interval_s: PosFloat = 1.0
    #: While no write is under way, a batch goes out once its oldest line is
    #: this old: low latency when the load is light. Under load the writer is
    #: busy and batches fill up to batch_size. 0 turns this off.
    linger_s: Annotated[float, Field(ge=0)] = 0.2
    timeout_s: PosFloat = 10.0
    #: Keep retrying a failing write this long before spooling it.
    retry_for_s: Annotated[float, Field(ge=0)] = 10.0
    backoff_min_s: PosFloat = 0.2
    backoff_max_s: PosFloat = 30.0
    #: CREATE DATABASE at start (v1 only); harmless when it exists.
    create_database: bool = True
    gzip: bool = False

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        u = urlsplit(v)
        if u.scheme not in {"http", "https"} or not u.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if u.query or u.fragment:
            # InfluxDB 1.x takes ?u=&p= credentials: they would be logged,
            # and the write path would land after the query.
            raise ValueError("must not have a query or fragment (credentials go in "
                             "username and password, or token)")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _v2_needs(self) -> InfluxSection:
        if self.api == "v2":
            missing = [k for k in ("org", "bucket", "token") if not getattr(self, k)]
            if missing:
                raise ValueError(f"api = \"v2\" needs {', '.join(missing)}")
        return self


class SpoolSection(Section):
    #: Most disk the spool may use; past it the oldest batches are dropped
    #: (counted in farmedge_spool_dropped_lines_total and logged).
    max_mb: PosFloat = 1024.0
    #: Share of max_mb (or less free disk than the rest of max_mb beyond
    #: it) at which the spool is filling: an operator incident, cleared 5
    #: points below.
    alert_share: Annotated[float, Field(gt=0, le=1)] = 0.8
