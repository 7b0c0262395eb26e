"""Render a `World` as the sensors would see it: pure functions from arrays to arrays.

Every random draw comes from a generator seeded by (world seed, sensor, year, acquisition, purpose),
so an acquisition renders to the same bytes whatever order or process it is rendered in.
The hard cases a glacier mapper meets are here on purpose: clouds and their displaced shadows,
seasonal snow outside glaciers, debris-covered ice that looks like the moraines beside it in optics
(only thermal and SAR texture tell them apart), sea ice at the
calving front, terrain shadow, SAR layover and swath edges.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from affine import Affine
from scipy import ndimage

from glacier_stac import sensors
from glacier_stac.synthetic import spectra
from glacier_stac.synthetic.world import Surface, World, WorldConfig

# Late ablation season, when glacier outlines are mapped (least seasonal snow).
SEASON_NORTH = ((7, 1), (10, 31))
SEASON_SOUTH = ((1, 1), (4, 30))
LOCAL_SOLAR_HOUR = {"sentinel-2": 10.5, "landsat": 10.2, "sentinel-1": 6.0}  # S1 ascending: 18.0
MAX_CLOUD = {"easy": 0.10, "normal": 0.40, "hard": 0.75}
SEASONAL_SNOW_P = {"easy": 0.0, "normal": 0.3, "hard": 0.5}
S1_LOOKS = 4.4  # equivalent number of looks of Sentinel-1 GRD high resolution
S1_INCIDENCE = 37.0
COPDEM_DATETIME = datetime(2021, 4, 22, tzinfo=UTC)
ARCSEC = 1.0 / 3600.0
CREEP_DB = 1.5  # std of the yearly radar texture of creeping rock glaciers
CLOUD_MASK_OPACITY = 0.3  # opacity from which a pixel counts as cloud (SCL 8/9, Landsat cloud bit)

SNOWY = (Surface.SNOW, Surface.ICE, Surface.SEA_ICE)
WATER = (Surface.LAKE, Surface.SEA)
BARE = (Surface.ROCK, Surface.SCREE, Surface.DEBRIS, Surface.MORAINE, Surface.ROCK_GLACIER)
ICE_CLIFF_SIGMA = 2.0  # `Prepared.cliffs` above this (~2% of debris) is a bare ice cliff in optics
ICE_CLIFF_MIX = 0.05  # share of clean ice seen in such a pixel: debris stays optically like moraine


@dataclass(frozen=True)
class Acquisition:
    """One overpass of one sensor over the world."""

    sensor: str  # sensors.Sensor.name
    year: int
    index: int  # 0.. within the year; index 0 is the year's clearest scene
    datetime: datetime  # UTC
    platform: str
    orbit_state: str
    relative_orbit: int
    cloud_target: float  # fraction of the scene under cloud (optical sensors)


@dataclass
class Raster:
    """One asset's pixels and where they sit (CRS shared by the scene)."""

    data: np.ndarray
    transform: Affine
    nodata: float | int | None


@dataclass
class Scene:
    """An acquisition rendered: assets by STAC key plus the item properties the pixels imply."""

    acquisition: Acquisition | None
    crs: str
    assets: dict[str, Raster]
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prepared:
    """Per-world quantities every acquisition reuses (terrain normals, static textures)."""

    normals: tuple[np.ndarray, np.ndarray, np.ndarray]
    texture: np.ndarray  # multiplicative brightness texture, ~1 +- 0.1
    debris_field: np.ndarray  # [0, 1] debris thickness proxy (thicker -> warmer in the thermal)
    cliffs: np.ndarray  # static fractal deciding where ice cliffs and ponds sit on debris
    lon: float
    lat: float


def _seed(*parts: int | str) -> list[int]:
    return [p if isinstance(p, int) else zlib.crc32(p.encode()) for p in parts]


def rng_for(seed: int, acq: Acquisition | None, purpose: str) -> np.random.Generator:
    """The generator for one purpose of one acquisition (or of the world when acq is None)."""
    if acq is None:
        return np.random.default_rng(_seed(seed, purpose))
    return np.random.default_rng(_seed(seed, acq.sensor, acq.year, acq.index, purpose))


