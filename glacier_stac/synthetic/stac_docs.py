"""STAC Items and Collections for synthetic scenes, shaped like Planetary Computer's documents.

Same collection ids, asset keys, roles, media type, `eo:bands`, `raster:bands`, `proj:*` and the
properties the real items carry (`s2:mgrs_tile`, `s2:processing_baseline`, `sat:orbit_state`,
`sar:polarizations`, ...), so code that reads Planetary Computer reads these unchanged.
Sentinel-2 assets carry no scale/offset, exactly as on Planetary Computer: the baseline decides.
What differs between documents is keyed by STAC collection (the contract with Planetary Computer), never
by our name for a sensor: a second sensor reading a collection (Landsat OLI beside the thermal band)
gets that collection's item ids and properties as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from glacier_stac import sensors
from glacier_stac.grid import utm_crs
from glacier_stac.synthetic import render as R

COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
STAC_VERSION = "1.1.0"
EXT = {
    "eo": "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "proj": "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "sat": "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
    "sar": "https://stac-extensions.github.io/sar/v1.0.0/schema.json",
    "view": "https://stac-extensions.github.io/view/v1.0.0/schema.json",
    "item_assets": "https://stac-extensions.github.io/item-assets/v1.0.0/schema.json",
}

S2_EO = {
    "B02": ("blue", "Band 2 - Blue", 0.49, 0.098),
    "B03": ("green", "Band 3 - Green", 0.56, 0.045),
    "B04": ("red", "Band 4 - Red", 0.665, 0.038),
    "B08": ("nir", "Band 8 - NIR", 0.842, 0.145),
    "B11": ("swir16", "Band 11 - SWIR (1.6)", 1.61, 0.143),
    "B12": ("swir22", "Band 12 - SWIR (2.2)", 2.19, 0.242),
}
THERMAL_EO = {  # eo:bands of thermal assets, keyed by asset key as on Planetary Computer
    "lwir11": {"name": "TIRS_B10", "common_name": "lwir11", "description": "Long-wave infrared",
               "center_wavelength": 10.9, "full_width_half_max": 0.59},
}
TITLES = {
    "SCL": "Scene classfication map (SCL)",  # sic, as on Planetary Computer
    "vv": "VV: vertical transmit, vertical receive",
    "vh": "VH: vertical transmit, horizontal receive",
    "hh": "HH: horizontal transmit, horizontal receive",
    "hv": "HV: horizontal transmit, vertical receive",
    "lwir11": "Surface Temperature Band",
    "qa_pixel": "Pixel Quality Assessment Band",
    "data": "Copernicus DEM GLO-30",
}
ROLES = {"lwir11": ["data", "temperature"], "qa_pixel": ["cloud", "cloud-shadow", "snow-ice", "water-mask"]}
COLLECTION_META = {
    "sentinel-2-l2a": ("Sentinel-2 Level-2A", "proprietary", ["Sentinel", "Copernicus", "ESA", "Reflectance"]),
    "sentinel-1-rtc": ("Sentinel 1 Radiometrically Terrain Corrected (RTC)", "CC-BY-4.0", ["Sentinel", "SAR", "RTC"]),
    "landsat-c2-l2": ("Landsat Collection 2 Level-2", "proprietary", ["Landsat", "USGS", "Temperature"]),
    "cop-dem-glo-30": ("Copernicus DEM GLO-30", "proprietary", ["Copernicus", "DEM", "DSM", "Elevation"]),
}


def mgrs_tile(lon: float, lat: float) -> str:
    """MGRS 100 km tile of a point, e.g. '06VVN' (the Sentinel-2 tiling)."""
    from pyproj import Transformer

    epsg = utm_crs(lon, lat).epsg
    zone = epsg % 100
    band = "CDEFGHJKLMNPQRSTUVWXX"[max(0, min(20, int((lat + 80) // 8)))]
    e, n = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True).transform(lon, lat)
    cols = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")[(zone - 1) % 3]
    col = cols[max(0, min(7, int(e // 100000) - 1))]
    rows = "ABCDEFGHJKLMNPQRSTUV"
    row = rows[(int(n // 100000) + (5 if zone % 2 == 0 else 0)) % 20]
    return f"{zone:02d}{band}{col}{row}"


@dataclass(frozen=True)
class ItemIds:
    """Realistic item ids for scenes over one place."""

    lon: float
    lat: float

    def item_id(self, acq: R.Acquisition) -> str:
        """The id Planetary Computer gives an item of this acquisition's collection."""
        collection = sensors.get(acq.sensor).collection
        scheme = ID_SCHEMES.get(collection)
        if scheme is None:
            raise ValueError(f"no item id scheme for collection {collection!r} (sensor {acq.sensor!r}); "
                             f"known: {sorted(ID_SCHEMES)}")
        return scheme(self, acq)

    def s2_id(self, acq: R.Acquisition) -> str:
        t = acq.datetime
        made = t + timedelta(days=2, hours=3, minutes=17)
        return (
            f"S2{acq.platform[-1]}_MSIL2A_{t:%Y%m%dT%H%M%S}_R{acq.relative_orbit:03d}_"
            f"T{mgrs_tile(self.lon, self.lat)}_{made:%Y%m%dT%H%M%S}"
        )

    def s1_id(self, acq: R.Acquisition) -> str:
        t = acq.datetime
        end = t + timedelta(seconds=25)
        orbit = self.s1_absolute_orbit(acq)
        return (
            f"S1{acq.platform[-1]}_IW_GRDH_1SDV_{t:%Y%m%dT%H%M%S}_{end:%Y%m%dT%H%M%S}_{orbit:06d}_"
            f"{(orbit * 7) & 0xFFFFFF:06X}_rtc"
        )

    def landsat_id(self, acq: R.Acquisition) -> str:
        path, row = self.wrs2()
        return f"LC0{acq.platform[-1]}_L2SP_{path:03d}{row:03d}_{acq.datetime:%Y%m%d}_02_T1"

    def s1_absolute_orbit(self, acq: R.Acquisition) -> int:
        launch = datetime(2014, 4, 3, tzinfo=UTC) if acq.platform.endswith("A") else datetime(2016, 4, 25, tzinfo=UTC)
        return int((acq.datetime - launch).total_seconds() / 86400 * 175 / 12) + 1

    def wrs2(self) -> tuple[int, int]:
        """Approximate WRS-2 (path, row) of a daytime descending pass."""
        path = int(((-self.lon + 180.0 - 64.6) % 360.0) / 360.0 * 233) + 1
        row = max(1, min(248, int(round(60 - self.lat / 1.45))))
        return path, row

    def dem_id(self) -> str:
        la, lo = math.floor(self.lat), math.floor(self.lon)
        ns, ew = ("N" if la >= 0 else "S"), ("E" if lo >= 0 else "W")
        return f"Copernicus_DSM_COG_10_{ns}{abs(la):02d}_00_{ew}{abs(lo):03d}_00_DEM"


