"""Logging, set up once per process: structlog over the standard library.

Console lines for people (``format="console"``), one JSON object per line for
machines (``format="json"``, the default when stderr is not a terminal).
Bind context such as gateway and topic with ``log.bind(...)``. Secrets never
go into log lines: URLs are logged through :func:`redact_url`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import structlog

__all__ = ["LogFormat", "get_logger", "redact_url", "setup_logging"]

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
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(logging.WARNING, logging.getLevelName(level.upper()))
                        if isinstance(logging.getLevelName(level.upper()), int) else logging.INFO,
                        stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def get_logger(name: str, **bind: Any) -> Any:
    """A logger that takes its configuration when it first logs, so one
    made at import time still follows ``setup_logging``."""
    return structlog.get_logger(logger_name=name, **bind)


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query,
                       parts.fragment))
