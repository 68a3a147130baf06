"""Payload encodings of wire contract v1.

A payload is JSON (content type ``application/json``) unless the publisher
says otherwise in the MQTT 5 content-type property. Further encodings (the
compact encoding for metered links) register a decoder here under their
content type and a one-byte magic, so an MQTT 3.1.1 publisher, which has no
content type, is still understood: JSON always starts with ``{`` (after
optional white space), a compact payload with its magic byte.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ContractError

__all__ = ["JSON", "Codec", "CodecError", "PayloadTooLarge", "codec_for", "register"]

JSON = "application/json"


class CodecError(ContractError):
    """A payload no registered encoding can read."""


class PayloadTooLarge(CodecError):
    """A payload that decodes to more than its encoding allows (a
    decompression bomb, say). Decoders raise it as soon as the limit is
    passed, while decoding, never after."""


@dataclass(frozen=True, slots=True)
class Codec:
    content_type: str
    #: First byte of every payload in this encoding (None for JSON).
    magic: int | None
    #: bytes -> the JSON-equivalent Python object. None means "parse as JSON".
    decode: Callable[[bytes], Any] | None


_BY_TYPE: dict[str, Codec] = {JSON: Codec(JSON, None, None)}
_BY_MAGIC: dict[int, Codec] = {}


def register(codec: Codec) -> None:
    """Add an encoding. Its magic byte must not be white space or ``{``."""
    if codec.magic is not None:
        if codec.magic in b" \t\r\n{":
            raise ContractError("a magic byte must not look like JSON")
        _BY_MAGIC[codec.magic] = codec
    _BY_TYPE[codec.content_type] = codec


def codec_for(payload: bytes, content_type: str | None) -> Codec:
    if content_type:
        base = content_type.split(";", 1)[0].strip().lower()
        found = _BY_TYPE.get(base)
        if found is None:
            raise CodecError(f"content type {content_type[:60]!r} is not supported")
        return found
    if payload:
        first = payload[0]
        found = _BY_MAGIC.get(first)
        if found is not None:
            return found
    return _BY_TYPE[JSON]
