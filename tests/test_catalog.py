"""Catalog: AOIs, seasons, normalisation of real Planetary Computer items, href security, redaction."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import pytest
from shapely.geometry import box

from glacier_stac import catalog, sensors

FIX = Path(__file__).parent / "fixtures" / "planetary-computer"


def s2_item() -> dict:
    return json.loads((FIX / "sentinel-2-l2a.item.S2B_T06VVN_20190629.json").read_text())


def landsat_items() -> list[dict]:
    return json.loads((FIX / "landsat-c2-l2.items.json").read_text())


def test_bbox_string_and_tuple_give_same_aoi():
    a = catalog.load_aoi("-147.3,61.1,-147.0,61.25")
    b = catalog.load_aoi((-147.3, 61.1, -147.0, 61.25))
    assert a.bbox == pytest.approx(b.bbox)
    assert a.hemisphere == "north"
    assert catalog.load_aoi((170.0, -44.0, 170.5, -43.5)).hemisphere == "south"


@pytest.mark.parametrize(
    "bad, words",
    [
        ((179.5, 60.0, -179.5, 61.0), "antimeridian"),
        ((10.0, 47.0, 10.5, 46.0), "reversed"),
        ((10.0, 85.0, 11.0, 86.0), "polar"),
        ((-60.0, -89.0, -50.0, -85.0), "polar"),
        ((500000.0, 6.7e6, 510000.0, 6.8e6), "lon/lat"),
    ],
)
def test_bad_bboxes_are_refused_with_the_problem_named(bad, words):
    with pytest.raises(ValueError, match=words):
        catalog.load_aoi(bad, name="test-aoi")


def test_aoi_from_vector_file_and_glacier_ids(tmp_path):
    g = gpd.GeoDataFrame({"rgi_id": ["RGI2000-v7.0-G-01-00001", "RGI2000-v7.0-G-01-00002"]},
                         geometry=[box(-147.2, 61.1, -147.1, 61.2), box(-146.0, 61.0, -145.9, 61.1)], crs=4326)
    path = tmp_path / "outlines.gpkg"
    g.to_file(path)
    whole = catalog.load_aoi(path)
    one = catalog.load_aoi(path, ids=["RGI2000-v7.0-G-01-00001"])
    assert whole.bbox[2] == pytest.approx(-145.9)
    assert one.bbox == pytest.approx((-147.2, 61.1, -147.1, 61.2))
    with pytest.raises(ValueError, match="RGI2000-v7.0-G-01-99999"):
        catalog.load_aoi(path, ids=["RGI2000-v7.0-G-01-99999"])
    with pytest.raises(FileNotFoundError, match="nope.gpkg"):
        catalog.load_aoi(tmp_path / "nope.gpkg")
    (tmp_path / "junk.geojson").write_text("{not json")
    with pytest.raises(ValueError, match="junk.geojson"):
        catalog.load_aoi(tmp_path / "junk.geojson")


def test_geojson_feature_aoi():
    feat = {"type": "Feature", "properties": {},
            "geometry": {"type": "Polygon", "coordinates": [[[10, 46], [10.1, 46], [10.1, 46.1], [10, 46]]]}}
    assert catalog.load_aoi(feat).bbox == pytest.approx((10, 46, 10.1, 46.1))


def test_season_windows_by_hemisphere():
    assert catalog.season(2021, "north") == ("2021-07-01T00:00:00Z", "2021-10-31T23:59:59Z")
    assert catalog.season(2021, "south") == ("2021-01-01T00:00:00Z", "2021-04-30T23:59:59Z")
    assert catalog.season(2021, "north", (11, 2)) == ("2021-11-01T00:00:00Z", "2022-02-28T23:59:59Z")
    assert catalog.season(2020, "north", (12, 12))[1] == "2020-12-31T23:59:59Z"
    with pytest.raises(ValueError, match="months"):
        catalog.season(2021, "north", (0, 13))


@pytest.mark.parametrize("years, words", [([], "no years"), ([2022, 2021], "increasing"), ([1900], "between")])
def test_bad_years(years, words):
    with pytest.raises(ValueError, match=words):
        catalog.check_years(years)


def test_real_s2_item_normalises_without_special_cases():
    item = catalog.normalise_item(s2_item())
    d = item.to_dict(transform_hrefs=False)
    assert d["properties"]["proj:epsg"] == 32606 and d["properties"]["proj:code"] == "EPSG:32606"
    # processing baseline 02.12: no BOA offset; the sensor record decodes DN / 10000
    assert sensors.SENTINEL2.scaling(item, "B02") == (1e-4, 0.0)
    later = s2_item()
    later["properties"]["s2:processing_baseline"] = "04.00"
    assert sensors.SENTINEL2.scaling(later, "B11") == (1e-4, -0.1)
    assert sensors.SENTINEL2.scaling(catalog.normalise_item(later), "B11") == (1e-4, -0.1)
    for key in sensors.SENTINEL2.asset_keys():
        assert item.assets[key].href.startswith("https://")


def test_real_landsat_items_keep_their_scaling():
    items = [catalog.normalise_item(d) for d in landsat_items() if "lwir11" in d["assets"]]
    assert items, "fixture holds L2SP items with lwir11"
    for it in items:
        assert sensors.LANDSAT.scaling(it, "lwir11") == (0.00341802, 149.0)
        assert sensors.LANDSAT.nodata(it, "lwir11") == 0
        assert it.to_dict(transform_hrefs=False)["properties"]["proj:epsg"]


def test_proj_code_items_get_proj_epsg():
    d = s2_item()
    del d["properties"]["proj:epsg"]
    d["properties"]["proj:code"] = "EPSG:32606"
    assert catalog.normalise_item(d).to_dict(transform_hrefs=False)["properties"]["proj:epsg"] == 32606
    d["properties"]["proj:code"] = "IAU_2015:30100"
    with pytest.raises(ValueError, match="not an EPSG code"):
        catalog.normalise_item(d)


def test_relative_and_bare_hrefs_become_absolute(tmp_path):
    d = s2_item()
    d["links"] = [{"rel": "self", "href": str(tmp_path / "items" / "x.json")}]
    d["assets"]["B02"]["href"] = "../cogs/B02.tif"
    d["assets"]["B03"]["href"] = str(tmp_path / "cogs" / "B03.tif")
    item = catalog.normalise_item(d, allow_local=True)
    assert item.assets["B02"].href == (tmp_path / "cogs" / "B02.tif").as_uri()
    assert item.assets["B03"].href == (tmp_path / "cogs" / "B03.tif").as_uri()


@pytest.mark.parametrize("href, allow_local, ok", [
    ("https://sentinel2l2a01.blob.core.windows.net/x/B02.tif", False, True),
    ("s3://bucket/B02.tif", False, True),
    ("file:///etc/passwd", False, False),
    ("file:///data/B02.tif", True, True),
    ("http://169.254.169.254/latest/meta-data/", True, False),
    ("https://metadata.google.internal/computeMetadata/v1/", False, False),
    ("http://example.com/B02.tif", False, False),
    ("https://10.0.0.5/B02.tif", False, False),
    ("ftp://example.com/B02.tif", False, False),
])
def test_href_security(href, allow_local, ok):
    if ok:
        catalog.href_allowed(href, allow_local)
    else:
        with pytest.raises(PermissionError):
            catalog.href_allowed(href, allow_local)


@pytest.mark.parametrize("href, words", [
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),  # AWS, Azure, GCP instance metadata
    ("https://[fd00:ec2::254]/latest/meta-data/", "cloud metadata"),  # AWS over IPv6: private, not link-local
    ("https://metadata.google.internal/computeMetadata/v1/", "cloud metadata"),
    ("https://169.254.1.1/B02.tif", "link-local"),  # any other link-local address
    ("https://[fe80::1]/B02.tif", "link-local"),
])
def test_metadata_and_link_local_refused_even_for_local_catalogs(href, words):
    """Each rule on its own: the metadata literal and the link-local check must not stand in for each other."""
    with pytest.raises(PermissionError, match=words):
        catalog.href_allowed(href, allow_local=True)


def test_remote_catalog_cannot_point_at_local_files():
    d = s2_item()
    d["assets"]["B02"]["href"] = "file:///etc/shadow"
    with pytest.raises(PermissionError, match="local file"):
        catalog.normalise_item(d, allow_local=False)


def test_tokens_are_redacted():
    url = "https://x.blob.core.windows.net/c/B02.tif?st=2026&se=2026&sp=rl&sig=SECRET"
    assert "SECRET" not in catalog.redact(url)
    assert "SECRET" not in catalog.redact(f"Error reading Window(0, 0, 5, 5) from '{url}': HTTP 403")


def test_unreachable_catalog_is_a_clear_error():
    with pytest.raises(catalog.CatalogError, match="unreachable"):
        catalog.open_catalog("http://127.0.0.1:9/stac", timeout=2, retries=0)


def test_unknown_sensor_is_named():
    with pytest.raises(ValueError, match="modis"):
        catalog.search((10, 46, 10.1, 46.1), [2021], sensors=["modis"], catalog="http://127.0.0.1:9")
