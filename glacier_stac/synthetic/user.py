"""A `World` from a user's own DEM and glacier outlines, so the renderer can draw a real place.

The physics is deliberately simple (it is a test bed, not a glacier model): snow above each
glacier's median elevation (a stand-in for the ELA), debris on the lowest quarter of large glaciers,
and terminus retreat from the lowest elevations year after year, so truth exists for every year.
With a class column, polygons whose class names a rock glacier (`labels.ROCK_GLACIER_NAMES`) are drawn
as rock glaciers: no glacier id, the same outline every year, seen as the renderer sees them (scree in
optics, cooler than rock in the thermal, a yearly radar texture); the DEM is the user's own.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from odc.geo.geobox import GeoBox
from scipy import ndimage

from glacier_stac.grid import utm_crs, valid_outlines
from glacier_stac.synthetic.world import Surface, World, WorldConfig

LARGE_GLACIER_M2 = 1.0e6  # glaciers above this get a debris-covered tongue
MAX_PIXELS = 6000  # per side; a bigger DEM would not fit a quick synthetic render


# Values DEM producers write into holes without declaring them as no-data (GDAL/ArcGIS -9999, SRTM/ASTER
# -32767/-32768, float32 lowest): read as heights they would be a deep sea in the middle of the mountains.
UNTAGGED_NODATA = (-9999.0, -32767.0, -32768.0, float(np.finfo(np.float32).min))
LOWEST_EARTH_M = -11000.0  # below the deepest ocean: never a height


def _check_years(years: Sequence[int]) -> tuple[int, ...]:
    from glacier_stac.catalog import check_years

    return tuple(check_years(int(y) for y in years))


def read_dem(dem_path: str | Path, resolution: float = 10.0) -> tuple[GeoBox, np.ndarray]:
    """The DEM reprojected (bilinear) onto a north-up UTM grid of its centre's zone; holes filled."""
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.warp import Resampling, reproject, transform_bounds

    path = Path(dem_path)
    if not path.exists():
        raise FileNotFoundError(f"DEM file not found: {path}")
    try:
        src = rasterio.open(path)
    except RasterioIOError as e:
        raise ValueError(f"cannot read DEM {path} as a raster: {e}") from None
    with src:
        if src.crs is None:
            raise ValueError(f"DEM {path} has no CRS; georeference it first (e.g. gdal_edit.py -a_srs)")
        lon0, lat0, lon1, lat1 = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        epsg = utm_crs((lon0 + lon1) / 2, (lat0 + lat1) / 2).epsg
        left, bottom, right, top = transform_bounds(src.crs, f"EPSG:{epsg}", *src.bounds)
        # Stay inside the source footprint so the grid has no empty margin.
        bbox = (
            math.ceil(left / resolution) * resolution,
            math.ceil(bottom / resolution) * resolution,
            math.floor(right / resolution) * resolution,
            math.floor(top / resolution) * resolution,
        )
        if bbox[2] <= bbox[0] or bbox[3] <= bbox[1]:
            raise ValueError(f"DEM {path} is smaller than one {resolution} m pixel")
        geobox = GeoBox.from_bbox(bbox, f"EPSG:{epsg}", resolution=resolution)
        h, w = geobox.shape.y, geobox.shape.x
        if max(h, w) > MAX_PIXELS:
            raise ValueError(
                f"DEM {path} covers {w * resolution / 1000:.0f} x {h * resolution / 1000:.0f} km; "
                f"crop it to at most {MAX_PIXELS * resolution / 1000:.0f} km a side"
            )
        dst = np.full((h, w), np.nan, dtype=np.float32)
        band = rasterio.band(src, 1)
        untagged = None
        if src.nodata is None:  # undeclared holes: masked here, or bilinear would blend them into the slopes
            raw = src.read(1, masked=False).astype(np.float64)
            holes = np.isin(raw, UNTAGGED_NODATA) | (raw < LOWEST_EARTH_M)
            if holes.any():
                untagged = int(holes.sum())
                band = np.where(holes, np.nan, raw).astype(np.float32)
        reproject(
            band,
            dst,
            dst_transform=geobox.affine,
            dst_crs=f"EPSG:{epsg}",
            dst_nodata=np.nan,
            resampling=Resampling.bilinear,
            **({} if untagged is None else {"src_transform": src.transform, "src_crs": src.crs,
                                            "src_nodata": np.nan}),
        )
    if untagged:
        logging.getLogger(__name__).warning(
            "DEM %s declares no no-data value; %d pixels of %s (or below %g m) treated as holes and filled",
            path, untagged, "/".join(f"{v:g}" for v in UNTAGGED_NODATA[:3]), LOWEST_EARTH_M)
    holes = ~np.isfinite(dst)
    if holes.all():
        raise ValueError(f"DEM {path} has no valid elevation")
    if holes.any():  # nearest valid neighbour, so renders never see NaN
        idx = ndimage.distance_transform_edt(holes, return_distances=False, return_indices=True)
        dst = dst[tuple(idx)]
    return geobox, dst


