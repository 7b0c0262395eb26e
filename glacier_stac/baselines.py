"""The band-ratio baseline: NDSI threshold, the classic semi-automatic glacier mapping method.

Clean ice and snow have a high NDSI = (green - SWIR) / (green + SWIR); so does water, which the NIR
check removes (water is dark in NIR, ice is bright). Debris-covered ice looks like rock to a band
ratio, so this baseline never predicts it (nor rock glaciers: its classes are the four
base ones) — that is the gap the learned models close. The output has
the same structure as `infer.predict`, so the same evaluation and OBIA code runs on both.

An "optical-only" learned model needs nothing here: it is a checkpoint whose feature list holds only
optical features, and `infer.predict` picks features from the cube by name.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr

from glacier_stac.infer import prediction_dataset
from glacier_stac.labels import BASE_CLASSES, Label

NDSI_THRESHOLD = 0.4
NIR_MIN = 0.11  # B08 reflectance: water below, snow and ice above
NDWI_WATER = 0.3  # McFeeters NDWI (green - NIR) / (green + NIR) above this is open water


def _index(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a - b) / (a + b)


def ndsi_block(b03: np.ndarray, b08: np.ndarray, b11: np.ndarray, *, threshold: float = NDSI_THRESHOLD,
               nir_min: float | None = NIR_MIN, ndwi_water: float | None = NDWI_WATER) -> np.ndarray:
    """One-hot probabilities (4, y, x) float32 from green, NIR and SWIR reflectance; NaN where missing."""
    ndsi = _index(b03, b11)
    ndwi = _index(b03, b08)
    ok = np.isfinite(ndsi) & np.isfinite(ndwi)
    ice = ndsi > threshold
    if nir_min is not None:
        ice &= b08 > nir_min
    water = ~ice & (ndwi > ndwi_water) if ndwi_water is not None else np.zeros_like(ice)
    klass = np.full(ok.shape, Label.BACKGROUND, dtype=np.uint8)
    klass[ice] = Label.CLEAN_ICE
    klass[water] = Label.WATER
    prob = (np.arange(len(BASE_CLASSES))[:, None, None] == klass[None]).astype(np.float32)
    prob[:, ~ok] = np.nan
    return prob


def ndsi_threshold(cube: xr.DataArray, *, threshold: float = NDSI_THRESHOLD, nir_min: float | None = NIR_MIN,
                   ndwi_water: float | None = NDWI_WATER) -> xr.Dataset:
    """Lazy NDSI-threshold classification of a (feature, y, x) cube with B03, B08 and B11.

    `nir_min=None` drops the NIR check (plain NDSI > threshold, which also flags water as ice).
    """
    names = [str(f) for f in cube["feature"].values] if "feature" in cube.coords else []
    missing = [b for b in ("B03", "B08", "B11") if b not in names]
    if missing:
        raise ValueError(f"the NDSI baseline needs features {missing} that the cube does not have ({names})")
    bands = cube.sel(feature=["B03", "B08", "B11"]).transpose("feature", "y", "x").data
    if not isinstance(bands, da.Array):
        bands = da.from_array(bands, chunks=(-1, 1024, 1024))
    bands = bands.astype(np.float32).rechunk({0: -1})
    prob = da.map_blocks(
        lambda b: ndsi_block(b[0], b[1], b[2], threshold=threshold, nir_min=nir_min, ndwi_water=ndwi_water),
        bands, dtype=np.float32, chunks=((len(BASE_CLASSES),), *bands.chunks[1:]), token="ndsi-threshold",
    )
    return prediction_dataset(prob, cube, BASE_CLASSES, {"model": "ndsi-threshold", "threshold": threshold,
                                                    "nir_min": -1.0 if nir_min is None else nir_min})
