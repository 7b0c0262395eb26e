"""Sensors as data: a sensor's record alone decides how it is searched, read and turned into features.

Adding a sensor (Landsat OLI reflectance where Sentinel-2 is clouded) must be one record and no new
branch. These tests declare records that no table of the project knows by name and run them through
the real code: the generated world over a real STAC API on loopback, real Planetary Computer item JSON,
real COGs read by the cube's reader.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine
from odc.geo import geom

from glacier_stac import catalog, cube, grid
from glacier_stac import sensors as S
from glacier_stac.testing.worlds import WorldDir

FIX = Path(__file__).parent / "fixtures" / "planetary-computer"
YEAR = 2022

# Landsat 8/9 OLI reflectance as Planetary Computer's landsat-c2-l2 serves it: the same collection as the
# thermal band, read by the optical kernel, masked by QA_PIXEL bits. Declared here, registered nowhere.
OLI = S.Sensor(
    name="landsat-oli",
    collection="landsat-c2-l2",
    role="optical reflectance where Sentinel-2 is clouded",
    features=("oli_blue", "oli_green", "oli_red", "oli_nir", "oli_swir16", "oli_swir22",
              "oli_ndsi", "oli_ndwi", "oli_ndvi", "oli_snow_persistence", "oli_count"),
    kernel="optical",
    count_feature="oli_count",
    cloud_cover=True,
    stac_extensions=("sat", "view"),
    bands=(
        *(S.Band(k, 30, "uint16", 0, 2.75e-5, -0.2, unit="reflectance")
          for k in ("blue", "green", "red", "nir08", "swir16", "swir22")),
        S.Band("qa_pixel", 30, "uint16", 1, resampling="nearest", categorical=True, role="mask", quality="qa-bits"),
    ),
)


def test_every_kernel_a_record_may_name_has_a_function_in_the_cube() -> None:
    assert set(cube.KERNELS) == set(S.KERNELS)
    assert {s.kernel for s in S.SENSORS.values()} <= set(cube.KERNELS)
    assert OLI.name not in S.SENSORS and OLI.per_acquisition and OLI.usable is S.landsat_qa_valid


def test_a_second_optical_sensor_is_searched_and_read_through_its_record_alone(world_dir, rustac_url) -> None:
    """A twin of Sentinel-2 under another name, with features of its own names, registered nowhere: search
    and cube treat it as they treat Sentinel-2, so its features equal Sentinel-2's pixel for pixel."""
    twin = replace(S.SENTINEL2, name="s2-twin", features=tuple(f"twin_{f}" for f in S.SENTINEL2.features),
                   count_feature="twin_s2_count")
    assert twin.name not in S.SENSORS
    world = WorldDir(world_dir)
    found = catalog.search(world.aoi(), [YEAR], sensors=[S.SENTINEL2, twin],
                           catalog=catalog.open_catalog(rustac_url))
    assert [i.id for i in found.items["s2-twin"][YEAR]] == [i.id for i in found.items["sentinel-2"][YEAR]]
    c = cube.build(found, world.grid(), YEAR, sensors=[S.SENTINEL2, twin])
    # the twin's features, then those derived from Sentinel-2's own names (the twin's have other names)
    assert list(c.feature.values) == [*S.SENTINEL2.features, *twin.features, "snow_persistence_hist"]
    assert c.attrs["sensors"] == ["sentinel-2", "s2-twin"] and not c.attrs["missing_sensors"]
    c = c.compute(scheduler="threads")
    mine, theirs = c.sel(feature=list(twin.features)).values, c.sel(feature=list(S.SENTINEL2.features)).values
    np.testing.assert_array_equal(mine, theirs)
    assert (c.sel(feature="twin_s2_count").values > 0).mean() > 0.5


