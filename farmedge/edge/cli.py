"""``farmedge edge run`` and ``farmedge edge check-config``."""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser"]


_EXAMPLES = {
    "run": "example:\n  farmedge edge run --config /etc/farmedge/edge.toml",
    "check-config": "example:\n  farmedge edge check-config --config /etc/farmedge/edge.toml "
                    "--strict",
}


def add_parser(sub: Any) -> None:
    from farmedge.checks import EXIT_CODES_HELP

    p = sub.add_parser("edge", help="the edge ingestion service (MQTT → InfluxDB → alerts)",
                       description="The edge ingestion service: MQTT → validation → "
                                   "InfluxDB → alerts (docs/edge.md).",
                       epilog="example:\n  farmedge edge check-config -c edge.toml && "
                              "farmedge edge run -c edge.toml",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    edge_sub = p.add_subparsers(dest="edge_command", metavar="COMMAND")
    for name, func, helptext, desc in (
        ("run", _run, "run the edge service until SIGTERM/SIGINT",
         "Run the edge service until SIGTERM or SIGINT. It first runs every check of "
         "check-config and refuses to start (exit 2) on an error."),
        ("check-config", _check, "check the config, registry, alert rules and notifiers",
         "Check everything `edge run` checks before it starts: the settings, the registry, "
         "the alert rule files and the profiles and templates they name, and that every "
         "contact's notify URL can be delivered (Apprise installed, scheme known). Errors "
         "name the file and line; warnings point at things that work but are probably "
         "not meant (farms without contacts, placeholder hosts)."),
    ):
        epilog = _EXAMPLES[name] + ("\n\n" + EXIT_CODES_HELP if name == "check-config" else "")
        q = edge_sub.add_parser(name, help=helptext, description=desc, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        q.add_argument("--config", "-c", type=Path,
                       default=Path(os.environ["FARMEDGE_CONFIG"])
                       if os.environ.get("FARMEDGE_CONFIG") else None,
                       help="TOML config file (see config.example.toml; default: "
                            "$FARMEDGE_CONFIG, else defaults and FARMEDGE_* variables only); "
                            "FARMEDGE_* environment variables override it")
        if name == "check-config":
            q.add_argument("--strict", action="store_true",
                           help="exit 1 when there are warnings (and no errors)")
        q.set_defaults(func=func)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _check(args: argparse.Namespace) -> int:
    from farmedge.checks import check_edge

    report, _settings, _registry = check_edge(args.config)
    report.print("farmedge edge")
    return report.exit_code(strict=args.strict)


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from farmedge.checks import EXIT_ERRORS, check_edge
    from farmedge.config import ConfigError
    from farmedge.logs import get_logger, setup_logging

    report, settings, registry = check_edge(args.config)
    if report.errors:
        report.print("farmedge edge", quiet_ok=True)
    if report.errors or settings is None:
        print("farmedge edge: not started (farmedge edge check-config shows the same)",
              file=sys.stderr)
        return EXIT_ERRORS
    setup_logging(settings.log.level, settings.log.format)
    for warning in report.warnings:  # what check-config warns about, in the service's log
        get_logger("farmedge.edge").warning("config.warning", warning=warning)

    from farmedge.edge.app import EdgeService
    from farmedge.edge.errors import EdgeError, EdgeFatal

    for w in report.warnings:  # printed above; also in the structured log
        if w.startswith("environment variable FARMEDGE_"):
            get_logger("farmedge.edge").warning("config.unknown_env", problem=w)

    try:
        service = EdgeService(settings, registry=registry)  # builds the stages too
    except ConfigError as exc:
        print(f"farmedge edge: configuration error\n{exc}", file=sys.stderr)
        return EXIT_ERRORS
    # With stages (the alert engine) a batch's readings live until it is
    # durable; at CPython's default threshold (700 new objects) the cyclic
    # collector then runs every few messages and walks them again and again
    # (docs/performance.md, "Alerts"). The edge makes few cycles.
    gc.set_threshold(20_000, 10, 10)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await service.run(stop)

    try:
        asyncio.run(main())
    except EdgeFatal:
        # Logged once as edge.fatal. Exit now: a thread still blocked in a
        # connect must not hold the exit (asyncio.run would wait for it).
        _exit_now(1)
    except EdgeError as exc:  # it could not start
        get_logger("farmedge.edge").critical("edge.fatal", cause=str(exc)[:500])
        print(f"farmedge edge: {exc}", file=sys.stderr)
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
