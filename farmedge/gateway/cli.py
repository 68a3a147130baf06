"""``farmedge gateway run`` and ``farmedge gateway check-config``."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser"]

DEFAULT_CONFIG = "/etc/farmedge/gateway.toml"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("gateway", help="the farm gateway agent (sensors to MQTT)",
                       description="The farm gateway agent: reads sensors, keeps every reading "
                                   "in a durable outbox and sends it to the broker.")
    gsub = p.add_subparsers(dest="gateway_command", metavar="COMMAND", required=True)
    run = gsub.add_parser("run", help="run the agent until SIGTERM/SIGINT")
    run.add_argument("--config", "-c", type=Path, default=Path(DEFAULT_CONFIG),
                     help=f"settings file (default {DEFAULT_CONFIG})")
    run.set_defaults(func=_run)
    chk = gsub.add_parser("check-config", help="validate a settings file and exit")
    chk.add_argument("--config", "-c", type=Path, default=Path(DEFAULT_CONFIG))
    chk.set_defaults(func=_check)


def _load(path: Path) -> Any:
    from farmedge.config import load_settings

    from .settings import GatewaySettings

    return load_settings(GatewaySettings, path)


def _check(args: argparse.Namespace) -> int:
    from farmedge.config import ConfigError

    try:
        s = _load(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"{args.config}: ok: gateway {s.county}/{s.farm}/{s.gateway}, "
          f"{len(s.sensors)} sensors, outbox {s.outbox_path}")
    for c in s.sensors:
        print(f"  {c.id}: {c.driver}, every {c.interval_s:g} s")
    return 0


def _run(args: argparse.Namespace) -> int:
    from farmedge.config import ConfigError
    from farmedge.logs import setup_logging

    from .agent import Agent
    from .errors import GatewayError

    try:
        s = _load(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    setup_logging(s.log_level, s.log_format)

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
