"""Lazy multi-sensor datacubes on one GeoBox: one (feature, y, x) DataArray per year.

Each sensor is a stackstac stack onto the same GeoBox (float32, per-band resampling), masked with its
quality band, reduced to a seasonal median composite plus a count of valid observations, and turned
into derived features. The per-chunk maths are pure NumPy functions (`composite`, `spectral_indices`,
`terrain`); `build` does the Dask wiring, in one place. Nothing is read until compute.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence

import dask.array as da
import numpy as np
import pystac
import rioxarray  # noqa: F401 - registers the .rio accessor
import stackstac
import xarray as xr
from odc.geo.geobox import GeoBox
from rasterio.enums import Resampling

from glacier_stac import sensors as S
from glacier_stac.catalog import SearchResult
from glacier_stac.grid import TILE_PX, global_origin, pixel_centres, tile_chunks
from glacier_stac.reader import GDAL_ENV, CogReader

log = logging.getLogger(__name__)

SENSOR_FEATURES: dict[str, tuple[str, ...]] = {
    "sentinel-2": ("B02", "B03", "B04", "B08", "B11", "B12", "ndsi", "ndwi", "ndvi", "s2_count"),
    "sentinel-1": ("vv_db", "vh_db", "vv_cv", "s1_count"),
    "landsat": ("lwir11", "landsat_count"),
    "copdem": ("elevation", "slope", "aspect_sin", "aspect_cos", "hillshade"),
}
FEATURES: tuple[str, ...] = tuple(f for fs in SENSOR_FEATURES.values() for f in fs)
COUNT_FEATURES = ("s2_count", "s1_count", "landsat_count")
NAN = np.float32(np.nan)
FILL_DN = {"B02": 0, "B03": 0, "B04": 0, "B08": 0, "B11": 0, "B12": 0, "SCL": 0, "lwir11": 0, "qa_pixel": 1}


# --------------------------------------------------------------------------- pure functions on arrays


def composite(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Median of valid observations per band, and their count.

    values: (time, band, y, x) float; valid: (time, y, x) bool. Returns (band + 1, y, x) float32, the
    last plane the count. Pixels with no valid observation are NaN (never zero). Invalid values
    become +inf so they sort last; the median is then the middle of the first `n` values.
    """
    t = values.shape[0]
    ok = valid & np.all(np.isfinite(values), axis=1)
    n = ok.sum(axis=0)
    if t == 0:
        return np.concatenate([np.full(values.shape[1:], np.nan, np.float32), n[None].astype(np.float32)])
    x = np.where(ok[:, None], values, np.inf).astype(np.float32, copy=False)
    if t <= 8:  # a few scenes a season: a compare-exchange network beats a strided sort
        srt = list(x)
        for i in range(t):
            for j in range(t - 1 - i):
                lo_, hi_ = np.minimum(srt[j], srt[j + 1]), np.maximum(srt[j], srt[j + 1])
                srt[j], srt[j + 1] = lo_, hi_
    else:
        srt = list(np.moveaxis(np.sort(np.moveaxis(x, 0, -1), axis=-1), -1, 0))
    lo_i, hi_i = np.maximum((n - 1) // 2, 0), n // 2
    lo, hi = srt[0].copy(), srt[0].copy()
    for k in range(1, t):
        np.copyto(lo, srt[k], where=(lo_i == k)[None])
        np.copyto(hi, srt[k], where=(hi_i == k)[None])
    med = np.where(n > 0, (lo + hi) * np.float32(0.5), np.float32(np.nan))
    return np.concatenate([med, n[None].astype(np.float32)], axis=0)


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


def _optical_block(refl: np.ndarray, scl: np.ndarray, scaling: np.ndarray) -> np.ndarray:
    refl = decode(refl, scaling)
    valid = S.scl_valid(scl[:, 0])
    comp = composite(refl, valid)
    return np.concatenate([comp[:6], spectral_indices(comp[:6]), comp[6:]])


def _sar_block(power: np.ndarray) -> np.ndarray:
    valid = np.all(power > 0, axis=1)
    comp = composite(power, valid)
    return np.concatenate([to_db(comp[:2]), temporal_cv(power[:, :1], valid), comp[2:]])


def _thermal_block(lwir: np.ndarray, qa: np.ndarray, scaling: np.ndarray) -> np.ndarray:
    lwir = decode(lwir, scaling)
    return composite(lwir, S.landsat_qa_valid(qa[:, 0]))


# --------------------------------------------------------------------------- the Dask wiring


def _stack(items: Sequence[pystac.Item], sensor: S.Sensor, keys: list[str], geobox: GeoBox, chunks,
           signer: str | None, dtype: str = "float32") -> xr.DataArray:
    """One stackstac stack of some assets of some items, exactly on `geobox`.

    float32 stacks are NaN-filled; uint16 stacks (stored DNs, decoded in the block functions) are
    filled with 0, the no-data DN of Sentinel-2, SCL and Landsat ST (for QA_PIXEL 0 is "clear"
    but is never filled: a QA pixel outside the scene comes back as fill, bit 0).
    """
    resampling = {sensor.band(k).resampling for k in keys}
    if len(resampling) != 1:
        raise ValueError(f"one stack needs one resampling; {sensor.name} {keys} have {sorted(resampling)}")
    b = geobox.boundingbox
    arr = stackstac.stack(
        [i.to_dict(transform_hrefs=False) for i in items], assets=keys, epsg=geobox.crs.epsg,
        resolution=abs(geobox.resolution.x),
        bounds=(b.left, b.bottom, b.right, b.top), snap_bounds=False, xy_coords="center",
        resampling=Resampling[resampling.pop()], chunksize=chunks, dtype=np.dtype(dtype),
        fill_value=NAN if dtype == "float32" else np.dtype(dtype).type(FILL_DN[keys[0]]),
        rescale=False, sortby_date=False, properties=False, band_coords=False,
        reader=functools.partial(CogReader, signer=signer), gdal_env=GDAL_ENV,
    )
    if arr.shape[-2:] != geobox.shape:
        raise RuntimeError(f"stack shape {arr.shape[-2:]} does not match the grid {tuple(geobox.shape)}")
    return arr


def _scaling(sensor: S.Sensor, items: Sequence[pystac.Item], keys: Sequence[str]) -> np.ndarray:
    """(time, band, 2) scale/offset per item and asset, from the item (or the sensor's default)."""
    return np.array([[sensor.scaling(it, k) for k in keys] for it in items], dtype=np.float64)


def _full_time(arr: xr.DataArray) -> da.Array:
    return arr.data.rechunk({0: -1, 1: -1})


def _sensor_features(sensor: S.Sensor, items: Sequence[pystac.Item], geobox: GeoBox, chunks,
                     signer: str | None) -> da.Array:
    """(k, y, x) dask array of one sensor's features."""
    res = abs(geobox.resolution.x)
    out_chunks = ((len(SENSOR_FEATURES[sensor.name]),), *chunks)
    if sensor.name == "sentinel-2":
        refl = _stack(items, sensor, [b.key for b in sensor.data_bands], geobox, chunks, signer, "uint16")
        scl = _stack(items, sensor, ["SCL"], geobox, chunks, signer, "uint16")
        block = functools.partial(_optical_block, scaling=_scaling(sensor, items, refl.band.values))
        return da.map_blocks(block, _full_time(refl), _full_time(scl), drop_axis=[0],
                             chunks=out_chunks, dtype=np.float32, name="s2-composite")
    if sensor.name == "sentinel-1":
        power = _stack(items, sensor, ["vv", "vh"], geobox, chunks, signer)
        return da.map_blocks(_sar_block, _full_time(power), drop_axis=[0], chunks=out_chunks,
                             dtype=np.float32, name="s1-composite")
    if sensor.name == "landsat":
        lwir = _stack(items, sensor, ["lwir11"], geobox, chunks, signer, "uint16")
        qa = _stack(items, sensor, ["qa_pixel"], geobox, chunks, signer, "uint16")
        block = functools.partial(_thermal_block, scaling=_scaling(sensor, items, ["lwir11"]))
        return da.map_blocks(block, _full_time(lwir), _full_time(qa), drop_axis=[0],
                             chunks=out_chunks, dtype=np.float32, name="landsat-composite")
    if sensor.name == "copdem":
        dem = _stack(items, sensor, ["data"], geobox, chunks, signer)
        # several DEM tiles: first valid wins; one tile needs no mosaic pass
        elev = dem.data[0, 0] if len(items) == 1 else stackstac.mosaic(dem, dim="time").sel(band="data").data
        feats = da.map_overlap(lambda z: terrain(z, res), elev, depth=1, boundary="nearest", trim=False,
                               new_axis=[0], chunks=((4,), *chunks), dtype=np.float32, name="terrain",
                               allow_rechunk=False)
        return da.concatenate([elev[None], feats], axis=0)
    raise ValueError(f"no feature recipe for sensor {sensor.name!r}")


def build(items: SearchResult | Mapping[str, Sequence[pystac.Item]], geobox: GeoBox, year: int | None = None, *,
          sensors: Sequence[str] | None = None, tile_px: int = TILE_PX, signer: str | None = None) -> xr.DataArray:
    """A lazy (feature, y, x) float32 cube for one year on `geobox`, chunked on the global tile grid.

    `items` is a `SearchResult` (then `year` picks the year) or a mapping sensor name -> items already
    chosen. A sensor without items gives NaN features and a zero count, and is listed in the
    `missing_sensors` attribute. Reads no pixels.
    """
    global_origin(geobox)  # refuses a geobox off the global lattice
    if isinstance(items, SearchResult):
        if year is None:
            raise ValueError("build(SearchResult, ...) needs the year to build")
        signer = signer or items.signer
        by_sensor = items.for_year(year)
    else:
        by_sensor = dict(items)
    wanted = S.resolve(list(sensors) if sensors is not None else list(SENSOR_FEATURES))
    for name in by_sensor:
        S.get(name)
    chunks = tile_chunks(geobox, tile_px)
    blocks, missing, provenance = [], [], {}
    for sensor in wanted:
        its = list(by_sensor.get(sensor.name, []))
        k = len(SENSOR_FEATURES[sensor.name])
        if not its:
            missing.append(sensor.name)
            arr = da.full((k, *geobox.shape), NAN, chunks=((k,), *chunks), dtype=np.float32)
            if sensor.name != "copdem":
                arr = da.concatenate([arr[:-1], da.zeros((1, *geobox.shape), chunks=((1,), *chunks),
                                                         dtype=np.float32)])
            blocks.append(arr)
            continue
        _check_items(sensor, its, year)
        blocks.append(_sensor_features(sensor, its, geobox, chunks, signer))
        provenance[sensor.name] = [i.id for i in its]
    data = da.concatenate(blocks, axis=0).rechunk({0: -1})
    names = [f for s in wanted for f in SENSOR_FEATURES[s.name]]
    y, x = pixel_centres(geobox)
    cube = xr.DataArray(
        data, dims=("feature", "y", "x"), coords={"feature": names, "y": y, "x": x}, name="features",
        attrs={
            "year": -1 if year is None else int(year),
            "sensors": [s.name for s in wanted if s.name not in missing],
            "missing_sensors": missing,
            "items": {k: ",".join(v) for k, v in provenance.items()},  # ids, never URLs
            "tile_px": tile_px,
        },
    )
    cube = cube.rio.write_crs(geobox.crs.to_wkt()).rio.write_transform(geobox.affine)
    if missing:
        log.warning("cube %s: no items for %s; their features are NaN and counts 0", year, ", ".join(missing))
    return cube


def _check_items(sensor: S.Sensor, items: Sequence[pystac.Item], year: int | None) -> None:
    for it in items:
        absent = [k for k in sensor.asset_keys() if k not in it.assets]
        if absent:
            raise ValueError(f"{sensor.name} item {it.id} (year {year}) lacks asset(s) {absent}; "
                             f"it has {sorted(it.assets)}")
        first = it.assets[sensor.asset_keys()[0]].extra_fields
        if it.properties.get("proj:epsg") is None and first.get("proj:epsg") is None:
            raise ValueError(f"{sensor.name} item {it.id} has no proj:epsg/proj:code; normalise it with "
                             "catalog.normalise_item first")
