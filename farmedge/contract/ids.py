"""Identifier rules shared by topics, payloads and InfluxDB tags.

An id is 1-64 characters of letters (any script, Chinese included), digits,
``-``, ``_`` and ``.``. Nothing else: no spaces, commas, ``=``, quotes,
backslashes, slashes, MQTT wildcards or control characters. That rule alone
makes every id safe as an MQTT topic level and as an InfluxDB tag value.

A county, farm or gateway id is also a level of the system's topics
(``farm/v1/{county}/{farm}/{gateway}/telemetry``), so it must not be one of
the words the system itself uses at those levels (``telemetry``, ``status``,
``alerts``): a gateway ``alerts`` could otherwise publish on its farm's alerts
topic. :func:`check_topic_id` and :func:`reserved_id_reason` apply that rule.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from .errors import ContractError

__all__ = [
    "ID_MAX_LEN",
    "ID_PATTERN",
    "RESERVED_IDS",
    "InvalidId",
    "check_id",
    "check_topic_id",
    "is_valid_id",
    "is_valid_topic_id",
    "reserved_id_reason",
]

ID_MAX_LEN = 64
# \w in Python's re is Unicode-aware: letters and digits of any script plus "_".
ID_PATTERN = re.compile(r"^[\w.\-]{1,64}$")
#: Topic levels the system uses after a county, farm or gateway level. They
#: are not county, farm or gateway ids (matched exactly: topics are
#: case-sensitive).
RESERVED_IDS = frozenset({"telemetry", "status", "alerts"})


class InvalidId(ContractError):
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


def reserved_id_reason(value: str) -> str | None:
    """Why ``value`` cannot be a county, farm or gateway id because it
    collides with a topic level or topic syntax the system uses; None when it
    does not. (Ids must also pass :func:`check_id`; this names the collision
    for a clearer message: a channel word, an MQTT wildcard, a ``$`` topic, a
    level separator.)"""
    if value in RESERVED_IDS:
        return f"{value!r} is a topic level the system uses ({', '.join(sorted(RESERVED_IDS))})"
    if value.startswith("$"):
        return f"{value[:70]!r} starts with '$' (the broker's own topics)"
    if "+" in value or "#" in value:
        return f"{value[:70]!r} holds an MQTT wildcard ('+' or '#')"
    if "/" in value:
        return f"{value[:70]!r} holds the topic level separator '/'"
    return None


def is_valid_topic_id(value: object) -> bool:
    """A valid id that may also be a county, farm or gateway topic level."""
    return isinstance(value, str) and _valid_str(value) and value not in RESERVED_IDS


def check_topic_id(value: object, *, what: str = "id") -> str:
    """:func:`check_id` for county, farm and gateway ids: also refuses the
    words reserved for topic levels (see :func:`reserved_id_reason`)."""
    if isinstance(value, str):
        reason = reserved_id_reason(value)
        if reason is not None:
            raise InvalidId(f"{what} {reason}")
    return check_id(value, what=what)