def world_center(world: World) -> tuple[float, float]:
    """(lon, lat) of the world's centre."""
    c = world.geobox.extent.centroid.to_crs("EPSG:4326")
    x, y = c.coords[0]
    return float(x), float(y)


def prepare(world: World) -> Prepared:
    """Compute what all acquisitions of a world share (once, not per scene)."""
    seed = world.config.seed
    shape = world.elevation.shape
    res = abs(world.geobox.affine.a)
    lon, lat = world_center(world)
    cliffs = fractal_noise(shape, rng_for(seed, None, "cliffs"), beta=2.0, coarse=1)
    return Prepared(
        normals=spectra.surface_normals(world.elevation, res),
        texture=(1.0 + 0.07 * fractal_noise(shape, rng_for(seed, None, "texture"), beta=2.2)).astype(np.float32),
        debris_field=_unit(fractal_noise(shape, rng_for(seed, None, "debris"), beta=3.0)),
        cliffs=cliffs,
        lon=lon,
        lat=lat,
    )


def _unit(a: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(a[:: max(1, a.shape[0] // 256), :: max(1, a.shape[1] // 256)], (1, 99))
    return np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


# --------------------------------------------------------------------------------------------- dates


def season(year: int, lat: float, months: tuple[tuple[int, int], tuple[int, int]] | None = None,
           ) -> tuple[datetime, datetime]:
    """End-of-ablation season in which acquisitions fall: `months` ((m, d), (m, d)) of a regime, else
    Jul-Oct north, Jan-Apr south."""
    (m0, d0), (m1, d1) = months or (SEASON_NORTH if lat >= 0 else SEASON_SOUTH)
    return datetime(year, m0, d0, tzinfo=UTC), datetime(year, m1, d1, tzinfo=UTC)


def _platform(sensor: str, when: datetime, k: int) -> str:
    if sensor == "sentinel-2":
        return "Sentinel-2A" if k % 2 == 0 else "Sentinel-2B"
    if sensor == "sentinel-1":
        return "SENTINEL-1A" if (k % 2 == 0 or when.year >= 2022) else "SENTINEL-1B"  # S1B failed Dec 2021
    if sensor == "landsat":
        return "landsat-9" if (when.year >= 2022 and k % 2 == 1) else "landsat-8"
    return ""


def acquisitions(config: WorldConfig, lon: float | None = None, lat: float | None = None) -> list[Acquisition]:
    """All acquisitions of the world, per sensor and year, inside the season; deterministic per seed."""
    lon = config.center_lon if lon is None else lon
    lat = config.center_lat if lat is None else lat
    counts = {"sentinel-2": config.s2_per_year, "sentinel-1": config.s1_per_year, "landsat": config.landsat_per_year}
    out: list[Acquisition] = []
    for sensor, n in counts.items():
        if sensor not in config.sensors:
            continue
        for year in config.years:
            rng = np.random.default_rng(_seed(config.seed, sensor, year, "dates"))
            start, end = season(year, lat, config.physics.season)
            span = (end - start).days
            # A place is seen from a few fixed relative orbits (S1: one ascending, one descending).
            orbit_rng = np.random.default_rng(_seed(config.seed, sensor, "orbits"))
            orbits = [1 + int(v) for v in orbit_rng.integers(0, 143 if sensor == "sentinel-2" else 175, 2)]
            covers = rng.uniform(0, 1, n) ** 1.4 * MAX_CLOUD[config.difficulty]
            covers[0] = min(covers[0], 0.05)  # every year has one nearly clear scene
            for k in range(n):
                day = int((k + 0.5) / n * span + rng.uniform(-0.3, 0.3) * span / n)
                ascending = sensor == "sentinel-1" and k % 2 == 1
                hour = 18.0 if ascending else LOCAL_SOLAR_HOUR[sensor]
                utc_hours = (hour - lon / 15.0 + rng.uniform(-0.1, 0.1)) % 24
                when = start + timedelta(days=min(max(day, 0), span), hours=utc_hours)
                when = when.replace(microsecond=0)
                orbit = orbits[k % len(orbits)]
                out.append(
                    Acquisition(
                        sensor=sensor,
                        year=year,
                        index=k,
                        datetime=when,
                        platform=_platform(sensor, when, k),
                        orbit_state="ascending" if ascending else "descending",
                        relative_orbit=orbit if sensor != "landsat" else 0,
                        cloud_target=float(covers[k]) if sensor != "sentinel-1" else 0.0,
                    )
                )
    return out


def processing_baseline(when: datetime) -> str:
    """Sentinel-2 processing baseline in use at a date (>= 04.00 from 25 Jan 2022 adds a DN offset)."""
    if when < datetime(2020, 1, 28, tzinfo=UTC):
        return "02.12"
    if when < datetime(2021, 3, 30, tzinfo=UTC):
        return "02.14"
    if when < datetime(2022, 1, 25, tzinfo=UTC):
        return "03.01"
    if when < datetime(2022, 12, 6, tzinfo=UTC):
        return "04.00"
    if when < datetime(2023, 7, 1, tzinfo=UTC):
        return "05.09"
    return "05.10"


# ------------------------------------------------------------------------------------ random fields


def fractal_noise(shape: tuple[int, int], rng: np.random.Generator, beta: float = 3.0, coarse: int = 4) -> np.ndarray:
    """Zero-mean, unit-std 1/f^beta noise; drawn at 1/`coarse` resolution for speed, then upsampled."""
    h, w = max(8, math.ceil(shape[0] / coarse)), max(8, math.ceil(shape[1] / coarse))
    spec = np.fft.rfft2(rng.standard_normal((h, w)))
    k = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.rfftfreq(w)[None, :] ** 2)
    k[0, 0] = 1.0
    spec *= k ** (-beta / 2.0)
    spec[0, 0] = 0.0
    f = np.fft.irfft2(spec, s=(h, w))
    f = (f - f.mean()) / (f.std() + 1e-12)
    if coarse > 1:
        f = ndimage.zoom(f, (shape[0] / h * 1.0001, shape[1] / w * 1.0001), order=1)
    return np.ascontiguousarray(f[: shape[0], : shape[1]], dtype=np.float32)


def cloud_field(shape: tuple[int, int], rng: np.random.Generator, cover: float) -> np.ndarray:
    """Cloud opacity in [0, 1]: a fractal field cut so that `cover` of pixels reach CLOUD_MASK_OPACITY."""
    if cover <= 0:
        return np.zeros(shape, dtype=np.float32)
    f = fractal_noise(shape, rng, beta=3.2, coarse=4)
    thr = float(np.quantile(f[::4, ::4], 1.0 - cover))
    return np.clip(CLOUD_MASK_OPACITY + 0.9 * (f - thr), 0.0, 1.0).astype(np.float32)


def shift(a: np.ndarray, drow: int, dcol: int) -> np.ndarray:
    """`a` moved by whole pixels, zero-filled (no wrap-around)."""
    out = np.zeros_like(a)
    h, w = a.shape
    if abs(drow) >= h or abs(dcol) >= w:
        return out
    src = a[max(0, -drow) : h - max(0, drow), max(0, -dcol) : w - max(0, dcol)]
    out[max(0, drow) : max(0, drow) + src.shape[0], max(0, dcol) : max(0, dcol) + src.shape[1]] = src
    return out


def cloud_shadow(opacity: np.ndarray, zenith: float, azimuth: float, res: float, height_m: float) -> np.ndarray:
    """The cloud field cast away from the sun by height * tan(zenith)."""
    d = height_m * math.tan(math.radians(min(zenith, 80.0))) / res
    a = math.radians(azimuth)
    dcol, drow = int(round(-d * math.sin(a))), int(round(d * math.cos(a)))  # rows grow southwards
    return shift(opacity, drow, dcol)


def block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Average f x f blocks (edge-padded to a multiple of f): 10 m -> 20/30 m as a sensor integrates."""
    if f == 1:
        return a
    h, w = a.shape
    ph, pw = (-h) % f, (-w) % f
    if ph or pw:
        a = np.pad(a, ((0, ph), (0, pw)), mode="edge")
    return a.reshape(a.shape[0] // f, f, a.shape[1] // f, f).mean(axis=(1, 3), dtype=np.float32)


def block_pick(a: np.ndarray, f: int) -> np.ndarray:
    """The centre-ish pixel of each f x f block, for categorical rasters."""
    h, w = a.shape
    ph, pw = (-h) % f, (-w) % f
    if ph or pw:
        a = np.pad(a, ((0, ph), (0, pw)), mode="edge")
    return a[f // 2 :: f, f // 2 :: f].copy()


# ---------------------------------------------------------------------------------- scene classes


def scene_classes(world: World, acq: Acquisition) -> np.ndarray:
    """The year's surface plus this acquisition's seasonal snow above a random snowline (off glaciers)."""
    classes = world.surface[acq.year].copy()
    melange = classes == Surface.SEA_ICE
    if melange.any():  # ice melange drifts: open leads differ from one acquisition to the next
        leads = fractal_noise(classes.shape, rng_for(world.config.seed, acq, "melange"), beta=2.0, coarse=2)
        classes[melange & (leads < -0.6)] = Surface.SEA
    rng = rng_for(world.config.seed, acq, "snow")
    p = SEASONAL_SNOW_P[world.config.difficulty]
    if rng.uniform() >= p:
        return classes
    # Moraine stays bare like the debris tongue beside it: snow on one and not the other would tell them apart.
    land = np.isin(classes, (Surface.ROCK, Surface.SCREE, Surface.VEGETATION, Surface.ROCK_GLACIER))
    if not land.any():
        return classes
    z = world.elevation
    lo = 0.6 if acq.index == 0 else 0.75  # the first (earliest) scene of a season is the snowiest
    snowline = float(np.quantile(z[land][:: max(1, int(land.sum()) // 50000)], rng.uniform(lo, 0.95)))
    ragged = z + 60.0 * fractal_noise(z.shape, rng, beta=2.0, coarse=4)
    classes[land & (ragged > snowline)] = Surface.SNOW
    return classes


def _res(world: World) -> float:
    return abs(world.geobox.affine.a)


def _crs(world: World) -> str:
    epsg = world.geobox.crs.epsg
    return f"EPSG:{epsg}" if epsg else str(world.geobox.crs)


def sun(world: World, acq: Acquisition, prep: Prepared) -> tuple[float, float, np.ndarray]:
    """(zenith, azimuth, cos incidence) for an optical/thermal acquisition; 0 in cast terrain shadow."""
    zen, az = spectra.solar_position(acq.datetime, prep.lat, prep.lon)
    cos_i = spectra.cos_incidence(prep.normals, zen, az)
    cast = spectra.cast_shadow(world.elevation, _res(world), zen, az)
    return zen, az, np.where(cast, np.minimum(cos_i, 0.0), cos_i).astype(np.float32)


# ------------------------------------------------------------------------------------- Sentinel-2


def s2_encode(reflectance: np.ndarray, baseline: str) -> np.ndarray:
    """Reflectance -> L2A DN: since baseline 04.00 DN = (r + 0.1) * 10000, before DN = r * 10000; 0 = nodata."""
    add = 1000.0 if sensors._baseline_tuple(baseline) >= (4, 0) else 0.0
    return np.clip(np.rint(reflectance * 10000.0 + add), 1, 65535).astype(np.uint16)


def s2_reflectance(
    world: World, acq: Acquisition, prep: Prepared, classes: np.ndarray, zen: float, cos_i: np.ndarray
) -> dict[str, np.ndarray]:
    """Clear-sky 10 m reflectance per band with terrain illumination, texture and sensor noise."""
    rng = rng_for(world.config.seed, acq, "s2-noise")
    illum = spectra.illumination_factor(cos_i, zen)
    bright = illum * prep.texture
    table = spectra.reflectance_table()
    z = world.elevation
    snow = classes == Surface.SNOW
    firn_w = np.zeros(classes.shape, dtype=np.float32)
    glacier_snow = snow & (world.glacier_id[acq.year] > 0)
    if glacier_snow.any():  # the lowest ~150 m of the accumulation area is old, darker firn
        zmin = float(np.quantile(z[glacier_snow], 0.02))
        firn_w[glacier_snow] = np.clip(1.0 - (z[glacier_snow] - zmin) / 150.0, 0, 1)
    debris = classes == Surface.DEBRIS
    # Ice shows through debris only at sparse, faint ice cliffs: at 10 m debris-covered ice looks like
    # the moraine beside it (the same rock), which is what makes real debris tongues hard to map optically.
    ice_w = np.where(debris & (prep.cliffs > ICE_CLIFF_SIGMA), ICE_CLIFF_MIX, 0.0).astype(np.float32)
    out = {}
    for b, key in enumerate(spectra.S2_BANDS):
        r = table[classes, b]
        r = r + firn_w * (spectra.FIRN[b] - table[Surface.SNOW, b])
        r = r + ice_w * (table[Surface.ICE, b] - table[Surface.DEBRIS, b])
        r *= bright * (1.0 + 0.02 * rng.standard_normal(classes.shape, dtype=np.float32))
        out[key] = r + 0.003 * rng.standard_normal(classes.shape, dtype=np.float32)
    return out


def render_sentinel2(world: World, acq: Acquisition, prep: Prepared | None = None) -> Scene:
    """Sentinel-2 L2A: B02 B03 B04 B08 at 10 m, B11 B12 and SCL at 20 m, uint16 DN per baseline."""
    prep = prep or prepare(world)
    res = _res(world)
    classes = scene_classes(world, acq)
    zen, az, cos_i = sun(world, acq, prep)
    refl = s2_reflectance(world, acq, prep, classes, zen, cos_i)
    rng = rng_for(world.config.seed, acq, "clouds")
    opacity = cloud_field(classes.shape, rng, acq.cloud_target)
    shadow = cloud_shadow(opacity, zen, az, res, float(rng.uniform(1500, 3500)))
    shade = 1.0 - 0.75 * shadow * (opacity < CLOUD_MASK_OPACITY)
    # Cloud tops are lumpy: their own brightness texture (drawn only when there are clouds, to save time).
    lumps = 1.0 + 0.12 * fractal_noise(classes.shape, rng, beta=2.4, coarse=2) if opacity.any() else 1.0
    for b, key in enumerate(spectra.S2_BANDS):
        refl[key] = (1.0 - opacity) * refl[key] * shade + opacity * spectra.CLOUD[b] * lumps
    baseline = processing_baseline(acq.datetime)
    a10 = world.geobox.affine
    a20 = a10 @ Affine.scale(2)
    assets: dict[str, Raster] = {}
    for key in spectra.S2_BANDS:
        r = refl[key] if key in ("B02", "B03", "B04", "B08") else block_mean(refl[key], 2)
        assets[key] = Raster(s2_encode(r, baseline), a10 if key in ("B02", "B03", "B04", "B08") else a20, 0)
    scl = s2_scl(block_pick(classes, 2), block_mean(opacity, 2), block_mean(shadow, 2), block_mean(cos_i, 2))
    assets["SCL"] = Raster(scl, a20, 0)
    props = {
        "s2:processing_baseline": baseline,
        "s2:mean_solar_zenith": round(zen, 6),
        "s2:mean_solar_azimuth": round(az, 6),
        **scl_percentages(scl),
    }
    return Scene(acq, _crs(world), assets, props)


def s2_scl(classes: np.ndarray, opacity: np.ndarray, shadow: np.ndarray, cos_i: np.ndarray) -> np.ndarray:
    """Scene classification consistent with the pixels (ESA codes, `sensors.SCL`)."""
    c = sensors.SCL
    scl = np.full(classes.shape, c["not_vegetated"], dtype=np.uint8)
    scl[classes == Surface.VEGETATION] = c["vegetation"]
    scl[np.isin(classes, WATER)] = c["water"]
    scl[np.isin(classes, SNOWY)] = c["snow"]
    scl[cos_i < 0.08] = c["dark_area"]
    scl[(shadow >= CLOUD_MASK_OPACITY) & (opacity < 0.15)] = c["cloud_shadow"]
    scl[(opacity >= 0.15) & (opacity < CLOUD_MASK_OPACITY)] = c["thin_cirrus"]
    scl[(opacity >= CLOUD_MASK_OPACITY) & (opacity < 0.6)] = c["cloud_medium"]
    scl[opacity >= 0.6] = c["cloud_high"]
    return scl


def scl_percentages(scl: np.ndarray) -> dict[str, float]:
    """eo:cloud_cover and the s2:*_percentage properties, from the SCL as ESA computes them."""
    n = float(scl.size)
    c = sensors.SCL

    def pct(*codes: int) -> float:
        return round(100.0 * float(np.isin(scl, codes).sum()) / n, 6)

    return {
        "eo:cloud_cover": pct(c["cloud_medium"], c["cloud_high"], c["thin_cirrus"]),
        "s2:high_proba_clouds_percentage": pct(c["cloud_high"]),
        "s2:medium_proba_clouds_percentage": pct(c["cloud_medium"]),
        "s2:thin_cirrus_percentage": pct(c["thin_cirrus"]),
        "s2:cloud_shadow_percentage": pct(c["cloud_shadow"]),
        "s2:snow_ice_percentage": pct(c["snow"]),
        "s2:water_percentage": pct(c["water"]),
        "s2:vegetation_percentage": pct(c["vegetation"]),
        "s2:not_vegetated_percentage": pct(c["not_vegetated"]),
        "s2:dark_features_percentage": pct(c["dark_area"]),
        "s2:nodata_pixel_percentage": pct(c["no_data"]),
    }


# ------------------------------------------------------------------------------------- Sentinel-1


def render_sentinel1(world: World, acq: Acquisition, prep: Prepared | None = None) -> Scene:
    """Sentinel-1 RTC gamma0 (linear power, float32) VV and VH at 10 m with gamma speckle."""
    prep = prep or prepare(world)
    classes = scene_classes(world, acq)
    rng = rng_for(world.config.seed, acq, "s1")
    table = spectra.backscatter_table()
    vv, vh = table[classes, 0], table[classes, 1]
    debris = classes == Surface.DEBRIS
    if debris.any():  # ice cliffs (bright) and ponds (dark) on debris; they move between acquisitions
        moving = 0.75 * prep.cliffs + 0.66 * fractal_noise(classes.shape, rng, beta=2.0, coarse=1)
        cliff = debris & (moving > 1.9)
        pond = debris & (moving < -2.0)
        for arr in (vv, vh):
            arr[cliff] *= 4.0
            arr[pond] = table[Surface.LAKE, 0 if arr is vv else 1]
    rock_glacier = classes == Surface.ROCK_GLACIER
    if rock_glacier.any():  # creep turns the blocks a little every year: a texture of the year, not the scene
        creep = fractal_noise(classes.shape, rng_for(world.config.seed, None, f"creep-{acq.year}"), beta=1.5, coarse=1)
        gain = (10.0 ** (0.1 * CREEP_DB * creep[rock_glacier])).astype(np.float32)
        vv[rock_glacier] *= gain
        vh[rock_glacier] *= gain
    # RTC flattens terrain but not perfectly: slopes facing the radar stay a little brighter.
    look_az = 78.0 if acq.orbit_state == "ascending" else 282.0  # right-looking, towards E / W
    ne, nn, nu = prep.normals
    a = math.radians(look_az + 180.0)  # horizontal direction from target to sensor
    toward = (ne * math.sin(a) + nn * math.cos(a)) / nu  # tan of the slope facing the sensor
    resid = np.clip(1.0 + 0.4 * toward, 0.5, 1.8).astype(np.float32)
    out = []
    for arr in (vv, vh):
        speckle = rng.gamma(S1_LOOKS, 1.0 / S1_LOOKS, classes.shape).astype(np.float32)
        out.append((arr * resid * speckle).astype(np.float32))
    invalid = (toward > math.tan(math.radians(S1_INCIDENCE))) | (-toward > math.tan(math.radians(90 - S1_INCIDENCE)))
    if rng.uniform() < 0.35:  # swath edge: a slanted strip without data along one side
        h, w = classes.shape
        width = rng.uniform(0.05, 0.2) * w
        cols = np.arange(w)[None, :] + 0.15 * np.arange(h)[:, None] * rng.choice((-1, 1))
        edge = cols - cols.min() < width if rng.uniform() < 0.5 else cols.max() - cols < width
        invalid |= edge
    for arr in out:
        arr[invalid] = sensors.S1_NODATA
    a10 = world.geobox.affine
    co, cross = world.config.physics.polarizations  # polar scenes: HH/HV in place of VV/VH
    props = {"sar:polarizations": [co.upper(), cross.upper()],
             "s1:nodata_percentage": round(100.0 * float(invalid.mean()), 4)}
    return Scene(
        acq,
        _crs(world),
        {co: Raster(out[0], a10, sensors.S1_NODATA), cross: Raster(out[1], a10, sensors.S1_NODATA)},
        props,
    )


# ------------------------------------------------------------------------------------------ Landsat

LWIR_SCALE, LWIR_OFFSET = 0.00341802, 149.0
QA_CLEAR_LAND = (1 << 6) | (1 << 8) | (1 << 10) | (1 << 12) | (1 << 14)  # 21824: clear, low confidences


def render_landsat(world: World, acq: Acquisition, prep: Prepared | None = None) -> Scene:
    """Landsat C2 L2 surface temperature (lwir11) and QA_PIXEL at 30 m."""
    prep = prep or prepare(world)
    res = _res(world)
    classes = scene_classes(world, acq)
    rng = rng_for(world.config.seed, acq, "landsat")
    zen, az, cos_i = sun(world, acq, prep)
    t = spectra.surface_temperature(classes, world.elevation, cos_i, prep.debris_field, world.config.physics.thermal)
    opacity = cloud_field(classes.shape, rng_for(world.config.seed, acq, "clouds"), acq.cloud_target)
    shadow = cloud_shadow(opacity, zen, az, res, float(rng.uniform(1500, 3500)))
    t = (1.0 - opacity) * (t - 4.0 * shadow) + opacity * 258.0
    t30 = block_mean(t, 3) + 0.3 * rng.standard_normal(block_mean(t, 3).shape).astype(np.float32)
    op30, sh30 = block_mean(opacity, 3), block_mean(shadow, 3)
    cls30 = block_pick(classes, 3)
    dn = np.clip(np.rint((t30 - LWIR_OFFSET) / LWIR_SCALE), 1, 65535).astype(np.uint16)
    qa = landsat_qa(cls30, op30, sh30)
    fill = np.zeros(qa.shape, dtype=bool)
    if rng.uniform() < 0.3:  # the world sits at a scene corner: the tilted footprint's fill cuts across it
        h, w = qa.shape
        rows, cols = np.mgrid[0:h, 0:w]
        edge = cols + 0.2 * rows if rng.uniform() < 0.5 else (w - cols) + 0.2 * (h - rows)
        fill = edge < rng.uniform(0.05, 0.2) * w
    dn[fill], qa[fill] = 0, 1  # lwir11 nodata 0; QA_PIXEL fill bit
    a30 = world.geobox.affine @ Affine.scale(3)
    cloud = ((qa & (1 << 3)) > 0)[~fill]
    land = ~np.isin(cls30, WATER)[~fill]
    props = {
        "eo:cloud_cover": round(100.0 * float(cloud.mean()), 2) if cloud.size else 0.0,
        "landsat:cloud_cover_land": round(100.0 * float(cloud[land].mean()), 2) if land.any() else 0.0,
        "view:sun_azimuth": round(az, 8),
        "view:sun_elevation": round(90.0 - zen, 8),
    }
    return Scene(acq, _crs(world), {"lwir11": Raster(dn, a30, 0), "qa_pixel": Raster(qa, a30, 1)}, props)


def landsat_qa(classes: np.ndarray, opacity: np.ndarray, shadow: np.ndarray) -> np.ndarray:
    """QA_PIXEL bits (C2): cloud bit 3 + high confidence, dilated cloud bit 1, shadow bit 4, snow, water."""
    qa = np.full(classes.shape, QA_CLEAR_LAND, dtype=np.uint16)
    cloud = opacity >= CLOUD_MASK_OPACITY
    dilated = ndimage.binary_dilation(cloud, iterations=3) & ~cloud
    shade = (shadow >= CLOUD_MASK_OPACITY) & ~cloud & ~dilated
    snow = np.isin(classes, SNOWY) & ~cloud
    water = np.isin(classes, WATER) & ~cloud
    qa[snow] |= np.uint16((1 << 5) | (3 << 12))
    qa[water] |= np.uint16(1 << 7)
    qa[shade] |= np.uint16((1 << 4) | (3 << 10))
    qa[dilated] = (qa[dilated] & ~np.uint16(1 << 6)) | np.uint16(1 << 1)
    qa[cloud] = np.uint16((1 << 3) | (3 << 8) | (1 << 10) | (1 << 12) | (1 << 14))
    return qa


# -------------------------------------------------------------------------------- Copernicus DEM


def dem_grid(world: World, pad_px: int = 2) -> tuple[Affine, tuple[int, int]]:
    """A 1 arc-second EPSG:4326 grid over the world's bbox, edges snapped outwards to whole arc-seconds."""
    b = world.geobox.extent.to_crs("EPSG:4326").boundingbox
    west = math.floor(b.left * 3600) - pad_px
    east = math.ceil(b.right * 3600) + pad_px
    south = math.floor(b.bottom * 3600) - pad_px
    north = math.ceil(b.top * 3600) + pad_px
    return Affine(ARCSEC, 0, west * ARCSEC, 0, -ARCSEC, north * ARCSEC), (north - south, east - west)


def render_copdem(world: World) -> Scene:
    """Copernicus DEM GLO-30: the world's elevation (sea at 0 m, as the real DSM) at 1 arc-second in EPSG:4326."""
    from rasterio.crs import CRS
    from rasterio.warp import Resampling, reproject

    transform, shape = dem_grid(world)
    pad = 8  # extend the source by its edge so bilinear never runs out of data at the world's border
    src = np.pad(np.clip(world.elevation, 0, None).astype(np.float32), pad, mode="edge")
    src_tf = world.geobox.affine @ Affine.translation(-pad, -pad)
    dst = np.full(shape, sensors.COPDEM.band("data").nodata, dtype=np.float32)
    reproject(
        src,
        dst,
        src_transform=src_tf,
        src_crs=CRS.from_user_input(_crs(world)),
        dst_transform=transform,
        dst_crs=CRS.from_epsg(4326),
        resampling=Resampling.bilinear,
        src_nodata=None,
        dst_nodata=sensors.COPDEM.band("data").nodata,
    )
    return Scene(None, "EPSG:4326", {"data": Raster(dst, transform, sensors.COPDEM.band("data").nodata)}, {})


RENDERERS = {"sentinel-2": render_sentinel2, "sentinel-1": render_sentinel1, "landsat": render_landsat}


def render(world: World, acq: Acquisition, prep: Prepared | None = None) -> Scene:
    """Render one acquisition with the sensor's renderer."""
    try:
        fn = RENDERERS[acq.sensor]
    except KeyError:
        raise ValueError(f"no renderer for sensor {acq.sensor!r}; known: {sorted(RENDERERS)}") from None
    return fn(world, acq, prep)
