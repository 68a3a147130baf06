"""Building payloads of wire contract v1: telemetry (JSON or compact) and
status (JSON), the other direction of :mod:`~farmedge.contract.parse`.

Every producer (the gateway agent, the simulator, the tests' helpers) goes
through these functions, so what one of them sends is what the edge accepts:
the envelope is checked with the very models the decoder uses (its limits
included: ids, ``seq``, ``sent``, 1 to 1000 readings, 256 KiB), and so is
each reading unless the caller asks otherwise. A message the edge would
refuse as a whole is never built: :class:`EncodeError` says why.

The JSON written is compact (no white space) UTF-8, keys in the order of
docs/protocol.md (``v gateway seq sent clock readings``; a reading's
``sensor kind ts value unit``, then ``quality`` when it is not ``ok`` and
``animal`` when there is one), numbers as Python writes them (the shortest
decimal that reads back as the same double).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from pydantic import ValidationError

from .codec import JSON
from .compact import COMPACT, COMPRESSIONS, encode_compact
from .errors import ContractError
from .models import (
    MAX_PAYLOAD_BYTES,
    GatewayStatus,
    Reading,
    StatusReason,
    Telemetry,
    TelemetryEnvelope,
)
from .parse import _first_error

__all__ = [
    "ENCODINGS",
    "EncodeError",
    "Encoded",
    "check_reading",
    "encode_json",
    "encode_status",
    "encode_telemetry",
]

Encoding = Literal["json", "compact"]
ENCODINGS: tuple[Encoding, ...] = ("json", "compact")

#: A reading's keys in the order they are written (other keys, which only
#: an unchecked reading can have, follow).
_READING_KEYS = ("sensor", "kind", "ts", "value", "unit", "quality", "animal")
_KNOWN = frozenset(_READING_KEYS)
_FULL_ORDERS = frozenset({_READING_KEYS[:6], (*_READING_KEYS[:5], "animal"), _READING_KEYS})
_STATUS_KEYS = tuple(GatewayStatus.model_fields)


class EncodeError(ContractError):
    """A message the contract does not allow, so it was not built.

    ``reason`` is the reason the edge would give (``schema``, ``too_large``,
    ``bad_status``); ``index`` the reading at fault, if one is."""

    def __init__(self, reason: str, detail: str, *, index: int | None = None) -> None:
        where = f"reading {index}: " if index is not None else ""
        super().__init__(f"{reason}: {where}{detail}")
        self.reason = reason
        self.detail = detail
        self.index = index


@dataclass(frozen=True, slots=True)
class Encoded:
    """A payload and the MQTT 5 content type to publish it with."""

    payload: bytes
    content_type: str


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


def _wire_reading(r: object) -> Any:
    """The reading as written: known keys in protocol order, ``quality``
    left out when ``ok`` (its default) and ``animal`` when None. Anything
    but a mapping (only an unchecked reading can be one) as it is."""
    if type(r) is dict:
        keys = tuple(r)
        # Fast path: already as written (what the gateway and simulator pass).
        if keys == _READING_KEYS[:5] or (
                keys in _FULL_ORDERS and r.get("quality", "") != "ok"
                and r.get("animal", "") is not None):
            return r
    if not isinstance(r, Mapping):
        return r
    out: dict[str, Any] = {}
    for k in _READING_KEYS:
        if k in r:
            v = _plain(r[k])
            if (k == "quality" and v == "ok") or (k == "animal" and v is None):
                continue
            out[k] = v
    if len(r) > len(out):
        for k, v in r.items():
            if k not in out and k not in _READING_KEYS:
                out[k] = _plain(v)
    return out


def _dumps(doc: Mapping[str, Any], reason: str, *, limit: bool = True) -> bytes:
    try:
        text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        data = text.encode()
    except (TypeError, ValueError, RecursionError) as exc:
        # NaN or infinity, a value JSON has no type for, a string with an
        # unpaired surrogate (not UTF-8).
        raise EncodeError(reason, f"{type(exc).__name__}: {exc}"[:300]) from None
    if limit and len(data) > MAX_PAYLOAD_BYTES:
        raise EncodeError("too_large", f"payload is {len(data)} bytes, the limit is "
                                       f"{MAX_PAYLOAD_BYTES}")
    return data


def _check(data: bytes, readings: Sequence[Mapping[str, Any]], *, check_readings: bool) -> None:
    """The decoder's rules, applied to the bytes written (so JSON's types
    are the ones checked, exactly as the edge will read them): the envelope,
    and with ``check_readings`` every reading."""
    if check_readings:
        for i, r in enumerate(readings):
            if isinstance(r, Mapping) and not r.keys() <= _KNOWN:
                _unknown_keys(r, i)
        try:
            Telemetry.model_validate_json(data)
        except ValidationError:
            pass
        else:
            return
    try:
        TelemetryEnvelope.model_validate_json(data)
    except ValidationError as exc:
        raise EncodeError("schema", _first_error(exc)) from None
    if not check_readings:
        return
    for i, r in enumerate(readings):
        try:
            check_reading(r)
        except EncodeError as exc:
            raise EncodeError(exc.reason, exc.detail, index=i) from None


def _unknown_keys(reading: Mapping[str, Any], index: int | None) -> None:
    key = next(str(k) for k in reading if k not in _KNOWN)
    raise EncodeError("schema", f"{key[:40]}: not a field of a reading in this version of "
                                "the contract", index=index)


def check_reading(reading: Mapping[str, Any]) -> None:
    """Raise :class:`EncodeError` if ``reading`` breaks the reading rules
    (what :func:`encode_json` checks of each reading): for a producer that
    wants to know before it keeps a reading, as the gateway agent does.

    A key this version of the contract does not name is refused too: the
    edge ignores one, but an edge from before "How the contract grows"
    (docs/protocol.md) refuses the message, and a field is sent only once
    the contract names it."""
    if isinstance(reading, Mapping) and not reading.keys() <= _KNOWN:
        _unknown_keys(reading, None)
    try:
        Reading.model_validate_json(_dumps(_wire_reading(reading), "schema"))
    except ValidationError as exc:
        raise EncodeError("schema", _first_error(exc)) from None


def encode_json(*, gateway: str, seq: int, sent: int, clock: str,
                readings: Sequence[Mapping[str, Any]], check_readings: bool = True) -> bytes:
    """One telemetry message as JSON. ``readings`` are mappings with the keys
    of a JSON reading (``sensor kind ts value unit``, optional ``quality``
    and ``animal``), written in their order.

    Raises :class:`EncodeError` for a message the edge would refuse as a
    whole, and, with ``check_readings`` (the default), for a reading that
    breaks the reading rules (a missing key, a bad id, a value that is not a
    finite number, ...). Kinds, units and ranges are not checked: a reading
    the edge rejects one by one (``unknown_unit``, ``out_of_range``) is still
    a well-formed reading. ``check_readings=False`` writes the readings as
    they are, for tools that must send malformed ones (fault injection,
    tests of the edge's per-reading rejects); the envelope is checked all
    the same.
    """
    return _encode_json(gateway, seq, sent, clock, readings, check_readings=check_readings,
                        limit=True)


def _encode_json(gateway: str, seq: int, sent: int, clock: str,
                 readings: Sequence[Mapping[str, Any]], *, check_readings: bool,
                 limit: bool) -> bytes:
    wire = [_wire_reading(r) for r in readings]
    doc = {"v": 1, "gateway": gateway, "seq": seq, "sent": sent, "clock": _plain(clock),
           "readings": wire}
    try:
        data = _dumps(doc, "schema", limit=limit)
    except EncodeError as exc:
        if exc.reason == "schema":  # say which reading JSON cannot hold
            for i, r in enumerate(wire):
                try:
                    _dumps(r, "schema", limit=False)
                except EncodeError as bad:
                    raise EncodeError("schema", bad.detail, index=i) from None
        raise
    _check(data, readings, check_readings=check_readings)
    return data


def encode_telemetry(*, gateway: str, seq: int, sent: int, clock: str,
                     readings: Sequence[Mapping[str, Any]], encoding: Encoding = "json",
                     compression: str = "deflate-dict",
                     check_readings: bool = True) -> Encoded:
    """One telemetry message in ``encoding`` ("json" or "compact", with
    ``compression`` one of the compact encoding's codes by name), with the
    content type to publish it with. The same checks as :func:`encode_json`
    for both encodings: whatever the encoding, the edge reads the same
    message."""
    if encoding == "json":
        return Encoded(encode_json(gateway=gateway, seq=seq, sent=sent, clock=clock,
                                   readings=readings, check_readings=check_readings), JSON)
    if encoding != "compact":
        raise EncodeError("bad_encoding", f"encoding {encoding!r} is not one of {ENCODINGS}")
    if compression not in COMPRESSIONS:
        raise EncodeError("bad_encoding", f"compression {compression!r} is not one of "
                                          f"{sorted(COMPRESSIONS)}")
    clock = _plain(clock)
    # The JSON form carries the same message: checked one way for both
    # (its size aside: the compact form is what goes on the wire).
    _encode_json(gateway, seq, sent, clock, readings, check_readings=check_readings,
                 limit=False)
    try:
        data = encode_compact(gateway=gateway, seq=seq, sent=sent, clock=clock,
                              readings=readings, compression=compression)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise EncodeError("schema", f"{type(exc).__name__}: {exc}"[:300]) from None
    if len(data) > MAX_PAYLOAD_BYTES:
        raise EncodeError("too_large", f"payload is {len(data)} bytes, the limit is "
                                       f"{MAX_PAYLOAD_BYTES}")
    return Encoded(data, COMPACT)


def encode_status(*, gateway: str, online: bool, ts: int | None = None,
                  uptime_s: float | None = None, version: str | None = None,
                  outbox_depth: int | None = None, outbox_oldest_age_s: float | None = None,
                  dropped: int | None = None, clock: str | None = None,
                  cpu_temperature: float | None = None, disk_free_mb: float | None = None,
                  outbox_full: bool | None = None, reason: str | None = None,
                  held_unsynced: int | None = None,
                  held_for_s: float | None = None, refused: int | None = None,
                  publish_refused: int | None = None) -> bytes:
    """A status payload (JSON; retained on ``.../status``). Fields left at
    None are not written; ``outbox_full`` is written only when true (an edge
    older than the field refuses a status holding it, so it is sent only
    while it matters). Raises :class:`EncodeError` (reason ``bad_status``)
    for a status the edge would refuse, and for a ``reason`` that is not a
    :class:`StatusReason` (the edge would read it as none). The last will is
    ``encode_status(gateway=..., online=False, reason="lost")``."""
    if reason is not None and reason not in StatusReason._value2member_map_:
        raise EncodeError("bad_status", f"reason: {str(reason)[:40]!r} is not one of "
                                        f"{', '.join(StatusReason)}")
    given: dict[str, Any] = {
        "v": 1, "gateway": gateway, "online": online, "ts": ts, "uptime_s": uptime_s,
        "version": version, "outbox_depth": outbox_depth,
        "outbox_oldest_age_s": outbox_oldest_age_s, "dropped": dropped,
        "clock": _plain(clock), "cpu_temperature": cpu_temperature,
        "disk_free_mb": disk_free_mb, "outbox_full": True if outbox_full else None,
        "reason": _plain(reason), "held_unsynced": held_unsynced, "held_for_s": held_for_s,
        "refused": refused or None, "publish_refused": publish_refused,
    }
    doc = {k: given[k] for k in _STATUS_KEYS if given[k] is not None}
    data = _dumps(doc, "bad_status")
    try:
        GatewayStatus.model_validate_json(data)
    except ValidationError as exc:
        raise EncodeError("bad_status", _first_error(exc)) from None
    return data
