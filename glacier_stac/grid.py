"""The one grid type (odc-geo `GeoBox`), the fixed global tile grid, and halo windows.

Every cube, prediction and store is on a `GeoBox` in the UTM zone of its AOI at 10 m whose pixel edges
sit on multiples of the resolution counted from the UTM origin (x = 0, y = 0). Tiles are fixed blocks
of that pixel lattice (`GridSpec` anchored at the origin), so the same place always falls in the same
tile and pixel, whichever AOI asked for it; Dask chunks are cut on tile edges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from odc.geo import XY, geom
from odc.geo.crs import CRS
from odc.geo.geobox import GeoBox
from odc.geo.gridspec import GridSpec

RESOLUTION = 10.0
TILE_PX = 1024


def utm_crs(lon: float, lat: float) -> CRS:
    """The WGS84 UTM zone of a point (EPSG:326zz north, 327zz south)."""
    if not (-80.0 <= lat <= 84.0):
        raise ValueError(
            f"latitude {lat:.3f} is outside the UTM domain (80°S-84°N); polar AOIs need a polar "
            "stereographic grid, which glacier_stac does not support yet"
        )
    zone = min(int((lon + 180.0) // 6.0) + 1, 60)
    return CRS(f"EPSG:{(32600 if lat >= 0 else 32700) + zone}")


def tile_grid(crs: CRS | str, resolution: float = RESOLUTION, tile_px: int = TILE_PX) -> GridSpec:
    """The global tile grid of one CRS: `tile_px` square tiles anchored at the CRS origin."""
    return GridSpec(CRS(crs) if isinstance(crs, str) else crs, tile_shape=(tile_px, tile_px),
                    resolution=resolution, origin=XY(0.0, 0.0))


def geobox_for(
    aoi: geom.Geometry, resolution: float = RESOLUTION, crs: CRS | None = None
) -> GeoBox:
    """The GeoBox covering an AOI in its UTM zone, pixel edges snapped to the global lattice.

    `aoi` may be in any CRS; the zone is that of the AOI's centroid in lon/lat unless `crs` is given.
    """
    if aoi.is_empty:
        raise ValueError("AOI geometry is empty")
    if crs is None:
        c = aoi.to_crs("EPSG:4326").centroid.coords[0]
        crs = utm_crs(c[0], c[1])
    area = aoi.to_crs(crs)
    # from_bbox with an anchor at 0 snaps edges to whole pixels of the global lattice.
    return GeoBox.from_bbox(area.boundingbox, crs=crs, resolution=resolution, anchor=XY(0.0, 0.0))


def lattice_index(centres: np.ndarray | list[float], res: float, *, descending: bool = False,
                  what: str = "grid") -> int:
    """Global lattice index of the first of `centres` (pixel-centre coordinates along one axis).

    The global index of a pixel is floor(edge / res) with the edge on the side of increasing index,
    i.e. round(x / res - 0.5) for columns and round(-y / res - 0.5) for north-up rows (`descending`).
    Every centre must sit on the lattice, else the grid was not built with `geobox_for`.
    """
    c = np.asarray(centres, dtype=np.float64)
    g = (-1.0 if descending else 1.0) * c / res - 0.5
    gi = np.round(g)
    if not np.allclose(g, gi, rtol=0, atol=1e-3):
        raise ValueError(f"{what} coordinates are not pixel centres on the global {res} m lattice "
                         f"(first {c[0]!r}); build it on a grid.geobox_for GeoBox")
    return int(gi[0])


def global_origin(geobox: GeoBox) -> tuple[int, int]:
    """(row, col) of the geobox's top-left pixel in the global lattice (rows grow southwards)."""
    a = geobox.affine
    res = a.a
    return (lattice_index([a.f - res / 2], res, descending=True, what=f"geobox {tuple(a)[:6]} y"),
            lattice_index([a.c + res / 2], res, what=f"geobox {tuple(a)[:6]} x"))


