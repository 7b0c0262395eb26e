"""The multi-year glacier inventory: outlines by year (GeoParquet 1.1), identity across years, change table,
and the annual update.

One row per glacier and year with RGI 7.0 column names, in EPSG:4326, written as GeoParquet 1.1 with a
`bbox` covering column (DuckDB and GDAL filter on it without decoding geometries) and the CRS, the area
uncertainty method and the OBIA rules in the file's metadata.

Identity: a glacier keeps its id across years. With a reference inventory (RGI-style outlines, any CRS)
the mapped ice is split along the reference's divides and each glacier keeps the reference id; ice the
reference does not know, and every glacier without a reference, is matched by overlap to the nearest
year already in the inventory. Splits and merges are recorded (`parent_ids`, `change_type`).

The update (`add_year`) is idempotent (a year already present is skipped, or refused on request),
serialised between processes by an exclusive lock file (fcntl), atomic for readers (write a temporary
file in the same directory, then `os.replace`), and reads only the new year's predictions: earlier
years are never recomputed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import shapely
import xarray as xr

from glacier_stac import obia
from glacier_stac.labels import VALID
from glacier_stac.locking import locked

log = logging.getLogger(__name__)

COLUMNS = ["glac_id", "year", "region", "area_km2", "area_unc_km2", "perimeter_km", "debris_frac", "term_type",
           "zmin_m", "zmed_m", "zmax_m", "zmean_m", "slope_deg", "aspect_deg", "cenlon", "cenlat", "termlon",
           "termlat", "confidence", "src_items", "parent_ids", "change_type", "utm_epsg", "area_unc_margin_km2",
           "area_unc_class_km2", "geometry"]


def area_uncertainty_method(unc: obia.Uncertainty = obia.Uncertainty(), rules: obia.Rules = obia.Rules()) -> str:
    """The stated method, written into the file's metadata (with the parameters used)."""
    return (f"area_unc_km2 = sqrt(margin^2 + class^2), two independent sources. margin (area_unc_margin_km2): "
            f"boundary-type-dependent buffer (Granshaw & Fountain 2006; Paul et al. 2013), (A(outline buffered "
            f"by +d) - A(buffered by -d)) / 2 with d = {unc.clean_margin_px:g} pixel on clean-ice margins and "
            f"{unc.debris_margin_px:g} pixel on debris-covered margins, weighted by the debris share of the "
            f"boundary pixels. class (area_unc_class_km2): the model's doubt, "
            f"k * pixel area * ((D_in + D_out) / 2 + D_new), "
            f"D_in = glacier pixels with probability < {unc.doubt_high:g}, D_out = non-glacier valid pixels within "
            f"{unc.ring_px} pixels with probability >= {unc.doubt_low:g}, plus D_new (the pixels are then not in "
            f"D_in): with an earlier year in the inventory, the glacier's pixels farther than "
            f"{rules.advance_m_yr:g} m per year between them from that year's glaciers (fronts advance more "
            f"slowly outside surges: such a gain is seasonal snow, a cold thermal scene or shade in one of the "
            f"two years), counted whole; "
            f"k = {unc.k:g} calibrated on training "
            f"worlds (never the benchmark's) so that 90% of per-glacier change errors lie within the change "
            f"uncertainty. Computed in the zone's UTM CRS and scaled to the ellipsoidal area; region totals add "
            f"glacier uncertainties linearly (edge errors are correlated); changes add the two years' "
            f"uncertainties in quadrature (the classification errors, seasonal snow and shade, differ by year)")


AREA_UNCERTAINTY = area_uncertainty_method()
ROCK_GLACIER_COLUMNS = ["rg_id", "year", "region", "primeclass", "area_km2", "zmin_m", "zmed_m", "zmax_m", "cenlon",
                        "cenlat", "parent_ids", "change_type", "utm_epsg", "geometry"]
META_KEY = b"glacier_stac"
MIN_OVERLAP = 0.1  # overlap / smaller area for two outlines of different years to be the same glacier


class InventoryError(ValueError):
    """Bad input to the inventory or an unreadable inventory file; the message names the problem."""


