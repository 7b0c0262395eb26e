"""Tile windows larger than an asset (scene edges, small worlds): the warper runs over the asset's footprint
only, and the values are those of warping the whole window (issue 12's per-tile cube cost)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from stackstac.raster_spec import RasterSpec

from glacier_stac import reader


def _cog(path, arr, res, origin, nodata) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[1], height=arr.shape[0], count=1, dtype=arr.dtype,
                       crs="EPSG:32606", transform=from_origin(*origin, res, res), nodata=nodata,
                       tiled=True, blockxsize=64, blockysize=64, compress="deflate") as dst:
        dst.write(arr, 1)


@pytest.mark.parametrize(("src_res", "origin", "resampling", "dtype", "nodata"), [
    (10, (500200, 6799600), "bilinear", "float32", np.nan),  # same pixels (Sentinel-1 like), float, NaN no-data
    (20, (500200, 6799600), "bilinear", "uint16", 0),  # Sentinel-2 20 m
    (30, (500185, 6799615), "bilinear", "uint16", 0),  # Landsat's grid, half a 10 m pixel off
    (20, (500200, 6799600), "nearest", "uint8", 0),  # SCL
])
def test_windows_past_a_small_asset_equal_the_whole_warp(tmp_path, src_res, origin, resampling, dtype, nodata):
    n = 600 // src_res  # a 600 m asset inside a 2 km grid
    rng = np.random.default_rng(src_res)
    arr = (rng.random((n, n)) * 200 + 1).astype(dtype)
    path = tmp_path / "band.tif"
    _cog(path, arr, src_res, origin, nodata)
    spec = RasterSpec(epsg=32606, bounds=(500000, 6798000, 502000, 6800000), resolutions_xy=(10, 10))
    rs = Resampling[resampling]
    fill = np.nan if dtype == "float32" else 0
    r = reader.CogReader(url=str(path), spec=spec, resampling=rs, dtype=np.dtype(dtype), fill_value=fill)
    warped_px = []
    real = r._read_with
    r._read_with = lambda h, win: warped_px.append(win.width * win.height) or real(h, win)
    with rasterio.open(path) as src, WarpedVRT(src, resampling=rs, **spec.vrt_params) as vrt:
        for win in (Window(0, 0, 200, 200), Window(0, 0, 37, 113), Window(25, 31, 150, 90), Window(150, 150, 50, 50)):
            expect = vrt.read(1, window=win).astype(dtype)
            if not np.isnan(nodata):  # the reader's fill for outside and no-data (here the same as no-data)
                expect[expect == nodata] = fill
            got = r.read(win)
            assert got.dtype == np.dtype(dtype) and got.shape == (win.height, win.width)
            np.testing.assert_array_equal(got, expect, err_msg=str(win))
    # the whole grid window: only the asset's footprint (60 + margins, not 200 x 200 pixels) was read
    assert warped_px[0] < 0.2 * 200 * 200, warped_px
    # the window far from the asset read nothing at all
    assert len(warped_px) == 3, warped_px
    r.close()


def test_footprint_window_is_none_when_the_asset_covers_the_window(tmp_path):
    path = tmp_path / "big.tif"
    _cog(path, np.ones((450, 250), np.uint16), 10, (499000, 6801000), 0)  # ends at x 501500 (grid col 150)
    spec = RasterSpec(epsg=32606, bounds=(500000, 6798000, 502000, 6800000), resolutions_xy=(10, 10))
    with rasterio.open(path) as ds:
        assert reader.footprint_window(ds, spec, Window(0, 0, 100, 100)) is None
        sub = reader.footprint_window(ds, spec, Window(0, 0, 200, 200))
        assert sub is not None and (sub.col_off, sub.row_off) == (0, 0) and 150 < sub.width < 160 and sub.height == 200
