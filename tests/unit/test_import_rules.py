"""The import rules that keep the parts apart (docs/architecture.md, "Import
rules"):

* ``farmedge.contract`` imports nothing else of farmedge: both sides use it;
* ``farmedge.storage`` and ``farmedge.transport`` (the adapters of InfluxDB
  and MQTT) import only ``contract``, ``config``, ``logs`` and ``backoff``;
* ``farmedge.cluster`` (partition leases) imports only ``transport``,
  ``contract``, ``config`` and ``logs``;
* ``farmedge.edge`` does not import the alert engine's internals: only
  ``edge/app.py`` (where the edge is composed) and ``edge/settings.py`` (for
  the ``[alerts]`` section) import ``farmedge.alerts``, the package itself;
* ``farmedge.alerts`` imports nothing of ``farmedge.edge``: it is a stage
  the edge hands typed records to (farmedge/records.py), not part of it;
* ``farmedge.gateway`` (it runs on a Pi with its own, smaller set of
  dependencies) imports neither ``edge``, ``alerts``, ``storage`` nor
  ``provision``, and loads none of them through another module either;
* nothing shipped (``farmedge/``) imports the developer tooling
  (``farmedge_dev``, tools/) or the tests, and the developer tooling imports
  nothing of the tests (its wheel holds none).

Read statically (tests/codescan.py): every import statement of every module,
at module level or inside a function, and ``importlib.import_module`` of a
literal name. "Loads through another module" follows the imports that run
when a module is imported (not those inside functions, which only a command
of another part runs, nor ``if TYPE_CHECKING:``). A run-time probe per part
checks the same in a fresh interpreter.

While the parts are being reworked, :data:`ALLOWED` lists the imports that
break a rule today, each with the change that removes it. An entry that no
longer matches an import fails the test: delete it.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.codescan import ROOT, Import, all_imports, in_part, module_names

ADAPTER_MAY_USE = ("farmedge.contract", "farmedge.config", "farmedge.logs", "farmedge.backoff")
EDGE_MAY_IMPORT_ALERTS = ("farmedge.edge.app", "farmedge.edge.settings")
CLUSTER_MAY_USE = ("farmedge.transport", "farmedge.contract", "farmedge.config", "farmedge.logs")


@dataclass(frozen=True)
class Rule:
    name: str
    #: The modules the rule is about (a package and everything in it).
    part: str
    #: True for an import the rule refuses (importer, target).
    refuses: Callable[[str, str], bool]
    #: Also refuse what the part loads through other modules at import time.
    transitive: bool = False
    #: The distribution's top package the part is in.
    package: str = "farmedge"


def _farmedge(t: str) -> bool:
    return in_part(t, "farmedge")


def _adapter(part: str) -> Callable[[str, str], bool]:
    def refuses(importer: str, target: str) -> bool:
        return (_farmedge(target) and not in_part(target, part)
                and not any(in_part(target, ok) for ok in ADAPTER_MAY_USE))
    return refuses


def _edge_alerts(importer: str, target: str) -> bool:
    if not in_part(target, "farmedge.alerts"):
        return False
    return not (target == "farmedge.alerts" and importer in EDGE_MAY_IMPORT_ALERTS)


GATEWAY_MUST_NOT = ("farmedge.edge", "farmedge.alerts", "farmedge.storage", "farmedge.provision")

RULES = [
    Rule("the contract imports nothing else of farmedge", "farmedge.contract",
         lambda i, t: _farmedge(t) and not in_part(t, "farmedge.contract"), transitive=True),
    Rule("storage imports only contract, config, logs, backoff", "farmedge.storage",
         _adapter("farmedge.storage")),
    Rule("transport imports only contract, config, logs, backoff", "farmedge.transport",
         _adapter("farmedge.transport")),
    Rule("the cluster imports only transport, contract, config, logs", "farmedge.cluster",
         lambda i, t: _farmedge(t) and not in_part(t, "farmedge.cluster")
         and not any(in_part(t, ok) for ok in CLUSTER_MAY_USE)),
    Rule("the edge imports only the alerts package, from app.py and settings.py",
         "farmedge.edge", _edge_alerts),
    Rule("the alert engine imports nothing of the edge (it is a stage the edge hands records to)",
         "farmedge.alerts", lambda i, t: in_part(t, "farmedge.edge")),
    Rule("the gateway imports neither edge, alerts, storage nor provision", "farmedge.gateway",
         lambda i, t: any(in_part(t, p) for p in GATEWAY_MUST_NOT), transitive=True),
    Rule("nothing shipped imports the dev tooling or the tests", "farmedge",
         lambda i, t: in_part(t, "farmedge_dev") or in_part(t, "tests"), transitive=True),
    Rule("the dev tooling imports nothing of the tests (its wheel holds none)", "farmedge_dev",
         lambda i, t: in_part(t, "tests"), package="farmedge_dev"),
]

#: Imports that break a rule today: (importer, imported) -> the change that
#: removes it. Shrinks to nothing as the parts land.
ALLOWED: dict[tuple[str, str], str] = {}


def _direct(rule: Rule) -> list[Import]:
    return [i for i in all_imports(rule.package) if in_part(i.importer, rule.part)
            and rule.refuses(i.importer, i.target)]


@functools.cache
def _loaded_at_import() -> dict[str, set[str]]:
    """module -> the farmedge modules importing it runs (parents included)."""
    known = module_names()
    graph: dict[str, set[str]] = {}
    for i in all_imports():
        if not i.at_import:
            continue
        parts = i.target.split(".")
        for n in range(1, len(parts) + 1):
            t = ".".join(parts[:n])
            if t in known:
                graph.setdefault(i.importer, set()).add(t)
    return graph


def _chains(rule: Rule) -> list[str]:
    """Refused modules a part's module loads through others, with the chain."""
    graph = _loaded_at_import()
    out = []
    for start in sorted(m for m in module_names() if in_part(m, rule.part)):
        seen = {start: [start]}
        todo = deque([start])
        while todo:
            m = todo.popleft()
            for t in sorted(graph.get(m, ())):
                if t in seen:
                    continue
                seen[t] = [*seen[m], t]
                if rule.refuses(m, t) and len(seen[t]) > 2:
                    out.append(" -> ".join(seen[t]))
                todo.append(t)
    return out


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.part)
def test_no_module_imports_what_its_rules_refuse(rule: Rule) -> None:
    bad = [f"{i.importer} imports {i.target} (line {i.line})" for i in _direct(rule)
           if (i.importer, i.target) not in ALLOWED]
    assert bad == [], f"{rule.name}:\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("rule", [r for r in RULES if r.transitive], ids=lambda r: r.part)
