"""Key-value keys from ids, reversibly.

JetStream's key-value keys allow only ``[-/_=.a-zA-Z0-9]`` and use ``.`` to
separate tokens. Ids allow letters of any script and ``.``, so an id is
written as one key token with every character outside ``[-_a-zA-Z0-9]``
(``.`` and ``=`` included) as ``=`` and the two upper-case hex digits of
each of its UTF-8 bytes: ``farm.7`` is ``farm=2E7``, ``黑龙江`` is
``=E9=BB=91=E9=BE=99=E6=B1=9F``. Decoding is exact, and distinct ids give
distinct tokens.
"""

from __future__ import annotations

import re

__all__ = ["KeyCodingError", "decode_token", "encode_token", "instance_key", "lease_key",
           "partition_of_key"]

_PLAIN = frozenset("-_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_TOKEN_RE = re.compile(r"^(?:[-_a-zA-Z0-9]|=[0-9A-F]{2})+$")

LEASE_PREFIX = "lease"
INSTANCE_PREFIX = "instance"


class KeyCodingError(ValueError):
    """A key token that no id encodes to."""


def encode_token(value: str) -> str:
    if not value:
        raise KeyCodingError("an empty id has no key")
    out: list[str] = []
    for ch in value:
        if ch in _PLAIN:
            out.append(ch)
        else:
            try:
                raw = ch.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate (an undecodable byte of a name)
                raise KeyCodingError(f"not text: {value[:80]!r}") from None
            out.extend(f"={b:02X}" for b in raw)
    return "".join(out)


def decode_token(token: str) -> str:
    if not _TOKEN_RE.fullmatch(token):
        raise KeyCodingError(f"not an encoded key token: {token[:80]!r}")
    raw = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "=":
            raw.append(int(token[i + 1:i + 3], 16))
            i += 3
        else:
            raw.append(ord(token[i]))
            i += 1
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyCodingError(f"not UTF-8 once decoded: {token[:80]!r}") from None


def lease_key(partition: int) -> str:
    return f"{LEASE_PREFIX}.{partition}"


def partition_of_key(key: str) -> int:
    prefix, _, n = key.partition(".")
    if prefix != LEASE_PREFIX or not n.isdigit():
        raise KeyCodingError(f"not a lease key: {key[:80]!r}")
    return int(n)


def instance_key(instance: str) -> str:
    return f"{INSTANCE_PREFIX}.{encode_token(instance)}"
