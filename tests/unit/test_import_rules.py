"""The import rules that keep the parts apart (docs/architecture.md): the
wire contract imports nothing else of farmedge, the gateway (which runs on a
Pi with its own small set of dependencies) imports neither the edge, the
alert engine nor provisioning, and nothing shipped imports the tests.

Checked at run time, in a fresh interpreter per part: every module of the
part is imported and the farmedge modules that came with it are listed, so
a lazy import made at module level counts and one inside a function (run
only by a command of another part) does not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import importlib, json, pkgutil, sys
import farmedge
part = sys.argv[1]
pkg = importlib.import_module(part)
names = [part] + [m.name for m in pkgutil.walk_packages(pkg.__path__, part + ".")]
for n in names:
    importlib.import_module(n)
mine = (m for m in sys.modules if m == "tests" or m.startswith(("farmedge.", "tests.")))
print(json.dumps(sorted(mine)))
"""

RULES: dict[str, tuple[str, ...]] = {
    # part: prefixes of modules it must not bring in
    "farmedge.contract": ("farmedge.",),
    "farmedge.gateway": ("farmedge.edge", "farmedge.alerts", "farmedge.provision"),
}
ALLOWED = {"farmedge.contract": ("farmedge.contract",)}


def loaded_by(part: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, part], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True)
    mods: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return mods


@pytest.mark.parametrize("part", sorted(RULES))
def test_a_part_brings_in_only_what_its_rules_allow(part: str) -> None:
    mods = loaded_by(part)
    assert any(m.startswith(part) for m in mods)
    allowed = ALLOWED.get(part, ())
    bad = [m for m in mods if m.startswith(RULES[part]) and not m.startswith(allowed)]
    assert bad == [], f"{part} imports {bad}"
    assert not [m for m in mods if m == "tests" or m.startswith("tests.")]


def test_nothing_shipped_imports_the_tests_or_the_dev_tooling() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "farmedge").rglob("*.py")
                 if any(line.lstrip().startswith(("import tests", "from tests",
                                                  "import farmedge_dev", "from farmedge_dev"))
                        for line in p.read_text(encoding="utf-8").splitlines())]
    assert offenders == []
