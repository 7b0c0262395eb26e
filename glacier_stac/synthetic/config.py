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
    ROCK_GLACIER = 10  # permafrost debris with ice inside (`rock_glaciers`): optically like scree, cooler


DIFFICULTIES = ("easy", "normal", "hard")


@dataclass(frozen=True)
class Thermal:
    """Late-summer mid-morning land-surface temperature (K) of a regime, linear in elevation z (metres).

    rock = rock_t0 - lapse z + 9 lit; vegetation = veg_t0 - lapse z + 4 lit; debris over ice =
    debris_t0 + debris_k * thickness - debris_lapse z + 2 lit. Debris sits between melting ice and rock,
    so it cools with height more slowly than rock: where relief is large (5000 m of it in High Asia),
    sunlit rock high up is colder than debris-covered ice lower down, and only the temperature relative
    to bare ground at the same elevation tells them apart.
    """

    rock_t0: float = 298.0
    lapse: float = 0.005
    veg_t0: float = 292.0
    debris_t0: float = 279.0
    debris_k: float = 6.0
    debris_lapse: float = 0.002
    rock_glacier_dt: float = 3.0  # rock glaciers: this much cooler than rock at their height (ice under the blocks)

    @classmethod
    def tracking(cls, rock_t0: float, lapse: float, share: float) -> Thermal:
        """Debris at `share` of the way from melting ice (273 K) to rock at every elevation (thick: warmer)."""
        return cls(rock_t0=rock_t0, lapse=lapse, veg_t0=rock_t0 - 6.0,
                   debris_t0=273.0 + share * (rock_t0 - 273.0) - 3.0, debris_k=6.0, debris_lapse=share * lapse)

    def rock(self, z: float) -> float:
        """Mean sunlit-rock temperature at elevation z (no illumination term)."""
        return self.rock_t0 - self.lapse * z

    def debris(self, z: float, thickness: float = 0.5) -> float:
        """Debris-covered ice temperature at elevation z for a thickness proxy in [0, 1]."""
        return self.debris_t0 + self.debris_k * thickness - self.debris_lapse * z


@dataclass(frozen=True)
class Regime:
    """A glacier climate: where it is, how high its land lies, its ice cover, debris, sea and sensors.

    The terrain and glacier physics run in one reference frame (the maritime one: sea level to ~3000 m);
    a regime maps heights into its own range with `base_m + vertical_scale * z`, so the ELA, snowline and
    debris move with the land and stay consistent with each other.
    """

    name: str
    center_lon: float
    center_lat: float
    base_m: float = 0.0  # height the reference frame's sea level maps to (inland: the lowest valley floors)
    vertical_scale: float = 1.0
    coverage: float = 0.45  # fraction of the land under ice in the first year (sets the ELA)
    tidewater: bool = True  # a fjord at the south edge with a calving glacier
    debris_scale: float = 1.0  # multiplies the debris threshold: lower -> more debris-covered ice
    debris_tongue: float = 0.2  # quantile of the debris glacier's tongue left clean (0.2: ~80% debris)
    sea_ice: float = 0.0  # fraction of the open fjord under drifting sea ice (beyond the melange)
    polarizations: tuple[str, str] = ("vv", "vh")  # Sentinel-1 asset keys (co-pol, cross-pol)
    season: tuple[tuple[int, int], tuple[int, int]] | None = None  # ((m, d), (m, d)); None: by hemisphere
    thermal: Thermal = Thermal()
    rock_glaciers: float = 0.0  # rock glaciers drawn per km2 of world (where talus meets the permafrost belt)

    def height(self, z):  # noqa: ANN001, ANN201 - floats and arrays alike
        """Reference-frame heights in this regime's range."""
        return self.base_m + self.vertical_scale * z


