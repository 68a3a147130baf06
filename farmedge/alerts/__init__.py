"""Alerts that reach smallholders: rules as data on readings and gateway
status, device health rules, sent once, in plain words, through Apprise.

See docs/alerts.md. The edge builds an :class:`AlertEngine` and hands it the
records it made durable: one ``farmedge.records.Accepted`` per telemetry
message (``on_accepted``) and each gateway status (``on_status``); the
engine's ``run()`` task does timers, state on disk and delivery. Its parts:
docs/architecture.md, "The alert engine inside".

Names are imported on first use, so that ``farmedge.alerts.settings`` (which
the edge's config imports) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .build import engine_from_settings
    from .engine import AlertEngine, check_registry
    from .errors import AlertsError, DeliveryFailed, StateError
    from .notify import AppriseNotifier, Notifier
    from .record import (
        AlertEvent,
        InfluxRecorder,
        MemoryRecorder,
        MqttRecorder,
        NatsRecorder,
        Recorder,
        RecordSink,
        SinkRecorder,
    )
    from .rules import RuleSet, load_rules
    from .settings import AlertsSettings
    from .templates import export_templates

_WHERE = {
    "AlertEngine": "engine", "check_registry": "engine", "AlertsError": "errors",
    "DeliveryFailed": "errors", "StateError": "errors", "AppriseNotifier": "notify",
    "Notifier": "notify",
    "AlertEvent": "record", "InfluxRecorder": "record", "MemoryRecorder": "record",
    "MqttRecorder": "record", "NatsRecorder": "record", "Recorder": "record",
    "RecordSink": "record",
    "SinkRecorder": "record", "RuleSet": "rules", "load_rules": "rules",
    "AlertsSettings": "settings", "export_templates": "templates",
    "engine_from_settings": "build",
}

__all__ = [
    "AlertEngine",
    "AlertEvent",
    "AlertsError",
    "AlertsSettings",
    "AppriseNotifier",
    "DeliveryFailed",
    "InfluxRecorder",
    "MemoryRecorder",
    "MqttRecorder",
    "NatsRecorder",
    "Notifier",
    "RecordSink",
    "Recorder",
    "RuleSet",
    "SinkRecorder",
    "StateError",
    "check_registry",
    "engine_from_settings",
    "export_templates",
    "load_rules",
]


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'farmedge.alerts' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{mod}", __name__), name)
