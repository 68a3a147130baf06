"""How farmedge talks to InfluxDB's HTTP API, for the writer and for
queries alike: the base URL without credentials, and the credentials as an
``Authorization`` header (never in the URL, where proxies and InfluxDB's own
request log keep them)."""

from __future__ import annotations

import base64
from urllib.parse import unquote, urlsplit, urlunsplit

from .settings import InfluxSection

__all__ = ["basic", "endpoint"]


def basic(user: str, password: str) -> str:
    """HTTP Basic credentials, UTF-8 (as InfluxDB compares them)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _without_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """The URL without ``user:password@``, and those credentials."""
    u = urlsplit(url)
    if u.username is None and u.password is None:
        return url, None
    host = u.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{u.port}" if u.port is not None else host
    return (urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment)),
            (unquote(u.username or ""), unquote(u.password or "")))


def endpoint(settings: InfluxSection) -> tuple[str, dict[str, str]]:
    """(base URL without credentials or a trailing slash, the auth headers):
    v2 ``Token``; v1 Basic from ``username``/``password``, else from the
    URL's ``user:password@``."""
    base, in_url = _without_userinfo(settings.url)
    auth: str | None = None
    if settings.api == "v2":
        if settings.token is not None:
            auth = f"Token {settings.token.get_secret_value()}"
    elif settings.username:
        pw = settings.password.get_secret_value() if settings.password else ""
        auth = basic(settings.username, pw)
    elif in_url is not None:
        auth = basic(*in_url)
    return base.rstrip("/"), ({"Authorization": auth} if auth else {})