@dataclass(frozen=True)
class UpdateResult:
    """What one `add_year` did."""

    path: Path
    year: int
    added: int  # rows added (0 when the year was already there)
    skipped: bool  # the year was already in the inventory


# --------------------------------------------------------------------------- files


def read(path: str | Path) -> gpd.GeoDataFrame:
    """The inventory (EPSG:4326); a clear error if the file is not a readable GeoParquet inventory."""
    path = Path(path)
    try:
        gdf = gpd.read_parquet(path)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow/geopandas raise many types for a damaged file
        raise InventoryError(f"cannot read inventory {path}: {e}; the file is damaged or not GeoParquet "
                             "(restore it or move it away; nothing was changed)") from None
    missing = [c for c in ("glac_id", "year", "area_km2") if c not in gdf.columns]
    if missing:
        raise InventoryError(f"{path} is not a glacier inventory: it lacks columns {missing}")
    return gdf


def metadata(path: str | Path) -> dict:
    """The inventory's own metadata (area uncertainty method, rules per year)."""
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(META_KEY, b"{}"))


def _write_atomic(gdf: gpd.GeoDataFrame, path: Path, meta: dict) -> None:
    """GeoParquet 1.1 with a bbox covering column and our metadata, via a temp file and os.replace."""
    from geopandas.io.arrow import _geopandas_to_arrow

    table = _geopandas_to_arrow(gdf, index=False, schema_version="1.1.0", write_covering_bbox=True)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: json.dumps(meta).encode()})
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- inputs


def load_reference(reference: gpd.GeoDataFrame | str | Path, id_column: str | None = None) -> gpd.GeoSeries:
    """Reference outlines (any CRS) as a GeoSeries indexed by glacier id; clear errors for bad ones."""
    gdf = gpd.read_file(reference) if isinstance(reference, str | Path) else reference
    name = str(reference) if isinstance(reference, str | Path) else "the reference outlines"
    if len(gdf) == 0:
        raise InventoryError(f"{name} are empty: no glaciers to match")
    if gdf.crs is None:
        raise InventoryError(f"{name} have no CRS; set one (e.g. EPSG:4326 for RGI files)")
    col = id_column or next((c for c in ("glac_id", "rgi_id", "glacier_id", "id") if c in gdf.columns), None)
    if col is None or col not in gdf.columns:
        raise InventoryError(f"{name} have no id column (glac_id, rgi_id, glacier_id or id); "
                             f"name one of {list(gdf.columns)}")
    ids = gdf[col].astype(str)
    empty = gdf.geometry.isna() | gdf.geometry.is_empty
    if empty.any():
        raise InventoryError(f"{name} have empty geometries for {list(ids[empty])[:10]}")
    invalid = ~gdf.geometry.is_valid
    if invalid.any():
        raise InventoryError(f"{name} have invalid geometries for {list(ids[invalid])[:10]} "
                             "(repair them with shapely.make_valid first)")
    if ids.duplicated().any():
        raise InventoryError(f"{name} repeat ids {sorted(set(ids[ids.duplicated()]))[:10]}")
    return gpd.GeoSeries(gdf.geometry.values, index=pd.Index(ids, name="glac_id"), crs=gdf.crs)


def _store_years(loc, zone: str) -> list[int]:
    from glacier_stac import store

    return sorted(int(y) for y in store._years_with(loc, "planned", zone))


def zone_predictions(predictions: xr.Dataset | str | Path, year: int, aoi=None) -> list[xr.Dataset]:
    """One year of predictions per UTM zone that holds it; opening a store reads only that year.

    A store path (or URL) gives one Dataset per zone group with tiles planned for `year` (a region
    that straddles zones was written in each tile's zone); an in-memory Dataset is one zone.
    Clear error when no zone has the year, or when it has no valid pixel.
    """
    if isinstance(predictions, str | Path):
        from glacier_stac import store  # written beside this module; opened lazily

        loc = store.Location.of(predictions)
        try:
            zones = store.zones(loc)
        except store.StoreError as e:
            raise InventoryError(str(e)) from None
        if aoi is not None:
            return [predictions_for(store.open_predictions(loc, aoi=aoi, years=[year]), year)]
        held = {z: _store_years(loc, z) for z in zones}
        with_year = [z for z in zones if year in held[z]]
        if not with_year:
            have = sorted({y for ys in held.values() for y in ys})
            raise InventoryError(f"no predictions for year {year} in the store {loc}; it holds {have}")
        return [predictions_for(store.open_predictions(loc, years=[year], zone=z), year) for z in with_year]
    return [predictions_for(predictions, year)]


