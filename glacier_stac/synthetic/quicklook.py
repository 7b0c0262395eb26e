"""PNG quicklooks of a world directory, with the truth outlines on top, to eyeball a render.

Reads back the COGs through their STAC items (and `sensors` scaling), exactly as a consumer would,
so a quicklook that looks right is also a check of the written metadata.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from glacier_stac import sensors
from glacier_stac.testing.worlds import WorldDir

MAX_PX = 900  # quicklooks are read from the COG overviews at about this size


def _read(item: dict[str, Any], key: str) -> tuple[np.ndarray, tuple[float, float, float, float], str]:
    """Physical values of one asset (nodata -> NaN) at quicklook size, with its bounds and CRS."""
    import rasterio
    from rasterio.enums import Resampling

    sensor = sensors.get(item["collection"])
    href = item["assets"][key]["href"].removeprefix("file://")
    with rasterio.open(href) as ds:
        f = max(1, int(np.ceil(max(ds.height, ds.width) / MAX_PX)))
        shape = (max(1, ds.height // f), max(1, ds.width // f))
        band = sensor.band(key)
        rs = Resampling.nearest if band.categorical else Resampling.average
        data = ds.read(1, out_shape=shape, resampling=rs).astype(np.float32)
        b = ds.bounds
        crs = ds.crs.to_string()
    nodata = sensor.nodata(item, key)
    if nodata is not None:
        data[data == nodata] = np.nan
    scale, offset = sensor.scaling(item, key)
    return data * scale + offset, (b.left, b.right, b.bottom, b.top), crs


def _stretch(a: np.ndarray, lo: float = 2, hi: float = 98) -> np.ndarray:
    v = a[np.isfinite(a)]
    if v.size == 0:
        return np.zeros_like(a)
    p0, p1 = np.percentile(v, (lo, hi))
    return np.nan_to_num(np.clip((a - p0) / max(p1 - p0, 1e-9), 0, 1))


def _hillshade(z: np.ndarray, dx: float, dy: float) -> np.ndarray:
    gy, gx = np.gradient(np.nan_to_num(z), dy, dx)
    az, alt = np.radians(315.0), np.radians(45.0)
    slope = np.arctan(np.hypot(gx, gy))
    aspect = np.arctan2(-gx, gy)
    return np.clip(np.sin(alt) * np.cos(slope) + np.cos(alt) * np.sin(slope) * np.cos(az - aspect), 0, 1)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _figure(img: np.ndarray, extent, title: str, outlines, crs: str, cmap: str | None = None, label: str = ""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 7))
    im = ax.imshow(img, extent=extent, cmap=cmap, interpolation="nearest")
    if cmap is not None:
        fig.colorbar(im, ax=ax, shrink=0.7, label=label)
    if outlines is not None and len(outlines):
        outlines.to_crs(crs).boundary.plot(ax=ax, color="cyan", linewidth=0.7)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    return fig


def _clearest(items: list[dict[str, Any]], year: int) -> dict[str, Any] | None:
    its = [i for i in items if i["properties"]["datetime"].startswith(str(year))]
    return min(its, key=lambda i: (i["properties"].get("eo:cloud_cover", 0.0), i["id"])) if its else None


def quicklook(world_dir: str | Path) -> list[Path]:
    """PNGs per sensor and year (S2 SWIR/NIR/red, S1 VV/VH, Landsat ST, DEM hillshade) with outlines."""
    world = WorldDir(Path(world_dir))
    meta = world.meta()
    if meta is None:
        raise FileNotFoundError(f"{world.root} is not a complete world directory (no world.json)")
    outlines = world.outlines()
    years = meta.get("years") or []
    out_dir = world.quicklook_dir
    written: list[Path] = []

    def year_outlines(year: int):
        return None if outlines is None else outlines[outlines["year"] == year]

    for year in years:
        item = _clearest(world.items("sentinel-2-l2a"), year)
        if item:
            bands = [_read(item, k) for k in ("B11", "B08", "B04")]
            shape = bands[1][0].shape
            rgb = np.dstack([_stretch(_fit(b[0], shape), 1, 99) for b in bands])
            title = f"Sentinel-2 SWIR/NIR/red {item['id']}  cloud {item['properties'].get('eo:cloud_cover', 0):.1f}%"
            fig = _figure(rgb, bands[1][1], title, year_outlines(year), bands[1][2])
            written.append(_save(fig, out_dir / f"sentinel-2_{year}.png"))
        item = _clearest(world.items("sentinel-1-rtc"), year)
        if item:
            (vv, ext, crs), (vh, _, _) = _read(item, "vv"), _read(item, "vh")
            vv_db, vh_db = 10 * np.log10(np.clip(vv, 1e-5, None)), 10 * np.log10(np.clip(vh, 1e-5, None))
            rgb = np.dstack([_stretch(vv_db), _stretch(vh_db), _stretch(vv_db - vh_db)])
            fig = _figure(rgb, ext, f"Sentinel-1 RTC VV/VH/ratio (dB) {item['id']}", year_outlines(year), crs)
            written.append(_save(fig, out_dir / f"sentinel-1_{year}.png"))
        item = _clearest(world.items("landsat-c2-l2"), year)
        if item:
            t, ext, crs = _read(item, "lwir11")
            fig = _figure(
                t, ext, f"Landsat surface temperature {item['id']}", year_outlines(year), crs, cmap="inferno", label="K"
            )
            written.append(_save(fig, out_dir / f"landsat_{year}.png"))
    dem = world.items("cop-dem-glo-30")
    if dem:
        z, ext, crs = _read(dem[0], "data")
        lat = np.radians((ext[2] + ext[3]) / 2)
        dy = (ext[3] - ext[2]) / z.shape[0] * 111_320.0
        dx = (ext[1] - ext[0]) / z.shape[1] * 111_320.0 * np.cos(lat)
        shade = _hillshade(z, dx, dy)
        last = year_outlines(years[-1]) if years else None
        fig = _figure(
            shade,
            ext,
            f"Copernicus DEM hillshade (EPSG:4326), outlines {years[-1] if years else ''}",
            last,
            crs,
            cmap="gray",
            label="hillshade",
        )
        written.append(_save(fig, out_dir / "copdem.png"))
    return written


def _fit(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a 20 m band onto the 10 m quicklook grid."""
    if a.shape == shape:
        return a
    rows = np.minimum((np.arange(shape[0]) * a.shape[0] / shape[0]).astype(int), a.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) * a.shape[1] / shape[1]).astype(int), a.shape[1] - 1)
    return a[np.ix_(rows, cols)]
