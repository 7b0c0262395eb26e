"""The synthetic world's configuration and its physical state (before any sensor sees it).

`WorldConfig` is what a user sets; `World` is what `terrain` + `glaciers` produce and what `render`
turns into sensor acquisitions. Keeping the physical state separate from the rendering lets the same
renderer draw a user's own DEM and outlines (`from_user`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import IntEnum

import numpy as np
from odc.geo.geobox import GeoBox

from glacier_stac.labels import Label  # noqa: F401  (re-exported for the generator's modules)


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

        if not self.size_km > 0:
            raise ValueError(f"world size_km must be positive, got {self.size_km}")
        if not self.resolution > 0:
            raise ValueError(f"world resolution must be positive, got {self.resolution}")
        if self.size_km * 1000 / self.resolution < 64:
            raise ValueError(f"world of {self.size_km} km at {self.resolution} m is under 64 pixels a side")
        if not self.years:
            raise ValueError("world years are empty; give at least one year, e.g. 2019-2023")
        years = list(self.years)
        if years != sorted(years) or len(set(years)) != len(years):
            raise ValueError(f"world years must be increasing and distinct, got {years}")
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


@dataclass
class World:
    """The physical state on the 10 m UTM grid, per year. No sensor has looked at it yet."""

    config: WorldConfig
    geobox: GeoBox  # UTM, `config.resolution` metres
    elevation: np.ndarray  # float32 (y, x), metres above sea level; sea < 0
    surface: dict[int, np.ndarray] = field(default_factory=dict)  # year -> uint8 Surface codes
    glacier_id: dict[int, np.ndarray] = field(default_factory=dict)  # year -> int32, 0 = no glacier
    ice_thickness: dict[int, np.ndarray] = field(default_factory=dict)  # year -> float32 metres
    calving_ids: tuple[int, ...] = ()  # glacier ids that end in water
    bed: np.ndarray | None = None  # float32 (y, x) ground under the ice, metres (None: = elevation)
    ela: dict[int, np.ndarray] = field(default_factory=dict)  # year -> float32 ELA field, metres

    @property
    def years(self) -> tuple[int, ...]:
        return tuple(sorted(self.surface))

    def labels(self, year: int) -> np.ndarray:
        """Truth label raster (uint8 `Label`) for a year, on the 10 m grid."""
        s = self.surface[year]
        out = np.zeros(s.shape, dtype=np.uint8)
        out[np.isin(s, (Surface.SNOW, Surface.ICE)) & (self.glacier_id[year] > 0)] = Label.CLEAN_ICE
        out[(s == Surface.DEBRIS) & (self.glacier_id[year] > 0)] = Label.DEBRIS_ICE
        out[np.isin(s, (Surface.LAKE, Surface.SEA))] = Label.WATER
        return out


def build_world(config: WorldConfig) -> World:
    """Terrain, glaciers and their yearly change for `config` (deterministic for a seed + config).

    `elevation` is the DEM of the glaciers' first year (ice surface on glaciers, flat lake surfaces,
    negative bathymetry at sea); `bed` is the ground under the ice.
    """
    from glacier_stac.synthetic.glaciers import simulate
    from glacier_stac.synthetic.terrain import sea_mask, world_geobox

    geobox = world_geobox(config.size_km, config.resolution, config.center_lon, config.center_lat)
    sim = simulate(config)
    first = config.years[0]
    dem = sim.bed + sim.thickness[first]
    lake = sim.surface[first] == Surface.LAKE
    if lake.any():
        from scipy import ndimage

        lab, _ = ndimage.label(lake)
        level = ndimage.maximum(dem, lab, index=np.arange(1, lab.max() + 1))
        dem = np.where(lake, np.asarray([0.0, *level])[lab], dem)
    sea = sea_mask(sim.bed, blocked=sim.ice[first])
    dem = np.where(sea, np.minimum(dem, -1.0), dem)
    calving = sorted(
        {int(g) for y in config.years for g in np.unique(sim.ids[y][_touches_sea(sim.surface[y])]) if g > 0}
    )
    return World(
        config=config,
        geobox=geobox,
        elevation=dem.astype(np.float32),
        surface=dict(sim.surface),
        glacier_id=dict(sim.ids),
        ice_thickness=dict(sim.thickness),
        calving_ids=tuple(calving),
        bed=sim.bed.astype(np.float32),
        ela={y: sim.ela[y].astype(np.float32) for y in config.years},
    )


def _touches_sea(surface: np.ndarray) -> np.ndarray:
    """Pixels next to (8-neighbourhood) open sea or sea ice."""
    from scipy import ndimage

    water = np.isin(surface, (Surface.SEA, Surface.SEA_ICE))
    return ndimage.binary_dilation(water, structure=np.ones((3, 3), bool))
