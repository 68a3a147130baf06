"""Alert rules as data: the YAML rule files, their validation, and profiles.

A rules file holds ``profiles`` (named sets of rules a service center assigns
to a farm, plot, herd or gateway through the registry) and ``templates``
(the fixed message texts, per language). The shipped files in
``farmedge/alerts/profiles/`` are always loaded first; a site's own files add
profiles and templates, or replace shipped ones by using the same name.

Everything is checked at start: unknown keys, wrong types, a template or
include that does not exist, a placeholder a template cannot fill, a Chinese
text that would not fit one SMS segment. Errors name the file, the line and the
reason (:class:`farmedge.config.ConfigError`). See docs/alerts.md.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from farmedge.config import ConfigError, load_yaml_model, yaml_line
from farmedge.contract.kinds import KINDS
from farmedge.contract.models import Id

__all__ = [
    "CHECKS",
    "REMIND_PREFIX",
    "SHIPPED_DIR",
    "TEMPLATE_VARS",
    "Cond",
    "Profile",
    "Rule",
    "RuleSet",
    "RulesFile",
    "Template",
    "load_rules",
    "parse_duration",
    "sms_limit",
]

SHIPPED_DIR = Path(__file__).parent / "profiles"

Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}
Scope = Literal["sensor", "plot", "animal", "gateway", "farm"]
Derived = Literal[
    "reading", "relative_moisture", "depletion", "rate_per_h", "rolling_mean", "baseline_delta",
    "baseline_ratio", "thi", "depth_cm",
]
#: Built-in device checks (rules with ``check:`` instead of a threshold on readings).
#: The center profile's checks (center.py) are about the service center
#: itself, never a farm's devices.
CHECKS = ("gateway_offline", "sensor_silent", "flatline", "out_of_range", "clock_unsynced",
          "outbox_backlog", "edge_restarted", "broker_down", "influx_down", "disk_full",
          "mass_offline", "delivery_failing", "clock_hold", "spool_filling",
          "delivery_unconfirmed", "cluster_down")
Check = Literal["gateway_offline", "sensor_silent", "flatline", "out_of_range",
                "clock_unsynced", "outbox_backlog", "edge_restarted", "broker_down",
                "influx_down", "disk_full", "mass_offline", "delivery_failing",
                "clock_hold", "spool_filling", "delivery_unconfirmed", "cluster_down"]

#: Placeholders a template may use, with the widest value each is expected to
#: take (for the one-SMS-segment check of Chinese texts).
TEMPLATE_VARS: dict[str, str] = {
    "where": "12号地北块",      # plot name, animal, sensor or gateway id (≤6 chars budgeted)
    "farm": "王家农场",
    "value": "-12.5",           # the value the rule tested, rounded (rule.decimals)
    "reading": "-12.5",         # the raw reading behind it
    "low": "22.5",              # rule.target, lower end
    "high": "30.5",             # rule.target, upper end
    "threshold": "-12.5",       # the raise condition's number
    "count": "20",              # members of a grouped alert
    "minutes": "120",           # how long the condition has held / the silence lasted
    "hours": "48",
    "duration": "23h59min",     # a true duration, short (20s, 12min, 3h05min, 2d03h)
}
SMS_ZH_MAX = 70      # UCS-2 characters per SMS segment
SMS_EN_MAX = 160     # GSM-7 characters per SMS segment
#: Reminders put this before the raise text, so raise texts leave room for it.
REMIND_PREFIX = {"zh": "提醒：", "en": "Reminder: "}

_DUR = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d)?\s*$")
_UNIT_S = {None: 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """``90``, ``"45s"``, ``"30m"``, ``"2h"``, ``"10d"`` -> seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 30m, 2h, 10d")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("a duration must be a finite number of seconds")
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DUR.match(value)
        if m:
            return parse_duration(float(m.group(1)) * _UNIT_S[m.group(2)])
    raise ValueError(f"{value!r} is not a duration (use seconds or 30s, 30m, 2h, 10d)")