REGIMES: dict[str, Regime] = {
    r.name: r
    for r in (
        # Chugach Mountains, Alaska: sea level to ~3000 m, tidewater, debris and valley glaciers (the default)
        Regime("maritime", -147.0, 61.2),
        # European Alps: valley floors 1500-2500 m, peaks to ~4000 m, ELA ~2900 m, no sea
        Regime("continental", 7.9, 46.0, base_m=1600.0, vertical_scale=1.0, coverage=0.16, tidewater=False,
               debris_scale=0.85, thermal=Thermal.tracking(306.0, 0.0065, 0.45), rock_glaciers=0.35),
        # Karakoram / Everest: floors 3500-4500 m, peaks to ~8000 m, ELA 5000-5500 m, long debris-covered trunks
        Regime("high-mountain-asia", 86.9, 28.0, base_m=3600.0, vertical_scale=1.6, coverage=0.30, tidewater=False,
               debris_scale=0.08, debris_tongue=0.02, thermal=Thermal.tracking(315.0, 0.0075, 0.45),
               rock_glaciers=0.3),
        # Svalbard: sea level to ~1500 m, low ELA, sea ice in the fjords, HH/HV Sentinel-1, short summer
        Regime("arctic", 15.5, 78.6, vertical_scale=0.55, coverage=0.6, sea_ice=0.45, polarizations=("hh", "hv"),
               season=((7, 1), (9, 30)), debris_scale=1.2, thermal=Thermal.tracking(285.0, 0.005, 0.45)),
        # Southern Patagonia: maritime, tidewater, UTM south zone, the season in January-March
        Regime("southern", -73.5, -49.3, vertical_scale=1.05, coverage=0.5, season=((1, 1), (3, 31)),
               thermal=Thermal.tracking(294.0, 0.0055, 0.4)),
        # Dry Andes (Chile/Argentina, ~33 S): floors 3200-3800 m, peaks to ~6000 m, small glaciers under a
        # high ELA, debris-covered tongues, and rock glaciers outnumbering the glaciers; the austral summer
        Regime("dry", -70.0, -33.2, base_m=3200.0, vertical_scale=1.7, coverage=0.14, tidewater=False,
               debris_scale=0.5, debris_tongue=0.1, thermal=Thermal.tracking(316.0, 0.0065, 0.45),
               rock_glaciers=0.7),
    )
}
MAX_PIXELS = 6000  # per side: a bigger world's arrays would not fit a worker (and the user DEM has the same cap)


@dataclass(frozen=True)
class WorldConfig:
    """What a user chooses. Deterministic: the same config gives the same bytes."""

    seed: int = 0
    size_km: float = 20.0  # square region side
    resolution: float = 10.0  # metres, the 10 m grid of the truth and of S2/S1
    center_lon: float | None = None  # None: the regime's centre (maritime: Chugach Mountains, Alaska)
    center_lat: float | None = None
    years: tuple[int, ...] = (2019, 2020, 2021, 2022, 2023)
    area_loss_per_year: tuple[float, float] = (0.02, 0.04)  # fraction of area lost per year (min, max)
    difficulty: str = "hard"  # clouds, seasonal snow, debris extent
    s2_per_year: int = 3
    s1_per_year: int = 3
    landsat_per_year: int = 2
    sensors: tuple[str, ...] = ("sentinel-2", "sentinel-1", "landsat", "copdem")
    regime: str = "maritime"  # a key of REGIMES: relief, ice cover, debris, sea, thermal, season, SAR pols

    def __post_init__(self) -> None:
        from glacier_stac import sensors as _sensors
        from glacier_stac.catalog import check_years

        if self.regime not in REGIMES:
            raise ValueError(f"unknown regime {self.regime!r}; choose from {sorted(REGIMES)}")
        r = REGIMES[self.regime]
        if self.center_lon is None:  # frozen: the resolved centre is what equality and to_dict see
            object.__setattr__(self, "center_lon", r.center_lon)
        if self.center_lat is None:
            object.__setattr__(self, "center_lat", r.center_lat)

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

    @property
    def physics(self) -> Regime:
        """The regime record this world is drawn with."""
        return REGIMES[self.regime]

    def to_dict(self) -> dict:
        return asdict(self)
