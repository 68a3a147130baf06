"""Filling message templates, and listing them for SMS provider approval.

Chinese SMS providers (Aliyun, Tencent Cloud) send only pre-approved
templates: fixed text with variables. :func:`export_templates` lists every
text the engine can send, with its variables in the provider's style.

SMS lengths are counted as the text will be encoded (3GPP TS 23.038, the
former GSM 03.38, and TS 23.040 for concatenation; /work/shared/DOMAIN.md,
"SMS length": 160 GSM-7 / 70 UCS-2 characters a part). A text whose every
character is in the GSM 7-bit default alphabet or its extension table is
sent as GSM-7: 160 septets in one segment, 153 a part when concatenated (the
user data header takes 7), and an extension character (``€ [ ] { } ^ ~ \\ |``
and form feed) costs two septets, the escape and itself, which a part
boundary never splits. One character outside it (a Chinese plot name in an
English text, ``…``, ``℃``, a curly quote) makes the whole message UCS-2:
70 UTF-16 code units in one segment, 67 a part, and a character outside the
Basic Multilingual Plane (an emoji) takes two, never split across parts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from .rules import (
    REMIND_PREFIX,
    TEMPLATE_VARS,
    RuleSet,
    Template,
    placeholders,
)

__all__ = [
    "GSM7_BASIC",
    "GSM7_EXTENSION",
    "SmsLength",
    "TemplateRow",
    "export_templates",
    "fit_sms",
    "render",
    "sms_length",
    "title_for",
]

#: The GSM 7-bit default alphabet (3GPP TS 23.038, 6.2.1), one septet each.
#: The escape code 0x1B is not a character of its own here.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x20ÆæßÉ!\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
#: Its extension table (TS 23.038, 6.2.1.1): escape 0x1B then the code, two
#: septets each.
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

#: Units one segment holds and one part of a concatenated message holds.
_GSM7_SINGLE, _GSM7_PART = 160, 153
_UCS2_SINGLE, _UCS2_PART = 70, 67

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


@dataclass(frozen=True, slots=True)
class SmsLength:
    """How a text travels as an SMS."""

    #: ``gsm7`` or ``ucs2``: the encoding the whole message needs.
    encoding: str
    #: Septets (GSM-7) or UTF-16 code units (UCS-2) it takes.
    units: int
    #: Segments it is sent in (1 up to 160 / 70 units; then parts of 153 / 67).
    segments: int


def _gsm7(text: str) -> bool:
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text)


def _unit_costs(text: str, gsm: bool) -> list[int]:
    if gsm:
        return [2 if ch in GSM7_EXTENSION else 1 for ch in text]
    return [2 if ord(ch) > 0xFFFF else 1 for ch in text]


def _parts(costs: list[int], part: int) -> int:
    """Parts of ``part`` units each, filled in order; a character (an escape
    and its code, a surrogate pair) never straddles two parts."""
    n, used = 1, 0
    for c in costs:
        if used + c > part:
            n += 1
            used = 0
        used += c
    return n


def sms_length(text: str) -> SmsLength:
    """The encoding, units and segment count of ``text`` sent as one SMS."""
    gsm = _gsm7(text)
    costs = _unit_costs(text, gsm)
    units = sum(costs)
    single, part = (_GSM7_SINGLE, _GSM7_PART) if gsm else (_UCS2_SINGLE, _UCS2_PART)
    segments = 1 if units <= single else _parts(costs, part)
    return SmsLength("gsm7" if gsm else "ucs2", units, segments)


def fit_sms(text: str, lang: str = "", *, segments: int = 1) -> str:
    """``text`` cut, if it must be, to ``segments`` SMS segments as it will be
    encoded (a last resort: the loader already checks templates with the
    widest expected values). The cut text ends in ``...`` when it is GSM-7
    (``…`` is not in the GSM alphabet and would make it UCS-2) and in ``…``
    when it is UCS-2 anyway. ``lang`` is not needed (the characters decide
    the encoding, not the contact's language); it is accepted for callers
    that pass it."""
    if segments < 1:
        raise ValueError("segments must be at least 1")
    got = sms_length(text)
    if got.segments <= segments:
        return text
    gsm = got.encoding == "gsm7"
    single, part = (_GSM7_SINGLE, _GSM7_PART) if gsm else (_UCS2_SINGLE, _UCS2_PART)
    ellipsis = "..." if gsm else "…"
    # Keep the longest prefix that fits with the ellipsis after it; the
    # encoding cannot change by cutting (GSM-7 stays GSM-7 with "...", and
    # a UCS-2 text that only became UCS-2 through its tail is cut as UCS-2,
    # the safe side).
    costs = _unit_costs(text, gsm)
    tail = _unit_costs(ellipsis, gsm)
    size, count = (single, 1) if segments == 1 else (part, segments)
    keep, n, used = 0, 1, 0
    for c in costs:
        if used + c > size:
            n, used = n + 1, 0
            if n > count:
                break
        used += c
        keep += 1
    # Room for the ellipsis at the end: give back a character or two.
    while keep and _parts(costs[:keep] + tail, size) > count:
        keep -= 1
    return text[:keep].rstrip() + ellipsis


@dataclass(frozen=True, slots=True)
class TemplateRow:
    template: str
    variant: str
    language: str
    text: str
    variables: tuple[str, ...]
    widest_chars: int
    #: The text filled with the widest values, as an SMS: ``gsm7`` or
    #: ``ucs2`` and its segments (an English text with a Chinese plot name
    #: is UCS-2).
    encoding: str = "ucs2"
    segments: int = 1


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
                filled = text.format(**TEMPLATE_VARS)
                sms = sms_length(filled)
                rows.append(TemplateRow(tid, name, lang, _style(text, style, names), tuple(names),
                                        len(filled), sms.encoding, sms.segments))
    return rows