def _oli_items(tmp_path: Path, gb) -> list[pystac.Item]:
    """Two OLI acquisitions over `gb` on real COGs, shaped by a real Planetary Computer L2SR item (no thermal
    band): DN 10000 + 1000 k in band k for the first, 20000 + 1000 k for the second, whose left half is
    cloud (QA_PIXEL bit 3)."""
    template = next(d for d in json.loads((FIX / "landsat-c2-l2.items.json").read_text())
                    if "lwir11" not in d["assets"])
    b = gb.boundingbox
    transform = Affine(30, 0, b.left - 60, 0, -30, b.top + 60)
    shape = (int((b.top - b.bottom) // 30) + 5, int((b.right - b.left) // 30) + 5)
    lonlat = gb.extent.buffer(90).to_crs("EPSG:4326")
    items = []
    for k, day in enumerate(("2023-08-01", "2023-08-17")):
        d = json.loads(json.dumps(template))
        d["id"] = f"{template['id']}-{k}"
        d["properties"] = {key: v for key, v in d["properties"].items() if not key.startswith("proj:")}
        d["properties"].update({"datetime": f"{day}T20:00:00Z", "proj:code": f"EPSG:{gb.crs.epsg}",
                                "eo:cloud_cover": 10.0 * k})
        d["geometry"], d["bbox"] = lonlat.json, list(lonlat.boundingbox)
        assets = {}
        for band in OLI.bands:
            a = {key: v for key, v in d["assets"][band.key].items() if not key.startswith("proj:")}
            arr = np.zeros(shape, np.uint16)
            if band.role == "mask":
                if k == 1:
                    arr[:, : shape[1] // 2] = 1 << 3  # cloud
            else:
                arr[:] = (10000 if k == 0 else 20000) + 1000 * OLI.data_bands.index(band)
            path = tmp_path / f"{d['id']}_{band.key}.tif"
            with rasterio.open(path, "w", driver="GTiff", height=shape[0], width=shape[1], count=1,
                               dtype="uint16", crs=f"EPSG:{gb.crs.epsg}", transform=transform,
                               nodata=band.nodata) as f:
                f.write(arr, 1)
            assets[band.key] = {**a, "href": path.as_uri(), "proj:shape": list(shape),
                                "proj:transform": list(transform)[:6]}
        d["assets"] = assets
        items.append(catalog.normalise_item(d, allow_local=True, sensor=OLI))
    return items


def test_landsat_oli_is_one_record_read_by_the_optical_kernel_with_its_own_mask(tmp_path: Path) -> None:
    """OLI reflectance, decoded with the item's scale/offset, masked by QA_PIXEL bits (not by SCL classes),
    composited and counted by the kernel Sentinel-2 uses, with no name of it anywhere in the code."""
    gb = grid.geobox_for(geom.box(-147.30, 61.10, -147.27, 61.115, "EPSG:4326"))
    items = _oli_items(tmp_path, gb)
    c = cube.build({OLI.name: items}, gb, 2023, sensors=[OLI])
    assert list(c.feature.values) == list(OLI.features) and c.attrs["sensors"] == [OLI.name]
    c = c.compute(scheduler="threads")
    half = gb.shape[1] // 2
    left, right = c.isel(x=slice(5, half - 10)), c.isel(x=slice(half + 10, -5))
    assert (left.sel(feature="oli_count").values == 1).all()  # the clouded acquisition is left out
    assert (right.sel(feature="oli_count").values == 2).all()
    for k, f in enumerate(OLI.features[:6]):
        np.testing.assert_allclose(left.sel(feature=f).values, (10000 + 1000 * k) * 2.75e-5 - 0.2, atol=1e-5)
        np.testing.assert_allclose(right.sel(feature=f).values, (15000 + 1000 * k) * 2.75e-5 - 0.2, atol=1e-5)
    # NDVI from nir08 and red, as Sentinel-2's from B08 and B04
    red, nir = (15000 + 2000) * 2.75e-5 - 0.2, (15000 + 3000) * 2.75e-5 - 0.2
    np.testing.assert_allclose(right.sel(feature="oli_ndvi").values, (nir - red) / (nir + red), atol=1e-5)


def test_every_asset_the_searched_record_reads_is_checked() -> None:
    """A remote catalog's item may not point the assets a record reads at local files, whichever record of
    the collection searched it (OLI's blue band is no asset of the thermal record)."""
    d = next(d for d in json.loads((FIX / "landsat-c2-l2.items.json").read_text()) if "lwir11" not in d["assets"])
    d["assets"]["blue"]["href"] = "file:///etc/passwd"
    with pytest.raises(PermissionError, match="local file"):
        catalog.normalise_item(d, allow_local=False, sensor=OLI)
    del d["assets"]["green"]["raster:bands"][0]["scale"]
    d["assets"]["blue"]["href"] = "https://landsateuwest.blob.core.windows.net/x/blue.tif"
    item = catalog.normalise_item(d, allow_local=False, sensor=OLI)
    assert item.assets["green"].extra_fields["raster:bands"][0]["scale"] == 2.75e-5  # the record's default


@pytest.mark.parametrize(("change", "message"), [
    ({"kernel": "lidar"}, "kernel 'lidar' is not one of"),
    ({"features": S.SENTINEL2.features[:-1], "count_feature": "ndvi"}, "yields 11 features; the record has 6 and 10"),
    ({"features": ("B02",) * 11, "count_feature": "B02"}, "repeat a name"),
    ({"count_feature": "count"}, "count_feature 'count' is not among its features"),
    ({"count_feature": None}, "per-acquisition kernel needs a count_feature"),
    ({"bands": S.SENTINEL2.data_bands}, "takes 1 mask band(s); the record has []"),
    ({"bands": (*S.SENTINEL2.data_bands, replace(S.SENTINEL2.bands[-1], quality=None))}, "has quality None"),
], ids=["kernel", "feature-count", "repeated-feature", "count-feature", "no-count", "no-mask", "mask-quality"])
def test_a_record_the_cube_could_not_use_is_refused_when_declared(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"sensor 'sentinel-2': .*{re.escape(message)}"):
        replace(S.SENTINEL2, **change)


def test_build_names_clashing_features_and_items_of_unknown_sensors() -> None:
    gb = grid.geobox_for(geom.box(-147.30, 61.10, -147.27, 61.115, "EPSG:4326"))
    with pytest.raises(ValueError, match=r"yield features \['B02'.* more than once"):
        cube.build({}, gb, 2023, sensors=[S.SENTINEL2, replace(S.SENTINEL2, name="again")])
    with pytest.raises(ValueError, match=r"items given for unknown sensors \['sentinel-2-l2a'\]"):
        cube.build({"sentinel-2-l2a": []}, gb, 2023)
    with pytest.raises(ValueError, match=r"sensors \['landsat'\] given more than once"):
        S.resolve(["landsat", S.LANDSAT])
