"""House rules on the shape of the shipped code (docs/architecture.md,
"Rules the tests keep"), read statically (tests/codescan.py):

* no class in farmedge/ is longer than 300 lines unless :data:`BIG_CLASSES`
  says why;
* one logging style: structlog loggers from ``farmedge.logs.get_logger``; the
  standard library's ``logging.getLogger`` (or ``logging.info(...)`` and
  friends) only in farmedge/logs.py, or where a third-party library's own
  logger is routed (:data:`STDLIB_LOGGING`, each with its reason);
* event names are literal, dotted and lower case (``"edge.write_failed"``):
  what operators grep for and dashboards count.

Each list also holds, while the parts are being reworked, what breaks a
rule today and the change that removes it. An entry that no longer matches
anything fails the test: delete it.
"""

from __future__ import annotations

import ast
import re

from tests.codescan import ROOT, Module, modules

MAX_CLASS_LINES = 300

#: "path:Class" -> why it may be longer than MAX_CLASS_LINES.
BIG_CLASSES: dict[str, str] = {
}

#: Modules besides farmedge/logs.py that use the standard library's logging,
#: and why.
STDLIB_LOGGING: dict[str, str] = {}

#: Modules whose log calls do not yet use dotted event names.
FREE_TEXT_EVENTS: dict[str, str] = {}

EVENT = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)+")
LEVELS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "fatal", "msg",
          "log"}
#: What a logger is called in farmedge: log, _log, self.log, logger, lg, ...
LOGGER_NAME = re.compile(r"_?(log|logger|lg)")


def _classes(m: Module) -> list[tuple[str, int]]:
    return [(f"{m.rel}:{n.name}", (n.end_lineno or n.lineno) - n.lineno + 1)
            for n in ast.walk(m.tree) if isinstance(n, ast.ClassDef)]


def test_no_class_is_longer_than_300_lines_without_a_reason() -> None:
    sizes = dict(c for m in modules() for c in _classes(m))
    over = {k: n for k, n in sizes.items() if n > MAX_CLASS_LINES}
    unlisted = sorted(f"{k} ({n} lines)" for k, n in over.items() if k not in BIG_CLASSES)
    assert unlisted == [], (f"classes over {MAX_CLASS_LINES} lines: split them, or list them "
                            f"in BIG_CLASSES with the reason: {unlisted}")
    stale = sorted(f"{k} ({sizes.get(k, 'gone')})" for k in BIG_CLASSES if k not in over)
    assert stale == [], f"no longer over {MAX_CLASS_LINES} lines, delete from BIG_CLASSES: {stale}"


def _stdlib_logging(m: Module) -> list[str]:
    """Uses of the standard library's loggers: logging.getLogger, from
    logging import getLogger, logging.warning(...) and the like."""
    out = []
    for n in ast.walk(m.tree):
        if isinstance(n, ast.ImportFrom) and n.module == "logging":
            out += [f"line {n.lineno}: from logging import {a.name}" for a in n.names
                    if a.name == "getLogger" or a.name in LEVELS]
        elif (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
              and isinstance(n.func.value, ast.Name) and n.func.value.id == "logging"
              and (n.func.attr == "getLogger" or n.func.attr in LEVELS)):
            out.append(f"line {n.lineno}: {ast.unparse(n.func)}()")
    return out


def test_only_logs_py_uses_the_standard_librarys_loggers() -> None:
    found = {m.rel: u for m in modules() if m.rel != "farmedge/logs.py"
             and (u := _stdlib_logging(m))}
    unlisted = {k: v for k, v in found.items() if k not in STDLIB_LOGGING}
    assert unlisted == {}, ("log with farmedge.logs.get_logger (structlog); a third-party "
                            f"logger being routed goes in STDLIB_LOGGING: {unlisted}")
    stale = sorted(set(STDLIB_LOGGING) - set(found))
    assert stale == [], f"no stdlib logging left, delete from STDLIB_LOGGING: {stale}"


def _is_logger(func: ast.Attribute) -> bool:
    recv = func.value
    if isinstance(recv, ast.Call):      # get_logger("farmedge.edge").critical(...)
        f = recv.func
        return (isinstance(f, ast.Name) and f.id == "get_logger") or (
            isinstance(f, ast.Attribute) and f.attr in ("get_logger", "bind"))
    name = recv.attr if isinstance(recv, ast.Attribute) else getattr(recv, "id", "")
    return bool(LOGGER_NAME.fullmatch(name))


def _event_names(m: Module) -> list[str]:
    """Log calls whose event is not a literal dotted lower-case name."""
    bad = []
    for n in ast.walk(m.tree):
        if not (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                and n.func.attr in LEVELS and _is_logger(n.func) and n.args):
            continue
        ev = n.args[0]
        options = [ev.body, ev.orelse] if isinstance(ev, ast.IfExp) else [ev]
        for o in options:
            if not (isinstance(o, ast.Constant) and isinstance(o.value, str)
                    and EVENT.fullmatch(o.value)):
                bad.append(f"line {n.lineno}: {ast.unparse(o)[:70]}")
    return bad


def test_log_events_are_dotted_lower_case_names() -> None:
    found = {m.rel: b for m in modules() if (b := _event_names(m))}
    unlisted = {k: v for k, v in found.items() if k not in FREE_TEXT_EVENTS}
    assert unlisted == {}, ('event names are literal, dotted and lower case ("edge.write_failed"'
                            f'), the details go in keys: {unlisted}')
    stale = sorted(set(FREE_TEXT_EVENTS) - set(found))
    assert stale == [], f"all events dotted now, delete from FREE_TEXT_EVENTS: {stale}"


def test_the_checks_see_what_they_look_for() -> None:
    tree = ast.parse(
        "import logging\nfrom logging import getLogger\n"
        "log = logging.getLogger('x')\nlogging.warning('y')\n"
        "def f(self):\n    self.log.info('gateway starting')\n    log.error('edge.ok_name')\n"
        "    get_logger('a').warning('Bad.Name')\n    self._log.info(msg)\n"
        "    parser.error('not a logger')\n"
        "    self.log.info('a.b' if x else 'free text')\n"
        "class Big:\n" + "    x = 1\n" * MAX_CLASS_LINES)
    m = Module("farmedge.probe", ROOT / "farmedge" / "probe.py", tree)
    assert len(_stdlib_logging(m)) == 3
    assert [b.split(": ", 1)[1] for b in _event_names(m)] == [
        "'gateway starting'", "'Bad.Name'", "msg", "'free text'"]
    assert _classes(m) == [("farmedge/probe.py:Big", MAX_CLASS_LINES + 1)]
