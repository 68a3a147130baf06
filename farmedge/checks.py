"""What the check commands check, shared with the programs they check.

``farmedge edge check-config``, ``farmedge gateway check-config`` and
``farmedge alerts check`` report here; ``edge run`` and ``gateway run`` run
the same checks before they start and refuse to start on an error, so a
configuration that passes its check is one the program accepts.

Errors name the file and line. Warnings are things that work but are probably
not what the operator wants (a farm whose alerts reach nobody, a placeholder
host). Exit codes, the same for every check command (docs/checks.md):

    0  the configuration is usable (warnings, if any, are printed)
    1  warnings only, and --strict was given
    2  errors: the program would refuse to start (also: a wrong command line)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .config import ConfigError

if TYPE_CHECKING:
    from .alerts.rules import RuleSet
    from .alerts.settings import AlertsSettings
    from .edge.settings import EdgeSettings
    from .gateway.settings import GatewaySettings
    from .registry import Registry
    from .transport.broker import Broker

__all__ = [
    "EXIT_CODES_HELP",
    "EXIT_ERRORS",
    "EXIT_OK",
    "EXIT_WARNINGS",
    "Report",
    "check_alerts",
    "check_edge",
    "check_gateway",
    "is_placeholder_host",
    "is_placeholder_secret",
]

EXIT_OK = 0
EXIT_WARNINGS = 1
EXIT_ERRORS = 2

#: The exit-code table, for the check commands' --help.
EXIT_CODES_HELP = """exit status:
  0  the configuration is usable (warnings, if any, are printed on stderr)
  1  warnings only, and --strict was given
  2  errors: the program would refuse to start (also: a wrong command line)"""

#: Host names that only appear in examples and templates.
_PLACEHOLDER_HOSTS = ("example.org", "example.com", "example.net", "example", "invalid",
                      "change-me", "changeme")
#: Passwords and tokens left at a template's value.
_PLACEHOLDER_SECRETS = frozenset({"", "change-me", "changeme", "change_me", "unset", "secret",
                                  "password", "xxx", "..."})


def is_placeholder_host(host: str | None) -> bool:
    h = (host or "").lower().rstrip(".")
    return any(h == p or h.endswith("." + p) for p in _PLACEHOLDER_HOSTS)


def is_placeholder_secret(value: str | None) -> bool:
    return value is not None and value.strip().lower() in _PLACEHOLDER_SECRETS


@dataclass
class Report:
    """Errors and warnings of one check, in the order found."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: What was checked, for the "ok" line.
    summary: list[str] = field(default_factory=list)

    def error(self, text: str) -> None:
        self.errors.extend(t for t in text.splitlines() if t.strip())

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def exit_code(self, *, strict: bool = False) -> int:
        if self.errors:
            return EXIT_ERRORS
        if self.warnings and strict:
            return EXIT_WARNINGS
        return EXIT_OK

    def print(self, prog: str, *, out: IO[str] | None = None, err: IO[str] | None = None,
              quiet_ok: bool = False) -> None:
        """Errors and warnings on stderr; the summary on stdout when there is
        no error (unless ``quiet_ok``)."""
        out = out or sys.stdout
        err = err or sys.stderr
        if self.errors:
            print(f"{prog}: configuration error", file=err)
            for e in self.errors:
                print(e, file=err)
        for w in self.warnings:
            print(f"warning: {w}", file=err)
        if not self.errors and not quiet_ok:
            for s in self.summary:
                print(s, file=out)


def _secret(v: Any) -> str | None:
    if v is None:
        return None
    get = getattr(v, "get_secret_value", None)
    return str(get()) if get is not None else str(v)


def _check_url_host(report: Report, where: str, url: str) -> None:
    if is_placeholder_host(urlsplit(url).hostname):
        report.warn(f"{where} {url!r}: the host is a placeholder; set the real broker or "
                    "server address")


def _check_files_exist(report: Report, where: str, paths: Iterable[tuple[str, Path | None]]
                       ) -> None:
    for key, p in paths:
        if p is not None and not Path(p).is_file():
            report.error(f"{where} {key}: {p}: no such file")


