"""Predictions in Zarr (format 3) on the global lattice: one group per UTM zone, one chunk per tile and year.

Why this layout: the project's grid is already global (one 10 m lattice per UTM zone, 1024 px tiles
anchored at the zone origin), so a tile's place in the store is fixed for every run and every year.
Regional and global runs write into the same arrays, never two writers in one chunk (a run writes
whole tiles), and unwritten chunks cost nothing. The year axis is preallocated (FIRST_YEAR..LAST_YEAR)
so that adding a year is writing new chunks, never resizing an array other writers are using.

    <store>/zarr.json                          root group: layout version, resolution, tile size
    <store>/EPSG32606/{probability,classes,valid,year,y,x,spatial_ref}
    <store>/_glacier_stac/runs/<run_id>.json   run configuration (checkpoint id and digest, version)
    <store>/_glacier_stac/planned/EPSG32606/<year>/<tile>.json   tiles a run set out to write
    <store>/_glacier_stac/done/EPSG32606/<year>/<tile>.json      written after the tile's chunks: the
                                                                  completion record and its provenance

Each tile has its own completion record, written by the task that wrote the tile's chunks once they
are stored, so no two processes ever modify one object. A reader counts a tile as written only when
its record exists, and a year as complete when every planned tile of it has one.

`probability` is the glacier probability P(clean ice) + P(debris ice) as uint8 (CF `scale_factor`
1/254, `_FillValue` 255 so unwritten or invalid pixels read as NaN), `classes` the class codes of
`labels.Label` (255 = no data), `valid` whether the model had its required inputs.

A run may also keep some of the cube's features beside them (`write(..., features=)`; the pipeline keeps
those OBIA reads: elevation, slope, aspect, NDSI, thermal, SAR), one int16 array per feature packed by CF
`scale_factor`/`add_offset` (`FEATURE_PACKING`), so outlines, elevations and OBIA's rules come from the
store alone, without building the cube again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import posixpath
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
import zarr
from odc.geo import geom
from odc.geo.crs import CRS
from odc.geo.geobox import GeoBox

from glacier_stac.grid import RESOLUTION, TILE_PX, aligned_chunks, differing_dim, geobox_for, global_origin
from glacier_stac.labels import BASE_CLASSES, CLASSES_VAR, GLACIER_PROBABILITY, NODATA_CLASS, PROBABILITY, VALID
from glacier_stac.redact import redact
from glacier_stac.version import __version__

log = logging.getLogger(__name__)

LAYOUT = "glacier_stac.predictions"
LAYOUT_VERSION = 1
FIRST_YEAR, LAST_YEAR = 1980, 2099
NORTHINGS_M = (-102_400.0, 10_035_200.0)  # the lattice held per zone: both hemispheres' UTM northings
EASTINGS_M = (-102_400.0, 1_105_920.0)  # and eastings, a little beyond the zone (zones overlap at high latitude)
PROB_SCALE = 254  # probability p is stored as round(p * 254); 255 is no data
META = "_glacier_stac"
COMPRESSOR = {"name": "zstd", "configuration": {"level": 5, "checksum": False}}
# the zone-wide x/y coordinates (8 MB of float64 for y): byte-shuffled lz4 compresses an arithmetic sequence
# to 89 KB in 0.03 s where plain zstd took 0.66 s for 1.3 MB, and every open reads them (0.2 s -> 0.01 s)
COORD_COMPRESSOR = {"name": "blosc", "configuration": {"cname": "lz4", "clevel": 5, "shuffle": "shuffle",
                                                       "typesize": 8, "blocksize": 0}}


@dataclass(frozen=True)
class Packing:
    """How a kept feature is stored: int16 = round((value - offset) / scale), NaN as FEATURE_FILL (CF packing)."""

    scale: float
    offset: float = 0.0
    units: str = "1"


FEATURE_FILL = -32768
# resolution well below what OBIA's rules and the inventory's attributes resolve; unknown features: float32
FEATURE_PACKING = {
    "elevation": Packing(0.5, 0.0, "m"), "slope": Packing(0.01, 0.0, "degree"),
    "aspect_sin": Packing(1e-4), "aspect_cos": Packing(1e-4), "ndsi": Packing(1e-4), "ndwi": Packing(1e-4),
    "lwir11": Packing(0.01, 250.0, "K"), "vv_db": Packing(0.01, 0.0, "dB"), "vh_db": Packing(0.01, 0.0, "dB"),
    "vv_cv": Packing(1e-3), "landsat_snow": Packing(1.0, 0.0, "1"),
}


def pack_feature(name: str, values: np.ndarray) -> np.ndarray:
    """A feature's values as stored: packed int16 (`FEATURE_PACKING`), or float32 for a feature without packing."""
    v = np.asarray(values, dtype=np.float64)
    pk = FEATURE_PACKING.get(name)
    if pk is None:
        return v.astype(np.float32)
    q = np.round((v - pk.offset) / pk.scale)
    ok = np.isfinite(q)
    if (np.abs(q[ok]) > 32767).any():
        raise StoreError(f"feature {name!r} has values outside what its packing holds "
                         f"({pk.offset - 32767 * pk.scale:g}..{pk.offset + 32767 * pk.scale:g} {pk.units})")
    return np.where(ok, q, FEATURE_FILL).astype(np.int16)


class StoreError(ValueError):
    """A store that cannot be used as asked: the message names the store, zone, tile or year."""


# --------------------------------------------------------------------------- where the store lives


