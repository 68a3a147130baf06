"""Simulated sensors: realistic, seeded, reproducible values for every kind
of the contract, from :mod:`farmedge.simdata` (the demo and tests use it)."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from pydantic import Field, field_validator

from farmedge.contract import KINDS, Quality
from farmedge.contract.models import Id
from farmedge.simdata import Episode, SensorSim

from .base import Sample, SensorConfig

__all__ = ["SimulatedConfig", "SimulatedSensor"]


class SimulatedConfig(SensorConfig):
    driver: Literal["simulated"]
    #: The kinds this simulated device reports, each read once per interval.
    kinds: Annotated[list[str], Field(min_length=1)] = Field(
        default_factory=lambda: ["soil_moisture", "soil_temperature", "soil_ec"])
    seed: int = 0
    #: The animal a livestock sensor (bolus, collar) is bound to.
    animal: Id | None = None
    #: Share of reads that return an injected fault (spike, 85 °C, wrong unit).
    bad_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    #: Demos only: from this epoch second the device's problem develops within
    #: episode_s (a soil probe's plot dries out, a bolus's cow runs a fever).
    episode_start: float | None = None
    episode_s: Annotated[float, Field(gt=0)] = 20.0

    @field_validator("kinds")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [k for k in v if k not in KINDS]
        if unknown:
            raise ValueError(f"kinds {unknown} are not in the contract")
        return v


class SimulatedSensor:
    def __init__(self, cfg: SimulatedConfig, *, county: str, farm: str, gateway: str) -> None:
        self.cfg = cfg
        episode = (None if cfg.episode_start is None
                   else Episode(int(cfg.episode_start * 1000), cfg.episode_s))
        self.sims = [SensorSim(kind=k, sensor=cfg.id, farm=farm, county=county,
                               gateway=gateway, seed=cfg.seed, animal=cfg.animal,
                               episode=episode)
                     for k in cfg.kinds]
        self.interval_ms = int(cfg.interval_s * 1000)

    def read(self) -> list[Sample]:
        ts = int(time.time() * 1000)
        out = []
        for sim in self.sims:
            r = sim.reading(ts, interval_ms=self.interval_ms, bad_rate=self.cfg.bad_rate)
            out.append(Sample(r.kind, r.value, r.unit,
                              Quality.OK if r.bad is None else Quality.ERROR, animal=r.animal))
        return out

    def close(self) -> None:
        pass
