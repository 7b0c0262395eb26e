"""Truth outlines: one polygon per glacier per year, vectorised from the world's rasters.

They are what a perfect mapper would output, so areas equal the pixel counts exactly (polygons
follow pixel edges) and the change between years is known per glacier.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio.features
from shapely.geometry import shape
from shapely.ops import unary_union

from glacier_stac.synthetic.world import Surface, World

COLUMNS = ["year", "glacier_id", "area_m2", "clean_area_m2", "debris_area_m2", "calving", "geometry"]
ROCK_GLACIER_COLUMNS = ["year", "rock_glacier_id", "area_m2", "primeclass", "geometry"]
ROCK_GLACIER_CLASS = "rock_glacier"  # `primeclass` of their rows (RGI 7 keeps them out of its glaciers)


def outlines(world: World, year: int) -> gpd.GeoDataFrame:
    """Glacier outlines of one year (valid polygons in the world's UTM CRS)."""
    if year not in world.glacier_id:
        raise ValueError(f"year {year} is not in this world; it has {list(world.years)}")
    ids = world.glacier_id[year].astype(np.int32)
    surf = world.surface[year]
    px = abs(world.geobox.resolution.x * world.geobox.resolution.y)
    transform = world.geobox.affine
    calving = _calving_ids(ids, surf)
    pieces: dict[int, list] = {}
    for geom, value in rasterio.features.shapes(ids, mask=ids > 0, connectivity=4, transform=transform):
        pieces.setdefault(int(value), []).append(shape(geom))
    gids = np.array(sorted(pieces), dtype=np.int64)
    counts = np.bincount(ids.ravel(), minlength=int(ids.max()) + 1)
    debris = np.bincount(ids[surf == Surface.DEBRIS], minlength=counts.size)
    rows = []
    for g in gids.tolist():
        geom = unary_union(pieces[g])
        if not geom.is_valid:
            geom = geom.buffer(0)
        rows.append({
            "year": int(year),
            "glacier_id": int(g),
            "area_m2": float(counts[g] * px),
            "clean_area_m2": float((counts[g] - debris[g]) * px),
            "debris_area_m2": float(debris[g] * px),
            "calving": bool(g in calving),
            "geometry": geom,
        })
    if not rows:
        return gpd.GeoDataFrame({c: [] for c in COLUMNS}, geometry="geometry", crs=str(world.geobox.crs))
    return gpd.GeoDataFrame(rows, columns=COLUMNS, geometry="geometry", crs=str(world.geobox.crs))


def outlines_all_years(world: World) -> gpd.GeoDataFrame:
    """Outlines of every year of the world, one row per glacier per year."""
    frames = [outlines(world, y) for y in world.years]
    out = pd.concat(frames, ignore_index=True)
    return gpd.GeoDataFrame(out, geometry="geometry", crs=str(world.geobox.crs))


def area_changes(outlines_gdf: gpd.GeoDataFrame) -> pd.DataFrame:
    """Per glacier and year: area and its change since the previous year (0 when a glacier is gone).

    The truth of a change inventory: ids are stable across years, so the change is a plain difference.
    """
    if outlines_gdf.empty:
        return pd.DataFrame(columns=["glacier_id", "year", "area_m2", "change_m2", "change_frac"])
    area = outlines_gdf.pivot_table(index="glacier_id", columns="year", values="area_m2", aggfunc="sum")
    area = area.fillna(0.0)
    out = area.reset_index().melt(id_vars="glacier_id", var_name="year", value_name="area_m2")
    out = out.sort_values(["glacier_id", "year"], ignore_index=True)
    prev = out.groupby("glacier_id")["area_m2"].shift(1)
    out["change_m2"] = out["area_m2"] - prev
    out["change_frac"] = out["change_m2"] / prev.where(prev > 0)
    out["year"] = out["year"].astype(int)
    return out


def _calving_ids(ids: np.ndarray, surf: np.ndarray) -> set[int]:
    from scipy import ndimage

    water = np.isin(surf, (Surface.SEA, Surface.SEA_ICE))
    near = ndimage.binary_dilation(water, structure=np.ones((3, 3), bool))
    return {int(g) for g in np.unique(ids[near & (ids > 0)])}


def rock_glacier_outlines(world: World) -> gpd.GeoDataFrame | None:
    """Rock glacier outlines of every year (their own table: they are never glacier area), or None when
    the world has none. They creep a few decimetres a year, so their outlines are the same each year."""
    ids = world.rock_glacier_id
    if ids is None or not ids.any():
        return None
    ids = ids.astype(np.int32)
    px = abs(world.geobox.resolution.x * world.geobox.resolution.y)
    pieces: dict[int, list] = {}
    for geom, value in rasterio.features.shapes(ids, mask=ids > 0, connectivity=4, transform=world.geobox.affine):
        pieces.setdefault(int(value), []).append(shape(geom))
    counts = np.bincount(ids.ravel())
    rows = []
    for year in world.years:
        for g in sorted(pieces):
            geom = unary_union(pieces[g])
            rows.append({"year": int(year), "rock_glacier_id": int(g), "area_m2": float(counts[g] * px),
                         "primeclass": ROCK_GLACIER_CLASS, "geometry": geom if geom.is_valid else geom.buffer(0)})
    return gpd.GeoDataFrame(rows, columns=ROCK_GLACIER_COLUMNS, geometry="geometry", crs=str(world.geobox.crs))
