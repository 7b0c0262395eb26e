"""Worlds of every regime drawn by both renderers, for benchmarks and training.

A generator world (`synthetic generate --regime R`) and its cross-renderer twin: the same DEM (the
world's Copernicus DEM asset) and the same truth outlines drawn again through `synthetic render`
(`user.from_user`), whose own simple physics (snow above each glacier's median height, debris on the
lowest quarter of large glaciers) and seed differ from the generator's. A model that only learned the
generator's habits shows it on the twin. Rock glaciers go along as their own class (`primeclass`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from glacier_stac.synthetic.config import REGIMES, WorldConfig
from glacier_stac.synthetic.user import from_user
from glacier_stac.synthetic.writer import generate, generator_fingerprint, rock_glaciers_path, write_world
from glacier_stac.testing.worlds import WorldDir

RENDERERS = ("generator", "render")


@dataclass(frozen=True)
class WorldSpec:
    """One world to draw: regime, seed, size, years and which renderer."""

    regime: str
    seed: int
    size_km: float
    years: tuple[int, ...]
    renderer: str = "generator"

    def __post_init__(self) -> None:
        if self.regime not in REGIMES:
            raise ValueError(f"unknown regime {self.regime!r}; choose from {sorted(REGIMES)}")
        if self.renderer not in RENDERERS:
            raise ValueError(f"unknown renderer {self.renderer!r}; choose from {RENDERERS}")

    @property
    def name(self) -> str:
        return f"{self.regime}-{self.seed}-{self.size_km:g}km-{'-'.join(map(str, self.years))}-{self.renderer}"

    def config(self) -> WorldConfig:
        return WorldConfig(seed=self.seed, size_km=self.size_km, years=self.years, regime=self.regime)


def world_dir(spec: WorldSpec, cache: Path, progress: bool = False) -> WorldDir:
    """The world directory for `spec` under `cache`, drawn if not there yet (complete worlds are reused)."""
    gen = generate(spec.config(), cache / WorldSpec(spec.regime, spec.seed, spec.size_km, spec.years).name,
                   progress=progress)
    if spec.renderer == "generator":
        return WorldDir(gen)
    out = cache / spec.name
    done = WorldDir(out).meta()
    if done is not None and done.get("generator") == generator_fingerprint():  # drawn by this renderer's code
        return WorldDir(out)
    src = WorldDir(gen)
    dem = next(iter(src.items("cop-dem-glo-30")))["assets"]["data"]["href"]
    outlines = src.outlines()
    if outlines is None or outlines.empty:
        raise RuntimeError(f"world {gen} has no truth outlines to render again")
    first = outlines[outlines["year"] == min(spec.years)][["geometry"]].assign(primeclass="glacier")
    rock = rock_glaciers_path(src.root)  # rock glaciers (issue 14) drawn again as their own class
    if rock.is_file():
        import geopandas as gpd
        import pandas as pd

        rg = gpd.read_parquet(rock)
        rg = rg[rg["year"] == min(spec.years)][["geometry", "primeclass"]]
        first = gpd.GeoDataFrame(pd.concat([first, rg], ignore_index=True), geometry="geometry", crs=first.crs)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "outlines.gpkg"
        first.to_file(path, driver="GPKG")
        # another seed than the generator's: the twin's clouds, snow and speckle are its own
        world = from_user(Path(urlparse(dem).path), path, spec.years, seed=spec.seed + 50_000, regime=spec.regime,
                          class_column="primeclass")
        write_world(world, out, progress=progress, source=f"synthetic render over {gen.name}")
    return WorldDir(out)
