"""A generated world on disk, as one type: its layout, grid, AOI, years, truth labels and STAC files.

The writer lays a world out, the STAC servers serve its JSON, the demo, training regions, quicklooks
and benchmarks read its grid and truth; all of them go through `WorldDir`, so the layout
(`truth/labels_{year}.tif`, `stac/<collection>/items.json`, `world.json` last, ...) is written down once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import geopandas as gpd
    from odc.geo.geobox import GeoBox

    from glacier_stac.catalog import AOI

WORLD_JSON = "world.json"  # the completion marker, written last
SUBDIRS = ("cogs", "stac", "truth", "quicklook")  # everything else in a world directory is foreign


@dataclass(frozen=True)
class WorldCatalog:
    """The STAC JSON files of a generated world, one (collection.json, items.json) pair per collection."""

    world_dir: Path
    collections: dict[str, Path]  # collection id -> collection.json
    items: dict[str, Path]  # collection id -> items.json (FeatureCollection)

    def hrefs(self) -> list[Path]:
        """Collections first, then item collections, so every item finds its collection."""
        return [*self.collections.values(), *self.items.values()]


@dataclass(frozen=True)
class WorldDir:
    """A world directory: where each file lives, and what can be read back from it."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(os.fspath(self.root)).expanduser())

    # ------------------------------------------------------------------ layout
    @property
    def name(self) -> str:
        return self.root.name

    @property
    def world_json(self) -> Path:
        return self.root / WORLD_JSON

    @property
    def stac_dir(self) -> Path:
        return self.root / "stac"

    @property
    def truth_dir(self) -> Path:
        return self.root / "truth"

    @property
    def quicklook_dir(self) -> Path:
        return self.root / "quicklook"

    @property
    def outlines_path(self) -> Path:
        return self.truth_dir / "outlines.parquet"

    def labels_path(self, year: int) -> Path:
        return self.truth_dir / f"labels_{year}.tif"

    def cog_path(self, collection: str, item_id: str, asset_key: str) -> Path:
        return self.root / "cogs" / collection / item_id / f"{asset_key}.tif"

    def collection_path(self, collection: str) -> Path:
        return self.stac_dir / collection / "collection.json"

    def items_path(self, collection: str) -> Path:
        return self.stac_dir / collection / "items.json"

    # ------------------------------------------------------------------ reading
    def meta(self) -> dict[str, Any] | None:
        """The completion record (`world.json`), or None while the world is incomplete."""
        if not self.world_json.is_file():
            return None
        try:
            return json.loads(self.world_json.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def require_complete(self) -> None:
        """Refuse a missing or half-written world with a message that says which."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"world directory {self.root} does not exist")
        if not self.world_json.is_file():
            raise FileNotFoundError(
                f"world directory {self.root} is incomplete: it has no world.json (written last by the generator); "
                "generate it again with `glacier-stac synthetic generate`"
            )

    def years(self) -> tuple[int, ...]:
        """The years with truth labels, in order."""
        return tuple(sorted(int(p.stem.split("_")[1]) for p in self.truth_dir.glob("labels_*.tif")))

    def grid(self) -> GeoBox:
        """The world's 10 m grid, read from its truth raster."""
        import rasterio
        from odc.geo.geobox import GeoBox

        years = self.years()
        if not years:
            raise FileNotFoundError(f"{self.root} has no truth rasters; is it a generated world?")
        with rasterio.open(self.labels_path(years[0])) as src:
            return GeoBox.from_rio(src)

    def aoi(self) -> AOI:
        """The world's extent as a lon/lat AOI named after the directory."""
        from glacier_stac.catalog import load_aoi

        return load_aoi(self.grid().extent.to_crs("EPSG:4326").geom.__geo_interface__, name=self.name)

    def truth_labels(self, year: int, geobox: GeoBox | None = None) -> np.ndarray:
        """The truth `Label` raster of a year on `geobox` (default: the world's grid), 255 off the truth."""
        from glacier_stac.train import labels_from_raster

        path = self.labels_path(year)
        if not path.is_file():
            raise FileNotFoundError(f"world {self.root} has no truth for {year} (years: {list(self.years())})")
        return labels_from_raster(path, geobox if geobox is not None else self.grid())

    def outlines(self) -> gpd.GeoDataFrame | None:
        """The truth outlines of every year, or None when the world has none."""
        import geopandas as gpd

        return gpd.read_parquet(self.outlines_path) if self.outlines_path.is_file() else None

    def items(self, collection: str) -> list[dict[str, Any]]:
        """The STAC items (as dicts) of one collection; empty when the world has none."""
        p = self.items_path(collection)
        return json.loads(p.read_text())["features"] if p.is_file() else []

    def catalog(self) -> WorldCatalog:
        """Find a complete world's STAC files; refuse an incomplete or malformed world with a clear error."""
        self.require_complete()
        root = self.root
        collections: dict[str, Path] = {}
        items: dict[str, Path] = {}
        for cdir in sorted(p for p in self.stac_dir.glob("*") if p.is_dir()):
            cfile, ifile = self.collection_path(cdir.name), self.items_path(cdir.name)
            if not cfile.is_file():
                raise FileNotFoundError(f"world {root}: {cdir} has no collection.json")
            cid = read_json(cfile).get("id")
            if cid != cdir.name:
                raise ValueError(f"world {root}: {cfile} has id {cid!r}, expected {cdir.name!r} (its folder)")
            collections[cid] = cfile
            if ifile.is_file():
                fc = read_json(ifile)
                if fc.get("type") != "FeatureCollection":
                    raise ValueError(f"world {root}: {ifile} is not a GeoJSON FeatureCollection")
                wrong = {f.get("collection") for f in fc.get("features", [])} - {cid}
                if wrong:
                    raise ValueError(f"world {root}: {ifile} holds items of collection(s) {sorted(map(str, wrong))}")
                items[cid] = ifile
        if not collections:
            raise FileNotFoundError(
                f"world {root} has no STAC collections under {self.stac_dir}/<collection>/collection.json")
        return WorldCatalog(root, collections, items)


def world_catalog(world_dir: str | os.PathLike[str]) -> WorldCatalog:
    """The STAC files of the complete world at `world_dir` (see `WorldDir.catalog`)."""
    return WorldDir(Path(world_dir)).catalog()


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
