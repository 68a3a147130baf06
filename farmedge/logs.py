"""Logging, set up once per process: structlog over the standard library.

Console lines for people (``format="console"``), one JSON object per line for
machines (``format="json"``, the default when stderr is not a terminal).
Bind context such as gateway and topic with ``log.bind(...)``. Secrets never
go into log lines: every line passes :func:`redact_secrets`, which replaces
the userinfo of any URL in any value (``http://admin:SECRET@host`` becomes
``http://admin:***@host``, ``https://TOKEN@host`` becomes
``https://***@host``), in structlog's lines and the standard library's alike.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import MutableMapping
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import structlog

__all__ = ["LogFormat", "Throttle", "get_logger", "redact_secrets", "redact_text", "redact_url",
           "route_library_logger", "setup_logging"]

# scheme://userinfo@ : userinfo is what RFC 3986 allows there (no "/", "@",
# white space); a password after the first ":".
_URL_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]{0,30}://)([^\s/@:?#\"']*)(:[^\s/@?#\"']*)?@")


def _mask(m: re.Match[str]) -> str:
    scheme, user, password = m.group(1), m.group(2), m.group(3)
    if password is not None:
        return f"{scheme}{user}:***@"
    return f"{scheme}***@"


def redact_text(text: str) -> str:
    """``text`` with the userinfo of every URL in it masked."""
    if "://" not in text:
        return text
    return _URL_USERINFO.sub(_mask, text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_redact_value(v) for v in value]
    text = str(value)
    return redact_text(text) if "://" in text else value


def redact_secrets(logger: Any, method: str,
                   event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask URL userinfo in every value of the line."""
    for k, v in event_dict.items():
        event_dict[k] = _redact_value(v)
    return event_dict


class _RedactFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "://" in msg:
            record.msg, record.args = redact_text(msg), None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            if "://" in text:
                record.exc_text, record.exc_info = redact_text(text), None
        return True

LogFormat = Literal["auto", "console", "json"]


def setup_logging(level: str = "info", fmt: LogFormat = "auto") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, redact_secrets, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(logging.WARNING, logging.getLevelName(level.upper()))
                        if isinstance(logging.getLevelName(level.upper()), int) else logging.INFO,
                        stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _RedactFilter) for f in handler.filters):
            handler.addFilter(_RedactFilter())


def get_logger(name: str, **bind: Any) -> Any:
    """A logger that takes its configuration when it first logs, so one
    made at import time still follows ``setup_logging``."""
    return structlog.get_logger(logger_name=name, **bind)


class _ToStructlog(logging.Handler):
    """Hands a library's standard-library log records to a structlog logger,
    as one dotted event with the library's text in ``message``."""

    def __init__(self, event: str, name: str) -> None:
        super().__init__()
        self.event = event
        self._log = get_logger(name)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a library's bad format string must not stop it
            text = str(record.msg)
        kw: dict[str, Any] = {"message": text, "library": record.name}
        if record.exc_info and record.exc_info[1] is not None:
            kw["error"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        level = record.levelname.lower()
        method = getattr(self._log, level if level in ("debug", "info", "warning", "error",
                                                       "critical") else "info")
        method(self.event, **kw)


def route_library_logger(library: str, event: str, *, level: int = logging.INFO) -> None:
    """Send the standard-library logger ``library`` (and its children)
    through structlog as ``event`` (e.g. ``"alerts.apprise"``), redacted like
    every other line, instead of the root logger's plain text. Idempotent."""
    lg = logging.getLogger(library)
    if any(isinstance(h, _ToStructlog) for h in lg.handlers):
        return
    lg.addHandler(_ToStructlog(event, f"farmedge.{event.split('.', 1)[0]}"))
    lg.setLevel(level)
    lg.propagate = False


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        port = parts.port  # raises for a port that is not a port
    except ValueError:
        return "<unparseable url>"
    host = parts.hostname or ""
    if port:
        host = f"{host}:{port}"
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query,
                       parts.fragment))


class Throttle:
    """At most one log line per key per ``every`` seconds; counts the rest."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def allow(self, key: tuple[str, str]) -> int | None:
        """None: stay quiet. A number: log now, with this many suppressed."""
        now = time.monotonic()
        last, suppressed = self._last.get(key, (-1e9, 0))
        if now - last >= self.every:
            if len(self._last) > 10_000:
                self._last.clear()
            self._last[key] = (now, 0)
            return suppressed
        self._last[key] = (last, suppressed + 1)
        return None


class Budget:
    """At most ``n`` log lines per key per ``every`` seconds, whatever else
    they name; counts the rest. Above a :class:`Throttle` keyed by sender:
    a flood of ids each new (a client inventing a gateway id per message)
    passes a per-id throttle once per id and would write a line for each."""

    def __init__(self, n: int = 20, every: float = 10.0) -> None:
        self.n = n
        self.every = every
        self._windows: dict[str, tuple[float, int, int]] = {}

    def allow(self, key: str) -> int | None:
        """None: stay quiet. A number: log now, with this many suppressed
        (in windows before this one, for this key)."""
        now = time.monotonic()
        start, used, suppressed = self._windows.get(key, (-1e9, 0, 0))
        if now - start >= self.every:
            start, used = now, 0
        if used < self.n:
            self._windows[key] = (start, used + 1, 0)
            return suppressed
        self._windows[key] = (start, used, suppressed + 1)
        return None
