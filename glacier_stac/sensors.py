"""One declarative record per sensor.

Everything the rest of the code needs to know about a sensor lives here: which Planetary Computer
collection it is, which assets we read, at what resolution, dtype, scale/offset and nodata, how each
band is resampled, and which pixels are masked. The synthetic world renders *from* these records and
the cube reads *through* them, so real and synthetic items take the same code path.

A record names what it does, never who it is: `kernel` says which per-tile kernel of the cube turns its
reads into features ("optical", "sar", "thermal", "dem") and a mask band's `quality` says how it marks
usable pixels ("scl", "qa-bits"). No code branches on a sensor's name, so a second optical sensor
(Landsat OLI where Sentinel-2 is clouded) is one more record, with features of its own names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Band:
    """One asset of a sensor as we use it."""

    key: str  # asset key in the STAC item (the contract with Planetary Computer)
    resolution: float  # native ground sampling distance, metres (DEM: ~30 m at 1 arc-second)
    dtype: str  # dtype of the stored raster
    nodata: float | int | None
    scale: float = 1.0  # default physical = DN * scale + offset, when the item does not say
    offset: float = 0.0
    resampling: str = "bilinear"  # "nearest" for categorical bands
    categorical: bool = False
    unit: str = ""
    role: str = "data"  # "data" feeds features; "mask" only masks
    quality: str | None = None  # a mask band's encoding of usable pixels: a key of `QUALITY` ("scl", "qa-bits")
    stac_unit: str | None = None  # `raster:bands` unit the catalog's items state (None: they state none)
    stac_scaling: bool = False  # the catalog's items state this band's scale/offset in `raster:bands`


@dataclass(frozen=True)
class Sensor:
    """A sensor: a STAC collection and the bands we read from it."""

    name: str
    collection: str
    bands: tuple[Band, ...]
    role: str
    features: tuple[str, ...]  # what the sensor yields into the cube, in order
    kernel: str  # the cube's per-tile kernel for it, one of `KERNELS`; the kernel fixes how many features
    count_feature: str | None = None  # the feature counting valid observations (0 where no item)
    cloud_cover: bool = False  # items carry `eo:cloud_cover`, so searches filter on it
    required_assets: tuple[str, ...] = ()  # items lacking one are dropped at search (Landsat L2SP without ST)
    # Sentinel-2 L2A from processing baseline 04.00 on: DN carry +1000 (BOA_ADD_OFFSET), i.e. this offset
    # applies where the item states none
    baseline_offset: float = 0.0
    stac_extensions: tuple[str, ...] = ()  # beyond eo/raster/proj, the STAC extensions its items declare
    # other sets of data asset keys, each standing in for the data bands in their order
    # (Sentinel-1 HH/HV where no VV/VH was acquired)
    alternates: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        """Refuse a record the cube could not use, naming the field, when it is declared (not mid-run)."""
        where = f"sensor {self.name!r}"
        kind = KERNELS.get(self.kernel)
        if kind is None:
            raise ValueError(f"{where}: kernel {self.kernel!r} is not one of {list(KERNELS)}")
        n_data = sum(b.role == "data" for b in self.bands)
        if (n_data, len(self.features)) != (kind.data_bands, kind.features):
            raise ValueError(f"{where}: the {self.kernel!r} kernel reads {kind.data_bands} data bands and yields "
                             f"{kind.features} features; the record has {n_data} and {len(self.features)}")
        if len(set(self.features)) != len(self.features):
            raise ValueError(f"{where}: features {list(self.features)} repeat a name")
        if self.count_feature is not None and self.count_feature not in self.features:
            raise ValueError(f"{where}: count_feature {self.count_feature!r} is not among its features")
        if kind.static == (self.count_feature is not None):
            raise ValueError(f"{where}: a {'static' if kind.static else 'per-acquisition'} kernel "
                             f"{'has no' if kind.static else 'needs a'} count_feature")
        masks = [b for b in self.bands if b.role == "mask"]
        if len(masks) != kind.mask:
            raise ValueError(f"{where}: the {self.kernel!r} kernel takes {int(kind.mask)} mask band(s); "
                             f"the record has {[b.key for b in masks]}")
        for b in masks:
            if b.quality not in QUALITY:
                raise ValueError(f"{where}: mask band {b.key!r} has quality {b.quality!r}; "
                                 f"known: {sorted(QUALITY)}")

    @property
    def per_acquisition(self) -> bool:
        """False for a static layer (the DEM): searched once for every year, no season, no composite."""
        return not KERNELS[self.kernel].static

    @property
    def data_bands(self) -> tuple[Band, ...]:
        return tuple(b for b in self.bands if b.role == "data")

    @property
    def mask_band(self) -> Band | None:
        return next((b for b in self.bands if b.role == "mask"), None)

    @property
    def usable(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """Its mask band's decoder: stored mask values -> True where a pixel is usable (None: no mask)."""
        mask = self.mask_band
        return None if mask is None else QUALITY[mask.quality]

    @property
    def snowy(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """Its mask band's snow decoder: stored mask values -> True where it flags snow or ice (None: no mask)."""
        mask = self.mask_band
        return None if mask is None else SNOW_QUALITY[mask.quality]

    def band(self, key: str) -> Band:
        for b in self.bands:
            if b.key == key:
                return b
        for keys in self.alternates:
            if key in keys:
                return replace(self.data_bands[keys.index(key)], key=key)
        raise KeyError(f"sensor {self.name!r} has no asset {key!r}; it reads {[b.key for b in self.bands]}")

    def asset_keys(self) -> list[str]:
        return [b.key for b in self.bands]

    def data_key_sets(self) -> list[list[str]]:
        """The canonical data asset keys first, then each set of alternates (e.g. HH, HV)."""
        return [[b.key for b in self.data_bands], *map(list, self.alternates)]

    def scaling(self, item: Mapping[str, Any] | Any, key: str) -> tuple[float, float]:
        """(scale, offset) for one asset of one item: the item's `raster:bands` wins over our default.

        Sentinel-2 L2A items on Planetary Computer carry no scale/offset; since processing baseline 04.00
        (25 Jan 2022) ESA adds 1000 to every DN (BOA_ADD_OFFSET), so reflectance = DN / 10000 - 0.1.
        """
        d = _as_dict(item)
        asset = d.get("assets", {}).get(key, {})
        rb = (asset.get("raster:bands") or [{}])[0]
        band = self.band(key)
        scale = float(rb.get("scale", band.scale))
        offset = float(rb.get("offset", band.offset))
        if self.baseline_offset and "offset" not in rb and not band.categorical:
            baseline = str(d.get("properties", {}).get("s2:processing_baseline", "00.00"))
            offset = self.baseline_offset if _baseline_tuple(baseline) >= (4, 0) else 0.0
        return scale, offset

    def nodata(self, item: Mapping[str, Any] | Any, key: str) -> float | int | None:
        d = _as_dict(item)
        rb = (d.get("assets", {}).get(key, {}).get("raster:bands") or [{}])[0]
        return rb.get("nodata", self.band(key).nodata)


def _as_dict(item: Mapping[str, Any] | Any) -> Mapping[str, Any]:
    return item if isinstance(item, Mapping) else item.to_dict(transform_hrefs=False)


def _baseline_tuple(s: str) -> tuple[int, int]:
    try:
        major, minor = s.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return (0, 0)


@dataclass(frozen=True)
class KernelKind:
    """What a kind of per-tile kernel takes and yields; `cube.KERNELS` maps each kind to its function."""

    data_bands: int  # data bands it reads, in the order it expects them
    features: int  # features it writes, the count last when `mask` or per acquisition
    mask: bool  # it needs a mask band (with a `quality`)
    static: bool = False  # one layer for every year (the DEM): no season, no composite, no count
    snow: bool = False  # it counts the usable scenes its mask band flags snow or ice (`Sensor.snowy` decodes)


KERNELS: dict[str, KernelKind] = {
    # blue, green, red, nir, swir16, swir22 -> their medians, NDSI, NDWI, NDVI, snow persistence, count
    "optical": KernelKind(data_bands=6, features=11, mask=True),
    # co-, cross-pol backscatter -> medians in dB, co-pol temporal variation, count
    "sar": KernelKind(data_bands=2, features=4, mask=False),
    # surface temperature -> its median, its warmest valid observation, scenes flagged snow or ice, count
    "thermal": KernelKind(data_bands=1, features=4, mask=True, snow=True),
    # elevation (static) -> elevation, slope, aspect sin/cos, hillshade
    "dem": KernelKind(data_bands=1, features=5, mask=False, static=True),
}

# Sentinel-2 Scene Classification (SCL) values, ESA L2A product definition.
SCL = {
    "no_data": 0,
    "saturated": 1,
    "dark_area": 2,  # topographic/dark features; ESA calls it "dark area pixels"
    "cloud_shadow": 3,
    "vegetation": 4,
    "not_vegetated": 5,
    "water": 6,
    "unclassified": 7,
    "cloud_medium": 8,
    "cloud_high": 9,
    "thin_cirrus": 10,
    "snow": 11,
}
SCL_INVALID = (0, 1, 3, 8, 9, 10)

# Landsat Collection 2 QA_PIXEL bits we mask: fill, dilated cloud, cirrus, cloud, cloud shadow.
LANDSAT_QA_INVALID_BITS = (0, 1, 2, 3, 4)

_SCL_USABLE = np.ones(256, bool)
_SCL_USABLE[list(SCL_INVALID)] = False


def scl_valid(scl: np.ndarray) -> np.ndarray:
    """True where a Sentinel-2 pixel is usable (not no-data, saturated, cloud, shadow or cirrus)."""
    if scl.dtype == np.uint8:
        return _SCL_USABLE[scl]  # a table lookup: several times faster than isin on every pixel
    return ~np.isin(scl, SCL_INVALID)


def landsat_qa_valid(qa: np.ndarray) -> np.ndarray:
    """True where a Landsat C2 pixel is usable according to QA_PIXEL."""
    qa = qa.astype(np.uint16)
    mask = np.zeros(qa.shape, dtype=np.uint16)
    for bit in LANDSAT_QA_INVALID_BITS:
        mask |= np.uint16(1 << bit)
    return (qa & mask) == 0


LANDSAT_QA_SNOW_BIT = 5  # Collection 2 QA_PIXEL: snow (CFMask)


def scl_snow(scl: np.ndarray) -> np.ndarray:
    """True where Sentinel-2's scene classification says snow or ice."""
    return scl == SCL["snow"]


def landsat_qa_snow(qa: np.ndarray) -> np.ndarray:
    """True where Landsat C2 QA_PIXEL flags snow (snow and ice alike)."""
    return (qa.astype(np.uint16) & np.uint16(1 << LANDSAT_QA_SNOW_BIT)) > 0


# a mask band's `quality` -> its decoder (stored values -> usable); Landsat OLI's QA_PIXEL is "qa-bits" too
QUALITY: dict[str, Callable[[np.ndarray], np.ndarray]] = {"scl": scl_valid, "qa-bits": landsat_qa_valid}
# ... and -> where it flags snow or ice
SNOW_QUALITY: dict[str, Callable[[np.ndarray], np.ndarray]] = {"scl": scl_snow, "qa-bits": landsat_qa_snow}

S1_NODATA = -32768.0

SENTINEL2 = Sensor(
    name="sentinel-2",
    collection="sentinel-2-l2a",
    role="optical reflectance, NDSI/NDWI/NDVI, cloud/snow mask",
    features=("B02", "B03", "B04", "B08", "B11", "B12", "ndsi", "ndwi", "ndvi", "snow_persistence", "s2_count"),
    kernel="optical",
    count_feature="s2_count",
    cloud_cover=True,
    baseline_offset=-0.1,
    stac_extensions=("sat",),
    bands=(
        Band("B02", 10, "uint16", 0, 1e-4, 0.0, unit="reflectance"),
        Band("B03", 10, "uint16", 0, 1e-4, 0.0, unit="reflectance"),
        Band("B04", 10, "uint16", 0, 1e-4, 0.0, unit="reflectance"),
        Band("B08", 10, "uint16", 0, 1e-4, 0.0, unit="reflectance"),
        Band("B11", 20, "uint16", 0, 1e-4, 0.0, unit="reflectance"),
        Band("B12", 20, "uint16", 0, 1e-4, 0.0, unit="reflectance"),
        Band("SCL", 20, "uint8", 0, resampling="nearest", categorical=True, role="mask", quality="scl"),
    ),
)

SENTINEL1 = Sensor(
    name="sentinel-1",
    collection="sentinel-1-rtc",
    role="SAR backscatter: wet snow, debris-covered ice, sea ice",
    features=("vv_db", "vh_db", "vv_cv", "s1_count"),
    kernel="sar",
    count_feature="s1_count",
    stac_extensions=("sat", "sar"),
    bands=(
        Band("vv", 10, "float32", S1_NODATA, unit="gamma0 linear power"),
        Band("vh", 10, "float32", S1_NODATA, unit="gamma0 linear power"),
    ),
    # polar scenes (Greenland, Svalbard, Antarctica) are often acquired HH/HV only: co- and cross-pol
    # stand in for VV and VH; the cube says which pair it composited
    alternates=(("hh", "hv"),),
)

LANDSAT = Sensor(
    name="landsat",
    collection="landsat-c2-l2",
    role="thermal: debris-covered ice is colder than rock",
    features=("lwir11", "lwir11_max", "landsat_snow", "landsat_count"),
    kernel="thermal",
    count_feature="landsat_count",
    cloud_cover=True,
    required_assets=("lwir11",),
    stac_extensions=("sat", "view"),
    bands=(
        Band("lwir11", 30, "uint16", 0, 0.00341802, 149.0, unit="kelvin", stac_unit="kelvin", stac_scaling=True),
        Band("qa_pixel", 30, "uint16", 1, resampling="nearest", categorical=True, role="mask",
             quality="qa-bits", stac_unit="bit index"),
    ),
)

COPDEM = Sensor(
    name="copdem",
    collection="cop-dem-glo-30",
    role="elevation, slope, aspect",
    features=("elevation", "slope", "aspect_sin", "aspect_cos", "hillshade"),
    kernel="dem",
    bands=(Band("data", 30, "float32", -32767.0, unit="metre", stac_unit="metre"),),
)

SENSORS: dict[str, Sensor] = {s.name: s for s in (SENTINEL2, SENTINEL1, LANDSAT, COPDEM)}
BY_COLLECTION: dict[str, Sensor] = {s.collection: s for s in SENSORS.values()}


def get(name: str) -> Sensor:
    """Look a sensor up by our name or by its STAC collection id."""
    if name in SENSORS:
        return SENSORS[name]
    if name in BY_COLLECTION:
        return BY_COLLECTION[name]
    raise ValueError(f"unknown sensor {name!r}; known: {sorted(SENSORS)} (or collections {sorted(BY_COLLECTION)})")


def resolve(names: str | Sequence[str | Sensor] | None) -> list[Sensor]:
    """Sensors from a comma-separated string or a list of names and records; None means all registered.

    A record is taken as given, registered or not: a notebook (or a test) can read a sensor declared on
    the spot without adding it to `SENSORS`.
    """
    if names is None:
        return list(SENSORS.values())
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise ValueError("no sensors given; choose from " + ", ".join(SENSORS))
    out = [n if isinstance(n, Sensor) else get(n) for n in names]
    twice = sorted({s.name for s in out if [t.name for t in out].count(s.name) > 1})
    if twice:
        raise ValueError(f"sensors {twice} given more than once")
    return out
