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
    #: Publish events on farm/v1/{county}/{farm}/alerts and write them to InfluxDB.
    publish_mqtt: bool = True
    write_influx: bool = True
