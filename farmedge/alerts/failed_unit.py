"""Telling the service center's operators that a farmedge service failed.

The edge cannot announce its own death; systemd can. The edge's unit names
``OnFailure=farmedge-failed@%N.service`` (deploy/edge/), and when the edge
fails for good (its restarts used up) systemd starts that unit, which runs::

    python -m farmedge.alerts.failed_unit --registry /etc/farmedge/registry.yaml \\
        --unit farmedge-edge

It sends one short message to every Apprise URL of the registry's
``center_contacts`` (in each contact's language), plus any ``--url``, and
prints what it did (the journal keeps it). It depends on as little as it
can: a registry it cannot validate (which may be why the edge failed) is
read leniently for the contacts' URLs. ``--min-interval`` (default 30 min)
keeps a service that fails again and again from sending more than one
message in that time; the next message says how many failures it held back.

Exit status: 0 sent to at least one URL (or held back by the interval),
1 nothing could be sent (no URL, or every URL failed), 2 bad arguments.
See docs/edge.md, "When the edge itself fails".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Target", "main", "notice", "targets_from_registry"]

_TITLE = {"zh": "farmedge服务故障", "en": "farmedge service failed"}


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    language: str = "zh"
    contact: str = ""


def targets_from_registry(path: Path) -> tuple[list[Target], str | None]:
    """The center contacts' URLs, and a warning when the registry could not
    be validated (its URLs are then taken from the YAML as it stands)."""
    warning: str | None = None
    try:
        from farmedge.registry import load_registry

        reg = load_registry(path)
    except Exception as exc:  # a broken registry must not silence the notice
        warning = f"the registry does not validate ({str(exc).splitlines()[0][:200]}); " \
                  "using the URLs it lists"
    else:
        return [Target(u, c.language, c.name) for c in reg.center_contacts
                for u in c.notify], None
    try:
        import yaml

        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except Exception as exc:
        return [], f"cannot read the registry {path}: {exc}"[:300]
    out: list[Target] = []
    contacts = doc.get("center_contacts") if isinstance(doc, dict) else None
    for c in contacts if isinstance(contacts, list) else []:
        if not isinstance(c, dict):
            continue
        lang = "en" if c.get("language") == "en" else "zh"
        urls = c.get("notify")
        for u in urls if isinstance(urls, list) else []:
            if isinstance(u, str) and "://" in u:
                out.append(Target(u, lang, str(c.get("name") or "")))
    return out, warning


def _result(env: dict[str, str]) -> str:
    """``exit-code, status 1`` / ``signal, killed KILL`` / ``start-limit-hit``,
    from the environment systemd (>= 251) gives a unit started by
    OnFailure= (MONITOR_SERVICE_RESULT, MONITOR_EXIT_CODE, MONITOR_EXIT_STATUS)."""
    result = env.get("MONITOR_SERVICE_RESULT", "")
    code, status = env.get("MONITOR_EXIT_CODE", ""), env.get("MONITOR_EXIT_STATUS", "")
    if code == "exited" and status:
        detail = f"status {status}"
    elif code and status:
        detail = f"{code} {status}"
    else:
        detail = ""
    return ", ".join(x for x in (result, detail) if x) or "failed"


def notice(unit: str, host: str, result: str, lang: str, *, held: int = 0) -> str:
    """The message: what failed, where and what it means first, the command
    to look into it last (what an SMS cut to one segment loses)."""
    more = ""
    if held:
        more = f"（此前又失败{held}次）" if lang == "zh" else f" ({held} more failures before)"
    if lang == "zh":
        return (f"{host}上的{unit}已停止（{result}）{more}，农户收不到告警。"
                f"请查看 journalctl -u {unit}")
    return (f"{unit} on {host} has stopped ({result}){more}: farms get no alerts until it "
            f"runs again. See journalctl -u {unit}")


def _send(t: Target, title: str, body: str, timeout: float) -> str | None:
    """None when delivered, else the reason."""
    try:
        import apprise
    except ModuleNotFoundError:
        return "Apprise is not installed (pip install 'farmedge[alerts]')"
    from .notify import SMS_SCHEMES, scheme_of
    from .templates import fit_sms

    if scheme_of(t.url) in SMS_SCHEMES:
        body = fit_sms(body, t.language)
    ap = apprise.Apprise()
    if not ap.add(t.url):
        return f"Apprise does not accept the URL scheme {scheme_of(t.url)!r}"
    socket.setdefaulttimeout(timeout)
    try:
        ok = ap.notify(title=title, body=body)
    except Exception as exc:  # Apprise plugins raise many things
        return f"{type(exc).__name__}: {exc}"[:200]
    return None if ok else "the service did not accept the message"


class _Throttle:
    """At most one message per unit per interval, across runs (a small JSON
    file in the state folder)."""

    def __init__(self, state_dir: Path | None, unit: str, interval_s: float) -> None:
        self.path = state_dir / "failed-unit-notices.json" if state_dir else None
        self.unit = unit
        self.interval_s = interval_s
        self.doc: dict[str, Any] = {}
        if self.path is not None:
            with contextlib.suppress(OSError, ValueError):
                loaded = json.loads(self.path.read_text())
                if isinstance(loaded, dict):
                    self.doc = loaded

    def _entry(self) -> dict[str, Any]:
        e = self.doc.get(self.unit)
        return e if isinstance(e, dict) else {}

    def held_back(self, now: float) -> bool:
        last = self._entry().get("sent_at")
        return isinstance(last, int | float) and now - last < self.interval_s

    @property
    def held(self) -> int:
        n = self._entry().get("held", 0)
        return n if isinstance(n, int) else 0

    def record(self, now: float, *, sent: bool) -> None:
        self.doc[self.unit] = {"sent_at": now, "held": 0} if sent else \
            {**self._entry(), "held": self.held + 1}
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(self.doc))
                tmp.replace(self.path)
            except OSError as exc:
                print(f"failed-unit: cannot save {self.path}: {exc}", file=sys.stderr)


def _duration(text: str) -> float:
    from .rules import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None, env: dict[str, str] | None = None) -> int:
    env = dict(os.environ if env is None else env)
    p = argparse.ArgumentParser(prog="python -m farmedge.alerts.failed_unit",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", type=Path,
                   help="the registry whose center_contacts hear of it")
    p.add_argument("--url", action="append", default=[],
                   help="an Apprise URL to tell as well (repeatable; English unless --language)")
    p.add_argument("--language", choices=("zh", "en"), default="en",
                   help="language of the --url messages (en)")
    p.add_argument("--unit", default=env.get("MONITOR_UNIT", ""),
                   help="the unit that failed (default: $MONITOR_UNIT, which systemd sets)")
    p.add_argument("--min-interval", type=_duration, default=1800.0,
                   help="at most one message per unit this often (30m)")
    p.add_argument("--state-dir", type=Path,
                   default=Path(env["STATE_DIRECTORY"].split(":")[0])
                   if env.get("STATE_DIRECTORY") else None,
                   help="where the last message's time is kept (default $STATE_DIRECTORY)")
    p.add_argument("--timeout", type=float, default=20.0,
                   help="seconds to wait for each URL (20)")
    args = p.parse_args(argv)
    unit = (args.unit or "a farmedge service").removesuffix(".service")
    host = socket.gethostname()
    result = _result(env)
    now = time.time()
    throttle = _Throttle(args.state_dir, unit, args.min_interval)
    print(f"failed-unit: {unit} on {host} failed ({result})", flush=True)
    if throttle.held_back(now):
        throttle.record(now, sent=False)
        print(f"failed-unit: operators were told less than {args.min_interval:g} s ago; "
              f"not again ({throttle.held} held back)", flush=True)
        return 0
    targets: list[Target] = [Target(u, args.language) for u in args.url]
    if args.registry is not None:
        found, warning = targets_from_registry(args.registry)
        if warning:
            print(f"failed-unit: {warning}", file=sys.stderr, flush=True)
        targets += found
    if not targets:
        print("failed-unit: nobody to tell: give the registry's center_contacts notify URLs "
              "(or --url)", file=sys.stderr, flush=True)
        return 1
    delivered = 0
    for t in targets:
        body = notice(unit, host, result, t.language, held=throttle.held)
        why = _send(t, _TITLE[t.language], body, args.timeout)
        who = t.contact or "--url"
        if why is None:
            delivered += 1
            print(f"failed-unit: told {who} ({t.url.split('://', 1)[0]})", flush=True)
        else:
            print(f"failed-unit: could not tell {who} ({t.url.split('://', 1)[0]}): {why}",
                  file=sys.stderr, flush=True)
    if delivered:
        throttle.record(now, sent=True)
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
