"""The ``farmedge`` command.

Each part of the system adds its own subcommands through a small module that
imports nothing heavy at the top, so ``farmedge --help`` stays fast on a Pi.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from . import __version__

# subcommand name -> module with ``add_parser(subparsers) -> None``. A parser
# sets ``func`` (args -> exit code) as its default.
_SUBCOMMANDS: dict[str, str] = {
    "edge": "farmedge.edge.cli",
    "gateway": "farmedge.gateway.cli",
    "simulate": "farmedge.simulate",
    "demo": "farmedge.demo",
    "provision": "farmedge.provision.cli",
    "alerts": "farmedge.alerts.cli",
    "fleet": "farmedge.fleet",
}


def stop_on_signals() -> threading.Event:
    """An event that SIGINT and SIGTERM set, for commands that run until
    stopped without an asyncio loop (simulate, demo)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return stop


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="farmedge",
        description="Farm sensor data from the field to the people who act on it.",
    )
    parser.add_argument("--version", action="version", version=f"farmedge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _SUBCOMMANDS.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("farmedge"):
                continue  # a part that is not built yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
