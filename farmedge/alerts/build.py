"""Building the alert engine from the edge's configuration (the one place the
edge constructs its observers calls :func:`engine_from_settings`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from farmedge.config import ConfigError
from farmedge.registry import Registry
from farmedge.storage.settings import InfluxSection

from .engine import AlertEngine
from .errors import AlertsError
from .notify import AppriseNotifier
from .record import (
    InfluxRecorder,
    MqttRecorder,
    NatsRecorder,
    Recorder,
    RecordSink,
    SinkRecorder,
)
from .rules import load_rules
from .settings import AlertsSettings

__all__ = ["engine_from_settings"]


def _secret(v: Any) -> str | None:
    if v is None:
        return None
    get = getattr(v, "get_secret_value", None)
    return str(get()) if get is not None else str(v)


def engine_from_settings(alerts: AlertsSettings, *, registry: Registry | None, data_dir: Path,
                         mqtt: Any = None, influx: InfluxSection | None = None,
                         records: RecordSink | None = None,
                         nats: Callable[[], Any] | None = None,
                         instance: str = "edge") -> AlertEngine:
    """The engine with Apprise delivery, the MQTT alerts topic and the
    InfluxDB ``alerts`` measurement. The alerts topic: with ``nats`` (cluster
    mode: a function giving the edge's NATS client) over that connection to
    the cluster, else with an MQTT client of its own to ``mqtt`` (the edge's
    [mqtt] section). The measurement: as lines into ``records`` (the edge's
    sink: its writer and spool), or else with a client of its own
    (``influx``: an [influx] section). Raises ConfigError for wrong rules or
    a registry naming an unknown profile."""
    rules = load_rules(alerts.rules, shipped=alerts.shipped_profiles)
    recorders: list[Recorder] = []
    if alerts.publish_mqtt and nats is not None:
        recorders.append(NatsRecorder(nats))
    elif alerts.publish_mqtt and mqtt is not None:
        recorders.append(MqttRecorder(
            url=mqtt.url, client_id=f"{mqtt.client_id}-alerts" if mqtt.client_id else "",
            username=mqtt.username, password=_secret(mqtt.password),
            ca_file=str(mqtt.ca_file) if mqtt.ca_file else None,
            cert_file=str(mqtt.cert_file) if mqtt.cert_file else None,
            key_file=str(mqtt.key_file) if mqtt.key_file else None))
    if alerts.write_influx and records is not None:
        recorders.append(SinkRecorder(records))
    elif alerts.write_influx and influx is not None:
        recorders.append(InfluxRecorder(influx))
    state = alerts.state_path or Path(data_dir) / "alerts.sqlite"
    try:
        return AlertEngine(rules=rules, registry=registry, notifier=AppriseNotifier(),
                           state_path=state, recorders=recorders, settings=alerts)
    except AlertsError as exc:
        raise ConfigError(f"[alerts] {exc}") from None
