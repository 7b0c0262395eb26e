"""Predictions with known errors: a world's truth labels turned into the store's (year, y, x) Dataset,
with the mistakes the CNN makes on held-out worlds (isolated "debris" blobs on bare rock far from any ice,
salt noise), so OBIA and the inventory can be tested against the truth without training a model.

Also the cube features the OBIA rules read (elevation, slope, aspect, a thermal band in which glacier ice
is colder than bare ground at the same elevation), drawn from the world's DEM.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from scipy import ndimage

from glacier_stac.labels import CLASSES_VAR, NODATA_CLASS, PROBABILITY, VALID, Label
from glacier_stac.synthetic.world import World


@dataclass(frozen=True)
class Noise:
    """The errors drawn into a fake prediction (per year, from `seed` and the year)."""

    seed: int = 0
    blobs: int = 4  # isolated debris blobs on bare ground, each `blob_px` square
    blob_px: int = 14  # 14 x 14 px = 0.0196 km² at 10 m: above the MMU, so only a rule removes them
    blob_clearance_px: int = 25  # blobs are at least this far from any glacier
    salt: float = 0.005  # fraction of pixels whose glacier/background class is flipped
    nodata_rows: int = 0  # rows of no data at the top (valid False, NaN, 255)


def _blobs(glacier: np.ndarray, water: np.ndarray, noise: Noise, rng: np.random.Generator) -> list[tuple[int, int]]:
    far = ~ndimage.binary_dilation(glacier | water, iterations=noise.blob_clearance_px)
    h, w = glacier.shape
    s = noise.blob_px
    placed: list[tuple[int, int]] = []
    for _ in range(2000):
        if len(placed) == noise.blobs:
            break
        r, c = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
        if far[r:r + s, c:c + s].all() and all(abs(r - r0) > 2 * s or abs(c - c0) > 2 * s for r0, c0 in placed):
            placed.append((r, c))
    return placed


def labels_with_errors(world: World, year: int, noise: Noise) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The truth labels of `year` with spurious debris blobs and salt noise; also the blobs' corners."""
    rng = np.random.default_rng([noise.seed, year])
    truth = world.labels(year)
    glacier = np.isin(truth, (Label.CLEAN_ICE, Label.DEBRIS_ICE))
    out = truth.copy()
    blobs = _blobs(glacier, truth == Label.WATER, noise, rng)
    for r, c in blobs:
        out[r:r + noise.blob_px, c:c + noise.blob_px] = Label.DEBRIS_ICE
    flip = rng.random(out.shape) < noise.salt
    is_glacier = np.isin(out, (Label.CLEAN_ICE, Label.DEBRIS_ICE))
    out[flip & is_glacier] = Label.BACKGROUND
    out[flip & (out == Label.BACKGROUND) & ~is_glacier] = Label.CLEAN_ICE
    return out, blobs


def predictions(world: World, years: tuple[int, ...] | None = None, noise: Noise = Noise(),
                chunks: int | tuple[int, int] | None = None) -> xr.Dataset:
    """The store's prediction Dataset (year, y, x) for a world: glacier probability, classes, valid, CRS."""
    years = tuple(years or world.years)
    probs, klass, valid = [], [], []
    for year in years:
        lab, _ = labels_with_errors(world, year, noise)
        rng = np.random.default_rng([noise.seed, year, 1])
        glacier = np.isin(lab, (Label.CLEAN_ICE, Label.DEBRIS_ICE))
        p = np.where(glacier, 0.85, 0.1).astype(np.float32) + rng.uniform(-0.08, 0.08, lab.shape).astype(np.float32)
        ok = np.ones(lab.shape, bool)
        ok[:noise.nodata_rows] = False
        probs.append(np.where(ok, p, np.nan).astype(np.float32))
        klass.append(np.where(ok, lab, NODATA_CLASS).astype(np.uint8))
        valid.append(ok)
    gb = world.geobox
    coords = {"year": list(years), "y": gb.coordinates["y"].values, "x": gb.coordinates["x"].values}
    dims = ("year", "y", "x")
    ds = xr.Dataset({PROBABILITY: (dims, np.stack(probs)), CLASSES_VAR: (dims, np.stack(klass)),
                     VALID: (dims, np.stack(valid))}, coords=coords)
    ds = ds.rio.write_crs(gb.crs.to_wkt())
    if chunks is not None:
        cy, cx = (chunks, chunks) if isinstance(chunks, int) else chunks
        ds = ds.chunk({"year": 1, "y": cy, "x": cx})
    return ds


def features(world: World, year: int, seed: int = 0) -> xr.DataArray:
    """Cube-like features (elevation, slope, aspect sin/cos, lwir11) for one year on the world's grid.

    Surface temperature falls 6.5 K/km with elevation; glacier ice (debris-covered too) is 4 K colder
    than bare ground at its elevation, as Landsat sees it.
    """
    from glacier_stac.cube import terrain

    gb = world.geobox
    elev = world.elevation.astype(np.float32)
    slope, asin, acos, _ = terrain(np.pad(elev, 1, mode="edge"), abs(gb.resolution.x))
    rng = np.random.default_rng([seed, year, 2])
    on_ice = world.glacier_id[year] > 0
    lwir = (285.0 - 0.0065 * elev - 4.0 * on_ice + rng.normal(0, 0.5, elev.shape)).astype(np.float32)
    data = np.stack([elev, slope, asin, acos, lwir]).astype(np.float32)
    da = xr.DataArray(data, dims=("feature", "y", "x"),
                      coords={"feature": ["elevation", "slope", "aspect_sin", "aspect_cos", "lwir11"],
                              "y": gb.coordinates["y"].values, "x": gb.coordinates["x"].values},
                      attrs={"items": {"copdem": "synthetic-dem", "landsat": f"synthetic-lwir-{year}"}})
    return da.rio.write_crs(gb.crs.to_wkt())