def _check_tls(report: Report, where: str, broker: Broker) -> None:
    """The broker's TLS context can be made from the files named (each one
    there, as :func:`_check_files_exist` found): a CA or certificate file
    that holds no certificate, or a key that does not fit, stops the start."""
    from .transport.errors import TransportError

    try:
        broker.ssl_context()
    except TransportError as exc:
        report.error(f"{where}: {exc}")


def _line_in(path: Path | None, loc: Sequence[int | str]) -> str:
    """``"file:line: "`` of a TOML key, or ``"file: "``; empty without a file."""
    if path is None:
        return ""
    from .config import toml_line

    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return f"{path}: "
    line = toml_line(text, loc)
    return f"{path}:{line}: " if line else f"{path}: "


# -- gateway ------------------------------------------------------------------


def check_gateway(path: Path | None) -> tuple[Report, GatewaySettings | None]:
    """Everything ``gateway run`` checks before it starts."""
    from .config import load_settings
    from .gateway.settings import GatewaySettings

    report = Report()
    try:
        s = load_settings(GatewaySettings, path)
    except ConfigError as exc:
        report.error(str(exc))
        return report, None
    src = str(path) if path else "environment"
    from .config import folder_problem, unknown_env

    for unknown in unknown_env(GatewaySettings):  # a misspelt variable sets nothing
        report.warn(unknown)
    for key, folder in (("data_dir", s.data_dir), ("[outbox] path", s.outbox_path.parent)):
        problem = folder_problem(folder)
        if problem is not None:
            env = "FARMEDGE_DATA_DIR" if key == "data_dir" else "FARMEDGE_OUTBOX_PATH"
            where = (f"environment variable {env}: " if os.environ.get(env)
                     else _line_in(path, ("data_dir",) if key == "data_dir"
                                   else ("outbox", "path")))
            report.error(f"{where}{key}: {problem}")
            break
    if s.uplink.compression in ("zstd", "zstd-dict"):
        try:
            import zstandard  # noqa: F401
        except ModuleNotFoundError:
            report.error(
                f"{_line_in(path, ('uplink', 'compression'))}[uplink] compression = "
                f"{s.uplink.compression!r} needs the Python package zstandard, which is not "
                "installed: pip install zstandard (on a 32-bit Pi it comes from piwheels), or "
                "use compression = \"deflate-dict\" (the default, standard library only)")
    for i, u in enumerate(s.mqtt.urls or [s.mqtt.url]):
        key = f"urls[{i + 1}]" if s.mqtt.urls else "url"
        _check_url_host(report, f"{_line_in(path, ('mqtt', key.split('[')[0]))}[mqtt] {key}", u)
    if s.mqtt.password is not None and is_placeholder_secret(_secret(s.mqtt.password)):
        report.warn(f"{_line_in(path, ('mqtt', 'password'))}[mqtt] password is a placeholder "
                    "(farmedge provision gateway writes a real one)")
    missing = len(report.errors)
    _check_files_exist(report, f"{src}: [mqtt]", [("ca_file", s.mqtt.ca_file)])
    if len(report.errors) == missing:
        _check_tls(report, f"{src}: [mqtt]", s.mqtt.broker)
    if not s.sensors:
        report.warn(f"{src}: no [[sensors]]: the gateway would send only its status "
                    "(gateway.example.toml shows each driver)")
    report.summary.append(f"{src}: ok: gateway {s.county}/{s.farm}/{s.gateway}, "
                          f"{len(s.sensors)} sensors, outbox {s.outbox_path}, MQTT "
                          f"{s.mqtt.protocol} to {', '.join(b.redacted for b in s.mqtt.brokers)}")
    for c in s.sensors:
        report.summary.append(f"  {c.id}: {c.driver}, every {c.interval_s:g} s")
    return report, s


# -- alerts and the registry --------------------------------------------------


