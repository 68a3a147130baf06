"""The ``[alerts]`` section of the edge config (see config.example.toml)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from farmedge.config import Section

__all__ = ["AlertsSettings"]


class AlertsSettings(Section):
    #: Turn the alert engine on or off.
    enabled: bool = True
    #: Rule files or folders of *.yaml, loaded after the shipped profiles.
    rules: list[Path] = Field(default_factory=list)
    #: Load the shipped profiles (maize, soybean, rice, cattle, ..., device).
    shipped_profiles: bool = True
    #: SQLite file with alert state; default: <data_dir>/alerts.sqlite.
    state_path: Path | None = None
    #: Profile for plots without one, by the plot's (or sensor's) crop.
    crop_profiles: dict[str, str] = Field(default_factory=lambda: {
        "maize": "maize-blacksoil", "corn": "maize-blacksoil",
        "soybean": "soybean-blacksoil", "rice": "paddy-rice"})
    #: Profile when nothing else names one (and for farms the registry does not know).
    default_profile: str | None = None
    #: Seconds between timer passes (silence, offline, reminders, quiet hours).
    tick_s: Annotated[float, Field(gt=0)] = 1.0
    #: Readings older than this (seconds) are history, not alert input.
    max_reading_age_s: Annotated[float, Field(gt=0)] = 7200.0
    #: Delivery attempts per message, and the backoff between them (doubling).
    max_attempts: Annotated[int, Field(ge=1)] = 6
    backoff_s: Annotated[float, Field(ge=0)] = 30.0
    backoff_max_s: Annotated[float, Field(ge=0)] = 1800.0
    #: Messages per minute per URL, by Apprise scheme (DingTalk bots: 20/min).
    rate_limits: dict[str, int] = Field(default_factory=lambda: {"dingtalk": 20})
    #: Farm-side versus center-side (docs/alerts.md). After the edge starts or
    #: its broker connection comes back, silence rules (offline, sensor
    #: silent) wait this many of the gateway's reporting intervals, and at
    #: least reconnect_grace_s, for the gateways to report again.
    reconnect_grace_intervals: Annotated[float, Field(ge=0)] = 2.0
    reconnect_grace_s: Annotated[float, Field(ge=0)] = 60.0
    #: A last will (status online=false) is a suspicion: the gateway is
    #: offline only when it has not come back this many seconds later.
    offline_will_grace_s: Annotated[float, Field(ge=0)] = 300.0
    #: A planned stop (status online=false, reason "stopping") shorter than
    #: this sends nothing to the farm.
    planned_stop_grace_s: Annotated[float, Field(ge=0)] = 900.0
    #: This share of a county's gateways, and at least this many, going
    #: offline within the window is one center incident (to operators), not
    #: one farm incident each.
    mass_offline_share: Annotated[float, Field(gt=0, le=1)] = 0.3
    mass_offline_min_gateways: Annotated[int, Field(ge=1)] = 5
    mass_offline_window_s: Annotated[float, Field(gt=0)] = 60.0
    #: Operators (the registry's center_contacts): messages a day for
    #: center-side incidents (critical ones excepted), quiet hours for those
    #: of them without quiet_hours of their own ("22:00-07:00"; none: none).
    operator_daily_message_budget: Annotated[int, Field(ge=0)] = 30
    operator_quiet_hours: str | None = None
    #: Most non-critical messages one extension officer (a farm contact with
    #: role: officer) gets in a local day, over all the farms they are on.
    officer_daily_message_budget: Annotated[int, Field(ge=0)] = 30
    #: Failed attempts in a row to one contact that make an operator incident.
    delivery_failures_incident: Annotated[int, Field(ge=1)] = 3
    #: A gateway holding readings for an unsynced clock this long (its status's
    #: held_for_s) is one operator incident.
    clock_hold_incident_s: Annotated[float, Field(gt=0)] = 900.0
    #: Publish events on farm/v1/{county}/{farm}/alerts (through the broker
    #: the edge reads: [mqtt]'s, or the NATS cluster with [source] kind =
    #: "nats") and write them to InfluxDB.
    publish_mqtt: bool = True
    write_influx: bool = True
