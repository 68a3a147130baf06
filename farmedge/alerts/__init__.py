"""Alerts that reach smallholders: rules as data on readings and gateway
status, device health rules, sent once, in plain words, through Apprise.

See docs/alerts.md. The edge builds an :class:`AlertEngine` and hands it the
readings it made durable (``on_readings``) and gateway status (``on_status``);
the engine's ``run()`` task does timers, state on disk and delivery.
"""

from .engine import AlertEngine, check_registry
from .errors import AlertsError, DeliveryFailed
from .notify import AppriseNotifier, Notifier
from .record import AlertEvent, InfluxRecorder, MemoryRecorder, MqttRecorder, Recorder
from .rules import RuleSet, load_rules
from .settings import AlertsSettings
from .templates import export_templates

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
    "Notifier",
    "Recorder",
    "RuleSet",
    "check_registry",
    "export_templates",
    "load_rules",
]