Duration = Annotated[float, BeforeValidator(parse_duration)]


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Cond(_M):
    """One comparison against a number: exactly one of the four keys (a
    finite one: NaN compares false with everything)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True,
                              allow_inf_nan=False)

    above: float | None = None
    below: float | None = None
    at_least: float | None = None
    at_most: float | None = None

    @model_validator(mode="after")
    def _one(self) -> Cond:
        n = sum(x is not None for x in (self.above, self.below, self.at_least, self.at_most))
        if n != 1:
            raise ValueError("give exactly one of above, below, at_least, at_most")
        return self

    @property
    def threshold(self) -> float:
        for x in (self.above, self.below, self.at_least, self.at_most):
            if x is not None:
                return x
        raise AssertionError("unreachable")

    @property
    def rising(self) -> bool:
        """True when the condition holds for high values."""
        return self.above is not None or self.at_least is not None

    def holds(self, v: float) -> bool:
        if self.above is not None:
            return v > self.above
        if self.below is not None:
            return v < self.below
        if self.at_least is not None:
            return v >= self.at_least
        assert self.at_most is not None
        return v <= self.at_most

    def negated(self) -> Cond:
        if self.above is not None:
            return Cond(at_most=self.above)
        if self.below is not None:
            return Cond(at_least=self.below)
        if self.at_least is not None:
            return Cond(below=self.at_least)
        return Cond(above=self.at_most)


Texts = dict[str, str]   # language (zh, en) -> text


class Template(_M):
    """Fixed message texts with ``{placeholders}``, in Chinese and English.

    ``raise`` is sent when an alert starts, ``clear`` when it ends.
    ``raise_many`` / ``clear_many`` (optional) are used when a grouped alert
    has more than one member (``{count}``).
    """

    raise_: Texts = Field(alias="raise")
    clear: Texts
    raise_many: Texts | None = None
    clear_many: Texts | None = None

    @model_validator(mode="after")
    def _texts(self) -> Template:
        for name, texts in self.variants():
            for lang in texts:
                if lang not in ("zh", "en"):
                    raise ValueError(f"{name}: language {lang!r} is not zh or en")
            for lang in ("zh", "en"):
                if lang not in texts:
                    raise ValueError(f"{name}: the {lang} text is missing")
                check_text(texts[lang], lang, name)
        return self

    def variants(self) -> list[tuple[str, Texts]]:
        out: list[tuple[str, Texts]] = [("raise", self.raise_), ("clear", self.clear)]
        if self.raise_many is not None:
            out.append(("raise_many", self.raise_many))
        if self.clear_many is not None:
            out.append(("clear_many", self.clear_many))
        return out


def placeholders(text: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]


def sms_limit(lang: str, variant: str) -> int:
    base = SMS_ZH_MAX if lang == "zh" else SMS_EN_MAX
    return base - len(REMIND_PREFIX[lang]) if variant.startswith("raise") else base


def check_text(text: str, lang: str, name: str) -> None:
    for f in placeholders(text):
        if f not in TEMPLATE_VARS:
            raise ValueError(
                f"{name}.{lang}: unknown placeholder {{{f}}} (known: "
                f"{', '.join(sorted(TEMPLATE_VARS))})")
    widest = text.format(**TEMPLATE_VARS)
    limit = sms_limit(lang, name)
    if len(widest) > limit:
        raise ValueError(
            f"{name}.{lang}: {len(widest)} characters with the widest values; one SMS "
            f"segment leaves {limit} (with room for a reminder prefix): {widest}")


class Rule(_M):
    """One rule: a condition on a reading, a derived value, or a device check."""

    id: Id
    #: Reading kind(s) the rule looks at (contract kind names).
    kind: list[str] = Field(default_factory=list)
    #: A built-in device check instead of a threshold on readings.
    check: Check | None = None
    #: What is compared: the reading itself or a value derived from it.
    value: Derived = "reading"
    #: Window for rate_per_h, rolling_mean, flatline, out_of_range; baseline length.
    window: Duration | None = None
    when: Cond | None = None
    #: Clear condition (hysteresis). Default: the raise condition no longer holds.
    clear: Cond | None = None
    for_: Duration = Field(0.0, alias="for")
    clear_for: Duration = 0.0
    severity: Severity = "warning"
    #: What the alert speaks of (its state is kept per rule and entity).
    entity: Scope = "sensor"
    #: Alerts of one family and one group scope make one message (default: entity).
    group_by: Scope | None = None
    family: str | None = None
    #: Who hears it: the farm's contacts, the service center's contacts; [] records only.
    audience: list[Literal["farm", "center"]] = Field(
        default_factory=lambda: ["farm"])  # type: ignore[arg-type]
    template: str
    remind_after: Duration | None = None
    #: Critical alerts still firing after this long go to the county agronomist.
    escalate_after: Duration | None = None
    #: Local months (1-12) in which the rule is active; default all year.
    months: list[Annotated[int, Field(ge=1, le=12)]] | None = None
    #: Target range shown in the message ({low}, {high}), in the reading's unit,
    #: or in percent of the profile parameter ``target_of`` (e.g. field_capacity).
    target: tuple[float, float] | None = None
    target_of: str | None = None
    decimals: Annotated[int, Field(ge=0, le=3)] = 0
    #: Plausible range per kind, for the out_of_range check.
    plausible: dict[str, tuple[float, float]] = Field(default_factory=dict)
    #: Check parameters (intervals, count, tolerance, ...), see docs/alerts.md.
    params: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _kind_list(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("kind"), str):
            data = {**data, "kind": [data["kind"]]}
        return data

    @model_validator(mode="after")
    def _shape(self) -> Rule:
        for k in self.kind:
            if k not in KINDS:
                raise ValueError(f"kind {k!r} is not a contract kind ({', '.join(KINDS)})")
        for k in self.plausible:
            if k not in KINDS:
                raise ValueError(f"plausible: kind {k!r} is not a contract kind")
        if self.check is None:
            if not self.kind:
                raise ValueError("a rule needs kind (a threshold on readings) or check")
            if self.when is None:
                raise ValueError("a threshold rule needs when")
            if self.value == "thi" and set(self.kind) != {"air_temperature", "air_humidity"}:
                raise ValueError("value thi needs kind [air_temperature, air_humidity]")
            if self.value in ("rate_per_h", "rolling_mean") and not self.window:
                raise ValueError(f"value {self.value} needs a window")
        elif self.check in ("outbox_backlog",) and self.when is None:
            raise ValueError(f"check {self.check} needs when")
        if self.when is not None and self.clear is not None:
            w, c = self.when, self.clear
            if w.rising == c.rising:
                raise ValueError("clear must point the other way from when (hysteresis)")
            if (w.rising and c.threshold > w.threshold) or (
                    not w.rising and c.threshold < w.threshold):
                raise ValueError("clear overlaps when: with hysteresis the clear threshold "
                                 "lies on the safe side of the raise threshold")
        if self.check in ("flatline", "out_of_range") and not self.window:
            raise ValueError(f"check {self.check} needs a window")
        return self

    @property
    def clear_cond(self) -> Cond | None:
        if self.clear is not None:
            return self.clear
        return self.when.negated() if self.when is not None else None

    @property
    def scope(self) -> Scope:
        return self.group_by or self.entity


class Profile(_M):
    description: str = ""
    #: Other profiles whose rules this one also applies.
    include: list[Id] = Field(default_factory=list)
    #: Defaults that plots, herds and farms can override (field_capacity, ...).
    params: dict[str, float] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> Profile:
        seen: set[str] = set()
        for r in self.rules:
            if r.id in seen:
                raise ValueError(f"rule id {r.id!r} appears twice")
            seen.add(r.id)
        return self


class RulesFile(_M):
    profiles: dict[Id, Profile] = Field(default_factory=dict)
    templates: dict[Id, Template] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BoundRule:
    """A rule as applied in one profile: qualified key and merged params."""

    key: str                 # "<defining profile>/<rule id>", the state key
    profile: str
    rule: Rule
    params: dict[str, float]


@dataclass(slots=True)
class RuleSet:
    """All loaded profiles and templates, cross-checked."""

    profiles: dict[str, Profile] = field(default_factory=dict)
    templates: dict[str, Template] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # profile/template -> file
    _flat: dict[str, list[BoundRule]] = field(default_factory=dict)

    def rules_of(self, profile: str) -> list[BoundRule]:
        """The rules of ``profile`` and of everything it includes, once each."""
        cached = self._flat.get(profile)
        if cached is not None:
            return cached
        out: list[BoundRule] = []
        seen: set[str] = set()

        def walk(name: str, params: dict[str, float]) -> None:
            if name in seen:
                return
            seen.add(name)
            p = self.profiles[name]
            merged = {**p.params, **params}
            for r in p.rules:
                out.append(BoundRule(f"{name}/{r.id}", name, r, merged))
            for inc in p.include:
                walk(inc, merged)

        walk(profile, {})
        self._flat[profile] = out
        return out


def _files(paths: Iterable[Path | str]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out.extend(sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml")))
        else:
            out.append(path)
    return out


def load_rules(paths: Sequence[Path | str] = (), *, shipped: bool = True) -> RuleSet:
    """Load the shipped profiles (unless ``shipped=False``) and then ``paths``
    (files or folders of ``*.yaml``). A later file may replace a shipped
    profile or template by name; two of the site's own files may not define
    the same name. Raises ConfigError naming file and line."""
    rs = RuleSet()
    errors: list[str] = []
    shipped_names: set[str] = set()
    files = (_files([SHIPPED_DIR]) if shipped else [])
    n_shipped = len(files)
    files += _files(paths)
    roots: dict[str, tuple[str, yaml.Node | None]] = {}
    for i, f in enumerate(files):
        rf = load_yaml_model(RulesFile, f)
        text = f.read_text(encoding="utf-8")
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        for kind, table, target in (("profile", rf.profiles, rs.profiles),
                                    ("template", rf.templates, rs.templates)):
            for name, obj in table.items():
                tag = f"{kind}:{name}"
                if tag in roots and tag not in shipped_names:
                    line = yaml_line(root, (kind + "s", name))
                    errors.append(f"{f}:{line}: {kind}s: {name}: already defined in "
                                  f"{roots[tag][0]}")
                    continue
                target[name] = obj  # type: ignore[assignment]
                roots[tag] = (str(f), root)
                rs.sources[tag] = str(f)
                if i < n_shipped:
                    shipped_names.add(tag)
                else:
                    shipped_names.discard(tag)
    # Cross-references: templates, includes, include cycles.
    for name, prof in rs.profiles.items():
        src, root = roots[f"profile:{name}"]
        for j, inc in enumerate(prof.include):
            if inc not in rs.profiles:
                line = yaml_line(root, ("profiles", name, "include", j))
                errors.append(f"{src}:{line}: profiles.{name}.include[{j}]: no profile {inc!r}")
        for j, r in enumerate(prof.rules):
            if r.template not in rs.templates:
                line = yaml_line(root, ("profiles", name, "rules", j, "template"))
                errors.append(f"{src}:{line}: profiles.{name}.rules[{j}].template: "
                              f"no template {r.template!r} (rule {r.id})")
            if r.target_of is not None:
                ok = r.target_of in prof.params
                if not ok:
                    line = yaml_line(root, ("profiles", name, "rules", j, "target_of"))
                    errors.append(f"{src}:{line}: profiles.{name}.rules[{j}].target_of: "
                                  f"the profile has no param {r.target_of!r} (rule {r.id})")
    if not errors:
        for name in rs.profiles:
            stack: list[str] = []

            def visit(n: str, stack: list[str] = stack, top: str = name) -> None:
                if n in stack:
                    src, root = roots[f"profile:{top}"]
                    line = yaml_line(root, ("profiles", top, "include"))
                    raise ConfigError(f"{src}:{line}: profiles.{top}.include: include cycle "
                                      f"{' -> '.join([*stack, n])}")
                stack.append(n)
                for inc in rs.profiles[n].include:
                    visit(inc)
                stack.pop()

            visit(name)
    if errors:
        raise ConfigError("\n".join(errors))
    return rs