def predictions_for(predictions: xr.Dataset | str | Path, year: int) -> xr.Dataset:
    """One year of predictions of one zone. Clear error when there are none."""
    if isinstance(predictions, str | Path):
        parts = zone_predictions(predictions, year)
        if len(parts) > 1:
            raise InventoryError(f"{predictions} holds year {year} in {len(parts)} UTM zones; use zone_predictions")
        return parts[0]
    if "year" in predictions.dims:
        years = [int(v) for v in predictions["year"].values]
        if year not in years:
            raise InventoryError(f"no predictions for year {year}; the predictions hold {years}")
        predictions = predictions.sel(year=year)
    if not bool(predictions[VALID].any()):
        raise InventoryError(f"no predictions for year {year}: no pixel of it is valid")
    return predictions


def _features_for(features: xr.DataArray | list[xr.DataArray] | None, pred: xr.Dataset,
                  several: bool) -> xr.DataArray | None:
    """The features on `pred`'s grid: the one DataArray given (one zone), or the list's one in its CRS."""
    if features is None:
        return None
    if isinstance(features, xr.DataArray):
        if not several:
            return features
        features = [features]
    epsg = pred.rio.crs.to_epsg()
    same = [f for f in features if f.rio.crs is not None and f.rio.crs.to_epsg() == epsg
            and f.sizes.get("y") == pred.sizes["y"] and f.sizes.get("x") == pred.sizes["x"]]
    return same[0] if same else None


def outlines_for(predictions: xr.Dataset | str | Path, year: int, *,
                 features: xr.DataArray | list[xr.DataArray] | None = None, rules: obia.Rules = obia.Rules(),
                 divides: gpd.GeoSeries | None = None, aoi=None,
                 uncertainty: obia.Uncertainty = obia.Uncertainty()) -> gpd.GeoDataFrame:
    """OBIA outlines of one year: in the zone's CRS for one zone; for a store holding the year in several
    UTM zones, each zone outlined and the pieces of a glacier cut by a zone boundary joined (EPSG:4326)."""
    return _outlines_of(zone_predictions(predictions, year, aoi), features, rules, divides, uncertainty)


def _outlines_of(parts: list[xr.Dataset], features: xr.DataArray | list[xr.DataArray] | None, rules: obia.Rules,
                 divides: gpd.GeoSeries | None, uncertainty: obia.Uncertainty,
                 earlier: obia.Previous | None = None) -> gpd.GeoDataFrame:
    """`outlines_for` on the year's zone predictions (`zone_predictions`), opened once by the caller;
    `earlier`: the inventory's earlier year (`earlier_outlines`) or None."""
    several = len(parts) > 1
    outl = [obia.outlines(p, _features_for(features, p, several), rules, divides=divides, uncertainty=uncertainty,
                          previous=earlier) for p in parts]
    if not several:
        return outl[0]
    return obia.merge_zones(outl, obia.grid_of(parts[0]).res, uncertainty)


def earlier_outlines(old: gpd.GeoDataFrame | None, year: int) -> obia.Previous | None:
    """The inventory's nearest earlier year (its outlines, EPSG:4326) for the rule on new debris and the new-ice
    term of the area uncertainty (`obia.Rules.advance_m_yr`); None without one (the first year). Read from
    the inventory: no earlier year is read from the store or recomputed."""
    if old is None or old.empty:
        return None
    before = sorted(y for y in set(old["year"].astype(int)) if y < year)
    if not before:
        return None
    rows = old[old["year"].astype(int) == before[-1]]
    return obia.Previous(gpd.GeoSeries(rows.geometry.values, crs=old.crs), year - before[-1])


