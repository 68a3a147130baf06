"""From groups to messages: which event a group sends (raise, worse, remind,
escalate, clear), its texts, who hears it (the farm's contacts, the center's,
the county agronomist on escalation), the farm's daily message budget and
each contact's quiet hours. Each message becomes one
:class:`~.delivery.Delivery` per contact and URL in the outbox.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

from farmedge.registry import Contact, Registry

from .cluster import CENTER_FARM
from .context import DEFAULT_TZ, Context, Contexts
from .delivery import Delivery, Outbox
from .notify import SMS_SCHEMES, scheme_of
from .quiet import release_time
from .record import AlertEvent
from .rules import REMIND_PREFIX, BoundRule, RuleSet
from .state import AlertState, Group, StateMachine
from .store import Changes
from .templates import fit_sms, render, title_for

__all__ = ["CENTER_FARM", "Router"]

_CENTER_NAME = {"zh": "服务中心", "en": "service center"}


class Router:
    def __init__(self, *, rules: RuleSet, registry: Registry | None, contexts: Contexts,
                 machine: StateMachine, outbox: Outbox, changes: Changes,
                 stats: dict[str, int], publish: Callable[[AlertEvent], None]) -> None:
        self.rules = rules
        self.registry = registry
        self.contexts = contexts
        self.machine = machine
        self.outbox = outbox
        self.changes = changes
        self.stats = stats
        self.publish = publish
        #: "<county>/<farm>/<local date>" -> messages sent to the farm that day
        self.budget: dict[str, int] = {}

    def groups_pass(self, now: float) -> None:
        sm = self.machine
        states, index = sm.states, sm.rule_index
        for gkey, g in list(sm.groups.items()):
            members = [states[k] for k in g.members if k in states]
            if members:
                top = max(members, key=lambda s: sm.level(s.rule))
                rule = index[top.rule][0]
                lvl = sm.level(top.rule)
                if g.level is None or lvl > g.level:
                    same = [m for m in members if m.rule == top.rule]
                    worst = top
                    if rule.when is not None:
                        pick = max if rule.when.rising else min
                        worst = pick(same, key=lambda s: s.value)
                    first = g.level is None
                    g.level, g.rule, g.severity = lvl, top.rule, rule.severity
                    g.audience = list(rule.audience)
                    g.count = len(members)
                    g.raised_at = g.raised_at or now
                    if rule.severity == "critical":
                        g.critical_since = g.critical_since or now
                    g.last_sent = now
                    # The first raise is "raise"; a higher level of the family
                    # joining later (severe drought after dry) is "worse".
                    self.emit(g, "raise" if first else "worse", worst, now)
                elif g.rule is not None:
                    rule = index[g.rule][0]
                    if rule.remind_after and g.last_sent is not None and \
                            now - g.last_sent >= rule.remind_after:
                        g.last_sent = now
                        self.emit(g, "remind", top, now)
                    if rule.severity == "critical" and rule.escalate_after and not g.escalated \
                            and g.critical_since is not None and \
                            now - g.critical_since >= rule.escalate_after:
                        g.escalated = True
                        self.emit(g, "escalate", top, now)
                self.changes.groups[gkey] = g
            else:
                if g.level is not None:
                    self.emit(g, "clear", None, now)
                del sm.groups[gkey]
                self.changes.groups[gkey] = None
            g.dirty = False

    def texts(self, g: Group, variant: str, vars_: dict[str, str]) -> dict[str, str]:
        """Texts in both languages. ``{where}`` names the group's scope (the plot
        of ten dry sensors); a template with a ``*_many`` form names the single
        entity in its one-member text (one silent sensor vs. its gateway)."""
        assert g.rule is not None
        rule = self.machine.rule_index[g.rule][0]
        t = self.rules.templates[rule.template]
        many = g.count > 1
        base = "clear" if variant == "clear" else "raise"
        v = dict(vars_)
        v["count"] = str(g.count)
        has_many = (t.raise_many if base == "raise" else t.clear_many) is not None
        if many or not has_many:
            v["where"] = g.where
        name = f"{base}_many" if many and has_many else base
        out = {lang: render(t, name, lang, v) for lang in ("zh", "en")}
        if variant == "remind":
            out = {lang: REMIND_PREFIX[lang] + txt for lang, txt in out.items()}
        return out

    def record(self, g: Group, event: str, now: float, *, value: float | None,
               texts: dict[str, str], entities: tuple[str, ...] = (), error: str = "") -> None:
        self.publish(AlertEvent(
            ts_ms=int(now * 1000), event=event, county=g.county, farm=g.farm,
            rule=g.rule or "", family=g.family, severity=g.severity, scope=g.stype,
            scope_id=g.sid, group=g.key, count=g.count, value=value, text=texts, error=error,
            entities=entities))

    def notice(self, br: BoundRule, ctx: Context, st: AlertState, now: float) -> None:
        """A one-off message of a center incident that ended before its
        ``for`` (or the edge starting): its clear text, through the same
        budget, quiet hours and outbox as any message."""
        g = Group(f"{st.county}/{st.farm}|{st.family}|notice:{st.sid}", st.county, st.farm,
                  st.family, st.stype, st.sid, st.gwhere or ctx.where(st.stype, st.sid))
        g.level = self.machine.level(br.key)
        g.rule, g.severity, g.audience = br.key, br.rule.severity, list(br.rule.audience)
        g.count, g.raised_at = 1, now
        g.last_vars, g.last_value = dict(st.vars), st.value
        self.emit(g, "notice", None, now)

    def _recipients(self, g: Group, event: str,
                    vars_: dict[str, str] | None = None) -> list[tuple[Contact, bool]]:
        """(contact, is a farm contact)."""
        reg = self.registry
        if reg is None:
            return []
        if g.farm == CENTER_FARM:
            # Center-side: the operators, never a farm; not the contact whose
            # deliveries fail (its own incident would fail too).
            failing = (vars_ or {}).get("contact")
            return [(c, False) for c in reg.center_contacts if c.name != failing]
        if event == "escalate":
            return [(c, False) for c in reg.center_contacts if c.is_agronomist]
        out: list[tuple[Contact, bool]] = []
        f = self.contexts.farm(g.county, g.farm)
        if "farm" in g.audience and f is not None:
            out += [(c, True) for c in f.contacts]
        if "center" in g.audience:
            out += [(c, False) for c in reg.center_contacts]
        return out

    def _spend(self, day: str, budget: int) -> bool:
        """One message more on a daily budget's count (``day``: its key and
        local date), if there is room; a message over it is counted suppressed."""
        used = self.budget.get(day, 0)
        if used >= budget:
            self.stats["suppressed"] += 1
            return False
        self.budget[day] = self.changes.budget[day] = used + 1
        return True

    def emit(self, g: Group, event: str, st: AlertState | None, now: float) -> None:
        vars_ = dict(st.vars) if st is not None else dict(g.last_vars)
        texts = self.texts(g, "clear" if event in ("clear", "notice") else
                           ("remind" if event == "remind" else "raise"), vars_)
        value = st.value if st is not None else g.last_value
        states = self.machine.states
        entities = tuple(states[k].eid for k in g.members if k in states)
        self.record(g, event, now, value=value, texts=texts, entities=entities)
        recipients = self._recipients(g, event, vars_)
        # A farm's extension officers: copied on its alerts, budget their own.
        officers = [c for c, x in recipients if x and c.is_officer]
        recipients = [(c, x) for c, x in recipients if not (x and c.is_officer)]
        if not recipients and not officers:
            return
        f = self.contexts.farm(g.county, g.farm)
        tz = ZoneInfo(f.timezone) if f is not None else ZoneInfo(DEFAULT_TZ)
        critical = g.severity == "critical" and event in ("raise", "worse", "remind", "escalate",
                                                          "notice")
        settings = self.contexts.settings
        date = datetime.fromtimestamp(now, tz).date().isoformat()
        if recipients and not any(is_farm for _, is_farm in recipients) \
                and event != "escalate" \
                and event in ("raise", "worse", "remind", "notice") and not critical:
            # To operators only: their own daily budget.
            budget = settings.operator_daily_message_budget
            if not self._spend(f"{CENTER_FARM}/{date}", budget):
                self.record(g, "suppressed", now, value=value, texts=texts,
                            error=f"operators' daily budget of {budget} messages used")
                recipients = []
                if not officers:
                    return
        copied: list[Contact] = []
        for o in officers:
            # Each officer's own daily budget (key officer:<name>/<date>),
            # across the farms they are copied on.
            if event in ("raise", "worse", "remind") and not critical:
                budget = settings.officer_daily_message_budget
                if not self._spend(f"officer:{o.name}/{date}", budget):
                    self.record(g, "suppressed", now, value=value, texts=texts,
                                error=f"officer {o.name}'s daily budget of {budget} "
                                      "messages used")
                    continue
            copied.append(o)
        # Daily budget per farm (critical messages are neither limited nor counted).
        if any(is_farm for _, is_farm in recipients):
            if event == "clear" and g.suppressed:
                recipients = [(c, x) for c, x in recipients if not x]
            elif event in ("raise", "worse", "remind") and not critical:
                budget = f.daily_message_budget if f is not None else 10
                spent = self._spend(f"{g.county}/{g.farm}/{date}", budget)
                if event == "raise":
                    g.suppressed = not spent
                if not spent:
                    self.record(g, "suppressed", now, value=value, texts=texts,
                                error=f"daily budget of {budget} messages used")
                    recipients = [(c, x) for c, x in recipients if not x]
        recipients += [(o, True) for o in copied]
        farm_name = (f.name if f is not None else None) or g.farm
        title_sev = g.severity if event not in ("clear", "notice") else "info"
        for c, is_farm in recipients:
            lang = c.language
            due = now
            quiet = c.quiet_hours or (None if is_farm else settings.operator_quiet_hours)
            if quiet and not critical:
                due = release_time(quiet, now, tz)
            for url in c.notify:
                if event == "clear" and self.outbox.drop_held(g.key, c.name, url, now):
                    continue
                body = texts.get(lang) or texts["zh"]
                if event == "escalate":
                    body = f"{farm_name}: {body}"
                if scheme_of(url) in SMS_SCHEMES:
                    body = fit_sms(body, lang)
                self.outbox.add(Delivery(
                    id=self.outbox.new_id(now), due=due, url=url, contact=c.name, lang=lang,
                    title=title_for(lang, title_sev, _CENTER_NAME.get(lang, "center")
                                    if g.farm == CENTER_FARM else farm_name),
                    body=body, group=g.key,
                    event=event, attempts=0, county=g.county, farm=g.farm, rule=g.rule,
                    family=g.family, severity=g.severity, scope=g.stype, scope_id=g.sid,
                    count=g.count, value=value, created=now), now)
