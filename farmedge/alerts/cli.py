"""``farmedge alerts``: check rule files, list message templates for approval."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    from farmedge.checks import EXIT_CODES_HELP

    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("alerts", help="alert rules and message templates",
                       description="Check alert rule files and list message templates "
                                   "(docs/alerts.md).",
                       epilog="example:\n  farmedge alerts check rules/ --registry registry.yaml",
                       formatter_class=raw)
    asub = p.add_subparsers(dest="alerts_command", metavar="ACTION")
    c = asub.add_parser("check", help="check rule files (and a registry against them)",
                        description="Check rule files as the edge does at start: every "
                                    "profile, template and include; with --registry also the "
                                    "profiles, quiet hours and time zones the registry names "
                                    "and that each contact's notify URL can be delivered.",
                        epilog="example:\n  farmedge alerts check /etc/farmedge/rules "
                               f"--registry /etc/farmedge/registry.yaml\n\n{EXIT_CODES_HELP}",
                        formatter_class=raw)
    c.add_argument("rules", nargs="*", help="rule files or folders (the shipped profiles are "
                   "always checked too)")
    c.add_argument("--registry", help="also check the registry against the rules (profiles, "
                   "quiet hours, time zones, notify URLs)")
    c.add_argument("--no-shipped", action="store_true", help="do not load the shipped profiles")
    c.add_argument("--strict", action="store_true",
                   help="exit 1 when there are warnings (and no errors)")
    c.set_defaults(func=_check)
    t = asub.add_parser("templates", help="list every message text, for SMS provider approval",
                        description="List every message text with its variables, one line "
                                    "per template, variant and language, for approval by an "
                                    "SMS provider.",
                        epilog="examples:\n  farmedge alerts templates --style aliyun "
                               "--language zh --format csv > templates.csv\n"
                               "  farmedge alerts templates | head",
                        formatter_class=raw)
    t.add_argument("rules", nargs="*", help="extra rule files or folders")
    t.add_argument("--format", choices=("text", "csv", "json"), default="text",
                   help="output format (default: text, one template per line)")
    t.add_argument("--style", choices=("plain", "aliyun", "tencent"), default="plain",
                   help="placeholder style: {where}, ${where} (Aliyun) or {1} (Tencent Cloud)")
    t.add_argument("--language", choices=("zh", "en"), help="only this language")
    t.set_defaults(func=_templates)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _check(args: argparse.Namespace) -> int:
    from farmedge.checks import Report, check_alerts
    from farmedge.config import ConfigError

    from .settings import AlertsSettings

    report = Report()
    registry = None
    if args.registry:
        from farmedge.registry import load_registry

        try:
            registry = load_registry(args.registry)
        except ConfigError as exc:
            report.error(str(exc))
    if not report.errors:
        settings = AlertsSettings(rules=list(args.rules), shipped_profiles=not args.no_shipped,
                                  crop_profiles={} if args.no_shipped else
                                  AlertsSettings().crop_profiles)
        check_alerts(report, settings, registry, args.registry)
    report.summary = [f"ok: {s.removeprefix('alerts: ')}" for s in report.summary]
    report.print("farmedge alerts")
    return report.exit_code(strict=args.strict)


def _templates(args: argparse.Namespace) -> int:
    from farmedge.config import ConfigError

    from .rules import load_rules
    from .templates import export_templates

    try:
        rs = load_rules(args.rules)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
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
