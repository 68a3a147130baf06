"""``farmedge edge run`` and ``farmedge edge check-config``."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("edge", help="the edge ingestion service (MQTT → InfluxDB → alerts)")
    edge_sub = p.add_subparsers(dest="edge_command", metavar="COMMAND")
    for name, func, helptext in (
        ("run", _run, "run the edge service until SIGTERM/SIGINT"),
        ("check-config", _check, "validate the config (and registry) and exit"),
    ):
        q = edge_sub.add_parser(name, help=helptext)
        q.add_argument("--config", "-c", type=Path,
                       default=Path(os.environ["FARMEDGE_CONFIG"])
                       if os.environ.get("FARMEDGE_CONFIG") else None,
                       help="TOML config file (see config.example.toml); "
                            "FARMEDGE_* environment variables override it")
        q.set_defaults(func=func)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _load(args: argparse.Namespace) -> Any:
    from farmedge.config import ConfigError, load_settings
    from farmedge.edge.settings import EdgeSettings
    from farmedge.registry import load_registry

    try:
        settings = load_settings(EdgeSettings, args.config)
        registry = load_registry(settings.registry) if settings.registry else None
    except ConfigError as exc:
        print(f"farmedge edge: configuration error\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return settings, registry


def _check(args: argparse.Namespace) -> int:
    _settings, registry = _load(args)
    source = args.config or "defaults and environment"
    if registry is not None:
        print(f"configuration OK ({source}); registry: {len(registry.index())} gateways")
    else:
        print(f"configuration OK ({source}); open enrollment (no registry)")
    return 0


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from farmedge.config import ConfigError
    from farmedge.logs import setup_logging

    settings, registry = _load(args)
    setup_logging(settings.log.level, settings.log.format)

    from farmedge.edge.service import EdgeFatal, EdgeService, build_observers
    from farmedge.logs import get_logger

    try:
        observers = build_observers(settings, registry)
    except ConfigError as exc:
        print(f"farmedge edge: configuration error\n{exc}", file=sys.stderr)
        return 2

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        service = EdgeService(settings, registry=registry, observers=observers)
        await service.run(stop)

    try:
        asyncio.run(main())
    except EdgeFatal:
        # Logged once as edge.fatal. Exit now: a thread still blocked in a
        # connect must not hold the exit (asyncio.run would wait for it).
        _exit_now(1)
    except Exception as exc:
        get_logger("farmedge.edge").critical(
            "edge.fatal", cause=f"{type(exc).__name__}: {exc}"[:500], exc_info=exc)
        _exit_now(1)
    return 0


def _exit_now(code: int) -> None:
    import logging

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(code)