def _registry_where(path: Path | str | None) -> Any:
    """loc -> ``"registry.yaml:12: "`` for the registry file at ``path``."""
    if path is None:
        return lambda loc: ""
    import yaml

    from .config import yaml_line

    try:
        root = yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        root = None

    def where(loc: tuple[int | str, ...]) -> str:
        line = yaml_line(root, loc) if root is not None else None
        return f"{path}:{line}: " if line else f"{path}: "

    return where


def _check_notifiers(report: Report, registry: Registry, where: Any) -> None:
    """Every contact's notify URL can be delivered: Apprise is installed and
    knows the URL's scheme."""
    from .alerts.notify import scheme_of

    urls: list[tuple[tuple[int | str, ...], str, str]] = []
    for i, f in enumerate(registry.farms):
        for j, c in enumerate(f.contacts):
            for k, u in enumerate(c.notify):
                urls.append((("farms", i, "contacts", j, "notify", k),
                             f"farm {f.county}/{f.farm} contact {c.name}", u))
    for j, c in enumerate(registry.center_contacts):
        for k, u in enumerate(c.notify):
            urls.append((("center_contacts", j, "notify", k), f"center contact {c.name}", u))
    if not urls:
        return
    try:
        import apprise
    except ModuleNotFoundError:
        report.error(
            f"alerts are on and {len(urls)} contact address(es) need Apprise to be delivered, "
            "but it is not installed: every message would fail. Install it "
            "(pip install 'farmedge[alerts]') or turn alerts off ([alerts] enabled = false)")
        return
    for loc, who, url in urls:
        ap = apprise.Apprise()
        if not ap.add(url):
            scheme = scheme_of(url) or "(none)"
            report.error(f"{where(loc)}{who}: notify URL with scheme {scheme!r} cannot be "
                         "used: Apprise does not know the scheme or the URL is incomplete "
                         "(docs/alerts.md lists the supported services)")


def _check_lookalikes(report: Report, registry: Registry, where: Any) -> None:
    """Ids of one scope that differ only in width or case (``gw-1`` and
    ``gw-１``, typed with an input method's full-width mode on; ``Farm-1``
    and ``farm-1``): each is an id of its own (its own topics, broker
    account and series) that reads as the other on a dashboard or in an SMS."""
    import unicodedata

    seen: dict[tuple[str, ...], tuple[str, str]] = {}

    def look(scope: tuple[str, ...], what: str, value: str,
             loc: tuple[int | str, ...]) -> None:
        key = (*scope, unicodedata.normalize("NFKC", value).casefold())
        first = seen.setdefault(key, (value, what))
        if first[0] != value:
            report.warn(f"{where(loc)}{what} {value!r} and {first[0]!r} differ only in width "
                        "or case: two ids that read as one (rename one)")

    for i, f in enumerate(registry.farms):
        look(("county",), "county", f.county, ("farms", i, "county"))
        look(("farm", f.county), f"farm of county {f.county}", f.farm, ("farms", i, "farm"))
        for gid, g in f.gateways.items():
            look(("gateway", f.county, f.farm), f"gateway of {f.county}/{f.farm}", gid,
                 ("farms", i, "gateways", gid))
            for sid in g.sensors:
                look(("sensor", f.county, f.farm, gid), f"sensor of {f.county}/{f.farm}/{gid}",
                     sid, ("farms", i, "gateways", gid, "sensors", sid))


