"""``farmedge gateway run``, ``check-config`` and ``read-once``."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from farmedge.cli import ParagraphHelpFormatter

if TYPE_CHECKING:
    from farmedge.checks import Report

    from .settings import GatewaySettings

__all__ = ["add_parser"]

DEFAULT_CONFIG = "/etc/farmedge/gateway.toml"



def add_parser(sub: Any) -> None:
    from farmedge.checks import EXIT_CODES_HELP

    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("gateway", help="the farm gateway agent (sensors to MQTT)",
                       description="The farm gateway agent: reads sensors, keeps every reading "
                                   "in a durable outbox and sends it to the broker.",
                       epilog="example:\n  farmedge gateway check-config && "
                              "farmedge gateway run", formatter_class=raw)
    gsub = p.add_subparsers(dest="gateway_command", metavar="COMMAND", required=True)
    run = gsub.add_parser("run", help="run the agent until SIGTERM/SIGINT",
                          description="Run the agent until SIGTERM or SIGINT. It first runs "
                                      "the checks of check-config and refuses to start (exit 2) "
                                      "on an error.",
                          epilog=f"example:\n  farmedge gateway run --config {DEFAULT_CONFIG}",
                          formatter_class=raw)
    run.add_argument("--config", "-c", type=Path, default=Path(DEFAULT_CONFIG),
                     help=f"settings file (default {DEFAULT_CONFIG}); FARMEDGE_* environment "
                          "variables override it")
    run.set_defaults(func=_run)
    chk = gsub.add_parser("check-config", help="check a settings file and exit",
                          description="Check the settings file as `gateway run` does: errors "
                                      "name the file, line and key; warnings for a gateway "
                                      "without sensors, a placeholder broker host or password.",
                          epilog=f"example:\n  farmedge gateway check-config --config "
                                 f"{DEFAULT_CONFIG}\n\n{EXIT_CODES_HELP}",
                          formatter_class=raw)
    chk.add_argument("--config", "-c", type=Path, default=Path(DEFAULT_CONFIG),
                     help=f"settings file (default {DEFAULT_CONFIG}); FARMEDGE_* environment "
                          "variables override it")
    chk.add_argument("--strict", action="store_true",
                     help="exit 1 when there are warnings (and no errors)")
    chk.set_defaults(func=_check)
    once = gsub.add_parser(
        "read-once", help="read every sensor once and print the readings; publish nothing",
        description="Read every configured sensor once, the way the agent reads it, and "
                    "print each reading with its quality flag, or the driver's error. "
                    "Nothing is published and the outbox is not touched: a check of the "
                    "wiring in the field.\n\nStop the agent first when a sensor is on a "
                    "serial port (RS485, RFID): two readers on one port garble each "
                    "other's frames.\n\nExit status: 0 "
                    "when every sensor was read, 1 when one failed (driver error, no "
                    "answer, or a value flagged 'error'), 2 for a wrong settings file.",
        epilog=f"example:\n  farmedge gateway read-once --config {DEFAULT_CONFIG}\n"
               f"  farmedge gateway read-once --sensor soil-1 --json",
        formatter_class=ParagraphHelpFormatter)
    once.add_argument("--config", "-c", type=Path, default=Path(DEFAULT_CONFIG),
                      help=f"settings file (default {DEFAULT_CONFIG}); FARMEDGE_* environment "
                           "variables override it")
    once.add_argument("--sensor", action="append", default=[], metavar="ID",
                      help="read only this sensor (repeat for several)")
    once.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                      help="give up on a sensor that has not answered after this long "
                           "(default 30)")
    once.add_argument("--json", action="store_true", help="print JSON, for scripts")
    once.set_defaults(func=_read_once)
    req = gsub.add_parser(
        "requeue-refused",
        help="put the readings the broker refused for themselves back into the outbox",
        description="A reading the broker refused for itself (a message too large even "
                    "alone, say) is set aside in the outbox's refused table, so that the "
                    "readings behind it flow. Once the broker takes it (its limit raised), "
                    "this puts every reading set aside back into the outbox: the agent "
                    "sends them first, oldest first. Stop the agent first (it holds the "
                    "outbox). --list only prints them.",
        epilog="example:\n  sudo systemctl stop farmedge-gateway\n"
               f"  farmedge gateway requeue-refused --config {DEFAULT_CONFIG}\n"
               "  sudo systemctl start farmedge-gateway",
        formatter_class=raw)
    req.add_argument("--config", "-c", type=Path, default=Path(DEFAULT_CONFIG),
                     help=f"settings file (default {DEFAULT_CONFIG}); FARMEDGE_* environment "
                          "variables override it")
    req.add_argument("--list", action="store_true",
                     help="print the readings set aside (sensor, kind, time, reason code); "
                          "change nothing")
    req.set_defaults(func=_requeue_refused)



def _checked(config: Path) -> tuple[Report, GatewaySettings | None]:
    """The settings after every check ``run`` makes, or None (errors printed)."""
    from farmedge.checks import check_gateway

    report, s = check_gateway(config)
    if report.errors or s is None:
        report.print("farmedge gateway", quiet_ok=True)
        return report, None
    return report, s


def _check(args: argparse.Namespace) -> int:
    from farmedge.checks import check_gateway

    report, _ = check_gateway(args.config)
    report.print("farmedge gateway")
    return report.exit_code(strict=args.strict)


def _read_once(args: argparse.Namespace) -> int:
    from farmedge.checks import EXIT_ERRORS

    from .readonce import print_json, print_table, read_all

    _, s = _checked(args.config)
    if s is None:
        return EXIT_ERRORS
    unknown = [x for x in args.sensor if x not in {c.id for c in s.sensors}]
    if unknown:
        print(f"{args.config}: no sensor {', '.join(map(repr, unknown))}; configured: "
              f"{', '.join(c.id for c in s.sensors) or 'none'}", file=sys.stderr)
        return EXIT_ERRORS
    results = read_all(s, timeout_s=args.timeout, only=args.sensor)
    (print_json if args.json else print_table)(s, results, sys.stdout)
    sys.stdout.flush()
    return 1 if any(r.failed for r in results) else 0


def _requeue_refused(args: argparse.Namespace) -> int:
    from farmedge.checks import EXIT_ERRORS

    from .errors import OutboxError
    from .outbox import Outbox

    _, s = _checked(args.config)
    if s is None:
        return EXIT_ERRORS
    ob = Outbox(s.outbox_path)
    try:
        ob.open()
        if args.list:
            for sensor, kind, ts, code in ob.aside.list():
                print(f"{sensor}\t{kind}\t{ts}\t{code:#x}")
            print(f"{ob.aside.count} readings set aside in {s.outbox_path}")
        else:
            n = ob.aside.requeue()
            print(f"{n} readings put back into {s.outbox_path}: the agent sends them first")
        ob.close()
    except OutboxError as exc:
        print(f"farmedge gateway requeue-refused: {exc} (is the agent still running?)",
              file=sys.stderr)
        return 1
    return 0


def _run(args: argparse.Namespace) -> int:
    from farmedge.checks import EXIT_ERRORS
    from farmedge.logs import get_logger, setup_logging

    from .agent import Agent
    from .errors import GatewayError

    report, s = _checked(args.config)
    if s is None:
        return EXIT_ERRORS
    setup_logging(s.log_level, s.log_format)
    for warning in report.warnings:  # what check-config warns about, in the service's log
        get_logger("farmedge.gateway").warning("config.warning", warning=warning)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Agent(s).run(stop)

    try:
        asyncio.run(main())
    except GatewayError as exc:
        print(f"farmedge gateway: {exc}", file=sys.stderr)
        return 1
    return 0
