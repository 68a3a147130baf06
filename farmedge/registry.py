"""The gateway registry: which farms and gateways exist, what each sensor
measures and where (plot, crop, animal), and who hears about it.

One YAML file (``FARMEDGE_REGISTRY``), kept by the service center (and by
``farmedge provision``). Without a registry the edge accepts any gateway whose
topic and payload agree (open enrollment); with one, unknown gateways are
rejected. See docs/registry.md and registry.example.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .config import load_yaml_model
from .contract.ids import check_id, check_topic_id
from .contract.models import Id, TopicId

__all__ = [
    "Contact",
    "ContactRole",
    "Farm",
    "GatewayEntry",
    "Herd",
    "Plot",
    "Registry",
    "SensorMeta",
    "load_registry",
]

Language = Literal["zh", "en"]
#: What a contact is (docs/alerts.md, "Routing"): on a farm, ``farmer`` (the
#: default) or ``officer`` (the farm's extension officer, copied on its
#: alerts with a budget of their own); at the center, ``operator`` (the
#: default) or ``agronomist`` (an operator who also gets escalations).
ContactRole = Literal["farmer", "officer", "operator", "agronomist"]


class _Model(BaseModel):
    # Every number finite: YAML's .inf would be a gateway never offline, and
    # .nan a threshold (params) no reading ever crosses.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SensorMeta(_Model):
    """What a sensor is attached to. Each set field becomes an InfluxDB tag."""

    plot: Id | None = None
    crop: Id | None = None
    animal: Id | None = None
    #: Seconds between two readings; device rules use it to notice silence.
    interval_s: Annotated[float, Field(gt=0)] | None = None
    #: Soil probe depth in cm (informative).
    depth_cm: Annotated[float, Field(ge=0)] | None = None

    def tags(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.plot:
            out["plot"] = self.plot
        if self.crop:
            out["crop"] = self.crop
        if self.animal:
            out["animal"] = self.animal
        return out


class GatewayEntry(_Model):
    sensors: dict[str, SensorMeta] = Field(default_factory=dict)
    #: Seconds between two status or telemetry messages, for the offline rule.
    interval_s: Annotated[float, Field(gt=0)] | None = None
    #: Alert profile for this gateway's readings (e.g. a barn's climate sensors).
    profile: Id | None = None
    #: True: only the sensors listed in ``sensors`` are known; readings of any
    #: other sensor are rejected (``unknown_sensor``). False (default): other
    #: sensors are accepted within the edge's budget of ids per gateway
    #: (``[ingest] max_ids_per_gateway``), so a new gateway works at once.
    only_listed_sensors: bool = False

    @model_validator(mode="after")
    def _ids(self) -> GatewayEntry:
        for sid in self.sensors:
            check_id(sid, what="sensor id")
        if self.only_listed_sensors and not self.sensors:
            raise ValueError("only_listed_sensors is true but no sensors are listed")
        return self


class Plot(_Model):
    name: str | None = None
    crop: Id | None = None
    #: Alert profile for this plot (overrides the farm's).
    profile: Id | None = None
    #: Per-field soil constants, volumetric %, since published values differ.
    field_capacity: Annotated[float, Field(gt=0, le=100)] | None = None
    wilting_point: Annotated[float, Field(ge=0, le=100)] | None = None
    #: Overrides of the alert profile's parameters for this plot.
    params: dict[str, float] = Field(default_factory=dict)


class Herd(_Model):
    """A group of animals sharing an alert profile (dairy cows, sows, ...)."""

    name: str | None = None
    profile: Id | None = None
    animals: list[Id] = Field(default_factory=list)
    #: Overrides of the alert profile's parameters for this herd.
    params: dict[str, float] = Field(default_factory=dict)


class Contact(_Model):
    name: str
    #: Apprise URLs (json://, mailto://, dingtalk://, wecombot://, ...).
    notify: list[str] = Field(default_factory=list)
    language: Language = "zh"
    #: "21:00-07:00" local time: only critical alerts are sent then.
    quiet_hours: str | None = None
    #: farmer or officer on a farm; operator or agronomist at the center
    #: (None: farmer on a farm, operator at the center).
    role: ContactRole | None = None
    #: The old spelling of ``role: agronomist`` (still accepted; check-config
    #: warns).
    agronomist: bool = False

    @model_validator(mode="after")
    def _role(self) -> Contact:
        if self.agronomist and self.role not in (None, "agronomist"):
            raise ValueError(f"contact {self.name}: agronomist: true and role: {self.role} "
                             "disagree (write role: agronomist only)")
        return self

    @property
    def is_agronomist(self) -> bool:
        """Gets the escalations of critical farm alerts (at the center)."""
        return self.agronomist or self.role == "agronomist"

    @property
    def is_officer(self) -> bool:
        """A farm's extension officer: copied on the farm's alerts."""
        return self.role == "officer"


class Farm(_Model):
    county: TopicId
    farm: TopicId
    name: str | None = None
    language: Language = "zh"
    timezone: str = "Asia/Shanghai"
    profile: Id | None = None
    gateways: dict[str, GatewayEntry] = Field(default_factory=dict)
    plots: dict[str, Plot] = Field(default_factory=dict)
    herds: dict[str, Herd] = Field(default_factory=dict)
    contacts: list[Contact] = Field(default_factory=list)
    #: Most messages a farm's contacts get in one day (critical ones excepted).
    daily_message_budget: Annotated[int, Field(ge=0)] = 10

    @model_validator(mode="after")
    def _ids(self) -> Farm:
        for gid in self.gateways:
            check_topic_id(gid, what="gateway id")
        for pid in self.plots:
            check_id(pid, what="plot id")
        herd_of: dict[str, str] = {}
        for hid, h in self.herds.items():
            check_id(hid, what="herd id")
            for a in h.animals:
                # Alerts take the first herd that lists an animal: a second
                # one's profile would never apply to it.
                first = herd_of.get(a)
                if first is not None:
                    where = f"herd {hid}" if first == hid else f"herds {first} and {hid}"
                    raise ValueError(f"animal {a} is listed twice ({where}): an animal "
                                     "belongs to one herd")
                herd_of[a] = hid
        return self


class Registry(_Model):
    farms: list[Farm] = Field(default_factory=list)
    #: The service center's people (escalations, device alerts).
    center_contacts: list[Contact] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> Registry:
        # A farm listed twice would split its gateways between two entries
        # while its alerts go to the first entry's contacts only.
        farms: dict[tuple[str, str], int] = {}
        for n, f in enumerate(self.farms, 1):
            first = farms.setdefault((f.county, f.farm), n)
            if first != n:
                raise ValueError(f"farm {f.county}/{f.farm} is listed twice (farms entries "
                                 f"{first} and {n}): merge them into one")
        seen: set[tuple[str, str, str]] = set()
        for f in self.farms:
            for g in f.gateways:
                key = (f.county, f.farm, g)
                if key in seen:
                    raise ValueError(f"gateway {'/'.join(key)} is listed twice")
                seen.add(key)
        return self

    def index(self) -> dict[tuple[str, str, str], tuple[Farm, GatewayEntry]]:
        """(county, farm, gateway) -> (farm, gateway entry)."""
        return {(f.county, f.farm, g): (f, e) for f in self.farms for g, e in f.gateways.items()}

    def farm(self, county: str, farm: str) -> Farm | None:
        for f in self.farms:
            if f.county == county and f.farm == farm:
                return f
        return None


def load_registry(path: Path | str) -> Registry:
    """The registry file (errors name file, line and key; a key given twice
    in one mapping is one)."""
    return load_yaml_model(Registry, path)