def aligned_chunks(start: int, size: int, tile_px: int) -> tuple[int, ...]:
    """Chunk sizes along one axis so that boundaries fall on multiples of `tile_px` (global)."""
    chunks = []
    pos = start
    end = start + size
    while pos < end:
        nxt = min((pos // tile_px + 1) * tile_px, end)
        chunks.append(nxt - pos)
        pos = nxt
    return tuple(chunks)


def tile_chunks(geobox: GeoBox, tile_px: int = TILE_PX) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(y chunks, x chunks) of a geobox cut on the global tile edges (chunk = tile where inside)."""
    row, col = global_origin(geobox)
    h, w = geobox.shape
    return aligned_chunks(row, h, tile_px), aligned_chunks(col, w, tile_px)


ID_COLUMNS = ("rgi_id", "RGIId", "glac_id", "id", "glacier_id")  # how outline files name their features


def check_lonlat_extent(g, name: str) -> None:
    """Refuse a lon/lat geometry no UTM zone can hold: one crossing the antimeridian, or a polar one.

    The one AOI check of every command that reads outlines (search, tiles, render), so a geometry one
    refuses is not planned by another in a zone half the world away.
    """
    minx, miny, maxx, maxy = g.bounds
    if maxx - minx > 180:
        raise ValueError(f"{name} spans {minx:.4f}..{maxx:.4f}° of longitude: it crosses the antimeridian; "
                         "split it into two, one each side of 180°, so each maps onto its own UTM zone")
    for lat in (miny, maxy):
        try:
            utm_crs((minx + maxx) / 2, lat)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None


def valid_outlines(outlines, name: str):
    """Outlines in EPSG:4326, each valid and inside one UTM zone: invalid ones repaired (`make_valid`, with a
    warning naming the feature and the reason) or refused when nothing of their area survives the repair.

    Why: GEOS answers wrong areas (a bow-tie's lobes cancel) or raises on invalid polygons, so every
    command that reads outlines repairs them the same way here before it plans, unions or rasterises.
    """
    import logging

    import geopandas as gpd
    from shapely import make_valid
    from shapely.validation import explain_validity

    if not isinstance(outlines, gpd.GeoDataFrame):
        raise TypeError(f"{name}: outlines must be a GeoDataFrame, got {type(outlines).__name__}")
    if outlines.crs is None:
        raise ValueError(f"{name} has no CRS; set one (RGI/GLIMS files are EPSG:4326)")
    gdf = outlines[outlines.geometry.notna() & ~outlines.geometry.is_empty]
    if gdf.empty:
        raise ValueError(f"{name} holds no geometries")
    col = next((c for c in ID_COLUMNS if c in gdf.columns), None)
    ids = list(gdf[col].astype(str)) if col else [f"feature {i}" for i in gdf.index]
    geoms = list(gdf.geometry)
    for k, g in enumerate(geoms):
        if g.is_valid:
            continue
        reason = explain_validity(g)
        fixed = make_valid(g)
        if fixed.geom_type == "GeometryCollection":
            fixed = gpd.GeoSeries([p for p in fixed.geoms if p.area > 0]).union_all() \
                if any(p.area > 0 for p in fixed.geoms) else None
        if fixed is None or fixed.is_empty or fixed.area <= 0:
            raise ValueError(f"{name}: outline {ids[k]} is invalid ({reason}) and has no area once repaired; "
                             "fix or drop it")
        logging.getLogger(__name__).warning("%s: outline %s was invalid (%s); repaired with make_valid", name,
                                            ids[k], reason)
        geoms[k] = fixed
    gdf = gdf.set_geometry(gpd.GeoSeries(geoms, index=gdf.index, crs=gdf.crs)).to_crs("EPSG:4326")
    for k, g in enumerate(gdf.geometry):
        check_lonlat_extent(g, f"{name}: outline {ids[k]}")
    return gdf


@dataclass(frozen=True)
class Tile:
    """One tile of the global grid."""

    crs: str
    ix: int
    iy: int
    geobox: GeoBox

    @property
    def id(self) -> str:
        return f"{self.crs.replace('EPSG:', 'E')}_{self.ix:+05d}_{self.iy:+05d}"


def tiles_for(aoi: geom.Geometry, crs: CRS | None = None, tile_px: int = TILE_PX,
              resolution: float = RESOLUTION) -> list[Tile]:
    """The global-grid tiles an AOI touches, in its UTM zone."""
    if crs is None:
        crs = geobox_for(aoi, resolution).crs
    gs = tile_grid(crs, resolution, tile_px)
    return [Tile(str(crs), ix, iy, gb) for (ix, iy), gb in gs.tiles_from_geopolygon(aoi.to_crs(crs))]


def plan_tiles(outlines, buffer_m: float = 500.0, tile_px: int = TILE_PX,
               resolution: float = RESOLUTION) -> pd.DataFrame:
    """Tiles intersecting buffered glacier outlines (e.g. RGI 7.0), with pixel counts.

    Each glacier is handled in the UTM zone of its centroid, so a global inventory yields tiles in
    many zones. Returns one row per tile: crs, ix, iy, tile_id, glaciers, glacier_px, buffered_px.
    """
    import geopandas as gpd
    from rasterio.features import rasterize

    if not isinstance(outlines, gpd.GeoDataFrame):
        raise TypeError("plan_tiles needs a GeoDataFrame of glacier outlines")
    if outlines.empty:
        raise ValueError("no glacier outlines given to plan tiles for")
    if not (math.isfinite(buffer_m) and buffer_m >= 0):
        raise ValueError(f"buffer_m must be a finite number of metres >= 0, got {buffer_m}")
    ll = valid_outlines(outlines, "glacier outlines")
    cent = ll.geometry.representative_point()
    zones = [str(utm_crs(p.x, p.y)) for p in cent]
    rows = []
    for zone, group in ll.groupby(pd.Series(zones, index=ll.index)):
        local = group.to_crs(zone)
        buffered = local.buffer(buffer_m)
        union = geom.Geometry(buffered.union_all(), crs=zone)
        for tile in tiles_for(union, crs=CRS(zone), tile_px=tile_px, resolution=resolution):
            gb = tile.geobox
            box = gb.extent.geom
            hit = local[local.intersects(box)]
            hitb = buffered[buffered.intersects(box)]
            if hitb.empty:
                continue
            glacier_px = int(rasterize(hit.geometry, out_shape=gb.shape, transform=gb.affine).sum()) \
                if not hit.empty else 0
            buffered_px = int(rasterize(hitb.geometry, out_shape=gb.shape, transform=gb.affine).sum())
            rows.append(dict(crs=zone, ix=tile.ix, iy=tile.iy, tile_id=tile.id, glaciers=len(hit),
                             glacier_px=glacier_px, buffered_px=buffered_px))
    return pd.DataFrame(rows).sort_values(["crs", "iy", "ix"], ignore_index=True)


def differing_dim(a, b) -> str | None:
    """The first of y, x on which two xarray objects' grids differ (size or coordinates), None on one grid:
    arrays meant to be read pixel by pixel together (features beside predictions) must share both."""
    for dim in ("y", "x"):
        if a.sizes.get(dim) != b.sizes.get(dim) or not np.allclose(a[dim].values, b[dim].values):
            return dim
    return None


def pixel_centres(geobox: GeoBox) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) pixel-centre coordinates, as xarray/rioxarray expect them."""
    c = geobox.coordinates
    return c["y"].values, c["x"].values