def rock_glaciers_for(predictions: xr.Dataset | str | Path, year: int, *,
                      features: xr.DataArray | list[xr.DataArray] | None = None, rules: obia.Rules = obia.Rules(),
                      aoi=None) -> gpd.GeoDataFrame:
    """Rock glaciers of one year: their own layer (`primeclass` rock_glacier), never part of the glacier
    outlines, ids or change table (RGI keeps them out; issue 14). One zone: its CRS; several: EPSG:4326,
    a rock glacier cut by a zone boundary joined into one polygon (`obia.merge_rock_glacier_zones`)."""
    return _rock_glaciers_of(zone_predictions(predictions, year, aoi), features, rules)


def _rock_glaciers_of(parts: list[xr.Dataset], features: xr.DataArray | list[xr.DataArray] | None,
                      rules: obia.Rules) -> gpd.GeoDataFrame:
    """`rock_glaciers_for` on the year's zone predictions (`zone_predictions`), opened once by the caller."""
    several = len(parts) > 1
    layers = [obia.rock_glacier_outlines(p, _features_for(features, p, several), rules) for p in parts]
    if not several:
        return layers[0]
    return obia.merge_rock_glacier_zones(layers, obia.grid_of(parts[0]).res)


# --------------------------------------------------------------------------- identity


_OWN_ID = re.compile(r"^GS-(?P<region>[^-]+)-(?P<n>\d+)$")


def _next_number(ids: pd.Series | list[str]) -> int:
    nums = [int(m["n"]) for i in ids if (m := _OWN_ID.match(str(i)))]
    return max(nums, default=0) + 1


def assign_ids(new: gpd.GeoDataFrame, previous: gpd.GeoDataFrame | None, region: str,
               first_number: int) -> pd.DataFrame:
    """glac_id, parent_ids, change_type for `new` outlines (zone CRS) against `previous` rows (any CRS).

    `ref_id` (from reference divides) wins; the rest are matched by overlap: one parent and it has one
    child: the same glacier; several parents: a merge (keeps the id of the largest overlap); one parent
    with several children: a split (the largest child keeps the id, the others get new ones).
    """
    n = len(new)
    ids: list[str | None] = [None] * n
    parents: list[list[str]] = [[] for _ in range(n)]
    kind = ["new"] * n
    prev_ids = set(previous["glac_id"]) if previous is not None else set()
    has_ref = "ref_id" in new.columns
    for i in range(n):
        if has_ref and new["ref_id"].iloc[i] is not None:
            ids[i] = str(new["ref_id"].iloc[i])
            kind[i] = "continued" if ids[i] in prev_ids else ("reference" if previous is None else "new")
    todo = [i for i in range(n) if ids[i] is None]
    if previous is not None and todo:
        if new.crs.is_geographic:  # outlines joined across zones: overlaps measured in metres
            new = new.to_crs(new.estimate_utm_crs())
        prev = previous.to_crs(new.crs)
        prev = prev[~prev["glac_id"].isin([x for x in ids if x is not None])]
        overlaps: dict[int, list[tuple[str, float]]] = {}
        children: dict[str, list[tuple[int, float]]] = {}
        for i in todo:
            g = new.geometry.iloc[i]
            hits = prev[prev.intersects(g)]
            for pid, pg in zip(hits["glac_id"], hits.geometry, strict=True):
                inter = g.intersection(pg).area
                if inter >= MIN_OVERLAP * min(g.area, pg.area):
                    overlaps.setdefault(i, []).append((pid, inter))
                    children.setdefault(pid, []).append((i, inter))
        for i in todo:
            ps = sorted(overlaps.get(i, []), key=lambda t: -t[1])
            if not ps:
                continue
            parents[i] = sorted(p for p, _ in ps)
            if len(ps) > 1:
                ids[i], kind[i] = ps[0][0], "merge"
                continue
            pid = ps[0][0]
            kids = sorted(children[pid], key=lambda t: -t[1])
            if len(kids) == 1:
                ids[i], kind[i], parents[i] = pid, "continued", []
            else:
                kind[i] = "split"
                if kids[0][0] == i:
                    ids[i] = pid
    number = first_number
    for i in range(n):
        if ids[i] is None:
            ids[i] = f"GS-{region}-{number:05d}"
            number += 1
    return pd.DataFrame({"glac_id": ids, "parent_ids": [",".join(p) for p in parents], "change_type": kind})