def read_outlines(outlines_path: str | Path, geobox: GeoBox) -> list:
    """Glacier polygons in the grid's CRS, clipped to the grid, largest first."""
    return [g for g, _ in read_classed_outlines(outlines_path, geobox)]


def read_classed_outlines(outlines_path: str | Path, geobox: GeoBox,
                          class_column: str | None = None) -> list[tuple[object, bool]]:
    """(polygon, is_rock_glacier) in the grid's CRS, clipped to the grid, largest first.

    Without `class_column` every polygon is a glacier."""
    import geopandas as gpd
    from shapely.geometry import box

    from glacier_stac.labels import ROCK_GLACIER_NAMES

    path = Path(outlines_path)
    if not path.exists():
        raise FileNotFoundError(f"outlines file not found: {path}")
    try:
        gdf = gpd.read_file(path)
    except Exception as e:  # fiona/pyogrio raise several types for unreadable files
        raise ValueError(f"cannot read glacier outlines {path}: {e}") from None
    if gdf.empty:
        raise ValueError(f"glacier outlines {path} hold no features")
    if gdf.crs is None:
        raise ValueError(f"glacier outlines {path} have no CRS; set one (e.g. EPSG:4326)")
    gdf = gdf[gdf.geometry.notna() & gdf.geom_type.isin(["Polygon", "MultiPolygon"])]
    if gdf.empty:
        raise ValueError(f"glacier outlines {path} hold no polygons")
    if class_column is not None and class_column not in gdf.columns:
        raise ValueError(f"glacier outlines {path} have no class column {class_column!r}; "
                         f"columns: {[c for c in gdf.columns if c != gdf.geometry.name]}")
    gdf = valid_outlines(gdf, f"glacier outlines {path}")  # repaired like search and tiles do, or refused
    rock = (gdf[class_column].astype(str).str.strip().str.lower().isin(ROCK_GLACIER_NAMES).to_numpy()
            if class_column is not None else np.zeros(len(gdf), dtype=bool))
    frame = box(*geobox.boundingbox)
    geoms = [(g.intersection(frame), bool(r)) for g, r in zip(gdf.to_crs(geobox.crs.to_wkt()).geometry, rock,
                                                                strict=True)]
    geoms = [(g, r) for g, r in geoms if not g.is_empty and g.area > 0]
    if not geoms:
        raise ValueError(f"glacier outlines {path} do not overlap the DEM")
    return sorted(geoms, key=lambda gr: -gr[0].area)


def _classify(z: np.ndarray, gid: np.ndarray, ids: Sequence[int], res: float, base: np.ndarray) -> np.ndarray:
    """Surface of one year: background, then snow above each glacier's median height, debris tongues."""
    surface = base.copy()
    flat = gid.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = (
        np.searchsorted(flat[order], np.asarray(ids), side="left"),
        np.searchsorted(flat[order], np.asarray(ids), side="right"),
    )
    zf = z.ravel()
    sf = surface.ravel()
    for lo, hi in zip(*bounds, strict=True):
        pix = order[lo:hi]
        if pix.size == 0:
            continue
        zg = zf[pix]
        sf[pix] = Surface.ICE
        sf[pix[zg >= np.median(zg)]] = Surface.SNOW
        if pix.size * res * res >= LARGE_GLACIER_M2:
            sf[pix[zg <= np.quantile(zg, 0.25)]] = Surface.DEBRIS
    return surface


def _background(z: np.ndarray, res: float, rng: np.random.Generator) -> np.ndarray:
    """Off-glacier surface: sea below 0 m, vegetation low down, scree on steep slopes, rock elsewhere."""
    gy, gx = np.gradient(z, res)
    slope = np.degrees(np.arctan(np.hypot(gx, gy)))
    s = np.full(z.shape, Surface.ROCK, dtype=np.uint8)
    land = z > 0
    veg_line = np.quantile(z[land], 0.2) if land.any() else 0.0
    noise = rng.normal(0, 1, z.shape).astype(np.float32)
    s[(slope > 28 + 4 * noise) & (slope < 38)] = Surface.SCREE
    s[land & (z < veg_line) & (slope < 30)] = Surface.VEGETATION
    s[~land] = Surface.SEA
    return s


