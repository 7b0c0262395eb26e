"""Which scenes feed which tile: asset sets, acquisitions, footprints. Item metadata only, no pixels.

Between the search (`catalog`) and the pixels (`cube`): per sensor, which asset set to composite
(Sentinel-1 VV/VH or HH/HV) and what is missing; which scenes are one acquisition (one pass over
neighbouring scene tiles); and, per tile of the grid, the scenes whose footprint meets it, capped at
the best few acquisitions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

import numpy as np
import pystac
import pystac.utils
import shapely
import shapely.geometry
from dask.array.core import slices_from_chunks
from odc.geo.geobox import GeoBox

from glacier_stac import sensors as S

log = logging.getLogger(__name__)


def select(sensor: S.Sensor, items: Sequence[pystac.Item], year: int | None
            ) -> tuple[list[str], list[pystac.Item], dict[str, str]]:
    """Which data assets to read, from which items, and the gaps: item id -> what is missing and why.

    A sensor with alternate asset sets (Sentinel-1 VV/VH or HH/HV) composites the set most items carry
    (the canonical one on a tie), so co-pol is never mixed with another polarisation; items carrying
    none of that set, or no mask asset (SCL, QA_PIXEL), are left out and said so. A missing data asset
    makes that acquisition no-data (stackstac fills it), recorded here rather than a crash or zeros.
    """
    sets = sensor.data_key_sets()
    counts = [sum(all(k in it.assets for k in keys) for it in items) for keys in sets]
    keys = sets[max(range(len(sets)), key=lambda i: (counts[i], -i))]
    mask = sensor.mask_band.key if sensor.mask_band is not None else None
    chosen, gaps = [], {}
    for it in items:
        if it.properties.get("proj:epsg") is None and all(
                a.extra_fields.get("proj:epsg") is None for a in it.assets.values()):
            raise ValueError(f"{sensor.name} item {it.id} has no proj:epsg/proj:code; normalise it with "
                             "catalog.normalise_item first")
        absent = [k for k in keys if k not in it.assets]
        if len(absent) == len(keys):
            gaps[it.id] = (f"left out: has none of {', '.join(keys)} (has {', '.join(sorted(it.assets))}); "
                           f"{sensor.name} {year} composites {'+'.join(keys).upper()}")
            continue
        if mask and mask not in it.assets:  # no cloud/QA mask: its pixels cannot be trusted
            gaps[it.id] = f"left out: lacks its mask asset {mask}"
            continue
        if absent:
            gaps[it.id] = f"no-data: lacks asset(s) {', '.join(absent)}"
        chosen.append(it)
    for item_id, why in gaps.items():
        log.warning("%s item %s (year %s): %s", sensor.name, item_id, year, why)
    return keys, chosen, gaps


def acquisition_ids(items: Sequence[pystac.Item]) -> np.ndarray:
    """One id per acquisition: the same platform on the same orbit track on the same solar day.

    Solar day (UTC shifted by the scene's longitude / 15 h), so a pass is never split at UTC midnight:
    a daytime pass over New Zealand is ~23 h UTC, the scene tile after it can be past midnight.
    """
    keys = []
    for it in items:
        p = it.properties
        track = p.get("sat:relative_orbit", p.get("landsat:wrs_path", p.get("sat:absolute_orbit", it.id)))
        when = it.datetime or pystac.utils.str_to_datetime(p["start_datetime"])
        lon = (it.bbox[0] + it.bbox[2]) / 2 if it.bbox else 0.0
        day = (when + timedelta(hours=lon / 15.0)).date().isoformat()
        keys.append((p.get("platform", ""), str(track), day))
    index = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    return np.array([index[k] for k in keys], dtype=np.int32)


def best_acquisitions(items: Sequence[pystac.Item], groups: np.ndarray, cap: int) -> list[int]:
    """Indices of the items of at most `cap` acquisitions: the least cloudy, or spread over the season.

    Optical scenes are ranked by `eo:cloud_cover` (mean over an acquisition's scenes; ties by date);
    scenes without it (SAR) are taken evenly spaced in time, so the composite still spans the season.
    """
    acq = list(dict.fromkeys(groups.tolist()))
    if len(acq) <= cap:
        return list(range(len(items)))
    members = {g: [k for k in range(len(items)) if groups[k] == g] for g in acq}
    clouds = {g: [items[k].properties.get("eo:cloud_cover") for k in members[g]] for g in acq}
    if all(c is not None for cs in clouds.values() for c in cs):
        chosen = sorted(acq, key=lambda g: (float(np.mean(clouds[g])), members[g][0]))[:cap]
    else:
        chosen = [acq[round(i)] for i in np.linspace(0, len(acq) - 1, cap)]
    return sorted(k for g in chosen for k in members[g])


def items_per_tile(items: Sequence[pystac.Item], groups: np.ndarray, geobox: GeoBox, chunks,
                   cap: int | None = None) -> dict[tuple[int, int], list[int]]:
    """For each tile, the indices of the items whose footprint meets it (of at most `cap` acquisitions;
    `groups` are the items' `acquisition_ids`).

    Why: a tile's task holds only the acquisitions over it, so its memory depends on the tile, not on
    how many scenes the whole AOI gathers (bounded memory, DESIGN.md), and scenes off the tile cost nothing. The cap
    bounds it where orbits converge (high latitudes see 50+ Sentinel-2 passes a season).
    """
    geoms = []
    for it in items:
        g = shapely.geometry.shape(it.geometry) if it.geometry else shapely.geometry.box(*it.bbox)
        geoms.append(g if g.is_valid else shapely.make_valid(g))
    tree = shapely.STRtree(geoms)
    out: dict[tuple[int, int], list[int]] = {}
    for ij, window in zip(np.ndindex(len(chunks[0]), len(chunks[1])), slices_from_chunks(chunks), strict=True):
        ext = geobox[window].extent.to_crs("EPSG:4326").geom
        idx = sorted(int(k) for k in tree.query(ext, predicate="intersects"))
        if cap is not None and idx:
            idx = [idx[k] for k in best_acquisitions([items[k] for k in idx], groups[idx], cap)]
        out[ij] = idx
    return out