def _check_registry_warnings(report: Report, registry: Registry, where: Any) -> None:
    for i, f in enumerate(registry.farms):
        if not f.contacts:
            report.warn(f"{where(('farms', i))}farm {f.county}/{f.farm} has no contacts: its "
                        "alerts reach nobody (add contacts: with notify URLs)")
        elif all(c.is_officer for c in f.contacts):
            report.warn(f"{where(('farms', i))}farm {f.county}/{f.farm} has only officers "
                        "among its contacts: the farmer hears nothing")
        for j, c in enumerate(f.contacts):
            loc = where(("farms", i, "contacts", j))
            if c.agronomist:
                report.warn(f"{loc}contact {c.name}: agronomist: true is the old spelling of "
                            "role: agronomist (still accepted)")
            if c.role in ("operator", "agronomist") or c.agronomist:
                report.warn(f"{loc}contact {c.name}: role {c.role or 'agronomist'} means "
                            "nothing on a farm (escalations go to center_contacts); a farm's "
                            "contact is a farmer or an officer")
    for j, c in enumerate(registry.center_contacts):
        loc = where(("center_contacts", j))
        if c.agronomist:
            report.warn(f"{loc}contact {c.name}: agronomist: true is the old spelling of "
                        "role: agronomist (still accepted)")
        if c.role in ("farmer", "officer"):
            report.error(f"{loc}contact {c.name}: role {c.role} belongs on a farm's contacts "
                         "(an officer is copied on that farm's alerts); at the center a "
                         "contact is an operator or an agronomist")


def check_alerts(report: Report, alerts: AlertsSettings, registry: Registry | None,
                 registry_path: Path | str | None, *, config_path: Path | None = None
                 ) -> RuleSet | None:
    """The alert engine's checks: rule files, the profiles the registry and
    [alerts] name, quiet hours, time zones, and that every contact's notifier
    can be loaded. Returns the rules when they load."""
    from .alerts.engine import check_registry
    from .alerts.errors import AlertsError
    from .alerts.rules import load_rules

    try:
        rules = load_rules(alerts.rules, shipped=alerts.shipped_profiles)
    except ConfigError as exc:
        report.error(str(exc))
        return None
    named: list[tuple[tuple[str, ...], str | None]] = [
        (("default_profile",), alerts.default_profile),
        *((("crop_profiles", crop), prof) for crop, prof in alerts.crop_profiles.items())]
    for key, name in named:
        if name is not None and name not in rules.profiles:
            report.error(f"{_line_in(config_path, ('alerts', *key))}[alerts] "
                         f"{'.'.join(key)}: profile {name!r} is not defined "
                         f"(known: {', '.join(sorted(rules.profiles))})")
    if registry is not None:
        where = _registry_where(registry_path)
        try:
            check_registry(rules, registry, where=where)
        except AlertsError as exc:
            report.error(str(exc))
        _check_notifiers(report, registry, where)
        _check_registry_warnings(report, registry, where)
    n = sum(len(p.rules) for p in rules.profiles.values())
    report.summary.append(f"alerts: {len(rules.profiles)} profiles, {n} rules, "
                          f"{len(rules.templates)} templates")
    return rules


# -- edge -----------------------------------------------------------------------


def _check_nats_source(report: Report, s: EdgeSettings, path: Path | None) -> None:
    """``[source] kind = "nats"``: the client is installed, the URLs are
    not placeholders, the secret is not a template's."""
    src = s.source
    try:
        import nats  # noqa: F401
    except ModuleNotFoundError:
        report.error(f"{_line_in(path, ('source', 'kind'))}[source] kind = \"nats\" needs the "
                     "Python package nats-py, which is not installed: "
                     "pip install 'farmedge[nats]'")
    for i, u in enumerate(src.nats_urls):
        _check_url_host(report, f"{_line_in(path, ('source', 'nats_urls'))}[source] "
                        f"nats_urls[{i + 1}]", u)
    if src.nats_password is not None and is_placeholder_secret(_secret(src.nats_password)):
        report.warn(f"{_line_in(path, ('source', 'nats_password'))}[source] nats_password "
                    "is a placeholder")
    if src.nats_ca_file is not None:
        where = f"{_line_in(path, ('source', 'nats_ca_file'))}[source]"
        missing = len(report.errors)
        _check_files_exist(report, where, [("nats_ca_file", src.nats_ca_file)])
        if len(report.errors) == missing:
            import ssl

            try:
                src.tls_context()
            except (OSError, ssl.SSLError) as exc:
                report.error(f"{where} nats_ca_file {src.nats_ca_file}: holds no CA "
                             f"certificate ({exc})")
    if len(src.nats_urls) < src.replicas:
        report.warn(f"{_line_in(path, ('source', 'nats_urls'))}[source] nats_urls lists "
                    f"{len(src.nats_urls)} node(s) for {src.replicas} replicas: list every node, "
                    "so that the edge can reach the cluster while its first node is down")
    from .logs import redact_url

    report.summary.append(
        f"source: NATS {', '.join(redact_url(u) for u in src.nats_urls)}; stream {src.stream}, "
        f"{src.partitions} partitions (consumers {src.consumer_name(0)}.."
        f"{src.consumer_name(src.partitions - 1)}), leases in {src.lease_bucket} as "
        f"{s.source_instance}, taken over within {src.takeover_bound_s:g} s")