# item id scheme per collection (the DEM's ids come from `ItemIds.dem_id`: one item per 1° cell, no acquisition)
ID_SCHEMES: dict[str, Callable[[ItemIds, R.Acquisition], str]] = {
    "sentinel-2-l2a": ItemIds.s2_id, "sentinel-1-rtc": ItemIds.s1_id, "landsat-c2-l2": ItemIds.landsat_id,
}


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def properties(acq: R.Acquisition, scene: R.Scene, ids: ItemIds) -> dict[str, Any]:
    """Item properties as Planetary Computer writes them for this acquisition's collection."""
    p: dict[str, Any] = {"datetime": _iso(acq.datetime), "platform": acq.platform}
    own = COLLECTION_PROPERTIES.get(sensors.get(acq.sensor).collection)
    if own is not None:
        p.update(own(acq, scene, ids))
    return p


def _s2_properties(acq: R.Acquisition, scene: R.Scene, ids: ItemIds) -> dict[str, Any]:
    return {
        "constellation": "Sentinel 2",
        "instruments": ["msi"],
        "s2:mgrs_tile": mgrs_tile(ids.lon, ids.lat),
        "s2:product_type": "S2MSI2A",
        "sat:orbit_state": acq.orbit_state,
        "sat:relative_orbit": acq.relative_orbit,
        "s2:datatake_type": "INS-NOBS",
        **scene.properties,
        "s2:processing_baseline": scene.properties["s2:processing_baseline"],
    }


def _s1_properties(acq: R.Acquisition, scene: R.Scene, ids: ItemIds) -> dict[str, Any]:
    return {
        "constellation": "Sentinel-1",
        "sar:instrument_mode": "IW",
        "sar:frequency_band": "C",
        "sar:center_frequency": 5.405,
        "sar:product_type": "GRD",
        "sar:polarizations": scene.properties.get("sar:polarizations", ["VV", "VH"]),
        "sar:observation_direction": "right",
        "sar:looks_equivalent_number": R.S1_LOOKS,
        "sat:orbit_state": acq.orbit_state,
        "sat:relative_orbit": acq.relative_orbit,
        "sat:absolute_orbit": ids.s1_absolute_orbit(acq),
        "s1:processing_level": "1",
        "s1:resolution": "high",
        **{k: v for k, v in scene.properties.items() if k != "sar:polarizations"},
    }


def _landsat_properties(acq: R.Acquisition, scene: R.Scene, ids: ItemIds) -> dict[str, Any]:
    path, row = ids.wrs2()
    return {
        "gsd": 30,
        "instruments": ["oli", "tirs"],
        "description": "Landsat Collection 2 Level-2",
        "landsat:wrs_path": f"{path:03d}",
        "landsat:wrs_row": f"{row:03d}",
        "landsat:wrs_type": "2",
        "landsat:correction": "L2SP",
        "landsat:collection_number": "02",
        "landsat:collection_category": "T1",
        "sat:orbit_state": acq.orbit_state,
        "view:off_nadir": 0,
        **scene.properties,
    }


