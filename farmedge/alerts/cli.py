"""``farmedge alerts``: check rule files, list message templates for approval."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("alerts", help="alert rules and message templates",
                       description="Check alert rule files and list message templates.")
    asub = p.add_subparsers(dest="alerts_command", metavar="ACTION")
    c = asub.add_parser("check", help="validate rule files (and a registry against them)")
    c.add_argument("rules", nargs="*", help="rule files or folders (the shipped profiles are "
                   "always checked too)")
    c.add_argument("--registry", help="also check that the registry's profiles exist")
    c.add_argument("--no-shipped", action="store_true", help="do not load the shipped profiles")
    c.set_defaults(func=_check)
    t = asub.add_parser("templates", help="list every message text, for SMS provider approval")
    t.add_argument("rules", nargs="*", help="extra rule files or folders")
    t.add_argument("--format", choices=("text", "csv", "json"), default="text")
    t.add_argument("--style", choices=("plain", "aliyun", "tencent"), default="plain",
                   help="placeholder style: {where}, ${where} (Aliyun) or {1} (Tencent Cloud)")
    t.add_argument("--language", choices=("zh", "en"), help="only this language")
    t.set_defaults(func=_templates)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _check(args: argparse.Namespace) -> int:
    from farmedge.config import ConfigError

    from .engine import check_registry
    from .errors import AlertsError
    from .rules import load_rules

    try:
        rs = load_rules(args.rules, shipped=not args.no_shipped)
        if args.registry:
            from farmedge.registry import load_registry

            check_registry(rs, load_registry(args.registry))
    except (ConfigError, AlertsError) as exc:
        print(exc, file=sys.stderr)
        return 1
    n = sum(len(p.rules) for p in rs.profiles.values())
    print(f"ok: {len(rs.profiles)} profiles, {n} rules, {len(rs.templates)} templates")
    return 0


def _templates(args: argparse.Namespace) -> int:
    from farmedge.config import ConfigError

    from .rules import load_rules
    from .templates import export_templates

    try:
        rs = load_rules(args.rules)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    rows = [r for r in export_templates(rs, style=args.style)
            if args.language is None or r.language == args.language]
    if args.format == "json":
        json.dump([{"template": r.template, "variant": r.variant, "language": r.language,
                    "text": r.text, "variables": list(r.variables),
                    "widest_chars": r.widest_chars} for r in rows],
                  sys.stdout, ensure_ascii=False, indent=1)
        print()
    elif args.format == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(["template", "variant", "language", "text", "variables", "widest_chars"])
        for r in rows:
            w.writerow([r.template, r.variant, r.language, r.text, " ".join(r.variables),
                        r.widest_chars])
    else:
        for r in rows:
            print(f"{r.template}.{r.variant}.{r.language}\t{r.text}")
    return 0