def test_no_part_loads_what_its_rules_refuse_through_another_module(rule: Rule) -> None:
    bad = [c for c in _chains(rule) if tuple(c.split(" -> ")[-2:]) not in ALLOWED]
    assert bad == [], f"{rule.name}, at import time:\n  " + "\n  ".join(bad)


def test_every_allowed_exception_is_still_needed() -> None:
    found = {(i.importer, i.target) for r in RULES for i in _direct(r)}
    stale = sorted(set(ALLOWED) - found)
    assert stale == [], f"no longer imported, delete from ALLOWED: {stale}"


def test_the_scan_sees_imports_at_every_level() -> None:
    """The scanner itself: module level, inside functions, under
    TYPE_CHECKING, relative, and importlib.import_module of a literal."""
    by = {(i.importer, i.target): i for i in all_imports()}
    cli = [i for i in all_imports() if i.importer == "farmedge.cli" and not i.at_import]
    assert cli, "farmedge.cli imports the parts' commands inside functions"
    assert any(i.at_import and in_part(i.target, "farmedge.contract")
               for (imp, _), i in by.items() if in_part(imp, "farmedge.edge"))
    rel = [i for i in all_imports() if i.importer == "farmedge.gateway.agent"
           and in_part(i.target, "farmedge.gateway")]
    assert rel, "relative imports resolve to full names"


# ------------------------------------------------------------------ at run time

PROBE = r"""
import importlib, json, pkgutil, sys
import farmedge
part = sys.argv[1]
pkg = importlib.import_module(part)
names = [part] + [m.name for m in pkgutil.walk_packages(pkg.__path__, part + ".")]
for n in names:
    importlib.import_module(n)
mine = (m for m in sys.modules if m.split(".")[0] in ("farmedge", "farmedge_dev", "tests"))
print(json.dumps(sorted(mine)))
"""


@pytest.mark.parametrize(("part", "refused"), [
    ("farmedge.contract", ("farmedge.",)),
    ("farmedge.gateway", tuple(p + "." for p in GATEWAY_MUST_NOT) + GATEWAY_MUST_NOT),
])
def test_importing_a_part_loads_only_what_its_rules_allow(part: str,
                                                          refused: tuple[str, ...]) -> None:
    out = subprocess.run([sys.executable, "-c", PROBE, part], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True)
    mods: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    assert any(in_part(m, part) for m in mods)
    bad = [m for m in mods if (m.startswith(refused) and not in_part(m, part))
           or m.split(".")[0] in ("farmedge_dev", "tests")]
    assert bad == [], f"{part} loads {bad}"