def check_edge(path: Path | None) -> tuple[Report, EdgeSettings | None, Registry | None]:
    """Everything ``edge run`` checks before it starts: the settings, the
    registry, the alert rules and profiles the registry names, and that
    alerts can be delivered."""
    from .config import load_settings
    from .edge.settings import EdgeSettings
    from .registry import load_registry

    report = Report()
    try:
        s = load_settings(EdgeSettings, path)
    except ConfigError as exc:
        report.error(str(exc))
        return report, None, None
    src = str(path) if path else "defaults and environment"
    from .config import unknown_env

    for problem in unknown_env(EdgeSettings):  # a misspelt variable sets nothing
        report.warn(problem)
    registry = None
    if s.registry is not None:
        try:
            registry = load_registry(s.registry)
        except ConfigError as exc:
            text = str(exc)
            if ": cannot read:" in text.split("\n", 1)[0]:
                # Name the setting that points at the file, not only the file.
                where = ("environment variable FARMEDGE_REGISTRY: " if os.environ.get(
                    "FARMEDGE_REGISTRY") else _line_in(path, ("registry",)))
                text = f"{where}registry: {text}"
            report.error(text)
            return report, s, None
    _check_url_host(report, f"{_line_in(path, ('mqtt', 'url'))}[mqtt] url", s.mqtt.url)
    _check_url_host(report, f"{_line_in(path, ('influx', 'url'))}[influx] url", s.influx.url)
    for sect, key, v in (("mqtt", "password", s.mqtt.password),
                         ("influx", "password", s.influx.password),
                         ("influx", "token", s.influx.token)):
        if v is not None and is_placeholder_secret(_secret(v)):
            report.warn(f"{_line_in(path, (sect, key))}[{sect}] {key} is a placeholder")
    missing = len(report.errors)
    _check_files_exist(report, f"{src}: [mqtt]", [("ca_file", s.mqtt.ca_file),
                                                  ("cert_file", s.mqtt.cert_file),
                                                  ("key_file", s.mqtt.key_file)])
    if len(report.errors) == missing:
        _check_tls(report, f"{src}: [mqtt]", s.mqtt.broker)
    if s.data_dir.exists() and not (s.data_dir.is_dir() and os.access(s.data_dir, os.W_OK)):
        report.error(f"{src}: data_dir {s.data_dir}: not a folder this user can write to")
    if registry is not None:
        _check_lookalikes(report, registry, _registry_where(s.registry))
        report.summary.append(f"configuration OK ({src}); registry {s.registry}: "
                              f"{len(registry.index())} gateways")
    else:
        report.summary.append(f"configuration OK ({src}); open enrollment (no registry)")
    if s.nats:
        _check_nats_source(report, s, path)
    if s.alerts.enabled:
        check_alerts(report, s.alerts, registry, s.registry, config_path=path)
        if s.alerts.publish_mqtt:
            from .logs import redact_url

            report.summary.append(
                "alert events on farm/v1/<county>/<farm>/alerts: "
                + ("over the edge's NATS connection, to the cluster's MQTT listeners"
                   if s.nats else f"MQTT 5 to {redact_url(s.mqtt.url)}"))
    else:
        report.summary.append("alerts: off")
    return report, s, registry
