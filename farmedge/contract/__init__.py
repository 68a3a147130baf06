"""Wire contract v1: topics, payload models, units and encodings, decoded
(``parse_telemetry``, ``parse_status``) and encoded (``encode_telemetry``,
``encode_json``, ``encode_compact``, ``encode_status``). ``ContractError`` is
the root of everything it raises.

Both the gateway agent and the edge service import this package; neither
imports the other. docs/protocol.md is its human-readable form.
"""

from .codec import JSON, Codec, CodecError, PayloadTooLarge, codec_for, register
from .compact import COMPACT, decode_compact, encode_compact
from .encode import (
    ENCODINGS,
    Encoded,
    EncodeError,
    check_reading,
    encode_json,
    encode_status,
    encode_telemetry,
)
from .errors import ContractError
from .ids import (
    ID_PATTERN,
    RESERVED_IDS,
    InvalidId,
    check_id,
    check_topic_id,
    is_valid_id,
    is_valid_topic_id,
    reserved_id_reason,
)
from .kinds import KINDS, Kind, RangeError, UnitError, normalize
from .models import (
    MAX_EPOCH_MS,
    MAX_INT,
    MAX_PAYLOAD_BYTES,
    MAX_READINGS,
    MAX_REASON_CHARS,
    Clock,
    GatewayStatus,
    Quality,
    Reading,
    StatusReason,
    TelemetryEnvelope,
)
from .parse import (
    MessageRejected,
    NormalizedReading,
    ParsedTelemetry,
    ReadingRejected,
    excerpt,
    parse_status,
    parse_telemetry,
)
from .topics import (
    PREFIX,
    STATUS_FILTER,
    TELEMETRY_FILTER,
    GatewayTopic,
    TopicError,
    alerts_topic,
    parse_gateway_topic,
    status_topic,
    telemetry_topic,
)

__all__ = [
    "COMPACT", "ENCODINGS", "ID_PATTERN", "JSON", "KINDS", "MAX_EPOCH_MS", "MAX_INT",
    "MAX_PAYLOAD_BYTES", "MAX_READINGS", "MAX_REASON_CHARS", "PREFIX", "RESERVED_IDS",
    "STATUS_FILTER",
    "TELEMETRY_FILTER", "Clock", "Codec", "CodecError", "ContractError", "EncodeError", "Encoded",
    "GatewayStatus", "GatewayTopic", "InvalidId", "Kind", "MessageRejected", "NormalizedReading",
    "ParsedTelemetry", "PayloadTooLarge", "Quality", "RangeError", "Reading", "ReadingRejected",
    "StatusReason", "TelemetryEnvelope", "TopicError", "UnitError", "alerts_topic", "check_id",
    "check_reading",
    "check_topic_id",
    "codec_for", "decode_compact", "encode_compact", "encode_json", "encode_status",
    "encode_telemetry", "excerpt", "is_valid_id", "is_valid_topic_id", "normalize",
    "parse_gateway_topic", "parse_status", "parse_telemetry", "register", "reserved_id_reason",
    "status_topic", "telemetry_topic"
]