# --------------------------------------------------------------------------- the annual update


def add_year(path: str | Path, year: int, predictions: xr.Dataset | str | Path, *,
             features: xr.DataArray | None = None, reference: gpd.GeoDataFrame | str | Path | None = None,
             reference_id: str | None = None, rules: obia.Rules = obia.Rules(), region: str = "00",
             src_items: dict[str, str] | None = None, if_exists: str = "skip",
             lock_timeout_s: float = 600.0, aoi=None,
             uncertainty: obia.Uncertainty = obia.Uncertainty()) -> UpdateResult:
    """Add `year` to the inventory at `path` (created if absent): OBIA outlines, identity, change table.

    Idempotent: a year already present is skipped (`if_exists="skip"`) or refused (`"error"`). Two
    processes updating at once are serialised by a lock; readers see the old file or the new one.
    Only `year`'s predictions are read. `predictions`: a Dataset, or a store (path or URL) whose zone
    groups holding `year` are all outlined, a glacier crossing a zone boundary joined into one; `aoi`
    cuts a store to one area (in the zone of its centroid). `features`: one DataArray, or one per zone.
    """
    if if_exists not in ("skip", "error"):
        raise InventoryError(f"if_exists must be 'skip' or 'error', got {if_exists!r}")
    path = Path(path)
    if not path.parent.is_dir():
        raise InventoryError(f"the inventory's directory {path.parent} does not exist")
    ref = load_reference(reference, reference_id) if reference is not None else None
    year = int(year)
    with locked(path, lock_timeout_s):
        old = read(path) if path.exists() else None
        if old is not None and (old["year"] == year).any():
            if if_exists == "error":
                raise InventoryError(f"year {year} is already in the inventory {path} "
                                     f"(it holds {sorted(set(old['year'].astype(int)))})")
            return UpdateResult(path, year, 0, True)
        parts = zone_predictions(predictions, year, aoi)  # opened and checked once for both layers
        outl = _outlines_of(parts, features, rules, ref, uncertainty, earlier_outlines(old, year))
        # the rock-glacier layer first: the inventory holding `year` is what marks the update done
        _add_rock_glacier_year(rock_glacier_path(path), year, _rock_glaciers_of(parts, features, rules), region)
        previous = _neighbour_year(old, year)
        ident = assign_ids(outl, previous, region, _next_number(old["glac_id"]) if old is not None else 1)
        rows = _rows(outl, ident, year, region, src_items if src_items is not None else _items(features))
        inv = rows if old is None else pd.concat([old, rows], ignore_index=True)
        inv = gpd.GeoDataFrame(inv, geometry="geometry", crs=4326).sort_values(["year", "glac_id"],
                                                                               ignore_index=True)
        meta = metadata(path) if old is not None else {"area_uncertainty": area_uncertainty_method(uncertainty, rules),
                                                         "years": {}}
        meta["years"][str(year)] = {"rules": asdict(rules), "uncertainty": asdict(uncertainty),
                                    "obia": _jsonable(outl.attrs.get("obia", {})),
                                    "reference": None if ref is None else f"{len(ref)} outlines"}
        _write_atomic(inv[COLUMNS], path, meta)
        changes_path = path.with_name(path.stem + ".changes.parquet")
        _write_table_atomic(change_table(inv), changes_path)
    log.info("inventory %s: year %s added, %d glaciers", path, year, len(rows))
    return UpdateResult(path, year, len(rows), False)


