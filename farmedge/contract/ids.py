"""Identifier rules shared by topics, payloads and InfluxDB tags.

An id is 1-64 characters of letters (any script, Chinese included), digits,
``-``, ``_`` and ``.``. Nothing else: no spaces, commas, ``=``, quotes,
backslashes, slashes, MQTT wildcards or control characters. That rule alone
makes every id safe as an MQTT topic level and as an InfluxDB tag value.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

__all__ = ["ID_MAX_LEN", "ID_PATTERN", "InvalidId", "check_id", "is_valid_id"]

ID_MAX_LEN = 64
# \w in Python's re is Unicode-aware: letters and digits of any script plus "_".
ID_PATTERN = re.compile(r"^[\w.\-]{1,64}$")


class InvalidId(ValueError):
    """An identifier that breaks the id rule."""


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and _valid_str(value)


@lru_cache(maxsize=65536)
def _valid_str(value: str) -> bool:
    # Ids repeat endlessly (every message names its county, farm, gateway and
    # sensors), so the answer is cached.
    if not ID_PATTERN.fullmatch(value):
        return False
    # \w admits a few marks and symbols of category "No"/"Mn"; keep to letters,
    # numbers and the three punctuation characters, and refuse "." and "..".
    if value in {".", ".."}:
        return False
    for ch in value:
        if ch in "-_.":
            continue
        if unicodedata.category(ch)[0] not in "LN":
            return False
    return True


def check_id(value: object, *, what: str = "id") -> str:
    if not is_valid_id(value):
        shown = repr(value)[:80]
        raise InvalidId(
            f"{what} {shown} is not valid: use 1-{ID_MAX_LEN} letters, digits, '-', '_' or '.'"
        )
    assert isinstance(value, str)
    return value
