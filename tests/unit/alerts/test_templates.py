"""SMS lengths counted as the text will be encoded (farmedge/alerts/templates.py).

GSM-7 160 septets a segment, 153 a part; UCS-2 70 code units, 67 a part
(3GPP TS 23.038 / 23.040; /work/shared/DOMAIN.md "SMS length").
"""

from __future__ import annotations

import pytest

from farmedge.alerts.rules import load_rules
from farmedge.alerts.templates import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    SmsLength,
    export_templates,
    fit_sms,
    sms_length,
)

DRY_EN = "{where} is dry: soil water 25% (target 60-85%). Irrigate within 24 h."


def test_gsm7_alphabet_sizes() -> None:
    # 128 code points minus the escape; 10 extension characters (form feed included).
    assert len(GSM7_BASIC) == 127
    assert len(GSM7_EXTENSION) == 10
    assert not GSM7_BASIC & GSM7_EXTENSION


@pytest.mark.parametrize(("text", "expected"), [
    ("", SmsLength("gsm7", 0, 1)),
    ("a" * 160, SmsLength("gsm7", 160, 1)),
    ("a" * 161, SmsLength("gsm7", 161, 2)),
    ("a" * 306, SmsLength("gsm7", 306, 2)),
    ("a" * 307, SmsLength("gsm7", 307, 3)),
    # Extension characters are an escape and a code: two septets.
    ("€" * 80, SmsLength("gsm7", 160, 1)),
    ("€" * 81, SmsLength("gsm7", 162, 2)),
    ("{[~]}|^\\" * 10, SmsLength("gsm7", 160, 1)),
    # Accented letters of the GSM alphabet stay GSM-7.
    ("Ålesund øre Müller ñandu à 5 £ ¥ §" * 4, SmsLength("gsm7", 136, 1)),
    # One character outside it makes the whole message UCS-2.
    ("a" * 69 + "号", SmsLength("ucs2", 70, 1)),
    ("a" * 70 + "号", SmsLength("ucs2", 71, 2)),
    ("a" * 133 + "号", SmsLength("ucs2", 134, 2)),
    ("a" * 134 + "号", SmsLength("ucs2", 135, 3)),
    ("a" * 100 + "…", SmsLength("ucs2", 101, 2)),
    ("Frost: -3 ℃", SmsLength("ucs2", 11, 1)),
    ("“quoted”", SmsLength("ucs2", 8, 1)),
    # Outside the Basic Multilingual Plane: a surrogate pair, two units.
    ("a" * 68 + "😀", SmsLength("ucs2", 70, 1)),
    ("a" * 69 + "😀", SmsLength("ucs2", 71, 2)),
    ("号" * 70, SmsLength("ucs2", 70, 1)),
])
def test_sms_length(text: str, expected: SmsLength) -> None:
    assert sms_length(text) == expected


def test_an_escape_never_straddles_two_parts() -> None:
    # 306 septets would be two parts of 153, but the euro after 152 letters
    # cannot be split, so the parts fill 152 + 152 and the last euro starts
    # a third.
    text = "a" * 152 + "€" * 77
    assert sms_length(text) == SmsLength("gsm7", 306, 3)
    assert sms_length("a" * 151 + "€" * 77) == SmsLength("gsm7", 305, 2)


def test_a_surrogate_pair_never_straddles_two_parts() -> None:
    assert sms_length("a" * 66 + "😀" * 34) == SmsLength("ucs2", 134, 3)
    assert sms_length("a" * 67 + "😀" * 33) == SmsLength("ucs2", 133, 2)


def test_a_chinese_plot_name_makes_an_english_text_ucs2() -> None:
    ascii_name = DRY_EN.format(where="Field 3 north")
    chinese_name = DRY_EN.format(where="3号地北块")
    assert sms_length(ascii_name).encoding == "gsm7"
    assert sms_length(ascii_name).segments == 1
    assert sms_length(chinese_name).encoding == "ucs2"
    long_en = chinese_name + " Open the east valve first."
    assert len(long_en) < 160
    assert sms_length(long_en).segments == 2


def test_fit_sms_cuts_an_english_text_with_a_chinese_name_to_70() -> None:
    text = DRY_EN.format(where="3号地北块") + " Open the east valve first, then the west one."
    assert 70 < len(text) <= 160
    out = fit_sms(text, "en")
    assert len(out) == 70
    assert out.endswith("…")
    assert out.startswith("3号地北块 is dry")


def test_fit_sms_cuts_gsm7_with_three_dots_not_an_ellipsis() -> None:
    # "…" is not in the GSM alphabet: cutting with it would turn a 160-septet
    # GSM-7 text into UCS-2 of 160 units, three segments.
    text = "Field 3 is dry. " * 15
    out = fit_sms(text, "en")
    assert "…" not in out
    assert out.endswith("...")
    assert len(out) <= 160
    assert all(ch in GSM7_BASIC for ch in out)
    assert out[:-3] == text[:len(out) - 3]


def test_fit_sms_counts_extension_characters_twice() -> None:
    text = "€" * 100
    out = fit_sms(text, "en")
    assert out == "€" * 78 + "..."      # 156 + 3 septets
    assert sms_length(out).segments == 1


def test_fit_sms_leaves_a_text_that_fits() -> None:
    for text in ("a" * 160, "€" * 80, "号" * 70, DRY_EN.format(where="3号地")):
        assert fit_sms(text, "en") == text
        assert fit_sms(text, "zh") == text


def test_fit_sms_chinese() -> None:
    text = "3号地土壤偏干：含水量25%（适宜36–51%），请24小时内灌溉。" * 3
    out = fit_sms(text, "zh")
    assert len(out) == 70
    assert out.endswith("…")


def test_fit_sms_does_not_split_a_surrogate_pair() -> None:
    out = fit_sms("a" * 68 + "😀" * 5, "en")
    assert out == "a" * 68 + "…"
    assert sms_length(out) == SmsLength("ucs2", 69, 1)


@pytest.mark.parametrize("segments", [2, 3])
def test_fit_sms_to_several_segments(segments: int) -> None:
    for text, part in (("Field 3 is dry. " * 40, 153), ("号" * 400, 67), ("€" * 400, 153)):
        out = fit_sms(text, "en", segments=segments)
        got = sms_length(out)
        assert got.segments == segments
        assert got.units > part * (segments - 1)     # nothing wasted
        assert fit_sms(out, "en", segments=segments) == out


def test_fit_sms_rejects_zero_segments() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        fit_sms("x", "en", segments=0)


def test_export_rows_tell_encoding_and_segments() -> None:
    rows = export_templates(load_rules())
    zh = [r for r in rows if r.language == "zh"]
    assert zh and all(r.encoding == "ucs2" and r.segments == 1 for r in zh)
    # The widest plot name is Chinese, so English texts naming a place are
    # UCS-2 too (the operators' texts of the center profile that name none
    # stay GSM-7); the rows say which take two segments.
    en = [r for r in rows if r.language == "en"]
    assert en and all(r.encoding == "ucs2" for r in en if "where" in r.variables)
    assert all(r.encoding == "gsm7" for r in en if not set(r.variables) & {"where", "farm"})
    assert {r.segments for r in en} <= {1, 2, 3}
    for r in rows:
        assert r.segments == sms_length("x" * r.widest_chars
                                        if r.encoding == "gsm7" else
                                        "号" * r.widest_chars).segments
