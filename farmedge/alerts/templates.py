"""Filling message templates, and listing them for SMS provider approval.

Chinese SMS providers (Aliyun, Tencent Cloud) send only pre-approved
templates: fixed text with variables. :func:`export_templates` lists every
text the engine can send, with its variables in the provider's style.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from .rules import (
    REMIND_PREFIX,
    SMS_EN_MAX,
    SMS_ZH_MAX,
    TEMPLATE_VARS,
    RuleSet,
    Template,
    placeholders,
)

__all__ = ["TemplateRow", "export_templates", "fit_sms", "render", "title_for"]

_SEVERITY_WORD = {
    "zh": {"info": "提示", "warning": "预警", "critical": "紧急"},
    "en": {"info": "info", "warning": "warning", "critical": "CRITICAL"},
}


def render(t: Template, variant: str, lang: str, values: Mapping[str, str]) -> str:
    """``variant``: raise, clear, raise_many, clear_many (falls back to the
    single text), remind (prefix + raise)."""
    if variant == "remind":
        return REMIND_PREFIX[lang] + render(t, "raise", lang, values)
    texts = {"raise": t.raise_, "clear": t.clear, "raise_many": t.raise_many or t.raise_,
             "clear_many": t.clear_many or t.clear}[variant]
    text = texts.get(lang) or texts.get("zh") or next(iter(texts.values()))
    vals = {k: values.get(k, "") for k in TEMPLATE_VARS}
    return text.format(**vals)


def title_for(lang: str, severity: str, farm: str) -> str:
    word = _SEVERITY_WORD.get(lang, _SEVERITY_WORD["en"]).get(severity, severity)
    return f"【{word}】{farm}" if lang == "zh" else f"[{word}] {farm}"


def fit_sms(text: str, lang: str) -> str:
    """Cut a text to one SMS segment (a last resort: the loader already checks
    templates with the widest expected values)."""
    limit = SMS_ZH_MAX if lang == "zh" else SMS_EN_MAX
    if len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class TemplateRow:
    template: str
    variant: str
    language: str
    text: str
    variables: tuple[str, ...]
    widest_chars: int


_PH = re.compile(r"\{([a-z_]+)\}")


def _style(text: str, style: str, names: list[str]) -> str:
    if style == "aliyun":
        return _PH.sub(lambda m: "${" + m.group(1) + "}", text)
    if style == "tencent":
        return _PH.sub(lambda m: "{" + str(names.index(m.group(1)) + 1) + "}", text)
    return text


def export_templates(rs: RuleSet, *, style: str = "plain") -> list[TemplateRow]:
    """Every text the engine can send: each template's variants (and the
    reminder form of each raise text), per language. ``style``: plain
    ``{where}``, aliyun ``${where}``, tencent ``{1}``."""
    rows: list[TemplateRow] = []
    for tid in sorted(rs.templates):
        t = rs.templates[tid]
        variants = t.variants()
        for name, texts in [*variants, ("remind", t.raise_)]:
            for lang in ("zh", "en"):
                text = texts[lang] if name != "remind" else REMIND_PREFIX[lang] + texts[lang]
                names = list(dict.fromkeys(placeholders(text)))
                widest = len(text.format(**TEMPLATE_VARS))
                rows.append(TemplateRow(tid, name, lang, _style(text, style, names), tuple(names),
                                        widest))
    return rows
