"""Lazy multi-sensor datacubes on one GeoBox: one (feature, y, x) DataArray per year.

Each sensor is a stackstac stack onto the same GeoBox (stored dtype, per-band resampling), one chunk per
acquisition and tile. Each tile is one task over the scenes `scenes.py` chose for it: scenes of one
acquisition are mosaicked, masked with their quality band, reduced to a seasonal median composite plus
a count of valid observations, and turned into derived features. The per-tile maths are pure NumPy
functions (`composite`, `spectral_indices`, `terrain`, and the `*_features` kernels, which a sensor's
record picks by `Sensor.kernel`); `build` and `_tile_graph` do the Dask wiring, in one place. Nothing is
read until compute.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import dask.array as da
import numpy as np
import pystac
import rioxarray  # noqa: F401 - registers the .rio accessor
import stackstac
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from odc.geo.geobox import GeoBox
from rasterio.enums import Resampling
from stackstac.rio_env import LayeredEnv

from glacier_stac import scenes
from glacier_stac import sensors as S
from glacier_stac.catalog import SearchResult, redact
from glacier_stac.grid import TILE_PX, global_origin, pixel_centres, tile_chunks
from glacier_stac.reader import CogReader, ReaderState, Signer, asset_table, capture_gdal_env, resolve_signer

log = logging.getLogger(__name__)

NAN = np.float32(np.nan)


# --------------------------------------------------------------------------- pure functions on arrays


def _observed(values: Sequence[np.ndarray], valid: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per acquisition, where it is an observation: `valid` and no band no-data (DN 0 for stored
    numbers, NaN for floats). The one rule `composite` and `warmest` share."""
    if values[0].dtype.kind in "iu":
        return [ok & (v != 0).all(axis=0) for v, ok in zip(values, valid, strict=True)]
    return [ok & np.isfinite(v).all(axis=0) for v, ok in zip(values, valid, strict=True)]


