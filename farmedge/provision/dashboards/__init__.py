"""The Grafana dashboards of the service center, generated as JSON.

``farmedge provision dashboards`` (or ``python -m farmedge.provision.dashboards``)
writes dashboards/json/*.json; with ``--check`` it fails when the committed
files differ from what this package generates (the tests run it).

Why a small generator instead of grafanalib or grafana-foundation-sdk, and
instead of hand-kept JSON: the JSON is what Grafana provisions and what a site
edits, so it stays committed; but four dashboards repeat the same filters,
units and thresholds, and the county-wide counts union one subquery per
contract field, which is error-prone by hand. The two libraries would add a
dependency whose versions follow Grafana's (grafana-foundation-sdk is
published per Grafana release; grafanalib lags the panel model) for what is
plain dictionaries here. docs/stack.md says more.

Every query is InfluxQL (InfluxDB 1.8, 2.x through its v1 endpoints and DBRP
mapping, 3.x), using Grafana's macros ``$timeFilter`` and ``$__interval``
and the template variables county → farm → gateway / plot / animal in their
regex form (``"farm" =~ /^$farm$/``), which works for one value, several and
All. Every measurement, tag and field name comes from
:mod:`farmedge.storage.schema`. :func:`expectations` says what each panel's
queries must return; the tests run every query against a real InfluxDB
filled by the real pipeline.

Modules: ``panels`` (the board, targets, thresholds, field settings),
``queries`` (filters, variables, shared queries), ``boards`` (the four
dashboards).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from farmedge.storage.schema import reading_fields

from .boards import county_overview, farm, gateway_health, ingest_health
from .panels import DATASOURCE_UID, Board, Expect, Json
from .queries import idle_gateways_query

__all__ = ["DATASOURCE_UID", "DEFAULT_OUT", "Expect", "add_parser", "dashboards",
           "expectations", "idle_gateways_query", "main", "reading_fields"]

#: Where the committed dashboards live, from the repository's root.
DEFAULT_OUT = Path("dashboards/json")
_COMMAND = "farmedge provision dashboards"


def _boards() -> list[Board]:
    return [county_overview(), farm(), gateway_health(), ingest_health()]


def dashboards() -> dict[str, Json]:
    """uid -> dashboard JSON."""
    return {b.uid: b.doc for b in _boards()}


def expectations() -> list[Expect]:
    return [e for b in _boards() for e in b.expect]


def _render(doc: Json) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _files(out: Path) -> dict[Path, str]:
    return {out / f"{uid}.json": _render(doc) for uid, doc in dashboards().items()}


def _arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help=f"folder of the dashboards' JSON (default {DEFAULT_OUT})")
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 when the files differ from what would be "
                         "written")


def _run(out: Path, check: bool) -> int:
    files = _files(out)
    if check:
        stale = [str(p) for p, text in files.items()
                 if not p.exists() or p.read_text(encoding="utf-8") != text]
        if stale:
            print(f"out of date (run {_COMMAND}): " + ", ".join(stale), file=sys.stderr)
            return 1
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for p, text in files.items():
        p.write_text(text, encoding="utf-8")
        print(p)
    return 0


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m farmedge.provision.dashboards",
                                 description="Write the Grafana dashboards as JSON.")
    _arguments(ap)
    args = ap.parse_args(list(argv) if argv is not None else None)
    return _run(args.out, args.check)


def add_parser(psub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``farmedge provision dashboards``."""
    p = psub.add_parser(
        "dashboards", help="write the Grafana dashboards as JSON",
        description="Write the Grafana dashboards (dashboards/json/*.json) as this version "
                    "of farmedge generates them, with the InfluxDB schema's names.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  farmedge provision dashboards\n"
               "  farmedge provision dashboards --check --out dashboards/json")
    _arguments(p)
    p.set_defaults(func=lambda args: _run(args.out, args.check))
