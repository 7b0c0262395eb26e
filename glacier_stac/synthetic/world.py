"""The synthetic world's physical state (before any sensor sees it) and `build_world`.

`WorldConfig` (in `config.py`, re-exported here) is what a user sets; `World` is what `terrain` +
`glaciers` produce and what `render` turns into sensor acquisitions. Keeping the physical state
separate from the rendering lets the same renderer draw a user's own DEM and outlines (`from_user`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from odc.geo.geobox import GeoBox

from glacier_stac.labels import Label
from glacier_stac.synthetic.config import DIFFICULTIES, Surface, WorldConfig

__all__ = ["DIFFICULTIES", "Label", "Surface", "World", "WorldConfig", "build_world"]


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
    rock_glacier_id: np.ndarray | None = None  # int32 (y, x), 0 = none; rock glaciers are never glaciers

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
        out[s == Surface.ROCK_GLACIER] = Label.ROCK_GLACIER
        return out


def build_world(config: WorldConfig) -> World:
    """Terrain, glaciers and their yearly change for `config` (deterministic for a seed + config).

    `elevation` is the DEM of the glaciers' first year (ice surface on glaciers, flat lake surfaces,
    negative bathymetry at sea); `bed` is the ground under the ice.
    """
    from glacier_stac.synthetic import rock_glaciers
    from glacier_stac.synthetic.glaciers import simulate
    from glacier_stac.synthetic.terrain import sea_mask, world_geobox

    geobox = world_geobox(config.size_km, config.resolution, config.center_lon, config.center_lat)
    sim = simulate(config)
    rg_ids = rock_glaciers.place(sim, config)  # raises the bed by their bodies; none outside their regimes
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
        rock_glacier_id=rg_ids if rg_ids.any() else None,
    )


def _touches_sea(surface: np.ndarray) -> np.ndarray:
    """Pixels next to (8-neighbourhood) open sea or sea ice."""
    from scipy import ndimage

    water = np.isin(surface, (Surface.SEA, Surface.SEA_ICE))
    return ndimage.binary_dilation(water, structure=np.ones((3, 3), bool))