# properties per collection beyond datetime and platform (the DEM's items carry none)
COLLECTION_PROPERTIES: dict[str, Callable[[R.Acquisition, R.Scene, ItemIds], dict[str, Any]]] = {
    "sentinel-2-l2a": _s2_properties, "sentinel-1-rtc": _s1_properties, "landsat-c2-l2": _landsat_properties,
}


def asset(sensor: sensors.Sensor, key: str, href: str, raster: R.Raster) -> dict[str, Any]:
    """One asset: href, media type, roles, eo:bands, raster:bands and proj:shape/transform/bbox."""
    band = sensor.band(key)
    h, w = raster.data.shape
    t = raster.transform
    gsd = band.resolution
    rb: dict[str, Any] = {"nodata": raster.nodata, "data_type": raster.data.dtype.name, "spatial_resolution": gsd}
    if raster.nodata is None:
        del rb["nodata"]
    if band.stac_unit is not None:
        rb["unit"] = band.stac_unit
    if band.stac_scaling:
        rb.update(scale=band.scale, offset=band.offset)
    a: dict[str, Any] = {
        "href": href,
        "type": COG_TYPE,
        "title": TITLES.get(key, f"{S2_EO[key][1]} - {int(band.resolution)}m" if key in S2_EO else key),
        "roles": ROLES.get(key, ["data"]),
        "gsd": gsd,
    }
    if key in S2_EO:
        common, desc, cw, fwhm = S2_EO[key]
        a["eo:bands"] = [
            {
                "name": key,
                "common_name": common,
                "description": desc,
                "center_wavelength": cw,
                "full_width_half_max": fwhm,
            }
        ]
    if key in THERMAL_EO:
        a["eo:bands"] = [THERMAL_EO[key]]
    a["raster:bands"] = [rb]
    a["proj:shape"] = [h, w]
    a["proj:transform"] = [t.a, t.b, t.c, t.d, t.e, t.f]
    a["proj:bbox"] = [t.c, t.f + h * t.e, t.c + w * t.a, t.f]
    return a


def item(
    sensor: sensors.Sensor,
    item_id: str,
    crs: str,
    props: dict[str, Any],
    geometry: dict,
    bbox: list[float],
    assets: dict[str, dict],
) -> dict[str, Any]:
    """A STAC Item dict (links are filled in by whoever serves it)."""
    exts = [EXT["eo"], EXT["raster"], EXT["proj"], *(EXT[e] for e in sensor.stac_extensions)]
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": exts,
        "id": item_id,
        "collection": sensor.collection,
        "geometry": geometry,
        "bbox": bbox,
        "properties": {**props, "proj:code": crs},
        "links": [],
        "assets": assets,
    }


def collection(sensor: sensors.Sensor, items: list[dict[str, Any]]) -> dict[str, Any]:
    """The Collection for these items: extent from the items, item_assets from the first item."""
    title, lic, keywords = COLLECTION_META[sensor.collection]
    times = sorted(i["properties"]["datetime"] for i in items)
    bboxes = [i["bbox"] for i in items]
    bbox = [min(b[0] for b in bboxes), min(b[1] for b in bboxes), max(b[2] for b in bboxes), max(b[3] for b in bboxes)]
    first = items[0]["assets"]
    item_assets = {
        k: {kk: vv for kk, vv in a.items() if kk in ("type", "title", "roles", "gsd", "eo:bands")}
        | {"raster:bands": [{kk: vv for kk, vv in a["raster:bands"][0].items() if kk != "spatial_resolution"}]}
        for k, a in first.items()
    }
    summaries: dict[str, Any] = {"platform": sorted({i["properties"].get("platform", "") for i in items})}
    if "sar" in sensor.stac_extensions:
        default = tuple(b.key.upper() for b in sensor.data_bands)
        pols = dict.fromkeys(tuple(i["properties"].get("sar:polarizations", default)) for i in items)
        summaries["sar:polarizations"] = [list(p) for p in pols]  # as the items say (polar: HH/HV)
    return {
        "type": "Collection",
        "id": sensor.collection,
        "stac_version": STAC_VERSION,
        "stac_extensions": [EXT["item_assets"], EXT["eo"], EXT["raster"], EXT["proj"]],
        "title": f"{title} (synthetic)",
        "description": f"Synthetic {title} scenes rendered by glacier_stac over a synthetic world "
        f"({sensor.role}). Same collection id and asset keys as Planetary Computer.",
        "license": lic,
        "keywords": keywords + ["synthetic"],
        "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [[times[0], times[-1]]]}},
        "summaries": summaries,
        "item_assets": item_assets,
        "links": [],
    }