def from_user(
    dem_path: str | Path,
    outlines_path: str | Path,
    years: Sequence[int],
    seed: int = 0,
    resolution: float = 10.0,
    difficulty: str = "hard",
    area_loss_per_year: tuple[float, float] = (0.02, 0.04),
    regime: str = "maritime",
    class_column: str | None = None,
) -> World:
    """A World on the UTM grid of the user's DEM with their glaciers, retreating over `years`.

    `regime` is the climate the sensors see (thermal lapse rate, season, SAR polarisations, sea ice);
    the terrain and glaciers are the user's own. `class_column`: the outlines' column whose rock glacier
    values (`labels.ROCK_GLACIER_NAMES`) make a polygon a rock glacier instead of a glacier."""
    from rasterio import features

    ys = _check_years(years)
    geobox, z = read_dem(dem_path, resolution)
    classed = read_classed_outlines(outlines_path, geobox, class_column)
    geoms = [g for g, rock in classed if not rock]
    rock_geoms = [g for g, rock in classed if rock]
    h, w = z.shape
    lon, lat = (float(v) for v in geobox.extent.centroid.to_crs("EPSG:4326").coords[0])
    config = WorldConfig(
        seed=seed,
        size_km=max(h, w) * resolution / 1000.0,
        resolution=resolution,
        center_lon=lon,
        center_lat=lat,
        years=ys,
        area_loss_per_year=area_loss_per_year,
        difficulty=difficulty,
        regime=regime,
    )
    gid0 = features.rasterize(
        [(g, i + 1) for i, g in enumerate(geoms)],
        out_shape=(h, w),
        transform=geobox.affine,
        fill=0,
        dtype="int32",
    ) if geoms else np.zeros((h, w), dtype=np.int32)
    ids = [i for i in range(1, len(geoms) + 1) if (gid0 == i).any()]
    rock_ids = features.rasterize(
        [(g, i + 1) for i, g in enumerate(rock_geoms)], out_shape=(h, w), transform=geobox.affine, fill=0,
        dtype="int32") if rock_geoms else None
    if rock_ids is not None:
        rock_ids[gid0 > 0] = 0  # a glacier drawn over a rock glacier outline stays a glacier
    if not ids and (rock_ids is None or not rock_ids.any()):
        raise ValueError(f"glacier outlines {outlines_path} are smaller than one {resolution} m pixel")
    rng = np.random.default_rng([seed, 7])
    base = _background(z, resolution, rng)
    sea = base == Surface.SEA
    calving = tuple(i for i in ids if (ndimage.binary_dilation(gid0 == i, iterations=2) & sea).any())
    loss = {i: rng.uniform(*area_loss_per_year) for i in ids}
    world = World(config=config, geobox=geobox, elevation=z, calving_ids=calving,
                  rock_glacier_id=rock_ids if rock_ids is not None and rock_ids.any() else None)
    gid = gid0.copy()
    for k, year in enumerate(ys):
        if k > 0:
            gid = _retreat(gid, z, ids, loss)
        surface = _classify(z, gid, ids, resolution, base)
        surface[gid == 0] = base[gid == 0]
        if world.rock_glacier_id is not None:
            surface[world.rock_glacier_id > 0] = Surface.ROCK_GLACIER
        for i in calving:  # ice melange in the sea right in front of the calving front
            near = ndimage.binary_dilation(gid == i, iterations=int(300 / resolution)) & sea
            surface[near & (rng.uniform(size=z.shape) < 0.6)] = Surface.SEA_ICE
        world.surface[year] = surface
        world.glacier_id[year] = gid.copy()
        dist = ndimage.distance_transform_edt(gid > 0) * resolution
        world.ice_thickness[year] = (np.sqrt(dist) * 4.0).astype(np.float32)
    return world


def _retreat(gid: np.ndarray, z: np.ndarray, ids: Sequence[int], loss: dict[int, float]) -> np.ndarray:
    """Remove each glacier's lowest pixels so its area shrinks by its yearly loss fraction."""
    out = gid.copy()
    for i in ids:
        pix = np.flatnonzero(out.ravel() == i)
        n_drop = int(round(pix.size * loss[i]))
        if n_drop <= 0 or n_drop >= pix.size:
            continue
        lowest = pix[np.argsort(z.ravel()[pix], kind="stable")[:n_drop]]
        out.ravel()[lowest] = 0
    return out