def rock_glacier_path(path: str | Path) -> Path:
    """The rock-glacier layer beside an inventory: `<stem>.rock_glaciers.parquet` (GeoParquet, EPSG:4326)."""
    path = Path(path)
    return path.with_name(path.stem + ".rock_glaciers.parquet")


def read_rock_glaciers(path: str | Path) -> gpd.GeoDataFrame:
    """The rock-glacier layer of an inventory (given the inventory's path or the layer's own)."""
    path = Path(path)
    if not path.name.endswith(".rock_glaciers.parquet"):
        path = rock_glacier_path(path)
    try:
        return gpd.read_parquet(path)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow/geopandas raise many types for a damaged file
        raise InventoryError(f"cannot read the rock-glacier layer {path}: {e}; the file is damaged or not "
                             "GeoParquet (restore it or move it away; nothing was changed)") from None


def _add_rock_glacier_year(path: Path, year: int, rocks: gpd.GeoDataFrame, region: str) -> None:
    """Put `year`'s rock glaciers into their layer (rows of `year` left by an interrupted update are
    replaced); ids matched by overlap to the nearest other year, as glaciers are (`RG` regions)."""
    old = read_rock_glaciers(path) if path.exists() else None
    meta = (metadata(path) if old is not None
            else {"primeclass": obia.ROCK_GLACIER_CLASS, "area": "geodesic area of the outline (pyproj Geod)",
                  "years": {}})
    if old is not None:
        old = old[old["year"] != year]
    prev = _neighbour_year(old, year)
    ident = assign_ids(rocks, None if prev is None else prev.rename(columns={"rg_id": "glac_id"}), f"RG{region}",
                       _next_number(old["rg_id"]) if old is not None else 1)
    wgs = obia.to_wgs84(rocks)
    cen = shapely.centroid(wgs.geometry.values)  # of the lon/lat polygon, as the glaciers' cenlon/cenlat
    rows = gpd.GeoDataFrame({
        "rg_id": ident["glac_id"].to_numpy(), "year": np.full(len(wgs), year, np.int32),
        "region": [region] * len(wgs), "primeclass": wgs["primeclass"].to_numpy(),
        "area_km2": wgs["area_km2"].to_numpy(float), "zmin_m": wgs["zmin_m"].to_numpy(float),
        "zmed_m": wgs["zmed_m"].to_numpy(float), "zmax_m": wgs["zmax_m"].to_numpy(float),
        "cenlon": shapely.get_x(cen), "cenlat": shapely.get_y(cen), "parent_ids": ident["parent_ids"].to_numpy(),
        "change_type": ident["change_type"].to_numpy(),
        "utm_epsg": (wgs["utm_epsg"].to_numpy(np.int32) if "utm_epsg" in wgs.columns
                     else np.full(len(wgs), rocks.crs.to_epsg() or -1, np.int32)),
    }, geometry=wgs.geometry.to_numpy(), crs=4326)
    layer = rows if old is None or old.empty else pd.concat([old, rows], ignore_index=True)
    layer = gpd.GeoDataFrame(layer, geometry="geometry", crs=4326).sort_values(["year", "rg_id"], ignore_index=True)
    meta["years"][str(year)] = {"rock_glaciers": len(rows), "area_km2": float(rows["area_km2"].sum())}
    _write_atomic(layer[ROCK_GLACIER_COLUMNS], path, meta)


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def _items(features: xr.DataArray | list[xr.DataArray] | None) -> dict[str, str]:
    if features is None:
        return {}
    out: dict[str, str] = {}
    for f in [features] if isinstance(features, xr.DataArray) else features:
        out.update(dict(f.attrs.get("items", {})))
    return out


def _neighbour_year(old: gpd.GeoDataFrame | None, year: int) -> gpd.GeoDataFrame | None:
    """Rows of the nearest earlier year in the inventory (else the nearest later one) to match against."""
    if old is None or old.empty:
        return None
    years = sorted(set(old["year"].astype(int)))
    earlier = [y for y in years if y < year]
    pick = earlier[-1] if earlier else years[0]
    return old[old["year"] == pick]


