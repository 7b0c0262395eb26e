"""What a user sets for a synthetic world (`WorldConfig`) and the surface classes the physics produces.

Kept apart from `world.py` (the physical state and `build_world`) so that the physics modules
(`glaciers`, `terrain`) import the configuration without importing the module that calls them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import IntEnum


class Surface(IntEnum):
    """Surface classes of the physical world, one per 10 m pixel and year."""

    ROCK = 0
    SCREE = 1
    VEGETATION = 2
    LAKE = 3  # proglacial and other lakes
    SEA = 4  # open water in the fjord
    SEA_ICE = 5  # sea ice and ice melange / icebergs beside a calving front
    SNOW = 6  # snow and firn on the glacier (accumulation area)
    ICE = 7  # clean glacier ice
    DEBRIS = 8  # debris-covered glacier ice
    MORAINE = 9  # ice-free glacial debris (moraines, fresh forefield): optically like DEBRIS, background


DIFFICULTIES = ("easy", "normal", "hard")
MAX_PIXELS = 6000  # per side: a bigger world's arrays would not fit a worker (and the user DEM has the same cap)


@dataclass(frozen=True)
class WorldConfig:
    """What a user chooses. Deterministic: the same config gives the same bytes."""

    seed: int = 0
    size_km: float = 20.0  # square region side
    resolution: float = 10.0  # metres, the 10 m grid of the truth and of S2/S1
    center_lon: float = -147.0  # Chugach Mountains, Alaska: tidewater, debris and valley glaciers
    center_lat: float = 61.2
    years: tuple[int, ...] = (2019, 2020, 2021, 2022, 2023)
    area_loss_per_year: tuple[float, float] = (0.02, 0.04)  # fraction of area lost per year (min, max)
    difficulty: str = "hard"  # clouds, seasonal snow, debris extent
    s2_per_year: int = 3
    s1_per_year: int = 3
    landsat_per_year: int = 2
    sensors: tuple[str, ...] = ("sentinel-2", "sentinel-1", "landsat", "copdem")

    def __post_init__(self) -> None:
        from glacier_stac import sensors as _sensors
        from glacier_stac.catalog import check_years

        if self.seed < 0:  # numpy's generators refuse negative seeds with a message that does not say which
            raise ValueError(f"world seed must be an integer >= 0, got {self.seed}")
        if not self.size_km > 0 or not math.isfinite(self.size_km):
            raise ValueError(f"world size_km must be a finite positive number, got {self.size_km}")
        if not self.resolution > 0:
            raise ValueError(f"world resolution must be positive, got {self.resolution}")
        if self.size_km * 1000 / self.resolution < 64:
            raise ValueError(f"world of {self.size_km} km at {self.resolution} m is under 64 pixels a side")
        if self.size_km * 1000 / self.resolution > MAX_PIXELS:  # the arrays of one year must fit in memory
            raise ValueError(f"world of {self.size_km:g} km at {self.resolution:g} m is over {MAX_PIXELS} pixels "
                             f"a side (at most {MAX_PIXELS * self.resolution / 1000:g} km); make several worlds")
        check_years(self.years)  # the years search accepts: no world of a year no sensor saw
        lo, hi = self.area_loss_per_year
        if not (0 <= lo <= hi < 0.5):
            raise ValueError(f"area_loss_per_year must be 0 <= min <= max < 0.5, got {self.area_loss_per_year}")
        if self.difficulty not in DIFFICULTIES:
            raise ValueError(f"unknown difficulty {self.difficulty!r}; choose from {DIFFICULTIES}")
        if not (-80 <= self.center_lat <= 84) or not (-180 <= self.center_lon <= 180):
            raise ValueError(f"world centre ({self.center_lon}, {self.center_lat}) is outside the UTM domain")
        for n in self.sensors:
            _sensors.get(n)  # raises with the list of known sensors
        for k in ("s2_per_year", "s1_per_year", "landsat_per_year"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be at least 1")

    def to_dict(self) -> dict:
        return asdict(self)
