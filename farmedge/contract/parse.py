"""Turning a telemetry payload into normalized readings, or reasons why not.

Which failures reject the whole message, and which only one reading, is part
of the contract (docs/protocol.md, "Validation"):

whole message
    payload too large, undecodable (bad JSON / unknown encoding), envelope
    schema wrong (``v``, ``gateway``, ``seq``, ``sent``, ``clock``,
    ``readings`` with 1-1000 entries). Keys the contract does not know are
    ignored, at every level (docs/protocol.md, "How the contract grows").
one reading
    reading schema wrong, unknown kind, unit not accepted for the kind,
    NaN/infinity, value out of the kind's physical range.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from .codec import CodecError, PayloadTooLarge, codec_for
from .errors import ContractError
from .kinds import KINDS, Kind, RangeError, UnitError
from .models import (
    MAX_PAYLOAD_BYTES,
    GatewayStatus,
    Quality,
    Reading,
    Telemetry,
    TelemetryEnvelope,
)

__all__ = [
    "EXCERPT_CHARS",
    "MessageRejected",
    "NormalizedReading",
    "ParsedTelemetry",
    "ReadingRejected",
    "excerpt",
    "parse_status",
    "parse_telemetry",
]

EXCERPT_CHARS = 200


def excerpt(data: bytes | str | object, limit: int = EXCERPT_CHARS) -> str:
    """A bounded, printable excerpt of untrusted input for the dead-letter path."""
    if isinstance(data, bytes):
        text = data[: limit * 4].decode("utf-8", errors="replace")
    elif isinstance(data, str):
        text = data
    else:
        text = repr(data)
    text = "".join(ch if ch.isprintable() else _escape(ch) for ch in text[:limit])
    return text if len(text) <= limit else text[:limit]


def _escape(ch: str) -> str:
    """Python's own escape of a character: U+2028 is ``\\u2028``, not ``\\x28``."""
    o = ord(ch)
    if o < 0x100:
        return f"\\x{o:02x}"
    if o < 0x10000:
        return f"\\u{o:04x}"
    return f"\\U{o:08x}"


class MessageRejected(ContractError):
    """The whole message is invalid."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class NormalizedReading:
    sensor: str
    kind: Kind
    ts_ms: int
    value: float  # in kind.unit
    quality: Quality
    animal: str | None = None


@dataclass(frozen=True, slots=True)
class ReadingRejected:
    index: int
    reason: str
    detail: str
    excerpt: str


@dataclass(slots=True)
class ParsedTelemetry:
    envelope: TelemetryEnvelope
    readings: list[NormalizedReading] = field(default_factory=list)
    rejected: list[ReadingRejected] = field(default_factory=list)


def _first_error(exc: ValidationError) -> str:
    errs = exc.errors(include_url=False, include_input=False)
    if not errs:
        return str(exc)[:200]
    e = errs[0]
    loc = ".".join(str(p) for p in e.get("loc", ())) or "payload"
    more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"{loc}: {e.get('msg', 'invalid')}{more}"[:300]


def parse_telemetry(payload: bytes, *, content_type: str | None = None) -> ParsedTelemetry:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MessageRejected(
            "too_large", f"payload is {len(payload)} bytes, the limit is {MAX_PAYLOAD_BYTES}"
        )
    try:
        codec = codec_for(payload, content_type)
    except CodecError as exc:
        raise MessageRejected("bad_encoding", str(exc)) from None
    obj: Any = None
    if codec.decode is not None:
        try:
            obj = codec.decode(payload)
        except PayloadTooLarge as exc:
            raise MessageRejected("too_large", f"{codec.content_type}: {exc}"[:300]) from None
        except Exception as exc:  # any decoder failure is bad input
            raise MessageRejected(
                "bad_encoding", f"{codec.content_type}: {type(exc).__name__}: {exc}"[:300]
            ) from None
    # Fast path: the whole message, every reading included, in one pass.
    try:
        whole = (Telemetry.model_validate_json(payload) if obj is None
                 else Telemetry.model_validate(obj))
    except ValidationError:
        pass
    else:
        out = ParsedTelemetry(envelope=whole)
        for i, r in enumerate(whole.readings):
            try:
                out.readings.append(_convert(r))
            except _Reject as rej:
                out.rejected.append(ReadingRejected(i, rej.reason, rej.detail,
                                                    excerpt(r.model_dump(mode="json"))))
        return out
    # Something is wrong: find out whether it is the message or some readings.
    try:
        env = (TelemetryEnvelope.model_validate_json(payload) if obj is None
               else TelemetryEnvelope.model_validate(obj))
    except ValidationError as exc:
        errs = exc.errors(include_url=False, include_input=False)
        if errs and errs[0].get("type") in {"json_invalid", "json_type"}:
            raise MessageRejected("bad_json", _first_error(exc)) from None
        raise MessageRejected("schema", _first_error(exc)) from None

    out = ParsedTelemetry(envelope=env)
    for i, raw in enumerate(env.readings):
        try:
            out.readings.append(_normalize(raw))
        except _Reject as rej:
            out.rejected.append(ReadingRejected(i, rej.reason, rej.detail, excerpt(raw)))
    return out


def parse_status(payload: bytes) -> GatewayStatus:
    """A status payload (JSON only), or MessageRejected: ``too_large`` over
    MAX_PAYLOAD_BYTES, ``bad_status`` for anything else wrong with it (the
    detail names up to three errors)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MessageRejected(
            "too_large", f"payload is {len(payload)} bytes, the limit is {MAX_PAYLOAD_BYTES}"
        )
    try:
        return GatewayStatus.model_validate_json(payload)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())) or 'payload'}: {e.get('msg')}"
            for e in err[:3])
        raise MessageRejected("bad_status", detail[:500]) from None


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail


def _normalize(raw: Any) -> NormalizedReading:
    try:
        r = Reading.model_validate(raw)
    except ValidationError as exc:
        raise _Reject("schema", _first_error(exc)) from None
    return _convert(r)


def _convert(r: Reading) -> NormalizedReading:
    kind = KINDS.get(r.kind)
    if kind is None:
        raise _Reject("unknown_kind", f"kind {r.kind[:40]!r} is not in the contract")
    try:
        value = kind.convert(r.value, r.unit)
    except UnitError as exc:
        raise _Reject("unknown_unit", str(exc)) from None
    except RangeError as exc:
        raise _Reject("out_of_range", str(exc)) from None
    return NormalizedReading(r.sensor, kind, r.ts, value, r.quality, r.animal)