@dataclass(frozen=True)
class Location:
    """A store's URL (local path, file:// or s3://...) and the fsspec options to reach it.

    Options (endpoint, keys) are used to connect and never written into the store.
    """

    url: str
    storage_options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, url: str | os.PathLike[str] | Location, storage_options: Mapping[str, Any] | None = None) -> Location:
        if isinstance(url, Location):
            return url
        url = str(url)
        if "://" not in url:
            url = str(Path(url).expanduser().absolute())
        return cls(url.rstrip("/"), tuple(sorted((storage_options or {}).items())))

    @property
    def is_local(self) -> bool:
        return "://" not in self.url or self.url.startswith("file://")

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.storage_options)

    def fs(self):
        """(fsspec filesystem, root path inside it)."""
        import fsspec

        return fsspec.core.url_to_fs(self.url, **self.options)

    def zarr_store(self, read_only: bool = False):
        if self.is_local:
            path = self.url.removeprefix("file://")
            return zarr.storage.LocalStore(path, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(self.url, storage_options=self.options, read_only=read_only)

    def __str__(self) -> str:
        return self.url


def _put_atomic(fs, path: str, data: bytes) -> None:
    """Write one small object whole: local files via a temporary name and rename; object stores put whole."""
    try:
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        if fs.protocol in ("file", "local") or "file" in getattr(fs, "protocol", ()):
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:
            fs.pipe_file(path, data)
    except OSError as e:  # a store that was writable when checked, and no longer is (or was never for this key)
        raise StoreError(f"cannot write {path} in the store: {e.strerror or e}") from None


def _get_json(fs, path: str) -> dict | None:
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------- the zone layout


def zone_name(crs: CRS | str) -> str:
    epsg = CRS(crs).epsg if not isinstance(crs, CRS) else crs.epsg
    if epsg is None:
        raise StoreError(f"the store holds UTM zones identified by EPSG code; {crs} has none")
    return f"EPSG{epsg}"


@dataclass(frozen=True)
class Zone:
    """One UTM zone's lattice in the store: array index (i, j) <-> global (row, col) = (row0 + i, col0 + j)."""

    crs: str
    resolution: float = RESOLUTION
    tile_px: int = TILE_PX

    @property
    def name(self) -> str:
        return zone_name(self.crs)

    def __post_init__(self) -> None:
        for v in (*NORTHINGS_M, *EASTINGS_M):
            px = v / self.resolution
            if px != round(px) or round(px) % self.tile_px:
                raise StoreError(f"a {self.resolution} m grid with {self.tile_px} px tiles does not tile the zone's "
                                 f"extent (edge at {v} m); use 10 m and a tile size dividing 1024")

    @property
    def row0(self) -> int:
        return -round(NORTHINGS_M[1] / self.resolution)

    @property
    def col0(self) -> int:
        return round(EASTINGS_M[0] / self.resolution)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (LAST_YEAR - FIRST_YEAR + 1, round((NORTHINGS_M[1] - NORTHINGS_M[0]) / self.resolution),
                round((EASTINGS_M[1] - EASTINGS_M[0]) / self.resolution))

    def year_index(self, year: int) -> int:
        if not FIRST_YEAR <= int(year) <= LAST_YEAR:
            raise StoreError(f"year {year} is outside the store's years {FIRST_YEAR}-{LAST_YEAR}")
        return int(year) - FIRST_YEAR

    def tile_of(self, row: int, col: int) -> TileKey:
        return TileKey(self.name, row // self.tile_px, col // self.tile_px)

    def check_rows_cols(self, row: int, col: int, h: int, w: int) -> None:
        r0, c0 = self.row0, self.col0
        _, n, m = self.shape
        if row < r0 or col < c0 or row + h > r0 + n or col + w > c0 + m:
            raise StoreError(f"pixels rows {row}..{row + h} cols {col}..{col + w} of {self.name} fall outside the "
                             f"store's lattice (rows {r0}..{r0 + n}, cols {c0}..{c0 + m})")

    def transform(self) -> tuple[float, ...]:
        """GDAL GeoTransform of the zone's whole array (pixel edges on the global lattice)."""
        r = self.resolution
        return (self.col0 * r, r, 0.0, -self.row0 * r, 0.0, -r)

    def geobox(self, row: int, col: int, h: int, w: int) -> GeoBox:
        from affine import Affine

        r = self.resolution
        return GeoBox((h, w), Affine(r, 0.0, col * r, 0.0, -r, -row * r), self.crs)


@dataclass(frozen=True, order=True)
class TileKey:
    """One tile of a zone: global tile row (grows southwards) and column."""

    zone: str
    trow: int
    tcol: int

    @property
    def id(self) -> str:
        """The same id as `grid.Tile.id` (odc-geo's ix, iy of the zone's GridSpec)."""
        return f"{self.zone.replace('EPSG', 'E')}_{self.tcol:+05d}_{-self.trow - 1:+05d}"

    @classmethod
    def from_id(cls, tile_id: str) -> TileKey:
        """The inverse of `id` (records and planned tiles are stored by id)."""
        zone, ix, iy = tile_id.split("_")
        return cls(zone.replace("E", "EPSG", 1), -int(iy) - 1, int(ix))


@dataclass(frozen=True)
class TileRecord:
    """The completion record of one tile and year, with what fed it (ids, never URLs)."""

    tile: str
    zone: str
    year: int
    row: int  # global row / col of the tile's first pixel
    col: int
    valid_px: int
    run_id: str
    items: dict[str, list[str]] = field(default_factory=dict)  # sensor -> item ids
    checkpoint: dict[str, str] = field(default_factory=dict)  # model, digest
    software_version: str = __version__


# --------------------------------------------------------------------------- creating and checking


def _root_attrs(resolution: float, tile_px: int) -> dict:
    return {"layout": LAYOUT, "layout_version": LAYOUT_VERSION, "resolution_m": resolution, "tile_px": tile_px,
            "years": [FIRST_YEAR, LAST_YEAR], "Conventions": "CF-1.10",
            "title": "glacier_stac glacier predictions on the global UTM lattice"}


def _check_location(loc: Location, create: bool) -> None:
    if loc.is_local:
        p = Path(loc.url.removeprefix("file://"))
        if p.exists() and not p.is_dir():
            raise StoreError(f"store path {p} is a file, not a Zarr store directory")
        if not p.exists():
            if not create:
                raise StoreError(f"no prediction store at {p}")
            parent = next((q for q in p.parents if q.exists()), None)
            if parent is not None and (not parent.is_dir() or not os.access(parent, os.W_OK)):
                raise StoreError(f"cannot create the store at {p}: {parent} is not a writable directory")
            try:  # access() says yes to root everywhere: only creating the directory tells
                p.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create the store at {p}: {e.strerror or e}") from None
        elif create and not os.access(p, os.W_OK):
            raise StoreError(f"the store at {p} is not writable (read-only directory or file system)")
    fs, root = loc.fs()
    if fs.exists(root) and not fs.exists(posixpath.join(root, "zarr.json")):
        names = {posixpath.basename(n) for n in fs.ls(root, detail=False)}
        if names & {".zgroup", ".zarray", ".zattrs", ".zmetadata"}:
            raise StoreError(f"{loc} is a Zarr format 2 store; glacier_stac writes Zarr format 3 (a new store path)")
        if names - {META}:
            raise StoreError(f"{loc} exists and is not a Zarr store (it holds {sorted(names)[:5]})")


def _open_root(loc: Location, mode: str, resolution: float = RESOLUTION, tile_px: int = TILE_PX) -> zarr.Group:
    """The root group, created if asked and absent; refuses a store of another layout, version or grid."""
    _check_location(loc, create=mode != "r")
    store = loc.zarr_store(read_only=mode == "r")
    try:
        root = zarr.open_group(store, mode="r", zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError) as e:
        if mode == "r":
            raise StoreError(f"no prediction store at {loc} ({type(e).__name__})") from None
        root = None
    except (ValueError, TypeError, json.JSONDecodeError) as e:  # zarr 2 metadata, a foreign store
        raise StoreError(f"{loc} is not a Zarr format 3 glacier_stac store: {e}") from None
    if root is None:
        try:
            root = zarr.open_group(store, mode="a", zarr_format=3, attributes=_root_attrs(resolution, tile_px))
        except zarr.errors.ContainsGroupError:  # another writer created it a moment ago
            root = zarr.open_group(store, mode="r", zarr_format=3)
        except (PermissionError, OSError) as e:
            raise StoreError(f"cannot create the store at {loc}: {e}") from None
        if not root.attrs.get("layout"):
            root.attrs.update(_root_attrs(resolution, tile_px))
    attrs = dict(root.attrs)
    if attrs.get("layout") != LAYOUT:
        raise StoreError(f"{loc} is a Zarr store but not a glacier_stac prediction store "
                         f"(layout={attrs.get('layout')!r})")
    if attrs.get("layout_version") != LAYOUT_VERSION:
        raise StoreError(f"{loc} has layout version {attrs.get('layout_version')}; this glacier_stac reads version "
                         f"{LAYOUT_VERSION}")
    if (float(attrs["resolution_m"]), int(attrs["tile_px"])) != (float(resolution), int(tile_px)) and mode != "r":
        raise StoreError(f"{loc} is on a {attrs['resolution_m']} m grid with {attrs['tile_px']} px tiles; this run "
                         f"uses {resolution} m and {tile_px} px")
    if mode != "r":
        root = zarr.open_group(store, mode="a", zarr_format=3)
    return root


def _spatial_ref_attrs(zone: Zone) -> dict:
    crs = CRS(zone.crs)
    wkt = crs.to_wkt()
    return {"crs_wkt": wkt, "spatial_ref": wkt, "GeoTransform": " ".join(repr(v) for v in zone.transform()),
            "grid_mapping_name": "transverse_mercator", "epsg": crs.epsg}


def ensure_zone(loc: Location | str, crs: CRS | str, resolution: float = RESOLUTION, tile_px: int = TILE_PX,
                classes: Sequence[str] = BASE_CLASSES, features: Sequence[str] = ()) -> Zone:
    """Create the zone's group and empty (sparse) arrays if absent; check them if present.

    Creating is deterministic, so two writers creating one zone at once write the same bytes.
    `classes`: the writing model's (its output index is the Label code); the `classes` array's flags
    list them, and widen when a model with more classes (rock glaciers, issue 14) writes later.
    `features`: kept cube features; their arrays are created when missing (a zone first written without them).
    """
    loc = Location.of(loc)
    zone = Zone(str(CRS(crs)), resolution, tile_px)
    root = _open_root(loc, "a", resolution, tile_px)
    name = zone.name
    for attempt in range(10):
        try:
            if name not in root or not root[name].attrs.get("complete"):
                _create_zone(root, zone, classes)  # absent, or another writer is creating it: same bytes
            g = root[name]
            break
        except (zarr.errors.ContainsArrayError, zarr.errors.ContainsGroupError):
            raise  # _create_zone settles these where they arise; retrying would hide a creation bug
        except (KeyError, ValueError):  # metadata half-written by a writer creating the zone at this moment
            time.sleep(0.05 * (attempt + 1))
    else:
        raise StoreError(f"group {name} of {loc} could not be created or read (another writer keeps changing it?)")
    if g.attrs.get("crs") != zone.crs or tuple(g["probability"].shape) != zone.shape:
        raise StoreError(f"group {name} of {loc} has crs {g.attrs.get('crs')} and shape "
                         f"{tuple(g['probability'].shape)}; expected {zone.crs} and {zone.shape}")
    if len(classes) > len(g["classes"].attrs.get("flag_values", ())):
        g["classes"].attrs.update(flag_values=list(range(len(classes))), flag_meanings=" ".join(classes))
    for name in features:
        if name in RESERVED:
            raise StoreError(f"a feature may not be named {name!r}: the store's own variables are {sorted(RESERVED)}")
        if name not in g:
            _create_feature(g, zone, name)
    return zone


def _create_feature(g: zarr.Group, zone: Zone, name: str) -> zarr.Array:
    """A kept feature's (year, y, x) array, packed (`FEATURE_PACKING`); deterministic like `_create_zone`."""
    pk = FEATURE_PACKING.get(name)
    attrs = {"grid_mapping": "spatial_ref", "coordinates": "spatial_ref", "long_name": f"cube feature {name}"}
    if pk is None:
        spec = {"dtype": "float32", "fill_value": float("nan"), "attributes": attrs}
    else:
        spec = {"dtype": "int16", "fill_value": FEATURE_FILL,
                "attributes": {**attrs, "units": pk.units, "scale_factor": pk.scale, "add_offset": pk.offset,
                               "_FillValue": FEATURE_FILL}}
    return _create_or_open(g, name, shape=zone.shape, chunks=(1, zone.tile_px, zone.tile_px),
                           dimension_names=("year", "y", "x"), compressors=[COMPRESSOR], **spec)


def _create_or_open(g: zarr.Group, name: str, **spec) -> zarr.Array:
    try:
        return g.create_array(name, **spec)
    except zarr.errors.ContainsArrayError:  # created by another writer (the same spec: creation is deterministic)
        return g[name]


RESERVED = frozenset({"probability", "classes", "valid", "year", "y", "x", "spatial_ref"})


def _create_zone(root: zarr.Group, zone: Zone, classes: Sequence[str]) -> None:
    """Create what is missing of a zone's group, write its coordinates, then mark it complete.

    Idempotent and deterministic: writers creating one zone at once (processes of two runs, threads
    of one) each create what they find missing and write the same bytes; the `complete` mark comes last,
    so a zone is used only once every array and coordinate is stored (a creator killed half-way is finished
    by the next writer).
    """
    name, tile_px, resolution = zone.name, zone.tile_px, zone.resolution
    try:
        g = root.create_group(name, attributes={"crs": zone.crs, "row0": zone.row0, "col0": zone.col0})
    except zarr.errors.ContainsGroupError:
        g = root[name]
    t, n, m = zone.shape
    chunks = (1, tile_px, tile_px)
    dims = ("year", "y", "x")
    common = {"grid_mapping": "spatial_ref", "coordinates": "spatial_ref"}
    _create_or_open(g, "probability", shape=(t, n, m), chunks=chunks, dtype="uint8", fill_value=255,
                    dimension_names=dims, compressors=[COMPRESSOR],
                    attributes={**common, "long_name": "glacier probability (clean + debris-covered ice)",
                                "units": "1", "scale_factor": 1.0 / PROB_SCALE, "add_offset": 0.0,
                                "_FillValue": 255, "valid_range": [0, PROB_SCALE]})
    _create_or_open(g, "classes", shape=(t, n, m), chunks=chunks, dtype="uint8", fill_value=NODATA_CLASS,
                    dimension_names=dims, compressors=[COMPRESSOR],
                    attributes={**common, "long_name": "surface class", "_FillValue": NODATA_CLASS,
                                "flag_values": list(range(len(classes))), "flag_meanings": " ".join(classes)})
    _create_or_open(g, "valid", shape=(t, n, m), chunks=chunks, dtype="bool", fill_value=False,
                    dimension_names=dims, compressors=[COMPRESSOR],
                    attributes={**common, "long_name": "the model had its required inputs"})
    years = _create_or_open(g, "year", shape=(t,), chunks=(t,), dtype="int32", fill_value=0, dimension_names=("year",),
                            attributes={"long_name": "year of the annual map", "units": "1"})
    years[:] = np.arange(FIRST_YEAR, LAST_YEAR + 1, dtype=np.int32)
    r = resolution
    y = _create_or_open(g, "y", shape=(n,), chunks=(n,), dtype="float64", fill_value=0.0, dimension_names=("y",),
                        compressors=[COORD_COMPRESSOR],
                        attributes={"standard_name": "projection_y_coordinate", "units": "m", "axis": "Y"})
    y[:] = -(zone.row0 + np.arange(n) + 0.5) * r
    x = _create_or_open(g, "x", shape=(m,), chunks=(m,), dtype="float64", fill_value=0.0, dimension_names=("x",),
                        compressors=[COORD_COMPRESSOR],
                        attributes={"standard_name": "projection_x_coordinate", "units": "m", "axis": "X"})
    x[:] = (zone.col0 + np.arange(m) + 0.5) * r
    sr = _create_or_open(g, "spatial_ref", shape=(), dtype="int32", fill_value=0, dimension_names=(),
                         attributes=_spatial_ref_attrs(zone))
    sr[...] = 0
    g.attrs["complete"] = True  # last: every array and coordinate above is stored


# --------------------------------------------------------------------------- records


def _meta(loc: Location, *parts: object) -> tuple[Any, str]:
    fs, root = loc.fs()
    return fs, posixpath.join(root, META, *map(str, parts))


def record_run(loc: Location | str, config: Mapping[str, Any]) -> str:
    """Store a run's configuration, credentials redacted (`redact.redact`); returns its id (a digest)."""
    loc = Location.of(loc)
    _check_location(loc, create=True)  # a path that cannot be a store is refused before anything is written
    body = redact(json.dumps({"software_version": __version__, **config}, sort_keys=True, default=str)).encode()
    run_id = hashlib.sha256(body).hexdigest()[:16]
    fs, path = _meta(loc, "runs", f"{run_id}.json")
    if not fs.exists(path):
        _put_atomic(fs, path, body)
    return run_id


def plan(loc: Location | str, zone: Zone, year: int, tiles: Iterable[TileKey]) -> None:
    """Record the tiles a run sets out to write for a year (one object per tile: no shared writes)."""
    loc = Location.of(loc)
    zone.year_index(year)
    fs, _ = loc.fs()
    for t in tiles:
        _, path = _meta(loc, "planned", zone.name, int(year), f"{t.id}.json")
        if not fs.exists(path):
            _put_atomic(fs, path, json.dumps({"tile": t.id, "trow": t.trow, "tcol": t.tcol}).encode())


def _tile_ids(loc: Location, kind: str, zone_name_: str, year: int) -> set[str]:
    fs, path = _meta(loc, kind, zone_name_, int(year))
    try:
        names = fs.ls(path, detail=False)
    except FileNotFoundError:
        return set()
    return {posixpath.basename(n)[:-5] for n in names if n.endswith(".json")}


def done_tiles(loc: Location | str, zone: Zone | str, year: int) -> set[str]:
    """Ids of the tiles whose data and completion record are stored for `year`."""
    name = zone.name if isinstance(zone, Zone) else zone
    return _tile_ids(Location.of(loc), "done", name, year)


def planned_tiles(loc: Location | str, zone: Zone | str, year: int) -> set[str]:
    name = zone.name if isinstance(zone, Zone) else zone
    return _tile_ids(Location.of(loc), "planned", name, year)


def records(loc: Location | str, zone: Zone | str, year: int) -> list[TileRecord]:
    """The completion records (provenance) of a zone and year."""
    loc = Location.of(loc)
    name = zone.name if isinstance(zone, Zone) else zone
    out = []
    for tid in sorted(done_tiles(loc, name, year)):
        fs, path = _meta(loc, "done", name, int(year), f"{tid}.json")
        rec = _get_json(fs, path)
        if rec is not None:
            out.append(TileRecord(**rec))
    return out


# --------------------------------------------------------------------------- writing one tile (pure + I/O)


def encode_probability(p: np.ndarray) -> np.ndarray:
    """Glacier probability in 0..1 (NaN = no data) to uint8 0..254, 255 = no data."""
    out = np.full(p.shape, 255, dtype=np.uint8)
    ok = np.isfinite(p)
    out[ok] = np.rint(np.clip(p[ok], 0.0, 1.0) * PROB_SCALE).astype(np.uint8)
    return out


def _full_tile(block: np.ndarray, r_in: int, c_in: int, tile_px: int, fill) -> np.ndarray:
    if block.shape == (tile_px, tile_px):
        return block
    out = np.full((tile_px, tile_px), fill, dtype=block.dtype)
    out[r_in:r_in + block.shape[0], c_in:c_in + block.shape[1]] = block
    return out


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_chunks(loc: Location, zone: Zone, arrays: Mapping[str, zarr.Array], coords: tuple[int, int, int]) -> None:
    """Flush a tile's chunk files and the directories naming them to disk before its record is written.

    Why: the record says the data is durable; without this a power cut (not only a killed process) could
    keep a record whose chunks were still in the page cache. An object store's PUT is durable when it returns.
    """
    if not loc.is_local:
        return
    root = Path(loc.url.removeprefix("file://")) / zone.name
    dirs: set[Path] = set()
    for name, arr in arrays.items():
        f = root / name / arr.metadata.encode_chunk_key(coords)
        if f.is_file():  # an all-no-data chunk is not stored (zarr's write_empty_chunks=False)
            _fsync(f)
            dirs.update(q for q in f.parents if q.is_relative_to(root / name))
    for d in sorted(dirs, reverse=True):  # the new c/<year>/<row> directories, deepest first
        _fsync(d)


def write_tile(loc: Location, zone: Zone, year: int, row: int, col: int, probability: np.ndarray,
               classes: np.ndarray, valid: np.ndarray, run_id: str, items: Mapping[str, Sequence[str]],
               checkpoint: Mapping[str, str], features: Mapping[str, np.ndarray] | None = None) -> TileRecord:
    """Write one tile's chunks for one year, then its completion record. Pure I/O, no Dask.

    The block at global (row, col) must lie inside one tile; the rest of the tile is no data
    (runs write whole tiles, so a tile has one writer). `features`: kept cube features, name -> (y, x)
    block, written packed before the record like the rest (their arrays made by `ensure_zone`).
    """
    h, w = classes.shape
    zone.check_rows_cols(row, col, h, w)
    key = zone.tile_of(row, col)
    t0r, t0c = key.trow * zone.tile_px, key.tcol * zone.tile_px
    r_in, c_in = row - t0r, col - t0c
    if r_in + h > zone.tile_px or c_in + w > zone.tile_px:
        raise StoreError(f"block at row {row} col {col} ({h}x{w}) straddles tile {key.id}; chunks must be cut on "
                         "the tile grid (grid.tile_chunks)")
    yi = zone.year_index(year)
    packed = {}  # checked and packed before anything is written: a bad feature leaves no chunk behind
    for name, block in (features or {}).items():
        if block.shape != classes.shape:
            raise StoreError(f"feature {name!r} block {block.shape} does not match the tile's {classes.shape}")
        packed[name] = pack_feature(name, block)
    g = zarr.open_group(loc.zarr_store(), mode="r+", zarr_format=3, path=zone.name)
    i0, j0 = t0r - zone.row0, t0c - zone.col0
    sl = (yi, slice(i0, i0 + zone.tile_px), slice(j0, j0 + zone.tile_px))
    arrays = {name: g[name] for name in ("probability", "classes", "valid", *packed)}
    arrays["probability"][sl] = _full_tile(encode_probability(probability), r_in, c_in, zone.tile_px, 255)
    arrays["classes"][sl] = _full_tile(classes.astype(np.uint8), r_in, c_in, zone.tile_px, NODATA_CLASS)
    arrays["valid"][sl] = _full_tile(valid.astype(bool), r_in, c_in, zone.tile_px, False)
    for name, values in packed.items():
        arrays[name][sl] = _full_tile(values, r_in, c_in, zone.tile_px,
                                      FEATURE_FILL if values.dtype == np.int16 else np.nan)
    _sync_chunks(loc, zone, arrays, (yi, i0 // zone.tile_px, j0 // zone.tile_px))
    rec = TileRecord(tile=key.id, zone=zone.name, year=int(year), row=t0r, col=t0c, valid_px=int(valid.sum()),
                     run_id=run_id, items={k: sorted(redact(str(i)) for i in v if "://" not in str(i))
                                           for k, v in items.items()},
                     checkpoint=dict(checkpoint))
    fs, path = _meta(loc, "done", zone.name, int(year), f"{key.id}.json")
    _put_atomic(fs, path, json.dumps(asdict(rec), sort_keys=True).encode())  # after the data: done means durable
    return rec


# --------------------------------------------------------------------------- the Dask wiring


@dataclass(frozen=True)
class WritePlan:
    """What `write` will do: the tiles to write (as delayed tasks) and those skipped as already done."""

    zone: Zone
    year: int
    tasks: list  # dask Delayed, one per tile to write; each returns a TileRecord
    todo: list[str]
    skipped: list[str]


def _items_of(pred: xr.Dataset) -> dict[str, list[str]]:
    raw = pred.attrs.get("items", {})
    if isinstance(raw, str):
        with contextlib.suppress(json.JSONDecodeError):
            raw = json.loads(raw)
    out = {}
    for k, v in dict(raw).items():
        ids = v.split(",") if isinstance(v, str) else list(v)
        out[str(k)] = [i for i in ids if i]  # URLs and credentials are dropped in one place: write_tile
    return out


def store_grid(loc: Location | str) -> tuple[float, int] | None:
    """(resolution m, tile px) of an existing store, None where there is no store yet."""
    try:
        root = _open_root(Location.of(loc), "r")
    except StoreError:
        return None
    return float(root.attrs["resolution_m"]), int(root.attrs["tile_px"])


def write(pred: xr.Dataset, year: int, loc: Location | str, *, run_id: str,
          checkpoint: Mapping[str, str] | None = None, items: Mapping[str, Sequence[str]] | None = None,
          tile_px: int | None = None, features: xr.DataArray | None = None) -> WritePlan:
    """Lazy writes of a prediction (from `infer.predict`) into the store: one task per tile, done tiles skipped.

    Nothing is computed here; the caller (pipeline) decides where and when the tasks run. Each task
    receives only its own tile's blocks and returns a small `TileRecord`; the client never gathers an array.
    `features`: (feature, y, x) cube features on the prediction's grid to keep beside it (`FEATURE_PACKING`).
    Beside `infer.predict_tile` (the pipeline) they share the cube's tasks with the model; `infer.predict`
    fuses its reads into its halo tasks, so features kept beside its output read the cube once more (measured:
    28 cube blocks computed for 9 tiles instead of 19).
    """
    loc = Location.of(loc)
    if GLACIER_PROBABILITY not in pred or CLASSES_VAR not in pred or VALID not in pred:
        raise StoreError(f"a prediction needs {GLACIER_PROBABILITY}, {CLASSES_VAR} and {VALID}; got {list(pred)}")
    crs = pred.rio.crs
    if crs is None:
        raise StoreError("the prediction has no CRS (build the cube with cube.build on a grid.geobox_for GeoBox)")
    gb = GeoBox((pred.sizes["y"], pred.sizes["x"]), pred.rio.transform(), crs)
    res = abs(gb.resolution.x)
    if tile_px is None:
        tile_px = (store_grid(loc) or (res, TILE_PX))[1]
    names = [str(f) for f in features["feature"].values] if features is not None else []
    if features is not None and (dim := differing_dim(features, pred)):
        raise StoreError(f"the features to keep are not on the prediction's grid (their {dim} differ)")
    zone = ensure_zone(loc, CRS(str(crs)), resolution=res, tile_px=tile_px,
                       classes=[str(c) for c in pred["class"].values] if "class" in pred.coords else BASE_CLASSES,
                       features=names)
    zone.year_index(year)
    row0, col0 = global_origin(gb)
    prob = pred[GLACIER_PROBABILITY].transpose("y", "x").data
    cls = pred[CLASSES_VAR].transpose("y", "x").data
    val = pred[VALID].transpose("y", "x").data
    if not isinstance(prob, da.Array):
        from glacier_stac.grid import tile_chunks

        chunks = tile_chunks(gb, zone.tile_px)
        prob, cls, val = (da.from_array(np.asarray(a), chunks=chunks) for a in (prob, cls, val))
    if not (prob.chunks == cls.chunks == val.chunks):
        cls, val = cls.rechunk(prob.chunks), val.rechunk(prob.chunks)
    fdata = {}
    for name in names:
        f = features.sel(feature=name).transpose("y", "x").data
        f = da.from_array(np.asarray(f), chunks=prob.chunks) if not isinstance(f, da.Array) else f.rechunk(prob.chunks)
        fdata[name] = f.to_delayed(optimize_graph=False)
    items = dict(items) if items is not None else _items_of(pred)
    checkpoint = dict(checkpoint or {"model": str(pred.attrs.get("model", "unknown"))})
    done = done_tiles(loc, zone, year)
    ys = np.concatenate([[0], np.cumsum(prob.chunks[0])])
    xs = np.concatenate([[0], np.cumsum(prob.chunks[1])])
    # unoptimised: optimising each array on its own fuses the shared model task into each of the three
    # chains under new names, so every tile's prediction ran three times (measured: 27 model calls for
    # 9 tiles); the keys stay shared this way, and resource annotations stay on the model task
    pb, cb, vb = (a.to_delayed(optimize_graph=False) for a in (prob, cls, val))
    tasks, todo, skipped, keys = [], [], [], set()
    write_fn = dask.delayed(write_tile, pure=False)
    for i in range(len(ys) - 1):
        for j in range(len(xs) - 1):
            r, c = row0 + int(ys[i]), col0 + int(xs[j])
            key = zone.tile_of(r, c)
            if zone.tile_of(r + int(ys[i + 1] - ys[i]) - 1, c + int(xs[j + 1] - xs[j]) - 1) != key:
                raise StoreError(f"chunk ({i}, {j}) of the prediction straddles tiles; cut chunks on the tile grid")
            if key.id in keys:
                raise StoreError(f"two chunks of the prediction fall in tile {key.id}; write whole tiles")
            keys.add(key.id)
            if key.id in done:
                skipped.append(key.id)
                continue
            todo.append(key.id)
            tasks.append(write_fn(loc, zone, int(year), r, c, pb[i, j], cb[i, j], vb[i, j], run_id, items,
                                  checkpoint, {n: fb[i, j] for n, fb in fdata.items()} or None,
                                  dask_key_name=f"store-write-{zone.name}-{year}-{key.id}-{run_id}"))
    plan(loc, zone, year, [zone.tile_of(row0 + int(ys[i]), col0 + int(xs[j]))
                           for i in range(len(ys) - 1) for j in range(len(xs) - 1)])
    return WritePlan(zone, int(year), tasks, todo, skipped)


# --------------------------------------------------------------------------- reading


def zones(loc: Location | str) -> list[str]:
    return _zone_groups(_open_root(Location.of(loc), "r"))


def _zone_groups(root: zarr.Group) -> list[str]:
    with warnings.catch_warnings():  # the records under _glacier_stac/ are not Zarr nodes, by design
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy")
        return sorted(k for k in root.group_keys() if k.startswith("EPSG"))


def _mask_undone(block: np.ndarray, done: frozenset, years: tuple[int, ...], zone: Zone, i0: int, j0: int,
                 fill, block_info=None) -> np.ndarray:
    """No data over tiles without a completion record (a block is one tile-year or part of one)."""
    loc_ = block_info[0]["array-location"]
    (t0, _), (r0, r1), (c0, c1) = loc_
    out = block
    for dt in range(block.shape[0]):
        y = years[t0 + dt]
        rows = range((zone.row0 + i0 + r0) // zone.tile_px, (zone.row0 + i0 + r1 - 1) // zone.tile_px + 1)
        cols = range((zone.col0 + j0 + c0) // zone.tile_px, (zone.col0 + j0 + c1 - 1) // zone.tile_px + 1)
        for tr in rows:
            for tc in cols:
                if (y, TileKey(zone.name, tr, tc).id) in done:
                    continue
                if out is block:
                    out = block.copy()
                a0 = max(tr * zone.tile_px - zone.row0 - i0 - r0, 0)
                a1 = min((tr + 1) * zone.tile_px - zone.row0 - i0 - r0, block.shape[1])
                b0 = max(tc * zone.tile_px - zone.col0 - j0 - c0, 0)
                b1 = min((tc + 1) * zone.tile_px - zone.col0 - j0 - c0, block.shape[2])
                out[dt, a0:a1, b0:b1] = fill
    return out


def open_predictions(store: Location | str, aoi=None, years: Sequence[int] | int | None = None, *,
                     complete_only: bool = True, zone: str | None = None,
                     storage_options: Mapping[str, Any] | None = None) -> xr.Dataset:
    """A lazy, georeferenced Dataset (year, y, x) of stored predictions, cut to the AOI.

    `aoi`: anything `catalog.load_aoi` accepts or an odc-geo Geometry; without it, the extent of the
    tiles planned for the years. Years whose tiles are not all done are refused, naming the tiles,
    unless `complete_only=False`: then undone tiles read as NaN / 255 / False, never zeros.
    """
    loc = Location.of(store, storage_options)
    root = _open_root(loc, "r")
    resolution, tile_px = float(root.attrs["resolution_m"]), int(root.attrs["tile_px"])
    present = _zone_groups(root)
    if not present:
        raise StoreError(f"store {loc} holds no predictions yet")
    gb_aoi = None
    if aoi is not None:
        if not isinstance(aoi, geom.Geometry):
            from glacier_stac.catalog import load_aoi

            aoi = load_aoi(aoi).geometry
        gb_aoi = geobox_for(aoi, resolution, crs=CRS(f"EPSG:{zone.removeprefix('EPSG')}") if zone else None)
        zone = zone_name(gb_aoi.crs)
    if zone is None:
        if len(present) > 1:
            raise StoreError(f"store {loc} holds zones {present}; pass an aoi or zone=")
        zone = present[0]
    if zone not in present:
        raise StoreError(f"store {loc} has no predictions in {zone} (it has {present})")
    z = Zone(f"EPSG:{zone.removeprefix('EPSG')}", resolution, tile_px)
    if years is None:
        years = sorted({int(p) for p in _years_with(loc, "planned", zone)})
        if not years:
            raise StoreError(f"store {loc} has no planned years in {zone}")
    years = [int(years)] if isinstance(years, int | np.integer) else [int(y) for y in years]
    for y in years:
        z.year_index(y)
    planned = {y: planned_tiles(loc, zone, y) for y in years}
    done = {y: done_tiles(loc, zone, y) for y in years}
    if gb_aoi is not None:
        r0, c0 = global_origin(gb_aoi)
        h, w = gb_aoi.shape
    else:
        keys = [k for y in years for k in planned[y]]
        if not keys:
            raise StoreError(f"no tiles were planned in {zone} for years {years}")
        tiles = [TileKey.from_id(k) for k in keys]
        tr, tc = [t.trow for t in tiles], [t.tcol for t in tiles]
        r0, c0 = min(tr) * tile_px, min(tc) * tile_px
        h, w = (max(tr) + 1) * tile_px - r0, (max(tc) + 1) * tile_px - c0
    z.check_rows_cols(r0, c0, h, w)
    wanted = {TileKey(zone, tr, tc).id for tr in range(r0 // tile_px, (r0 + h - 1) // tile_px + 1)
              for tc in range(c0 // tile_px, (c0 + w - 1) // tile_px + 1)}
    missing = {y: sorted((planned[y] & wanted) - done[y]) for y in years}
    empty = [y for y in years if not (planned[y] & wanted)]
    if empty and complete_only:
        raise StoreError(f"store {loc} has no predictions for year(s) {empty} in {zone} over this area")
    bad = {y: m for y, m in missing.items() if m}
    if bad and complete_only:
        detail = "; ".join(f"{y}: {len(m)} tile(s) not done ({', '.join(m[:5])}{'...' if len(m) > 5 else ''})"
                           for y, m in bad.items())
        raise StoreError(f"predictions in {loc} are incomplete: {detail}. Finish the run, or pass complete_only=False "
                         "to read undone tiles as no data")
    # opened unchunked (lazy indexing) and cut first: a zone-wide Dask graph would have ~10^8 chunks
    ds = xr.open_zarr(loc.zarr_store(read_only=True), group=zone, zarr_format=3, consolidated=False,
                      chunks=None, decode_coords="all")
    i0, j0 = r0 - z.row0, c0 - z.col0
    ds = ds.isel(y=slice(i0, i0 + h), x=slice(j0, j0 + w)).sel(year=years)
    cy = aligned_chunks(r0, h, tile_px)
    cx = aligned_chunks(c0, w, tile_px)
    ds = ds.chunk({"year": 1, "y": cy, "x": cx})  # one chunk per stored tile (partial at the AOI's edges)
    done_set = frozenset((y, t) for y in years for t in done[y])
    ds[PROBABILITY] = ds[PROBABILITY].astype(np.float32)
    ds[CLASSES_VAR] = ds[CLASSES_VAR].fillna(NODATA_CLASS).astype(np.uint8)  # codes, not a masked float
    ds[CLASSES_VAR].attrs.update(nodata=NODATA_CLASS)
    kept = [n for n in ds.data_vars if n not in RESERVED and ds[n].dims == ("year", "y", "x")]
    for name in kept:  # kept features: float32 (packing decoded), NaN where not stored
        ds[name] = ds[name].astype(np.float32)
    for name, fill in ((PROBABILITY, np.nan), (CLASSES_VAR, NODATA_CLASS), (VALID, False),
                       *((n, np.nan) for n in kept)):
        v = ds[name]
        data = v.data.map_blocks(_mask_undone, done_set, tuple(years), z, i0, j0, fill, dtype=v.dtype)
        ds[name] = v.copy(data=data)
    ds = ds.rio.write_crs(z.crs).rio.write_transform(z.geobox(r0, c0, h, w).affine)
    ds.attrs.update({"store": loc.url, "zone": zone, "complete": not bad,
                     "incomplete_tiles": json.dumps({str(y): m for y, m in bad.items()})})
    return ds


def _years_with(loc: Location, kind: str, zone: str) -> list[str]:
    fs, path = _meta(loc, kind, zone)
    try:
        return [posixpath.basename(p) for p in fs.ls(path, detail=False)]
    except FileNotFoundError:
        return []


# --------------------------------------------------------------------------- STAC for the outputs


def write_stac(loc: Location | str, out_dir: str | os.PathLike[str], *, collection_id: str = "glacier-stac-predictions",
               href: str | None = None) -> Path:
    """A STAC Collection and one Item per zone and complete year, pointing at the Zarr store.

    Returns the directory holding `collection.json` and `items.json` (a FeatureCollection, the form
    `rustac serve` and pypgstac load). Hrefs are the store URL without credentials.
    """
    import pystac
    from odc.geo.geom import box

    loc = Location.of(loc)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    href = href or loc.url
    items = []
    res, tp = store_grid(loc)
    for zn in zones(loc):
        for ys in _years_with(loc, "planned", zn):
            year = int(ys)
            planned, done = planned_tiles(loc, zn, year), done_tiles(loc, zn, year)
            if not planned or planned - done:
                continue
            recs = records(loc, zn, year)
            tiles = [TileKey.from_id(k) for k in done]
            tr, tc = [t.trow for t in tiles], [t.tcol for t in tiles]
            crs = f"EPSG:{zn.removeprefix('EPSG')}"
            ext = box(min(tc) * tp * res, -(max(tr) + 1) * tp * res, (max(tc) + 1) * tp * res, -min(tr) * tp * res,
                      crs).to_crs("EPSG:4326")
            ckpts = sorted({json.dumps(r.checkpoint, sort_keys=True) for r in recs})
            item = pystac.Item(
                id=f"{zn}-{year}", geometry=ext.json, bbox=list(ext.boundingbox), properties={
                    "start_datetime": f"{year}-01-01T00:00:00Z", "end_datetime": f"{year}-12-31T23:59:59Z",
                    "proj:code": crs, "glacier_stac:year": year, "glacier_stac:zone": zn,
                    "glacier_stac:tiles": len(done), "glacier_stac:checkpoints": [json.loads(c) for c in ckpts],
                }, datetime=None)
            item.add_asset("predictions", pystac.Asset(
                href=href, media_type="application/vnd+zarr", roles=["data"], title="glacier predictions (Zarr v3)",
                extra_fields={"xarray:open_kwargs": {"engine": "zarr", "group": zn, "consolidated": False,
                                                     "zarr_format": 3},
                              "zarr:group": zn}))
            item.collection_id = collection_id
            items.append(item)
    if not items:
        raise StoreError(f"store {loc} has no complete year to describe")
    bbox = [min(i.bbox[0] for i in items), min(i.bbox[1] for i in items),
            max(i.bbox[2] for i in items), max(i.bbox[3] for i in items)]
    years = sorted(i.properties["glacier_stac:year"] for i in items)
    import datetime as dt

    coll = pystac.Collection(
        id=collection_id, description="Annual glacier probability and class maps from glacier_stac",
        extent=pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent(
            [[dt.datetime(years[0], 1, 1, tzinfo=dt.UTC), dt.datetime(years[-1], 12, 31, tzinfo=dt.UTC)]])),
        license="CC-BY-4.0")
    coll.add_asset("predictions", pystac.Asset(href=href, media_type="application/vnd+zarr", roles=["data"]))
    (out / "collection.json").write_text(json.dumps(coll.to_dict(include_self_link=False), indent=1))
    fc = {"type": "FeatureCollection", "features": [i.to_dict(include_self_link=False) for i in items]}
    (out / "items.json").write_text(json.dumps(fc, indent=1))
    return out
