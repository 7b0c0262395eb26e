"""Rock glaciers: lobate tongues of ice-rich debris below talus slopes, in the permafrost belt under the ELA.

Why they are here: a glacier mapper meets them in every dry or continental range, they look in optics
exactly like the talus and moraine around them, and RGI keeps them out of its glacier product, so a
model must learn to tell them apart (issue 14). What gives them away in the data is drawn here and in
the renderer: a body 15-40 m thick with a steep (~38°) front and lateral margins, transverse ridges and
furrows bowed downstream (flow), a surface a few kelvin cooler than the slopes around (ice under the
blocks, `Thermal.rock_glacier_dt`) and slow creep that reshuffles their radar texture from year to year.

A generator of its own (seeded by the world seed and "rock") draws them after the glaciers, so no other
random draw of the world moves, and regimes without rock glaciers (`Regime.rock_glaciers == 0`: maritime,
arctic, southern) are byte for byte what they were.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from glacier_stac.synthetic.config import Surface, WorldConfig

FRONT_DEG = 38.0  # angle of repose of coarse blocks: the steep front and lateral margins
WIDTH_M = (120.0, 320.0)
LENGTH_M = (250.0, 900.0)
THICKNESS_M = (15.0, 40.0)
RIDGE_AMPLITUDE_M = (1.0, 2.5)
RIDGE_WAVELENGTH_M = (35.0, 60.0)
BELT_M = (150.0, 1000.0)  # the permafrost belt: this far below the ELA (reference-frame metres)
CLEAR_M = 120.0  # kept this far from glaciers, their moraines and water: periglacial, not glacial
GROUND = (Surface.ROCK, Surface.SCREE, Surface.VEGETATION)


def place(sim, config: WorldConfig) -> np.ndarray:  # noqa: ANN001 - glaciers.Simulation
    """Draw the regime's rock glaciers into a simulation: raise `sim.bed` by their bodies and mark them
    `Surface.ROCK_GLACIER` in every year. Returns their ids (int32, 0 = none); all zero when the regime
    has none (and then nothing in `sim` is touched)."""
    regime = config.physics
    n = sim.bed.shape[0]
    ids = np.zeros(sim.bed.shape, dtype=np.int32)
    if regime.rock_glaciers <= 0:
        return ids
    res = float(config.resolution)
    rng = np.random.default_rng([config.seed, 0x726F636B])  # "rock"
    years = sorted(sim.surface)
    first = years[0]
    bed = sim.bed
    vs = regime.vertical_scale
    ice_any = np.zeros(bed.shape, dtype=bool)
    water = np.zeros(bed.shape, dtype=bool)
    for y in years:
        ice_any |= sim.ice[y]
        water |= np.isin(sim.surface[y], (Surface.LAKE, Surface.SEA, Surface.SEA_ICE))
    glacial = ice_any | water | (sim.surface[first] == Surface.MORAINE)
    clear_px = max(1, int(round(CLEAR_M / res)))
    blocked = ndimage.binary_dilation(glacial, iterations=clear_px)
    ground = np.isin(sim.surface[first], GROUND) & ~blocked
    # flow follows the valley-scale slope, not every bump of the fine relief
    smooth = ndimage.gaussian_filter(bed.astype(np.float64), max(1.0, 40.0 / res))
    gy, gx = np.gradient(smooth, res)
    slope = np.degrees(np.arctan(np.hypot(gx, gy)))
    slope_raw = np.degrees(np.arctan(np.hypot(*np.gradient(bed.astype(np.float64), res))))
    steep = slope_raw > 33.0
    talus_foot = ndimage.binary_dilation(steep, iterations=max(1, int(round(150.0 / res)))) & ~steep
    ela = sim.ela[first]
    belt = (bed < ela - BELT_M[0] * vs) & (bed > ela - BELT_M[1] * vs)
    cand = ground & belt & talus_foot & (slope > 8.0) & (slope < 30.0)
    area_km2 = (n * res / 1000.0) ** 2
    want = int(rng.poisson(regime.rock_glaciers * area_km2))
    if want == 0 or not cand.any():
        return ids
    cy, cx = np.nonzero(cand)
    order = rng.permutation(cy.size)
    body = np.zeros(bed.shape, dtype=np.float32)
    taken = blocked.copy()
    wobble = ndimage.gaussian_filter(rng.standard_normal(bed.shape), max(1.0, 30.0 / res))
    wobble /= max(float(wobble.std()), 1e-9)
    tries = 0
    for i in order.tolist():
        if ids.max() >= want or tries > 40 * want:
            break
        y0, x0 = int(cy[i]), int(cx[i])
        if taken[y0, x0]:
            continue
        tries += 1
        shape = _draw(rng, (y0, x0), gy, gx, taken, res, wobble)
        if shape is None:
            continue
        mask, height = shape
        g = int(ids.max()) + 1
        ids[mask] = g
        body = np.where(mask, height, body)
        taken |= ndimage.binary_dilation(mask, iterations=clear_px)
    if not ids.any():
        return ids
    sim.bed = (bed + body).astype(bed.dtype)
    rg = ids > 0
    for y in years:
        sim.surface[y][rg] = Surface.ROCK_GLACIER
    return ids


def _draw(rng: np.random.Generator, start: tuple[int, int], gy: np.ndarray, gx: np.ndarray, taken: np.ndarray,
          res: float, wobble: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """One rock glacier flowing down from `start`: its mask and body height (m), or None if it has no room."""
    h, w = gy.shape
    width = rng.uniform(*WIDTH_M) / res  # px
    length = rng.uniform(*LENGTH_M) / res
    step = 0.7
    path = [(float(start[0]), float(start[1]))]
    y, x = path[0]
    while len(path) * step < length:
        iy, ix = int(round(y)), int(round(x))
        dy, dx = -gy[iy, ix], -gx[iy, ix]
        g = math.hypot(dy, dx)
        if g < 0.02:  # on the valley floor the tongue stops
            break
        y, x = y + step * dy / g, x + step * dx / g
        iy, ix = int(round(y)), int(round(x))
        r = int(math.ceil(width / 2)) + 1
        if not (r <= iy < h - r and r <= ix < w - r) or taken[iy, ix]:
            break
        path.append((y, x))
    k_n = len(path)
    if k_n * step < max(200.0 / res, 1.5 * width):  # too short to be a tongue: talus, not a rock glacier
        return None
    p = np.asarray(path)
    frac = np.arange(k_n) / (k_n - 1)  # 0 at the root, 1 at the front
    radius = width / 2 * (0.5 + 0.5 * np.sqrt(frac)) * np.where(frac > 0.8, 1.15, 1.0)  # widening lobe
    rmax = int(math.ceil(radius.max())) + 2
    ya, yb = max(int(p[:, 0].min()) - rmax, 0), min(int(p[:, 0].max()) + rmax + 1, h)
    xa, xb = max(int(p[:, 1].min()) - rmax, 0), min(int(p[:, 1].max()) + rmax + 1, w)
    yy, xx = np.mgrid[ya:yb, xa:xb].astype(np.float64)
    sd = np.full(yy.shape, np.inf)
    along = np.zeros(yy.shape)  # distance to the front along the flow, px
    lat = np.zeros(yy.shape)  # distance from the centre line, px
    root = np.zeros(yy.shape)  # position along the tongue, 0 root .. 1 front
    for k in range(k_n):
        d = np.hypot(yy - p[k, 0], xx - p[k, 1])
        e = d - radius[k]
        better = e < sd
        sd = np.where(better, e, sd)
        along = np.where(better, (k_n - 1 - k) * step, along)
        lat = np.where(better, d, lat)
        root = np.where(better, frac[k], root)
    sd = sd + 0.12 * width * wobble[ya:yb, xa:xb]  # lobate, irregular margins
    inside = (sd < 0) & ~taken[ya:yb, xa:xb]
    lab, nlab = ndimage.label(inside)
    if nlab == 0:
        return None
    ty, tx = int(round(p[-1, 0])) - ya, int(round(p[-1, 1])) - xa
    keep = lab[ty, tx] if lab[ty, tx] else int(np.argmax(np.bincount(lab.ravel())[1:])) + 1
    inside = lab == keep
    if inside.sum() * res * res < 0.02e6:
        return None
    thick = rng.uniform(*THICKNESS_M)
    ramp = thick / math.tan(math.radians(FRONT_DEG)) / res  # px over which the front and margins rise
    depth = np.clip(-sd / ramp, 0.0, 1.0)
    rise = depth * depth * (3.0 - 2.0 * depth)  # smoothstep: a steep margin, a flat top
    rooted = np.clip(root / 0.3, 0.0, 1.0)  # the root merges into the talus it grows from
    amp, lam = rng.uniform(*RIDGE_AMPLITUDE_M), rng.uniform(*RIDGE_WAVELENGTH_M) / res
    bow = lat * lat / max(width, 1.0)  # ridges bowed downstream (faster flow in the centre)
    ridges = amp * np.cos(2.0 * math.pi * (along + bow) / lam) * np.clip(depth * 2.0 - 1.0, 0.0, 1.0)
    height = (thick * rise * rooted + ridges * rooted).astype(np.float32)
    mask = np.zeros((h, w), dtype=bool)
    full = np.zeros((h, w), dtype=np.float32)
    mask[ya:yb, xa:xb] = inside
    full[ya:yb, xa:xb] = np.where(inside, height, 0.0)
    return mask, full
