"""The ``farmedge`` command.

Each part of the system adds its own subcommands through a small module that
imports nothing heavy at the top, so ``farmedge --help`` stays fast on a Pi.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

from . import __version__

#: Exit status when the reader of our output went away (128 + SIGPIPE, what a
#: shell reports for a command killed by a closed pipe).
EXIT_BROKEN_PIPE = 141

# subcommand name -> module with ``add_parser(subparsers) -> None``. A parser
# sets ``func`` (args -> exit code) as its default.
_SUBCOMMANDS: dict[str, str] = {
    "edge": "farmedge.edge.cli",
    "gateway": "farmedge.gateway.cli",
    "provision": "farmedge.provision.cli",
    "alerts": "farmedge.alerts.cli",
    "fleet": "farmedge.fleet",
}

#: Entry-point group through which other distributions add subcommands (the
#: developer tooling, tools/pyproject.toml, adds ``simulate`` and ``demo``).
PLUGIN_GROUP = "farmedge.commands"

#: Commands of the developer tooling (the farmedge-dev distribution, tools/):
#: listed even where it is not installed, saying how to get it.
DEV_COMMANDS = ("simulate", "demo")
DEV_TOOLING_MISSING = (
    "the developer tooling (farmedge-dev) is not installed; from a clone of farmedge run "
    "scripts/bootstrap, or install it next to farmedge: pip install ./tools")


def _subcommands() -> dict[str, str]:
    from importlib.metadata import entry_points

    found = dict(_SUBCOMMANDS)
    for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        found.setdefault(ep.name, ep.value)
    return found


#: third-party module -> the extra that installs it, for "pip install 'farmedge[...]'".
_EXTRA_OF: dict[str, str] = {
    "aiohttp": "edge", "prometheus_client": "edge", "yaml": "edge", "msgpack": "edge",
    "zstandard": "edge", "apprise": "alerts", "pymodbus": "gateway", "serial": "gateway",
}


def missing_dependency(exc: ModuleNotFoundError) -> str | None:
    """The operator's message for a library that is not installed, or None
    when ``exc`` is about something else."""
    top = (exc.name or "").split(".")[0]
    extra = _EXTRA_OF.get(top)
    if extra is None:
        return None
    return (f"this needs the Python package {top!r}, which is not installed; "
            f"install farmedge with the {extra!r} extra: pip install 'farmedge[{extra}]'")


def _unavailable(sub: Any, name: str, reason: str) -> None:
    """A subcommand whose module cannot load here (a part installed without
    its extra): it is listed, and running it says what to install."""
    p = sub.add_parser(name, help=f"(not installed: {reason.split(';')[0]})", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def say(args: argparse.Namespace) -> int:
        print(f"farmedge {name}: {reason}", file=sys.stderr)
        return 2

    p.set_defaults(func=say, unavailable=True)


def plain(doc: str | None) -> str:
    """A module docstring as --help text: reStructuredText's ``literal``
    marks and ``::`` block openers removed."""
    import re

    text = (doc or "").replace("``", "")
    return re.sub(r"::(\s*)$", r":\1", text, flags=re.M)


class ParagraphHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Wraps a description's paragraphs, keeps the lines of a paragraph that
    has its own line breaks (an example)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        return "\n\n".join(textwrap.fill(p, min(width, 78), initial_indent=indent,
                                         subsequent_indent=indent)
                           if "\n" not in p else p for p in text.split("\n\n"))


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
        epilog="examples:\n"
               "  farmedge edge check-config --config /etc/farmedge/edge.toml\n"
               "  farmedge gateway read-once --config /etc/farmedge/gateway.toml\n"
               "  farmedge COMMAND --help      (every command has examples)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"farmedge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = _subcommands()
    for name, module_name in commands.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] == "farmedge_dev":
                _unavailable(sub, name, DEV_TOOLING_MISSING)
                continue
            if exc.name and exc.name.startswith("farmedge"):
                continue  # a part that is not built yet
            reason = missing_dependency(exc)
            if reason is None:
                raise
            _unavailable(sub, name, reason)
            continue
        module.add_parser(sub)
    for name in DEV_COMMANDS:
        if name not in commands:
            _unavailable(sub, name, DEV_TOOLING_MISSING)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # A command that is not installed takes any arguments (options too, which
    # argparse's REMAINDER would refuse) and says what to install.
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "unavailable", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        rc = int(func(args) or 0)
        sys.stdout.flush()
        return rc
    except BrokenPipeError:
        # The reader went away (`farmedge alerts templates | head`): stop
        # quietly, as a Unix tool killed by SIGPIPE does. Output still
        # buffered would fail again at exit, so stdout now goes nowhere.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    except ModuleNotFoundError as exc:
        reason = missing_dependency(exc)
        if reason is None:
            raise
        print(f"farmedge {args.command}: {reason}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
