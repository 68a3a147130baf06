"""The ``farmedge`` command line: every option has help text, every command
shows an example that parses, help pages are plain text, and a closed pipe
ends a command quietly."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from farmedge.cli import EXIT_BROKEN_PIPE, build_parser

ROOT = Path(__file__).resolve().parents[2]


def _walk(p: argparse.ArgumentParser, path: tuple[str, ...]
          ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                yield from _walk(sub, (*path, name))


PARSERS = list(_walk(build_parser(), ("farmedge",)))
IDS = [" ".join(path) for path, _ in PARSERS]


def test_every_part_is_listed() -> None:
    names = {path[1] for path, _ in PARSERS if len(path) == 2}
    assert {"edge", "gateway", "provision", "alerts", "simulate", "demo"} <= names


@pytest.mark.parametrize(("path", "parser"), PARSERS, ids=IDS)
def test_every_option_has_help_text(path: tuple[str, ...],
                                    parser: argparse.ArgumentParser) -> None:
    skip = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)
    missing = [a.option_strings[0] if a.option_strings else a.dest
               for a in parser._actions
               if not isinstance(a, skip) and not a.help]
    assert not missing, f"{' '.join(path)}: no help text for {missing}"


def _examples(path: tuple[str, ...], parser: argparse.ArgumentParser) -> list[str]:
    """The example command lines of a parser: lines of its epilog or
    description that start with its own command (``farmedge gateway run``),
    after an optional "example:" label, with backslash continuations joined;
    and "Example: ..." sentences inside the description (examples separated
    by "; ")."""
    me = " ".join(path)
    out: list[str] = []
    for text in (parser.epilog or "", parser.description or ""):
        text = re.sub(r"\\\n\s*", " ", text)
        for line in text.splitlines():
            line = re.sub(r"^examples?:\s*", "", line.strip(), flags=re.I)
            if line == me or line.startswith(me + " "):
                out.append(line)
        for m in re.finditer(r"Examples?:[ \t]+(\S.*?)(?:\n\n|$)", text, re.S | re.I):
            for ex in m.group(1).replace("\n", " ").split("; "):
                ex = ex.strip().rstrip(".")
                if ex == me or ex.startswith(me + " "):
                    out.append(ex)
    return out


@pytest.mark.parametrize(("path", "parser"), PARSERS, ids=IDS)
def test_every_command_shows_an_example_that_parses(
        path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
    examples = _examples(path, parser)
    assert examples, f"{' '.join(path)}: no example in its help"
    for ex in examples:
        # Only the first command of a pipeline or an && list.
        first = re.split(r"\s(?:\||&&|>)\s", ex)[0]
        words = shlex.split(first)[1:]
        if any(re.fullmatch(r"[A-Z][A-Z_]+", w) for w in words) or "[" in first:
            continue  # a synopsis with placeholders: "farmedge COMMAND --help", "[--name N]"
        try:
            args = build_parser().parse_args(words)
        except SystemExit as exc:
            pytest.fail(f"{' '.join(path)}: example {ex!r} does not parse ({exc.code})")
        assert getattr(args, "func", None) is not None, ex


@pytest.mark.parametrize(("path", "parser"), PARSERS, ids=IDS)
def test_help_is_plain_text(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
    text = parser.format_help()
    assert "``" not in text, f"{' '.join(path)}: reStructuredText in --help"
    assert not re.search(r"::\s*$", text, re.M), f"{' '.join(path)}: an RST literal block"


def test_help_walk_through_the_real_command() -> None:
    """`farmedge provision --help`, as a user runs it."""
    r = subprocess.run([sys.executable, "-m", "farmedge", "provision", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert "``" not in r.stdout
    assert "example" in r.stdout


def test_a_closed_pipe_ends_quietly() -> None:
    """`farmedge alerts templates | head`: the reader goes away; no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "farmedge", "alerts", "templates"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the command writes: its first write fails
    err = proc.stderr.read().decode()
    assert proc.wait(60) == EXIT_BROKEN_PIPE
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert err == ""


def test_head_reads_the_first_lines(tmp_path: Path) -> None:
    r = subprocess.run(f"'{sys.executable}' -m farmedge alerts templates | head -3",
                       shell=True, cwd=ROOT, capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 0
    assert len(r.stdout.splitlines()) == 3
    assert "Traceback" not in r.stderr
