"""Training and scoring regions cut from a generated world, searched through a real STAC API on loopback.

Lives beside the worlds rather than in `train.py`: training takes Regions handed in and knows nothing
of world directories or servers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from glacier_stac import catalog
from glacier_stac import cube as cubes
from glacier_stac.testing import stac_server
from glacier_stac.testing.worlds import WorldDir
from glacier_stac.train import Region


def world_regions(world_dir: str | os.PathLike[str] | WorldDir, years: Sequence[int] | None = None,
                  history: int = 0) -> list[Region]:
    """Regions of a generated world, one per year (default every year of the world): searched through a real
    local STAC API, built as cubes (`history` seasons before each year joined, where the world has them),
    computed, with the truth labels on the same grid."""
    world = world_dir if isinstance(world_dir, WorldDir) else WorldDir(world_dir)
    geobox = world.grid()
    have = list(world.years())
    years = list(have if years is None else years)
    searched = sorted({y for y in have if any(0 <= t - y <= history for t in years)} | set(years))
    with stac_server.serve(world.root) as url:
        found = catalog.search(world.aoi(), searched, catalog=catalog.open_catalog(url))
    out = []
    for y in years:
        feats = cubes.build(found, geobox, y, history=history).compute(scheduler="threads")
        out.append(Region(f"{world.name}:{y}", feats, world.truth_labels(y, geobox)))
    return out