def _rows(outl: gpd.GeoDataFrame, ident: pd.DataFrame, year: int, region: str,
          items: dict[str, str]) -> gpd.GeoDataFrame:
    wgs = obia.to_wgs84(outl)
    rows = pd.DataFrame({c: wgs[c].to_numpy() for c in COLUMNS if c in wgs.columns and c != "geometry"})
    rows["glac_id"] = ident["glac_id"].to_numpy()
    rows["parent_ids"] = ident["parent_ids"].to_numpy()
    rows["change_type"] = ident["change_type"].to_numpy()
    rows["year"] = np.int32(year)
    rows["region"] = region
    rows["src_items"] = json.dumps(items, sort_keys=True)
    rows["utm_epsg"] = (outl["utm_epsg"].to_numpy(np.int32) if "utm_epsg" in outl.columns
                        else np.int32(outl.crs.to_epsg() or -1))
    gdf = gpd.GeoDataFrame(rows, geometry=wgs.geometry.to_numpy(), crs=4326)
    return gdf[COLUMNS]


def _write_table_atomic(df: pd.DataFrame, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- change


def _pairs(years: list[int]) -> list[tuple[int, int, str]]:
    out = [(a, b, "consecutive") for a, b in zip(years, years[1:], strict=False)]
    if len(years) > 2:
        out.append((years[0], years[-1], "period"))
    return out


def _change_rows(key: dict, a0: float, u0: float, a1: float, u1: float, y0: int, y1: int, kind: str,
                 unc_sum: str = "quadrature") -> dict:
    dt = y1 - y0
    da = a1 - a0
    unc = float(np.hypot(u0, u1))
    return {**key, "year0": y0, "year1": y1, "pair": kind, "area0_km2": a0, "area1_km2": a1,
            "change_km2": da, "change_unc_km2": unc, "rate_km2_yr": da / dt, "rate_unc_km2_yr": unc / dt,
            "rate_pct_yr": 100 * da / a0 / dt if a0 > 0 else np.nan,
            "rate_pct_unc_yr": 100 * unc / a0 / dt if a0 > 0 else np.nan}


def change_table(inv: pd.DataFrame) -> pd.DataFrame:
    """Per glacier: area change and rate (km²/yr, %/yr) between consecutive inventory years and over
    the whole period, with uncertainty. A glacier absent in a year has area 0 there (gone, or merged:
    see `change_type`)."""
    years = sorted(set(inv["year"].astype(int)))
    area = inv.pivot_table(index="glac_id", columns="year", values="area_km2", aggfunc="sum").fillna(0.0)
    unc = inv.pivot_table(index="glac_id", columns="year", values="area_unc_km2", aggfunc="sum").fillna(0.0)
    region = inv.groupby("glac_id")["region"].first()
    rows = []
    for gid in area.index:
        for y0, y1, kind in _pairs(years):
            rows.append(_change_rows({"glac_id": gid, "region": region[gid]}, float(area.at[gid, y0]),
                                     float(unc.at[gid, y0]), float(area.at[gid, y1]), float(unc.at[gid, y1]),
                                     y0, y1, kind))
    cols = ["glac_id", "region", "year0", "year1", "pair", "area0_km2", "area1_km2", "change_km2", "change_unc_km2",
            "rate_km2_yr", "rate_unc_km2_yr", "rate_pct_yr", "rate_pct_unc_yr"]
    return pd.DataFrame(rows, columns=cols)


def region_changes(inv: pd.DataFrame) -> pd.DataFrame:
    """Per region: total area change and rate between consecutive years and over the whole period."""
    years = sorted(set(inv["year"].astype(int)))
    tot = inv.groupby(["region", "year"]).agg(area=("area_km2", "sum"), unc=("area_unc_km2", "sum"),
                                              glaciers=("glac_id", "nunique"))
    rows = []
    for reg in sorted(set(inv["region"])):
        t = tot.loc[reg]
        for y0, y1, kind in _pairs(years):
            a0, u0 = (float(t.at[y0, "area"]), float(t.at[y0, "unc"])) if y0 in t.index else (0.0, 0.0)
            a1, u1 = (float(t.at[y1, "area"]), float(t.at[y1, "unc"])) if y1 in t.index else (0.0, 0.0)
            rows.append(_change_rows({"region": reg}, a0, u0, a1, u1, y0, y1, kind))
    return pd.DataFrame(rows)


def summary(inv: pd.DataFrame) -> pd.DataFrame:
    """One row per region: glaciers and area in the first and last year, rate over the period ± uncertainty."""
    years = sorted(set(inv["year"].astype(int)))
    rc = region_changes(inv) if len(years) > 1 else pd.DataFrame()
    rows = []
    for reg, grp in inv.groupby("region"):
        first, last = grp[grp.year == years[0]], grp[grp.year == years[-1]]
        row = {"region": reg, "years": f"{years[0]}-{years[-1]}" if len(years) > 1 else str(years[0]),
               "glaciers": int(last["glac_id"].nunique()), "area_first_km2": float(first.area_km2.sum()),
               "area_last_km2": float(last.area_km2.sum()), "rate_km2_yr": np.nan, "rate_unc_km2_yr": np.nan,
               "rate_pct_yr": np.nan}
        if not rc.empty:
            whole = rc[(rc.region == reg) & (rc.year0 == years[0]) & (rc.year1 == years[-1])].iloc[0]
            row.update(rate_km2_yr=whole.rate_km2_yr, rate_unc_km2_yr=whole.rate_unc_km2_yr,
                       rate_pct_yr=whole.rate_pct_yr)
        rows.append(row)
    return pd.DataFrame(rows)


def plot(inv: gpd.GeoDataFrame, out_dir: str | Path, hillshade: xr.DataArray | None = None) -> tuple[Path, Path]:
    """A change map (first and last year's outlines, coloured by %/yr, over a hillshade when given) and an
    area-by-year chart per region with ±uncertainty bars. Returns the two PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    years = sorted(set(inv["year"].astype(int)))
    ch = change_table(inv)
    whole = ch[(ch.year0 == years[0]) & (ch.year1 == years[-1])].set_index("glac_id")["rate_pct_yr"]
    fig, ax = plt.subplots(figsize=(8, 7))
    if hillshade is not None:
        hs = hillshade.rio.reproject("EPSG:4326")
        ax.imshow(hs.values, cmap="gray", extent=(float(hs.x.min()), float(hs.x.max()), float(hs.y.min()),
                                                 float(hs.y.max())))
    first = inv[inv.year == years[0]]
    last = inv[inv.year == years[-1]].copy()
    last["rate_pct_yr"] = last["glac_id"].map(whole)
    first.boundary.plot(ax=ax, color="0.3", linewidth=0.8, linestyle="--")
    if len(years) > 1 and last["rate_pct_yr"].notna().any():
        last.plot(ax=ax, column="rate_pct_yr", cmap="RdBu", vmin=-5, vmax=5, legend=True, alpha=0.8,
                  legend_kwds={"label": f"area change {years[0]}-{years[-1]}, %/yr"})
    else:
        last.plot(ax=ax, color="tab:blue", alpha=0.6)
    ax.set_title(f"Glacier outlines {years[0]} (dashed) and {years[-1]}")
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    map_png = out / "change_map.png"
    fig.savefig(map_png, dpi=120, bbox_inches="tight")
    plt.close(fig)

    tot = inv.groupby(["region", "year"]).agg(area=("area_km2", "sum"), unc=("area_unc_km2", "sum")).reset_index()
    fig, ax = plt.subplots(figsize=(7, 4))
    for reg, grp in tot.groupby("region"):
        ax.errorbar(grp["year"], grp["area"], yerr=grp["unc"], marker="o", capsize=4, label=f"region {reg}")
    ax.set_xlabel("year")
    ax.set_ylabel("glacier area, km²")
    ax.set_xticks(years)
    ax.legend()
    ax.set_title("Glacier area by year (± area uncertainty: margin buffer and model doubt)")
    chart_png = out / "area_by_year.png"
    fig.savefig(chart_png, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return map_png, chart_png
