"""STAC search: AOIs, season windows, conformance-aware filtering, item normalisation, which signer applies.

The same code searches Planetary Computer and the local synthetic catalog. Items are normalised in one
place (`normalise_item`) so the cube never sees the differences between catalogs (`proj:code` vs
`proj:epsg`, relative hrefs, bare paths). URLs are signed at read time (by the reader), never here, so
no token is ever stored in an item, a log line, a Zarr attribute or the inventory.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse

import numpy as np
import pystac
from odc.geo import geom
from pystac_client import Client
from pystac_client.conformance import ConformanceClasses
from pystac_client.stac_api_io import StacApiIO
from urllib3.util.retry import Retry

from glacier_stac import sensors as S
from glacier_stac.grid import ID_COLUMNS, check_lonlat_extent, valid_outlines
from glacier_stac.redact import redact

log = logging.getLogger(__name__)

PLANETARY_COMPUTER = "https://planetarycomputer.microsoft.com/api/stac/v1"
REMOTE_SCHEMES = ("https", "s3", "az", "gs")

# The first year any sensor read here has data (Landsat Collection 2 Level-2 starts in August 1982).
FIRST_YEAR = 1982
FIRST_YEAR_WHY = "Landsat Collection 2 Level-2, the earliest, starts in 1982; Sentinel-1 in 2014, Sentinel-2 in 2015"

# End of the ablation season: least seasonal snow, glacier outlines most visible.
SEASON_NORTH = (7, 10)
SEASON_SOUTH = (1, 4)


class CatalogError(RuntimeError):
    """The catalog could not be reached or answered wrongly."""


class NoItemsError(LookupError):
    """A sensor has no items for a year over an AOI."""


# --------------------------------------------------------------------------- AOI


@dataclass(frozen=True)
class AOI:
    """An area of interest in lon/lat, with a name used in every message about it."""

    geometry: geom.Geometry  # EPSG:4326
    name: str

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        b = self.geometry.boundingbox
        return (b.left, b.bottom, b.right, b.top)

    @property
    def hemisphere(self) -> str:
        return "south" if self.geometry.centroid.coords[0][1] < 0 else "north"

    def __str__(self) -> str:
        b = ", ".join(f"{v:.4f}" for v in self.bbox)
        return f"AOI {self.name!r} [{b}]"


def load_aoi(aoi: Any, name: str | None = None, ids: Iterable[str] | None = None,
             id_column: str | None = None) -> AOI:
    """An AOI from a bbox (tuple or "minx,miny,maxx,maxy"), GeoJSON (dict or file), any vector file
    geopandas reads, a GeoDataFrame, or glacier outlines filtered by ids (e.g. RGI ids)."""
    import geopandas as gpd
    import shapely.geometry

    if isinstance(aoi, AOI):
        if ids is not None:
            raise ValueError(f"glacier ids {list(ids)[:10]} select features of an outline file; {aoi} is not one")
        return aoi
    if isinstance(aoi, str) and _looks_like_bbox(aoi):
        aoi = _parse_bbox(aoi)
    if isinstance(aoi, tuple | list) and len(aoi) == 4 and all(isinstance(v, int | float) for v in aoi):
        if ids is not None:
            raise ValueError(f"glacier ids {list(ids)[:10]} select features of an outline file; the AOI "
                             f"bbox {tuple(aoi)} has none (give the outline file as the AOI)")
        return _checked(AOI(_bbox_geometry(tuple(map(float, aoi))), name or "bbox"))
    if isinstance(aoi, Mapping):
        g = aoi.get("geometry", aoi) if aoi.get("type") == "Feature" else aoi
        if g.get("type") == "FeatureCollection":
            gdf = gpd.GeoDataFrame.from_features(g["features"], crs="EPSG:4326")
            return _from_frame(gdf, name or "geojson", ids, id_column)
        if ids is not None:
            raise ValueError(f"glacier ids {list(ids)[:10]} select features of an outline file; a single "
                             "GeoJSON geometry has none")
        gdf = gpd.GeoDataFrame(geometry=[shapely.geometry.shape(g)], crs="EPSG:4326")
        return _from_frame(gdf, name or "geojson", None, None)
    if isinstance(aoi, gpd.GeoDataFrame):
        return _from_frame(aoi, name or "outlines", ids, id_column)
    if isinstance(aoi, str | Path):
        path = Path(aoi)
        if path.is_dir():
            raise ValueError(f"AOI {path} is a directory; give a bbox 'minx,miny,maxx,maxy' or a vector file")
        if not path.exists():
            raise FileNotFoundError(f"AOI file {path} does not exist (give a bbox 'minx,miny,maxx,maxy' "
                                    "or a vector file)")
        try:
            gdf = gpd.read_file(path)
        except Exception as e:  # noqa: BLE001 - any driver error means the same to the user
            raise ValueError(f"AOI file {path} could not be read as a vector file: {e}") from None
        return _from_frame(gdf, name or path.stem, ids, id_column)
    raise TypeError(f"cannot make an AOI from {type(aoi).__name__}; give a bbox, GeoJSON or a vector file")


_NUMBER = r"\s*[-+]?(?:\d+\.?\d*|\.\d+|nan|inf)(?:[eE][-+]?\d+)?\s*"


def _looks_like_bbox(text: str) -> bool:
    """Numbers separated by commas (any count): meant as a bbox, whatever file might share the name."""
    return re.fullmatch(rf"(?i){_NUMBER}(,{_NUMBER})+", text) is not None and not Path(text).exists()


def _parse_bbox(text: str) -> tuple[float, float, float, float]:
    values = [float(v) for v in text.split(",")]
    if len(values) != 4:
        raise ValueError(f"AOI bbox {text!r} has {len(values)} numbers; give 4: minx,miny,maxx,maxy (lon/lat)")
    return tuple(values)  # type: ignore[return-value]


def _bbox_geometry(bbox: tuple[float, float, float, float]) -> geom.Geometry:
    """A lon/lat box, or a clear error naming what is wrong with the four numbers."""
    minx, miny, maxx, maxy = bbox
    text = ",".join(f"{v:g}" for v in bbox)
    if not all(map(math.isfinite, bbox)):
        raise ValueError(f"AOI bbox {text} holds a non-finite number")
    if not (-180 <= minx <= 180 and -180 <= maxx <= 180 and -90 <= miny <= 90 and -90 <= maxy <= 90):
        raise ValueError(f"AOI bbox {text} is not in lon/lat degrees (EPSG:4326): need -180..180, -90..90")
    if miny >= maxy:
        raise ValueError(f"AOI bbox {text} is empty or reversed in latitude (need miny < maxy)")
    if minx == maxx:
        raise ValueError(f"AOI bbox {text} is empty (minx = maxx)")
    if minx > maxx:
        if minx > 0 > maxx and maxx + 360 - minx < 180:
            raise ValueError(f"AOI bbox {text} crosses the antimeridian (minx > maxx); split it into two AOIs, "
                             "one each side of 180°, so each maps onto its own UTM zone")
        raise ValueError(f"AOI bbox {text} is reversed in longitude (need minx < maxx)")
    return geom.box(minx, miny, maxx, maxy, "EPSG:4326")


def _from_frame(gdf, name: str, ids: Iterable[str] | None, id_column: str | None) -> AOI:
    if gdf.crs is None:
        raise ValueError(f"AOI {name!r} has no CRS; set one (RGI/GLIMS files are EPSG:4326)")
    if ids is not None:
        ids = list(ids)
        col = id_column or next((c for c in ID_COLUMNS if c in gdf.columns), None)
        if col is None:
            raise ValueError(f"AOI {name!r}: no id column to select glacier ids from; columns: {list(gdf.columns)}")
        missing = sorted(set(ids) - set(gdf[col].astype(str)))
        if missing:
            raise ValueError(f"AOI {name!r}: glacier ids not found in column {col!r}: {missing[:10]}")
        gdf = gdf[gdf[col].astype(str).isin(ids)]
    if gdf.empty:
        raise ValueError(f"AOI {name!r} has no geometries")
    union = valid_outlines(gdf, f"AOI {name!r}").geometry.union_all()  # repaired: invalid ones make GEOS raise
    return _checked(AOI(geom.Geometry(union, "EPSG:4326"), name))


def _checked(aoi: AOI) -> AOI:
    """The AOI check every command shares (grid.check_lonlat_extent): one UTM zone, not polar, not empty."""
    g = aoi.geometry
    if g.is_empty or not g.geom.is_valid:
        raise ValueError(f"{aoi} geometry is empty or invalid")
    check_lonlat_extent(g.geom, str(aoi))
    return aoi


# --------------------------------------------------------------------------- seasons


def season(year: int, hemisphere: str = "north", months: tuple[int, int] | None = None) -> tuple[str, str]:
    """The acquisition window of a year: end of the ablation season by default.

    North: July-October; south: January-April of the same calendar year. `months` overrides
    (start, end), inclusive; start > end wraps into the next year (e.g. (11, 2)).
    """
    if hemisphere not in ("north", "south"):
        raise ValueError(f"hemisphere must be 'north' or 'south', got {hemisphere!r}")
    m0, m1 = months or (SEASON_NORTH if hemisphere == "north" else SEASON_SOUTH)
    if not (1 <= m0 <= 12 and 1 <= m1 <= 12):
        raise ValueError(f"season months must be 1..12, got {(m0, m1)}")
    y1 = year + 1 if m1 < m0 else year
    end = date(y1 + (m1 == 12), m1 % 12 + 1, 1).toordinal() - 1
    return f"{year}-{m0:02d}-01T00:00:00Z", f"{date.fromordinal(end).isoformat()}T23:59:59Z"


def check_years(years: Iterable[int], today: date | None = None) -> list[int]:
    """The years every entry point accepts (search, synthetic worlds, the CLI): integers, increasing,
    from the first year any sensor glacier_stac reads has data up to this year.

    Why one rule: a world generated for a year that search refuses, or a search that silently finds
    nothing for a year no satellite has seen yet, both look like data gaps when they are input errors.
    """
    ys = list(years)
    if not ys:
        raise ValueError("no years given (the list is empty); give at least one, e.g. 2019-2023")
    bad = [y for y in ys if isinstance(y, bool) or not isinstance(y, int | np.integer)]
    if bad:
        raise ValueError(f"years must be integers, got {bad}")
    this_year = (today or date.today()).year
    future = [int(y) for y in ys if y > this_year]
    if future:
        raise ValueError(f"years {future} are in the future (it is {this_year}): no sensor has seen them yet; "
                         f"years must be between {FIRST_YEAR} and {this_year}")
    early = [int(y) for y in ys if y < FIRST_YEAR]
    if early:
        raise ValueError(f"years {early} are before the satellite era of the sensors glacier_stac reads "
                         f"({FIRST_YEAR_WHY}); years must be between {FIRST_YEAR} and {this_year}")
    if ys != sorted(set(ys)):
        raise ValueError(f"years must be increasing and distinct, got {ys}")
    return [int(y) for y in ys]


# --------------------------------------------------------------------------- items


def href_allowed(href: str, allow_local: bool) -> None:
    """Refuse hrefs a remote catalog must not make us read (local files, link-local, metadata)."""
    u = urlparse(href)
    scheme = u.scheme or "file"
    if scheme == "file":
        if not allow_local:
            raise PermissionError(f"asset href {redact(href)} is a local file, but the catalog is remote; "
                                  "pass allow_local=True to read local files")
        return
    if scheme == "http" and not allow_local:
        raise PermissionError(f"asset href {redact(href)} is plain http; remote assets must be "
                              f"{'/'.join(REMOTE_SCHEMES)}")
    if scheme not in (*REMOTE_SCHEMES, "http"):
        raise PermissionError(f"asset href {redact(href)} has scheme {scheme!r}; allowed: {REMOTE_SCHEMES}")
    host = (u.hostname or "").lower()
    if host in ("metadata.google.internal", "metadata", "169.254.169.254", "fd00:ec2::254"):
        raise PermissionError(f"asset href {redact(href)} points at a cloud metadata service")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return
    if ip.is_link_local or (not allow_local and (ip.is_loopback or ip.is_private)):
        raise PermissionError(f"asset href {redact(href)} points at a link-local/private address")


def normalise_item(item: pystac.Item | Mapping[str, Any], allow_local: bool = False,
                   sensor: S.Sensor | None = None) -> pystac.Item:
    """One normal form for items from any catalog (the only place that knows their differences).

    `sensor` is the record the item was searched for (default: the registered sensor of its collection);
    two sensors may read one collection (Landsat's thermal and OLI bands are both `landsat-c2-l2`).

    - `proj:epsg` and `proj:code` both present (stackstac reads `proj:epsg` only);
    - asset hrefs absolute URLs (relative ones resolved against the item's self link, bare paths
      made `file://`), checked against `href_allowed`;
    - `raster:bands` scale/offset/nodata filled from the sensor record where the item has none, so
      reflectance is decoded the same way for real and synthetic items.
    """
    d = json.loads(json.dumps(item.to_dict(transform_hrefs=False) if isinstance(item, pystac.Item) else item))
    props = d.setdefault("properties", {})
    base = next((ln["href"] for ln in d.get("links", []) if ln.get("rel") == "self"), None)
    _normalise_proj(props, where=f"item {d.get('id')}")
    sensor = sensor or S.BY_COLLECTION.get(d.get("collection", ""))
    for key, asset in d.get("assets", {}).items():
        _normalise_proj(asset, where=f"item {d.get('id')} asset {key}")
        asset["href"] = _absolute(asset["href"], base)
        if sensor is not None and key in sensor.asset_keys():
            href_allowed(asset["href"], allow_local)
            band = sensor.band(key)
            rb = dict((asset.get("raster:bands") or [{}])[0])
            scale, offset = sensor.scaling(d, key)
            rb.setdefault("nodata", band.nodata)
            if not band.categorical:
                rb["scale"], rb["offset"] = scale, offset
            asset["raster:bands"] = [rb]
    if "datetime" not in props or props["datetime"] is None:
        props["datetime"] = props.get("start_datetime")
    # migrate=False: pystac's migration would drop proj:epsg again (projection v2 keeps proj:code only)
    return pystac.Item.from_dict(d, preserve_dict=False, migrate=False)


def _normalise_proj(obj: dict, where: str) -> None:
    code = obj.get("proj:code")
    epsg = obj.get("proj:epsg")
    if epsg is None and isinstance(code, str):
        if code.upper().startswith("EPSG:"):
            obj["proj:epsg"] = int(code.split(":")[1])
        else:
            raise ValueError(f"{where}: proj:code {code!r} is not an EPSG code; stackstac needs EPSG")
    elif epsg is not None and code is None:
        obj["proj:code"] = f"EPSG:{int(epsg)}"


def _absolute(href: str, base: str | None) -> str:
    u = urlparse(href)
    if u.scheme:
        return href
    if base is not None and urlparse(base).scheme:
        return urljoin(base, href)
    p = Path(href)
    if not p.is_absolute():
        if base is not None:
            p = Path(base).parent / p
        else:
            raise ValueError(f"asset href {href!r} is relative and the item has no self link to resolve it")
    return p.resolve().as_uri()


# --------------------------------------------------------------------------- the catalog


@dataclass
class Catalog:
    """An open STAC API and what it can do."""

    url: str
    client: Client
    local: bool
    supports_query: bool
    supports_filter: bool
    signer: str | None  # "planetary-computer" or None; applied at read time

    @property
    def name(self) -> str:
        return "Planetary Computer" if self.url.rstrip("/") == PLANETARY_COMPUTER else redact(self.url)


def is_loopback_url(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_catalog(url: str = PLANETARY_COMPUTER, *, timeout: float = 30.0, retries: int = 5,
                 signer: str | None = "auto") -> Catalog:
    """Open a STAC API with retries (429/5xx, backoff) and read its conformance classes."""
    retry = Retry(total=retries, backoff_factor=0.5, status_forcelist=(429, 500, 502, 503, 504),
                  allowed_methods=None, raise_on_status=False)
    io = StacApiIO(timeout=timeout, max_retries=retry)
    try:
        client = Client.open(url, stac_io=io, timeout=timeout)
    except Exception as e:  # noqa: BLE001 - requests/pystac raise many kinds; the message is what matters
        raise CatalogError(f"STAC API {redact(url)} is unreachable or not a STAC API: "
                           f"{type(e).__name__}: {_short(e)}") from None
    if signer == "auto":
        signer = "planetary-computer" if "planetarycomputer" in url else None
    cat = Catalog(
        url=url, client=client, local=is_loopback_url(url),
        supports_query=client.conforms_to(ConformanceClasses.QUERY),
        supports_filter=client.conforms_to(ConformanceClasses.FILTER),
        signer=signer,
    )
    log.info("opened %s (query=%s, filter=%s)", cat.name, cat.supports_query, cat.supports_filter)
    return cat


def _short(e: Exception) -> str:
    """The first line of an error, redacted, with the HTTP status when there is one (a 404's body is HTML)."""
    s = str(e).strip().splitlines()[0] if str(e).strip() else ""
    status = getattr(e, "status_code", None)
    if status is None and getattr(e, "response", None) is not None:
        status = getattr(e.response, "status_code", None)
    if status is not None:
        s = f"HTTP {status}" + (f": {s}" if s and not s.lstrip().startswith("<") else "")
    return redact(s)[:300]


@dataclass
class SearchResult:
    """Items per sensor and year for one AOI, and the (sensor, year) pairs that had none."""

    aoi: AOI
    catalog: str
    signer: str | None = None  # applied at read time by the cube's reader
    items: dict[str, dict[int, list[pystac.Item]]] = field(default_factory=dict)
    gaps: list[tuple[str, int]] = field(default_factory=list)

    def for_year(self, year: int) -> dict[str, list[pystac.Item]]:
        """Items per sensor for a year; static sensors (the DEM) are the same every year."""
        return {s: by_year.get(year, by_year.get(0, [])) for s, by_year in self.items.items()}

    def summary(self) -> list[dict[str, Any]]:
        return [dict(sensor=s, year=y, items=len(v)) for s, by in self.items.items() for y, v in sorted(by.items())]


def search(aoi: Any, years: Iterable[int], sensors: str | Sequence[str | S.Sensor] | None = None,
           catalog: Catalog | str | None = None, *, max_cloud: float | None = 80.0,
           season_months: tuple[int, int] | None = None, missing: str = "raise", allow_local: bool | None = None,
           limit: int = 100, more_years: Mapping[str, Iterable[int]] | None = None) -> SearchResult:
    """Search a STAC API for every sensor and year over an AOI.

    `sensors`: names or `Sensor` records (registered or not); default every registered sensor. Cloud
    cover is filtered by the server only when it advertises `query` or CQL2 `filter`;
    otherwise here, after the search. `missing="raise"` raises `NoItemsError` naming sensor, year
    and AOI when one has no items; `missing="record"` records the gap and goes on. `more_years`: sensor
    name -> years searched for that sensor besides `years` (an annual update reads the seasons before the
    year from the sensors its history features come from only).
    """
    if missing not in ("raise", "record"):
        raise ValueError(f"missing must be 'raise' or 'record', got {missing!r}")
    if max_cloud is not None and not (0 <= max_cloud <= 100):  # also refuses NaN
        raise ValueError(f"max_cloud is eo:cloud_cover in percent, 0..100; got {max_cloud}")
    area = load_aoi(aoi)
    ys = check_years(years)
    sens = S.resolve(sensors)
    extra = {k: check_years(v) for k, v in (more_years or {}).items()}
    unknown = sorted(set(extra) - {s.name for s in sens})
    if unknown:
        raise ValueError(f"more_years names sensors {unknown} that are not searched ({[s.name for s in sens]})")
    cat = catalog if isinstance(catalog, Catalog) else open_catalog(catalog or PLANETARY_COMPUTER)
    local_ok = cat.local if allow_local is None else allow_local
    result = SearchResult(aoi=area, catalog=cat.name, signer=cat.signer)
    intersects = area.geometry.json
    for sensor in sens:
        result.items[sensor.name] = {}
        windows = [(0, None)] if not sensor.per_acquisition else [
            (y, season(y, area.hemisphere, season_months)) for y in sorted(set(ys) | set(extra.get(sensor.name, ())))]
        for year, window in windows:
            kw: dict[str, Any] = dict(collections=[sensor.collection], intersects=intersects, limit=limit)
            if window is not None:
                kw["datetime"] = f"{window[0]}/{window[1]}"
            cloud_server = False
            if max_cloud is not None and sensor.cloud_cover:
                if cat.supports_filter:
                    kw["filter"] = {"op": "<=", "args": [{"property": "eo:cloud_cover"}, max_cloud]}
                    kw["filter_lang"] = "cql2-json"
                    cloud_server = True
                elif cat.supports_query:
                    kw["query"] = {"eo:cloud_cover": {"lte": max_cloud}}
                    cloud_server = True
            try:
                found = list(cat.client.search(**kw).items())
            except Exception as e:  # noqa: BLE001
                raise CatalogError(f"search of {sensor.collection} for {year or 'static'} over {area} on "
                                   f"{cat.name} failed: {type(e).__name__}: {_short(e)}") from None
            if max_cloud is not None and not cloud_server and sensor.cloud_cover:
                # Never rely on a server silently ignoring a filter: check every item here too.
                found = [i for i in found if (i.properties.get("eo:cloud_cover") or 0) <= max_cloud]
            if sensor.required_assets:  # e.g. Landsat L2SR scenes have no thermal band
                found = [i for i in found if all(k in i.assets for k in sensor.required_assets)]
            items = [normalise_item(i, allow_local=local_ok, sensor=sensor) for i in found]
            items.sort(key=lambda i: (i.datetime or i.properties.get("start_datetime"), i.id))
            if not items:
                what = f"{sensor.name} ({sensor.collection})"
                when = f"year {year} ({window[0][:10]}..{window[1][:10]})" if window else "any date"
                if missing == "raise":
                    raise NoItemsError(f"no {what} items for {when} over {area} on {cat.name}")
                log.warning("gap: no %s items for %s over %s", what, when, area)
                result.gaps.append((sensor.name, year))
            result.items[sensor.name][year] = items
            log.info("%s %s: %d items", sensor.name, year or "static", len(items))
    return result