def composite(values: Sequence[np.ndarray], valid: Sequence[np.ndarray], scale_offset: np.ndarray | None = None,
              out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Median of valid observations per band (float32, NaN where none: never zero), and their count.

    values: one (band, y, x) array per acquisition (a (time, band, y, x) array will do), stored numbers
    (integer, 0 = no-data) or floats (NaN = no-data, |x| < 1e38); valid: one (y, x) bool per acquisition.
    `scale_offset` (band, 2) decodes the median (DN * scale + offset): the same as the median of decoded
    values when scale > 0, at a fraction of the memory traffic.

    Why this shape: a few scenes a season, over millions of pixels. Invalid observations are pushed to
    the top of the value range, a compare-exchange network sorts the planes, and the median of the
    first `n` is picked with a running maximum: every step is a branch-free SIMD ufunc, no masked writes.
    """
    t = len(values)
    if t == 0:
        raise ValueError("composite needs at least one acquisition")
    nb, *shape = values[0].shape
    integer = values[0].dtype.kind in "iu"
    if integer:
        top = values[0].dtype.type(np.iinfo(values[0].dtype).max)
        zero = values[0].dtype.type(0)
    else:
        values = [v.astype(np.float32, copy=False) for v in values]
        top, zero = np.float32(1e38), np.float32(-np.inf)  # finite top: lo + hi cannot overflow
    ok = _observed(values, valid)
    n = np.zeros(shape, np.uint16)
    for o in ok:
        n += o
    if out is None:
        out = np.empty((nb, *shape), np.float32)
    # invalid observations take the top value, so they sort last
    if integer:
        planes = [values[k] | np.where(ok[k], zero, top) for k in range(t)]
    else:
        planes = [np.fmax(values[k], np.where(ok[k], zero, top)) for k in range(t)]
    if t <= 8:
        for i in range(t):
            for j in range(t - 1 - i):
                lo_ = np.minimum(planes[j], planes[j + 1])
                np.maximum(planes[j], planes[j + 1], out=planes[j + 1])
                planes[j] = lo_
    else:
        planes = list(np.sort(np.stack(planes), axis=0))
    if n.min() == t:  # every observation valid: the middle plane(s)
        lo, hi = planes[(t - 1) // 2], planes[t // 2]
    else:  # the planes are sorted, so a running maximum up to index (n-1)//2 (or n//2) picks it
        lo_i, hi_i = (np.maximum(n, 1) - 1) // 2, n // 2
        lo, hi = planes[0].copy(), planes[0].copy()
        for k in range(1, t):
            for acc, idx in ((lo, lo_i), (hi, hi_i)):
                take = idx >= k
                if not take.any():
                    continue
                if integer:
                    np.maximum(acc, planes[k] & np.where(take, top, zero), out=acc)
                else:
                    np.maximum(acc, planes[k] + np.where(take, np.float32(0), zero), out=acc)
    np.add(lo, hi, out=out, dtype=np.float32)
    if scale_offset is None:
        out *= np.float32(0.5)
    else:
        so = np.asarray(scale_offset, dtype=np.float32)
        out *= (so[:, 0] * np.float32(0.5))[:, None, None]
        out += so[:, 1, None, None]
    none = n == 0
    if none.any():
        out += np.where(none, np.float32(np.nan), np.float32(0))
    return out, n


def decode(dn: np.ndarray, scaling: np.ndarray) -> np.ndarray:
    """Physical values from stored numbers: per item and band, value = DN * scale + offset.

    dn: (time, band, y, x) stored numbers (0 = no-data) or floats with NaN; scaling: (time, band, 2).
    """
    sc = scaling.astype(np.float32)
    out = dn.astype(np.float32) * sc[:, :, 0, None, None] + sc[:, :, 1, None, None]
    if np.issubdtype(dn.dtype, np.integer):
        out[dn == 0] = np.nan  # DN 0 is no-data for every band decoded this way
    return out


def temporal_cv(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Coefficient of variation over time of each band's valid observations, (band, y, x).

    Why: ice cliffs and supraglacial ponds on debris-covered ice change between SAR acquisitions;
    ice-free moraine beside it, which looks the same in optics, does not. NaN with < 2 observations.
    """
    ok = valid[:, None] & np.isfinite(values)
    n = ok.sum(axis=0).astype(np.float32)
    x = np.where(ok, values, 0).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = x.sum(axis=0) / n
        var = np.where(ok, (x - mean) ** 2, 0).sum(axis=0) / (n - 1)
        cv = np.sqrt(var) / mean
    return np.where((n >= 2) & (mean > 0), cv, np.nan).astype(np.float32)


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Normalised difference of non-negative reflectances; undefined (NaN) when both are ~0."""
    a, b = np.maximum(a, 0), np.maximum(b, 0)
    den = a + b
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-4, (a - b) / den, np.nan).astype(np.float32)


def spectral_indices(refl: np.ndarray) -> np.ndarray:
    """NDSI, NDWI, NDVI from (B02, B03, B04, B08, B11, B12) reflectance, (3, y, x)."""
    _, b03, b04, b08, b11, _ = refl
    return np.stack([_ratio(b03, b11), _ratio(b03, b08), _ratio(b08, b04)])


SNOW_NDSI = 0.4  # snow or ice (Dozier 1989): the usual NDSI threshold


def snow_persistence(refl: Sequence[np.ndarray], usable: Sequence[np.ndarray], scaling: np.ndarray) -> np.ndarray:
    """Fraction of a pixel's usable acquisitions in which it is snow or ice (NDSI > 0.4); NaN where none.

    Why: a glacier is snow or ice in every late-season scene, while seasonal snow off glaciers melts out
    between them, so in the median composite both look alike but here a snow patch reads below 1 -- the
    per-pixel least-snow view inventories get by picking the least-snow scenes. refl: per acquisition
    (6, y, x) stored numbers (B02 B03 B04 B08 B11 B12); usable: per acquisition (y, x); scaling (time, 6, 2).
    """
    snow = np.zeros(usable[0].shape, np.float32)
    n = np.zeros(usable[0].shape, np.float32)
    for k, (r, ok) in enumerate(zip(refl, usable, strict=True)):
        green, swir = decode(r[None, [1, 4]], scaling[k:k + 1, [1, 4]])[0]
        ok = ok & np.isfinite(green) & np.isfinite(swir)
        with np.errstate(invalid="ignore", divide="ignore"):
            snow += ok & ((green - swir) > np.float32(SNOW_NDSI) * (green + swir))
        n += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, snow / n, np.float32(np.nan)).astype(np.float32)


def to_db(power: np.ndarray) -> np.ndarray:
    """Backscatter in decibels; non-positive power (no signal) becomes NaN."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(power > 0, 10 * np.log10(power), np.nan).astype(np.float32)


def terrain(elev: np.ndarray, res: float, sun_azimuth: float = 315.0, sun_elevation: float = 45.0) -> np.ndarray:
    """Slope (degrees), aspect as sin/cos, and hillshade (0..1) from elevation (Horn's method).

    `elev` carries a one-pixel halo on every side; the result is for the interior.
    """
    z = elev.astype(np.float32)
    dzdx = ((z[:-2, 2:] + 2 * z[1:-1, 2:] + z[2:, 2:]) - (z[:-2, :-2] + 2 * z[1:-1, :-2] + z[2:, :-2])) / (8 * res)
    dzdy = ((z[2:, :-2] + 2 * z[2:, 1:-1] + z[2:, 2:]) - (z[:-2, :-2] + 2 * z[:-2, 1:-1] + z[:-2, 2:])) / (8 * res)
    # rows grow southwards: north-facing gradient is -dzdy
    slope = np.arctan(np.hypot(dzdx, dzdy))
    aspect = np.arctan2(-dzdx, dzdy)  # downslope direction, clockwise from north
    az, zen = np.float32(np.radians(sun_azimuth)), np.float32(np.radians(90.0 - sun_elevation))
    shade = np.cos(zen) * np.cos(slope) + np.sin(zen) * np.sin(slope) * np.cos(az - aspect)
    flat = slope < 1e-9
    sin_a = np.where(flat, 0.0, np.sin(aspect))
    cos_a = np.where(flat, 0.0, np.cos(aspect))
    out = np.stack([np.degrees(slope), sin_a, cos_a, np.clip(shade, 0, 1)]).astype(np.float32, copy=False)
    out[:, ~np.isfinite(z[1:-1, 1:-1])] = np.nan
    return out


def mosaic_acquisitions(blocks: Sequence[Sequence[np.ndarray]], groups: np.ndarray) -> list[list[np.ndarray]]:
    """Merge scenes of one acquisition (neighbouring MGRS tiles or WRS rows of one pass) into one time step.

    blocks: per input of one sensor (data first, then its mask), one (band, y, x) array per scene, 0 or
    NaN where the scene has no data; groups: (time,) acquisition index per scene. Per pixel the first
    scene with data wins, for the data and its mask alike, so an overlap strip is one observation in
    the median and the count, not two.
    """
    has = [(d != 0).any(axis=0) if d.dtype.kind in "iu" else np.isfinite(d).any(axis=0) for d in blocks[0]]
    out: list[list[np.ndarray]] = [[] for _ in blocks]
    for g in dict.fromkeys(groups.tolist()):
        members = np.flatnonzero(groups == g)
        first = int(members[0])
        merged = [b[first] if len(members) == 1 else b[first].copy() for b in blocks]
        covered = has[first].copy()
        for m in members[1:]:
            take = has[m] & ~covered
            for o, b in zip(merged, blocks, strict=True):
                o[:, take] = b[m][:, take]
            covered |= take
        for o, arr in zip(out, merged, strict=True):
            o.append(arr)
    return out


def _for_median(dns: Sequence[np.ndarray], scaling: np.ndarray) -> tuple[Sequence[np.ndarray], np.ndarray | None]:
    """What to take the median of, and how to decode it afterwards.

    Items of one processing baseline share scale and offset (> 0): the DNs themselves, decoded once after
    the median with that (band, 2) scale/offset. Otherwise each acquisition decoded first, and None.
    """
    if len(scaling) and np.all(scaling == scaling[:1]) and np.all(scaling[0, :, 0] > 0):
        return dns, scaling[0]
    return [decode(v[None], scaling[k:k + 1])[0] for k, v in enumerate(dns)], None


def optical_features(refl: Sequence[np.ndarray], mask: Sequence[np.ndarray], scaling: np.ndarray,
                     out: np.ndarray, usable: Callable[[np.ndarray], np.ndarray]) -> None:
    """An optical sensor into `out` (11, y, x): median reflectance of six bands, NDSI/NDWI/NDVI, snow
    persistence, valid count.

    refl: per acquisition (6, y, x) DNs of blue, green, red, nir, swir16, swir22 (Sentinel-2 B02 B03 B04
    B08 B11 B12); mask: per acquisition (1, y, x) quality values, decoded by `usable` (the sensor's,
    `Sensor.usable`); scaling: (time, 6, 2).
    """
    values, decoding = _for_median(refl, scaling)
    ok = [usable(c[0]) for c in mask]
    _, n = composite(values, ok, decoding, out=out[:6])
    out[6:9] = spectral_indices(out[:6])
    out[9] = snow_persistence(refl, ok, scaling)
    out[10] = n


def sar_features(power: Sequence[np.ndarray], out: np.ndarray) -> None:
    """Sentinel-1 into `out` (4, y, x): median VV/VH in dB, VV temporal variation, valid count."""
    valid = [np.all(p > 0, axis=0) for p in power]
    med, n = composite(power, valid)
    out[0:2] = to_db(med)
    out[2] = temporal_cv(np.stack([p[:1] for p in power]), np.stack(valid))[0]
    out[3] = n


def warmest(values: Sequence[np.ndarray], valid: Sequence[np.ndarray], scale_offset: np.ndarray | None = None,
            ) -> np.ndarray:
    """Largest valid observation per band (float32, NaN where none); arguments as `composite`'s.

    Why: melting ice and snow are pinned at 0 degC in every scene, while ground under seasonal snow is
    as warm as bare rock in the scenes that see it bare. In a season of two or three thermal scenes the
    median of such a pixel sits halfway between; its warmest observation says it was bare at least once.
    """
    if len(values) == 0:  # a (time, band, y, x) array will do, as for `composite`
        raise ValueError("warmest needs at least one acquisition")
    best = np.full(values[0].shape, -np.inf, np.float32)
    for v, ok in zip(values, _observed(values, valid), strict=True):
        np.fmax(best, np.where(ok, v.astype(np.float32, copy=False), np.float32(-np.inf)), out=best)
    seen = np.isfinite(best)
    if scale_offset is not None:
        so = np.asarray(scale_offset, dtype=np.float32)
        best = best * so[:, 0, None, None] + so[:, 1, None, None]
    return np.where(seen, best, np.float32(np.nan)).astype(np.float32)


def thermal_features(lwir: Sequence[np.ndarray], mask: Sequence[np.ndarray], scaling: np.ndarray,
                     out: np.ndarray, usable: Callable[[np.ndarray], np.ndarray],
                     snowy: Callable[[np.ndarray], np.ndarray]) -> None:
    """A thermal band into `out` (4, y, x): median and warmest (`warmest`) surface temperature (K) of
    usable pixels, how many of those the mask flags snow or ice, valid count.

    mask: per acquisition (1, y, x) quality values (Landsat QA_PIXEL), decoded by `usable` and `snowy`.
    Why the snow count: ground the optical composite calls bare may lie under snow in a thermal scene of another
    date (at 0 degC); the lapse fit of the derived anomalies must not take it for bare ground.
    """
    values, decoding = _for_median(lwir, scaling)
    ok = [usable(q[0]) for q in mask]
    _, n = composite(values, ok, decoding, out=out[:1])
    out[1:2] = warmest(values, ok, decoding)
    out[2] = 0
    for q, good in zip(mask, ok, strict=True):
        out[2] += snowy(q[0]) & good
    out[3] = n


# ------------------------------------------------------------- derived features that carry across regimes
# Raw surface temperature and elevation mean different things in different climates: at 5000 m in High
# Asia sunlit rock is colder than debris-covered ice at 4000 m, while in a 0-3000 m maritime range it is
# always warmer. Relative to the area's own bare ground and snowline they mean the same everywhere.
# Both are fitted per tile (10 km, `grid.TILE_PX`): a lapse line and a snowline vary over tens of kilometres,
# so the step between two whole tiles' fits is small (a few tenths of a kelvin, tens of metres) next to the
# contrasts the features carry (debris 3-15 K below rock). A tile that the area of interest or a halo cuts to a
# sliver has too few, too narrow pixels for a fit of its own: it pools its sample with its neighbours' (`AreaFit`).

LAPSE_DEFAULT = -0.0065  # K per metre, used when a tile's bare ground spans too little height to fit one
MIN_FIT_PIXELS = 500


def biweight(residuals: np.ndarray) -> np.ndarray:
    """Tukey biweight weights of a fit's residuals (scale: the MAD): 0 for points far off the fit."""
    r = residuals
    scale = 1.4826 * float(np.median(np.abs(r - np.median(r)))) + 1e-3
    u = r / (4.685 * scale)
    return np.where(np.abs(u) < 1, (1 - u * u) ** 2, 0.0)


def lapse_fit(temp: np.ndarray, elev: np.ndarray, ground: np.ndarray, max_samples: int = 200_000,
              ) -> tuple[float, float] | None:
    """Robust (Tukey biweight IRLS) line temp = a + b * elev over the `ground` pixels; None with too few.

    Why robust: the snow-free land of a tile includes debris-covered ice and shaded slopes; they are a
    minority at any height, and the biweight gives them no weight once they sit far off the line.
    """
    ok = ground & np.isfinite(temp) & np.isfinite(elev)
    n = int(ok.sum())
    if n < MIN_FIT_PIXELS:
        return None
    t, z = temp[ok].astype(np.float64), elev[ok].astype(np.float64)
    step = max(1, n // max_samples)  # a deterministic stride: the same tile gives the same fit
    t, z = t[::step], z[::step]
    lo, hi = np.percentile(z, (5, 95))
    if hi - lo < 150.0:
        return float(np.median(t - LAPSE_DEFAULT * z)), LAPSE_DEFAULT
    w = np.ones_like(t)
    a, b = float(np.median(t)), LAPSE_DEFAULT
    for _ in range(8):
        sw = w.sum()
        zm, tm = (w * z).sum() / sw, (w * t).sum() / sw
        var = (w * (z - zm) ** 2).sum()
        b = float(np.clip((w * (z - zm) * (t - tm)).sum() / max(var, 1e-9), -0.015, 0.005))
        a = float(tm - b * zm)
        w = biweight(t - (a + b * z))
        if w.sum() < MIN_FIT_PIXELS // 5:
            break
    return a, b


FIT_STRIDE = 2  # every other row and column: a tile's fit sample is a quarter of its pixels, so pooled
# samples weigh each tile by its area


def bare_ground(ndsi: np.ndarray, ndwi: np.ndarray, snow: np.ndarray | None, lat: tuple[slice, ...]) -> np.ndarray:
    """The bare ground a temperature fit reads, on the lattice `lat`: snow-free (NDSI < 0.2), not water
    (NDWI < 0.2) and, given the thermal scenes' `snow` count, snow-free in every one of them (optical and thermal
    scenes are of other dates: snow in one reads 0 degC, not ground)."""
    ok = (ndsi[lat] < 0.2) & (ndwi[lat] < 0.2)
    if snow is not None:
        ok &= snow[lat] == 0
    return ok


def lapse_sample(lwir: np.ndarray, elev: np.ndarray, ndsi: np.ndarray, ndwi: np.ndarray,
                 snow: np.ndarray | None = None) -> np.ndarray:
    """(2, n) temperature and elevation of the `bare_ground` a lapse fit reads, on the `FIT_STRIDE` lattice."""
    lat = (slice(None, None, FIT_STRIDE),) * lwir.ndim
    t, z = lwir[lat], elev[lat]
    ok = bare_ground(ndsi, ndwi, snow, lat) & np.isfinite(t) & np.isfinite(z)
    return np.stack([t[ok], z[ok]]).astype(np.float32)


def lapse_solve(sample: np.ndarray) -> tuple[float, float] | None:
    """The robust lapse line through a (pooled) `lapse_sample`; None with too few pixels."""
    return lapse_fit(sample[0], sample[1], np.ones(sample.shape[1], bool))


def lapse_apply(lwir: np.ndarray, elev: np.ndarray, ndsi: np.ndarray, ndwi: np.ndarray, snow: np.ndarray | None,
                fit: tuple[float, float] | None) -> np.ndarray:
    """Surface temperature minus the fitted bare ground's at the same elevation (K); NaN without a fit."""
    if fit is None:
        return np.full(lwir.shape, NAN)
    a, b = fit
    return (lwir - (np.float32(a) + np.float32(b) * elev)).astype(np.float32)


def lst_anomaly(lwir: np.ndarray, elev: np.ndarray, ndsi: np.ndarray, ndwi: np.ndarray,
                snow: np.ndarray | None = None) -> np.ndarray:
    """Surface temperature minus that of bare ground at the same elevation (K), from a lapse fit over these
    pixels alone (the cube pools the fit over neighbouring tiles: `DERIVED`).

    Bare ground: snow-free (NDSI < 0.2), not water (NDWI < 0.2), and with `snow` (the thermal scenes flagging
    snow or ice, `landsat_snow`) snow-free in every thermal scene. Debris-covered ice reads a few kelvin below
    zero in every regime; NaN where there is no temperature or too little bare ground.
    """
    return lapse_apply(lwir, elev, ndsi, ndwi, snow, lapse_solve(lapse_sample(lwir, elev, ndsi, ndwi, snow)))


# Sun and shade: a slope facing away from the sun reads several kelvin colder than sunlit ground at its height,
# as cold as debris-covered ice (issue 13: on the worst held-out worlds the false debris beside the glaciers was
# such shaded ground, illumination 0.37-0.57 against 0.67-0.70 where models got it right). Illumination is
# linear in cos(slope), sin(slope) cos(aspect) and sin(slope) sin(aspect), with the sun's position in the
# coefficients, so a fit of bare ground on elevation and those three terms learns the scenes' sun from the
# temperatures themselves: no acquisition time or sun angle is needed.


def terrain_terms(elev: np.ndarray, slope: np.ndarray, aspect_sin: np.ndarray, aspect_cos: np.ndarray) -> np.ndarray:
    """(4, ...) regressors of a bare-ground temperature fit: elevation and the three illumination terms."""
    s = np.radians(slope.astype(np.float64))
    return np.stack([elev, np.cos(s), np.sin(s) * aspect_cos, np.sin(s) * aspect_sin])


def terrain_lapse_fit(temp: np.ndarray, terms: np.ndarray, max_samples: int = 200_000) -> np.ndarray | None:
    """Robust (Tukey biweight IRLS) plane temp = c0 + c . terms over the given pixels ((4, n) `terrain_terms`);
    None with too few. A tile spanning too little height keeps `LAPSE_DEFAULT` and fits only the sun."""
    ok = np.isfinite(temp) & np.all(np.isfinite(terms), axis=0)
    n = int(ok.sum())
    if n < MIN_FIT_PIXELS:
        return None
    step = max(1, n // max_samples)  # a deterministic stride: the same tile gives the same fit
    t, x = temp[ok][::step].astype(np.float64), terms[:, ok][:, ::step].astype(np.float64)
    lo, hi = np.percentile(x[0], (5, 95))
    fixed = hi - lo < 150.0
    if fixed:
        t = t - LAPSE_DEFAULT * x[0]
    design = np.column_stack([np.ones_like(t), *(x[1:] if fixed else x)])
    w = np.ones_like(t)
    for _ in range(8):
        sw = np.sqrt(w)
        coef = np.linalg.lstsq(design * sw[:, None], t * sw, rcond=None)[0]
        w = biweight(t - design @ coef)
        if w.sum() < MIN_FIT_PIXELS // 5:
            break
    return np.insert(coef, 1, LAPSE_DEFAULT) if fixed else coef


def terrain_lapse_sample(lwir: np.ndarray, elev: np.ndarray, slope: np.ndarray, aspect_sin: np.ndarray,
                         aspect_cos: np.ndarray, ndsi: np.ndarray, ndwi: np.ndarray,
                         snow: np.ndarray | None = None) -> np.ndarray:
    """(5, n) temperature and `terrain_terms` of the bare ground `lapse_sample` reads."""
    lat = (slice(None, None, FIT_STRIDE),) * lwir.ndim
    t = lwir[lat]
    x = terrain_terms(elev[lat], slope[lat], aspect_sin[lat], aspect_cos[lat])
    ok = bare_ground(ndsi, ndwi, snow, lat) & np.isfinite(t) & np.all(np.isfinite(x), axis=0)
    return np.concatenate([t[ok][None], x[:, ok]]).astype(np.float32)


def terrain_lapse_solve(sample: np.ndarray) -> np.ndarray | None:
    """The robust bare-ground plane through a (pooled) `terrain_lapse_sample`; None with too few pixels."""
    return terrain_lapse_fit(sample[0], sample[1:])


def terrain_lapse_apply(lwir: np.ndarray, elev: np.ndarray, slope: np.ndarray, aspect_sin: np.ndarray,
                        aspect_cos: np.ndarray, ndsi: np.ndarray, ndwi: np.ndarray, snow: np.ndarray | None,
                        fit: np.ndarray | None) -> np.ndarray:
    """Surface temperature minus the fitted bare ground's at the same elevation, slope and aspect (K); NaN
    without a fit."""
    if fit is None:
        return np.full(lwir.shape, NAN)
    x = terrain_terms(elev, slope, aspect_sin, aspect_cos)
    ground = fit[0] + np.tensordot(np.asarray(fit[1:]), x, axes=1)
    return (lwir - ground).astype(np.float32)


def lst_lit_anomaly(lwir: np.ndarray, elev: np.ndarray, slope: np.ndarray, aspect_sin: np.ndarray,
                    aspect_cos: np.ndarray, ndsi: np.ndarray, ndwi: np.ndarray,
                    snow: np.ndarray | None = None) -> np.ndarray:
    """Surface temperature minus that of bare ground at the same elevation, slope and aspect (K), fitted on these
    pixels alone (the cube pools the fit over neighbouring tiles: `DERIVED`): shaded ground reads ~0 like
    sunlit ground, debris-covered ice stays below it."""
    args = (lwir, elev, slope, aspect_sin, aspect_cos, ndsi, ndwi, snow)
    return terrain_lapse_apply(*args, terrain_lapse_solve(terrain_lapse_sample(*args)))


def snowline(elev: np.ndarray, ndsi: np.ndarray, bin_m: float = 25.0) -> float | None:
    """The tile's snowline: the height that best splits snow (NDSI > 0.4) below it from bare land above it.

    It minimises snow pixels below plus snow-free pixels above (an optimal 1-D split, robust to seasonal
    patches and dark debris); a tile all snow-free gets its top, one all snow its bottom. None: no data.
    """
    ok = np.isfinite(elev) & np.isfinite(ndsi)
    if not ok.any():
        return None
    z, snow = elev[ok], ndsi[ok] > SNOW_NDSI
    lo, hi = float(z.min()), float(z.max())
    edges = np.arange(np.floor(lo / bin_m) * bin_m, hi + 2 * bin_m, bin_m)
    hs = np.histogram(z[snow], edges)[0]
    hn = np.histogram(z[~snow], edges)[0]
    # errors if the line sits at edges[k]: snow below it plus bare land above it
    err = np.concatenate([[0], np.cumsum(hs)]) + np.concatenate([np.cumsum(hn[::-1])[::-1], [0]])
    return float(edges[int(np.argmin(err))])


def snowline_sample(elev: np.ndarray, ndsi: np.ndarray) -> np.ndarray:
    """(2, n) elevation and NDSI of the observed pixels on the `FIT_STRIDE` lattice, for a snowline fit."""
    lat = (slice(None, None, FIT_STRIDE),) * elev.ndim
    z, v = elev[lat], ndsi[lat]
    ok = np.isfinite(z) & np.isfinite(v)
    return np.stack([z[ok], v[ok]]).astype(np.float32)


def snowline_solve(sample: np.ndarray) -> float | None:
    """The snowline of a (pooled) `snowline_sample`; None without pixels."""
    return snowline(sample[0], sample[1])


def snowline_apply(elev: np.ndarray, ndsi: np.ndarray, line: float | None) -> np.ndarray:
    """Elevation relative to a fitted snowline (m); NaN without one."""
    if line is None:
        return np.full(elev.shape, NAN)
    return (elev - np.float32(line)).astype(np.float32)


def elevation_above_snowline(elev: np.ndarray, ndsi: np.ndarray) -> np.ndarray:
    """Elevation relative to these pixels' snowline (m): the ELA's stand-in, comparable across regimes."""
    return snowline_apply(elev, ndsi, snowline_solve(snowline_sample(elev, ndsi)))


def this_season(values: np.ndarray) -> np.ndarray:
    """A history feature before earlier seasons join it (`build(history=)`): this season's own values."""
    return values


@dataclass(frozen=True)
class AreaFit:
    """How a derived feature's parameters are fitted over an area (a lapse line, a snowline) and applied.

    Why apart from the kernel: the cube takes `sample` of each tile and `solve`s it, for a tile the area cuts
    (an area's edge, an inference halo) pooled with the samples of the tiles around it, then `apply`s the result:
    a sliver gets the fit of the ground around it, while a whole tile reads no neighbour.
    `sample` and `apply` read the feature's inputs (`apply` then the parameters; None: NaN)."""

    sample: Callable[..., np.ndarray]
    solve: Callable[[np.ndarray], Any]
    apply: Callable[..., np.ndarray]


@dataclass(frozen=True)
class Derived:
    """A feature computed from other features of the same tile (after every sensor's kernel; a derived
    feature may read one derived before it). One with a `fit` reads sensors' features only: its sample is
    taken before any derived feature is computed. `kernel` computes it on arrays alone (fitted on them)."""

    name: str
    inputs: tuple[str, ...]
    kernel: Callable[..., np.ndarray]
    fit: AreaFit | None = None


LAPSE = AreaFit(lapse_sample, lapse_solve, lapse_apply)
SNOWLINE = AreaFit(snowline_sample, snowline_solve, snowline_apply)
TERRAIN_LAPSE = AreaFit(terrain_lapse_sample, terrain_lapse_solve, terrain_lapse_apply)


@dataclass(frozen=True)
class History:
    """A feature summarised over this season and the `HISTORY_YEARS` before it, pixel by pixel.

    Why: one season cannot tell a glacier from snow that lay all that summer (snow in every optical scene,
    at 0 degC in every thermal one), and such summers come in snowy years and dry regimes alike; ground seen
    bare in any recent summer is no glacier, which is how inventories pick their scenes from several years.
    `reduce` joins two seasons and skips a season without an observation (np.fmin / np.fmax skip NaN)."""

    name: str
    source: str
    reduce: Callable[[np.ndarray, np.ndarray], np.ndarray]


HISTORY_YEARS = 2  # earlier seasons a model with history features reads: glaciers barely move in two years
HISTORY: tuple[History, ...] = (
    # the least snowy season's persistence: below 1 where the ground melted out in any of them
    History("snow_persistence_hist", "snow_persistence", np.fmin),
    # the warmest season's anomaly: ~0 where the ground was seen bare (warm) in any of them
    History("lst_max_anomaly_hist", "lst_max_anomaly", np.fmax),
)

LIT_TERMS = ("elevation", "slope", "aspect_sin", "aspect_cos", "ndsi", "ndwi", "landsat_snow")
DERIVED: tuple[Derived, ...] = (
    Derived("lst_anomaly", ("lwir11", "elevation", "ndsi", "ndwi", "landsat_snow"), lst_anomaly, LAPSE),
    # the warmest scene against the warmest scenes of bare ground: ~0 where the ground was seen bare once
    Derived("lst_max_anomaly", ("lwir11_max", "elevation", "ndsi", "ndwi", "landsat_snow"), lst_anomaly, LAPSE),
    Derived("elev_above_snowline", ("elevation", "ndsi"), elevation_above_snowline, SNOWLINE),
    # the same against bare ground of the same height, slope and aspect: shade no longer reads as debris
    Derived("lst_lit_anomaly", ("lwir11", *LIT_TERMS), lst_lit_anomaly, TERRAIN_LAPSE),
    Derived("lst_max_lit_anomaly", ("lwir11_max", *LIT_TERMS), lst_lit_anomaly, TERRAIN_LAPSE),
    *(Derived(h.name, (h.source,), this_season) for h in HISTORY),
)


def derived_for(names: Sequence[str]) -> tuple[Derived, ...]:
    """The derived features whose inputs are all among `names` or derived before them, in `DERIVED` order."""
    have, out = set(names), []
    for d in DERIVED:
        if set(d.inputs) <= have:
            out.append(d)
            have.add(d.name)
    return tuple(out)


def join_seasons(block: np.ndarray, earlier: Sequence[np.ndarray], names: Sequence[str],
                 earlier_names: Sequence[str], out: np.ndarray | None = None) -> np.ndarray:
    """`block` (feature, y, x) of this season with each `HISTORY` feature it holds reduced over the earlier
    seasons' blocks (each (feature, y, x) named by `earlier_names`); the other features are untouched.
    Into a copy, or into `out` (`out=block`: in place, as the tile task that made the block does)."""
    out = block.copy() if out is None else out
    for h in HISTORY:
        if h.name not in names or h.source not in earlier_names:
            continue
        i, j = names.index(h.name), earlier_names.index(h.source)
        for e in earlier:
            out[i] = h.reduce(out[i], e[j])
    return out


# every feature a full cube holds, in order: each registered sensor's (its record says which), then the derived ones
FEATURES: tuple[str, ...] = (tuple(f for s in S.SENSORS.values() for f in s.features)
                             + tuple(d.name for d in DERIVED))


def dem_features(elev: np.ndarray, res: float, out: np.ndarray) -> None:
    """DEM into `out` (5, y, x): elevation, slope, aspect sin/cos, hillshade; `elev` has a 1-pixel halo."""
    out[0] = elev[1:-1, 1:-1]
    out[1:] = terrain(elev, res)


# each kind of per-tile kernel a sensor record names (`Sensor.kernel`; `sensors.KERNELS` says what each
# takes and yields): a sensor's record picks its kernel, so no table here knows a sensor by name
KERNELS: dict[str, Callable[..., None]] = {
    "optical": optical_features, "sar": sar_features, "thermal": thermal_features, "dem": dem_features,
}


@dataclass(frozen=True)
class SensorTile:
    """One sensor's part of one tile's task: how many input blocks it takes and its kernel's parameters.

    The sensor's record travels with the task, so a worker needs no registry to know it (a sensor declared
    in a notebook runs as a built-in one does). `groups` (acquisition index per scene) and `scaling`
    ((time, band, 2) scale/offset) are per scene of this tile; `params` are the kernel's other keyword
    arguments. `n_blocks == 0`: no item over the tile.
    """

    sensor: S.Sensor
    n_blocks: int = 0
    groups: np.ndarray | None = None
    scaling: np.ndarray | None = None
    params: Mapping[str, Any] = field(default_factory=dict)


def tile_features(*blocks: np.ndarray, plan: tuple[SensorTile, ...], shape: tuple[int, int],
                  derive_here: bool = True) -> np.ndarray:
    """All features of one tile, (feature, y, x) float32, written once into one array.

    `plan` lists one `SensorTile` per sensor in feature order; a sensor with no blocks has no items
    over this tile: NaN features and a zero count. The derived features are fitted on this tile alone, or,
    with `derive_here=False`, left NaN for `derive` (the cube fits them pooled over neighbouring tiles).
    """
    sensors = [p.sensor for p in plan]
    names = [f for s in sensors for f in s.features]
    derived = derived_for(names)
    out = np.empty((len(names) + len(derived), *shape), np.float32)
    f = b = 0
    for sensor, p in zip(sensors, plan, strict=True):
        k = p.n_blocks
        view = out[f:f + len(sensor.features)]
        if k:
            args, params, scaling = list(blocks[b:b + k]), dict(p.params), p.scaling
            if p.groups is not None and len(np.unique(p.groups)) < len(p.groups):
                args = mosaic_acquisitions(args, p.groups)
                first = [int(np.flatnonzero(p.groups == g)[0]) for g in dict.fromkeys(p.groups.tolist())]
                if scaling is not None:
                    scaling = scaling[first]
            if scaling is not None:
                params["scaling"] = scaling
            KERNELS[sensor.kernel](*args, out=view, **params)
        else:
            view[:] = np.nan
            if sensor.count_feature is not None:
                view[sensor.features.index(sensor.count_feature)] = 0
        f, b = f + len(view), b + k
    if derive_here:
        derive(out, [*names, *(d.name for d in derived)])
    else:
        out[f:] = np.nan
    return out


def derive(block: np.ndarray, names: Sequence[str], fits: Mapping[str, Any] | None = None) -> None:
    """Fill the derived features among `names` (the rows of `block`, (feature, y, x)) in place, in `DERIVED`
    order: a fitted one with its parameters in `fits` (pooled over neighbouring tiles: `pooled_fits`), or,
    without `fits`, fitted on this block alone."""
    for d in DERIVED:
        if d.name not in names:
            continue
        args = [block[names.index(i)] for i in d.inputs]
        fitted = d.fit is not None and fits is not None
        block[names.index(d.name)] = d.fit.apply(*args, fits[d.name]) if fitted else d.kernel(*args)


def fit_samples(block: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """What each fitted derived feature among `names` samples from one tile's block (its sensors' rows)."""
    return {d.name: d.fit.sample(*(block[names.index(i)] for i in d.inputs))
            for d in DERIVED if d.fit is not None and d.name in names}


def pooled_fits(samples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, Any]:
    """Each fitted derived feature's parameters from the samples of a tile and its neighbours, pooled."""
    by_name = {d.name: d for d in DERIVED}
    return {n: by_name[n].fit.solve(np.concatenate([s[n] for s in samples], axis=1)) for n in samples[0]}


# --------------------------------------------------------------------------- the Dask wiring


@dataclass(frozen=True)
class ReadSetup:
    """How this cube's readers read, decided where the graph is built and shipped inside every read task:
    the signer (a callable), the captured GDAL environment, and the reader state (None: each process's own)."""

    signer: Signer | None = None
    gdal_env: LayeredEnv | None = None
    state: ReaderState | None = None
    record_errors: bool = True  # False: an unreadable asset fails the read task (the pipeline retries, then records it)


def _stack(items: Sequence[pystac.Item], sensor: S.Sensor, keys: list[str], geobox: GeoBox, chunks,
           read: ReadSetup) -> xr.DataArray:
    """One stackstac stack of some assets of some items, exactly on `geobox`, in the bands' stored dtype.

    One chunk per acquisition and tile, so a tile's task gathers only the acquisitions over it.

    Integer bands (stored DNs, decoded after compositing) are filled with their no-data value (0 for
    Sentinel-2, SCL and Landsat ST; the fill bit for QA_PIXEL); float bands are NaN-filled.
    """
    bands = [sensor.band(k) for k in keys]
    kinds = {(b.resampling, b.dtype, b.nodata) for b in bands}
    if len(kinds) != 1:
        raise ValueError(f"one stack needs one resampling, dtype and no-data; {sensor.name} {keys} have {kinds}")
    resampling, dtype, nodata = kinds.pop()
    dtype = np.dtype(dtype) if np.issubdtype(np.dtype(dtype), np.integer) else np.dtype(np.float32)
    b = geobox.boundingbox
    arr = stackstac.stack(
        [i.to_dict(transform_hrefs=False) for i in items], assets=keys, epsg=geobox.crs.epsg,
        resolution=abs(geobox.resolution.x),
        bounds=(b.left, b.bottom, b.right, b.top), snap_bounds=False, xy_coords="center",
        resampling=Resampling[resampling], chunksize=(1, -1, *chunks), dtype=dtype,
        fill_value=dtype.type(nodata) if dtype.kind in "iu" else NAN,
        rescale=False, sortby_date=False, properties=False, band_coords=False,
        reader=functools.partial(CogReader, signer=read.signer, state=read.state, record_errors=read.record_errors),
        gdal_env=read.gdal_env,
    )
    if arr.shape[-2:] != geobox.shape:
        raise RuntimeError(f"stack shape {arr.shape[-2:]} does not match the grid {tuple(geobox.shape)}")
    return arr


def _scaling(sensor: S.Sensor, items: Sequence[pystac.Item], keys: Sequence[str]) -> np.ndarray:
    """(time, band, 2) scale/offset per item and asset, from the item (or the sensor's default)."""
    return np.array([[sensor.scaling(it, k) for k in keys] for it in items], dtype=np.float64)


def _sensor_inputs(sensor: S.Sensor, items: Sequence[pystac.Item], data_keys: list[str], geobox: GeoBox, chunks,
                   read: ReadSetup) -> Recipe:
    """A sensor's lazy inputs ((time, band, y, x) stacks; a static layer with a halo) and its kernel's parameters."""
    if not sensor.per_acquisition:  # a static layer (the DEM): one 2-D input, terrain needs a 1-pixel halo
        dem = _stack(items, sensor, data_keys, geobox, chunks, read)
        # several DEM tiles: first valid wins (a DEM tile off this grid tile is never read)
        elev = dem.data[0, 0] if len(items) == 1 else stackstac.mosaic(dem, dim="time").sel(band="data").data
        return Recipe(sensor, [da.overlap.overlap(elev, depth={0: 1, 1: 1}, boundary="nearest")],
                      params={"res": abs(geobox.resolution.x)})
    arrays = [_stack(items, sensor, data_keys, geobox, chunks, read).data]
    params: dict[str, Any] = {}
    if sensor.mask_band is not None:
        arrays.append(_stack(items, sensor, [sensor.mask_band.key], geobox, chunks, read).data)
        params["usable"] = sensor.usable  # the mask band's decoder (SCL classes, QA bits)
        if S.KERNELS[sensor.kernel].snow:
            params["snowy"] = sensor.snowy  # and where it flags snow or ice
    # stored integer DNs are decoded after compositing, with each item's scale/offset
    decodes = any(np.dtype(sensor.band(k).dtype).kind in "iu" for k in data_keys)
    return Recipe(sensor, arrays, params=params, scaling=_scaling(sensor, items, data_keys) if decodes else None)


@dataclass(frozen=True)
class TileOutput:
    """What a tile's cube task returns: only the features at `keep` (an earlier season kept for the history
    join: two of its ~20) and this season's `HISTORY` features joined over the last `seasons` inputs (the
    earlier seasons' kept blocks, named `earlier_names`); `names` are the cube's features."""

    keep: tuple[int, ...] | None = None
    names: tuple[str, ...] = ()
    earlier_names: tuple[str, ...] = ()
    seasons: int = 0

    @property
    def carried(self) -> tuple[str, ...]:
        """The features a tile's read task hands on: all, or those kept and what the derived ones among them
        are computed from (fitted after the neighbours' samples are in)."""
        if self.keep is None:
            return self.names
        need = _inputs_of([self.names[k] for k in self.keep])
        return tuple(n for n in self.names if n in need)


def _tile_task(plan: tuple[SensorTile, ...], shape: tuple[int, int], post: TileOutput, *inputs: Any) -> np.ndarray:
    """One tile's read task: each input is a list of (1, band, y, x) blocks, one per acquisition (passed on as
    (band, y, x) views, never concatenated), or the DEM's haloed block. Its sensors' features, the derived
    ones left NaN for `_derive_task`; only the `post.carried` ones."""
    blocks = [[b[0] for b in x] if isinstance(x, list) else x for x in inputs]
    out = tile_features(*blocks, plan=plan, shape=shape, derive_here=False)
    carried = post.carried
    return out if carried == post.names else out[[post.names.index(n) for n in carried]]


def _samples_task(post: TileOutput, block: np.ndarray) -> dict[str, np.ndarray]:
    """A tile's samples for the fitted derived features (a quarter of its bare pixels: small)."""
    return fit_samples(block, post.carried)


def _derive_task(post: TileOutput, block: np.ndarray, samples: list[dict[str, np.ndarray]], *earlier: np.ndarray,
                 ) -> np.ndarray:
    """One tile's cube task: its derived features fitted on its own and its neighbours' `samples`, then
    `post.seasons` earlier seasons' blocks joined, both in place: the read task's block is this task's alone
    (a retry recomputes the derived rows from the sensors' rows and joins again, np.fmin / np.fmax alike)."""
    names = post.carried
    derive(block, names, pooled_fits(samples))
    if post.seasons:
        join_seasons(block, earlier, names, post.earlier_names, out=block)
    if post.keep is None:
        return block
    return block[[names.index(post.names[k]) for k in post.keep]]


@dataclass(frozen=True)
class Recipe:
    """How one sensor enters the cube graph: its lazy inputs, its kernel's parameters, and which scenes
    meet each tile (`over`: tile (i, j) -> scene indices; None for a static layer read whole per tile)."""

    sensor: S.Sensor
    arrays: list[da.Array] = field(default_factory=list)
    params: Mapping[str, Any] = field(default_factory=dict)
    scaling: np.ndarray | None = None  # (time, band, 2) per scene, for sensors storing integer DNs
    groups: np.ndarray | None = None  # acquisition index per scene
    over: dict[tuple[int, int], list[int]] | None = None

    def for_tile(self, i: int, j: int) -> tuple[SensorTile, list[Any]]:
        """This sensor's plan entry and graph inputs for tile (i, j)."""
        idx = [0] if self.over is None else self.over.get((i, j), [])  # static layers: one 2-D input
        if not self.arrays or not idx:
            return SensorTile(self.sensor), []
        inputs = [(a.name, i, j) if a.ndim == 2 else [(a.name, t, 0, i, j) for t in idx] for a in self.arrays]
        return SensorTile(self.sensor, len(self.arrays),
                          groups=None if self.groups is None else self.groups[idx],
                          scaling=None if self.scaling is None else self.scaling[idx],
                          params=self.params), inputs


def _tile_graph(recipes: Sequence[Recipe], chunks: tuple[tuple[int, ...], tuple[int, ...]], prefix: str,
                post: TileOutput, earlier: Sequence[da.Array] = (), tile_px: int = TILE_PX) -> da.Array:
    """The cube's graph: per tile a read task over the chunks of the acquisitions that meet it, a task sampling
    it for the fitted derived features, and the cube task fitting them (and joining the same tile of each
    `earlier` season's cube: `post`). A whole tile (`tile_px` square) fits on its own sample and needs no
    neighbour; one the area cuts pools its sample with the tiles' around it (`AreaFit`)."""
    token = tokenize([(r.sensor.name, [a.name for a in r.arrays], r.over) for r in recipes], chunks, post,
                     [e.name for e in earlier])
    name, reads, samples = prefix + token, prefix + "read-" + token, "fit-samples-" + token
    ny, nx = len(chunks[0]), len(chunks[1])
    dsk_read: dict[Any, Any] = {}
    dsk_sample: dict[Any, Any] = {}
    dsk: dict[Any, Any] = {}
    for i, h in enumerate(chunks[0]):
        for j, w in enumerate(chunks[1]):
            plan, inputs = [], []
            for r in recipes:
                part, ins = r.for_tile(i, j)
                plan.append(part)
                inputs += ins
            dsk_read[(reads, 0, i, j)] = (_tile_task, tuple(plan), (h, w), post, *inputs)
            dsk_sample[(samples, i, j)] = (_samples_task, post, (reads, 0, i, j))
            whole = (h, w) == (tile_px, tile_px)
            near = [(samples, i, j)] if whole else [(samples, a, b) for a in range(max(i - 1, 0), min(i + 2, ny))
                                                    for b in range(max(j - 1, 0), min(j + 2, nx))]
            dsk[(name, 0, i, j)] = (_derive_task, post, (reads, 0, i, j), near, *[(e.name, 0, i, j) for e in earlier])
    read_graph = HighLevelGraph.from_collections(reads, dsk_read, dependencies=[a for r in recipes for a in r.arrays])
    read = da.Array(read_graph, reads, chunks=((len(post.carried),), *chunks), dtype=np.float32)
    sample_graph = HighLevelGraph.from_collections(samples, dsk_sample, dependencies=[read])
    sampled = da.Array(sample_graph, samples, chunks=((1,) * ny, (1,) * nx), dtype=object)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[read, sampled, *earlier])
    n_out = len(post.names) if post.keep is None else len(post.keep)
    return da.Array(graph, name, chunks=((n_out,), *chunks), dtype=np.float32)


def build(items: SearchResult | Mapping[str, Sequence[pystac.Item]], geobox: GeoBox, year: int | None = None, *,
          sensors: str | Sequence[str | S.Sensor] | None = None, tile_px: int = TILE_PX,
          signer: str | Signer | None = None, max_acquisitions: int | None = 24, gdal_env: LayeredEnv | None = None,
          state: ReaderState | None = None, on_read_error: str = "nodata", history: int = 0,
          keep: Sequence[str] | None = None) -> xr.DataArray:
    """A lazy (feature, y, x) float32 cube for one year on `geobox`, one chunk per global tile.

    `items` is a `SearchResult` (then `year` picks the year) or a mapping sensor name -> items already
    chosen. `sensors` are names of registered sensors or `Sensor` records, registered or not (default: every
    registered one). A sensor without items gives NaN features and a zero count, and is listed in the
    `missing_sensors` attribute. Reads no pixels. Each tile is one task over all sensors' reads, so
    the features are written once, with no concatenation or rechunking afterwards. A tile composites
    at most `max_acquisitions` acquisitions per sensor (the least cloudy; SAR spread over the season);
    None takes every one.

    Reads use `signer` (a callable, or a name such as "planetary-computer"; default the search's), the GDAL
    environment captured here (`gdal_env`, default `reader.capture_gdal_env()`) and `state` (default: each
    process's own, which cluster.py's plugins hold on workers). The cube's `assets` attribute is the table
    digest of asset URL -> [item id, asset key] that names the item and asset of each read error
    (`reader.label_errors`, `cluster.read_errors`); it carries no URL. `on_read_error`: "nodata" records an
    unreadable asset and reads it as no-data (a notebook still gets its cube); "raise" fails the task with the
    asset and the reason, so that a run retries the tile and, if it keeps failing, records it failed, not done.

    `history`: how many seasons before `year` the `HISTORY` features join (`history_for` says how many a
    checkpoint reads); the search must hold those years (a year without scenes is skipped and the
    `history_years` attribute lists the years joined). Earlier seasons read only the sensors those features
    come from, keep only the features the join reads, and join inside this season's tile tasks. With 0 (or
    items given per sensor) they hold this season's values. `keep`: only these features in the cube (each tile
    computes its sensors' features and keeps these), in the cube's order.
    """
    if on_read_error not in ("nodata", "raise"):
        raise ValueError(f"on_read_error must be 'nodata' or 'raise', got {on_read_error!r}")
    if max_acquisitions is not None and max_acquisitions < 1:
        raise ValueError(f"max_acquisitions must be >= 1 or None, got {max_acquisitions}")
    if history < 0:
        raise ValueError(f"history must be >= 0 seasons, got {history}")
    global_origin(geobox)  # refuses a geobox off the global lattice
    if isinstance(items, SearchResult):
        if year is None:
            raise ValueError("build(SearchResult, ...) needs the year to build")
        signer = signer or items.signer
        by_sensor = items.for_year(year)
    else:
        by_sensor = dict(items)
    wanted = S.resolve(sensors)
    unknown = sorted(set(by_sensor) - {s.name for s in wanted} - set(S.SENSORS))
    if unknown:
        raise ValueError(f"items given for unknown sensors {unknown}; the cube reads {[s.name for s in wanted]} "
                         "(pass a sensor's record in `sensors` to read one that is not registered)")
    chunks = tile_chunks(geobox, tile_px)
    read = ReadSetup(resolve_signer(signer), gdal_env if gdal_env is not None else capture_gdal_env(), state,
                     record_errors=on_read_error == "nodata")
    urls: dict[str, tuple[str, str]] = {}
    names = [f for s in wanted for f in s.features]
    twice = sorted({f for f in names if names.count(f) > 1})
    if twice:
        raise ValueError(f"sensors {[s.name for s in wanted]} yield features {twice} more than once; "
                         "give each sensor's record features of its own names")
    names += [d.name for d in derived_for(names)]
    lost = sorted(set(keep or ()) - set(names))
    if lost:
        raise ValueError(f"keep: features {lost} are not made by sensors {[s.name for s in wanted]} ({names})")
    recipes: list[Recipe] = []
    missing, provenance, gaps, alternates = [], {}, {}, {}
    for sensor in wanted:
        its = list(by_sensor.get(sensor.name, []))
        if its:
            keys, its, sensor_gaps = scenes.select(sensor, its, year)
            gaps.update({f"{sensor.name}/{k}": v for k, v in sensor_gaps.items()})
            if len(keys) > 1 and keys != [b.key for b in sensor.data_bands]:
                alternates[sensor.name] = "+".join(keys).upper()
        if not its:  # none found, or none usable
            missing.append(sensor.name)
            recipes.append(Recipe(sensor))
            continue
        recipe = _sensor_inputs(sensor, its, keys, geobox, chunks, read)
        read_keys = [*keys, *([sensor.mask_band.key] if sensor.mask_band is not None else [])]
        urls.update({redact(it.assets[k].href): (it.id, k) for it in its for k in read_keys if k in it.assets})
        if sensor.per_acquisition:
            groups = scenes.acquisition_ids(its)
            recipe = replace(recipe, groups=groups,
                             over=scenes.items_per_tile(its, groups, geobox, chunks, max_acquisitions))
        recipes.append(recipe)
        provenance[sensor.name] = [i.id for i in its]
    earlier: list[tuple[int, xr.DataArray]] = []
    if history and isinstance(items, SearchResult):
        kw = dict(tile_px=tile_px, signer=signer, max_acquisitions=max_acquisitions, gdal_env=gdal_env,
                  state=state, on_read_error=on_read_error)
        earlier = earlier_seasons(items, geobox, [int(year) - k for k in range(1, history + 1)], names, wanted, kw)
    post = TileOutput(keep=None if keep is None else tuple(i for i, n in enumerate(names) if n in keep),
                      names=tuple(names), seasons=len(earlier),
                      earlier_names=tuple(str(f) for f in earlier[0][1]["feature"].values) if earlier else ())
    data = _tile_graph(recipes, chunks, f"cube-{year}-", post, [e.data for _, e in earlier], tile_px)
    y, x = pixel_centres(geobox)
    out_names = names if post.keep is None else [names[i] for i in post.keep]
    cube = xr.DataArray(
        data, dims=("feature", "y", "x"), coords={"feature": out_names, "y": y, "x": x}, name="features",
        attrs={
            "year": -1 if year is None else int(year),
            "sensors": [s.name for s in wanted if s.name not in missing],
            "missing_sensors": missing,
            "items": {k: ",".join(v) for k, v in provenance.items()},  # ids, never URLs
            "gaps": gaps,  # "sensor/item id" -> what was missing and what became of it
            "alternate_assets": alternates,  # sensor -> the alternate set composited, e.g. "HH+HV"
            "tile_px": tile_px,
            "max_acquisitions": -1 if max_acquisitions is None else max_acquisitions,
            "assets": asset_table(urls),  # digest of asset URL -> [item id, asset key], for read errors
        },
    )
    cube = cube.rio.write_crs(geobox.crs.to_wkt()).rio.write_transform(geobox.affine)
    if missing:
        log.warning("cube %s: no items for %s; their features are NaN and counts 0", year, ", ".join(missing))
    cube.attrs["history_years"] = [y for y, _ in earlier]
    cube.attrs["items"].update({f"{k}/{y}": v for y, e in earlier for k, v in e.attrs["items"].items()})
    if history and isinstance(items, SearchResult) and not earlier:
        log.info("cube %s: no scenes in the seasons %s; history features hold this season's", year,
                 [int(year) - k for k in range(1, history + 1)])
    return cube


def _inputs_of(names: Sequence[str]) -> set[str]:
    """`names` and every feature they are derived from."""
    by_name = {d.name: d for d in DERIVED}
    out, todo = set(), list(names)
    while todo:
        n = todo.pop()
        if n not in out:
            out.add(n)
            todo.extend(by_name[n].inputs if n in by_name else ())
    return out


def history_for(features: Sequence[str]) -> int:
    """Seasons before the year a model reading `features` needs (`HISTORY_YEARS` if it reads a history feature)."""
    return HISTORY_YEARS if {h.name for h in HISTORY} & set(features) else 0


def history_sensors(names: Sequence[str], wanted: Sequence[S.Sensor]) -> list[S.Sensor]:
    """The sensors among `wanted` whose earlier seasons the history features among `names` are made from."""
    need = _inputs_of([h.source for h in HISTORY if h.name in names])
    return [s for s in wanted if need & set(s.features)]


def earlier_seasons(items: SearchResult, geobox: GeoBox, years: Sequence[int], names: Sequence[str],
                    wanted: Sequence[S.Sensor], kw: Mapping[str, Any]) -> list[tuple[int, xr.DataArray]]:
    """(year, lazy cube) of each of `years` that has scenes, for the `HISTORY` features among `names`: only the
    sensors those come from, and only the features the join reads (`HISTORY` sources) kept per tile."""
    sensors = history_sensors(names, wanted)
    sources = [h.source for h in HISTORY if h.name in names]
    out = []
    for y in years:
        found = items.for_year(y)
        if not any(found.get(s.name) for s in sensors if s.per_acquisition):
            continue
        out.append((y, build(items, geobox, y, sensors=sensors, keep=sources, **kw)))
    return out
